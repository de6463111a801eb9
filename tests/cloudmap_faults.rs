//! Cloud Map faults that tests/cloudmap.rs does not cover, against moto behind the fault-injecting
//! proxy (tests/common): every call throttled for a long stretch mid-run, and one service failing
//! on its own while the others change. In both: the ADS client keeps every ServiceEntry it had, the
//! fault shows in metrics and the debug view, and the server recovers without a restart.
//! (Cloud Map down at startup and down mid-run: `cloudmap::nothing_is_served_until_cloud_map_is_reachable`
//! and `cloudmap::emulator_stopped_mid_run_keeps_state_and_recovers_after_restart`.)
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ads::{addresses, Ads};
use common::moto::Moto;
use common::proxy::{self, Action, Proxy};
use common::seed::Seed;
use common::server::{metric, Server};
use common::{eventually, init};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const FAST: &[&str] = &[
    "--istio-namespace",
    "istio-system",
    "--resync-interval",
    "500ms",
    "--revision-poll-interval",
    "200ms",
    "--revision-poll-max-interval",
    "400ms",
    "--instances-refresh-interval",
    "1s",
    "--health-refresh-interval",
    "300ms",
    "--aws-max-attempts",
    "2",
    "--aws-call-timeout",
    "2s",
];

const FRONT: &str = "front.howto-k8s-cloudmap.pvt.aws.local";
const COLORAPP: &str = "colorapp.howto-k8s-cloudmap.pvt.aws.local";
const GETMESH: &str = "getmesh-external-service.my-namespace";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_throttled_for_a_while_keeps_state_and_recovers() {
    init();
    let Some(moto) = Moto::start("throttle_everything").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ids = seed.seed_documents().await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    let server = Server::cloudmap(&proxy.endpoint(), FAST).await;
    let mut ads = Ads::connect(server.grpc).await;
    let before = ads.wait_for("the seed entries", WAIT, |e| e.len() == 3).await;
    // (The response counter moves right after the entries.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let responses = ads.responses();
    assert!(responses >= 1);

    // Every call throttled, with both codes Cloud Map uses.
    let n = Arc::new(AtomicUsize::new(0));
    proxy.set_hook({
        let n = n.clone();
        Arc::new(move |_c: &proxy::Call| {
            if n.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                proxy::throttle("ThrottlingException")
            } else {
                proxy::throttle("RequestLimitExceeded")
            }
        })
    });
    // Cloud Map changes that the server cannot see while throttled.
    seed.register(&ids.front, "192.168.59.250", &[("AWS_INSTANCE_IPV4", "192.168.59.250")]).await;
    seed.deregister(&ids.colorapp, "192.168.34.225").await;
    eventually("many throttled calls and a failed resync", WAIT, || async {
        let m = server.metrics().await;
        let d = server.debug().await;
        (metric(&m, "cloudmap_mcp_aws_throttles_total", &[]) >= 20.0 && d["last_resync"]["complete"] == false).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ads.current().as_ref(), Some(&before), "nothing lost or changed while throttled");
    assert_eq!(ads.responses(), responses, "no push at all while throttled");
    assert_eq!(server.get("/readyz").await.0, 200, "still ready: it serves the last good state");
    let m = server.metrics().await;
    let throttled = metric(&m, "cloudmap_mcp_aws_throttles_total", &[]);
    assert!(metric(&m, "cloudmap_mcp_cloudmap_resyncs_total", &[("result", "incomplete")]) >= 1.0, "{m}");

    // Throttling stops: both changes arrive, nothing else moved.
    proxy.set_hook(proxy::forward_all());
    let e = ads
        .wait_for("both changes after throttling stops", WAIT, |e| {
            addresses(e, FRONT).is_some_and(|a| a.len() == 2) && addresses(e, COLORAPP).is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(e.len(), 3);
    assert_eq!(e.get(&format!("istio-system/cloudmap-{GETMESH}")), before.get(&format!("istio-system/cloudmap-{GETMESH}")));
    eventually("a complete resync after throttling", WAIT, || async {
        let d = server.debug().await;
        (d["last_resync"]["complete"] == true).then_some(())
    })
    .await;
    eprintln!("FAULTS cloudmap throttling: {throttled} throttled calls, state kept, recovered");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_service_keeps_its_entry_while_the_others_change() {
    init();
    let Some(moto) = Moto::start("one_service_failing").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ids = seed.seed_documents().await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    let server = Server::cloudmap(&proxy.endpoint(), FAST).await;
    let mut ads = Ads::connect(server.grpc).await;
    let before = ads.wait_for("the seed entries", WAIT, |e| e.len() == 3).await;
    let colorapp_key = format!("istio-system/cloudmap-{COLORAPP}");

    // Every call about colorapp fails with a server error; everything else goes through.
    let colorapp_id = ids.colorapp.clone();
    let failed = Arc::new(AtomicUsize::new(0));
    proxy.set_hook({
        let failed = failed.clone();
        Arc::new(move |c: &proxy::Call| {
            let about_colorapp = c.body.get("ServiceName").and_then(|v| v.as_str()) == Some("colorapp")
                || c.body.get("Id").and_then(|v| v.as_str()) == Some(colorapp_id.as_str())
                || c.body.get("ServiceId").and_then(|v| v.as_str()) == Some(colorapp_id.as_str());
            if about_colorapp {
                failed.fetch_add(1, Ordering::SeqCst);
                return Action::Reply { status: 500, body: json!({"__type": "InternalFailure", "message": "injected"}) };
            }
            Action::Forward
        })
    });
    // colorapp loses an instance (unseen), front gains one (must arrive).
    seed.deregister(&ids.colorapp, "192.168.34.225").await;
    seed.register(&ids.front, "192.168.59.251", &[("AWS_INSTANCE_IPV4", "192.168.59.251")]).await;
    let e = ads.wait_for("front's new instance despite colorapp failing", WAIT, |e| addresses(e, FRONT).is_some_and(|a| a.len() == 2)).await;
    assert_eq!(e.len(), 3, "no entry lost");
    assert_eq!(e.get(&colorapp_key), before.get(&colorapp_key), "the failing service keeps its last good entry");
    eventually("colorapp reported as failing", WAIT, || async {
        let d = server.debug().await;
        let nss = d["namespaces"].as_array()?.clone();
        let svc = nss.iter().flat_map(|n| n["services"].as_array().cloned().unwrap_or_default()).find(|s| s["name"] == "colorapp")?;
        (!svc["last_error"].is_null()).then_some(())
    })
    .await;
    assert!(failed.load(Ordering::SeqCst) >= 2);
    // The gauge follows at the next publication (at the latest the next resync).
    eventually("colorapp counted as served from stale data", WAIT, || async {
        let m = server.metrics().await;
        (metric(&m, "cloudmap_mcp_cloudmap_services_held_back", &[("reason", "stale")]) >= 1.0).then_some(())
    })
    .await;
    // Several more rounds: still kept.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ads.current().unwrap().get(&colorapp_key), before.get(&colorapp_key));

    // The service recovers: its change arrives.
    proxy.set_hook(proxy::forward_all());
    let e = ads.wait_for("colorapp's change after recovery", WAIT, |e| addresses(e, COLORAPP).is_some_and(|a| a.len() == 1)).await;
    assert_eq!(e.len(), 3);
    eventually("stale count back to 0", WAIT, || async {
        let m = server.metrics().await;
        (metric(&m, "cloudmap_mcp_cloudmap_services_held_back", &[("reason", "stale")]) == 0.0).then_some(())
    })
    .await;
    eprintln!("FAULTS cloudmap one service failing: {} failed calls, its entry kept, the others updated, recovered", failed.load(Ordering::SeqCst));
    server.shutdown().await;
}
