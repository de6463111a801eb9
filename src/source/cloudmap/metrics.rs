//! Prometheus families of the Cloud Map source, registered on the server's shared registry.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 14))
}

/// The families, registered once on the server's registry; every series has a `source` label
/// (the source's name: `default` for the single-source flags, else from the sources file, so the
/// label set is bounded by the configuration).
pub struct CloudMapFamilies {
    calls: Family<Labels, Counter>,
    call_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    throttles: Family<Labels, Counter>,
    budget_waits: Family<Labels, Counter>,
    budget_wait_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    resyncs: Family<Labels, Counter>,
    instance_reads: Family<Labels, Counter>,
    attribute_reads: Family<Labels, Counter>,
    attributes_denied: Family<Labels, Gauge>,
    namespaces: Family<Labels, Gauge>,
    services: Family<Labels, Gauge>,
    instances: Family<Labels, Gauge>,
    held_back: Family<Labels, Gauge>,
    at_instance_cap: Family<Labels, Gauge>,
    removal_guard_holds: Family<Labels, Counter>,
    synced: Family<Labels, Gauge>,
    poll_batch_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    last_sync: SyncTimes,
}

/// Unix time (f64 bits) of each source's last complete sync; 0 before the first.
type SyncTimes = Arc<Mutex<Vec<(String, Arc<AtomicU64>)>>>;

/// One source's metrics: the families with its `source` label.
pub struct CloudMapMetrics {
    source: String,
    families: Arc<CloudMapFamilies>,
    pub budget_waits: Counter,
    pub budget_wait_seconds: Counter<f64, AtomicU64>,
    pub attributes_denied: Gauge,
    pub namespaces: Gauge,
    pub services: Gauge,
    pub instances: Gauge,
    pub at_instance_cap: Gauge,
    pub removal_guard_holds: Counter,
    pub synced: Gauge,
    /// Seconds the last batch of due revision polls (and the reads they led to) took.
    pub poll_batch_seconds: Gauge<f64, AtomicU64>,
    last_sync: Arc<AtomicU64>,
}

/// Reports the age of each source's last complete sync at scrape time.
#[derive(Debug)]
struct SyncAge(SyncTimes);

impl Collector for SyncAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = unix_now();
        let ages: Vec<(Labels, f64)> = sources
            .iter()
            .map(|(name, t)| (name, f64::from_bits(t.load(Ordering::Relaxed))))
            .filter(|(_, last)| *last > 0.0)
            .map(|(name, last)| (vec![("source", name.clone())], (now - last).max(0.0)))
            .collect();
        if ages.is_empty() {
            return Ok(());
        }
        let mut m = encoder.encode_descriptor(
            "cloudmap_mcp_cloudmap_sync_age_seconds",
            "Seconds since the last complete, successful Cloud Map resync, by source (absent before the first)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, age) in ages {
            let g = ConstGauge::new(age);
            g.encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl CloudMapFamilies {
    pub fn register(r: &mut Registry) -> Arc<CloudMapFamilies> {
        let m = CloudMapFamilies {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram),
            throttles: Family::default(),
            budget_waits: Family::default(),
            budget_wait_seconds: Family::default(),
            resyncs: Family::default(),
            instance_reads: Family::default(),
            attribute_reads: Family::default(),
            attributes_denied: Family::default(),
            namespaces: Family::default(),
            services: Family::default(),
            instances: Family::default(),
            held_back: Family::default(),
            at_instance_cap: Family::default(),
            removal_guard_holds: Family::default(),
            synced: Family::default(),
            poll_batch_seconds: Family::default(),
            last_sync: Arc::default(),
        };
        r.register("cloudmap_mcp_aws_calls", "Cloud Map API call attempts, by operation and outcome", m.calls.clone());
        r.register(
            "cloudmap_mcp_aws_call_duration_seconds",
            "Duration of Cloud Map API call attempts, by operation",
            m.call_seconds.clone(),
        );
        r.register(
            "cloudmap_mcp_aws_throttles",
            "Cloud Map API calls throttled (ThrottlingException, RequestLimitExceeded), by operation",
            m.throttles.clone(),
        );
        r.register(
            "cloudmap_mcp_aws_budget_waits",
            "Cloud Map API calls that waited for the API budget",
            m.budget_waits.clone(),
        );
        r.register(
            "cloudmap_mcp_aws_budget_wait_seconds",
            "Total time Cloud Map API calls waited for the API budget",
            m.budget_wait_seconds.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_resyncs",
            "Cloud Map resyncs, by result (complete, incomplete)",
            m.resyncs.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_instance_reads",
            "DiscoverInstances reads of one service, by reason: new (never read, re-created, or failed before; by a resync), revision (the revision moved), refresh (the periodic safety net), health (health-checked services)",
            m.instance_reads.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_service_attribute_reads",
            "GetServiceAttributes reads of one service, by reason: new (with its first instances), refresh (every --service-attributes-refresh-interval), event (an UpdateServiceAttributes event)",
            m.attribute_reads.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_service_attributes_denied",
            "1 while GetServiceAttributes is denied (IAM policy without servicediscovery:GetServiceAttributes): services are served without their service attributes",
            m.attributes_denied.clone(),
        );
        r.register("cloudmap_mcp_cloudmap_namespaces", "Cloud Map namespaces selected", m.namespaces.clone());
        r.register("cloudmap_mcp_cloudmap_services", "Cloud Map services known with instance data", m.services.clone());
        r.register("cloudmap_mcp_cloudmap_instances", "Cloud Map instances known", m.instances.clone());
        r.register(
            "cloudmap_mcp_cloudmap_services_held_back",
            "Services served from older data, by reason: removal_guard (a mass removal is held), stale (the last refresh failed), pending (listed, never read successfully, not served)",
            m.held_back.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_services_at_instance_cap",
            "Services whose last DiscoverInstances answer held 1,000 instances, the API's maximum: served, but Cloud Map may hold more that are not",
            m.at_instance_cap.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_removal_guard_holds",
            "Resyncs whose removals were held back by the mass-removal guard",
            m.removal_guard_holds.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_synced",
            "1 once the first complete Cloud Map sync is done",
            m.synced.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_poll_batch_seconds",
            "Seconds the last batch of revision polls due at once took (with the reads they led to). Above --revision-poll-max-interval the API budget cannot keep the poll schedule: quiet services are polled about this often, and changes take up to this long to show",
            m.poll_batch_seconds.clone(),
        );
        r.register_collector(Box::new(SyncAge(m.last_sync.clone())));
        Arc::new(m)
    }

    /// The metrics of one source (series with its `source` label).
    pub fn source(self: &Arc<Self>, name: &str) -> Arc<CloudMapMetrics> {
        let l = vec![("source", name.to_string())];
        let last_sync = Arc::new(AtomicU64::new(0));
        self.last_sync.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), last_sync.clone()));
        Arc::new(CloudMapMetrics {
            source: name.to_string(),
            families: self.clone(),
            budget_waits: self.budget_waits.get_or_create(&l).clone(),
            budget_wait_seconds: self.budget_wait_seconds.get_or_create(&l).clone(),
            attributes_denied: self.attributes_denied.get_or_create(&l).clone(),
            namespaces: self.namespaces.get_or_create(&l).clone(),
            services: self.services.get_or_create(&l).clone(),
            instances: self.instances.get_or_create(&l).clone(),
            at_instance_cap: self.at_instance_cap.get_or_create(&l).clone(),
            removal_guard_holds: self.removal_guard_holds.get_or_create(&l).clone(),
            synced: self.synced.get_or_create(&l).clone(),
            poll_batch_seconds: self.poll_batch_seconds.get_or_create(&l).clone(),
            last_sync,
        })
    }
}

impl CloudMapMetrics {
    /// The families on `r` with one source, [`super::DEFAULT_SOURCE_NAME`].
    pub fn register(r: &mut Registry) -> Arc<CloudMapMetrics> {
        CloudMapFamilies::register(r).source(super::DEFAULT_SOURCE_NAME)
    }

    fn labels(&self, more: &[(&'static str, &str)]) -> Labels {
        let mut l = vec![("source", self.source.clone())];
        l.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
        l
    }

    pub fn call(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        let f = &self.families;
        f.calls.get_or_create(&self.labels(&[("operation", op), ("outcome", outcome)])).inc();
        f.call_seconds.get_or_create(&self.labels(&[("operation", op)])).observe(seconds);
    }

    pub fn throttled(&self, op: &'static str) {
        self.families.throttles.get_or_create(&self.labels(&[("operation", op)])).inc();
    }

    pub fn resync(&self, complete: bool) {
        let result = if complete { "complete" } else { "incomplete" };
        self.families.resyncs.get_or_create(&self.labels(&[("result", result)])).inc();
    }

    pub fn instance_read(&self, reason: &'static str) {
        self.families.instance_reads.get_or_create(&self.labels(&[("reason", reason)])).inc();
    }

    pub fn attribute_read(&self, reason: &'static str) {
        self.families.attribute_reads.get_or_create(&self.labels(&[("reason", reason)])).inc();
    }

    pub fn set_held_back(&self, reason: &'static str, n: usize) {
        self.families.held_back.get_or_create(&self.labels(&[("reason", reason)])).set(n as i64);
    }

    pub fn mark_synced(&self) {
        self.synced.set(1);
        self.last_sync.store(unix_now().to_bits(), Ordering::Relaxed);
    }
}
