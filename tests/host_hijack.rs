//! Host hijacks: a service owner's `cloudmap-mcp/hosts` attribute (UpdateServiceAttributes against
//! moto, the server in-process) and a mapping `aliases:` entry (the real binary) claiming another
//! service's host, a cluster host, a foreign host, or too many hosts. The victim keeps its host; the
//! attacker's extra host is dropped, shown in `/debug/rejected` and counted.
mod common;
mod support;

use std::time::Duration;

use common::ads::{Ads, Entries};
use common::moto::Moto;
use common::seed::Seed;
use common::server::{metric, Server};
use common::{args, init, FAST};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn hosts_of(e: &Entries, first: &str) -> Option<Vec<String>> {
    e.values().find(|se| se.hosts[0] == first).map(|se| se.hosts.clone())
}

/// Every entry claiming `host`.
fn claims(e: &Entries, host: &str) -> usize {
    e.values().filter(|se| se.hosts.iter().any(|h| h == host)).count()
}

fn host_notes(rejected: &Value, service: &str) -> Vec<String> {
    rejected["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "host" && n["source"]["service"] == service)
        .map(|n| n["message"].as_str().unwrap().to_string())
        .collect()
}

/// A registry file and a mapping file in a new directory: (the directory, registry, mapping).
fn registry_and_mapping(registry: &str, mapping: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (reg, map) = (dir.path().join("registry.yaml"), dir.path().join("mapping.yaml"));
    std::fs::write(&reg, registry).unwrap();
    std::fs::write(&map, mapping).unwrap();
    (dir, reg, map)
}

async fn two_tasks(seed: &Seed, id: &str, base: &str) {
    for (task, last) in [("task-a", "10"), ("task-b", "11")] {
        let ip = format!("{base}.{last}");
        seed.register(id, task, &[("AWS_INSTANCE_IPV4", ip.as_str()), ("AWS_INSTANCE_PORT", "8080")]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_attribute_cannot_take_another_services_host_or_a_cluster_or_foreign_host() {
    init();
    let Some(moto) = Moto::start("host_hijack").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("prod").await;
    // The attacker is the older service: age must not matter against a service's own host.
    let evil = seed.service(&ns, "evil").await;
    two_tasks(&seed, &evil, "10.6.6").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let payments = seed.service(&ns, "payments").await;
    two_tasks(&seed, &payments, "10.1.1").await;
    seed.set_service_attributes(
        &evil,
        &[
            ("cloudmap-mcp/protocol", "HTTP"),
            (
                "cloudmap-mcp/hosts",
                "payments.prod,www.google.com,istiod.istio-system.svc.cluster.local,sts.amazonaws.com,api.evil.prod",
            ),
        ],
    )
    .await;

    let server = Server::cloudmap(&moto.endpoint(), &args(FAST, &["--service-attributes-refresh-interval", "300ms"])).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("both services, evil with its override", WAIT, |e| e.len() == 2 && hosts_of(e, "evil.prod").is_some_and(|h| h.len() > 1)).await;
    assert_eq!(hosts_of(&e, "payments.prod").unwrap(), ["payments.prod"]);
    assert_eq!(hosts_of(&e, "evil.prod").unwrap(), ["evil.prod", "api.evil.prod"]);
    for h in ["payments.prod", "www.google.com", "istiod.istio-system.svc.cluster.local", "sts.amazonaws.com"] {
        assert_eq!(claims(&e, h), usize::from(h == "payments.prod"), "{h}");
    }
    let (code, body) = server.get("/debug/rejected").await;
    assert_eq!(code, 200);
    let rejected: Value = serde_json::from_str(&body).unwrap();
    let notes = host_notes(&rejected, "evil");
    assert_eq!(notes.len(), 4, "{notes:#?}");
    assert!(notes.iter().any(|n| n.contains("\"payments.prod\"") && n.contains("it is the host of prod/payments")), "{notes:#?}");
    assert!(notes.iter().any(|n| n.contains("istiod.istio-system.svc.cluster.local") && n.contains("cluster domain")), "{notes:#?}");
    assert!(notes.iter().any(|n| n.contains("sts.amazonaws.com") && n.contains("not below an allowed domain")), "{notes:#?}");
    assert_eq!(rejected["rejected"], serde_json::json!([]));
    assert_eq!(metric(&server.metrics().await, "cloudmap_mcp_dropped_hosts", &[]), 4.0);

    // 20 hosts under its own namespace: 16 served, the rest left out with one note.
    let many: Vec<String> = (0..20).map(|i| format!("h{i}.evil.prod")).collect();
    seed.set_service_attributes(&evil, &[("cloudmap-mcp/hosts", many.join(",").as_str())]).await;
    let e = ads.wait_for("evil's 16 extra hosts", WAIT, |e| hosts_of(e, "evil.prod").is_some_and(|h| h.len() == 17)).await;
    assert_eq!(hosts_of(&e, "evil.prod").unwrap()[1..], many[..16]);
    let (_, body) = server.get("/debug/rejected").await;
    let notes = host_notes(&serde_json::from_str(&body).unwrap(), "evil");
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert!(notes[0].starts_with("4 more extra hosts not served: at most 16 per service (--max-extra-hosts)"), "{notes:#?}");
    server.shutdown().await;
}

#[test]
fn a_mapping_alias_cannot_take_another_services_host_or_a_cluster_host() {
    let (_dir, reg, map) = registry_and_mapping(
        r#"namespaces:
  - name: prod
    type: HTTP
    services:
      - name: evil
        createDate: "2020-01-01T00:00:00Z"
        instances: [{id: a, attributes: {AWS_INSTANCE_IPV4: 10.6.6.6, AWS_INSTANCE_PORT: 8080}}, {id: b, attributes: {AWS_INSTANCE_IPV4: 10.6.6.7, AWS_INSTANCE_PORT: 8080}}]
      - name: payments
        createDate: "2024-01-01T00:00:00Z"
        instances: [{id: a, attributes: {AWS_INSTANCE_IPV4: 10.1.1.1, AWS_INSTANCE_PORT: 8080}}, {id: b, attributes: {AWS_INSTANCE_IPV4: 10.1.1.2, AWS_INSTANCE_PORT: 8080}}]
"#,
        "rules:\n  - match: {service: evil}\n    ports: [{instancePort: 8080, protocol: HTTP}]\n    aliases: [payments.prod, kubernetes.default.svc.cluster.local, legacy.example.com]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["render", "--registry-file", reg.to_str().unwrap(), "--mapping-file", map.to_str().unwrap(), "--output", "json"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts: Vec<Vec<String>> =
        list["items"].as_array().unwrap().iter().map(|i| serde_json::from_value(i["spec"]["hosts"].clone()).unwrap()).collect();
    assert_eq!(hosts, [vec!["evil.prod", "legacy.example.com"], vec!["payments.prod"]], "{hosts:?}");
    // The served binary says why, in /debug/rejected and the metric.
    let server = support::ServerProcess::start(&["--registry-file", reg.to_str().unwrap(), "--mapping-file", map.to_str().unwrap()]);
    assert!(server.wait_log("first snapshot served", Duration::from_secs(10)), "{}", server.logs());
    let (code, body) = support::http_get(server.admin, "/debug/rejected");
    assert_eq!(code, 200, "{body}");
    let notes = host_notes(&serde_json::from_str(&body).unwrap(), "evil");
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert!(notes.iter().any(|n| n.starts_with("extra host \"payments.prod\" not served: it is the host of prod/payments")), "{notes:#?}");
    assert!(notes.iter().any(|n| n.starts_with("mapping alias \"kubernetes.default.svc.cluster.local\" not served")), "{notes:#?}");
    let (_, m) = support::http_get(server.admin, "/metrics");
    assert_eq!(metric(&m, "cloudmap_mcp_dropped_hosts", &[]), 2.0, "{m}");
}

/// Whoever can create a Cloud Map namespace names hosts: `default.svc.cluster.local` with a service
/// `kubernetes`, or an HTTP namespace `svc` with a service `istiod.istio-system`, would give
/// ServiceEntries for the cluster's own services. They are rejected with the reason; the others are
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_map_namespace_cannot_name_the_clusters_own_services() {
    init();
    let Some(moto) = Moto::start("host_hijack_namespace").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let cluster = seed.http_namespace("default.svc.cluster.local").await;
    let kubernetes = seed.service(&cluster, "kubernetes").await;
    two_tasks(&seed, &kubernetes, "10.6.6").await;
    let svc = seed.http_namespace("svc").await;
    let istiod = seed.service(&svc, "istiod.istio-system").await;
    two_tasks(&seed, &istiod, "10.6.7").await;
    let prod = seed.http_namespace("prod").await;
    let payments = seed.service(&prod, "payments").await;
    two_tasks(&seed, &payments, "10.1.1").await;

    let server = Server::cloudmap(&moto.endpoint(), &args(FAST, &[])).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("the served services", WAIT, |e| hosts_of(e, "payments.prod").is_some()).await;
    let served: Vec<&String> = e.values().flat_map(|se| &se.hosts).collect();
    assert_eq!(served, ["payments.prod"], "{served:?}");
    let (code, body) = server.get("/debug/rejected").await;
    assert_eq!(code, 200);
    let rejected: Value = serde_json::from_str(&body).unwrap();
    let reasons: Vec<(String, String)> = rejected["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["source"]["service"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:#?}");
    assert!(
        reasons.iter().any(|(s, r)| s == "kubernetes"
            && r == "host \"kubernetes.default.svc.cluster.local\" not served: it is in the cluster domain cluster.local (Kubernetes services are not Cloud Map's to serve)"),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|(s, r)| s == "istiod.istio-system" && r.contains("\"istiod.istio-system.svc\" not served: it ends in .svc")),
        "{reasons:#?}"
    );
    server.shutdown().await;
}

/// `--host-domain` holds every host to the platform's domains: an HTTP namespace `amazonaws.com`
/// cannot serve `sts.amazonaws.com` to the mesh, and an alias outside them is left out.
#[test]
fn host_domains_hold_every_host_to_the_platforms_domains() {
    let (_dir, reg, map) = registry_and_mapping(
        r#"namespaces:
  - name: amazonaws.com
    type: HTTP
    services:
      - name: sts
        instances: [{id: a, attributes: {AWS_INSTANCE_IPV4: 10.6.6.6, AWS_INSTANCE_PORT: 443}}]
  - name: prod
    type: HTTP
    services:
      - name: payments
        instances: [{id: a, attributes: {AWS_INSTANCE_IPV4: 10.1.1.1, AWS_INSTANCE_PORT: 8080}}]
"#,
        "rules:\n  - match: {service: payments}\n    ports: [{instancePort: 8080, protocol: HTTP}]\n    aliases: [payments.example.com, payments.other.org]\n",
    );
    let render = |extra: &[&str]| {
        let mut args = vec!["render", "--registry-file", reg.to_str().unwrap(), "--mapping-file", map.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
            .args(&args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("CLOUDMAP_MCP_HOST_DOMAINS")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let hosts_in = |yaml: &str| -> Vec<Vec<String>> {
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(yaml).unwrap();
        docs.iter().map(|d| serde_json::from_value(d["spec"]["hosts"].clone()).unwrap()).collect()
    };
    // Without the flag every host outside the cluster's domains is served.
    let (code, out, err) = render(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        hosts_in(&out),
        [vec!["payments.prod", "payments.example.com", "payments.other.org"], vec!["sts.amazonaws.com"]]
    );
    // With it: sts is rejected, the alias outside is left out, each with the reason.
    let (code, out, err) = render(&["--host-domain", "prod,example.com"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(hosts_in(&out), [vec!["payments.prod", "payments.example.com"]]);
    let said = format!("{out}{err}");
    assert!(
        said.contains("host \"sts.amazonaws.com\" not served: it is outside the allowed host domains (prod, example.com; --host-domain)"),
        "{said}"
    );
    assert!(said.contains("mapping alias \"payments.other.org\" not served: it is outside the allowed host domains"), "{said}");
    // A domain in the cluster's is refused at startup.
    let (code, _, err) = render(&["--host-domain", "svc.cluster.local"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--host-domain \"svc.cluster.local\": it is in the cluster domain cluster.local"), "{err}");
}
