//! End-to-end: the real binary on 127.0.0.1:0, driven with istiod's exact client script.
mod support;

use std::time::Duration;

use support::*;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const QUIET: Duration = Duration::from_millis(1500);

fn registry_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, example_registry()).unwrap();
    (dir, path)
}

fn serve(path: &std::path::Path) -> ServerProcess {
    ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "100ms"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_130_script_updates_and_deletions() {
    let (_dir, path) = registry_dir();
    let server = serve(&path);
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;

    // Every kind answered, under the type URL it was asked for.
    assert_eq!(got.len(), 16);
    for k in ISTIOD_130_KINDS.iter().chain([&MESH_CONFIG]) {
        let r = &got[*k];
        assert_eq!(r.type_url, *k);
        assert!(!r.version_info.is_empty() && !r.nonce.is_empty());
        if *k != SE_V1 {
            assert!(r.resources.is_empty(), "{k} should be empty");
        }
    }
    let se = service_entries(&got[SE_V1]);
    let names: Vec<_> = se.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "istio-system/cloudmap-colorapp.howto-k8s-cloudmap.pvt.aws.local",
            "istio-system/cloudmap-front.howto-k8s-cloudmap.pvt.aws.local",
            "istio-system/cloudmap-getmesh-external-service.my-namespace",
        ]
    );
    let (_, md, getmesh) = &se[2];
    assert_eq!(getmesh.hosts, ["getmesh-external-service.my-namespace"]);
    assert_eq!(getmesh.addresses, ["52.192.72.89"]);
    assert_eq!(getmesh.resolution, 1, "STATIC");
    let ports: Vec<_> = getmesh.ports.iter().map(|p| (p.number, p.name.as_str(), p.protocol.as_str())).collect();
    assert_eq!(ports, [(80, "http", "HTTP"), (443, "https", "HTTPS")]);
    assert_eq!(getmesh.endpoints.len(), 1);
    assert_eq!(getmesh.endpoints[0].address, "52.192.72.89");
    assert_eq!(getmesh.endpoints[0].ports.get("http"), Some(&80));
    assert_eq!(getmesh.endpoints[0].ports.get("https"), Some(&443));
    assert_eq!(md.create_time.as_ref().unwrap().seconds, 1_622_505_600, "createDate 2021-06-01T00:00:00Z");
    assert_eq!(md.version.len(), 16);
    let colorapp = &se[0].2;
    let versions: Vec<_> = colorapp.endpoints.iter().map(|e| e.labels["version"].as_str()).collect();
    assert_eq!(versions, ["blue", "red"]);

    // ACKs trigger nothing.
    assert!(ads.recv(QUIET).await.is_none(), "ACKs must not trigger responses");

    // An edit pushes exactly one new ServiceEntry state.
    let v1 = got[SE_V1].version_info.clone();
    write_atomic(&path, &example_registry().replace("52.192.72.89", "52.192.72.90"));
    let r = ads.recv(Duration::from_secs(10)).await.expect("push after edit");
    assert_eq!(r.type_url, SE_V1);
    assert_ne!(r.version_info, v1);
    let se2 = service_entries(&r);
    assert_eq!(se2.len(), 3, "full state in every response");
    assert_eq!(se2[2].2.endpoints[0].address, "52.192.72.90");
    assert_eq!(se2[0].1.version, se[0].1.version, "unchanged resources keep their version");
    assert_ne!(se2[2].1.version, se[2].1.version);
    ads.ack(&r).await;
    assert!(ads.recv(QUIET).await.is_none(), "only the ServiceEntry kind changes");

    // A removed service disappears by omission.
    let without_front = example_registry().replace("      - name: front\n", "      - name: front-gone-soon\n");
    let without_front = without_front.split("      - name: front-gone-soon\n").next().unwrap().to_string();
    write_atomic(&path, &without_front.replace("52.192.72.89", "52.192.72.90"));
    let r = ads.recv(Duration::from_secs(10)).await.expect("push after removal");
    let names: Vec<_> = service_entries(&r).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names.len(), 2);
    assert!(!names.iter().any(|n| n.contains("front")));
    ads.ack(&r).await;

    // An edit that changes nothing served pushes nothing.
    write_atomic(&path, &format!("# a comment\n{}", without_front.replace("52.192.72.89", "52.192.72.90")));
    assert!(server.wait_log("registry file reloaded", Duration::from_secs(5)));
    assert!(ads.recv(QUIET).await.is_none(), "unchanged content must not push");

    // A broken edit keeps the last good state and says where the error is.
    write_atomic(&path, "namespaces:\n  - name: x\n    type: NOPE\n");
    assert!(server.wait_log("registry file edit rejected", Duration::from_secs(5)), "{}", server.logs());
    let logs = server.logs();
    let line = logs.lines().find(|l| l.contains("registry file edit rejected")).unwrap();
    assert!(line.contains("line 3"), "error carries the file position: {line}");
    assert!(ads.recv(QUIET).await.is_none(), "a broken file must not change what is served");
    let mut fresh = AdsStream::connect(&server.url()).await;
    let got = fresh.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(got[SE_V1].resources.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_123_script_gets_v1alpha3_kinds() {
    let (_dir, path) = registry_dir();
    let server = serve(&path);
    let mut ads = AdsStream::connect(&server.url()).await;
    let got = ads.istiod_handshake(ISTIOD_123_KINDS).await;
    assert_eq!(got.len(), 15);
    let r = &got["networking.istio.io/v1alpha3/ServiceEntry"];
    assert_eq!(r.type_url, "networking.istio.io/v1alpha3/ServiceEntry");
    assert_eq!(service_entries(r).len(), 3);
    assert!(got["networking.istio.io/v1alpha3/VirtualService"].resources.is_empty());
    assert!(ads.recv(QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_leaves_other_streams_alone() {
    let (_dir, path) = registry_dir();
    let server = ServerProcess::start(&[
        "--registry-file",
        path.to_str().unwrap(),
        "--max-request-bytes",
        "4096",
        "--max-types-per-stream",
        "20",
    ]);
    let mut good = AdsStream::connect(&server.url()).await;
    good.istiod_handshake(ISTIOD_130_KINDS).await;

    // Empty type URL.
    let mut bad = AdsStream::connect(&server.url()).await;
    bad.send("", "", "").await;
    let res = tokio::time::timeout(Duration::from_secs(5), bad.rx.message()).await.unwrap();
    let err = res.unwrap_err_or_logs(&server);
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("type_url"));

    // A request over the size limit.
    let mut big = AdsStream::connect(&server.url()).await;
    let mut r = cloudmap_mcp::proto::DiscoveryRequest { type_url: SE_V1.into(), ..Default::default() };
    r.resource_names = vec!["x".repeat(100); 100];
    big.tx.send(r).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), big.rx.message()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");

    // Too many distinct type URLs on one stream.
    let mut greedy = AdsStream::connect(&server.url()).await;
    for i in 0..21 {
        greedy.send(&format!("example.com/v1/Kind{i}"), "", "").await;
    }
    let mut answered = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), greedy.rx.message()).await.unwrap() {
            Ok(Some(_)) => answered += 1,
            Ok(None) => panic!("stream ended without status"),
            Err(e) => break e,
        }
    };
    assert_eq!(answered, 20);
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    // Delta is not served.
    let mut client = cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::connect(server.url()).await.unwrap();
    let err = client.delta_aggregated_resources(tokio_stream::empty()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // A client that vanishes mid-stream.
    let vanishing = AdsStream::connect(&server.url()).await;
    vanishing.send(SE_V1, "", "").await;
    drop(vanishing);

    // The first stream is unaffected: an edit still reaches it.
    write_atomic(&path, &example_registry().replace("52.192.72.89", "52.192.72.91"));
    let r = good.recv(Duration::from_secs(10)).await.expect("good stream still served");
    assert_eq!(r.type_url, SE_V1);
    assert!(!server.logs().contains("panicked"));
}

#[test]
fn admin_endpoints() {
    let (_dir, path) = registry_dir();
    let server = serve(&path);
    assert_eq!(http_get(server.admin, "/healthz").0, 200);
    // "listening" comes before the first snapshot is built: ready once it is (quickly, but a
    // loaded machine can take a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = http_get(server.admin, "/readyz");
        if code == 200 || std::time::Instant::now() > deadline {
            break (code, body);
        }
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("not ready"), "{body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ready: 3 ServiceEntries"), "{body}");
    let (code, yaml) = http_get(server.admin, "/debug/serviceentries");
    assert_eq!(code, 200);
    assert!(yaml.contains("name: cloudmap-getmesh-external-service.my-namespace"));
    let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["render", "--registry-file", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    assert_eq!(String::from_utf8(rendered.stdout).unwrap(), yaml, "debug view equals render");
    let (code, json) = http_get(server.admin, "/debug/serviceentries?format=json");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{json}");
    let (code, body) = http_get(server.admin, "/debug/serviceentries?format=xml");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("use yaml or json"), "{body}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ads = AdsStream::connect(&server.url()).await;
        ads.istiod_handshake(ISTIOD_130_KINDS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, clients) = http_get(server.admin, "/debug/clients");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&clients).unwrap();
        let c = &v.as_array().unwrap()[0];
        assert_eq!(c["node_id"], istiod_node().id);
        let se = &c["types"][SE_V1];
        assert_eq!(se["last_sent_version"], se["last_acked_version"]);
        let (code, metrics) = http_get(server.admin, "/metrics");
        assert_eq!(code, 200);
        for m in [
            "cloudmap_mcp_xds_streams_connected 1",
            "cloudmap_mcp_resources 3",
            "cloudmap_mcp_rejected_services 0",
            "cloudmap_mcp_xds_responses_total{type_url=\"networking.istio.io/v1/ServiceEntry\"} 1",
            "cloudmap_mcp_xds_push_latency_seconds_count",
            "cloudmap_mcp_xds_acks_total{type_url=\"networking.istio.io/v1/ServiceEntry\"} 1",
        ] {
            assert!(metrics.contains(m), "metrics lack {m:?}:\n{metrics}");
        }
    });
    let (code, rejected) = http_get(server.admin, "/debug/rejected");
    assert_eq!(code, 200);
    assert!(rejected.contains("\"rejected\":[]"), "{rejected}");
}

#[test]
fn broken_file_at_startup_fails_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "namespaces:\n  - name: a\n    type: HTTP\n    services:\n      - name: s\n        instances: 7\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--registry-file", path.to_str().unwrap(), "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("line 6"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--registry-file", "/nonexistent/registry.yaml", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read registry file /nonexistent/registry.yaml"));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_streams_with_unavailable_and_exits_cleanly() {
    let (_dir, path) = registry_dir();
    let mut server = serve(&path);
    let mut ads = AdsStream::connect(&server.url()).await;
    ads.istiod_handshake(ISTIOD_130_KINDS).await;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let err = tokio::time::timeout(Duration::from_secs(10), ads.rx.message()).await.expect("stream ends").unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(server.wait_log("shutdown complete", Duration::from_secs(2)), "{}", server.logs());
}
