//! Attacks on the gRPC listener of the real binary, as an outside client would make them (loopback
//! only, each bounded in count and time). For each: the server's memory (VmHWM, from /proc) stays
//! within 2x its idle RSS, and a new istiod-like client gets its full answer within 1 s during and
//! after the attack. RELIABILITY.md has the figures of the measured run.
//!
//! Registry: CLOUDMAP_MCP_ATTACK_SERVICES services x 10 instances (default 1000; the measured run
//! uses 10000 with a release build: `cargo test --release --test attacks -- --nocapture`).
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmap_mcp::proto::DiscoveryRequest;
use prost::Message;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SOTW: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const SE: &str = "networking.istio.io/v1/ServiceEntry";
/// The issue's bound on a new client's wait, during and after an attack.
const ANSWER_BOUND: Duration = Duration::from_secs(1);

fn services() -> usize {
    std::env::var("CLOUDMAP_MCP_ATTACK_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn registry(services: usize) -> String {
    let mut s = String::from("namespaces:\n  - name: attack.example\n    type: DNS_PRIVATE\n    services:\n");
    for svc in 0..services {
        s.push_str(&format!("      - name: svc-{svc}\n        createDate: \"2024-01-01T00:00:00Z\"\n        instances:\n"));
        for i in 0..10 {
            s.push_str(&format!(
                "          - id: i-{i}\n            attributes: {{AWS_INSTANCE_IPV4: 10.{}.{}.{}, AWS_INSTANCE_PORT: 8080, version: v{i}}}\n",
                svc / 250 % 250,
                svc % 250,
                i + 1
            ));
        }
    }
    s
}

fn mem(pid: u32) -> (u64, u64) {
    proc_mem(pid)
}

/// Sum of a metric over its label sets.
fn metric(server: &ServerProcess, name: &str) -> f64 {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        // The admin listener's own figures (this very request is one of its connections) are not the gRPC listener's.
        .filter(|l| !l.contains("listener=\"admin\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_metric(server: &ServerProcess, name: &str, ok: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(server, name);
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new istiod-like client: connects, plays istiod's opening, checks the ServiceEntry answer holds
/// every service. Returns how long until its full answer.
async fn istiod_answer(server: &ServerProcess, services: usize) -> Duration {
    let t = Instant::now();
    let mut ads =
        tokio::time::timeout(Duration::from_secs(20), AdsStream::connect(&server.url())).await.expect("connect in time");
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    let took = t.elapsed();
    assert_eq!(got[SE].resources.len(), services, "full ServiceEntry state");
    took
}

async fn assert_answer_in_time(server: &ServerProcess, services: usize, when: &str) -> Duration {
    let took = istiod_answer(server, services).await;
    assert!(took <= ANSWER_BOUND, "{when}: a new istiod-like client waited {took:?} for its answer\n");
    took
}

// --- A raw HTTP/2 client, for what well-behaved client libraries refuse to do. ---

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header field without indexing, new name, no Huffman (lengths < 127).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// HEADERS opening an ADS stream, then one request (stream left open).
fn open_stream(stream: u32, type_url: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", SOTW),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, n, v);
    }
    let mut out = frame(0x1, 0x4, stream, &block);
    let req = DiscoveryRequest { type_url: type_url.into(), node: Some(istiod_node()), ..Default::default() }.encode_to_vec();
    let mut msg = vec![0u8];
    msg.extend_from_slice(&(req.len() as u32).to_be_bytes());
    msg.extend_from_slice(&req);
    out.extend(frame(0x0, 0, stream, &msg));
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Preface and SETTINGS; with `huge_windows`, a 2^31-1 window for every stream and the connection,
/// so the server may send as much as its own limits let it.
fn client_start(huge_windows: bool) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    if huge_windows {
        let mut s = vec![0u8, 4];
        s.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
        out.extend(frame(0x4, 0, 0, &s));
        out.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    } else {
        out.extend(frame(0x4, 0, 0, &[]));
    }
    out
}

/// What a raw connection's reader saw.
#[derive(Default)]
struct Seen {
    refused_streams: AtomicU64,
    resets: AtomicU64,
    goaway: AtomicBool,
    closed: AtomicBool,
}

/// Reads and parses frames: ACKs SETTINGS, counts RST_STREAM and GOAWAY; never sends WINDOW_UPDATE.
fn read_frames(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    seen: Arc<Seen>,
) {
    tokio::spawn(async move {
        let mut head = [0u8; 9];
        loop {
            if rd.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                break;
            }
            match head[3] {
                0x4 if head[4] & 1 == 0 => {
                    let _ = wr.lock().await.write_all(&frame(0x4, 1, 0, &[])).await;
                }
                0x3 => {
                    seen.resets.fetch_add(1, Ordering::Relaxed);
                    if payload.get(..4) == Some(&7u32.to_be_bytes()) {
                        seen.refused_streams.fetch_add(1, Ordering::Relaxed);
                    }
                }
                0x7 => seen.goaway.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
        seen.closed.store(true, Ordering::Relaxed);
    });
}

struct Raw {
    wr: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    seen: Arc<Seen>,
}

impl Raw {
    async fn connect(server: &ServerProcess, huge_windows: bool, read: bool) -> Raw {
        let tcp = TcpStream::connect(server.grpc).await.unwrap();
        let (rd, mut wr) = tcp.into_split();
        wr.write_all(&client_start(huge_windows)).await.unwrap();
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let seen = Arc::new(Seen::default());
        if read {
            read_frames(rd, wr.clone(), seen.clone());
        } else {
            // Never read: keep the read half alive (closing it would tell the server).
            std::mem::forget(rd);
        }
        Raw { wr, seen }
    }

    async fn send(&self, bytes: &[u8]) -> bool {
        self.wr.lock().await.write_all(bytes).await.is_ok()
    }

    /// Closes the client's side (the server sees the end of the connection).
    async fn close(&self) {
        let _ = self.wr.lock().await.shutdown().await;
    }
}

struct Target {
    server: ServerProcess,
    services: usize,
    idle_rss: u64,
    /// VmHWM when idle: the peak of loading and the first build, before any attack.
    idle_hwm: u64,
}

impl Target {
    async fn start(extra: &[&str]) -> (Target, tempfile::TempDir) {
        Self::start_limited(extra, None).await
    }

    async fn start_limited(extra: &[&str], open_files: Option<u64>) -> (Target, tempfile::TempDir) {
        let services = services();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        std::fs::write(&path, registry(services)).unwrap();
        let mut args = vec!["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "200ms"];
        args.extend_from_slice(extra);
        // The log level as deployed: RUST_LOG unset, the binary's default filter.
        let server = ServerProcess::start_limited(&args, &[("RUST_LOG", "")], open_files);
        // Idle: loaded (ready), and one istiod served (the encoded state exists).
        let deadline = Instant::now() + Duration::from_secs(180);
        while http_get(server.admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "not ready:\n{}", server.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        istiod_answer(&server, services).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (idle_rss, idle_hwm) = mem(server.child.id());
        eprintln!("{services} services x 10: idle rss {idle_rss} KiB, peak so far {idle_hwm} KiB");
        (Target { server, services, idle_rss, idle_hwm }, dir)
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// Peak RSS within idle + the peak before the attack (loading and the first build; at least
    /// 2x idle): an attack costs no more than loading the registry did. Not 2x idle alone: the
    /// idle RSS falls when the allocator returns the load's memory, which the attack's cost does
    /// not follow. Returns the peak.
    fn assert_memory(&self, attack: &str) -> u64 {
        let (rss, hwm) = mem(self.pid());
        eprintln!(
            "{attack}: rss {rss} KiB, peak {hwm} KiB (idle {} KiB, {:.2}x)",
            self.idle_rss,
            hwm as f64 / self.idle_rss as f64
        );
        assert!(
            hwm <= self.idle_rss + self.idle_hwm.max(self.idle_rss),
            "{attack}: peak RSS {hwm} KiB is more than idle ({} KiB) + the peak before the attack ({} KiB)",
            self.idle_rss,
            self.idle_hwm
        );
        hwm
    }

    fn log_lines(&self) -> usize {
        self.server.logs.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_flood_is_capped_per_connection_and_overall() {
    // --max-ads-streams scaled to the test registry (the default, 1000, for 10,000 services).
    let (t, _dir) = Target::start(&["--max-ads-streams", "300"]).await;
    let t0 = Instant::now();
    // 1. Streams past SETTINGS_MAX_CONCURRENT_STREAMS (a client ignoring the setting): 4 connections
    //    x 2000 streams, each asking for the full ServiceEntry state.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let c = Raw::connect(&t.server, false, true).await;
        let mut batch = Vec::new();
        for i in 0..2000u32 {
            batch.extend(open_stream(2 * i + 1, SE));
        }
        c.send(&batch).await;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = metric(&t.server, "cloudmap_mcp_xds_streams_connected");
    let during = assert_answer_in_time(&t.server, t.services, "stream flood").await;
    let refused: u64 = conns.iter().map(|c| c.seen.refused_streams.load(Ordering::Relaxed)).sum();
    let goaways = conns.iter().filter(|c| c.seen.goaway.load(Ordering::Relaxed)).count();
    eprintln!(
        "stream flood: 8000 streams on 4 connections in {:?}: {refused} refused (REFUSED_STREAM), {goaways} connections sent GOAWAY, {open} ADS streams open after 0.5 s; new client answered in {during:?}",
        t0.elapsed()
    );
    assert!(open <= 400.0 + 1.0, "{open} ADS streams open: more than 100 per connection");
    // h2 sends GOAWAY after 1024 refused streams, so a reader may miss some of them.
    assert!(refused >= 1024, "streams past 100 per connection are refused: {refused}");
    assert_eq!(goaways, 4, "a connection that keeps opening refused streams is sent away");
    t.assert_memory("stream flood (past the limit)");
    drop(conns);

    // 2. Streams within the limit, on as many connections as it takes to reach --max-ads-streams:
    //    3 connections x 100 streams, each with a full response in flight.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let c = Raw::connect(&t.server, false, true).await;
        let mut batch = Vec::new();
        for i in 0..100u32 {
            batch.extend(open_stream(2 * i + 1, SE));
        }
        c.send(&batch).await;
        conns.push(c);
    }
    let open = wait_metric(&t.server, "cloudmap_mcp_xds_streams_connected", |v| v >= 300.0, Duration::from_secs(20)).await;
    assert_eq!(open, 300.0, "3 x 100 streams open");
    let peak = t.assert_memory("300 ADS streams");
    // The cap: one more stream is refused with a clear status.
    let channel = tonic::transport::Endpoint::from_shared(t.server.url()).unwrap().connect().await.unwrap();
    let mut client = cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel);
    let (_tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
    let status = match client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Err(s) => s,
        Ok(mut r) => r.get_mut().message().await.expect_err("refused"),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-ads-streams"), "{status:?}");
    assert!(metric(&t.server, "cloudmap_mcp_xds_streams_refused_total") >= 1.0);
    eprintln!(
        "stream flood: 300 ADS streams (--max-ads-streams) with responses in flight: peak {peak} KiB; the next one refused: {}",
        status.message()
    );
    for c in &conns {
        c.close().await;
    }
    let open = wait_metric(&t.server, "cloudmap_mcp_xds_streams_connected", |v| v == 0.0, Duration::from_secs(10)).await;
    assert_eq!(open, 0.0, "flood streams released when the connections close");
    assert_answer_in_time(&t.server, t.services, "after the stream flood").await;
    t.assert_memory("after the stream flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_reading_streams_are_dropped_at_the_send_timeout() {
    let (t, _dir) = Target::start(&["--send-timeout", "3s"]).await;
    // 3 connections x 100 streams that each ask for the full state, open huge windows, and never
    // read a byte: the server may buffer as much as its own limits allow.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let c = Raw::connect(&t.server, true, false).await;
        let mut batch = Vec::new();
        for i in 0..100u32 {
            batch.extend(open_stream(2 * i + 1, SE));
        }
        c.send(&batch).await;
        conns.push(c);
    }
    let t0 = Instant::now();
    wait_metric(&t.server, "cloudmap_mcp_xds_streams_connected", |v| v >= 300.0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = assert_answer_in_time(&t.server, t.services, "never-reading streams").await;
    let peak = t.assert_memory("300 never-reading streams");
    let dropped = wait_metric(&t.server, "cloudmap_mcp_xds_stream_errors_total", |v| v >= 300.0, Duration::from_secs(20)).await;
    let took = t0.elapsed();
    eprintln!("never-reading: 300 streams held, peak {peak} KiB; dropped ({dropped}) {took:?} after they stopped (--send-timeout 3s); new client answered in {during:?}");
    assert!(dropped >= 300.0, "every stalled stream dropped at the send timeout: {dropped}");
    let open = wait_metric(&t.server, "cloudmap_mcp_connections_open", |v| v <= 0.0, Duration::from_secs(5)).await;
    assert_eq!(open, 0.0, "their connections were closed by the server");
    assert_answer_in_time(&t.server, t.services, "after the never-reading streams").await;
    t.assert_memory("after the never-reading streams");
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_flood_costs_little_and_logs_nothing_per_stream() {
    let (t, _dir) = Target::start(&["--activity-log-interval", "1s"]).await;
    let logs_before = t.log_lines();
    let cpu_before = cpu_seconds(t.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let (stop, sent, reconnects, addr) = (stop.clone(), sent.clone(), reconnects.clone(), t.server.grpc);
        attackers.push(tokio::spawn(async move {
            'conn: while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 200_000 {
                reconnects.fetch_add(1, Ordering::Relaxed);
                let Ok(mut tcp) = TcpStream::connect(addr).await else { break };
                let (mut rd, mut wr) = tcp.split();
                if wr.write_all(&client_start(false)).await.is_err() {
                    continue;
                }
                // Open and cancel streams in batches; drain whatever the server sends.
                let mut sid = 1u32;
                let mut sink = vec![0u8; 64 * 1024];
                loop {
                    let mut batch = Vec::new();
                    for _ in 0..200 {
                        batch.extend(open_stream(sid, "core/v1alpha1/MeshConfig"));
                        batch.extend(frame(0x3, 0, sid, &8u32.to_be_bytes()));
                        sid += 2;
                    }
                    if wr.write_all(&batch).await.is_err() {
                        continue 'conn;
                    }
                    sent.fetch_add(200, Ordering::Relaxed);
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), rd.read(&mut sink)).await {
                        if n == 0 {
                            continue 'conn;
                        }
                    }
                    if stop.load(Ordering::Relaxed) || sid > 1_000_000 {
                        continue 'conn;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        worst = worst.max(assert_answer_in_time(&t.server, t.services, "reset flood").await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    let cpu = cpu_seconds(t.pid()) - cpu_before;
    let lines = t.log_lines() - logs_before;
    let (sent, reconnects) = (sent.load(Ordering::Relaxed), reconnects.load(Ordering::Relaxed));
    eprintln!(
        "reset flood: {sent} streams opened and reset on {reconnects} connections; server CPU {cpu:.2}s; {lines} log lines; h2 connection errors {}; worst new-client answer {worst:?}",
        metric(&t.server, "cloudmap_mcp_http2_connection_errors_total")
    );
    assert!(sent >= 1000, "the flood ran: {sent}");
    assert!(lines <= 50, "the flood wrote {lines} log lines:\n{}", t.server.logs());
    // The flood shows up in the periodic summary instead.
    assert!(t.server.wait_log("gRPC client activity", Duration::from_secs(3)), "{}", t.server.logs());
    t.assert_memory("reset flood");
    assert_answer_in_time(&t.server, t.services, "after the reset flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_made_type_urls_do_not_grow_the_metrics() {
    let (t, _dir) = Target::start(&[]).await;
    let before = http_get(t.server.admin, "/metrics").1.len();
    let channel = tonic::transport::Endpoint::from_shared(t.server.url()).unwrap().connect().await.unwrap();
    let mut streams = Vec::new();
    // 50 streams x 60 distinct type URLs = 3000 kinds, each answered (empty) and ACKed.
    for s in 0..50 {
        let mut ads = AdsStream::open(channel.clone()).await;
        for k in 0..60 {
            ads.send(&format!("networking.istio.io/v1/Flood{s}x{k}"), &timestamp_nonce(), "").await;
        }
        for _ in 0..60 {
            let r = ads.recv(Duration::from_secs(10)).await.expect("answered");
            ads.ack(&r).await;
        }
        streams.push(ads);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = http_get(t.server.admin, "/metrics").1;
    eprintln!("label flood: 3000 distinct type URLs on 50 streams: /metrics {before} -> {} bytes", body.len());
    assert!(!body.contains("Flood"), "a client-made type URL became a label value");
    assert!(body.contains(r#"type_url="other""#));
    assert!(body.len() <= before + 4096, "/metrics grew from {before} to {} bytes", body.len());
    assert_answer_in_time(&t.server, t.services, "label flood").await;
    t.assert_memory("label flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_past_the_open_file_limit_neither_lock_out_clients_nor_spin() {
    // 256 descriptors: the connection cap is fitted below it, so accept() never runs out.
    let (t, dir) = Target::start_limited(&["--handshake-timeout", "3s"], Some(256)).await;
    let logs = t.server.logs();
    assert!(logs.contains("--max-connections lowered to fit the open-file limit"), "{logs}");
    let cpu_before = cpu_seconds(t.pid());
    let mut idle = Vec::new();
    for _ in 0..600 {
        if let Ok(c) = TcpStream::connect(t.server.grpc).await {
            idle.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = cpu_seconds(t.pid()) - cpu_before;
    let (rss_held, _) = mem(t.pid());
    let open = metric(&t.server, "cloudmap_mcp_connections_open");
    let took = assert_answer_in_time(&t.server, t.services, "600 idle connections").await;
    // The registry file can still be read: an edit reaches a held stream.
    let mut held = AdsStream::connect(&t.server.url()).await;
    let first = held.istiod_handshake(ISTIOD_130_KINDS).await;
    std::fs::write(dir.path().join("registry.yaml"), registry(t.services + 1)).unwrap();
    let pushed = held.recv(Duration::from_secs(60)).await.expect("the edit is pushed");
    assert_eq!(pushed.resources.len(), t.services + 1);
    assert_ne!(pushed.version_info, first[SE].version_info);
    let evicted = metric(&t.server, "cloudmap_mcp_connections_evicted_total");
    let accept_errors = metric(&t.server, "cloudmap_mcp_accept_errors_total");
    eprintln!(
        "idle connections: 600 opened with 256 descriptors: {open} open, {evicted} closed to make room, {accept_errors} accept errors, server CPU {cpu:.2}s over 1.5 s; rss while held {rss_held} KiB (idle {}); new client answered in {took:?}", t.idle_rss
    );
    assert!(open <= 256.0 - 64.0, "{open} connections open");
    assert!(evicted >= 300.0, "idle connections gave way to new ones: {evicted}");
    assert!(cpu < 1.0, "the accept loop spins: {cpu:.2}s of CPU in 1.5 s");
    // Past the handshake deadline every idle connection is gone.
    let open = wait_metric(&t.server, "cloudmap_mcp_connections_open", |v| v <= 2.0, Duration::from_secs(10)).await;
    assert!(open <= 2.0, "idle connections still open after the handshake deadline: {open}");
    assert!(metric(&t.server, "cloudmap_mcp_handshake_timeouts_total") >= 1.0);
    t.assert_memory("idle connections");
    drop(idle);
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(3)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["--log-format", "text", "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--registry-file"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("listening") && text.contains("open-file limit"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a pipe:\n{text:?}");
}
