//! The credentials of one source: the standard AWS chain (environment, profile, IRSA web identity,
//! EKS Pod Identity, container and instance metadata), then `sts:AssumeRole` into the source's
//! role when it names one (role chaining: the chain's identity must be allowed to assume it).
//!
//! The assumed credentials are cached by the Cloud Map client's identity cache and renewed before
//! they expire (the SDK's lazy cache refreshes ahead of expiry), so a long-running server never
//! calls with expired credentials; a failed renewal surfaces as failed calls of that source only.
use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_sdk_servicediscovery::config::SharedCredentialsProvider;
use aws_types::origin::Origin;

use super::client::ClientConfig;

/// The provider assuming `role_arn` with the credentials of `base` (the standard chain), through
/// STS at `cfg.sts_endpoint_url` when set, whatever the environment says (else the SDK's usual
/// STS endpoint, which honours `AWS_ENDPOINT_URL_STS` and `AWS_ENDPOINT_URL`).
pub async fn assume_role(role_arn: &str, cfg: &ClientConfig, base: &SdkConfig) -> SharedCredentialsProvider {
    let sts = match &cfg.sts_endpoint_url {
        Some(url) => sts_config(base, url),
        None => base.clone(),
    };
    let mut b = AssumeRoleProvider::builder(role_arn).configure(&sts);
    if let Some(id) = &cfg.external_id {
        b = b.external_id(id.clone());
    }
    if let Some(name) = &cfg.session_name {
        b = b.session_name(name.clone());
    }
    tracing::info!(
        role_arn,
        external_id = cfg.external_id.is_some(),
        sts_endpoint = cfg.sts_endpoint_url.as_deref().unwrap_or("(default)"),
        "Cloud Map calls use credentials from sts:AssumeRole (renewed before they expire)"
    );
    SharedCredentialsProvider::new(b.build().await)
}

/// `base` with STS at `url`. Marked as set in code: the STS client built from it prefers the
/// environment's `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` to an endpoint of any other origin,
/// which made a source's `stsEndpointUrl` lose to the environment.
fn sts_config(base: &SdkConfig, url: &str) -> SdkConfig {
    let mut b = base.to_builder().endpoint_url(url);
    b.insert_origin("endpoint_url", Origin::shared_config());
    b.build()
}

