//! The edit guard against the real binary: a mapping edit that would stop serving most services (a
//! host template too long for every real name, one fixed host for every service) and a registry
//! file edit that drops most services are held like a Cloud Map mass removal: the connected client
//! keeps every entry, `/readyz` and `/debug/held-edits` say why, a metric counts it; consecutive
//! checks apply it, a revert ends the hold.
mod support;
use std::path::Path;
use std::time::Duration;
use support::*;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const QUIET: Duration = Duration::from_millis(2500);
const SERVICES: usize = 10;

fn registry(services: usize) -> String {
    let mut s = String::from("namespaces:\n  - name: prod\n    type: HTTP\n    services:\n");
    for i in 0..services {
        s.push_str(&format!(
            "      - name: service-{i}\n        instances: [{{id: a, attributes: {{AWS_INSTANCE_IPV4: 10.0.0.{}, AWS_INSTANCE_PORT: 8080}}}}]\n",
            i + 1
        ));
    }
    s
}

/// A host template the parse-time check accepts (`svc.ns.` + 243 characters) that is too long for
/// every real name.
fn too_long_template() -> String {
    let filler = vec!["a".repeat(60); 4].join(".");
    format!("rules:\n  - host: \"{{service}}.{{namespace}}.{filler}\"\n")
}

fn metric(server: &ServerProcess, line_start: &str) -> Option<String> {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

fn held(server: &ServerProcess) -> serde_json::Value {
    let (code, body) = http_get(server.admin, "/debug/held-edits");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
    let reg = dir.join("registry.yaml");
    let map = dir.join("mapping.yaml");
    std::fs::write(&reg, registry(SERVICES)).unwrap();
    std::fs::write(&map, "rules: []\n").unwrap();
    let mut args = vec![
        "--registry-file",
        reg.to_str().unwrap(),
        "--registry-poll-interval",
        "100ms",
        "--mapping-file",
        map.to_str().unwrap(),
        "--mapping-poll-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    ServerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// An istiod-like client that received every entry.
async fn connected(server: &ServerProcess) -> AdsStream {
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(service_entries(&got[SE_V1]).len(), SERVICES);
    ads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_edit_that_empties_the_mesh_is_held_until_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("mapping.yaml");
    // Checks a minute apart: nothing confirms the edit during the test.
    let server = start(dir.path(), &["--held-edit-check-interval", "60s"]);
    let mut ads = connected(&server).await;

    for (edit, lost) in [(too_long_template(), SERVICES), ("rules:\n  - host: fixed.example.com\n".to_string(), SERVICES - 1)] {
        write_atomic(&map, &edit);
        assert!(server.wait_log("mapping file edit held", Duration::from_secs(10)), "{}", server.logs());
        assert!(ads.recv(QUIET).await.is_none(), "a held edit must not reach the client");
        connected(&server).await; // a new client gets every entry too
        let (code, ready) = http_get(server.admin, "/readyz");
        assert_eq!(code, 200);
        assert!(
            ready.contains(&format!("a mapping file edit is held: it would stop serving {lost} of {SERVICES} services")),
            "{ready}"
        );
        let h = held(&server);
        assert_eq!(h["held"][0]["source"], "mapping file", "{h}");
        assert_eq!(h["held"][0]["would_stop_serving"], lost, "{h}");
        assert_eq!(metric(&server, "cloudmap_mcp_edits_held{source=\"mapping\"}").as_deref(), Some("cloudmap_mcp_edits_held{source=\"mapping\"} 1"));
        // Reverted: the hold ends, nothing changes for the client.
        write_atomic(&map, "rules: []\n");
        assert!(server.wait_log("the held edit is no longer proposed", Duration::from_secs(10)), "{}", server.logs());
        let (_, ready) = http_get(server.admin, "/readyz");
        assert!(!ready.contains("held"), "{ready}");
        assert_eq!(held(&server)["held"], serde_json::json!([]));
        server.logs.lock().unwrap().clear();
    }
    let holds = metric(&server, "cloudmap_mcp_edit_guard_holds_total{source=\"mapping\"}").unwrap();
    assert!(holds.ends_with(" 2"), "{holds}");
    // An edit that keeps every service served is applied at once.
    write_atomic(&map, "rules:\n  - host: \"{service}.{namespace}.mesh\"\n");
    let r = ads.recv(Duration::from_secs(10)).await.expect("a harmless edit is applied");
    let entries = service_entries(&r);
    assert_eq!(entries.len(), SERVICES);
    assert!(entries.iter().all(|(_, _, se)| se.hosts[0].ends_with(".prod.mesh")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_edit_is_applied_once_consecutive_checks_confirm_it() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("mapping.yaml");
    let server = start(dir.path(), &["--held-edit-check-interval", "1s", "--removal-confirmations", "3"]);
    let mut ads = connected(&server).await;
    write_atomic(&map, &too_long_template());
    assert!(server.wait_log("mapping file edit held", Duration::from_secs(10)), "{}", server.logs());
    assert!(ads.recv(Duration::from_millis(1200)).await.is_none(), "held for at least one check");
    let r = ads.recv(Duration::from_secs(10)).await.expect("applied after the third check");
    assert_eq!(service_entries(&r).len(), 0);
    assert!(server.logs().contains("held edit confirmed by consecutive checks"), "{}", server.logs());
    assert_eq!(held(&server)["held"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_edit_that_drops_most_services_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let server = start(dir.path(), &["--held-edit-check-interval", "60s"]);
    let mut ads = connected(&server).await;
    write_atomic(&reg, &registry(2));
    assert!(server.wait_log("registry file edit held", Duration::from_secs(10)), "{}", server.logs());
    assert!(ads.recv(QUIET).await.is_none(), "a held edit must not reach the client");
    let (_, ready) = http_get(server.admin, "/readyz");
    assert!(ready.contains("a registry file edit is held: it would stop serving 8 of 10 services"), "{ready}");
    assert_eq!(metric(&server, "cloudmap_mcp_edits_held{source=\"file\"}").as_deref(), Some("cloudmap_mcp_edits_held{source=\"file\"} 1"));
    // Removing a few is no mass removal: applied (and the hold ends).
    write_atomic(&reg, &registry(SERVICES - 1));
    let r = ads.recv(Duration::from_secs(10)).await.expect("a small removal is applied");
    assert_eq!(service_entries(&r).len(), SERVICES - 1);
    assert_eq!(held(&server)["held"], serde_json::json!([]));
}
