//! Prometheus metrics of the core server. Other modules register their own families on the same
//! [`Registry`] (see `source::cloudmap`); `/metrics` encodes all of them.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every type URL istiod is known to ask for; anything else is counted as `other` so a client cannot
/// grow the metric set without bound.
pub fn type_label(type_url: &str) -> String {
    const KNOWN_PREFIXES: &[&str] =
        &["networking.istio.io/", "security.istio.io/", "telemetry.istio.io/", "extensions.istio.io/", "core/v1alpha1/"];
    if type_url.len() <= 96
        && KNOWN_PREFIXES.iter().any(|p| type_url.starts_with(p))
        && type_url.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.'))
    {
        type_url.to_string()
    } else {
        "other".to_string()
    }
}

pub struct Metrics {
    pub streams_connected: Gauge,
    pub streams_total: Counter,
    pub stream_errors: Family<Labels, Counter>,
    pub responses: Family<Labels, Counter>,
    pub response_bytes: Family<Labels, Counter>,
    pub acks: Family<Labels, Counter>,
    pub nacks: Family<Labels, Counter>,
    pub stale_requests: Family<Labels, Counter>,
    pub throttled_streams: Counter,
    pub push_latency: Histogram,
    pub resources: Gauge,
    pub resource_bytes: Gauge,
    pub rejected_services: Gauge,
    pub skipped_instances: Gauge,
    pub ignored_overrides: Gauge,
    pub vips: Gauge,
    pub vip_collisions: Gauge,
    pub mapping_rules: Gauge,
    pub snapshots_built: Counter,
    pub build_failures: Counter,
    pub translate_seconds: Histogram,
    pub source_loads: Family<Labels, Counter>,
    pub source_errors: Family<Labels, Counter>,
    pub source_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub ready: Gauge,
    pub tls_handshake_errors: Counter,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics {
            streams_connected: Gauge::default(),
            streams_total: Counter::default(),
            stream_errors: Family::default(),
            responses: Family::default(),
            response_bytes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            stale_requests: Family::default(),
            throttled_streams: Counter::default(),
            push_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            resources: Gauge::default(),
            resource_bytes: Gauge::default(),
            rejected_services: Gauge::default(),
            skipped_instances: Gauge::default(),
            ignored_overrides: Gauge::default(),
            vips: Gauge::default(),
            vip_collisions: Gauge::default(),
            mapping_rules: Gauge::default(),
            snapshots_built: Counter::default(),
            build_failures: Counter::default(),
            translate_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            source_loads: Family::default(),
            source_errors: Family::default(),
            source_last_success: Family::default(),
            ready: Gauge::default(),
            tls_handshake_errors: Counter::default(),
        };
        macro_rules! reg {
            ($name:expr, $help:expr, Box::new($m:expr) $(,)?) => {
                r.register(concat!("cloudmap_mcp_", $name), $help, $m)
            };
        }
        reg!("xds_streams_connected", "ADS streams currently open", Box::new(m.streams_connected.clone()));
        reg!("xds_streams", "ADS streams accepted", Box::new(m.streams_total.clone()));
        reg!("xds_stream_errors", "ADS streams ended with an error, by reason", Box::new(m.stream_errors.clone()));
        reg!("xds_responses", "DiscoveryResponses sent, by type URL", Box::new(m.responses.clone()));
        reg!("xds_response_bytes", "Encoded bytes of DiscoveryResponses sent, by type URL", Box::new(m.response_bytes.clone()));
        reg!("xds_acks", "ACKs received, by type URL", Box::new(m.acks.clone()));
        reg!("xds_nacks", "NACKs received (error_detail set), by type URL", Box::new(m.nacks.clone()));
        reg!("xds_stale_requests", "Requests ignored for a stale nonce, by type URL", Box::new(m.stale_requests.clone()));
        reg!(
            "xds_throttled_streams",
            "Streams whose requests came faster than the per-stream rate bound and were read at that rate",
            Box::new(m.throttled_streams.clone()),
        );
        reg!(
            "xds_push_latency_seconds",
            "From a new snapshot being published to its response being handed to the transport",
            Box::new(m.push_latency.clone()),
        );
        reg!("resources", "ServiceEntries currently served", Box::new(m.resources.clone()));
        reg!(
            "resource_bytes",
            "Encoded size of all ServiceEntries currently served",
            Box::new(m.resource_bytes.clone())
        );
        reg!(
            "rejected_services",
            "Cloud Map services currently left out because their ServiceEntry would be invalid",
            Box::new(m.rejected_services.clone()),
        );
        reg!(
            "skipped_instances",
            "Instances currently left out (no usable address or port)",
            Box::new(m.skipped_instances.clone())
        );
        reg!(
            "ignored_overrides",
            "cloudmap-mcp/* service attributes currently ignored for an invalid value (reasons in /debug/rejected)",
            Box::new(m.ignored_overrides.clone()),
        );
        reg!("vips", "ServiceEntries currently served with an allocated VIP", Box::new(m.vips.clone()));
        reg!(
            "vip_collisions",
            "Served VIPs that are not their host's hash address (another host had it; resolved by probing)",
            Box::new(m.vip_collisions.clone()),
        );
        reg!("mapping_rules", "Rules of the mapping file in use", Box::new(m.mapping_rules.clone()));
        reg!("snapshots_built", "Resource snapshots built (translate + encode)", Box::new(m.snapshots_built.clone()));
        reg!(
            "snapshot_build_failures",
            "Snapshot builds that panicked (a bug); the last good snapshot stays served",
            Box::new(m.build_failures.clone()),
        );
        reg!(
            "translate_seconds",
            "Time to build one snapshot (translate and encode what changed)",
            Box::new(m.translate_seconds.clone())
        );
        reg!("source_loads", "Successful loads of a source, by source", Box::new(m.source_loads.clone()));
        reg!("source_errors", "Failed loads of a source, by source", Box::new(m.source_errors.clone()));
        reg!(
            "source_last_success_timestamp_seconds",
            "Unix time of the last successful load, by source",
            Box::new(m.source_last_success.clone()),
        );
        reg!("ready", "1 once the first complete snapshot is served", Box::new(m.ready.clone()));
        reg!("tls_handshake_errors", "TLS handshakes on the gRPC listener that failed or timed out", Box::new(m.tls_handshake_errors.clone()));
        m
    }

    pub fn source_loaded(&self, source: &'static str) {
        let l = vec![("source", source.to_string())];
        self.source_loads.get_or_create(&l).inc();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.source_last_success.get_or_create(&l).set(now);
    }

    pub fn source_error(&self, source: &'static str) {
        self.source_errors.get_or_create(&vec![("source", source.to_string())]).inc();
    }

    pub fn by_type(family: &Family<Labels, Counter>, type_url: &str) -> Counter {
        family.get_or_create(&vec![("type_url", type_label(type_url))]).clone()
    }
}
