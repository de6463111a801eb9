//! The AWS SDK client and the [`Api`] wrapper every Cloud Map call goes through: API budget,
//! timeout, backoff on throttling, error classification and metrics. It returns plain types.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_servicediscovery::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_servicediscovery::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::types as aws;

use super::budget::{backoff, Budget};
use super::metrics::CloudMapMetrics;
use crate::model::{self, HealthFilter, HealthStatus, NamespaceType, Timestamp};

/// Page size for the List* calls (the API's maximum).
const PAGE_SIZE: i32 = 100;
/// DiscoverInstances' maximum: a service holds at most 1,000 instances, so one call gets them all.
/// DiscoverInstances answers at most this many instances (`MaxResults`, the API's own cap) and has
/// no paging: an answer this long may leave instances out.
pub const DISCOVER_MAX_RESULTS: i32 = 1000;
/// A listing that has not ended after this many pages is treated as broken.
const MAX_PAGES: usize = 10_000;
/// First retry delay after a throttle, doubled per attempt.
const THROTTLE_BACKOFF_BASE: Duration = Duration::from_millis(250);
const THROTTLE_BACKOFF_CAP: Duration = Duration::from_secs(20);
/// Calls that fail without an answer (connection refused, timeout, 5xx) are tried this many times.
const UNAVAILABLE_ATTEMPTS: u32 = 2;

/// The Cloud Map operations this server uses (all read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Op {
    ListNamespaces,
    ListServices,
    GetService,
    DiscoverInstances,
    DiscoverInstancesRevision,
    GetServiceAttributes,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ListNamespaces => "ListNamespaces",
            Op::ListServices => "ListServices",
            Op::GetService => "GetService",
            Op::DiscoverInstances => "DiscoverInstances",
            Op::DiscoverInstancesRevision => "DiscoverInstancesRevision",
            Op::GetServiceAttributes => "GetServiceAttributes",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a call ended with; decides retries and what the poller keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// ThrottlingException / RequestLimitExceeded, still throttled after every attempt.
    Throttled,
    /// ServiceNotFound / NamespaceNotFound: the resource is gone.
    NotFound,
    /// Any other answer from Cloud Map that refuses the call (access denied, invalid input).
    Rejected,
    /// No usable answer: connection failure, timeout, 5xx, credentials could not be loaded.
    Unavailable,
}

impl ErrorKind {
    fn outcome(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    /// Transient failures say nothing about the resource; permanent ones are about it.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Unavailable)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{operation} failed ({kind:?}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
pub struct ApiError {
    pub operation: Op,
    pub kind: ErrorKind,
    /// The AWS error code, when Cloud Map answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
}

/// A namespace as ListNamespaces reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub id: String,
    pub name: String,
    pub arn: Option<String>,
    pub kind: NamespaceType,
    /// The name DiscoverInstances takes (`Properties.HttpProperties.HttpName`, else the name).
    pub http_name: String,
    /// The owning account, for namespaces shared from another account.
    pub owner: Option<String>,
    pub create_date: Option<Timestamp>,
}

/// A service as ListServices reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSummary {
    pub id: String,
    pub name: String,
    pub arn: Option<String>,
    pub create_date: Option<Timestamp>,
    /// Route 53 or custom health checks: health changes do not move the revision.
    pub health_checked: bool,
}

/// What GetService adds: the namespace the service belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMeta {
    pub id: String,
    pub name: String,
    pub namespace_id: String,
    pub arn: Option<String>,
    pub create_date: Option<Timestamp>,
    pub health_checked: bool,
}

/// The result of DiscoverInstances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// Sorted by id, one per id. Shared with the snapshots that serve them.
    pub instances: Arc<[model::Instance]>,
    pub revision: Option<i64>,
    /// Instance ids that appeared more than once (one was kept).
    pub duplicates: Vec<String>,
    /// The answer held [`DISCOVER_MAX_RESULTS`] instances (or more): Cloud Map may hold more that
    /// no call can return. Served as it is, with a warning, a metric and a `/debug/cloudmap` note.
    pub at_cap: bool,
}

/// Where the SDK client comes from.
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    pub region: Option<String>,
    /// An explicit endpoint (flag); the SDK also reads AWS_ENDPOINT_URL_SERVICEDISCOVERY / AWS_ENDPOINT_URL.
    pub endpoint_url: Option<String>,
    pub call_timeout: Duration,
    /// Assume this IAM role (sts:AssumeRole) with the standard chain's credentials.
    pub role_arn: Option<String>,
    /// The ExternalId the role's trust policy requires.
    pub external_id: Option<String>,
    /// The STS session name (shows in the role account's CloudTrail).
    pub session_name: Option<String>,
    /// STS endpoint for the AssumeRole call (an emulator); else the SDK's default.
    pub sts_endpoint_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no AWS Region: give --aws-region, or set AWS_REGION or a profile region")]
    NoRegion,
}

/// Strips the `data-` host prefix the SDK adds to DiscoverInstances and DiscoverInstancesRevision,
/// which only AWS's own endpoints resolve. Installed only with a custom endpoint (an emulator).
#[derive(Debug)]
struct StripDataHostPrefix;

impl Intercept for StripDataHostPrefix {
    fn name(&self) -> &'static str {
        "StripDataHostPrefix"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        if let Some(uri) = strip_data_prefix(req.uri()) {
            req.set_uri(uri)?;
        }
        Ok(())
    }
}

fn strip_data_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let rest = rest.strip_prefix("data-")?;
    Some(format!("{scheme}://{rest}"))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).map(|v| !v.trim().is_empty()).unwrap_or(false)
}

/// The Cloud Map endpoint the client will use, and where it comes from, for the startup log: the
/// flag, else the SDK's environment variables (service-specific first), else the AWS default.
pub fn endpoint_description(cfg: &ClientConfig) -> String {
    describe_endpoint(cfg.endpoint_url.as_deref(), |name| std::env::var(name).ok())
}

fn describe_endpoint(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(url) = flag {
        return format!("{url} (--aws-endpoint-url)");
    }
    for name in ["AWS_ENDPOINT_URL_SERVICEDISCOVERY", "AWS_ENDPOINT_URL"] {
        if let Some(url) = env(name).filter(|v| !v.trim().is_empty()) {
            return format!("{url} ({name})");
        }
    }
    "(AWS default for the region)".to_string()
}

/// Builds the SDK client from the standard AWS configuration chain (env, profile, web identity,
/// EKS Pod Identity, container and instance metadata). Retries are left to [`Api`].
pub async fn sdk_client(cfg: &ClientConfig) -> Result<aws_sdk_servicediscovery::Client, ClientError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &cfg.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(ClientError::NoRegion);
    }
    let custom_endpoint = cfg.endpoint_url.is_some()
        || sdk.endpoint_url().is_some()
        || env_set("AWS_ENDPOINT_URL_SERVICEDISCOVERY")
        || env_set("AWS_ENDPOINT_URL");
    let timeout = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(cfg.call_timeout.min(Duration::from_secs(5)))
        .operation_attempt_timeout(cfg.call_timeout)
        .operation_timeout(cfg.call_timeout)
        .build();
    let mut builder = aws_sdk_servicediscovery::config::Builder::from(&sdk)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeout);
    // On the Cloud Map client only: the STS call of an assumed role goes to STS's own endpoint.
    if let Some(url) = &cfg.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    if let Some(role) = &cfg.role_arn {
        builder = builder.credentials_provider(super::credentials::assume_role(role, cfg, &sdk).await);
    }
    if custom_endpoint {
        tracing::info!(
            "custom Cloud Map endpoint configured: stripping the data- host prefix of DiscoverInstances calls"
        );
        builder = builder.interceptor(StripDataHostPrefix);
    }
    Ok(aws_sdk_servicediscovery::Client::from_conf(builder.build()))
}

/// Consecutive unanswered calls after which Cloud Map counts as unreachable.
const UNREACHABLE_STREAK: u32 = 8;

/// Every Cloud Map call of the source, through one budget.
pub struct Api {
    client: aws_sdk_servicediscovery::Client,
    budget: Arc<Budget>,
    metrics: Arc<CloudMapMetrics>,
    max_attempts: u32,
    health: aws::HealthStatusFilter,
    /// Calls in a row that got no answer (reset by any answer).
    unanswered: AtomicU32,
}

fn ts(d: Option<&aws_smithy_types::DateTime>) -> Option<Timestamp> {
    d.map(|d| Timestamp { seconds: d.secs(), nanos: d.subsec_nanos() as i32 })
}

fn health_filter(f: HealthFilter) -> aws::HealthStatusFilter {
    match f {
        HealthFilter::Healthy => aws::HealthStatusFilter::Healthy,
        HealthFilter::Unhealthy => aws::HealthStatusFilter::Unhealthy,
        HealthFilter::All => aws::HealthStatusFilter::All,
        HealthFilter::HealthyOrElseAll => aws::HealthStatusFilter::HealthyOrElseAll,
    }
}

fn classify<E>(operation: Op, e: SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    if let SdkError::ServiceError(se) = &e {
        let err = se.err();
        let code = err.code().map(str::to_string);
        let kind = match code.as_deref() {
            Some("ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" | "Throttling") => {
                ErrorKind::Throttled
            }
            Some("ServiceNotFound" | "NamespaceNotFound") => ErrorKind::NotFound,
            _ if status == Some(429) => ErrorKind::Throttled,
            _ if status.is_some_and(|s| s >= 500) => ErrorKind::Unavailable,
            _ => ErrorKind::Rejected,
        };
        let message = err.message().map(str::to_string).unwrap_or_else(|| DisplayErrorContext(&e).to_string());
        return ApiError { operation, kind, code, message };
    }
    let kind = match status {
        Some(429) => ErrorKind::Throttled,
        _ => ErrorKind::Unavailable,
    };
    ApiError { operation, kind, code: None, message: DisplayErrorContext(&e).to_string() }
}

impl Api {
    pub fn new(
        client: aws_sdk_servicediscovery::Client,
        budget: Arc<Budget>,
        metrics: Arc<CloudMapMetrics>,
        max_attempts: u32,
        health: HealthFilter,
    ) -> Self {
        Api {
            client,
            budget,
            metrics,
            max_attempts: max_attempts.max(1),
            health: health_filter(health),
            unanswered: AtomicU32::new(0),
        }
    }

    /// True after several calls in a row got no answer at all (network, credentials): the poller
    /// then pauses its revision polls and lets the resyncs probe until Cloud Map answers again.
    pub fn unreachable(&self) -> bool {
        self.unanswered.load(Ordering::Relaxed) >= UNREACHABLE_STREAK
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// One logical call: waits for the budget before every attempt, retries throttling with
    /// exponential backoff and jitter, and a connection failure once.
    async fn call<T, E, F, Fut>(&self, op: Op, what: &str, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempt = 0u32;
        loop {
            let permit = self.budget.acquire(&self.metrics).await;
            let started = Instant::now();
            let result = f().await;
            drop(permit);
            let secs = started.elapsed().as_secs_f64();
            let err = match result {
                Ok(v) => {
                    self.unanswered.store(0, Ordering::Relaxed);
                    self.metrics.call(op.as_str(), "ok", secs);
                    return Ok(v);
                }
                Err(e) => classify(op, e),
            };
            if err.kind == ErrorKind::Unavailable {
                self.unanswered.fetch_add(1, Ordering::Relaxed);
            } else {
                self.unanswered.store(0, Ordering::Relaxed);
            }
            self.metrics.call(op.as_str(), err.kind.outcome(), secs);
            attempt += 1;
            let retry = match err.kind {
                ErrorKind::Throttled => {
                    self.metrics.throttled(op.as_str());
                    attempt < self.max_attempts
                }
                ErrorKind::Unavailable => attempt < UNAVAILABLE_ATTEMPTS.min(self.max_attempts),
                ErrorKind::NotFound | ErrorKind::Rejected => false,
            };
            if !retry {
                return Err(err);
            }
            let wait = backoff(attempt - 1, THROTTLE_BACKOFF_BASE, THROTTLE_BACKOFF_CAP);
            tracing::debug!(operation = %op, target = what, attempt, wait_ms = wait.as_millis() as u64, error = %err, "Cloud Map call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Every namespace, following every NextToken (pages may be empty while a token is set).
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .call(Op::ListNamespaces, "", || {
                    self.client.list_namespaces().max_results(PAGE_SIZE).set_next_token(token.clone()).send()
                })
                .await?;
            for ns in page.namespaces() {
                let (Some(id), Some(name)) = (ns.id(), ns.name()) else {
                    continue;
                };
                let kind = match ns.r#type() {
                    Some(aws::NamespaceType::Http) => NamespaceType::Http,
                    Some(aws::NamespaceType::DnsPrivate) => NamespaceType::DnsPrivate,
                    Some(aws::NamespaceType::DnsPublic) => NamespaceType::DnsPublic,
                    other => {
                        tracing::warn!(namespace = name, id, kind = ?other, "namespace of an unknown type ignored");
                        continue;
                    }
                };
                let http_name = ns
                    .properties()
                    .and_then(|p| p.http_properties())
                    .and_then(|h| h.http_name())
                    .filter(|h| !h.is_empty())
                    .unwrap_or(name)
                    .to_string();
                out.push(NamespaceInfo {
                    id: id.to_string(),
                    name: name.to_string(),
                    arn: ns.arn().map(str::to_string),
                    kind,
                    http_name,
                    owner: ns.resource_owner().map(str::to_string),
                    create_date: ts(ns.create_date()),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() && token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(ApiError {
            operation: Op::ListNamespaces,
            kind: ErrorKind::Unavailable,
            code: None,
            message: format!("no end after {MAX_PAGES} pages"),
        })
    }

    /// The services ListServices reports for a namespace filter. An emulator may ignore the
    /// filter and return every service: callers place services by [`Api::get_service`].
    pub async fn list_services(&self, namespace_id: &str) -> Result<Vec<ServiceSummary>, ApiError> {
        let filter = aws::ServiceFilter::builder()
            .name(aws::ServiceFilterName::NamespaceId)
            .values(namespace_id)
            .condition(aws::FilterCondition::Eq)
            .build()
            .map_err(|e| ApiError {
                operation: Op::ListServices,
                kind: ErrorKind::Rejected,
                code: None,
                message: e.to_string(),
            })?;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .call(Op::ListServices, namespace_id, || {
                    self.client
                        .list_services()
                        .max_results(PAGE_SIZE)
                        .filters(filter.clone())
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            for s in page.services() {
                let (Some(id), Some(name)) = (s.id(), s.name()) else {
                    continue;
                };
                out.push(ServiceSummary {
                    id: id.to_string(),
                    name: name.to_string(),
                    arn: s.arn().map(str::to_string),
                    create_date: ts(s.create_date()),
                    health_checked: s.health_check_config().is_some() || s.health_check_custom_config().is_some(),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() && token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(ApiError {
            operation: Op::ListServices,
            kind: ErrorKind::Unavailable,
            code: None,
            message: format!("no end after {MAX_PAGES} pages"),
        })
    }

    pub async fn get_service(&self, id: &str) -> Result<ServiceMeta, ApiError> {
        let out = self.call(Op::GetService, id, || self.client.get_service().id(id).send()).await?;
        let missing = |what: &str| ApiError {
            operation: Op::GetService,
            kind: ErrorKind::Rejected,
            code: None,
            message: format!("service {id}: the answer has no {what}"),
        };
        let s = out.service().ok_or_else(|| missing("Service"))?;
        Ok(ServiceMeta {
            id: id.to_string(),
            name: s.name().ok_or_else(|| missing("Name"))?.to_string(),
            namespace_id: s.namespace_id().ok_or_else(|| missing("NamespaceId"))?.to_string(),
            arn: s.arn().map(str::to_string),
            create_date: ts(s.create_date()),
            health_checked: s.health_check_config().is_some() || s.health_check_custom_config().is_some(),
        })
    }

    /// The service-level attributes of a service (GetServiceAttributes; `id` is its id or ARN).
    pub async fn get_service_attributes(&self, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let out =
            self.call(Op::GetServiceAttributes, id, || self.client.get_service_attributes().service_id(id).send()).await?;
        Ok(out
            .service_attributes()
            .and_then(|a| a.attributes())
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    /// Every instance of a service (`MaxResults=1000`), with the configured HealthStatus filter.
    pub async fn discover_instances(
        &self,
        http_name: &str,
        service: &str,
        owner: Option<&str>,
    ) -> Result<Discovered, ApiError> {
        let what = format!("{http_name}/{service}");
        let out = self
            .call(Op::DiscoverInstances, &what, || {
                self.client
                    .discover_instances()
                    .namespace_name(http_name)
                    .service_name(service)
                    .max_results(DISCOVER_MAX_RESULTS)
                    .health_status(self.health.clone())
                    .set_owner_account(owner.map(str::to_string))
                    .send()
            })
            .await?;
        let at_cap = out.instances().len() >= DISCOVER_MAX_RESULTS as usize;
        let mut by_id: BTreeMap<String, model::Instance> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for i in out.instances() {
            let Some(id) = i.instance_id() else { continue };
            let inst = model::Instance {
                id: id.to_string(),
                attributes: i
                    .attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                health: match i.health_status() {
                    Some(aws::HealthStatus::Healthy) => HealthStatus::Healthy,
                    Some(aws::HealthStatus::Unhealthy) => HealthStatus::Unhealthy,
                    _ => HealthStatus::Unknown,
                },
            };
            match by_id.get(id) {
                None => {
                    by_id.insert(id.to_string(), inst);
                }
                Some(prev) => {
                    duplicates.push(id.to_string());
                    // Keep one deterministically, whatever order the answer came in.
                    if (&inst.attributes, inst.health) > (&prev.attributes, prev.health) {
                        by_id.insert(id.to_string(), inst);
                    }
                }
            }
        }
        duplicates.sort();
        duplicates.dedup();
        Ok(Discovered {
            instances: by_id.into_values().collect::<Vec<_>>().into(),
            revision: out.instances_revision(),
            duplicates,
            at_cap,
        })
    }

    pub async fn discover_revision(
        &self,
        http_name: &str,
        service: &str,
        owner: Option<&str>,
    ) -> Result<i64, ApiError> {
        let what = format!("{http_name}/{service}");
        let out = self
            .call(Op::DiscoverInstancesRevision, &what, || {
                self.client
                    .discover_instances_revision()
                    .namespace_name(http_name)
                    .service_name(service)
                    .set_owner_account(owner.map(str::to_string))
                    .send()
            })
            .await?;
        Ok(out.instances_revision().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_line_names_the_endpoint_in_use_and_where_it_comes_from() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        };
        assert_eq!(describe_endpoint(None, env(&[])), "(AWS default for the region)");
        assert_eq!(describe_endpoint(None, env(&[("AWS_ENDPOINT_URL", "")])), "(AWS default for the region)");
        assert_eq!(describe_endpoint(None, env(&[("AWS_ENDPOINT_URL", "http://a")])), "http://a (AWS_ENDPOINT_URL)");
        assert_eq!(
            describe_endpoint(
                None,
                env(&[("AWS_ENDPOINT_URL", "http://a"), ("AWS_ENDPOINT_URL_SERVICEDISCOVERY", "http://sd")])
            ),
            "http://sd (AWS_ENDPOINT_URL_SERVICEDISCOVERY)"
        );
        assert_eq!(
            describe_endpoint(Some("http://f"), env(&[("AWS_ENDPOINT_URL", "http://a")])),
            "http://f (--aws-endpoint-url)"
        );
    }

    #[test]
    fn data_prefix_is_stripped_once() {
        assert_eq!(strip_data_prefix("http://data-127.0.0.1:5000/").as_deref(), Some("http://127.0.0.1:5000/"));
        assert_eq!(strip_data_prefix("https://data-localhost:4566").as_deref(), Some("https://localhost:4566"));
        assert_eq!(strip_data_prefix("http://127.0.0.1:5000/"), None);
        assert_eq!(strip_data_prefix("http://host/data-x"), None);
    }
}
