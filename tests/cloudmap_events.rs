//! Event-driven refresh against moto: an SQS queue fed by an EventBridge rule on the default bus
//! (moto routes PutEvents to the queue), the server consuming it with polling at its slowest.
//!
//! moto does not turn its own Cloud Map calls into CloudTrail events, so each test makes the
//! Cloud Map call and then puts the event AWS would send for it (`tests/common/events.rs`).
mod common;

use std::time::{Duration, Instant};

use common::ads::{addresses, Ads};
use common::events::{cloudtrail_detail, Events};
use common::moto::Moto;
use common::seed::Seed;
use common::server::{metric, Server};
use common::{eventually, init};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Polling effectively off: only the first sync and events can change what is served.
fn slowest(queue_url: &str, endpoint: &str) -> Vec<String> {
    [
        "--istio-namespace",
        "istio-system",
        "--resync-interval",
        "1h",
        "--revision-poll-interval",
        "1h",
        "--revision-poll-max-interval",
        "1h",
        "--instances-refresh-interval",
        "1h",
        "--events-revision-poll-max-interval",
        "1h",
        "--events-instances-refresh-interval",
        "1h",
        "--events-queue-url",
        queue_url,
        "--events-endpoint-url",
        endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start(endpoint: &str, flags: &[String]) -> Server {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::cloudmap(endpoint, &flags).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ips(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

async fn wait_metric(server: &Server, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    eventually(&format!("{name}{labels:?} >= {at_least}"), WAIT, || async {
        let v = metric(&server.metrics().await, name, labels);
        (v >= at_least).then_some(v)
    })
    .await
}

/// Namespace `shop` with service `cart` holding a (10.0.0.1) and b (10.0.0.2): (seed, namespace id, cart id).
async fn shop_with_cart(moto: &Moto) -> (Seed, String, String) {
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("shop").await;
    let cart = seed.service(&ns, "cart").await;
    seed.register(&cart, "a", &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
    seed.register(&cart, "b", &[("AWS_INSTANCE_IPV4", "10.0.0.2")]).await;
    (seed, ns, cart)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_drive_deregistrations_and_registrations_with_polling_at_its_slowest() {
    init();
    let Some(moto) = Moto::start("events_drive_deregistrations").await else { return };
    let (seed, _ns, cart) = shop_with_cart(&moto).await;
    let events = Events::new(&moto.endpoint(), "cloudmap-events").await;

    let server = start(&moto.endpoint(), &slowest(&events.queue_url, &moto.endpoint())).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("cart with a and b", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1", "10.0.0.2"])))
        .await;
    wait_metric(&server, "cloudmap_mcp_events_queue_up", &[], 1.0).await;
    let polls_before =
        metric(&server.metrics().await, "cloudmap_mcp_aws_calls_total", &[("operation", "DiscoverInstancesRevision")]);

    // 20 deregistrations and 20 registrations, each announced by its CloudTrail event only.
    let mut delays = Vec::new();
    for round in 0..20 {
        seed.deregister(&cart, "b").await;
        let t = Instant::now();
        events
            .cloudtrail(
                "DeregisterInstance",
                json!({"serviceId": cart, "instanceId": "b"}),
                json!({"operationId": format!("op-d{round}")}),
            )
            .await;
        ads.wait_for("b deregistered", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1"]))).await;
        delays.push(t.elapsed());

        seed.register(&cart, "b", &[("AWS_INSTANCE_IPV4", "10.0.0.2")]).await;
        let t = Instant::now();
        events
            .cloudtrail(
                "RegisterInstance",
                json!({"serviceId": cart, "instanceId": "b", "attributes": {"AWS_INSTANCE_IPV4": "10.0.0.2"}}),
                json!({"operationId": format!("op-r{round}")}),
            )
            .await;
        ads.wait_for("b registered", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1", "10.0.0.2"]))).await;
        delays.push(t.elapsed());
    }
    delays.sort();
    println!(
        "EVENTS event put -> ADS client, {} changes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );
    let text = server.metrics().await;
    assert!(metric(&text, "cloudmap_mcp_cloudmap_instance_reads_total", &[("reason", "event")]) >= 40.0, "{text}");
    assert!(metric(&text, "cloudmap_mcp_events_service_reads_total", &[("result", "changed")]) >= 40.0);
    assert_eq!(
        metric(&text, "cloudmap_mcp_aws_calls_total", &[("operation", "DiscoverInstancesRevision")]),
        polls_before,
        "no revision poll ran: the events alone carried the changes"
    );
    eventually("the queue drained", WAIT, || async { (events.pending().await == 0).then_some(()) }).await;
    let debug = server.debug().await;
    assert_eq!(debug["settings"]["events"]["active"], json!(true), "{}", debug["settings"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_foreign_duplicate_out_of_order_and_unknown_messages_are_harmless() {
    init();
    let Some(moto) = Moto::start("malformed_foreign_duplicate").await else { return };
    let (seed, ns, cart) = shop_with_cart(&moto).await;
    // An ECS service's task: ECS registers it under the task id with these attributes.
    let web = seed.service(&ns, "web").await;
    let task = "0b69d5c0d655438fb5ad0e4e6d2b2b8f";
    let ecs_attrs = [("AWS_INSTANCE_IPV4", "10.1.0.1"), ("ECS_CLUSTER_NAME", "prod"), ("ECS_SERVICE_NAME", "web")];
    seed.register(&web, task, &ecs_attrs).await;
    let events = Events::new(&moto.endpoint(), "cloudmap-events").await;
    let server = start(&moto.endpoint(), &slowest(&events.queue_url, &moto.endpoint())).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("cart and web", WAIT, |e| e.len() == 2).await;
    wait_metric(&server, "cloudmap_mcp_events_queue_up", &[], 1.0).await;

    // Garbage of every kind, straight into the queue.
    events.send_raw("this is not JSON {").await;
    events.send_raw(r#"{"Event":"s3:TestEvent","Service":"Amazon S3"}"#).await;
    events
        .send_raw(&json!({"detail-type": "Object Created", "source": "aws.s3", "detail": {"bucket": {}}}).to_string())
        .await;
    let envelope = |detail: Value| {
        json!({"version": "0", "detail-type": "AWS API Call via CloudTrail", "source": "aws.servicediscovery", "detail": detail}).to_string()
    };
    events.send_raw(&envelope(cloudtrail_detail("TagResource", json!({"resourceARN": "arn"}), Value::Null))).await;
    events.send_raw(&envelope(cloudtrail_detail("RegisterInstance", json!({"instanceId": "x"}), Value::Null))).await;
    let mut failed =
        cloudtrail_detail("DeregisterInstance", json!({"serviceId": cart, "instanceId": "zz"}), Value::Null);
    failed["errorCode"] = json!("InstanceNotFound");
    events.send_raw(&envelope(failed)).await;
    wait_metric(&server, "cloudmap_mcp_events_messages_total", &[("outcome", "skipped")], 6.0).await;
    let text = server.metrics().await;
    for reason in ["not_json", "not_an_event", "foreign", "unhandled_call", "no_service_id", "failed_call"] {
        assert_eq!(metric(&text, "cloudmap_mcp_events_skipped_total", &[("reason", reason)]), 1.0, "{reason}");
    }
    eventually("garbage deleted, not stuck", WAIT, || async { (events.pending().await == 0).then_some(()) }).await;

    // Duplicates and an old event arriving late: the re-read is the truth.
    seed.deregister(&cart, "b").await;
    let dereg = json!({"serviceId": cart, "instanceId": "b"});
    for _ in 0..3 {
        events.cloudtrail("DeregisterInstance", dereg.clone(), Value::Null).await;
    }
    // The registration of b, from before the deregistration, delivered last.
    events.cloudtrail("RegisterInstance", json!({"serviceId": cart, "instanceId": "b"}), Value::Null).await;
    ads.wait_for("b gone", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1"]))).await;
    wait_metric(&server, "cloudmap_mcp_events_messages_total", &[("outcome", "acted")], 4.0).await;
    eventually("events deleted", WAIT, || async { (events.pending().await == 0).then_some(()) }).await;
    assert_eq!(
        addresses(&ads.current().unwrap(), "cart.shop"),
        Some(ips(&["10.0.0.1"])),
        "the late registration event did not bring b back"
    );

    // A service the server does not know yet (created after the last resync): a resync finds it.
    let new = seed.service(&ns, "checkout").await;
    seed.register(&new, "c", &[("AWS_INSTANCE_IPV4", "10.0.0.9")]).await;
    events.cloudtrail("RegisterInstance", json!({"serviceId": new, "instanceId": "c"}), Value::Null).await;
    ads.wait_for("checkout served after the resync", WAIT, |e| {
        addresses(e, "checkout.shop") == Some(ips(&["10.0.0.9"]))
    })
    .await;
    wait_metric(&server, "cloudmap_mcp_events_resync_requests_total", &[("reason", "unknown_service")], 1.0).await;

    // An ECS task stopping: ECS deregisters it; the task event maps to the service holding it.
    seed.deregister(&web, task).await;
    seed.register(
        &web,
        "1c2d3e",
        &[("AWS_INSTANCE_IPV4", "10.1.0.2"), ("ECS_CLUSTER_NAME", "prod"), ("ECS_SERVICE_NAME", "web")],
    )
    .await;
    events
        .put(
            "aws.ecs",
            "ECS Task State Change",
            json!({
                "taskArn": format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{task}"),
                "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "group": "service:web", "lastStatus": "DEACTIVATING", "desiredStatus": "STOPPED"
            }),
        )
        .await;
    ads.wait_for("web moved to the new task", WAIT, |e| addresses(e, "web.shop") == Some(ips(&["10.1.0.2"]))).await;
    // A task of an ECS service no Cloud Map service holds.
    events
        .put(
            "aws.ecs",
            "ECS Task State Change",
            json!({"taskArn": "arn:aws:ecs:us-east-1:1:task/other/ffff", "group": "service:batch"}),
        )
        .await;
    wait_metric(&server, "cloudmap_mcp_events_skipped_total", &[("reason", "ecs_unmapped")], 1.0).await;

    // Service attributes move no revision: their event re-reads them (GetServiceAttributes).
    events
        .cloudtrail("UpdateServiceAttributes", json!({"serviceId": cart, "attributes": {"team": "shop"}}), Value::Null)
        .await;
    wait_metric(&server, "cloudmap_mcp_cloudmap_service_attribute_reads_total", &[("reason", "event")], 1.0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_falls_back_to_normal_polling_and_recovers() {
    init();
    let Some(moto) = Moto::start("deleted_queue").await else { return };
    let (seed, _ns, cart) = shop_with_cart(&moto).await;
    let mut events = Events::new(&moto.endpoint(), "cloudmap-events").await;
    // Normal cadence fast, the events cadence "never": which one applies shows in what is served.
    let mut flags = slowest(&events.queue_url, &moto.endpoint());
    for (flag, value) in [("--revision-poll-interval", "200ms"), ("--revision-poll-max-interval", "400ms")] {
        let i = flags.iter().position(|f| f == flag).unwrap();
        flags[i + 1] = value.into();
    }
    let server = start(&moto.endpoint(), &flags).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("cart", WAIT, |e| addresses(e, "cart.shop").is_some_and(|a| a.len() == 2)).await;
    wait_metric(&server, "cloudmap_mcp_events_queue_up", &[], 1.0).await;

    events.delete_queue().await;
    wait_metric(
        &server,
        "cloudmap_mcp_events_queue_errors_total",
        &[("operation", "ReceiveMessage"), ("kind", "queue_missing")],
        1.0,
    )
    .await;
    let text = server.metrics().await;
    assert_eq!(metric(&text, "cloudmap_mcp_events_queue_up", &[]), 0.0);
    assert_eq!(server.debug().await["settings"]["events"]["active"], json!(false));
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 200, "readiness is not the queue's business: {body}");

    // No event can arrive: the normal polling carries the change.
    seed.deregister(&cart, "b").await;
    ads.wait_for("b gone by polling", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1"]))).await;

    // The queue comes back (same name, same URL): events flow again.
    events.create_queue("cloudmap-events").await;
    wait_metric(&server, "cloudmap_mcp_events_queue_up", &[], 1.0).await;
    eventually("events active again", WAIT, || async {
        (server.debug().await["settings"]["events"]["active"] == json!(true)).then_some(())
    })
    .await;
    seed.register(&cart, "c", &[("AWS_INSTANCE_IPV4", "10.0.0.3")]).await;
    events
        .send_raw(
            &json!({"detail-type": "AWS API Call via CloudTrail", "source": "aws.servicediscovery",
        "detail": cloudtrail_detail("RegisterInstance", json!({"serviceId": cart, "instanceId": "c"}), Value::Null)})
            .to_string(),
        )
        .await;
    ads.wait_for("c registered", WAIT, |e| addresses(e, "cart.shop") == Some(ips(&["10.0.0.1", "10.0.0.3"]))).await;
    wait_metric(&server, "cloudmap_mcp_cloudmap_instance_reads_total", &[("reason", "event")], 1.0).await;
    server.shutdown().await;
}

/// Cloud Map calls per minute by operation, from the server's own metrics, between two scrapes.
fn calls_by_op(before: &str, after: &str, secs: f64) -> Vec<(&'static str, f64)> {
    ["DiscoverInstancesRevision", "DiscoverInstances", "ListNamespaces", "ListServices", "GetService"]
        .into_iter()
        .map(|op| {
            let d = metric(after, "cloudmap_mcp_aws_calls_total", &[("operation", op)])
                - metric(before, "cloudmap_mcp_aws_calls_total", &[("operation", op)]);
            (op, d * 60.0 / secs)
        })
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Deregistration → ADS client delay and Cloud Map calls per minute for quiet services, with the
/// default polling and with events (BENCHMARKS.md, docs/cloudmap.md). Slow (about 20 minutes):
/// `cargo test --test cloudmap_events -- --ignored --nocapture measure`.
/// `CLOUDMAP_MCP_MEASURE_SERVICES` (1000), `CLOUDMAP_MCP_MEASURE_PROBES` (20 services whose
/// deregistrations are timed), `CLOUDMAP_MCP_MEASURE_SECONDS` (call-count window per mode, 360),
/// `CLOUDMAP_MCP_MEASURE_EVENTS_WARMUP_SECONDS` (330: quiet services reach the 3 min ceiling),
/// `CLOUDMAP_MCP_MEASURE_MODES` (`default,events`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_deregistration_delay_and_calls_with_and_without_events() {
    init();
    let Some(moto) = Moto::start("measure_events").await else { return };
    let n = env_num("CLOUDMAP_MCP_MEASURE_SERVICES", 1000) as usize;
    let probes = (env_num("CLOUDMAP_MCP_MEASURE_PROBES", 20) as usize).min(n);
    let window = env_num("CLOUDMAP_MCP_MEASURE_SECONDS", 360);
    let events_warmup = env_num("CLOUDMAP_MCP_MEASURE_EVENTS_WARMUP_SECONDS", 330);
    let seed = Seed::new(&moto.endpoint()).await;
    let namespaces = n.div_ceil(250);
    let mut ns_ids = Vec::new();
    for i in 0..namespaces {
        ns_ids.push(seed.http_namespace(&format!("ns{i}")).await);
    }
    // Services svc0000..: one instance; the first `probes` have a second one, "b", to deregister.
    let mut probe_ids = Vec::new();
    for i in 0..n {
        let id = seed.service(&ns_ids[i % namespaces], &format!("svc{i:04}")).await;
        seed.register(&id, "a", &[("AWS_INSTANCE_IPV4", "10.8.0.1")]).await;
        if i < probes {
            seed.register(&id, "b", &[("AWS_INSTANCE_IPV4", "10.8.0.2")]).await;
            probe_ids.push((id, format!("svc{i:04}.ns{}", i % namespaces)));
        }
    }
    let events = Events::new(&moto.endpoint(), "cloudmap-events").await;
    let naive = 12.0 * ((1 + namespaces * (n.div_ceil(namespaces)).div_ceil(100)) + n) as f64;
    let mut table = Vec::new();

    let modes = std::env::var("CLOUDMAP_MCP_MEASURE_MODES").unwrap_or_else(|_| "default,events".into());
    for with_events in [false, true] {
        if !modes.split(',').any(|m| m.trim() == if with_events { "events" } else { "default" }) {
            continue;
        }
        let mut flags = vec!["--istio-namespace".to_string(), "istio-system".to_string()];
        if with_events {
            flags.extend(
                ["--events-queue-url", &events.queue_url, "--events-endpoint-url", &moto.endpoint()].map(String::from),
            );
        }
        let server = start(&moto.endpoint(), &flags).await;
        let mut ads = Ads::connect(server.grpc).await;
        ads.wait_for("every service", Duration::from_secs(600), |e| e.len() == n).await;
        // Quiet: every service at its ceiling (default 5, 10, 15 s: 30 s; events 5 s .. 3 min: 315 s).
        let warmup = if with_events { events_warmup } else { 60 };
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let before = server.metrics().await;
        tokio::time::sleep(Duration::from_secs(window)).await;
        let after = server.metrics().await;
        let by_op = calls_by_op(&before, &after, window as f64);
        let total: f64 = by_op.iter().map(|(_, c)| c).sum();
        eprintln!("{} calls/min over {window}s: {total:.0} {by_op:?}", if with_events { "events" } else { "default" });

        // Deregistrations of quiet services: each probe's "b" goes, at a random moment.
        let mut delays = Vec::new();
        for round in 0..2 {
            if with_events {
                for (id, host) in &probe_ids {
                    seed.deregister(id, "b").await;
                    let t = Instant::now();
                    events
                        .cloudtrail("DeregisterInstance", json!({"serviceId": id, "instanceId": "b"}), Value::Null)
                        .await;
                    ads.wait_for("b gone", WAIT, |e| addresses(e, host).is_some_and(|a| a.len() == 1)).await;
                    delays.push(t.elapsed());
                }
            } else {
                let mut pending: Vec<(String, Instant)> = Vec::new();
                for (id, host) in &probe_ids {
                    tokio::time::sleep(Duration::from_millis(rand_ms(750))).await;
                    seed.deregister(id, "b").await;
                    pending.push((host.clone(), Instant::now()));
                }
                while !pending.is_empty() {
                    let e = ads.current().unwrap_or_default();
                    pending.retain(|(host, t)| {
                        let gone = addresses(&e, host).is_some_and(|a| a.len() == 1);
                        if gone {
                            delays.push(t.elapsed());
                        }
                        !gone
                    });
                    assert!(
                        pending.iter().all(|(_, t)| t.elapsed() < Duration::from_secs(120)),
                        "a deregistration took over 120 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            // Back, then quiet again before the next round.
            for (id, _) in &probe_ids {
                seed.register(id, "b", &[("AWS_INSTANCE_IPV4", "10.8.0.2")]).await;
                if with_events {
                    events
                        .cloudtrail("RegisterInstance", json!({"serviceId": id, "instanceId": "b"}), Value::Null)
                        .await;
                }
            }
            let hosts: Vec<String> = probe_ids.iter().map(|(_, h)| h.clone()).collect();
            ads.wait_for("b back", Duration::from_secs(120), |e| {
                hosts.iter().all(|h| addresses(e, h).is_some_and(|a| a.len() == 2))
            })
            .await;
            if round == 0 && !with_events {
                tokio::time::sleep(Duration::from_secs(40)).await;
            }
        }
        delays.sort();
        let mode = if with_events {
            "events (--events-queue-url; polls back off to 3m, refresh 15m)"
        } else {
            "default polling (--revision-poll-max-interval 15s)"
        };
        table.push(format!(
            "| {mode} | {total:.0} | {:.1} % (1/{:.0}) | {:.2} | {:.2} | {:.2} | {} |",
            total / naive * 100.0,
            naive / total,
            percentile(&delays, 0.5).as_secs_f64(),
            percentile(&delays, 0.99).as_secs_f64(),
            delays.last().unwrap().as_secs_f64(),
            delays.len()
        ));
        server.shutdown().await;
    }
    println!("\n{n} quiet services in {namespaces} namespaces (moto), calls from the server's metrics over {window} s, {probes} probe services");
    println!("| mode | Cloud Map calls/min | of re-listing every 5 s | deregistration → client p50 (s) | p99 (s) | max (s) | deregistrations |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in table {
        println!("{row}");
    }
    println!("| re-listing everything every 5 s (computed) | {naive:.0} | 100 % | | | | |");
}

fn rand_ms(max: u64) -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() as u64;
    nanos % max.max(1)
}

/// Throughput of the events consumer on a burst (issue 22: one batch of 10 at a time gave 13.5
/// messages/s against moto). `CLOUDMAP_MCP_MEASURE_SERVICES` (50) services, then
/// `CLOUDMAP_MCP_MEASURE_MESSAGES` (1000) RegisterInstance events naming them in turn, sent to the
/// queue as fast as moto takes them (10 a call); prints messages/s from the first send until every
/// message was processed, and the queue depth the server exports while it drains:
/// `cargo test --test cloudmap_events -- --ignored --nocapture measure_event_burst`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_event_burst_throughput() {
    init();
    let Some(moto) = Moto::start("measure_event_burst").await else { return };
    let n = env_num("CLOUDMAP_MCP_MEASURE_SERVICES", 50) as usize;
    let messages = env_num("CLOUDMAP_MCP_MEASURE_MESSAGES", 1000) as usize;
    let seed = Seed::new(&moto.endpoint()).await;
    let ns = seed.http_namespace("burst").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = seed.service(&ns, &format!("svc{i:03}")).await;
        seed.register(&id, "a", &[("AWS_INSTANCE_IPV4", "10.9.0.1")]).await;
        ids.push(id);
    }
    let events = Events::new(&moto.endpoint(), "burst-events").await;
    let server = start(&moto.endpoint(), &slowest(&events.queue_url, &moto.endpoint())).await;
    let mut ads = Ads::connect(server.grpc).await;
    ads.wait_for("every service", WAIT, |e| e.len() == n).await;
    let processed = |m: &str| {
        metric(m, "cloudmap_mcp_events_messages_total", &[("outcome", "acted")])
            + metric(m, "cloudmap_mcp_events_messages_total", &[("outcome", "skipped")])
    };
    let base = processed(&server.metrics().await);
    let t0 = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(10) {
        let entries = chunk.iter().map(|&i| {
            let body = json!({
                "version": "0", "id": format!("burst-{i}"), "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.servicediscovery", "account": "123456789012", "region": "us-east-1",
                "detail": cloudtrail_detail("RegisterInstance", json!({"serviceId": ids[i % n], "instanceId": "a"}), Value::Null),
            });
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body.to_string()).build().unwrap()
        });
        events.sqs.send_message_batch().queue_url(&events.queue_url).set_entries(Some(entries.collect())).send().await.unwrap();
    }
    let mut depths = Vec::new();
    loop {
        let m = server.metrics().await;
        let done = processed(&m) - base;
        if m.contains("cloudmap_mcp_events_queue_depth") {
            depths.push((t0.elapsed().as_secs(), metric(&m, "cloudmap_mcp_events_queue_depth", &[])));
            depths.dedup_by_key(|d| d.1 as i64);
        }
        if done >= messages as f64 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(900), "{done} of {messages} processed after 900 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let m = server.metrics().await;
    let reads = metric(&m, "cloudmap_mcp_aws_calls_total", &[("operation", "DiscoverInstances")]);
    println!(
        "EVENT BURST: {messages} messages naming {n} services processed in {secs:.1} s: {:.1} messages/s; DiscoverInstances calls in all {reads}; queue depth (s, messages) {depths:?}",
        messages as f64 / secs
    );
    server.shutdown().await;
}
