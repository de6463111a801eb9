//! Prometheus families of the Cloud Map source, registered on the server's shared registry.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

pub struct CloudMapMetrics {
    pub calls: Family<Labels, Counter>,
    pub call_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pub throttles: Family<Labels, Counter>,
    pub budget_waits: Counter,
    pub budget_wait_seconds: Counter<f64, AtomicU64>,
    pub resyncs: Family<Labels, Counter>,
    pub instance_reads: Family<Labels, Counter>,
    pub attribute_reads: Family<Labels, Counter>,
    pub attributes_denied: Gauge,
    pub namespaces: Gauge,
    pub services: Gauge,
    pub instances: Gauge,
    pub held_back: Family<Labels, Gauge>,
    pub removal_guard_holds: Counter,
    pub synced: Gauge,
    /// Unix time (f64 bits) of the last complete sync; 0 before the first.
    last_sync: Arc<AtomicU64>,
}

/// Reports the age of the last complete sync at scrape time.
#[derive(Debug)]
struct SyncAge(Arc<AtomicU64>);

impl Collector for SyncAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let last = f64::from_bits(self.0.load(Ordering::Relaxed));
        if last <= 0.0 {
            return Ok(());
        }
        let age = (unix_now() - last).max(0.0);
        let g = ConstGauge::new(age);
        let m = encoder.encode_descriptor(
            "cloudmap_mcp_cloudmap_sync_age_seconds",
            "Seconds since the last complete, successful Cloud Map resync (absent before the first)",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl CloudMapMetrics {
    pub fn register(r: &mut Registry) -> Arc<CloudMapMetrics> {
        let m = CloudMapMetrics {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_histogram),
            throttles: Family::default(),
            budget_waits: Counter::default(),
            budget_wait_seconds: Counter::default(),
            resyncs: Family::default(),
            instance_reads: Family::default(),
            attribute_reads: Family::default(),
            attributes_denied: Gauge::default(),
            namespaces: Gauge::default(),
            services: Gauge::default(),
            instances: Gauge::default(),
            held_back: Family::default(),
            removal_guard_holds: Counter::default(),
            synced: Gauge::default(),
            last_sync: Arc::new(AtomicU64::new(0)),
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
            "cloudmap_mcp_cloudmap_removal_guard_holds",
            "Resyncs whose removals were held back by the mass-removal guard",
            m.removal_guard_holds.clone(),
        );
        r.register(
            "cloudmap_mcp_cloudmap_synced",
            "1 once the first complete Cloud Map sync is done",
            m.synced.clone(),
        );
        r.register_collector(Box::new(SyncAge(m.last_sync.clone())));
        Arc::new(m)
    }

    pub fn call(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        self.calls.get_or_create(&vec![("operation", op.to_string()), ("outcome", outcome.to_string())]).inc();
        self.call_seconds.get_or_create(&vec![("operation", op.to_string())]).observe(seconds);
    }

    pub fn throttled(&self, op: &'static str) {
        self.throttles.get_or_create(&vec![("operation", op.to_string())]).inc();
    }

    pub fn resync(&self, complete: bool) {
        let result = if complete { "complete" } else { "incomplete" };
        self.resyncs.get_or_create(&vec![("result", result.to_string())]).inc();
    }

    pub fn instance_read(&self, reason: &'static str) {
        self.instance_reads.get_or_create(&vec![("reason", reason.to_string())]).inc();
    }

    pub fn attribute_read(&self, reason: &'static str) {
        self.attribute_reads.get_or_create(&vec![("reason", reason.to_string())]).inc();
    }

    pub fn set_held_back(&self, reason: &'static str, n: usize) {
        self.held_back.get_or_create(&vec![("reason", reason.to_string())]).set(n as i64);
    }

    pub fn mark_synced(&self) {
        self.synced.set(1);
        self.last_sync.store(unix_now().to_bits(), Ordering::Relaxed);
    }
}
