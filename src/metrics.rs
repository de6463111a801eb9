//! Prometheus metrics of the core server. Other modules register their own families on the same
//! [`Registry`] (see `source::cloudmap`); `/metrics` encodes all of them.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Config kinds istiod asks a config source for (every Istio version since 1.13), and MeshConfig.
/// These are the only `type_url` label values; anything else a client sends is counted as `other`,
/// so clients cannot grow the set of metric series.
pub const KNOWN_TYPE_URLS: &[&str] = &[
    "core/v1alpha1/MeshConfig",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1beta1/DestinationRule",
    "networking.istio.io/v1alpha3/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1/Gateway",
    "networking.istio.io/v1beta1/Gateway",
    "networking.istio.io/v1alpha3/Gateway",
    "networking.istio.io/v1beta1/ProxyConfig",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1beta1/ServiceEntry",
    "networking.istio.io/v1alpha3/ServiceEntry",
    "networking.istio.io/v1/Sidecar",
    "networking.istio.io/v1beta1/Sidecar",
    "networking.istio.io/v1alpha3/Sidecar",
    "networking.istio.io/v1/VirtualService",
    "networking.istio.io/v1beta1/VirtualService",
    "networking.istio.io/v1alpha3/VirtualService",
    "networking.istio.io/v1/WorkloadEntry",
    "networking.istio.io/v1beta1/WorkloadEntry",
    "networking.istio.io/v1alpha3/WorkloadEntry",
    "networking.istio.io/v1/WorkloadGroup",
    "networking.istio.io/v1beta1/WorkloadGroup",
    "networking.istio.io/v1alpha3/WorkloadGroup",
    "security.istio.io/v1/AuthorizationPolicy",
    "security.istio.io/v1beta1/AuthorizationPolicy",
    "security.istio.io/v1/PeerAuthentication",
    "security.istio.io/v1beta1/PeerAuthentication",
    "security.istio.io/v1/RequestAuthentication",
    "security.istio.io/v1beta1/RequestAuthentication",
    "telemetry.istio.io/v1/Telemetry",
    "telemetry.istio.io/v1alpha1/Telemetry",
    "extensions.istio.io/v1alpha1/TrafficExtension",
    "extensions.istio.io/v1alpha1/WasmPlugin",
];

/// The `type_url` label value of a type URL: itself when known, else `other`.
pub fn type_label(type_url: &str) -> &'static str {
    KNOWN_TYPE_URLS.iter().find(|k| **k == type_url).copied().unwrap_or("other")
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
    pub shard_resources: Family<Labels, Gauge>,
    pub shard_resource_bytes: Family<Labels, Gauge>,
    pub shard_pushes: Family<Labels, Counter>,
    pub shard_push_bytes: Family<Labels, Counter>,
    pub rejected_services: Gauge,
    /// App Mesh objects by migration outcome (translated, approximated, dropped).
    pub appmesh_objects: Family<Labels, Gauge>,
    pub skipped_instances: Gauge,
    pub ignored_overrides: Gauge,
    pub dropped_hosts: Gauge,
    pub vips: Gauge,
    pub vip_collisions: Gauge,
    pub mapping_rules: Gauge,
    pub snapshots_built: Counter,
    pub delayed_pushes: Counter,
    pub build_failures: Counter,
    pub translate_seconds: Histogram,
    pub source_loads: Family<Labels, Counter>,
    pub source_errors: Family<Labels, Counter>,
    pub source_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub ready: Gauge,
    pub tls_handshake_errors: Counter,
    pub streams_refused: Counter,
    pub streams_closed: Counter,
    pub connections_accepted: Family<Labels, Counter>,
    pub connections_open: Family<Labels, Gauge>,
    pub connections_refused: Family<Labels, Counter>,
    pub connections_evicted: Family<Labels, Counter>,
    pub handshake_errors: Family<Labels, Counter>,
    pub handshake_timeouts: Family<Labels, Counter>,
    pub accept_errors: Family<Labels, Counter>,
    pub http2_connection_errors: Counter,
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
            shard_resources: Family::default(),
            shard_resource_bytes: Family::default(),
            shard_pushes: Family::default(),
            shard_push_bytes: Family::default(),
            rejected_services: Gauge::default(),
            appmesh_objects: Family::default(),
            skipped_instances: Gauge::default(),
            ignored_overrides: Gauge::default(),
            dropped_hosts: Gauge::default(),
            vips: Gauge::default(),
            vip_collisions: Gauge::default(),
            mapping_rules: Gauge::default(),
            snapshots_built: Counter::default(),
            delayed_pushes: Counter::default(),
            build_failures: Counter::default(),
            translate_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            source_loads: Family::default(),
            source_errors: Family::default(),
            source_last_success: Family::default(),
            ready: Gauge::default(),
            tls_handshake_errors: Counter::default(),
            streams_refused: Counter::default(),
            streams_closed: Counter::default(),
            connections_accepted: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            connections_evicted: Family::default(),
            handshake_errors: Family::default(),
            handshake_timeouts: Family::default(),
            accept_errors: Family::default(),
            http2_connection_errors: Counter::default(),
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
        reg!("shard_resources", "ServiceEntries currently served by each shard (--shards), by shard", Box::new(m.shard_resources.clone()));
        reg!(
            "shard_resource_bytes",
            "Encoded size of the ServiceEntries currently served by each shard (--shards), by shard",
            Box::new(m.shard_resource_bytes.clone()),
        );
        reg!(
            "shard_pushes",
            "ServiceEntry responses pushed to the streams of a shard because a new snapshot changed it, by shard (one per stream)",
            Box::new(m.shard_pushes.clone()),
        );
        reg!(
            "shard_push_bytes",
            "Encoded bytes of the ServiceEntry responses counted by cloudmap_mcp_shard_pushes, by shard",
            Box::new(m.shard_push_bytes.clone()),
        );
        reg!(
            "rejected_services",
            "Cloud Map services currently left out because their ServiceEntry would be invalid",
            Box::new(m.rejected_services.clone()),
        );
        reg!(
            "appmesh_objects",
            "App Mesh objects of --appmesh-file by migration outcome (outcome=translated|approximated|dropped; /debug/appmesh gives the reasons)",
            Box::new(m.appmesh_objects.clone()),
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
        reg!(
            "dropped_hosts",
            "Notes on extra hosts currently not served: another service's host, in the cluster's domains, outside the allowed domains, beyond --max-extra-hosts (kind `host` in /debug/rejected)",
            Box::new(m.dropped_hosts.clone()),
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
            "delayed_pushes",
            "Pushes delayed by --min-push-interval: a change came within the window after the previous push and went out at its end, with any later changes of that window folded in",
            Box::new(m.delayed_pushes.clone()),
        );
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
        reg!("tls_handshake_errors", "TLS handshakes on the gRPC listener that failed", Box::new(m.tls_handshake_errors.clone()));
        reg!(
            "xds_streams_refused",
            "ADS streams refused with RESOURCE_EXHAUSTED because --max-ads-streams were open",
            Box::new(m.streams_refused.clone()),
        );
        reg!("xds_streams_closed", "ADS streams ended (for any reason)", Box::new(m.streams_closed.clone()));
        reg!("connections_accepted", "Connections accepted, by listener", Box::new(m.connections_accepted.clone()));
        reg!("connections_open", "Connections open now (handshakes included), by listener", Box::new(m.connections_open.clone()));
        reg!(
            "connections_refused",
            "Connections closed on accept because the listener's connection cap was reached, by listener",
            Box::new(m.connections_refused.clone()),
        );
        reg!(
            "connections_evicted",
            "Connections still in their handshake closed to make room for a new connection at the cap, by listener",
            Box::new(m.connections_evicted.clone()),
        );
        reg!(
            "handshake_errors",
            "Connections closed because their handshake failed (TLS error, not HTTP/2), by listener",
            Box::new(m.handshake_errors.clone()),
        );
        reg!(
            "handshake_timeouts",
            "Connections closed because their handshake (TLS, HTTP/2 preface) did not complete in time, by listener",
            Box::new(m.handshake_timeouts.clone()),
        );
        reg!("accept_errors", "Failed accept() calls (e.g. out of file descriptors), by listener", Box::new(m.accept_errors.clone()));
        reg!(
            "http2_connection_errors",
            "gRPC connections that ended with an HTTP/2 or I/O error (protocol errors, too many resets, reset sockets)",
            Box::new(m.http2_connection_errors.clone()),
        );
        m
    }

    /// The counters of one listener (`grpc`, `admin`) for [`crate::net::incoming`].
    pub fn listener(&self, name: &'static str) -> crate::net::ListenerMetrics {
        let l = vec![("listener", name.to_string())];
        crate::net::ListenerMetrics {
            accepted: self.connections_accepted.get_or_create(&l).clone(),
            open: self.connections_open.get_or_create(&l).clone(),
            refused: self.connections_refused.get_or_create(&l).clone(),
            evicted: self.connections_evicted.get_or_create(&l).clone(),
            handshake_errors: self.handshake_errors.get_or_create(&l).clone(),
            handshake_timeouts: self.handshake_timeouts.get_or_create(&l).clone(),
            accept_errors: self.accept_errors.get_or_create(&l).clone(),
        }
    }

    /// Totals of client activity on the gRPC listener, for the periodic summary line.
    pub fn activity(&self) -> Activity {
        let g = self.listener("grpc");
        Activity {
            streams_opened: self.streams_total.get(),
            streams_closed: self.streams_closed.get(),
            streams_refused: self.streams_refused.get(),
            connections_accepted: g.accepted.get(),
            connections_refused: g.refused.get() + g.evicted.get(),
            handshake_errors: g.handshake_errors.get(),
            handshake_timeouts: g.handshake_timeouts.get(),
            accept_errors: g.accept_errors.get(),
            http2_errors: self.http2_connection_errors.get(),
        }
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

    /// The series of `family` for shard `shard` (label `shard`).
    pub fn by_shard<M: Clone>(family: &Family<Labels, M>, shard: usize) -> M {
        family.get_or_create(&vec![("shard", shard.to_string())]).clone()
    }

    pub fn by_type(family: &Family<Labels, Counter>, type_url: &str) -> Counter {
        family.get_or_create(&vec![("type_url", type_label(type_url).to_string())]).clone()
    }
}

/// Counts of client activity (see [`Metrics::activity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub streams_opened: u64,
    pub streams_closed: u64,
    pub streams_refused: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub handshake_errors: u64,
    pub handshake_timeouts: u64,
    pub accept_errors: u64,
    pub http2_errors: u64,
}

impl Activity {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Activity) -> Activity {
        Activity {
            streams_opened: self.streams_opened.saturating_sub(earlier.streams_opened),
            streams_closed: self.streams_closed.saturating_sub(earlier.streams_closed),
            streams_refused: self.streams_refused.saturating_sub(earlier.streams_refused),
            connections_accepted: self.connections_accepted.saturating_sub(earlier.connections_accepted),
            connections_refused: self.connections_refused.saturating_sub(earlier.connections_refused),
            handshake_errors: self.handshake_errors.saturating_sub(earlier.handshake_errors),
            handshake_timeouts: self.handshake_timeouts.saturating_sub(earlier.handshake_timeouts),
            accept_errors: self.accept_errors.saturating_sub(earlier.accept_errors),
            http2_errors: self.http2_errors.saturating_sub(earlier.http2_errors),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Activity::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_labels_are_the_known_kinds_and_everything_else_is_other() {
        assert_eq!(type_label("networking.istio.io/v1/ServiceEntry"), "networking.istio.io/v1/ServiceEntry");
        assert_eq!(type_label("core/v1alpha1/MeshConfig"), "core/v1alpha1/MeshConfig");
        for bad in ["networking.istio.io/v1/Made1", "networking.istio.io/v9/ServiceEntry", "", "x\ny", "other"] {
            assert_eq!(type_label(bad), "other", "{bad:?}");
        }
        for k in crate::cache::SERVICE_ENTRY_TYPE_URLS {
            assert_eq!(type_label(k), *k, "every ServiceEntry kind served is known");
        }
    }

    #[test]
    fn a_label_flood_adds_one_series() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        for i in 0..5000 {
            Metrics::by_type(&m.acks, &format!("networking.istio.io/v1/Kind{i}")).inc();
        }
        Metrics::by_type(&m.acks, "networking.istio.io/v1/ServiceEntry").inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let series: Vec<_> = out.lines().filter(|l| l.starts_with("cloudmap_mcp_xds_acks_total{")).collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(out.contains(r#"cloudmap_mcp_xds_acks_total{type_url="other"} 5000"#));
    }
}
