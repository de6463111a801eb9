//! The AWS Cloud Map source: polls the Cloud Map API and publishes complete [`Snapshot`]s.
//!
//! - [`client`]: the SDK client (standard credential chain; `data-` host prefix stripped for a
//!   custom endpoint) and the [`client::Api`] wrapper every call goes through.
//! - [`budget`]: the shared API budget (token bucket with jitter, concurrency limit) and backoff.
//! - [`poller`]: the in-memory view, resync and revision polling, and the safety rules.
//! - [`attributes`]: service-level attributes (GetServiceAttributes) and when they are re-read.
//! - [`select`]: namespace and service selection.
//! - [`debug`]: the `/debug/cloudmap` route. [`metrics`]: Prometheus families.
//!
//! See `docs/cloudmap.md` for the user-facing description.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::metrics::Metrics;
use crate::model::Snapshot;
use crate::source::{self, SnapshotRx};
use crate::translate::HealthFilter;

pub mod attributes;
pub mod budget;
pub mod client;
pub mod debug;
pub mod metrics;
pub mod poller;
pub mod select;

pub use budget::BudgetConfig;
pub use client::ClientConfig;
pub use debug::DebugView;
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
    #[error("Cloud Map sync failed after {attempts} attempts: {errors}")]
    SyncFailed { attempts: u32, errors: String },
}

/// Everything one Cloud Map source needs, validated (built by the composition root from the
/// command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The source's name: a label value in metrics, logs and debug views ([`DEFAULT_SOURCE_NAME`]
    /// for the single-source flags).
    pub name: String,
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
    /// How often each service's attributes are re-read (UpdateServiceAttributes moves no revision).
    pub attributes_refresh_interval: Duration,
    pub budget: BudgetConfig,
    pub max_attempts: u32,
    pub max_removal_ratio: f64,
    pub removal_confirmations: u32,
}

/// The source name of the single-source flags (`--cloudmap` without `--sources-file`).
pub const DEFAULT_SOURCE_NAME: &str = "default";

/// Checks an endpoint URL setting (`what` names it in the error).
pub fn check_endpoint_url(what: &str, url: &str) -> Result<(), CloudMapError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(CloudMapError::Config(format!("{what} {url:?} must start with http:// or https://")))
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
        endpoint = %client::endpoint_description(&settings.client),
        resync_interval = ?settings.resync_interval,
        revision_poll_interval = ?settings.revision_poll_interval,
        revision_poll_max_interval = ?settings.revision_poll_max_interval,
        instances_refresh_interval = ?settings.instances_refresh_interval,
        health_refresh_interval = ?settings.health_refresh_interval,
        attributes_refresh_interval = ?settings.attributes_refresh_interval,
        api_rate = settings.budget.rate,
        "starting the Cloud Map source; nothing is served until the first complete sync"
    );
    let (poller, rx) = build(settings, registry, Some(core)).await?;
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
