//! The AWS Cloud Map source: polls the Cloud Map API and publishes complete [`Snapshot`]s.
//!
//! - [`client`]: the SDK client (standard credential chain; `data-` host prefix stripped for a
//!   custom endpoint) and the [`client::Api`] wrapper every call goes through.
//! - [`budget`]: the shared API budget (token bucket with jitter, concurrency limit) and backoff.
//! - [`poller`]: the in-memory view, resync and revision polling, and the safety rules;
//!   [`poller::attributes`]: service-level attributes (GetServiceAttributes) and when they are re-read.
//! - [`select`]: namespace and service selection.
//! - [`credentials`]: the standard chain, then `sts:AssumeRole` into a source's role.
//! - [`sources`]: the sources file (several accounts/Regions); [`multi`]: their merge.
//! - [`events`]: event-driven refresh from an SQS queue of EventBridge events.
//! - [`debug`]: the `/debug/cloudmap` view and its rendering (filled by the poller; `record`: the
//!   failures and resync reports it keeps). [`metrics`]: Prometheus families (`source` label).
//!
//! See `docs/cloudmap.md` for the user-facing description.
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::model::{HealthFilter, Snapshot};
use crate::source::{self, SnapshotRx};

pub mod budget;
pub mod client;
pub mod credentials;
pub mod debug;
pub mod events;
pub mod metrics;
pub mod multi;
pub mod poller;
mod record;
pub mod select;
pub mod sources;

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
    #[error(transparent)]
    SourcesFile(#[from] sources::SourcesFileError),
    #[error("Cloud Map source {name}: {source}")]
    Source { name: String, source: Box<CloudMapError> },
}

/// Everything one Cloud Map source needs, validated (built by the composition root from the
/// command line, and per entry of a sources file by [`sources`]).
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
    /// The events queue, when one is configured.
    pub events: Option<EventsSettings>,
}

/// Default settings for unit tests.
#[cfg(test)]
pub(crate) fn test_settings() -> Settings {
    Settings {
        name: "test".into(),
        client: ClientConfig::default(),
        selection: Selection::default(),
        health: HealthFilter::HealthyOrElseAll,
        resync_interval: Duration::from_secs(60),
        revision_poll_interval: Duration::from_secs(5),
        revision_poll_max_interval: Duration::from_secs(60),
        instances_refresh_interval: Duration::from_secs(300),
        health_refresh_interval: Duration::from_secs(15),
        attributes_refresh_interval: Duration::from_secs(300),
        budget: BudgetConfig { rate: 100.0, burst: 10, concurrency: 4 },
        max_attempts: 3,
        max_removal_ratio: 0.5,
        removal_confirmations: 3,
        events: None,
    }
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

/// A running Cloud Map source: one poller, or one per configured source merged into one channel.
pub struct CloudMapSource {
    pub snapshots: SnapshotRx,
    /// Sorted by source name.
    pub pollers: Vec<Arc<Poller>>,
    /// Configured from a sources file (debug views and readiness then name each source).
    pub multi: bool,
}

async fn build(
    settings: Settings,
    metrics: Arc<metrics::CloudMapMetrics>,
    core: Option<Arc<Metrics>>,
) -> Result<(Arc<Poller>, SnapshotRx), CloudMapError> {
    let sdk = client::sdk_client(&settings.client).await?;
    let budget = Arc::new(budget::Budget::new(settings.budget));
    let api = client::Api::new(sdk, budget, metrics.clone(), settings.max_attempts, settings.health);
    let (tx, rx) = source::channel();
    Ok((Arc::new(Poller::new(api, settings, tx, metrics, core)), rx))
}

/// Builds one source's poller and starts it, its logs in a span naming the source.
async fn spawn(
    settings: Settings,
    families: &Arc<metrics::CloudMapFamilies>,
    core: &Arc<Metrics>,
) -> Result<(Arc<Poller>, SnapshotRx), CloudMapError> {
    let span = tracing::info_span!("cloudmap", source = %settings.name);
    tracing::info!(
        parent: &span,
        region = settings.client.region.as_deref().unwrap_or("(from the AWS configuration)"),
        endpoint = %client::endpoint_description(&settings.client),
        role_arn = settings.client.role_arn.as_deref().unwrap_or("(none: the standard credential chain)"),
        resync_interval = ?settings.resync_interval,
        revision_poll_interval = ?settings.revision_poll_interval,
        revision_poll_max_interval = ?settings.revision_poll_max_interval,
        instances_refresh_interval = ?settings.instances_refresh_interval,
        health_refresh_interval = ?settings.health_refresh_interval,
        attributes_refresh_interval = ?settings.attributes_refresh_interval,
        api_rate = settings.budget.rate,
        "starting the Cloud Map source; nothing is served until the first complete sync"
    );
    let name = settings.name.clone();
    let metrics = families.source(&name);
    let (poller, rx) = build(settings, metrics, Some(core.clone()))
        .await
        .map_err(|e| CloudMapError::Source { name, source: Box::new(e) })?;
    tokio::spawn(poller.clone().run().instrument(span));
    Ok((poller, rx))
}

/// Starts polling in the background. Metrics are registered on `registry`. Nothing is published on
/// the returned channel until the first complete sync.
pub async fn start(
    settings: Settings,
    registry: &mut Registry,
    core: Arc<Metrics>,
) -> Result<CloudMapSource, CloudMapError> {
    let families = metrics::CloudMapFamilies::register(registry);
    let events = settings.events.clone();
    let (poller, rx) = spawn(settings, &families, &core).await?;
    if let Some(events) = events {
        events::start(events, vec![poller.clone()], registry).await?;
    }
    Ok(CloudMapSource { snapshots: rx, pollers: vec![poller], multi: false })
}

/// Starts one poller per source and the merge ([`multi`]). Nothing is published until the
/// first-sync hold is over.
pub async fn start_many(
    mut sources: Vec<sources::Source>,
    registry: &mut Registry,
    core: Arc<Metrics>,
) -> Result<CloudMapSource, CloudMapError> {
    sources.sort_by(|a, b| a.settings.name.cmp(&b.settings.name));
    let families = metrics::CloudMapFamilies::register(registry);
    // One queue for all sources (the command line's): a message names a service, which every
    // source that holds it re-reads.
    let events = sources.first().and_then(|s| s.settings.events.clone());
    let mut pollers = Vec::with_capacity(sources.len());
    let mut members = Vec::with_capacity(sources.len());
    for s in sources {
        let name = s.settings.name.clone();
        let (poller, rx) = spawn(s.settings, &families, &core).await?;
        pollers.push(poller);
        members.push(multi::Member { name, snapshots: rx, first_sync_timeout: s.first_sync_timeout });
    }
    tracing::info!(
        sources = %members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","),
        "Cloud Map sources started; serving once each has synced or reached its first-sync timeout"
    );
    if let Some(events) = events {
        events::start(events, pollers.clone(), registry).await?;
    }
    let (tx, rx) = source::channel();
    tokio::spawn(multi::run(members, tx));
    Ok(CloudMapSource { snapshots: rx, pollers, multi: true })
}

/// One complete sync (for `render`), tried up to `attempts` times.
pub async fn sync_once(settings: Settings, attempts: u32) -> Result<Snapshot, CloudMapError> {
    let mut registry = Registry::default();
    let metrics = metrics::CloudMapFamilies::register(&mut registry).source(&settings.name);
    let (poller, _rx) = build(settings, metrics, None).await?;
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

/// One complete sync of every source, merged (for `render`); fails when any source fails.
pub async fn sync_all_once(sources: Vec<sources::Source>, attempts: u32) -> Result<Snapshot, CloudMapError> {
    let syncs = sources.into_iter().map(|s| async move {
        let name = s.settings.name.clone();
        let r = sync_once(s.settings, attempts).await;
        r.map(|snap| (name.clone(), snap)).map_err(|e| CloudMapError::Source { name, source: Box::new(e) })
    });
    let parts = futures::future::try_join_all(syncs).await?;
    Ok(multi::merge(parts.iter().map(|(n, s)| (n.as_str(), Some(s)))))
}
