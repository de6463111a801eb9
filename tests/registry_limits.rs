//! Attacks through the registry file, against the real binary: a huge file and a YAML alias bomb
//! (168 KB that expand to 10⁹ instances), at startup and as live edits.
//!
//! At startup the server must exit at once with a clear error (not abort out of memory); as an
//! edit, the file is refused with a log line, the last good state keeps being served to old and
//! new clients, memory stays bounded (VmHWM from /proc), and a good edit afterwards is applied.
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use support::{service_entries, write_atomic, AdsStream, ServerProcess, ISTIOD_130_KINDS};

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";

fn registry(services: usize, per: usize, generation: u32) -> String {
    let mut s = String::from("namespaces:\n  - name: lim.example\n    type: HTTP\n    services:\n");
    for svc in 0..services {
        s.push_str(&format!("      - name: svc-{svc}\n        instances:\n"));
        for i in 0..per {
            let last = if svc == 0 && i == 0 { generation * 100 + 1 } else { i as u32 + 1 };
            s.push_str(&format!(
                "          - {{id: i-{i}, attributes: {{AWS_INSTANCE_IPV4: 10.0.{}.{last}, AWS_INSTANCE_PORT: 8080}}}}\n",
                svc % 250
            ));
        }
    }
    s
}

/// `namespaces` namespaces share the first one's list of `services` services, which all share
/// the first service's list of `instances` instances: namespaces × services × instances in all.
fn alias_bomb(namespaces: usize, services: usize, instances: usize) -> String {
    let mut s = String::from("namespaces:\n  - name: n0\n    type: HTTP\n    services: &s\n      - name: s0\n        instances: &i\n");
    for i in 0..instances {
        s.push_str(&format!("          - {{id: i{i}, attributes: {{AWS_INSTANCE_IPV4: 10.0.0.1, AWS_INSTANCE_PORT: 80}}}}\n"));
    }
    for i in 1..services {
        s.push_str(&format!("      - {{name: s{i}, instances: *i}}\n"));
    }
    for i in 1..namespaces {
        s.push_str(&format!("  - {{name: n{i}, type: HTTP, services: *s}}\n"));
    }
    s
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `serve` until it exits (it must, within 60 s); returns its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let (code, _, err) = support::serve_to_exit(args, Duration::from_secs(60));
    (code, err)
}

#[test]
fn at_startup_an_oversized_file_or_an_alias_bomb_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    let p = path.to_str().unwrap();

    // A file over --registry-max-bytes: refused before it is read.
    std::fs::write(&path, registry(200, 5, 0)).unwrap();
    let (code, err) = run_to_exit(&["--registry-file", p, "--registry-max-bytes", "10000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("-byte cap (--registry-max-bytes)") && err.contains("over the 10000"), "{err}");

    // The default cap: a 1 GiB file (sparse: nothing to write) is refused from its size alone.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let (code, err) = run_to_exit(&["--registry-file", p]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is 1073741824 bytes, over the 134217728-byte cap"), "{err}");

    // 1,000 × 1,000 × 1,000 = 10⁹ instances from 168 KB, with the default caps: a clean exit with
    // the guard named (the YAML parser's own alias guard stops this one first), not an abort out
    // of memory.
    std::fs::write(&path, alias_bomb(1000, 1000, 1000)).unwrap();
    let (code, err) = run_to_exit(&["--registry-file", p]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("registry too large") && err.contains("line "), "{err}");
    // Within the parser's guard, the instance cap counts what aliases expand to: 10 × 10 × 11.
    std::fs::write(&path, alias_bomb(10, 10, 11)).unwrap();
    let (code, err) = run_to_exit(&["--registry-file", p, "--registry-max-instances", "1000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more than 1000 instances after alias expansion (--registry-max-instances)"), "{err}");
    // And the service cap.
    std::fs::write(&path, alias_bomb(100, 1000, 1)).unwrap();
    let (code, err) = run_to_exit(&["--registry-file", p, "--registry-max-services", "5000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more than 5000 services after alias expansion (--registry-max-services)"), "{err}");
}

fn names(r: &cloudmap_mcp::proto::DiscoveryResponse) -> BTreeSet<String> {
    service_entries(r).into_iter().map(|(n, _, _)| n).collect()
}

/// Asserts that the client receives nothing for `d`.
async fn quiet(ads: &mut AdsStream, d: Duration, what: &str) {
    if let Some(r) = ads.recv(d).await {
        panic!("{what}: unexpected push of {} resources", r.resources.len());
    }
}

fn write_sparse_atomic(path: &Path, len: u64) {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).unwrap().set_len(len).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_edits_over_the_caps_are_refused_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    let good = registry(200, 5, 0);
    std::fs::write(&path, &good).unwrap();
    let max_instances = 20_000;
    let server = ServerProcess::start(&[
        "--registry-file",
        path.to_str().unwrap(),
        "--registry-poll-interval",
        "100ms",
        "--registry-max-instances",
        &max_instances.to_string(),
    ]);
    let pid = server.child.id();
    let mut ads = AdsStream::connect(&server.url()).await;
    let all = names(&ads.istiod_handshake(ISTIOD_130_KINDS).await[SE_V1]);
    assert_eq!(all.len(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, idle_hwm) = memory(pid);

    // 1. A 1 GiB file (the 1 GB file took 3.9 GB): refused from its size, never read.
    write_sparse_atomic(&path, 1 << 30);
    assert!(server.wait_log("over the 134217728-byte cap", Duration::from_secs(10)), "{}", server.logs());
    assert!(server.logs().contains("registry file edit refused; still serving the last good version"));
    quiet(&mut ads, Duration::from_millis(500), "oversized file").await;
    let (_, hwm) = memory(pid);
    assert!(hwm < idle_hwm + 16 * 1024, "peak {hwm} KiB after the 1 GiB file, idle peak {idle_hwm} KiB");

    // 2. An alias bomb of 10⁹ instances (168 KB): refused at the instance cap, while it is read.
    let bomb = alias_bomb(1000, 1000, 1000);
    write_atomic(&path, &bomb);
    let needle = format!("more than {max_instances} instances after alias expansion");
    assert!(server.wait_log(&needle, Duration::from_secs(20)), "{}", server.logs());
    assert!(server.logs().contains("registry file edit rejected; still serving the last good version"));
    quiet(&mut ads, Duration::from_millis(500), "alias bomb").await;
    let (rss, hwm) = memory(pid);
    // 20,000 instances cost a few tens of MB while they are read (debug build).
    assert!(hwm < 2 * idle_hwm + 64 * 1024, "peak {hwm} KiB after the bomb, idle {idle_rss} KiB (peak {idle_hwm} KiB)");

    // Clients: the one connected kept its state; a new one gets the full last good state.
    let mut fresh = AdsStream::connect(&server.url()).await;
    assert_eq!(names(&fresh.istiod_handshake(ISTIOD_130_KINDS).await[SE_V1]), all, "a new client gets the last good state");
    drop(fresh);

    // 3. A good edit afterwards is applied.
    write_atomic(&path, &registry(200, 5, 1));
    let r = ads.recv(Duration::from_secs(10)).await.expect("the good edit is pushed");
    assert_eq!(names(&r), all);
    let moved = service_entries(&r).into_iter().filter(|(_, _, se)| se.endpoints.iter().any(|e| e.address == "10.0.0.101")).count();
    assert_eq!(moved, 1, "the edited address is served");
    assert!(!server.logs().contains("panicked"));
    eprintln!(
        "REGISTRY LIMITS: idle rss {idle_rss} KiB (peak {idle_hwm}); after a 1 GiB file and a 10⁹-instance alias bomb: rss {rss} KiB, peak {hwm} KiB"
    );
}
