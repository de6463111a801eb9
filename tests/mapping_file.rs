//! End-to-end: the real binary with `--mapping-file`: rules reach a connected client, an edit is
//! applied without a restart, a bad edit keeps the last good mapping (with its position in the log
//! and a metric), VIPs stay with their hosts across edits, and a bad file or flag stops startup.
mod support;
use std::process::Command;
use std::time::Duration;
use support::*;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const QUIET: Duration = Duration::from_millis(1500);
const COLORAPP: &str = "istio-system/cloudmap-colorapp.howto-k8s-cloudmap.pvt.aws.local";

/// The example registry with colorapp on port 8080 (as ECS would register it).
fn registry() -> String {
    example_registry().replace(
        "AWS_INSTANCE_IPV4: 192.168.10.38",
        "AWS_INSTANCE_IPV4: 192.168.10.38\n              AWS_INSTANCE_PORT: \"8080\"",
    )
    .replace("AWS_INSTANCE_IPV4: 192.168.34.225", "AWS_INSTANCE_IPV4: 192.168.34.225\n              AWS_INSTANCE_PORT: \"8080\"")
}

const HTTP_RULE: &str = "rules:
  - name: colorapp-http
    match: {service: colorapp}
    ports: [{instancePort: 8080, protocol: HTTP}]
    aliases: [colorapp.appmesh.local]
    endpointLabels: {allow: [version]}
";

fn colorapp(r: &cloudmap_mcp::proto::DiscoveryResponse) -> (cloudmap_mcp::proto::istio::mcp::v1alpha1::Metadata, cloudmap_mcp::proto::istio::networking::v1alpha3::ServiceEntry) {
    let (_, md, se) = service_entries(r).into_iter().find(|(n, _, _)| n == COLORAPP).expect("colorapp served");
    (md, se)
}

fn metric(server: &ServerProcess, name: &str) -> String {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_file_hot_reload_and_a_bad_edit_keeps_the_last_good_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let map = dir.path().join("mapping.yaml");
    std::fs::write(&reg, registry()).unwrap();
    std::fs::write(&map, HTTP_RULE).unwrap();
    let server = ServerProcess::start(&[
        "--registry-file",
        reg.to_str().unwrap(),
        "--mapping-file",
        map.to_str().unwrap(),
        "--mapping-poll-interval",
        "100ms",
    ]);
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    let (md, se) = colorapp(&got[SE_V1]);
    // The rule made 8080 HTTP, added the alias, kept only `version` as endpoint label, and says so.
    let ports: Vec<_> = se.ports.iter().map(|p| (p.number, p.name.as_str(), p.protocol.as_str())).collect();
    assert_eq!(ports, [(8080, "http-8080", "HTTP")]);
    assert_eq!(se.hosts, ["colorapp.howto-k8s-cloudmap.pvt.aws.local", "colorapp.appmesh.local"]);
    assert!(se.endpoints.iter().all(|e| e.labels.keys().eq(["version"])), "{:?}", se.endpoints);
    assert_eq!(md.annotations["cloudmap-mcp/rules"], "colorapp-http (aliases, endpointLabels, ports)");
    // Two endpoints and no address of their own: a VIP from the default range.
    assert_eq!(se.addresses.len(), 1);
    let vip = se.addresses[0].clone();
    assert!(vip.starts_with("241."), "{vip}");
    assert!(metric(&server, "cloudmap_mcp_mapping_rules").ends_with(" 1"), "{}", metric(&server, "cloudmap_mcp_mapping_rules"));

    // An edit: gRPC instead, no alias. Pushed to the connected client without a restart.
    write_atomic(&map, "rules:\n  - match: {service: colorapp}\n    ports: [{instancePort: 8080, name: grpc, protocol: GRPC}]\n");
    let r = ads.recv(Duration::from_secs(10)).await.expect("push after the mapping edit");
    let (md, se) = colorapp(&r);
    let ports: Vec<_> = se.ports.iter().map(|p| (p.number, p.name.as_str(), p.protocol.as_str())).collect();
    assert_eq!(ports, [(8080, "grpc", "GRPC")]);
    assert_eq!(se.hosts, ["colorapp.howto-k8s-cloudmap.pvt.aws.local"]);
    assert_eq!(md.annotations["cloudmap-mcp/rules"], "rules[0] (ports)");
    assert_eq!(se.addresses, std::slice::from_ref(&vip), "the host keeps its VIP across mapping edits");
    assert!(server.wait_log("mapping file reloaded", Duration::from_secs(5)));
    ads.ack(&r).await;

    // A bad edit (unknown protocol): rejected with its position, nothing pushed, counted.
    let errors_before = metric(&server, "cloudmap_mcp_source_errors_total{source=\"mapping\"}");
    write_atomic(&map, "rules:\n  - match: {service: colorapp}\n    ports:\n      - {instancePort: 8080, protocol: HTTP3}\n");
    assert!(server.wait_log("mapping file edit rejected", Duration::from_secs(5)), "{}", server.logs());
    let logs = server.logs();
    let line = logs.lines().find(|l| l.contains("mapping file edit rejected")).unwrap();
    assert!(line.contains("rules[0].ports[0]") && line.contains("HTTP3") && line.contains("line 4"), "{line}");
    assert!(ads.recv(QUIET).await.is_none(), "a bad mapping must not change what is served");
    let errors_after = metric(&server, "cloudmap_mcp_source_errors_total{source=\"mapping\"}");
    assert_ne!(errors_before, errors_after, "the rejected edit is counted");
    let mut fresh = AdsStream::connect(&server.url()).await;
    let got = fresh.istiod_handshake(ISTIOD_130_KINDS).await;
    let (_, se) = colorapp(&got[SE_V1]);
    assert_eq!(se.ports[0].protocol, "GRPC", "the last good mapping is still served");

    // An empty file while rules are served looks like a truncation: held back too.
    write_atomic(&map, "");
    assert!(server.wait_log("mapping file is empty", Duration::from_secs(5)), "{}", server.logs());
    assert!(ads.recv(QUIET).await.is_none());

    // `rules: []` on purpose: back to the default output (TCP), same VIP.
    write_atomic(&map, "rules: []\n");
    let r = ads.recv(Duration::from_secs(10)).await.expect("push after removing the rules");
    let (md, se) = colorapp(&r);
    assert_eq!(se.ports[0].protocol, "TCP");
    assert!(!md.annotations.contains_key("cloudmap-mcp/rules"));
    assert_eq!(se.addresses, [vip]);

    // The debug view shows what render shows, rules included.
    write_atomic(&map, HTTP_RULE);
    ads.ack(&r).await;
    let _ = ads.recv(Duration::from_secs(10)).await.expect("push after restoring the rules");
    let (code, body) = http_get(server.admin, "/debug/serviceentries");
    assert_eq!(code, 200);
    assert!(body.contains("cloudmap-mcp/rules: colorapp-http (aliases, endpointLabels, ports)"), "{body}");
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp")).args(args).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap()
}

#[test]
fn bad_mapping_files_and_flags_stop_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let map = dir.path().join("mapping.yaml");
    std::fs::write(&reg, registry()).unwrap();
    std::fs::write(&map, "rules:\n  - match: {service: colorapp}\n    hots: x\n").unwrap();
    let reg_s = reg.to_str().unwrap();
    for (args, want) in [
        (vec!["serve", "--registry-file", reg_s, "--mapping-file", map.to_str().unwrap()], "unknown field `hots`"),
        (vec!["render", "--registry-file", reg_s, "--mapping-file", map.to_str().unwrap()], "line 3 column 5"),
        (vec!["serve", "--registry-file", reg_s, "--export-to", "Not Valid"], "only .,*, or a valid DNS 1123 label"),
        (vec!["render", "--registry-file", reg_s, "--export-to", "*,team"], "cannot have both public (*)"),
        (vec!["serve", "--registry-file", reg_s, "--vip-cidr", "240.240.0.0/16"], "overlaps 240.240.0.0/16"),
        (vec!["render", "--registry-file", reg_s, "--vip-cidr", "241.0.0.0/8,242.0.0.0/8"], "at most one IPv4"),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // render shows the rule and the VIP; --allocate-vips=false turns VIPs off.
    std::fs::write(&map, HTTP_RULE).unwrap();
    let out = run(&["render", "--registry-file", reg_s, "--mapping-file", map.to_str().unwrap()]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(yaml.contains("cloudmap-mcp/rules: colorapp-http (aliases, endpointLabels, ports)"), "{yaml}");
    assert!(yaml.contains("- colorapp.appmesh.local") && yaml.contains("protocol: HTTP"), "{yaml}");
    assert!(yaml.contains("  - 241."), "a VIP: {yaml}");
    let out = run(&["render", "--registry-file", reg_s, "--allocate-vips=false"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("  - 241."));
}

/// A mapping whose host template fits no real name, as a rollout starts the new pods with it.
fn too_long_template() -> String {
    // 60 + 1 + 60 + the service name: a DNS label of more than 63 characters for every service.
    let long = "x".repeat(60);
    format!("rules:\n  - name: too-long\n    host: \"{long}{{service}}.{long}\"\n")
}

/// The server on the registry with `mapping` as its mapping file (and `args`): (dir, mapping path, server).
fn start_with_mapping(mapping: &str, args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.yaml");
    let map = dir.path().join("mapping.yaml");
    std::fs::write(&reg, registry()).unwrap();
    std::fs::write(&map, mapping).unwrap();
    let mut all = vec!["--registry-file", reg.to_str().unwrap(), "--mapping-file", map.to_str().unwrap()];
    all.extend_from_slice(args);
    let server = ServerProcess::start(&all);
    (dir, map, server)
}

const FINE_TEMPLATE: &str = "rules:\n  - name: fine\n    host: \"{service}.{namespace}.example\"\n";

/// Polls `/readyz` until `done` accepts it (10 s at most): the last (code, body).
fn readyz_until(server: &ServerProcess, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let t0 = std::time::Instant::now();
    loop {
        let (code, body) = http_get(server.admin, "/readyz");
        if done(code, &body) || t0.elapsed() > Duration::from_secs(10) {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mapping given at startup that stops serving every service has no earlier mapping to hold to:
/// judged against no mapping file on the same snapshot, the server is not ready (a rollout waits,
/// the running replicas keep serving) until the edit guard's consecutive checks confirm it; then
/// `/readyz` is 200 (istiod must be able to start) and says that none of the services is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_mapping_that_serves_nothing_is_not_ready_until_confirmed() {
    let (_dir, _, server) =
        start_with_mapping(&too_long_template(), &["--held-edit-check-interval", "1s", "--removal-confirmations", "3"]);
    let (code, body) = readyz_until(&server, |_, b| b.contains("would stop serving"));
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: the mapping file in force since startup would stop serving 3 of the 3 services served with no mapping file (over 50%, e.g. "),
        "{body}"
    );
    assert!(body.contains("until 3 consecutive checks 1s apart confirm it (1 so far)"), "{body}");
    let (_, metrics) = http_get(server.admin, "/metrics");
    assert!(metrics.contains("cloudmap_mcp_edits_held{source=\"mapping\"} 1"), "{metrics}");
    let (_, held) = http_get(server.admin, "/debug/held-edits");
    assert!(held.contains("\"at_startup_compared_with\":\"no mapping file\""), "{held}");
    assert!(server.logs().contains("stops serving most services (compared with no mapping file)"));

    // Confirmed by the third check, 2 s later: ready, saying why nothing is served.
    let (code, body) = readyz_until(&server, |c, _| c == 200);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready: 0 ServiceEntries; none of the 3 services is served (3 rejected, e.g. "), "{body}");
    assert!(body.contains("see /debug/rejected"), "{body}");
    let (_, metrics) = http_get(server.admin, "/metrics");
    assert!(metrics.contains("cloudmap_mcp_edits_held{source=\"mapping\"} 0"), "{metrics}");
}

/// The same startup hold ends at once when the mapping is fixed, long before the checks would confirm it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_mapping_ends_the_startup_hold_at_once() {
    let (_dir, map, server) =
        start_with_mapping(&too_long_template(), &["--mapping-poll-interval", "100ms", "--held-edit-check-interval", "60s"]);
    let (code, body) = readyz_until(&server, |_, b| b.contains("would stop serving"));
    assert_eq!(code, 503, "{body}");
    std::fs::write(&map, FINE_TEMPLATE).unwrap();
    let (code, body) = readyz_until(&server, |c, _| c == 200);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready: 3 ServiceEntries"), "{body}");
    assert!(server.logs().contains("the mapping file in force no longer stops serving most services; ready"), "{}", server.logs());
}

/// A mapping that serves every service is ready as soon as its snapshot is served.
#[test]
fn a_good_startup_mapping_is_ready_at_once() {
    let (_dir, _, server) = start_with_mapping(FINE_TEMPLATE, &["--held-edit-check-interval", "60s"]);
    let (code, body) = readyz_until(&server, |c, _| c == 200);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "ready: 3 ServiceEntries\n");
}
