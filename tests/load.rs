//! Load over loopback against the real binary (127.0.0.1 only, bounded counts and time):
//! 1. N concurrent istiod-like streams: every kind answered, then every stream gets an edit;
//! 2. a reconnect storm (M connects, each a full istiod handshake) while the N streams stay;
//! 3. a client that stops reading: it is dropped after --send-timeout
//!    (`cloudmap_mcp_xds_stream_errors_total{reason="slow_client"}`), everyone else keeps getting
//!    every push.
//!
//! Throughout, every ServiceEntry response any client sees must hold the full set of resources, and
//! the server's memory (VmRSS/VmHWM from /proc) must stay bounded. Figures are printed (run with
//! `--nocapture`) for RELIABILITY.md.
//!
//! `load_default` runs in `cargo test` (sized for a 2-core CI); `load_heavy` is ignored by default:
//! `cargo test --release --test load -- --ignored --nocapture load_heavy`
//! Sizes can be overridden with CLOUDMAP_MCP_LOAD_STREAMS, CLOUDMAP_MCP_LOAD_RECONNECTS,
//! CLOUDMAP_MCP_LOAD_SERVICES.
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use cloudmap_mcp::proto::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use support::*;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";

#[derive(Clone, Copy, Debug)]
struct Sizes {
    streams: usize,
    reconnects: usize,
    reconnect_concurrency: usize,
    services: usize,
    instances_per_service: usize,
    /// The storm must finish within this time.
    storm_deadline: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Sizes {
    fn with_env(self) -> Sizes {
        Sizes {
            streams: env_usize("CLOUDMAP_MCP_LOAD_STREAMS", self.streams),
            reconnects: env_usize("CLOUDMAP_MCP_LOAD_RECONNECTS", self.reconnects),
            services: env_usize("CLOUDMAP_MCP_LOAD_SERVICES", self.services),
            ..self
        }
    }
}

/// A registry with `services` services of `per` instances each; `generation` moves one address so
/// every edit changes exactly one ServiceEntry and keeps the set of names.
fn registry(services: usize, per: usize, generation: u32) -> String {
    let mut s = String::from("namespaces:\n");
    for ns in 0..2 {
        s.push_str(&format!("  - name: load-{ns}.example\n    type: DNS_PRIVATE\n    services:\n"));
        for svc in (0..services).filter(|i| i % 2 == ns) {
            s.push_str(&format!("      - name: svc-{svc}\n        createDate: \"2024-01-01T00:00:00Z\"\n        instances:\n"));
            for i in 0..per {
                let last = if svc == 0 && i == 0 { generation % 250 + 1 } else { (i + 1) as u32 };
                s.push_str(&format!(
                    "          - id: i-{i}\n            attributes: {{AWS_INSTANCE_IPV4: 10.{}.{}.{last}, AWS_INSTANCE_PORT: 8080, version: v{}, REGION: eu-west-1, AVAILABILITY_ZONE: eu-west-1a}}\n",
                    svc / 250,
                    svc % 250,
                    i % 3
                ));
            }
        }
    }
    s
}

fn expected_names(text: &str) -> BTreeSet<String> {
    let snap = cloudmap_mcp::source::file::parse(std::path::Path::new("load.yaml"), text).unwrap();
    let t = cloudmap_mcp::translate::translate(&snap, &cloudmap_mcp::translate::Options::default());
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
    t.entries.iter().map(|e| e.resource_name()).collect()
}

/// Every ServiceEntry response must carry the full set: never partial, never empty.
fn check_full(r: &DiscoveryResponse, expected: &BTreeSet<String>, seen: &AtomicUsize) {
    assert_eq!(r.type_url, SE_V1);
    // Resource names from the MCP envelopes (the ServiceEntry bodies are checked elsewhere).
    let names: BTreeSet<String> = r
        .resources
        .iter()
        .map(|any| {
            let res = cloudmap_mcp::proto::istio::mcp::v1alpha1::Resource::decode(any.value.as_slice()).expect("MCP resource");
            assert!(res.body.is_some_and(|b| !b.value.is_empty()), "resource without a body");
            res.metadata.expect("metadata").name
        })
        .collect();
    assert_eq!(names.len(), r.resources.len(), "duplicate resources in one response");
    assert!(&names == expected, "partial or wrong state: {} resources, expected {}", names.len(), expected.len());
    seen.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn mem(pid: u32) -> Mem {
    let (rss_kib, hwm_kib) = proc_mem(pid);
    Mem { rss_kib, hwm_kib }
}

fn metric(server: &ServerProcess, name: &str) -> f64 {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric(server: &ServerProcess, name: &str, want: f64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if metric(server, name) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Connects, plays istiod's opening, checks the ServiceEntry state, ACKs everything.
async fn istiod_stream(url: String, expected: Arc<BTreeSet<String>>, seen: Arc<AtomicUsize>) -> AdsStream {
    let mut ads = AdsStream::connect(&url).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(got.len(), ISTIOD_130_KINDS.len() + 1, "every kind answered");
    check_full(&got[SE_V1], &expected, &seen);
    ads
}

/// Waits for the next push on a held stream: it must be the ServiceEntry kind, with the full set.
async fn expect_push(ads: &mut AdsStream, expected: &BTreeSet<String>, version: &str, seen: &AtomicUsize) -> String {
    loop {
        let r = ads.recv(Duration::from_secs(30)).await.expect("push within 30 s");
        check_full(&r, expected, seen);
        ads.ack(&r).await;
        if r.version_info != version {
            return r.version_info;
        }
    }
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn add(&mut self, s: String) {
        eprintln!("LOAD {s}");
        self.lines.push(s);
    }
}

async fn run(sizes: Sizes) {
    let sizes = sizes.with_env();
    let mut report = Report { lines: Vec::new() };
    report.add(format!("sizes {sizes:?}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    let mut generation = 0;
    let text = registry(sizes.services, sizes.instances_per_service, generation);
    let expected = Arc::new(expected_names(&text));
    std::fs::write(&path, &text).unwrap();
    // Held streams plus the storm's, each on its own connection: above the default caps in the heavy run.
    let cap = (2 * (sizes.streams + sizes.reconnect_concurrency) + 16).max(1000).to_string();
    let mut server = ServerProcess::start(&[
        "--registry-file",
        path.to_str().unwrap(),
        "--registry-poll-interval",
        "100ms",
        "--istio-namespace",
        "istio-system",
        "--send-timeout",
        "2s",
        "--max-connections",
        &cap,
        "--max-ads-streams",
        &cap,
    ]);
    let pid = server.child.id();
    let url = server.url();
    let seen = Arc::new(AtomicUsize::new(0));
    let idle = mem(pid);
    report.add(format!("server idle: rss {} KiB", idle.rss_kib));

    // 1. N concurrent streams.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sizes.streams {
        tasks.push(tokio::spawn(istiod_stream(url.clone(), expected.clone(), seen.clone())));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.expect("stream task"));
    }
    let opened = t0.elapsed();
    assert!(wait_metric(&server, "cloudmap_mcp_xds_streams_connected", sizes.streams as f64, Duration::from_secs(10)).await);
    let held = mem(pid);
    report.add(format!(
        "phase 1: {} streams opened and fully answered ({} kinds each) in {:.2?}; server rss {} KiB",
        sizes.streams,
        ISTIOD_130_KINDS.len() + 1,
        opened,
        held.rss_kib
    ));

    // Every held stream gets one edit.
    let mut version = String::new();
    {
        let r0 = http_get(server.admin, "/debug/clients").1;
        assert!(r0.contains("last_acked_version"));
    }
    let push = |streams: Vec<AdsStream>, version: String| {
        let expected = expected.clone();
        let seen = seen.clone();
        async move {
            let tasks: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    let (expected, seen, version) = (expected.clone(), seen.clone(), version.clone());
                    tokio::spawn(async move {
                        let v = expect_push(&mut s, &expected, &version, &seen).await;
                        (s, v)
                    })
                })
                .collect();
            let mut out = Vec::new();
            let mut versions = BTreeSet::new();
            for t in tasks {
                let (s, v) = t.await.expect("push task");
                versions.insert(v);
                out.push(s);
            }
            assert_eq!(versions.len(), 1, "every stream got the same new version");
            (out, versions.into_iter().next().unwrap())
        }
    };
    generation += 1;
    let t0 = Instant::now();
    write_atomic(&path, &registry(sizes.services, sizes.instances_per_service, generation));
    let (streams, v) = push(streams, version.clone()).await;
    version = v;
    report.add(format!("phase 1: edit pushed to all {} streams in {:.2?}", streams.len(), t0.elapsed()));

    // 2. Reconnect storm while the streams stay.
    let before_storm = mem(pid);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(sizes.reconnect_concurrency));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..sizes.reconnects {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (url, expected, seen, ok) = (url.clone(), expected.clone(), seen.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let s = istiod_stream(url, expected, seen).await;
            drop(s);
            ok.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("reconnect task");
    }
    let storm = t0.elapsed();
    let storm_cpu = cpu_seconds(pid) - cpu0;
    let after_storm = mem(pid);
    assert_eq!(ok.load(Ordering::Relaxed), sizes.reconnects);
    report.add(format!(
        "phase 2: {} reconnects (full istiod handshake each, {} at a time) absorbed in {:.2?} ({:.0}/s), server CPU {:.2}s ({:.1} ms per connect); server rss {} -> {} KiB, hwm {} KiB",
        sizes.reconnects,
        sizes.reconnect_concurrency,
        storm,
        sizes.reconnects as f64 / storm.as_secs_f64(),
        storm_cpu,
        storm_cpu * 1000.0 / sizes.reconnects as f64,
        before_storm.rss_kib,
        after_storm.rss_kib,
        after_storm.hwm_kib
    ));
    assert!(storm <= sizes.storm_deadline, "storm took {storm:?}, more than {:?}", sizes.storm_deadline);
    assert!(
        wait_metric(&server, "cloudmap_mcp_xds_streams_connected", sizes.streams as f64, Duration::from_secs(15)).await,
        "storm streams were not all released: {}",
        metric(&server, "cloudmap_mcp_xds_streams_connected")
    );
    assert!(server.alive(), "server died in the storm");

    // The held streams were served throughout: one more edit reaches all of them.
    generation += 1;
    let t0 = Instant::now();
    write_atomic(&path, &registry(sizes.services, sizes.instances_per_service, generation));
    let (streams, v) = push(streams, version.clone()).await;
    version = v;
    report.add(format!("phase 2: edit after the storm pushed to all {} held streams in {:.2?}", streams.len(), t0.elapsed()));

    // 3. A client that stops reading. Small HTTP/2 windows make its buffers fill after a few pushes.
    let slow_errors = r#"cloudmap_mcp_xds_stream_errors_total{reason="slow_client"}"#;
    assert_eq!(metric(&server, slow_errors), 0.0);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (slow_tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let slow_rx = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut slow = AdsStream { tx: slow_tx, rx: slow_rx };
    slow.istiod_handshake(ISTIOD_130_KINDS).await;
    // From here on it reads nothing. Keep editing until the server drops it; the others must get
    // every push, each with the full state.
    let t_stop = Instant::now();
    let mut streams = streams;
    let mut edits = 0;
    let mut worst_push = Duration::ZERO;
    let dropped_after = loop {
        generation += 1;
        edits += 1;
        let t0 = Instant::now();
        write_atomic(&path, &registry(sizes.services, sizes.instances_per_service, generation));
        let (s, v) = push(streams, version.clone()).await;
        streams = s;
        version = v;
        worst_push = worst_push.max(t0.elapsed());
        if metric(&server, slow_errors) == 1.0 {
            break t_stop.elapsed();
        }
        assert!(edits < 40, "slow client never dropped:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(server.logs().contains("client took no response data for the send timeout"));
    let after_slow = mem(pid);
    report.add(format!(
        "phase 3: a client that stopped reading was dropped {:.2?} after it stopped ({} edits, --send-timeout 2s); the {} others got every push, slowest push {:.2?}; server rss {} KiB",
        dropped_after,
        edits,
        streams.len(),
        worst_push,
        after_slow.rss_kib
    ));
    drop(slow);

    // After all that: connected streams as expected, nothing lost, memory bounded.
    assert!(wait_metric(&server, "cloudmap_mcp_xds_streams_connected", sizes.streams as f64, Duration::from_secs(10)).await);
    generation += 1;
    write_atomic(&path, &registry(sizes.services, sizes.instances_per_service, generation));
    let (streams, _) = push(streams, version.clone()).await;
    let end = mem(pid);
    let total_streams = metric(&server, "cloudmap_mcp_xds_streams_total");
    report.add(format!(
        "end: {} streams still held, {} streams accepted in all, {} full ServiceEntry states checked, none partial or empty; server rss {} KiB, peak (VmHWM) {} KiB",
        streams.len(),
        total_streams,
        seen.load(Ordering::Relaxed),
        end.rss_kib,
        end.hwm_kib
    ));
    assert!(!server.logs().contains("panicked"));
    // Memory: bounded by what the held streams need, not by how many came and went.
    let per_stream_budget_kib = 256;
    let bound = idle.rss_kib + 64 * 1024 + (sizes.streams as u64) * per_stream_budget_kib;
    assert!(end.hwm_kib < bound, "peak RSS {} KiB over the bound {bound} KiB", end.hwm_kib);
    assert!(
        after_storm.rss_kib < before_storm.rss_kib + 64 * 1024,
        "RSS grew by {} KiB in the storm",
        after_storm.rss_kib.saturating_sub(before_storm.rss_kib)
    );
    if let Ok(out) = std::env::var("CLOUDMAP_MCP_LOAD_REPORT") {
        std::fs::write(out, report.lines.join("\n") + "\n").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_default() {
    run(Sizes {
        streams: 200,
        reconnects: 1000,
        reconnect_concurrency: 32,
        services: 200,
        instances_per_service: 3,
        storm_deadline: Duration::from_secs(60),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "heavy: run with --ignored (see the module docs)"]
async fn load_heavy() {
    run(Sizes {
        streams: 1000,
        reconnects: 5000,
        reconnect_concurrency: 64,
        services: 500,
        instances_per_service: 2,
        storm_deadline: Duration::from_secs(120),
    })
    .await;
}
