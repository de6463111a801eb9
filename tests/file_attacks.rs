//! Attacks through the mapping file and through special files, against the real binary (issue 22):
//! a 100 KB nesting bomb, too many rules, a glob of too many alternatives, and a FIFO in place of
//! the registry file or the mapping file.
//!
//! While serving, each is refused with one log line naming the reason, readiness says which file is
//! not applied and why (still 200: the last good version is served), and a good edit afterwards is
//! applied. At startup, the server exits at once with a clear error.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    example_registry, http_get, serve_to_exit, service_entries, write_atomic, AdsStream, ServerProcess, ISTIOD_130_KINDS,
};

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const COLORAPP: &str = "istio-system/cloudmap-colorapp.howto-k8s-cloudmap.pvt.aws.local";

/// 100 KB of nested `[`: 26.7 s to refuse before (quadratic in the YAML parser), the watcher
/// spinning with no log line.
fn nesting_bomb() -> String {
    format!("rules:\n  - match: {{service: {}\n", "[".repeat(100_000))
}

/// A rule per service name: `n` rules.
fn many_rules(n: usize) -> String {
    let mut s = String::from("rules:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{match: {{service: svc-{i}}}, labels: {{rule: r{i}}}}}\n"));
    }
    s
}

/// One glob of `n` alternatives (`{a0,a1,...}`).
fn wide_glob(n: usize) -> String {
    let alts: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    format!("rules:\n  - match: {{service: \"{{{}}}\"}}\n    labels: {{wide: \"yes\"}}\n", alts.join(","))
}

fn alias_rule(alias: &str) -> String {
    format!("rules:\n  - match: {{service: colorapp}}\n    ports: [{{protocol: HTTP}}]\n    aliases: [{alias}]\n")
}

/// Runs `serve` until it exits (within 20 s: the old code never exited).
fn run_to_exit(args: &[&str]) -> (Option<i32>, Duration, String) {
    serve_to_exit(args, Duration::from_secs(20))
}

/// Puts a FIFO where `path` is (made aside, renamed over it, as an atomic edit would be).
fn fifo_over(path: &Path) {
    let tmp = path.with_extension("fifo");
    let c = std::ffi::CString::new(tmp.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    std::fs::rename(&tmp, path).unwrap();
}

fn hosts(r: &cloudmap_mcp::proto::DiscoveryResponse) -> Vec<String> {
    service_entries(r).into_iter().find(|(n, _, _)| n == COLORAPP).map(|(_, _, se)| se.hosts).unwrap_or_default()
}

/// The first log line containing `needle`.
fn line(server: &ServerProcess, needle: &str) -> String {
    server.logs().lines().find(|l| l.contains(needle)).unwrap_or_default().to_string()
}

/// The server on the example registry and a mapping giving colorapp the alias
/// `colorapp.first.local`, both files checked every 100 ms, with a client that has everything:
/// (the files' directory, registry, mapping, server, client).
async fn serving() -> (tempfile::TempDir, PathBuf, PathBuf, ServerProcess, AdsStream) {
    let dir = tempfile::tempdir().unwrap();
    let (reg, map) = (dir.path().join("registry.yaml"), dir.path().join("mapping.yaml"));
    std::fs::write(&reg, example_registry()).unwrap();
    std::fs::write(&map, alias_rule("colorapp.first.local")).unwrap();
    let (r, m) = (reg.to_str().unwrap(), map.to_str().unwrap());
    let interval = "100ms";
    let server = ServerProcess::start(&[
        "--registry-file", r, "--registry-poll-interval", interval, "--mapping-file", m, "--mapping-poll-interval", interval,
    ]);
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(service_entries(&got[SE_V1]).len(), 3);
    assert!(hosts(&got[SE_V1]).contains(&"colorapp.first.local".to_string()));
    // Ready once the mapping in force since startup is judged (it serves every service).
    let t0 = std::time::Instant::now();
    while http_get(server.admin, "/readyz").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "not ready: {}", http_get(server.admin, "/readyz").1);
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, reg, map, server, ads)
}

#[test]
fn at_startup_mapping_bombs_and_a_fifo_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let map = dir.path().join("mapping.yaml");
    std::fs::write(&reg, example_registry()).unwrap();
    let (r, m) = (reg.to_str().unwrap(), map.to_str().unwrap());
    for (text, want) in [
        (nesting_bomb(), "line 2 column 277: flow collections ([ ] { }) nested deeper than 256"),
        (many_rules(1_001), "more than 1000 rules (the mapping file's cap)"),
        (wide_glob(10_001), "more than 10000 glob alternatives in the file"),
    ] {
        std::fs::write(&map, &text).unwrap();
        let (code, took, err) = run_to_exit(&["--registry-file", r, "--mapping-file", m]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("mapping file") && err.contains(want), "{want}: {err}");
        assert!(took < Duration::from_secs(10), "{want}: {took:?}");
    }
    // The largest accepted files load.
    for text in [many_rules(1_000), wide_glob(10_000)] {
        std::fs::write(&map, &text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
            .args(["render", "--registry-file", r, "--mapping-file", m])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // A FIFO in place of either file: refused, not waited on (the old code blocked in open()).
    std::fs::write(&map, "rules: []\n").unwrap();
    fifo_over(&map);
    let (code, _, err) = run_to_exit(&["--registry-file", r, "--mapping-file", m]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("it is a FIFO (named pipe); only a regular file is read"), "{err}");
    fifo_over(&reg);
    let (code, _, err) = run_to_exit(&["--registry-file", r]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read registry file") && err.contains("it is a FIFO (named pipe)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mapping_bombs_are_refused_in_a_second_and_a_good_edit_is_applied() {
    let (_dir, _reg, map, server, mut ads) = serving().await;
    let mut alias = 1;
    for (text, want) in [
        (nesting_bomb(), "nested deeper than 256"),
        (many_rules(1_001), "more than 1000 rules"),
        (wide_glob(10_001), "more than 10000 glob alternatives"),
    ] {
        let t0 = Instant::now();
        write_atomic(&map, &text);
        assert!(server.wait_log(want, Duration::from_secs(10)), "{want}: {}", server.logs());
        eprintln!("FILE ATTACKS: {want:?} refused after {:?}", t0.elapsed());
        let l = line(&server, want);
        assert!(l.contains("mapping file edit rejected; still serving the last good version"), "{l}");
        // Readiness: still ready on the last good mapping, and says why the file is not applied.
        let (code, body) = http_get(server.admin, "/readyz");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("mapping file edit rejected") && body.contains(want), "{body}");
        // A good edit afterwards is applied.
        alias += 1;
        let host = format!("colorapp.edit{alias}.local");
        write_atomic(&map, &alias_rule(&host));
        let r = ads.recv(Duration::from_secs(10)).await.expect("the good edit is pushed");
        assert!(hosts(&r).contains(&host), "{:?}", hosts(&r));
        ads.ack(&r).await;
        let (code, body) = http_get(server.admin, "/readyz");
        assert_eq!((code, body.as_str()), (200, "ready: 3 ServiceEntries\n"));
    }
    assert_eq!(server.logs().matches("nested deeper than 256").count(), 1, "one log line per refused edit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_the_registry_or_mapping_file_is_refused_and_the_watchers_keep_running() {
    let (_dir, reg, map, server, mut ads) = serving().await;

    // The registry file.
    fifo_over(&reg);
    assert!(server.wait_log("registry file edit refused", Duration::from_secs(10)), "{}", server.logs());
    let l = line(&server, "registry file edit refused");
    assert!(l.contains("it is a FIFO (named pipe); only a regular file is read"), "{l}");
    let (code, body) = http_get(server.admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("registry file edit refused: it is a FIFO"), "{body}");
    let edited = example_registry().replace("192.168.10.38", "192.168.10.99");
    write_atomic(&reg, &edited);
    let r = ads.recv(Duration::from_secs(10)).await.expect("a regular file afterwards is applied");
    let addresses: Vec<String> =
        service_entries(&r).into_iter().flat_map(|(_, _, se)| se.endpoints).map(|e| e.address).collect();
    assert!(addresses.contains(&"192.168.10.99".to_string()), "{addresses:?}");
    ads.ack(&r).await;

    // The mapping file.
    fifo_over(&map);
    assert!(server.wait_log("mapping file edit refused", Duration::from_secs(10)), "{}", server.logs());
    let l = line(&server, "mapping file edit refused");
    assert!(l.contains("it is a FIFO (named pipe)"), "{l}");
    let (code, body) = http_get(server.admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("mapping file edit refused: it is a FIFO"), "{body}");
    write_atomic(&map, &alias_rule("colorapp.second.local"));
    let r = ads.recv(Duration::from_secs(10)).await.expect("a regular mapping file afterwards is applied");
    assert!(hosts(&r).contains(&"colorapp.second.local".to_string()), "{:?}", hosts(&r));
    let (code, body) = http_get(server.admin, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready: 3 ServiceEntries\n"));
}

#[test]
fn a_fifo_as_the_sources_file_a_tls_file_or_an_app_mesh_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    std::fs::write(&reg, example_registry()).unwrap();
    let r = reg.to_str().unwrap();
    let fifo = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, "").unwrap();
        fifo_over(&p);
        p.to_str().unwrap().to_string()
    };
    let fifo_said = |err: &str| err.contains("it is a FIFO (named pipe); only a regular file is read");

    // The sources file (several Cloud Map sources): read before anything is served.
    let sources = fifo("sources.yaml");
    let (code, took, err) = run_to_exit(&["--sources-file", &sources]);
    assert_eq!(code, Some(1), "{err}");
    assert!(fifo_said(&err) && err.contains("sources.yaml"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A TLS certificate or key (also re-read by the reload check).
    let (cert, key) = (fifo("cert.pem"), fifo("key.pem"));
    let (code, _, err) = run_to_exit(&["--registry-file", r, "--tls-cert-file", &cert, "--tls-key-file", &key]);
    assert_ne!(code, Some(0), "{err}");
    assert!(code.is_some(), "the server did not exit: {err}");
    assert!(fifo_said(&err) && err.contains("cert.pem"), "{err}");

    // A file of an App Mesh export directory.
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).unwrap();
    let vs = mesh.join("virtual-services.yaml");
    std::fs::write(&vs, "").unwrap();
    fifo_over(&vs);
    let (code, _, err) = run_to_exit(&["--registry-file", r, "--appmesh-file", mesh.to_str().unwrap()]);
    assert!(code.is_some() && code != Some(0), "{code:?}: {err}");
    assert!(fifo_said(&err) && err.contains("virtual-services.yaml"), "{err}");
}
