//! DiscoverInstances answers at most 1,000 instances (MaxResults) and has no paging: a service at
//! the cap is served, with a warning, a metric and a `/debug/cloudmap` note. Against a real moto
//! server (which honours MaxResults like Cloud Map) and the real binary. Also: an instance id and
//! attribute with line breaks stay escaped in the JSON logs and the debug views.
mod common;
mod support;

use std::time::{Duration, Instant};

use common::moto::Moto;
use common::seed::Seed;
use common::server::metric;
use futures::StreamExt;
use serde_json::Value;
use support::{http_get, AdsStream, ServerProcess};

const SE: &str = "networking.istio.io/v1/ServiceEntry";
const CAP: usize = 1000;
const WIDE: usize = CAP + 1;
const EVIL_KEY: &str = "team\nERROR forged by an attribute key\n---\nkind: Forged";
const EVIL_ID: &str = "c\nERROR forged by an instance id\n---\nkind: Forged";
const EVIL_VALUE: &str = "payments\r\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}";

fn service<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d.as_array()
        .map(|sources| sources.iter().collect::<Vec<_>>())
        .unwrap_or_else(|| vec![d])
        .into_iter()
        .flat_map(|s| s["namespaces"].as_array().into_iter().flatten())
        .flat_map(|n| n["services"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_the_discover_instances_cap_is_served_with_a_warning_a_metric_and_a_note() {
    common::init();
    let Some(moto) = Moto::start("instance_cap").await else {
        return;
    };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("big").await;
    let wide = seed.service(&ns, "wide").await;
    let small = seed.service(&ns, "small").await;
    let started = Instant::now();
    futures::stream::iter(0..WIDE)
        .map(|i| {
            let (seed, wide) = (&seed, &wide);
            async move {
                let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
                seed.register(wide, &format!("i-{i:04}"), &[("AWS_INSTANCE_IPV4", &ip), ("AWS_INSTANCE_PORT", "8080")]).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    for (id, ip) in [("a", "10.9.0.1"), ("b", "10.9.0.2")] {
        seed.register(&small, id, &[("AWS_INSTANCE_IPV4", ip)]).await;
    }
    // An instance whose id, attribute key and value break lines (moto, like the SDK, does not
    // check Cloud Map's patterns); it has no address, so it is skipped with a note.
    seed.register(&small, EVIL_ID, &[(EVIL_KEY, EVIL_VALUE)]).await;
    eprintln!("registered {WIDE} instances in moto in {:.1?}", started.elapsed());

    let endpoint = moto.endpoint();
    let server = ServerProcess::start_env(
        &["--cloudmap", "--aws-region", "us-east-1", "--aws-endpoint-url", &endpoint, "--istio-namespace", "istio-system"],
        &[("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_REGION", "us-east-1")],
    );

    // Served: the 1,000 returned instances of `wide`, and `small`.
    let mut ads = AdsStream::connect(&server.url()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let r = ads.istiod_handshake(&[SE]).await;
        let e = r.get(SE).map(support::service_entries).unwrap_or_default();
        if e.len() == 2 {
            break e;
        }
        assert!(Instant::now() < deadline, "both services not served: {}", server.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
        ads = AdsStream::connect(&server.url()).await;
    };
    let wide_entry = entries.iter().find(|(_, _, se)| se.hosts.iter().any(|h| h.starts_with("wide."))).expect("wide served");
    // 1,001 registered, 1,000 served: moto honours MaxResults=1000 like Cloud Map (the server itself
    // never drops instances), so this is the real case of a service larger than one answer.
    assert_eq!(wide_entry.2.endpoints.len(), CAP, "served as returned");

    // The warning (once), the metric, the note; `small` has none.
    assert!(server.wait_log("DiscoverInstances returned its maximum number of instances", Duration::from_secs(10)), "{}", server.logs());
    let (_, m) = http_get(server.admin, "/metrics");
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_services_at_instance_cap", &[("source", "default")]), 1.0, "{m}");
    let (code, body) = http_get(server.admin, "/debug/cloudmap");
    assert_eq!(code, 200, "{body}");
    let d: Value = serde_json::from_str(&body).expect("/debug/cloudmap is JSON");
    let w = service(&d, "wide").expect("wide in /debug/cloudmap");
    assert_eq!(w["instance_count"], CAP);
    let note = w["note"].as_str().unwrap_or_else(|| panic!("no note on wide: {w:#}"));
    assert!(note.contains("1000") && note.contains("may hold more"), "{note}");
    let s = service(&d, "small").expect("small in /debug/cloudmap");
    assert!(s["note"].is_null(), "{s:#}");

    // The instance with line breaks: exact in `/debug/rejected`, escaped in the (JSON) logs.
    let (_, body) = http_get(server.admin, "/debug/rejected");
    let r: Value = serde_json::from_str(&body).expect("/debug/rejected is JSON");
    assert!(r["notes"].as_array().unwrap().iter().any(|n| n["instance"] == EVIL_ID), "{body}");
    assert!(server.wait_log("ERROR forged by an instance id", Duration::from_secs(10)), "the skipped instance was logged: {}", server.logs());
    let logs = server.logs();
    for line in logs.lines() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "a log line that is not one JSON event: {line:?}");
    }
    let cap_warnings = logs.lines().filter(|l| l.contains("DiscoverInstances returned its maximum")).count();
    assert_eq!(cap_warnings, 1, "one warning while the service stays at the cap: {logs}");
}
