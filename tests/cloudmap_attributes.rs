//! Cloud Map service attributes (GetServiceAttributes) against a real moto server: read with the
//! service, refreshed, served from the last good answer when the call fails, and access denied
//! (an IAM policy without servicediscovery:GetServiceAttributes) served without attributes.
mod common;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ads::Ads;
use common::moto::Moto;
use common::proxy::{self, Action, Proxy};
use common::seed::Seed;
use common::server::{metric, Server};
use common::{args, eventually, init, FAST};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// `FAST` with quick service-attribute refreshes.
fn fast() -> Vec<&'static str> {
    args(FAST, &["--service-attributes-refresh-interval", "300ms"])
}

/// An ECS-style service: two tasks on port 8080, the attributes ECS registers, no protocol.
async fn ecs_service(seed: &Seed, ns: &str, name: &str) -> String {
    let id = seed.service(ns, name).await;
    for (task, ip) in [("task-a", "10.1.0.10"), ("task-b", "10.1.0.11")] {
        seed.register(
            &id,
            task,
            &[
                ("AWS_INSTANCE_IPV4", ip),
                ("AWS_INSTANCE_PORT", "8080"),
                ("AVAILABILITY_ZONE", "us-east-1a"),
                ("REGION", "us-east-1"),
                ("ECS_CLUSTER_NAME", "prod"),
                ("ECS_SERVICE_NAME", name),
                ("ECS_TASK_DEFINITION_FAMILY", name),
                ("AWS_INIT_HEALTH_STATUS", "HEALTHY"),
            ],
        )
        .await;
    }
    id
}

pub async fn set_attributes(seed: &Seed, service_id: &str, attrs: &[(&str, &str)]) {
    seed.set_service_attributes(service_id, attrs).await;
}

/// The service `name` in the debug view.
fn debug_service(d: &Value, name: &str) -> Option<Value> {
    d["namespaces"]
        .as_array()?
        .iter()
        .flat_map(|n| n["services"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == name)
}

fn attributes_of(d: &Value, name: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_value(debug_service(d, name)?["attributes"].clone()).ok()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_attributes_are_read_refreshed_and_kept_when_denied() {
    init();
    let Some(moto) = Moto::start("service_attributes").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = ecs_service(&seed, &ns, "cart").await;
    let plain = ecs_service(&seed, &ns, "plain").await;
    set_attributes(
        &seed,
        &cart,
        &[("cloudmap-mcp/protocol", "HTTP"), ("team", "payments")],
    )
    .await;

    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    let server = Server::cloudmap(&proxy.endpoint(), &fast()).await;
    let mut ads = Ads::connect(server.grpc).await;
    let served = ads.wait_for("both services", WAIT, |e| e.len() == 2).await;

    // Read with the service, before it was first served.
    let d = server.debug().await;
    assert_eq!(
        attributes_of(&d, "cart"),
        Some(map(&[
            ("cloudmap-mcp/protocol", "HTTP"),
            ("team", "payments")
        ])),
        "{d:#}"
    );
    assert_eq!(attributes_of(&d, "plain"), Some(BTreeMap::new()));
    assert!(debug_service(&d, "cart").unwrap()["attributes_read"].is_string());
    assert!(d["service_attributes_denied"].is_null());
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            "cloudmap_mcp_aws_calls_total",
            &[("operation", "GetServiceAttributes"), ("outcome", "ok")]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "cloudmap_mcp_cloudmap_service_attribute_reads_total",
            &[("reason", "new")]
        ) >= 2.0,
        "{m}"
    );
    let asked: std::collections::BTreeSet<String> = proxy
        .calls()
        .iter()
        .filter(|c| c.op == "GetServiceAttributes")
        .filter_map(|c| c.body["ServiceId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        asked,
        [cart.clone(), plain.clone()].into_iter().collect(),
        "read by service id"
    );

    // An update (no revision moves) is seen by the refresh.
    set_attributes(&seed, &cart, &[("cloudmap-mcp/protocol", "GRPC")]).await;
    eventually("the updated attribute", WAIT, || async {
        let d = server.debug().await;
        (attributes_of(&d, "cart")?.get("cloudmap-mcp/protocol")? == "GRPC").then_some(())
    })
    .await;
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            "cloudmap_mcp_cloudmap_service_attribute_reads_total",
            &[("reason", "refresh")]
        ) >= 1.0,
        "{m}"
    );

    // The IAM policy loses the permission: logged, counted, the last good attributes kept.
    proxy.set_hook(std::sync::Arc::new(|c: &proxy::Call| {
        if c.op == "GetServiceAttributes" {
            return Action::Reply {
                status: 400,
                body: json!({"__type": "AccessDeniedException", "message": "User is not authorized to perform: servicediscovery:GetServiceAttributes"}),
            };
        }
        Action::Forward
    }));
    set_attributes(&seed, &cart, &[("cloudmap-mcp/protocol", "TCP")]).await;
    eventually("the denial reported", WAIT, || async {
        let d = server.debug().await;
        let m = server.metrics().await;
        (!d["service_attributes_denied"].is_null()
            && metric(&m, "cloudmap_mcp_cloudmap_service_attributes_denied", &[]) == 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = server.debug().await;
    assert_eq!(
        attributes_of(&d, "cart").unwrap()["cloudmap-mcp/protocol"],
        "GRPC",
        "last good attributes kept: {d:#}"
    );
    assert_eq!(
        debug_service(&d, "cart").unwrap()["attributes_error"]["code"],
        "AccessDeniedException"
    );
    assert_eq!(
        d["service_attributes_denied"]["operation"],
        "GetServiceAttributes"
    );
    assert_eq!(
        ads.current().map(|e| e.len()),
        Some(served.len()),
        "every service still served"
    );
    assert_eq!(server.get("/readyz").await.0, 200);

    // The permission is back: the update made meanwhile arrives, the gauge drops.
    proxy.set_hook(proxy::forward_all());
    eventually("the attribute updated while denied", WAIT, || async {
        let d = server.debug().await;
        let m = server.metrics().await;
        (attributes_of(&d, "cart")?.get("cloudmap-mcp/protocol")? == "TCP"
            && d["service_attributes_denied"].is_null()
            && metric(&m, "cloudmap_mcp_cloudmap_service_attributes_denied", &[]) == 0.0)
            .then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_denied_from_the_start_is_served_without_attributes() {
    init();
    let Some(moto) = Moto::start("service_attributes_denied").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = ecs_service(&seed, &ns, "cart").await;
    set_attributes(&seed, &cart, &[("cloudmap-mcp/protocol", "HTTP")]).await;
    let proxy = Proxy::start(
        moto.addr(),
        std::sync::Arc::new(|c: &proxy::Call| {
            if c.op == "GetServiceAttributes" {
                return Action::Reply {
                    status: 400,
                    body: json!({"__type": "AccessDeniedException", "message": "denied"}),
                };
            }
            Action::Forward
        }),
    )
    .await;
    let server = Server::cloudmap(&proxy.endpoint(), &fast()).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("the service, without its attributes", WAIT, |e| {
        e.len() == 1
    })
    .await;
    let d = server.debug().await;
    assert_eq!(attributes_of(&d, "cart"), Some(BTreeMap::new()), "{d:#}");
    assert_eq!(
        d["service_attributes_denied"]["code"],
        "AccessDeniedException"
    );
    assert_eq!(
        metric(
            &server.metrics().await,
            "cloudmap_mcp_cloudmap_service_attributes_denied",
            &[]
        ),
        1.0
    );
    server.shutdown().await;
}

fn cart_ports(e: &common::ads::Entries) -> Option<Vec<(u32, String, String)>> {
    let se = e.values().find(|se| se.hosts.iter().any(|h| h == "cart.shop"))?;
    Some(se.ports.iter().map(|p| (p.number, p.name.clone(), p.protocol.clone())).collect())
}

/// The ECS case end to end against moto: a port-8080 service made HTTP by its service attribute, an
/// invalid override ignored with its reason, and an attribute change reaching a connected ADS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_attributes_shape_the_served_entry_and_changes_reach_clients() {
    init();
    let Some(moto) = Moto::start("service_attribute_overrides").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = ecs_service(&seed, &ns, "cart").await;
    set_attributes(&seed, &cart, &[("cloudmap-mcp/protocol", "HTTP"), ("cloudmap-mcp/location", "SOMEWHERE")]).await;

    let server = Server::cloudmap(&moto.endpoint(), &fast()).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("cart.shop", WAIT, |e| e.len() == 1).await;
    assert_eq!(cart_ports(&e), Some(vec![(8080, "http-8080".into(), "HTTP".into())]), "8080 served as HTTP");
    let se = e.values().next().unwrap();
    assert_eq!(se.endpoints.len(), 2);
    assert!(se.endpoints.iter().all(|ep| ep.ports.values().all(|p| *p == 8080)), "{:?}", se.endpoints);
    assert_eq!(se.location, 0, "MESH_EXTERNAL: the invalid location override is ignored");

    // The invalid value, with its reason, in /debug/rejected.
    let (code, body) = server.get("/debug/rejected").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let notes = v["notes"].as_array().cloned().unwrap_or_default();
    let note = notes
        .iter()
        .find(|n| n["kind"] == "override" && n["source"]["service"] == "cart")
        .unwrap_or_else(|| panic!("no override note for cart: {v:#}"));
    let msg = note["message"].as_str().unwrap();
    assert!(msg.contains("cloudmap-mcp/location") && msg.contains("SOMEWHERE"), "{msg}");
    assert!(!notes.iter().any(|n| n["message"].as_str().unwrap_or("").contains("cloudmap-mcp/protocol")), "{v:#}");

    // The owners switch to gRPC: a connected client gets it, without any instance change.
    set_attributes(&seed, &cart, &[("cloudmap-mcp/protocol", "GRPC")]).await;
    let e = ads
        .wait_for("cart.shop as GRPC", WAIT, |e| cart_ports(e).is_some_and(|p| p.len() == 1 && p[0].2 == "GRPC"))
        .await;
    assert_eq!(cart_ports(&e).unwrap()[0].0, 8080);
    server.shutdown().await;
}

/// The info line about changed attributes shows keys and value lengths, never the values (issue
/// 22: whoever may call UpdateServiceAttributes wrote 150 KB log lines); the values are at debug,
/// each cut to 64 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attributes_info_line_shows_keys_and_lengths_not_values() {
    init();
    let Some(moto) = Moto::start("attributes_log_line").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = ecs_service(&seed, &ns, "cart").await;
    let value = format!("{}-secret-tail", "v".repeat(1000));
    let keys: Vec<String> = (0..30).map(|i| format!("team-{i:02}")).collect();
    let attrs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
    set_attributes(&seed, &cart, &attrs).await;

    let endpoint = moto.endpoint();
    let mut flags = FAST.to_vec();
    flags.extend_from_slice(&["--cloudmap", "--aws-region", "us-east-1", "--aws-endpoint-url", &endpoint]);
    let server = support::ServerProcess::start(&flags);
    assert!(server.wait_log("Cloud Map service attributes changed", WAIT), "{}", server.logs());
    let logs = server.logs();
    let info = logs.lines().find(|l| l.contains("Cloud Map service attributes changed")).unwrap();
    assert!(info.len() < 2_000, "{} bytes: {info}", info.len());
    assert!(info.contains("team-00 (1012 bytes)") && info.contains("team-29 (1012 bytes)"), "{info}");
    assert!(!info.contains("vvvvvvvv") && !info.contains("secret-tail"), "{info}");
    // At debug (the test server logs cloudmap_mcp at debug): each value cut to 64 characters.
    let debug = logs.lines().find(|l| l.contains("Cloud Map service attribute values")).unwrap();
    assert!(debug.len() < 4_000, "{} bytes: {debug}", debug.len());
    assert!(!debug.contains("secret-tail") && debug.contains("(1012 bytes)"), "{debug}");
    assert!(logs.lines().all(|l| l.len() < 8_000), "no line carries the values");
}
