//! The composition root's half of configuration: turns the parsed command line ([`crate::config`],
//! plain clap structs) into each module's own settings type, validating what clap cannot. No other
//! module sees `config`.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{CloudMapArgs, ServeArgs, SourceArgs, TranslateArgs};
use crate::source::cloudmap::{self, BudgetConfig, ClientConfig, CloudMapError, Selection};
use crate::translate::{self, HealthFilter, HostTemplate};
use crate::xds::{stream::Limits, AdsConfig};

/// The translation options of `serve` and `render`.
pub fn translate_options(a: &TranslateArgs) -> Result<translate::Options, String> {
    let istio_namespace = a
        .istio_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "istio-system".to_string());
    translate::validate::dns_label(&istio_namespace).map_err(|e| format!("--istio-namespace: {e}"))?;
    if let Some(rev) = &a.istio_revision {
        translate::validate::label_value(rev).map_err(|e| format!("--istio-revision: {e}"))?;
    }
    for (k, v) in &a.labels {
        translate::validate::label_key(k).map_err(|e| format!("--label {k}={v}: {e}"))?;
        translate::validate::label_value(v).map_err(|e| format!("--label {k}={v}: {e}"))?;
    }
    translate::validate::export_to(&a.export_to, Some(&istio_namespace)).map_err(|e| format!("--export-to: {e}"))?;
    Ok(translate::Options {
        istio_namespace,
        host_template: HostTemplate::new(&a.host_template)?,
        health_filter: a.health_filter,
        location: a.location,
        revision: a.istio_revision.clone(),
        labels: a.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        export_to: a.export_to.clone(),
        // The mapping file is read by the caller (`load_mapping`) and watched by `start_options`.
        mapping: Default::default(),
        vips: translate::VipSettings::new(a.allocate_vips, a.vip_cidrs.clone())?,
        hosts: translate::HostPolicy::new(&a.cluster_domain, a.max_extra_hosts)?.with_domains(&a.host_domains)?,
    })
}

/// The edit guard of the mapping and registry files: the Cloud Map removal guard's ratio and
/// confirmations.
pub fn edit_guard(a: &ServeArgs) -> crate::guard::GuardSettings {
    crate::guard::GuardSettings {
        max_removal_ratio: a.source.cloudmap.max_removal_ratio,
        confirmations: a.source.cloudmap.removal_confirmations,
        interval: a.held_edit_check_interval,
    }
}

/// The App Mesh files' watcher.
pub fn appmesh(a: &TranslateArgs) -> crate::appmesh::watch::Settings {
    crate::appmesh::watch::Settings {
        paths: a.appmesh_files.clone(),
        poll_interval: a.appmesh_poll_interval,
        max_bytes: crate::appmesh::DEFAULT_MAX_BYTES,
    }
}

/// The xDS server's limits.
pub fn ads_config(a: &ServeArgs) -> AdsConfig {
    AdsConfig {
        limits: Limits {
            max_types: a.max_types_per_stream,
            max_resource_names: a.max_resource_names,
            ..Limits::default()
        },
        max_request_bytes: a.max_request_bytes,
        send_timeout: a.send_timeout,
        max_streams: a.max_ads_streams as usize,
    }
}

/// Limits of the gRPC listener.
pub fn grpc_listener(a: &ServeArgs) -> crate::net::ListenerSettings {
    crate::net::ListenerSettings {
        name: "grpc",
        max_connections: a.max_connections as usize,
        handshake_timeout: a.handshake_timeout,
        tcp_keepalive: Some(a.keepalive_interval),
    }
}

/// Limits of the admin listener (and of the --debug-addr one).
pub fn admin_listener(a: &ServeArgs, name: &'static str, max_connections: usize) -> crate::net::ListenerSettings {
    crate::net::ListenerSettings {
        name,
        max_connections,
        handshake_timeout: a.admin_header_timeout,
        tcp_keepalive: Some(a.keepalive_interval),
    }
}

/// HTTP/2 limits of each gRPC connection.
pub fn http2(a: &ServeArgs) -> crate::net::http2::Http2Settings {
    crate::net::http2::Http2Settings {
        max_concurrent_streams: a.max_streams_per_connection,
        // h2's default: more streams reset by the client before they were served → GOAWAY.
        max_pending_accept_reset_streams: 20,
        max_local_error_reset_streams: 1024,
        keepalive_interval: Some(a.keepalive_interval),
        keepalive_timeout: Duration::from_secs(20),
        // One response chunk: the stream's body is asked for the next one when this drained.
        max_send_buf_size: crate::xds::codec::CHUNK,
        max_header_list_size: 16 * 1024,
    }
}

/// The registry file's caps.
pub fn registry_limits(a: &SourceArgs) -> crate::source::file::Limits {
    crate::source::file::Limits {
        max_bytes: a.registry_max_bytes,
        max_services: a.registry_max_services,
        max_instances: a.registry_max_instances,
    }
}

/// The TLS files, when TLS is configured.
pub fn tls_files(a: &ServeArgs) -> Option<crate::tls::TlsFiles> {
    Some(crate::tls::TlsFiles {
        cert: a.tls_cert_file.clone()?,
        key: a.tls_key_file.clone()?,
        client_ca: a.tls_client_ca_file.clone(),
        client_auth: a.tls_client_auth,
    })
}

/// The Cloud Map source's settings from the single-source flags (`--cloudmap`), validated.
pub fn cloudmap_settings(a: &CloudMapArgs, health: HealthFilter) -> Result<cloudmap::Settings, CloudMapError> {
    for (flag, d) in [
        ("--resync-interval", a.resync_interval),
        ("--revision-poll-interval", a.revision_poll_interval),
        ("--revision-poll-max-interval", a.revision_poll_max_interval),
        ("--instances-refresh-interval", a.instances_refresh_interval),
        ("--health-refresh-interval", a.health_refresh_interval),
        ("--service-attributes-refresh-interval", a.service_attributes_refresh_interval),
        ("--aws-call-timeout", a.aws_call_timeout),
        ("--events-revision-poll-max-interval", a.events_revision_poll_max_interval),
        ("--events-instances-refresh-interval", a.events_instances_refresh_interval),
    ] {
        if d < Duration::from_millis(10) {
            return Err(CloudMapError::Config(format!("{flag} must be at least 10ms")));
        }
    }
    if a.revision_poll_max_interval < a.revision_poll_interval {
        return Err(CloudMapError::Config(format!(
            "--revision-poll-max-interval ({}) must be at least --revision-poll-interval ({})",
            humantime::format_duration(a.revision_poll_max_interval),
            humantime::format_duration(a.revision_poll_interval)
        )));
    }
    if a.events_revision_poll_max_interval < a.revision_poll_interval {
        return Err(CloudMapError::Config(format!(
            "--events-revision-poll-max-interval ({}) must be at least --revision-poll-interval ({})",
            humantime::format_duration(a.events_revision_poll_max_interval),
            humantime::format_duration(a.revision_poll_interval)
        )));
    }
    for (flag, url) in [
        ("--aws-endpoint-url", &a.aws_endpoint_url),
        ("--events-queue-url", &a.events_queue_url),
        ("--events-endpoint-url", &a.events_endpoint_url),
    ] {
        if let Some(url) = url.as_deref().filter(|u| !u.is_empty()) {
            cloudmap::check_endpoint_url(flag, url)?;
        }
    }
    let region = a.aws_region.clone().filter(|r| !r.is_empty());
    let events = a.events_queue_url.as_deref().filter(|u| !u.is_empty()).map(|url| cloudmap::EventsSettings {
        queue_url: url.to_string(),
        endpoint_url: a.events_endpoint_url.clone().filter(|u| !u.is_empty()),
        region: cloudmap::events::region_of_queue_url(url).or_else(|| region.clone()),
        revision_poll_max_interval: a.events_revision_poll_max_interval,
        instances_refresh_interval: a.events_instances_refresh_interval,
        call_timeout: a.aws_call_timeout,
    });
    Ok(cloudmap::Settings {
        name: cloudmap::DEFAULT_SOURCE_NAME.to_string(),
        client: ClientConfig {
            region,
            endpoint_url: a.aws_endpoint_url.clone().filter(|u| !u.is_empty()),
            call_timeout: a.aws_call_timeout,
            ..ClientConfig::default()
        },
        selection: Selection::new(
            &a.include_namespaces,
            &a.exclude_namespaces,
            &a.include_services,
            &a.exclude_services,
            &a.namespace_types,
        )?,
        health,
        resync_interval: a.resync_interval,
        revision_poll_interval: a.revision_poll_interval,
        revision_poll_max_interval: a.revision_poll_max_interval,
        instances_refresh_interval: a.instances_refresh_interval,
        health_refresh_interval: a.health_refresh_interval,
        attributes_refresh_interval: a.service_attributes_refresh_interval,
        budget: BudgetConfig { rate: a.aws_api_rate, burst: a.aws_api_burst, concurrency: a.aws_api_concurrency },
        max_attempts: a.aws_max_attempts,
        max_removal_ratio: a.max_removal_ratio,
        removal_confirmations: a.removal_confirmations,
        events,
    })
}

/// The sources of `--sources-file`, each with the command line's settings for what it does not
/// set; `None` without a sources file (the single-source flags then give the one source).
pub fn cloudmap_sources(
    a: &CloudMapArgs,
    health: HealthFilter,
) -> Result<Option<Vec<cloudmap::sources::Source>>, CloudMapError> {
    let Some(path) = &a.sources_file else { return Ok(None) };
    if a.first_sync_timeout.is_zero() {
        return Err(CloudMapError::Config("--first-sync-timeout must be more than 0".into()));
    }
    let base = cloudmap_settings(a, health)?;
    let sources = cloudmap::sources::load(path, &base, a.first_sync_timeout)?;
    Ok(Some(sources))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let argv = [&["cloudmap-mcp", "serve"], flags].concat();
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
        args
    }

    fn settings(flags: &[&str]) -> Result<cloudmap::Settings, CloudMapError> {
        let args = serve_args(&[&["--cloudmap"], flags].concat());
        cloudmap_settings(&args.source.cloudmap, HealthFilter::HealthyOrElseAll)
    }

    #[test]
    fn registry_caps_default_to_the_parser_defaults() {
        let a = serve_args(&["--registry-file", "r.yaml"]);
        assert_eq!(super::registry_limits(&a.source), crate::source::file::Limits::default());
        let a = serve_args(&["--registry-file", "r.yaml", "--registry-max-instances", "7", "--registry-max-bytes", "9"]);
        let l = super::registry_limits(&a.source);
        assert_eq!((l.max_instances, l.max_bytes), (7, 9));
    }

    #[test]
    fn poll_intervals_default_adaptive_and_are_validated() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.revision_poll_interval, Duration::from_secs(5));
        assert_eq!(s.revision_poll_max_interval, Duration::from_secs(15));
        assert_eq!(s.instances_refresh_interval, Duration::from_secs(300));
        assert_eq!(s.events, None, "no queue by default");
        // max = base: constant polling.
        let s = settings(&["--revision-poll-max-interval", "5s"]).unwrap();
        assert_eq!(s.revision_poll_max_interval, s.revision_poll_interval);

        let e = settings(&["--revision-poll-interval", "10s", "--revision-poll-max-interval", "5s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--revision-poll-max-interval (5s)") && e.contains("--revision-poll-interval (10s)"), "{e}");
        for flag in ["--revision-poll-max-interval", "--instances-refresh-interval"] {
            let e = settings(&["--revision-poll-interval", "10ms", flag, "5ms"]).unwrap_err().to_string();
            assert!(e.contains(&format!("{flag} must be at least 10ms")), "{e}");
        }
        let e = settings(&["--aws-endpoint-url", "localhost:4566"]).unwrap_err().to_string();
        assert!(e.contains("--aws-endpoint-url \"localhost:4566\" must start with http://"), "{e}");
    }

    #[test]
    fn an_events_queue_brings_its_region_and_slower_cadence() {
        let s = settings(&["--aws-region", "us-east-1", "--events-queue-url", "https://sqs.eu-west-1.amazonaws.com/1/q"])
            .unwrap();
        let e = s.events.unwrap();
        assert_eq!(e.region.as_deref(), Some("eu-west-1"), "the queue URL's Region wins");
        assert_eq!(e.revision_poll_max_interval, Duration::from_secs(180));
        assert_eq!(e.instances_refresh_interval, Duration::from_secs(900));
        let s = settings(&["--aws-region", "us-east-1", "--events-queue-url", "http://127.0.0.1:5000/1/q"]).unwrap();
        assert_eq!(s.events.unwrap().region.as_deref(), Some("us-east-1"), "an emulator URL: Cloud Map's Region");
        let e = settings(&["--events-queue-url", "sqs/q"]).unwrap_err().to_string();
        assert!(e.contains("--events-queue-url \"sqs/q\" must start with http://"), "{e}");
        let e = settings(&["--events-queue-url", "http://x/q", "--events-revision-poll-max-interval", "1s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--events-revision-poll-max-interval (1s) must be at least"), "{e}");
    }

    #[test]
    fn labels_are_validated_when_options_are_built() {
        let args = serve_args(&["--cloudmap", "--label", "team=a", "--label", "bad key=x"]);
        let e = translate_options(&args.translate).unwrap_err();
        assert!(e.starts_with("--label bad key=x:"), "{e}");
        let args = serve_args(&["--cloudmap", "--label", "team=a"]);
        assert_eq!(translate_options(&args.translate).unwrap().labels.get("team").map(String::as_str), Some("a"));
    }
}
