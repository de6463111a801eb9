//! The Cloud Map source against a real moto server (see `tests/common/moto.rs` for how it is found).
//!
//! Each test starts its own moto on a free loopback port, seeds it with the AWS SDK, runs the server
//! in-process and watches what an ADS client receives. Faults (throttling, pagination, a service
//! deleted mid-sync) come from a small HTTP proxy in front of moto. Timing is only ever used as a
//! generous upper bound to wait, or as a lower bound that sleeping guarantees.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ads::{addresses, Ads};
use common::moto::Moto;
use common::proxy::{self, Action, Proxy};
use common::seed::Seed;
use common::server::{metric, Server};
use common::{args, eventually, init, FAST};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// No resync and no refresh while a test runs: every call is a revision poll or the read it triggers.
const POLLS_ONLY: &[&str] = &["--resync-interval", "1h", "--instances-refresh-interval", "1h"];

/// The server on `endpoint` with `FAST` and `flags`, and an ADS client that has received `n` ServiceEntries.
async fn serving(endpoint: &str, flags: &[&str], n: usize) -> (Server, Ads) {
    let server = Server::cloudmap(endpoint, &args(FAST, flags)).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for(&format!("{n} services"), WAIT, |e| e.len() == n).await;
    (server, ads)
}

fn host_of(e: &common::ads::Entries, host: &str) -> cloudmap_mcp::proto::istio::networking::v1alpha3::ServiceEntry {
    e.values().find(|se| se.hosts.iter().any(|h| h == host)).cloned().unwrap_or_else(|| panic!("no entry for {host}"))
}

/// `render` output without the annotations that carry Cloud Map ids (they differ between moto and the file).
fn without_ids(yaml: &str) -> String {
    yaml.lines()
        .filter(|l| {
            !["cloudmap-mcp/namespace-id", "cloudmap-mcp/service-id", "cloudmap-mcp/service-arn"]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_documents_reach_an_ads_client_from_http_and_dns_namespaces() {
    init();
    let Some(moto) = Moto::start("seed_documents").await else { return };
    moto.reset().await;
    let seed = Seed::new(&moto.endpoint()).await;
    seed.seed_documents().await;

    let server = Server::cloudmap(&moto.endpoint(), FAST).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("the 3 seed ServiceEntries", WAIT, |e| e.len() == 3).await;

    let g = host_of(&e, "getmesh-external-service.my-namespace");
    assert_eq!(g.endpoints.len(), 1);
    assert_eq!(g.endpoints[0].address, "52.192.72.89");
    assert_eq!(g.addresses, vec!["52.192.72.89".to_string()]);
    let ports: Vec<_> = g.ports.iter().map(|p| (p.number, p.name.as_str())).collect();
    assert_eq!(ports, vec![(80, "http"), (443, "https")]);
    assert!(e.contains_key("istio-system/cloudmap-getmesh-external-service.my-namespace"), "{:?}", e.keys());

    let c = host_of(&e, "colorapp.howto-k8s-cloudmap.pvt.aws.local");
    let versions: BTreeMap<String, String> = c
        .endpoints
        .iter()
        .map(|ep| (ep.address.clone(), ep.labels.get("version").cloned().unwrap_or_default()))
        .collect();
    assert_eq!(
        versions,
        BTreeMap::from([("192.168.10.38".into(), "blue".into()), ("192.168.34.225".into(), "red".into())])
    );
    assert_eq!(addresses(&e, "front.howto-k8s-cloudmap.pvt.aws.local").unwrap(), vec!["192.168.59.249"]);

    // The same data from the registry file gives the same ServiceEntries.
    let file = cloudmap_mcp::source::file::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/registry.yaml"
    )))
    .expect("examples/registry.yaml");
    let opts = cloudmap_mcp::translate::Options::default();
    for se in cloudmap_mcp::translate::translate(&file, &opts).entries {
        let served = e.get(&se.resource_name()).unwrap_or_else(|| panic!("{} not served", se.resource_name()));
        assert_eq!(*served, cloudmap_mcp::cache::to_proto(&se.spec), "{}", se.resource_name());
    }

    // Debug view and metrics.
    let d = server.debug().await;
    assert_eq!(d["synced"], true);
    let nss = d["namespaces"].as_array().unwrap();
    assert_eq!(nss.len(), 2, "{d:#}");
    let color = nss.iter().find(|n| n["name"] == "howto-k8s-cloudmap.pvt.aws.local").unwrap();
    assert_eq!(color["type"], "DNS_PRIVATE");
    assert_eq!(color["http_name"], "howto-k8s-cloudmap.pvt.aws.local");
    let colorapp = color["services"].as_array().unwrap().iter().find(|s| s["name"] == "colorapp").unwrap();
    assert_eq!(colorapp["instance_count"], 2);
    assert!(colorapp["id"].as_str().unwrap().starts_with("srv-"));
    assert!(colorapp["last_refresh"].is_string());
    let m = server.metrics().await;
    for op in ["ListNamespaces", "ListServices", "GetService", "DiscoverInstances"] {
        assert!(
            metric(&m, "cloudmap_mcp_aws_calls_total", &[("operation", op), ("outcome", "ok")]) >= 1.0,
            "{op}:\n{m}"
        );
    }
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_services", &[]), 3.0);
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_instances", &[]), 4.0);
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_synced", &[]), 1.0);
    assert!(m.contains("cloudmap_mcp_cloudmap_sync_age_seconds "), "{m}");
    assert_eq!(server.get("/readyz").await.0, 200);

    // `render --cloudmap` prints what `render --registry-file` prints for the same data.
    let bin = env!("CARGO_BIN_EXE_cloudmap-mcp");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(&args)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .output()
                .expect("run cloudmap-mcp")
        })
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let from_cloudmap = run(s(&[
        "render",
        "--cloudmap",
        "--aws-region",
        "us-east-1",
        "--aws-endpoint-url",
        &moto.endpoint(),
        "--istio-namespace",
        "istio-system",
    ]))
    .await
    .unwrap();
    assert!(from_cloudmap.status.success(), "{}", String::from_utf8_lossy(&from_cloudmap.stderr));
    let from_file = run(s(&[
        "render",
        "--registry-file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/registry.yaml"),
        "--istio-namespace",
        "istio-system",
    ]))
    .await
    .unwrap();
    assert!(from_file.status.success());
    assert_eq!(
        without_ids(&String::from_utf8_lossy(&from_cloudmap.stdout)),
        without_ids(&String::from_utf8_lossy(&from_file.stdout))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_more_than_100_instances_is_read_whole() {
    init();
    let Some(moto) = Moto::start("more_than_100_instances").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.dns_namespace("big.local", "vpc-big").await;
    let svc = seed.service(&ns, "fleet").await;
    for i in 0..150 {
        let ip = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        seed.register(&svc, &format!("i-{i:03}"), &[("AWS_INSTANCE_IPV4", &ip), ("AWS_INSTANCE_PORT", "8080")]).await;
    }
    // One instance without an address: skipped, with the reason in /debug/cloudmap.
    seed.register(&svc, "no-address", &[("AWS_INSTANCE_PORT", "8080")]).await;

    let server = Server::cloudmap(&moto.endpoint(), FAST).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("150 endpoints", WAIT, |e| e.values().any(|se| se.endpoints.len() == 150)).await;
    let se = host_of(&e, "fleet.big.local");
    assert_eq!(se.ports.len(), 1);
    assert_eq!(se.ports[0].number, 8080);

    let d = server.debug().await;
    let svc = &d["namespaces"][0]["services"][0];
    assert_eq!(svc["instance_count"], 151, "{d:#}");
    let skipped = svc["skipped_instances"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{svc:#}");
    assert_eq!(skipped[0]["id"], "no-address");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("no address"), "{svc:#}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_deregister_and_health_flips_reach_a_connected_ads_client() {
    init();
    let Some(moto) = Moto::start("register_deregister_health").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = seed.service_with_health_check(&ns, "cart").await;
    for ip in ["10.0.0.1", "10.0.0.2"] {
        seed.register(&cart, ip, &[("AWS_INSTANCE_IPV4", ip)]).await;
    }
    // A resync interval longer than the test: every change below must come from the revision poll
    // or the health refresh.
    let server = Server::cloudmap(&moto.endpoint(), &args(FAST, &["--resync-interval", "1h"])).await;
    let mut ads = Ads::connect(server.grpc).await;
    let cart_ips = |want: &'static [&'static str]| {
        move |e: &common::ads::Entries| {
            addresses(e, "cart.shop").as_deref() == Some(&want.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])
        }
    };
    ads.wait_for("initial instances", WAIT, cart_ips(&["10.0.0.1", "10.0.0.2"])).await;

    seed.register(&cart, "10.0.0.3", &[("AWS_INSTANCE_IPV4", "10.0.0.3")]).await;
    ads.wait_for("registered instance", WAIT, cart_ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])).await;

    seed.deregister(&cart, "10.0.0.1").await;
    ads.wait_for("deregistered instance", WAIT, cart_ips(&["10.0.0.2", "10.0.0.3"])).await;

    // Health does not move the revision: the health refresh must catch it. HEALTHY_OR_ELSE_ALL
    // drops the unhealthy instance while a healthy one is left...
    seed.set_health(&cart, "10.0.0.2", false).await;
    ads.wait_for("unhealthy instance dropped", WAIT, cart_ips(&["10.0.0.3"])).await;
    // ...and fails open when none is.
    seed.set_health(&cart, "10.0.0.3", false).await;
    ads.wait_for("all unhealthy: every instance served", WAIT, cart_ips(&["10.0.0.2", "10.0.0.3"])).await;
    seed.set_health(&cart, "10.0.0.3", true).await;
    ads.wait_for("healthy again", WAIT, cart_ips(&["10.0.0.3"])).await;

    let m = server.metrics().await;
    assert!(
        metric(&m, "cloudmap_mcp_aws_calls_total", &[("operation", "DiscoverInstancesRevision"), ("outcome", "ok")])
            >= 3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "cloudmap_mcp_aws_calls_total", &[("operation", "ListNamespaces")]), 1.0, "one resync only");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_stopped_mid_run_keeps_state_and_recovers_after_restart() {
    init();
    let Some(mut moto) = Moto::start("emulator_stopped").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    seed.seed_documents().await;
    let server = Server::cloudmap(
        &moto.endpoint(),
        &args(FAST, &["--resync-interval", "300ms", "--removal-confirmations", "20", "--aws-call-timeout", "2s"]),
    )
    .await;
    let mut ads = Ads::connect(server.grpc).await;
    let before = ads.wait_for("the seed entries", WAIT, |e| e.len() == 3).await;

    moto.stop();
    // Several resyncs and polls fail; nothing served changes.
    eventually("failed resyncs reported", WAIT, || async {
        let d = server.debug().await;
        (d["last_resync"]["complete"] == false).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ads.current().as_ref(), Some(&before), "state kept while Cloud Map is unreachable");
    assert_eq!(server.get("/readyz").await.0, 200);
    let m = server.metrics().await;
    assert!(metric(&m, "cloudmap_mcp_aws_calls_total", &[("outcome", "unavailable")]) >= 1.0, "{m}");

    // Restarted empty (moto keeps nothing), then seeded again with one more colorapp instance.
    moto.restart().await;
    let seed = Seed::new(&moto.endpoint()).await;
    let ids = seed.seed_documents().await;
    seed.register(&ids.colorapp, "192.168.77.7", &[("AWS_INSTANCE_IPV4", "192.168.77.7"), ("version", "green")]).await;
    let e = ads
        .wait_for("recovered with the new instance", WAIT, |e| {
            addresses(e, "colorapp.howto-k8s-cloudmap.pvt.aws.local").is_some_and(|a| a.len() == 3)
        })
        .await;
    assert_eq!(e.len(), 3);
    eventually("a complete resync after the restart", WAIT, || async {
        let d = server.debug().await;
        (d["last_resync"]["complete"] == true).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_between_list_and_discover_does_not_block_the_others() {
    init();
    let Some(moto) = Moto::start("deleted_between_list_and_discover").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("race").await;
    let stable = seed.service(&ns, "stable").await;
    seed.register(&stable, "a", &[("AWS_INSTANCE_IPV4", "10.9.0.1")]).await;
    let ghost = seed.service(&ns, "ghost").await;
    seed.register(&ghost, "g", &[("AWS_INSTANCE_IPV4", "10.9.0.2")]).await;
    let phantom = seed.service(&ns, "phantom").await;

    // The proxy deletes "ghost" right before its first DiscoverInstances reaches moto, and
    // "phantom" right before its GetService.
    let ghost_done = Arc::new(AtomicBool::new(false));
    let phantom_done = Arc::new(AtomicBool::new(false));
    let proxy = Proxy::start(moto.addr(), {
        let (ghost, phantom) = (ghost.clone(), phantom.clone());
        let (ghost_done, phantom_done) = (ghost_done.clone(), phantom_done.clone());
        Arc::new(move |c: &proxy::Call| {
            if c.op == "DiscoverInstances"
                && c.body["ServiceName"] == "ghost"
                && !ghost_done.swap(true, Ordering::SeqCst)
            {
                return Action::Before(vec![("DeleteService".into(), json!({"Id": ghost}))]);
            }
            if c.op == "GetService" && c.body["Id"] == phantom.as_str() && !phantom_done.swap(true, Ordering::SeqCst) {
                return Action::Before(vec![("DeleteService".into(), json!({"Id": phantom}))]);
            }
            Action::Forward
        })
    })
    .await;

    let server = Server::cloudmap(&proxy.endpoint(), &args(FAST, &["--resync-interval", "1h"])).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("the surviving service", WAIT, |e| !e.is_empty()).await;
    assert_eq!(e.keys().cloned().collect::<Vec<_>>(), vec!["istio-system/cloudmap-stable.race".to_string()]);
    assert!(ghost_done.load(Ordering::SeqCst) && phantom_done.load(Ordering::SeqCst));

    let d = server.debug().await;
    assert_eq!(d["synced"], true);
    let services = d["namespaces"][0]["services"].as_array().unwrap().clone();
    let ghost_view = services.iter().find(|s| s["name"] == "ghost").unwrap_or_else(|| panic!("{d:#}"));
    assert_eq!(ghost_view["served"], false);
    assert_eq!(ghost_view["last_error"]["kind"], "not_found", "{ghost_view:#}");
    assert!(services.iter().all(|s| s["name"] != "phantom"), "{d:#}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_follow_every_next_token_including_empty_pages() {
    init();
    let Some(moto) = Moto::start("pagination").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let mut want = Vec::new();
    for n in ["alpha", "beta", "gamma"] {
        let ns = seed.http_namespace(n).await;
        for s in 0..3 {
            let name = format!("svc{s}");
            let id = seed.service(&ns, &name).await;
            seed.register(&id, "i", &[("AWS_INSTANCE_IPV4", "10.2.0.1")]).await;
            want.push(format!("{name}.{n}"));
        }
    }
    want.sort();
    let proxy = Proxy::start(
        moto.addr(),
        Arc::new(|c: &proxy::Call| match c.op.as_str() {
            "ListNamespaces" => Action::Paginate { field: "Namespaces", page_size: 1 },
            "ListServices" => Action::Paginate { field: "Services", page_size: 2 },
            _ => Action::Forward,
        }),
    )
    .await;
    let server = Server::cloudmap(&proxy.endpoint(), &args(FAST, &["--resync-interval", "1h"])).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("all 9 services", WAIT, |e| e.len() == 9).await;
    let mut hosts: Vec<String> = e.values().flat_map(|se| se.hosts.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, want);

    // 3 namespaces in pages of 1 with empty pages between: 5 pages, tokens pg-1..pg-4.
    let tokens: Vec<String> = proxy
        .calls()
        .iter()
        .filter(|c| c.op == "ListNamespaces")
        .map(|c| c.body.get("NextToken").and_then(Value::as_str).unwrap_or("-").to_string())
        .collect();
    assert_eq!(tokens, vec!["-", "pg-1", "pg-2", "pg-3", "pg-4"]);
    // moto returns all 9 services to each namespace's ListServices: 5 pages of 2 plus 4 empty ones.
    assert_eq!(proxy.count("ListServices"), 3 * 9);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_exponential_backoff() {
    init();
    let Some(moto) = Moto::start("throttling").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("busy").await;
    let svc = seed.service(&ns, "api").await;
    seed.register(&svc, "i", &[("AWS_INSTANCE_IPV4", "10.3.0.1")]).await;

    // ListServices: 2 × RequestLimitExceeded. DiscoverInstances: 5 × ThrottlingException, more
    // than one call's 3 attempts, so the first sync fails and is retried.
    let ls = Arc::new(AtomicUsize::new(0));
    let di = Arc::new(AtomicUsize::new(0));
    let proxy = Proxy::start(moto.addr(), {
        let (ls, di) = (ls.clone(), di.clone());
        Arc::new(move |c: &proxy::Call| match c.op.as_str() {
            "ListServices" if ls.fetch_add(1, Ordering::SeqCst) < 2 => proxy::throttle("RequestLimitExceeded"),
            "DiscoverInstances" if di.fetch_add(1, Ordering::SeqCst) < 5 => proxy::throttle("ThrottlingException"),
            _ => Action::Forward,
        })
    })
    .await;
    let server =
        Server::cloudmap(&proxy.endpoint(), &args(FAST, &["--resync-interval", "1h", "--aws-max-attempts", "3"])).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("the service after throttling", WAIT, |e| e.len() == 1).await;

    let m = server.metrics().await;
    assert_eq!(metric(&m, "cloudmap_mcp_aws_throttles_total", &[("operation", "ListServices")]), 2.0, "{m}");
    assert_eq!(metric(&m, "cloudmap_mcp_aws_throttles_total", &[("operation", "DiscoverInstances")]), 5.0, "{m}");
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_resyncs_total", &[("result", "incomplete")]), 1.0, "{m}");

    // Backoff: attempt n waits at least half of 250ms × 2^n.
    let at = |op: &str| proxy.calls().iter().filter(|c| c.op == op).map(|c| c.at).collect::<Vec<_>>();
    let ls_at = at("ListServices");
    assert!(ls_at[1] - ls_at[0] >= Duration::from_millis(125), "{ls_at:?}");
    assert!(ls_at[2] - ls_at[1] >= Duration::from_millis(250), "{ls_at:?}");
    let di_at = at("DiscoverInstances");
    assert!(di_at[1] - di_at[0] >= Duration::from_millis(125), "{di_at:?}");
    assert!(di_at[2] - di_at[1] >= Duration::from_millis(250), "{di_at:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_services_stay_within_the_api_budget() {
    init();
    let Some(moto) = Moto::start("api_budget").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("quiet").await;
    const N: usize = 20;
    seed.services_with_one_instance(&ns, N, "10.4.0.1").await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    // 20 services polled every 100 ms (constant: max = base) would want 200 calls/s; the budget
    // allows 10/s (burst 5).
    const RATE: f64 = 10.0;
    const BURST: f64 = 5.0;
    let flags = [
        ["--revision-poll-interval", "100ms", "--revision-poll-max-interval", "100ms"],
        ["--resync-interval", "2s", "--aws-api-rate", "10"],
    ]
    .concat();
    let (server, _ads) = serving(&proxy.endpoint(), &args(&flags, &["--aws-api-burst", "5"]), N).await;

    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let calls = proxy.calls();
    // Every window of 4 s, anywhere in the run, holds at most burst + rate × 4 s calls starting.
    let times: Vec<_> = calls.iter().map(|c| c.at).collect();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|u| **u - *t <= window).count();
        worst = worst.max(n);
    }
    // +1: a call exactly on the window's edge; +1 for scheduling slack of the proxy's clock.
    let limit = (BURST + RATE * window.as_secs_f64()) as usize + 2;
    assert!(worst <= limit, "{worst} calls in a {window:?} window, budget allows {limit}");
    assert!(worst as f64 >= RATE * window.as_secs_f64() * 0.5, "the poller should use its budget: {worst} calls");
    let m = server.metrics().await;
    assert!(metric(&m, "cloudmap_mcp_aws_budget_waits_total", &[]) > 0.0, "{m}");
    // 20 polls due at once at 10 calls/s: a batch takes about 1.5 s (after the burst), far over
    // the 100 ms ceiling: the gauge says the budget cannot keep the schedule.
    let batch = metric(&m, "cloudmap_mcp_cloudmap_poll_batch_seconds", &[("source", "default")]);
    assert!(batch >= 1.0, "last poll batch took {batch} s; {m}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_services_cost_one_revision_call_per_poll() {
    init();
    let Some(moto) = Moto::start("quiet_services").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("calm").await;
    const N: usize = 10;
    seed.services_with_one_instance(&ns, N, "10.5.0.1").await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    // Constant polling (max = base), and neither resyncs nor refreshes during the test.
    let constant = ["--revision-poll-interval", "250ms", "--revision-poll-max-interval", "250ms"];
    let (server, _ads) = serving(&proxy.endpoint(), &args(POLLS_ONLY, &constant), N).await;
    proxy.clear();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let revisions = proxy.count("DiscoverInstancesRevision");
    let others = proxy.calls().len() - revisions;
    assert_eq!(others, 0, "quiet services need no other call between resyncs and refreshes: {:?}", proxy.calls());
    let expected = N as f64 * window.as_secs_f64() / 0.25;
    // Upper bound: at most about one call per service and interval. Lower bound (generous): it polls.
    assert!(
        (revisions as f64) >= expected * 0.25 && (revisions as f64) <= expected * 1.5,
        "{revisions} revision calls, about {expected} expected"
    );
    // Within the budget (10 polls at 100 calls/s): a batch takes about one call's time.
    let m = server.metrics().await;
    let batch = metric(&m, "cloudmap_mcp_cloudmap_poll_batch_seconds", &[("source", "default")]);
    assert!(batch > 0.0 && batch < 1.0, "last poll batch took {batch} s; {m}");
    server.shutdown().await;
}

/// When the proxy saw `op` calls about `service` (by `ServiceName`), in order.
fn calls_about(proxy: &Proxy, op: &str, service: &str) -> Vec<tokio::time::Instant> {
    proxy.calls().iter().filter(|c| c.op == op && c.body["ServiceName"] == service).map(|c| c.at).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_services_back_off_and_a_change_brings_the_base_interval_back() {
    init();
    let Some(moto) = Moto::start("adaptive_polling").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("idle").await;
    const N: usize = 5;
    let ids = seed.services_with_one_instance(&ns, N, "10.11.0.1").await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(800);
    let backoff = ["--revision-poll-interval", "100ms", "--revision-poll-max-interval", "800ms"];
    let (server, mut ads) = serving(&proxy.endpoint(), &args(POLLS_ONLY, &backoff), N).await;

    // 100, 200, 400, then 800 ms between polls.
    eventually("every service polled at the max interval", WAIT, || async {
        let d = server.debug().await;
        let services = d["namespaces"][0]["services"].as_array()?.clone();
        (services.len() == N && services.iter().all(|s| s["poll_interval_ms"] == 800)).then_some(())
    })
    .await;
    proxy.clear();
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let revisions = proxy.count("DiscoverInstancesRevision");
    assert_eq!(proxy.calls().len(), revisions, "quiet: nothing but revision polls: {:?}", proxy.calls());
    let at_base = N as f64 * window.as_secs_f64() / BASE.as_secs_f64();
    let at_max = N as f64 * window.as_secs_f64() / MAX.as_secs_f64();
    assert!(
        revisions >= N && (revisions as f64) <= at_max * 1.5,
        "{revisions} revision calls in {window:?}: about {at_max} at the max interval ({at_base} at the base)"
    );

    // A change to a backed-off service arrives within about the max interval...
    let t0 = tokio::time::Instant::now();
    seed.register(&ids[0], "b", &[("AWS_INSTANCE_IPV4", "10.11.0.2")]).await;
    ads.wait_for("the new instance", WAIT, |e| addresses(e, "s0.idle").is_some_and(|a| a.len() == 2)).await;
    let took = t0.elapsed();
    // (The next poll within MAX + 10 %, then the read, the 100 ms publication debounce and the push.)
    assert!(took <= MAX * 3, "a change to a backed-off service took {took:?} (max interval {MAX:?})");

    // ...and the service is polled at the base interval again (then backs off anew: 100, 200, 400 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads = calls_about(&proxy, "DiscoverInstances", "s0");
    assert_eq!(reads.len(), 1, "one read, after the revision moved");
    let polls = calls_about(&proxy, "DiscoverInstancesRevision", "s0");
    let (before, after): (Vec<tokio::time::Instant>, Vec<_>) = polls.into_iter().partition(|t| *t < reads[0]);
    for w in before.windows(2) {
        assert!(w[1] - w[0] >= MAX.mul_f64(0.85), "backed off before the change: {before:?}");
    }
    assert!(after.len() >= 3, "{} polls in 1.5 s after the change: {after:?}", after.len());
    assert!(after[0] - reads[0] <= MAX / 2, "first poll {:?} after the read", after[0] - reads[0]);
    let m = server.metrics().await;
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_instance_reads_total", &[("reason", "revision")]), 1.0, "{m}");
    eprintln!("ADAPTIVE {revisions} revision calls in {window:?} for {N} quiet services; a change arrived in {took:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_read_only_new_services_and_refreshes_reread_quiet_ones() {
    init();
    let Some(moto) = Moto::start("instances_refresh").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("steady").await;
    let ids = seed.services_with_one_instance(&ns, 3, "10.12.0.1").await;
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    let reads_of = |proxy: &Proxy| -> Vec<String> {
        proxy
            .calls()
            .iter()
            .filter(|c| c.op == "DiscoverInstances")
            .map(|c| c.body["ServiceName"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    // 1. Frequent resyncs, no refresh: resyncs read no known service's instances...
    let (server, mut ads) = serving(&proxy.endpoint(), &args(POLLS_ONLY, &["--resync-interval", "300ms"]), 3).await;
    proxy.clear();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(proxy.count("ListNamespaces") >= 3, "resyncs ran: {:?}", proxy.calls());
    assert_eq!(reads_of(&proxy), Vec::<String>::new(), "a resync reads no known service");
    // ...only new ones.
    let id = seed.service(&ns, "s3").await;
    seed.register(&id, "a", &[("AWS_INSTANCE_IPV4", "10.12.0.1")]).await;
    ads.wait_for("the new service", WAIT, |e| e.len() == 4).await;
    let reads = reads_of(&proxy);
    assert!(!reads.is_empty() && reads.iter().all(|s| s == "s3"), "{reads:?}");
    server.shutdown().await;
    // (The stopped server's poller may still run until the test ends: its proxy goes away.)
    drop(proxy);

    // 2. No resync during the test, a short refresh interval, and a revision that never moves (the
    //    proxy answers it): the refresh alone re-reads the quiet services, and sees their changes.
    let proxy = Proxy::start(
        moto.addr(),
        Arc::new(|c: &proxy::Call| {
            if c.op == "DiscoverInstancesRevision" {
                Action::Reply { status: 200, body: json!({"InstancesRevision": 1}) }
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    const REFRESH: Duration = Duration::from_millis(600);
    let flags = [
        ["--instances-refresh-interval", "600ms", "--revision-poll-interval", "100ms"],
        ["--revision-poll-max-interval", "200ms", "--resync-interval", "1h"],
    ]
    .concat();
    let (server, mut ads) = serving(&proxy.endpoint(), &flags, 4).await;
    proxy.clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(proxy.count("ListNamespaces"), 0, "no resync");
    for s in ["s0", "s1", "s2", "s3"] {
        let reads = calls_about(&proxy, "DiscoverInstances", s);
        // One read per refresh interval, at the first poll after it is up: 3 to 5 in 3 s.
        assert!((2..=6).contains(&reads.len()), "{s}: {} reads in 3 s: {reads:?}", reads.len());
        for w in reads.windows(2) {
            assert!(w[1] - w[0] >= REFRESH.mul_f64(0.95), "{s}: reads closer than the refresh interval: {reads:?}");
        }
    }
    seed.register(&ids[0], "b", &[("AWS_INSTANCE_IPV4", "10.12.0.2")]).await;
    ads.wait_for("a change the revision does not show", WAIT, |e| {
        addresses(e, "s0.steady").is_some_and(|a| a.len() == 2)
    })
    .await;
    let m = server.metrics().await;
    assert!(metric(&m, "cloudmap_mcp_cloudmap_instance_reads_total", &[("reason", "refresh")]) >= 8.0, "{m}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_until_cloud_map_is_reachable() {
    init();
    // Find moto first (for the skip rule), then point the server at a port where nothing listens yet.
    let Some(mut moto) = Moto::start("hold_until_synced").await else { return };
    moto.stop();
    let server = Server::cloudmap(&moto.endpoint(), FAST).await;
    let ads = Ads::connect(server.grpc).await;
    eventually("failed first sync attempts", WAIT, || async {
        let m = server.metrics().await;
        (metric(&m, "cloudmap_mcp_aws_calls_total", &[("outcome", "unavailable")]) >= 2.0).then_some(())
    })
    .await;
    assert_eq!(ads.responses(), 0, "istiod must get nothing before the first complete sync");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let d = server.debug().await;
    assert_eq!(d["synced"], false);
    let m = server.metrics().await;
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_synced", &[]), 0.0);

    moto.restart().await;
    let seed = Seed::new(&moto.endpoint()).await;
    seed.seed_documents().await;
    let mut ads = ads;
    ads.wait_for("the seed entries once Cloud Map answers", Duration::from_secs(60), |e| e.len() == 3).await;
    assert_eq!(server.get("/readyz").await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_removals_are_held_until_consecutive_resyncs_confirm_them() {
    init();
    let Some(moto) = Moto::start("removal_guard").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("fleet").await;
    let ids = seed.services_with_one_instance(&ns, 4, "10.6.0.1").await;
    let server = Server::cloudmap(
        &moto.endpoint(),
        &args(FAST, &["--resync-interval", "500ms", "--removal-confirmations", "3", "--max-removal-ratio", "30%"]),
    )
    .await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("4 services", WAIT, |e| e.len() == 4).await;

    // 1 of 4 (25 %, under the 30 % limit): removed at the next resync.
    seed.delete_service(&ids[0]).await;
    ads.wait_for("s0 removed", WAIT, |e| e.len() == 3).await;

    // 2 of 3 (67 %; a resync between the two deletions sees 1 of 3, 33 %: held too): held, then
    // removed once 3 consecutive resyncs agree.
    let t0 = tokio::time::Instant::now();
    seed.delete_service(&ids[1]).await;
    seed.delete_service(&ids[2]).await;
    // Both held, reported, and still served (checked together: the hold lasts a resync interval).
    eventually("the removal guard to hold both, still serving them", WAIT, || async {
        let d = server.debug().await;
        let held = d["removal_guard"]["held"].as_array().cloned().unwrap_or_default();
        let m = server.metrics().await;
        let ok = held == vec![json!("fleet/s1"), json!("fleet/s2")]
            && metric(&m, "cloudmap_mcp_cloudmap_services_held_back", &[("reason", "removal_guard")]) == 2.0
            && ads.current().is_some_and(|e| e.len() == 3);
        ok.then_some(())
    })
    .await;
    let m = server.metrics().await;
    assert!(metric(&m, "cloudmap_mcp_cloudmap_removal_guard_holds_total", &[]) >= 1.0, "{m}");
    ads.wait_for("confirmed removal", WAIT, |e| e.len() == 1).await;
    // Three resyncs (the first one seeing it, then two more) are at least two intervals apart.
    assert!(t0.elapsed() >= Duration::from_millis(900), "removed after {:?}", t0.elapsed());

    // Everything gone (moto reset): held, then confirmed, then the server serves an empty set.
    moto.reset().await;
    eventually("the removal guard to hold again", WAIT, || async {
        let d = server.debug().await;
        (d["removal_guard"]["held"].as_array().is_some_and(|h| !h.is_empty())).then_some(())
    })
    .await;
    ads.wait_for("empty after confirmation", WAIT, |e| e.is_empty()).await;
    assert_eq!(server.get("/readyz").await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_services_are_selected_by_glob_and_type() {
    init();
    let Some(moto) = Moto::start("selection").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    let prod_a = seed.http_namespace("prod-a").await;
    let prod_b = seed.dns_namespace("prod-b", "vpc-b").await;
    let dev = seed.http_namespace("dev").await;
    for (ns, svc) in [(&prod_a, "api"), (&prod_a, "api-canary"), (&prod_a, "web"), (&prod_b, "db"), (&dev, "api")] {
        let id = seed.service(ns, svc).await;
        seed.register(&id, "i", &[("AWS_INSTANCE_IPV4", "10.7.0.1")]).await;
    }
    let server = Server::cloudmap(
        &moto.endpoint(),
        &args(FAST, &["--include-namespace", "prod-*", "--namespace-type", "HTTP", "--exclude-service", "*-canary"]),
    )
    .await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("the selected services", WAIT, |e| e.len() == 2).await;
    let mut hosts: Vec<String> = e.values().flat_map(|se| se.hosts.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, vec!["api.prod-a", "web.prod-a"]);
    // Stable over resyncs (moto lists every service for every namespace: placement is by GetService).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ads.current().unwrap().len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_sharing_a_name_serve_one_and_report_the_other() {
    init();
    let Some(moto) = Moto::start("namespace_collision").await else { return };
    let seed = Seed::new(&moto.endpoint()).await;
    // Private DNS namespaces of the same name in two VPCs.
    seed.client.create_private_dns_namespace().name("internal.local").vpc("vpc-a").send().await.unwrap();
    seed.client.create_private_dns_namespace().name("internal.local").vpc("vpc-b").send().await.unwrap();
    let list = seed.client.list_namespaces().send().await.unwrap();
    let ids: Vec<String> = list.namespaces().iter().filter_map(|n| n.id().map(str::to_string)).collect();
    assert_eq!(ids.len(), 2);
    for (i, ns) in ids.iter().enumerate() {
        let svc = seed.service(ns, "db").await;
        let ip = format!("10.10.0.{}", i + 1);
        seed.register(&svc, "i", &[("AWS_INSTANCE_IPV4", &ip)]).await;
    }

    let server = Server::cloudmap(&moto.endpoint(), FAST).await;
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("one db.internal.local", WAIT, |e| e.len() == 1).await;
    assert_eq!(host_of(&e, "db.internal.local").endpoints.len(), 1);
    let d = server.debug().await;
    let c = d["namespace_collisions"].as_array().unwrap();
    assert_eq!(c.len(), 1, "{d:#}");
    assert_eq!(c[0]["name"], "internal.local");
    let ignored = c[0]["ignored_id"].as_str().unwrap().to_string();
    server.shutdown().await;

    // Excluding one by id serves the other, with no collision left.
    let server = Server::cloudmap(&moto.endpoint(), &args(FAST, &["--exclude-namespace", &ignored])).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("db.internal.local", WAIT, |e| e.len() == 1).await;
    let d = server.debug().await;
    assert_eq!(d["namespace_collisions"].as_array().unwrap().len(), 0, "{d:#}");
    assert_ne!(d["namespaces"][0]["id"], json!(ignored));
    server.shutdown().await;
}

/// Measures the AWS calls per minute for 1,000 quiet services with the default settings (see
/// docs/cloudmap.md). Slow: `cargo test --test cloudmap -- --ignored --nocapture measure`.
/// `CLOUDMAP_MCP_MEASURE_SERVICES` and `CLOUDMAP_MCP_MEASURE_SECONDS` change the size and window;
/// `CLOUDMAP_MCP_MEASURE_WARMUP_SECONDS` waits before the window (the polls of a freshly synced
/// service back off over about two minutes); `CLOUDMAP_MCP_MEASURE_RATE` the API budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_calls_per_minute_for_quiet_services() {
    init();
    let Some(moto) = Moto::start("measure").await else { return };
    let n: usize = std::env::var("CLOUDMAP_MCP_MEASURE_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let secs: u64 = std::env::var("CLOUDMAP_MCP_MEASURE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let warmup: u64 =
        std::env::var("CLOUDMAP_MCP_MEASURE_WARMUP_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let rate = std::env::var("CLOUDMAP_MCP_MEASURE_RATE").unwrap_or_else(|_| "100".into());
    let seed = Seed::new(&moto.endpoint()).await;
    let namespaces = n.div_ceil(250);
    let mut ns_ids = Vec::new();
    for i in 0..namespaces {
        ns_ids.push(seed.http_namespace(&format!("ns{i}")).await);
    }
    let started = std::time::Instant::now();
    for i in 0..n {
        let id = seed.service(&ns_ids[i % namespaces], &format!("svc{i:04}")).await;
        seed.register(&id, "i-1", &[("AWS_INSTANCE_IPV4", "10.8.0.1"), ("AWS_INSTANCE_PORT", "8080")]).await;
    }
    eprintln!("seeded {n} services in {namespaces} namespaces in {:?}", started.elapsed());
    let proxy = Proxy::start(moto.addr(), proxy::forward_all()).await;
    let started = std::time::Instant::now();
    let server =
        Server::cloudmap(&proxy.endpoint(), &["--istio-namespace", "istio-system", "--aws-api-rate", &rate]).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("every service", Duration::from_secs(600), |e| e.len() == n).await;
    eprintln!("first complete sync: {:?}, {} calls", started.elapsed(), proxy.calls().len());
    if warmup > 0 {
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        eprintln!("after {warmup}s of warm-up: {} calls", proxy.calls().len());
    }
    proxy.clear();
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let calls = proxy.calls();
    let per_minute = |c: usize| c as f64 * 60.0 / secs as f64;
    let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        *by_op.entry(c.op.clone()).or_default() += 1;
    }
    eprintln!(
        "MEASURED over {secs}s, {n} quiet services, --aws-api-rate {rate}: {:.0} calls/min",
        per_minute(calls.len())
    );
    for (op, c) in &by_op {
        eprintln!("  {op}: {c} calls, {:.0}/min", per_minute(*c));
    }
    // Minute by minute: the back-off after the first sync, then the refresh waves.
    for minute in 0..secs.div_ceil(60) {
        let from = t0 + Duration::from_secs(minute * 60);
        let in_minute: Vec<_> =
            calls.iter().filter(|c| c.at >= from && c.at < from + Duration::from_secs(60)).collect();
        let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &in_minute {
            *ops.entry(c.op.as_str()).or_default() += 1;
        }
        eprintln!("  minute {}: {} calls {ops:?}", minute + 1, in_minute.len());
    }
    let per_ns = n.div_ceil(namespaces);
    let list_pages = 1 + namespaces * per_ns.div_ceil(100).max(1);
    let naive = 12 * (list_pages + n);
    eprintln!(
        "re-listing everything every 5 s (ListNamespaces + ListServices pages + DiscoverInstances per service): {naive} calls/min"
    );
    // One table (stdout): the whole window, and after the first minute (the back-off from the base
    // interval is over by then), against the naive relist (computed: its calls are fixed).
    let row = |label: &str, from: Duration| {
        let start = t0 + from;
        let mins = (secs as f64 - from.as_secs_f64()) / 60.0;
        let sel: Vec<_> = calls.iter().filter(|c| c.at >= start).collect();
        let count = |pred: &dyn Fn(&str) -> bool| sel.iter().filter(|c| pred(&c.op)).count() as f64 / mins;
        let total = sel.len() as f64 / mins;
        format!(
            "| {label} | {total:.0} | {:.0} | {:.0} | {:.0} | {:.1} % |",
            count(&|op| op == "DiscoverInstancesRevision"),
            count(&|op| op == "DiscoverInstances"),
            count(&|op| op.starts_with("List")),
            total / naive as f64 * 100.0
        )
    };
    println!("\nAWS calls per minute, {n} quiet services in {namespaces} namespaces, --aws-api-rate {rate}, {secs} s window after the first sync");
    println!("| | calls/min | DiscoverInstancesRevision | DiscoverInstances | List* | of naive |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("{}", row("cloudmap-mcp, whole window", Duration::ZERO));
    if secs > 120 {
        println!("{}", row("cloudmap-mcp, after the first minute", Duration::from_secs(60)));
    }
    println!(
        "| re-list everything every 5 s (computed) | {naive} | 0 | {} | {} | 100.0 % |",
        12 * n,
        12 * list_pages
    );
    server.shutdown().await;
}
