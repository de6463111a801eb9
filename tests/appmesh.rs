//! `render --appmesh-file` against the real binary: the colorapp in every form renders the same
//! Istio objects next to the ServiceEntries; bad App Mesh input fails with its position.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cloudmap_mcp::proto::istio::mcp::v1alpha1 as mcp;
use cloudmap_mcp::proto::istio::networking::v1alpha3 as net;
use cloudmap_mcp::proto::DiscoveryResponse;
use prost::Message;
use support::*;

fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/appmesh/testdata").join(p)
}

fn render(appmesh: &[&Path]) -> Output {
    let mut args =
        vec!["render".to_string(), "--registry-file".into(), testdata("colorapp.registry.yaml").display().to_string()];
    for p in appmesh {
        args.push("--appmesh-file".into());
        args.push(p.display().to_string());
    }
    Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(&args)
        .env_remove("CLOUDMAP_MCP_APPMESH_FILES")
        .output()
        .unwrap()
}

#[test]
fn render_prints_the_colorapp_routing_with_the_report_for_every_form() {
    let mut outputs = Vec::new();
    for f in ["colorapp/k8s.yaml", "colorapp/cfn.yaml", "colorapp/terraform.json", "colorapp/cli.json"] {
        let out = render(&[&testdata(f)]);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        outputs.push(String::from_utf8(out.stdout).unwrap());
    }
    // CloudFormation, Terraform and the CLI name no pods: the same output, without the Sidecar that
    // the Kubernetes form's podSelector gives `front` (its backends as egress hosts).
    assert!(outputs[1..].iter().all(|o| *o == outputs[1]), "the three non-Kubernetes forms render differently");
    let kinds_of = |text: &str| -> Vec<String> {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(text).unwrap();
        docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(kinds_of(&outputs[1]), ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService", "VirtualService"]);
    let text = &outputs[0];
    assert_eq!(
        kinds_of(text),
        ["ServiceEntry", "Gateway", "DestinationRule", "VirtualService", "VirtualService", "Sidecar"],
        "{text}"
    );
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(text).unwrap();
    let sidecar = &docs[5];
    assert_eq!(sidecar["metadata"]["namespace"], "howto-k8s-cloudmap");
    assert_eq!(sidecar["spec"]["workloadSelector"]["labels"]["app"], "front");
    assert_eq!(
        sidecar["spec"]["egress"][0]["hosts"],
        serde_json::json!(["*/colorapp.howto-k8s-cloudmap.pvt.aws.local", "*/colorapp.howto-k8s-cloudmap.svc.cluster.local"])
    );
    // The imported mesh's 8080 is HTTP on the served ServiceEntry.
    assert_eq!(docs[0]["spec"]["ports"][0]["protocol"], "HTTP", "{text}");
    assert!(text.contains("# App Mesh migration report"));
    assert!(text.contains("#   VirtualNode front: approximated\n#     - active health check dropped"), "{text}");
    for d in &docs[1..] {
        assert_eq!(d["apiVersion"], "networking.istio.io/v1");
        assert!(d["metadata"]["annotations"]["cloudmap-mcp/appmesh-source"].is_string(), "{d}");
    }
}

#[test]
fn render_fails_on_bad_appmesh_input_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(testdata("colorapp/k8s.yaml"))
        .unwrap()
        .replace("maxRetries: 3", "maxRetries: 3\n          maxRetires: 3");
    std::fs::write(&p, text).unwrap();
    let out = render(&[&p]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: line 113 column") && err.contains("unknown field \"maxRetires\""), "{err}");
    // Over the size cap: refused, not parsed.
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; 10 << 20]).unwrap();
    let out = render(&[&big]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("over the 8388608-byte cap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (resource name, annotations, body type URL, body bytes) of one resource.
type Body = (String, std::collections::BTreeMap<String, String>, String, Vec<u8>);

fn bodies(r: &DiscoveryResponse) -> Vec<Body> {
    r.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, "type.googleapis.com/istio.mcp.v1alpha1.Resource");
            let res = mcp::Resource::decode(any.value.as_slice()).unwrap();
            let md = res.metadata.unwrap();
            let body = res.body.unwrap();
            (md.name, md.annotations, body.type_url, body.value)
        })
        .collect()
}

fn serve_colorapp(appmesh: &Path) -> ServerProcess {
    ServerProcess::start(&[
        "--registry-file",
        testdata("colorapp.registry.yaml").to_str().unwrap(),
        "--appmesh-file",
        appmesh.to_str().unwrap(),
        "--appmesh-poll-interval",
        "100ms",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_virtual_services_destination_rules_and_gateways_under_v1_and_v1alpha3() {
    let server = serve_colorapp(&testdata("colorapp/cfn.yaml"));
    for (kinds, v) in [(ISTIOD_130_KINDS, "v1"), (ISTIOD_123_KINDS, "v1alpha3")] {
        let mut ads = AdsStream::connect(&server.url()).await;
        let got = ads.istiod_handshake(kinds).await;
        let vs = &got[&format!("networking.istio.io/{v}/VirtualService")];
        assert_eq!(vs.type_url, format!("networking.istio.io/{v}/VirtualService"));
        let vss = bodies(vs);
        assert_eq!(
            vss.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(),
            [
                "istio-system/appmesh-colorapp-howto-k8s-cloudmap-svc-cluster-local",
                "istio-system/appmesh-ingress-gw-gateway-route-color"
            ]
        );
        assert_eq!(vss[0].2, "type.googleapis.com/istio.networking.v1alpha3.VirtualService");
        assert_eq!(
            vss[0].1["cloudmap-mcp/appmesh-source"],
            "VirtualService colorapp.howto-k8s-cloudmap.svc.cluster.local, VirtualRouter colorapp-router"
        );
        let spec = net::VirtualService::decode(vss[0].3.as_slice()).unwrap();
        let split = &spec.http[1];
        assert_eq!(
            split.route.iter().map(|r| (r.destination.as_ref().unwrap().subset.as_str(), r.weight)).collect::<Vec<_>>(),
            [("colorapp-blue", 1), ("colorapp-red", 1)]
        );
        let dr = bodies(&got[&format!("networking.istio.io/{v}/DestinationRule")]);
        assert_eq!(dr.len(), 1);
        assert_eq!(dr[0].2, "type.googleapis.com/istio.networking.v1alpha3.DestinationRule");
        assert_eq!(net::DestinationRule::decode(dr[0].3.as_slice()).unwrap().subsets.len(), 2);
        let gw = bodies(&got[&format!("networking.istio.io/{v}/Gateway")]);
        assert_eq!(gw[0].0, "istio-system/appmesh-ingress-gw");
        assert_eq!(gw[0].2, "type.googleapis.com/istio.networking.v1alpha3.Gateway");
        // The imported mesh's 8080 is served as HTTP.
        let se = service_entries(&got[&format!("networking.istio.io/{v}/ServiceEntry")]);
        assert_eq!(se[0].2.ports[0].protocol, "HTTP");
        assert_eq!(se[0].2.ports[0].name, "http-8080");
    }
    // The debug view shows the ServiceEntries as served.
    let (_, yaml) = http_get(server.admin, "/debug/serviceentries");
    assert!(yaml.contains("name: http-8080") && yaml.contains("protocol: HTTP"), "{yaml}");
    let (status, body) = http_get(server.admin, "/debug/appmesh");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let front = v["report"].as_array().unwrap().iter().find(|r| r["name"] == "front").unwrap();
    assert_eq!(front["outcome"], "approximated");
    assert!(front["reasons"][0].as_str().unwrap().contains("active health check"), "{front}");
    assert_eq!(v["served"]["Gateway"][0], "istio-system/appmesh-ingress-gw");
    let (_, metrics) = http_get(server.admin, "/metrics");
    let count = |o: &str| v["report"].as_array().unwrap().iter().filter(|r| r["outcome"] == o).count();
    for o in ["translated", "approximated", "dropped"] {
        let line = format!("cloudmap_mcp_appmesh_objects{{outcome=\"{o}\"}} {}", count(o));
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_appmesh_edit_keeps_the_last_good_translation_and_a_good_one_is_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let good = std::fs::read_to_string(testdata("colorapp/k8s.yaml")).unwrap();
    std::fs::write(&path, &good).unwrap();
    let server = serve_colorapp(&path);
    let mut ads = AdsStream::connect(&server.url()).await;
    let vs_url = "networking.istio.io/v1/VirtualService";
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(got[vs_url].resources.len(), 2);
    let quiet = Duration::from_millis(1500);

    // An unknown field, then a 10 MB file: each logged once with its reason, nothing pushed.
    write_atomic(&path, &good.replace("maxRetries: 3", "maxRetries: 3\n          maxRetires: 3"));
    assert!(server.wait_log("App Mesh file edit not applied", Duration::from_secs(10)), "{}", server.logs());
    assert!(server.logs().contains("unknown field"), "{}", server.logs());
    assert!(ads.recv(quiet).await.is_none(), "a bad edit must not change what is served");
    write_atomic(&path, &"#".repeat(10 << 20));
    assert!(server.wait_log("over the 8388608-byte cap", Duration::from_secs(10)), "{}", server.logs());
    assert!(ads.recv(quiet).await.is_none());

    // A good edit (blue gets 3 of 4) reaches the stream.
    write_atomic(
        &path,
        &good.replacen(
            "virtualNodeRef: {name: colorapp-blue}\n              weight: 1",
            "virtualNodeRef: {name: colorapp-blue}\n              weight: 3",
            1,
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = ads.recv(Duration::from_secs(5)).await.expect("a push after the good edit");
        ads.ack(&r).await;
        if r.type_url == vs_url {
            let vss = bodies(&r);
            let spec = net::VirtualService::decode(vss[0].3.as_slice()).unwrap();
            assert_eq!(spec.http[1].route.iter().map(|r| r.weight).collect::<Vec<_>>(), [3, 1]);
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
}
