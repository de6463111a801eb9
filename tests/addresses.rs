//! The address rule against the real binary (docs/reaching-services.md, "The address rule"):
//! replicas with different histories, and restarts, serve the same bytes; ranges that would send
//! apps somewhere else are refused at startup.
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const SE: &str = "networking.istio.io/v1/ServiceEntry";
/// 14 usable addresses for 13 services: collisions everywhere.
const SMALL_RANGE: &str = "241.9.0.0/28";

/// `services` of the 13 (by index), each with two instances (so each gets a VIP), all created at
/// the same time.
fn registry(services: impl IntoIterator<Item = usize>) -> String {
    let mut s = String::from("namespaces:\n  - name: shop\n    type: HTTP\n    services:\n");
    for i in services {
        s.push_str(&format!(
            "      - name: svc-{i:02}\n        createDate: \"2024-01-01T00:00:00Z\"\n        instances:\n          - id: a\n            attributes: {{AWS_INSTANCE_IPV4: 10.0.{i}.1}}\n          - id: b\n            attributes: {{AWS_INSTANCE_IPV4: 10.0.{i}.2}}\n"
        ));
    }
    s
}

fn start(path: &Path) -> ServerProcess {
    ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "200ms", "--vip-cidr", SMALL_RANGE])
}

/// The served resources' bytes, and host → addresses for messages.
type Served = (Vec<Vec<u8>>, Vec<(Vec<String>, Vec<String>)>);

fn served(r: &cloudmap_mcp::proto::DiscoveryResponse) -> Served {
    let bytes = r.resources.iter().map(|a| a.value.clone()).collect();
    let addrs = service_entries(r).into_iter().map(|(_, _, se)| (se.hosts, se.addresses)).collect();
    (bytes, addrs)
}

async fn first_answer(server: &ServerProcess) -> cloudmap_mcp::proto::DiscoveryResponse {
    let mut ads = AdsStream::connect(&server.url()).await;
    ads.istiod_handshake(ISTIOD_130_KINDS).await.remove(SE).unwrap()
}

#[tokio::test]
async fn replicas_with_different_histories_and_restarts_serve_the_same_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (grown, full) = (dir.path().join("grown.yaml"), dir.path().join("full.yaml"));
    // Replica one starts with 6 of the services and is then given all 13.
    std::fs::write(&grown, registry([0, 2, 4, 6, 8, 10])).unwrap();
    let one = start(&grown);
    let mut ads = AdsStream::connect(&one.url()).await;
    let first = ads.istiod_handshake(ISTIOD_130_KINDS).await.remove(SE).unwrap();
    assert_eq!(first.resources.len(), 6);
    write_atomic(&grown, &registry(0..13));
    let deadline = Instant::now() + Duration::from_secs(10);
    let grown_answer = loop {
        let r = ads.recv(deadline.saturating_duration_since(Instant::now())).await.expect("the edit is pushed");
        ads.ack(&r).await;
        if r.type_url == SE && r.resources.len() == 13 {
            break r;
        }
    };
    // Replica two starts with the 13.
    std::fs::write(&full, registry(0..13)).unwrap();
    let two = start(&full);
    let fresh = first_answer(&two).await;
    let (one_bytes, one_addrs) = served(&grown_answer);
    let (two_bytes, two_addrs) = served(&fresh);
    assert_eq!(one_addrs, two_addrs, "the same addresses on both replicas");
    assert!(one_addrs.iter().all(|(_, a)| a.len() == 1), "every service has a VIP: {one_addrs:?}");
    assert!(one_bytes == two_bytes, "the same ServiceEntry bytes on both replicas");
    assert_eq!(grown_answer.version_info, fresh.version_info);
    // Replica one restarted (now reading 13 from the start), replica two restarted: the same again.
    drop(ads);
    drop(one);
    drop(two);
    for path in [&grown, &full] {
        let again = start(path);
        let r = first_answer(&again).await;
        assert_eq!(served(&r).1, one_addrs, "after a restart");
        assert!(served(&r).0 == one_bytes, "the same bytes after a restart");
    }
}

/// Runs the binary with `--vip-cidr range`; returns whether it exited (within 10 s) and its stderr.
fn run_with_range(range: &str) -> (Option<std::process::ExitStatus>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(0..2)).unwrap();
    let bin = std::env::var_os("CLOUDMAP_MCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cloudmap-mcp").into());
    let mut child = Command::new(bin)
        .args(["--log-format", "text", "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--registry-file", path.to_str().unwrap(), "--vip-cidr", range])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn ranges_that_mean_something_else_are_refused_at_startup() {
    for (range, why) in [
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "169.254.169.254"),
        ("224.0.0.0/4", "multicast"),
        ("0.0.0.0/1", "unspecified"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("::ffff:0:0/96", "IPv4-mapped"),
    ] {
        let (status, err) = run_with_range(range);
        let status = status.unwrap_or_else(|| panic!("{range}: the server started; stderr:\n{err}"));
        assert!(!status.success(), "{range}: {status}");
        assert!(err.contains("--vip-cidr") && err.contains(range) && err.contains(why), "{range}: {err}");
    }
}

#[test]
fn a_range_outside_the_reserved_ones_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(0..2)).unwrap();
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--vip-cidr", "10.0.0.0/8"]);
    assert!(
        server.wait_log("--vip-cidr 10.0.0.0/8 is outside 240.0.0.0/4 and fc00::/7", Duration::from_secs(5)),
        "{}",
        server.logs()
    );
    // `render` says the same on stderr.
    let bin = std::env::var_os("CLOUDMAP_MCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cloudmap-mcp").into());
    let out = Command::new(bin)
        .args(["render", "--registry-file", path.to_str().unwrap(), "--vip-cidr", "10.0.0.0/8"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --vip-cidr 10.0.0.0/8 is outside"), "{out:?}");
    let quiet = ServerProcess::start(&["--registry-file", path.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!quiet.logs().contains("is outside 240.0.0.0/4"), "{}", quiet.logs());
}
