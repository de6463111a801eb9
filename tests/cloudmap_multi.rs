//! Several Cloud Map sources in one server (`--sources-file`), against real moto servers and the
//! real binary: two Regions and two accounts (sts:AssumeRole into another account id gives that
//! account's own state in moto) merged into one snapshot served to an ADS client; one source's
//! endpoint killed; the first-sync hold with a source that does not answer.
mod common;
mod support;

use std::time::Duration;

use aws_sdk_servicediscovery::Client;
use common::ads::{addresses, Ads};
use common::moto::Moto;
use common::seed::Seed;
use common::server::metric;
use common::{eventually, init};
use serde_json::Value;
use support::ServerProcess;

const WAIT: Duration = Duration::from_secs(30);


const ROLE: &str = "arn:aws:iam::222222222222:role/cloudmap-mcp-reader";

/// A Cloud Map client of moto at `endpoint` in `region`, as the test's own account, or as the
/// role `role` (sts:AssumeRole through the same moto).
async fn client(endpoint: &str, region: &str, role: Option<&str>) -> Seed {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .load()
        .await;
    let mut conf = aws_sdk_servicediscovery::config::Builder::from(&sdk);
    if let Some(role) = role {
        let provider = aws_config::sts::AssumeRoleProvider::builder(role)
            .external_id("mesh-test")
            .session_name("seed")
            .configure(&sdk)
            .build()
            .await;
        conf = conf.credentials_provider(provider);
    }
    Seed { client: Client::from_conf(conf.build()) }
}

/// One namespace `ns` with one service `svc` and one instance at `ip`. Returns the service id.
async fn one_service(seed: &Seed, ns: &str, svc: &str, ip: &str) -> String {
    let ns_id = match seed
        .client
        .list_namespaces()
        .send()
        .await
        .expect("ListNamespaces")
        .namespaces()
        .iter()
        .find(|n| n.name() == Some(ns))
    {
        Some(n) => n.id().unwrap().to_string(),
        None => seed.http_namespace(ns).await,
    };
    let id = seed.service(&ns_id, svc).await;
    seed.register(&id, "i-1", &[("AWS_INSTANCE_IPV4", ip)]).await;
    id
}

fn write_sources(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("sources.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn get(server: &ServerProcess, path: &str) -> (u16, String) {
    common::http1::get(server.admin, path).await
}

async fn debug_json(server: &ServerProcess, path: &str) -> Value {
    let (status, body) = get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// One source's view in `/debug/cloudmap`'s `{"sources": [...]}`.
fn source_view<'a>(all: &'a Value, name: &str) -> &'a Value {
    all["sources"].as_array().unwrap().iter().find(|v| v["source"] == name).unwrap_or_else(|| panic!("{name}: {all}"))
}

fn start(sources: &str, extra: &[&str]) -> ServerProcess {
    let mut args = common::FAST.to_vec();
    args.extend_from_slice(&["--sources-file", sources]);
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn host_ips(e: &common::ads::Entries, host: &str) -> Option<Vec<String>> {
    addresses(e, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_and_accounts_merge_and_a_dead_source_keeps_its_services() {
    init();
    let Some(moto) = Moto::start("regions_and_accounts_merge").await else { return };
    let Some(mut other) = Moto::start("regions_and_accounts_merge (second endpoint)").await else { return };
    let ep = moto.endpoint();

    let east = client(&ep, "us-east-1", None).await;
    let west = client(&ep, "us-west-2", None).await;
    let acct2 = client(&ep, "us-east-1", Some(ROLE)).await;
    let far = client(&other.endpoint(), "us-east-1", None).await;
    let east_api = one_service(&east, "east.local", "api", "10.0.1.1").await;
    one_service(&west, "west.local", "api", "10.0.2.1").await;
    let pay = one_service(&acct2, "acct2.local", "pay", "10.0.3.1").await;
    one_service(&far, "far.local", "svc", "10.0.4.1").await;
    // The same namespace and service in two sources: the older (east's, created first) is served.
    one_service(&east, "shared.local", "web", "10.0.9.1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    one_service(&acct2, "shared.local", "web", "10.0.9.2").await;
    // Each account and Region sees only its own.
    let names = |s: &Seed| {
        let c = s.client.clone();
        async move {
            let out = c.list_namespaces().send().await.unwrap();
            let mut v: Vec<String> = out.namespaces().iter().filter_map(|n| n.name().map(str::to_string)).collect();
            v.sort();
            v
        }
    };
    assert_eq!(names(&west).await, ["west.local"]);
    assert_eq!(names(&acct2).await, ["acct2.local", "shared.local"]);

    let dir = tempfile::tempdir().unwrap();
    let sources = write_sources(
        &dir,
        &format!(
            r#"sources:
  - name: east
    region: us-east-1
    endpointUrl: {ep}
  - name: west
    region: us-west-2
    endpointUrl: {ep}
    apiRate: 20
  - name: acct2
    region: us-east-1
    endpointUrl: {ep}
    stsEndpointUrl: {ep}
    roleArn: {ROLE}
    externalId: mesh-test
    ownerAccount: "222222222222"
  - name: far
    region: us-east-1
    endpointUrl: {far}
"#,
            far = other.endpoint()
        ),
    );
    let server = start(&sources, &[]);
    let mut ads = Ads::connect(server.grpc).await;
    let hosts = ["api.east.local", "api.west.local", "pay.acct2.local", "svc.far.local", "web.shared.local"];
    let e = ads.wait_for("every source merged", WAIT, |e| hosts.iter().all(|h| host_ips(e, h).is_some())).await;
    assert_eq!(e.len(), 5, "{:?}", e.keys());
    assert_eq!(host_ips(&e, "api.east.local").unwrap(), ["10.0.1.1"]);
    assert_eq!(host_ips(&e, "api.west.local").unwrap(), ["10.0.2.1"]);
    assert_eq!(host_ips(&e, "pay.acct2.local").unwrap(), ["10.0.3.1"]);
    assert_eq!(host_ips(&e, "web.shared.local").unwrap(), ["10.0.9.1"], "the older CreateDate wins");
    assert!(server.logs().contains("sts:AssumeRole"), "the acct2 source assumes its role");

    // Per-source metrics, debug views and readiness.
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready: 5 ServiceEntries\n"));
    let m = get(&server, "/metrics").await.1;
    for s in ["east", "west", "acct2", "far"] {
        assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_synced", &[("source", s)]), 1.0, "{s}\n{m}");
        assert!(metric(&m, "cloudmap_mcp_aws_calls_total", &[("source", s), ("outcome", "ok")]) >= 3.0, "{s}");
        assert!(m.contains(&format!("cloudmap_mcp_cloudmap_sync_age_seconds{{source=\"{s}\"}}")), "{s}");
    }
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_services", &[("source", "acct2")]), 2.0);
    let all = debug_json(&server, "/debug/cloudmap").await;
    let listed: Vec<&str> = all["sources"].as_array().unwrap().iter().map(|v| v["source"].as_str().unwrap()).collect();
    assert_eq!(listed, ["acct2", "east", "far", "west"]);
    let one = source_view(&all, "acct2");
    let ns: Vec<&str> = one["namespaces"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(ns, ["acct2.local", "shared.local"]);
    assert_eq!(one["settings"]["selection"]["owner_account"], "222222222222");

    // The second endpoint dies: its source keeps its last good data, the others still change.
    other.stop();
    east.register(&east_api, "i-2", &[("AWS_INSTANCE_IPV4", "10.0.1.2")]).await;
    acct2.deregister(&pay, "i-1").await;
    acct2.register(&pay, "i-2", &[("AWS_INSTANCE_IPV4", "10.0.3.2")]).await;
    let e = ads
        .wait_for("east and acct2 changes while far is down", WAIT, |e| {
            host_ips(e, "api.east.local").is_some_and(|v| v.len() == 2)
                && host_ips(e, "pay.acct2.local") == Some(vec!["10.0.3.2".to_string()])
        })
        .await;
    assert_eq!(host_ips(&e, "svc.far.local").unwrap(), ["10.0.4.1"], "far's last good data is kept");
    // Several failed resyncs of far later, nothing of it is lost.
    eventually("far's resyncs fail", WAIT, || async {
        let m = get(&server, "/metrics").await.1;
        (metric(&m, "cloudmap_mcp_cloudmap_resyncs_total", &[("source", "far"), ("result", "incomplete")]) >= 3.0)
            .then_some(())
    })
    .await;
    let e = ads.current().unwrap();
    assert_eq!(e.len(), 5);
    assert_eq!(host_ips(&e, "svc.far.local").unwrap(), ["10.0.4.1"]);
    assert_eq!(get(&server, "/readyz").await.0, 200);
    let all = debug_json(&server, "/debug/cloudmap").await;
    let far_view = source_view(&all, "far");
    assert!(far_view["last_resync"]["complete"] == false, "{far_view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_hold_waits_for_each_source_up_to_its_timeout() {
    init();
    let Some(moto) = Moto::start("first_sync_hold").await else { return };
    let Some(mut late) = Moto::start("first_sync_hold (late endpoint)").await else { return };
    late.stop();
    one_service(&client(&moto.endpoint(), "us-east-1", None).await, "up.local", "api", "10.1.0.1").await;

    let dir = tempfile::tempdir().unwrap();
    let sources = write_sources(
        &dir,
        &format!(
            "sources:\n  - name: up\n    endpointUrl: {}\n  - name: late\n    endpointUrl: {}\n    firstSyncTimeout: 6s\n",
            moto.endpoint(),
            late.endpoint()
        ),
    );
    let server = start(&sources, &["--first-sync-timeout", "1h"]);
    assert!(server.wait_log("first complete Cloud Map sync: serving", WAIT), "{}", server.logs());
    // Up has synced, late is within its timeout: held, and readiness names the late source.
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "not ready: Cloud Map source(s) not synced yet: late\n");
    assert!(server.wait_log("Cloud Map sources not synced within their first-sync timeout", WAIT), "{}", server.logs());
    let line =
        server.logs().lines().find(|l| l.contains("not synced within their first-sync timeout")).unwrap().to_string();
    assert!(line.contains("\"late\":\"late\""), "{line}");
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("up served without late", WAIT, |e| e.len() == 1).await;
    assert_eq!(host_ips(&e, "api.up.local").unwrap(), ["10.1.0.1"]);
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready: 1 ServiceEntries; Cloud Map source(s) not synced yet: late\n"));
    let m = get(&server, "/metrics").await.1;
    assert_eq!(metric(&m, "cloudmap_mcp_cloudmap_synced", &[("source", "late")]), 0.0);

    // The late endpoint comes up: its source joins.
    late.restart().await;
    one_service(&client(&late.endpoint(), "us-east-1", None).await, "late.local", "api", "10.2.0.1").await;
    let e = ads.wait_for("late joins", Duration::from_secs(60), |e| e.len() == 2).await;
    assert_eq!(host_ips(&e, "api.late.local").unwrap(), ["10.2.0.1"]);
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready: 2 ServiceEntries\n"));
}

/// A TCP listener that counts the connections it gets (and closes them): an endpoint that must
/// not be called.
fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    (url, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_sts_endpoint_takes_precedence_over_aws_endpoint_url() {
    init();
    let Some(moto) = Moto::start("sts_endpoint_precedence").await else { return };
    let ep = moto.endpoint();
    one_service(&client(&ep, "us-east-1", Some(ROLE)).await, "acct2.local", "pay", "10.0.3.1").await;
    // AWS_ENDPOINT_URL names an endpoint that must not be called; the source names moto for both.
    let (elsewhere, calls) = counting_listener();
    let dir = tempfile::tempdir().unwrap();
    let sources = write_sources(
        &dir,
        &format!(
            "sources:\n  - name: acct2\n    region: us-east-1\n    endpointUrl: {ep}\n    stsEndpointUrl: {ep}\n    roleArn: {ROLE}\n    externalId: mesh-test\n"
        ),
    );
    let mut args = common::FAST.to_vec();
    args.extend_from_slice(&["--sources-file", &sources]);
    let server = ServerProcess::start_env(&args, &[("AWS_ENDPOINT_URL", &elsewhere)]);
    let mut ads = Ads::connect(server.grpc).await;
    let e = ads.wait_for("the role's service, through moto's STS", WAIT, |e| e.len() == 1).await;
    assert_eq!(host_ips(&e, "pay.acct2.local").unwrap(), ["10.0.3.1"], "{}", server.logs());
    let line = server.logs().lines().find(|l| l.contains("sts:AssumeRole")).unwrap_or_default().to_string();
    assert!(line.contains(&ep), "the log names the endpoint called: {line}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0, "AWS_ENDPOINT_URL was called");
}

#[test]
fn sources_file_errors_and_conflicts_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_sources(&dir, "sources:\n  - name: a\n    roleArn: nope\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--sources-file", &bad])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("sources[0] (\"a\"): roleArn \"nope\" is not an IAM role ARN"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--sources-file", &bad, "--aws-region", "us-east-1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("'--sources-file <FILE>' cannot be used with '--aws-region <REGION>'"), "{err}");
}
