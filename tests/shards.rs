//! `--shards 4` end to end: the real binary on four consecutive ports, four istiod-like ADS clients
//! (one per port, as istiod's four `xds://` config sources), against the same registry served
//! unsharded.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const SERVICES: usize = 40;

/// A registry of `SERVICES` services; `bump` gives service `bump` another address.
fn registry(bump: Option<usize>) -> String {
    let mut s = String::from("namespaces:\n  - name: team\n    type: HTTP\n    id: ns-team\n    services:\n");
    for i in 0..SERVICES {
        let last = if bump == Some(i) { 200 } else { 1 };
        s.push_str(&format!(
            "      - name: svc{i:02}\n        id: srv-{i:02}\n        createDate: \"2024-01-01T00:00:00Z\"\n        instances:\n          - id: i-1\n            attributes: {{AWS_INSTANCE_IPV4: 10.0.{i}.{last}, AWS_INSTANCE_PORT: 8080}}\n"
        ));
    }
    s
}

/// Resource name → the encoded `Any` of each ServiceEntry of a response.
fn raw_entries(r: &cloudmap_mcp::proto::DiscoveryResponse) -> BTreeMap<String, Vec<u8>> {
    let names = service_entries(r).into_iter().map(|(n, _, _)| n);
    names.zip(r.resources.iter().map(|a| a.value.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_partition_the_unsharded_set_and_an_edit_pushes_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(None)).unwrap();
    let file = path.to_str().unwrap();
    let plain = ServerProcess::start(&["--registry-file", file]);
    let sharded = ServerProcess::start(&["--registry-file", file, "--registry-poll-interval", "100ms", "--shards", "4"]);
    assert_eq!(plain.grpc_shards, [plain.grpc]);
    assert_eq!(sharded.grpc_shards.len(), 4, "{}", sharded.logs());
    for (i, a) in sharded.grpc_shards.iter().enumerate() {
        assert_eq!(a.port(), sharded.grpc.port() + i as u16, "consecutive ports");
    }

    let mut whole = AdsStream::connect(&plain.url()).await;
    let whole = raw_entries(&whole.istiod_handshake(ISTIOD_130_KINDS).await[SE_V1]);
    assert_eq!(whole.len(), SERVICES);

    // istiod's full opening on every port: every kind is answered on each.
    let mut clients = Vec::new();
    let mut union = BTreeMap::new();
    let mut home = BTreeMap::new();
    for (i, addr) in sharded.grpc_shards.iter().enumerate() {
        let mut c = AdsStream::connect(&format!("http://{addr}")).await;
        let got = c.istiod_handshake(ISTIOD_130_KINDS).await;
        assert_eq!(got.len(), ISTIOD_130_KINDS.len() + 1);
        let entries = raw_entries(&got[SE_V1]);
        assert!(!entries.is_empty(), "40 services leave no shard of 4 empty");
        for (name, bytes) in entries {
            home.insert(name.clone(), i);
            assert!(union.insert(name.clone(), bytes).is_none(), "{name} is served on two ports");
        }
        clients.push(c);
    }
    assert_eq!(union, whole, "the shards together are the unsharded set, byte for byte");

    // One service changes: exactly its shard's port pushes, the full state of that shard.
    write_atomic(&path, &registry(Some(7)));
    let edited = "istio-system/cloudmap-svc07.team";
    let owner = home[edited];
    let r = clients[owner].recv(Duration::from_secs(10)).await.expect("a push on the edited service's port");
    assert_eq!(r.type_url, SE_V1);
    let pushed = raw_entries(&r);
    assert_eq!(pushed.keys().collect::<Vec<_>>(), home.iter().filter(|(_, s)| **s == owner).map(|(n, _)| n).collect::<Vec<_>>());
    assert_ne!(pushed[edited], union[edited]);
    clients[owner].ack(&r).await;
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(r) = c.recv(Duration::from_secs(2)).await {
            panic!("port {i} (edited service on {owner}) got a push: {} with {} resources", r.type_url, r.resources.len());
        }
    }

    // The metrics and the debug view say the same.
    let metrics = http_get(sharded.admin, "/metrics").1;
    for i in 0..4 {
        let pushes = format!("cloudmap_mcp_shard_pushes_total{{shard=\"{i}\"}} {}", u8::from(i == owner));
        assert!(metrics.contains(&pushes), "{pushes} not in:\n{metrics}");
        let n = home.values().filter(|s| **s == i).count();
        assert!(metrics.contains(&format!("cloudmap_mcp_shard_resources{{shard=\"{i}\"}} {n}")), "{metrics}");
    }
    let (status, body) = http_get(sharded.admin, "/debug/shards");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 4);
    assert_eq!(v["serviceentries"], SERVICES);
    for i in 0..4 {
        let s = &v["shards"][i];
        assert_eq!(s["address"], sharded.grpc_shards[i].to_string());
        assert_eq!(s["serviceentries"], home.values().filter(|x| **x == i).count());
        assert_eq!(s["streams"], 1);
    }
}

#[test]
fn a_port_range_past_65535_is_refused_at_startup() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--registry-file", "examples/registry.yaml", "--grpc-addr", "127.0.0.1:65534", "--shards", "4"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 consecutive ports from 127.0.0.1:65534 go past port 65535"), "{err}");
}

#[test]
fn render_prints_istiods_config_sources_one_per_shard() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp")).arg("render").args(args).env_remove("CLOUDMAP_MCP_SHARDS").output().unwrap()
    };
    let out = run(&["--istiod-config", "--shards", "4", "--server-address", "cloudmap-mcp.mesh.svc:15010"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let sources: Vec<&str> =
        v["meshConfig"]["configSources"].as_sequence().unwrap().iter().map(|s| s["address"].as_str().unwrap()).collect();
    assert_eq!(
        sources,
        [
            "xds://cloudmap-mcp.mesh.svc:15010",
            "xds://cloudmap-mcp.mesh.svc:15011",
            "xds://cloudmap-mcp.mesh.svc:15012",
            "xds://cloudmap-mcp.mesh.svc:15013",
            "k8s://"
        ]
    );
    // Unsharded by default; the address must name a port.
    let out = run(&["--istiod-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("address: xds://").count(), 1, "{text}");
    let out = run(&["--istiod-config", "--server-address", "cloudmap-mcp"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"cloudmap-mcp\" is not HOST:PORT"));
}
