//! The admin server attacked like an outsider would, against the real binary: concurrent debug
//! views at a large registry (memory bounded, istiod unaffected), a reader that stops reading, the
//! debug-view switches.
//!
//! `CLOUDMAP_MCP_ADMIN_SERVICES` (default 2,000 services × 10 instances) and
//! `CLOUDMAP_MCP_ADMIN_REQUESTS` (default 20) scale the attack, e.g. to the 10,000.
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{http_get, http_get_within, AdsStream, ServerProcess};

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `services` services (10 instances each) in one namespace, one line per instance.
fn big_registry(services: usize) -> String {
    let mut s =
        String::from("namespaces:\n- name: big.example\n  type: DNS_PRIVATE\n  services:\n");
    for n in 0..services {
        s +=
            &format!("  - name: app-{n}\n    createDate: '2024-02-01T00:00:00Z'\n    instances:\n");
        for i in 0..10 {
            s += &format!(
                "    - {{id: inst-{i}, attributes: {{AWS_INSTANCE_IPV4: 10.{}.{}.{}, AWS_INSTANCE_PORT: '9000', track: t{i}, AVAILABILITY_ZONE: us-east-1a, REGION: us-east-1}}}}\n",
                n / 200,
                n % 200,
                i + 1
            );
        }
    }
    s
}

fn metric(server: &ServerProcess, name: &str, labels: &str) -> f64 {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Connects like istiod and waits for the full ServiceEntry state; returns how long it took.
async fn full_answer(url: &str, services: usize) -> Duration {
    let t0 = Instant::now();
    let mut ads = AdsStream::connect(url).await;
    ads.send(SE_V1, "", "").await;
    let r = ads
        .recv(Duration::from_secs(60))
        .await
        .expect("ServiceEntry response");
    let took = t0.elapsed();
    let names: BTreeSet<_> = support::service_entries(&r)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names.len(), services, "a full state");
    took
}

fn wait_ready(server: &ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while http_get(server.admin, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready; logs:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_debug_views_at_a_large_registry_stay_bounded() {
    let services = env_usize("CLOUDMAP_MCP_ADMIN_SERVICES", 2_000);
    let requests = env_usize("CLOUDMAP_MCP_ADMIN_REQUESTS", 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, big_registry(services)).unwrap();
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap()]);
    wait_ready(&server);
    let url = server.url();
    let first = full_answer(&url, services).await;
    let idle = server.status_kib("VmRSS");
    println!(
        "{services} services x 10: first full answer in {first:.2?}; server idle rss {idle} KiB"
    );

    // Sample the server's RSS every 10 ms during the attack.
    let peak = Arc::new(AtomicU64::new(idle));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), server.child.id());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // `requests` at once: YAML, JSON and the rejected view, in that proportion 2:1:1.
    let t0 = Instant::now();
    let admin = server.admin;
    let attackers: Vec<_> = (0..requests)
        .map(|i| {
            let path = [
                "/debug/serviceentries",
                "/debug/serviceentries?format=json",
                "/debug/serviceentries",
                "/debug/rejected",
            ][i % 4];
            std::thread::spawn(move || {
                (path, http_get_within(admin, path, Duration::from_secs(300)))
            })
        })
        .collect();
    // A new istiod-like client during the attack still gets its full answer within 1 s.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = full_answer(&url, services).await;
    let mut sizes = std::collections::BTreeMap::new();
    for a in attackers {
        let (path, (code, body)) = a.join().unwrap();
        assert_eq!(code, 200, "{path}: {}", &body[..body.len().min(200)]);
        sizes
            .entry(path)
            .or_insert_with(BTreeSet::new)
            .insert(body.len());
    }
    let attack = t0.elapsed();
    let after = full_answer(&url, services).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let hwm = server.status_kib("VmHWM");
    println!(
        "{requests} concurrent debug views answered in {attack:.2?}; body sizes {sizes:?}; server rss idle {idle} KiB, peak sampled {peak} KiB, VmHWM {hwm} KiB; istiod-like client answered in {during:.2?} during, {after:.2?} after"
    );
    for (path, lens) in &sizes {
        assert_eq!(lens.len(), 1, "{path}: every request got the same body");
    }
    assert!(
        sizes["/debug/serviceentries"].first().unwrap() > &(services * 500),
        "the YAML holds every entry"
    );
    // The ServiceEntry views are streamed: a request holds a piece of its body (32 KiB) plus what
    // hyper queues for its connection (about 400 KiB), whatever the registry's size, and no whole
    // document is ever built. So the growth is bounded per request (1 MiB each, with room), not
    // by the bodies (12 MB here; rendered whole and shared, the server grew by 45 MB).
    let bodies_kib: usize = sizes.values().filter_map(|s| s.first()).sum::<usize>() / 1024;
    assert!(
        peak <= idle + 1024 * requests as u64,
        "peak rss {peak} KiB > idle {idle} KiB + 1 MiB x {requests} requests (bodies: {bodies_kib} KiB)"
    );
    assert!(
        during < Duration::from_secs(1),
        "a new client waited {during:?} during the attack"
    );
    assert!(
        after < Duration::from_secs(1),
        "a new client waited {after:?} after the attack"
    );
    // The ServiceEntry views are streamed per request; the rejected view is rendered once per
    // snapshot and shared.
    let asked = |i: usize| (0..requests).filter(|r| r % 4 == i).count();
    for (view, times) in [
        ("serviceentries_yaml", asked(0) + asked(2)),
        ("serviceentries_json", asked(1)),
        ("rejected", 1),
    ] {
        let renders = metric(
            &server,
            "cloudmap_mcp_debug_view_renders_total",
            &format!("view=\"{view}\""),
        );
        assert_eq!(renders, times as f64, "{view} rendered {times} times");
    }
    let shared = metric(&server, "cloudmap_mcp_debug_view_shared_total", "");
    assert_eq!(
        shared as usize,
        asked(3) - 1,
        "the other requests for /debug/rejected shared its render"
    );
}

/// A client that asks for `/debug/serviceentries` and then stops reading holds back only its own
/// answer: other readers get theirs, an istiod-like client gets a registry edit, a new reader sees
/// the edit; when the slow reader reads on, it gets the whole body of the snapshot its request
/// started on (not a mix of two).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stops_reading_blocks_nobody() {
    use std::io::{Read, Write};
    let services = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    let registry = big_registry(services);
    std::fs::write(&path, &registry).unwrap();
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap()]);
    wait_ready(&server);
    let mut ads = AdsStream::connect(&server.url()).await;
    ads.send(SE_V1, "", "").await;
    let first = ads.recv(Duration::from_secs(60)).await.expect("ServiceEntry response");
    ads.ack(&first).await;
    let json = "/debug/serviceentries?format=json";
    let (code, before) = http_get_within(server.admin, json, Duration::from_secs(120));
    assert_eq!(code, 200);

    // The slow reader: a 4 KiB receive window, 1 KiB read, then nothing. The body (8 MB of JSON)
    // is more than the kernel's buffers and hyper's queue together hold, so its stream waits.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.admin.into()).unwrap();
    let mut slow: std::net::TcpStream = sock.into();
    slow.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(slow, "GET {json} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = vec![0u8; 1024];
    slow.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"HTTP/1.0 200"), "{}", String::from_utf8_lossy(&head[..100]));

    // Meanwhile: other readers, the same view and another one.
    let (code, again) = http_get_within(server.admin, json, Duration::from_secs(120));
    assert_eq!((code, again.len()), (200, before.len()), "another reader gets the whole view");
    assert_eq!(http_get(server.admin, "/debug/rejected").0, 200);
    // The ADS path: an edit reaches the istiod-like client.
    let (old_ip, new_ip) = ("AWS_INSTANCE_IPV4: 10.0.0.1,", "AWS_INSTANCE_IPV4: 10.250.0.1,");
    assert_eq!(registry.matches(old_ip).count(), 1);
    support::write_atomic(&path, &registry.replacen(old_ip, new_ip, 1));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = ads
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the edit reaches the ADS client while a debug reader is stalled");
        ads.ack(&r).await;
        let edited = support::service_entries(&r)
            .iter()
            .any(|(_, _, se)| se.endpoints.iter().any(|e| e.address == "10.250.0.1"));
        if edited {
            break;
        }
    }
    let (_, after) = http_get_within(server.admin, json, Duration::from_secs(120));
    assert!(after.contains("\"10.250.0.1\""), "a new reader sees the edit");

    // The slow reader reads on: the snapshot its request started on, whole.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    let text = String::from_utf8(head).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    assert!(body == before, "the slow reader got {} bytes, not the {} of the snapshot it asked", body.len(), before.len());
    assert_ne!(before, after);
}

/// A small registry for the switches below.
fn small_server(extra: &[&str]) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, big_registry(3)).unwrap();
    let mut args = vec!["--registry-file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(&args);
    wait_ready(&server);
    (dir, server)
}

const DEBUG_PATHS: &[&str] = &[
    "/debug/serviceentries",
    "/debug/serviceentries?format=json",
    "/debug/rejected",
    "/debug/clients",
];

#[test]
fn debug_views_off_answer_404_while_health_readiness_and_metrics_stay() {
    let (_dir, server) = small_server(&["--debug-views=false"]);
    for p in DEBUG_PATHS {
        assert_eq!(http_get(server.admin, p).0, 404, "{p}");
    }
    assert_eq!(http_get(server.admin, "/healthz").0, 200);
    let (code, body) = http_get(server.admin, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready: 3 ServiceEntries\n"));
    assert!(http_get(server.admin, "/metrics")
        .1
        .contains("cloudmap_mcp_resources"));
    assert!(
        server.logs().contains("\"debug_views\":\"off\""),
        "the startup line says so"
    );
}

#[test]
fn debug_addr_serves_the_debug_views_there_and_not_on_the_admin_address() {
    let (_dir, server) = small_server(&["--debug-addr", "127.0.0.1:0"]);
    let debug = server
        .debug
        .expect("the listening line names the debug address");
    assert_ne!(debug, server.admin);
    for p in DEBUG_PATHS {
        assert_eq!(http_get(server.admin, p).0, 404, "{p} on the admin address");
        assert_eq!(http_get(debug, p).0, 200, "{p} on the debug address");
    }
    assert!(http_get(debug, "/debug/serviceentries")
        .1
        .contains("app-2.big.example"));
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http_get(server.admin, p).0, 200, "{p} on the admin address");
        assert_eq!(http_get(debug, p).0, 404, "{p} not on the debug address");
    }
}

#[test]
fn debug_addr_with_debug_views_off_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args([
            "serve",
            "--registry-file",
            "/nonexistent",
            "--debug-addr",
            "127.0.0.1:0",
            "--debug-views",
            "false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--debug-views=false turns off"), "{err}");
}

/// Reads until the server closes the connection (EOF or reset); false if still open at `deadline`.
fn closed_by_server(s: &mut std::net::TcpStream, deadline: Instant) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn silent_slow_and_idle_admin_connections_are_closed_and_capped() {
    use std::io::Write;
    let (_dir, server) = small_server(&["--admin-header-timeout", "3s", "--admin-max-connections", "8"]);
    let t0 = Instant::now();
    // The slow-loris connection sends a header line every second, so only a deadline on the whole
    // head (not an idle timer) closes it.
    // 6 connections that never send anything, one that sends half a header slowly, one kept alive
    // after a request: all hold a slot until the header timeout closes them.
    let mut silent: Vec<_> = (0..6).map(|_| std::net::TcpStream::connect(server.admin).unwrap()).collect();
    let mut slow = std::net::TcpStream::connect(server.admin).unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut kept = std::net::TcpStream::connect(server.admin).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The server takes connections in the order they arrived, each with its slot: the answer on the
    // last one proves all 8 hold a slot (a fixed sleep was not enough on a loaded CI machine).
    {
        use std::io::Read;
        kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = kept.read(&mut buf).expect("the kept-alive connection is answered");
            assert!(n > 0, "closed before answering");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    }
    // The cap (8) is reached: one more is closed at once.
    let mut over = std::net::TcpStream::connect(server.admin).unwrap();
    assert!(closed_by_server(&mut over, Instant::now() + Duration::from_secs(2)), "a connection over the cap is closed");
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(1));
        let _ = slow.write_all(b"X-Slow: 1\r\n"); // may already be cut off
    }
    let deadline = t0 + Duration::from_secs(8);
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(closed_by_server(s, deadline), "silent connection {i} still open after 8 s");
    }
    assert!(closed_by_server(&mut slow, deadline), "a slow header is cut off");
    assert!(closed_by_server(&mut kept, deadline), "an idle kept-alive connection is closed");
    let closed_after = t0.elapsed();
    // The slots are free again.
    assert_eq!(http_get(server.admin, "/readyz").0, 200);
    let refused = metric(&server, "cloudmap_mcp_connections_refused_total", "listener=\"admin\"");
    assert!(refused >= 1.0, "refusal counted: {refused}");
    println!("8 silent/slow/idle admin connections closed within {closed_after:.2?} (--admin-header-timeout 3s); refused over the cap: {refused}");
}
