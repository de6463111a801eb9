//! The AWS Cloud Map source: polls the Cloud Map API and publishes complete [`Snapshot`]s.
//!
//! - [`client`]: the SDK client (standard credential chain; `data-` host prefix stripped for a
//!   custom endpoint) and the [`client::Api`] wrapper every call goes through.
//! - [`budget`]: the shared API budget (token bucket with jitter, concurrency limit) and backoff.
//! - [`poller`]: the in-memory view, resync and revision polling, and the safety rules.
//! - [`select`]: namespace and service selection.
//! - [`debug`]: the `/debug/cloudmap` route. [`metrics`]: Prometheus families.
//!
//! See `docs/cloudmap.md` for the user-facing description.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::config::CloudMapArgs;
use crate::metrics::Metrics;
use crate::model::Snapshot;
use crate::source::{self, SnapshotRx};
use crate::translate::HealthFilter;

pub mod budget;
pub mod client;
pub mod debug;
pub mod events;
pub mod metrics;
pub mod poller;
pub mod select;

pub use budget::BudgetConfig;
pub use client::ClientConfig;
pub use debug::DebugView;
pub use events::EventsSettings;
pub use poller::Poller;
pub use select::Selection;

#[derive(Debug, thiserror::Error)]
pub enum CloudMapError {
    #[error("invalid Cloud Map setting: {0}")]
    Config(String),
    #[error(transparent)]
    Selection(#[from] select::SelectionError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Events(#[from] events::EventsError),
    #[error("Cloud Map sync failed after {attempts} attempts: {errors}")]
    SyncFailed { attempts: u32, errors: String },
}

/// Everything the Cloud Map source needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub client: ClientConfig,
    pub selection: Selection,
    /// DiscoverInstances' HealthStatus filter (the translation's health filter).
    pub health: HealthFilter,
    pub resync_interval: Duration,
    /// Revision poll interval of a service that just changed.
    pub revision_poll_interval: Duration,
    /// Longest revision poll interval of a quiet service (the interval doubles up to it).
    pub revision_poll_max_interval: Duration,
    /// Longest time a service's instances go without a read (safety net under the revision).
    pub instances_refresh_interval: Duration,
    pub health_refresh_interval: Duration,
    pub budget: BudgetConfig,
    pub max_attempts: u32,
    pub max_removal_ratio: f64,
    pub removal_confirmations: u32,
    /// The events queue, when one is configured.
    pub events: Option<EventsSettings>,
}

impl Settings {
    pub fn from_args(a: &CloudMapArgs, health: HealthFilter) -> Result<Self, CloudMapError> {
        for (flag, d) in [
            ("--resync-interval", a.resync_interval),
            ("--revision-poll-interval", a.revision_poll_interval),
            ("--revision-poll-max-interval", a.revision_poll_max_interval),
            ("--instances-refresh-interval", a.instances_refresh_interval),
            ("--health-refresh-interval", a.health_refresh_interval),
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
        for (flag, url) in [
            ("--aws-endpoint-url", &a.aws_endpoint_url),
            ("--events-queue-url", &a.events_queue_url),
            ("--events-endpoint-url", &a.events_endpoint_url),
        ] {
            if let Some(url) = url.as_deref().filter(|u| !u.is_empty()) {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(CloudMapError::Config(format!("{flag} {url:?} must start with http:// or https://")));
                }
            }
        }
        if a.events_revision_poll_max_interval < a.revision_poll_interval {
            return Err(CloudMapError::Config(format!(
                "--events-revision-poll-max-interval ({}) must be at least --revision-poll-interval ({})",
                humantime::format_duration(a.events_revision_poll_max_interval),
                humantime::format_duration(a.revision_poll_interval)
            )));
        }
        let region = a.aws_region.clone().filter(|r| !r.is_empty());
        let events = a.events_queue_url.as_deref().filter(|u| !u.is_empty()).map(|url| EventsSettings {
            queue_url: url.to_string(),
            endpoint_url: a.events_endpoint_url.clone().filter(|u| !u.is_empty()),
            region: events::region_of_queue_url(url).or_else(|| region.clone()),
            revision_poll_max_interval: a.events_revision_poll_max_interval,
            instances_refresh_interval: a.events_instances_refresh_interval,
            call_timeout: a.aws_call_timeout,
        });
        Ok(Settings {
            client: ClientConfig {
                region,
                endpoint_url: a.aws_endpoint_url.clone().filter(|u| !u.is_empty()),
                call_timeout: a.aws_call_timeout,
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
            budget: BudgetConfig { rate: a.aws_api_rate, burst: a.aws_api_burst, concurrency: a.aws_api_concurrency },
            max_attempts: a.aws_max_attempts,
            max_removal_ratio: a.max_removal_ratio,
            removal_confirmations: a.removal_confirmations,
            events,
        })
    }
}

/// A running Cloud Map source.
pub struct CloudMapSource {
    pub snapshots: SnapshotRx,
    pub poller: Arc<Poller>,
}

async fn build(
    settings: Settings,
    registry: &mut Registry,
    core: Option<Arc<Metrics>>,
) -> Result<(Arc<Poller>, SnapshotRx), CloudMapError> {
    let sdk = client::sdk_client(&settings.client).await?;
    let metrics = metrics::CloudMapMetrics::register(registry);
    let budget = Arc::new(budget::Budget::new(settings.budget));
    let api = client::Api::new(sdk, budget, metrics.clone(), settings.max_attempts, settings.health);
    let (tx, rx) = source::channel();
    Ok((Arc::new(Poller::new(api, settings, tx, metrics, core)), rx))
}

/// Starts polling in the background. Metrics are registered on `registry`. Nothing is published on
/// the returned channel until the first complete sync.
pub async fn start(
    settings: Settings,
    registry: &mut Registry,
    core: Arc<Metrics>,
) -> Result<CloudMapSource, CloudMapError> {
    tracing::info!(
        region = settings.client.region.as_deref().unwrap_or("(from the AWS configuration)"),
        endpoint = settings.client.endpoint_url.as_deref().unwrap_or("(default)"),
        resync_interval = ?settings.resync_interval,
        revision_poll_interval = ?settings.revision_poll_interval,
        revision_poll_max_interval = ?settings.revision_poll_max_interval,
        instances_refresh_interval = ?settings.instances_refresh_interval,
        health_refresh_interval = ?settings.health_refresh_interval,
        api_rate = settings.budget.rate,
        "starting the Cloud Map source; nothing is served until the first complete sync"
    );
    let events = settings.events.clone();
    let (poller, rx) = build(settings, registry, Some(core)).await?;
    if let Some(events) = events {
        events::start(events, vec![poller.clone()], registry).await?;
    }
    tokio::spawn(poller.clone().run());
    Ok(CloudMapSource { snapshots: rx, poller })
}

/// One complete sync (for `render`), tried up to `attempts` times.
pub async fn sync_once(settings: Settings, attempts: u32) -> Result<Snapshot, CloudMapError> {
    let mut registry = Registry::default();
    let (poller, _rx) = build(settings, &mut registry, None).await?;
    let attempts = attempts.max(1);
    for attempt in 0..attempts {
        if poller.resync().await {
            return Ok(poller.lock().snapshot());
        }
        if attempt + 1 < attempts {
            tokio::time::sleep(budget::backoff(attempt, Duration::from_secs(1), Duration::from_secs(10))).await;
        }
    }
    let errors = poller.lock().last_resync.as_ref().map(|r| r.errors.join("; ")).unwrap_or_default();
    Err(CloudMapError::SyncFailed { attempts, errors })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn settings(flags: &[&str]) -> Result<Settings, CloudMapError> {
        let argv = [&["cloudmap-mcp", "serve", "--cloudmap"], flags].concat();
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!() };
        Settings::from_args(&args.source.cloudmap, HealthFilter::HealthyOrElseAll)
    }

    #[test]
    fn poll_intervals_default_adaptive_and_are_validated() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.revision_poll_interval, Duration::from_secs(5));
        assert_eq!(s.revision_poll_max_interval, Duration::from_secs(15));
        assert_eq!(s.events, None, "no queue by default");
        assert_eq!(s.instances_refresh_interval, Duration::from_secs(300));
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
    }
}
