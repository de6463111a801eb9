//! Push pacing end to end (`--min-push-interval`), against the real binary: a registry file edited
//! many times a second reaches a client as at most one push per interval, each a complete state,
//! the last one the final edit; an isolated edit after a quiet period is pushed without waiting.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{http_get, service_entries, write_atomic, AdsStream, ServerProcess, ISTIOD_130_KINDS};

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";

/// 50 services; `generation` moves the first instance of service `generation % 50`.
fn registry(generation: u32) -> String {
    let mut s = String::from("namespaces:\n  - name: pace.example\n    type: HTTP\n    services:\n");
    for svc in 0..50u32 {
        let last = if generation > 0 && svc == generation % 50 { 100 + generation % 150 } else { 1 };
        s.push_str(&format!(
            "      - name: svc-{svc}\n        instances:\n          - {{id: i-0, attributes: {{AWS_INSTANCE_IPV4: 10.0.{svc}.{last}, AWS_INSTANCE_PORT: 8080}}}}\n"
        ));
    }
    s
}

fn addresses(r: &cloudmap_mcp::proto::DiscoveryResponse) -> BTreeSet<String> {
    service_entries(r).into_iter().flat_map(|(_, _, se)| se.endpoints.into_iter().map(|e| e.address)).collect()
}

fn expected_addresses(generation: u32) -> BTreeSet<String> {
    let snap = cloudmap_mcp::source::file::parse(std::path::Path::new("p.yaml"), &registry(generation)).unwrap();
    snap.namespaces
        .iter()
        .flat_map(|n| &n.services)
        .flat_map(|s| s.instances.iter().map(|i| i.attributes["AWS_INSTANCE_IPV4"].clone()))
        .collect()
}

fn metric(server: &ServerProcess, name: &str) -> f64 {
    let (_, body) = http_get(server.admin, "/metrics");
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_edits_are_coalesced_into_one_push_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, registry(0)).unwrap();
    let interval = Duration::from_millis(1000);
    let server =
        ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "20ms", "--min-push-interval", "1s"]);
    let mut ads = AdsStream::connect(&server.url()).await;
    let first = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(addresses(&first[SE_V1]), expected_addresses(0));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // An isolated edit after a quiet period: pushed at once (well inside the window).
    let t0 = Instant::now();
    write_atomic(&path, &registry(1));
    let r = ads.recv(Duration::from_secs(5)).await.expect("the isolated edit is pushed");
    let isolated = t0.elapsed();
    assert_eq!(addresses(&r), expected_addresses(1));
    ads.ack(&r).await;
    assert!(isolated < interval, "an isolated edit waited for the window: {isolated:?}");

    // Then 4 s of edits every 40 ms (100 edits, each a different state).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let churn = Duration::from_secs(4);
    let reader = tokio::spawn(async move {
        let mut pushes = Vec::new();
        while let Some(r) = ads.recv(Duration::from_secs(3)).await {
            ads.ack(&r).await;
            pushes.push((Instant::now(), addresses(&r)));
        }
        pushes
    });
    let start = Instant::now();
    let mut generation = 1;
    while start.elapsed() < churn {
        generation += 1;
        write_atomic(&path, &registry(generation));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let pushes = reader.await.unwrap();
    let (_, last) = pushes.last().expect("pushes during the churn");
    assert_eq!(*last, expected_addresses(generation), "the last push is the final edit");
    for (_, a) in &pushes {
        assert_eq!(a.len(), 50, "every push is a complete state");
    }
    // At most one push per interval over the churn (plus the one at its end and the first).
    let allowed = (churn.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 2;
    assert!(pushes.len() <= allowed, "{} pushes for {generation} edits in {churn:?}; allowed {allowed}", pushes.len());
    for w in pushes.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(gap >= interval / 2, "two pushes {gap:?} apart");
    }
    assert!(metric(&server, "cloudmap_mcp_delayed_pushes_total") >= 1.0);
    eprintln!(
        "PACING: {} edits in {churn:?} reached the client as {} pushes; isolated edit pushed after {isolated:?}",
        generation - 1,
        pushes.len()
    );
}
