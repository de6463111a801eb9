//! Hostile client input against the real binary (extends `ads::bad_input_gets_a_status_and_leaves_other_streams_alone`):
//! garbage protobuf, invalid node data, absurd resource_names, the request size limit, and a flood
//! of requests on one stream. Each case: a clear gRPC status (or a normal answer), no crash, and a
//! held istiod stream that still gets the next edit.
mod support;

use std::time::{Duration, Instant};

use cloudmap_mcp::proto::envoy::config::core::v3::Node;
use cloudmap_mcp::proto::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const ADS_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Sends raw bytes as request messages (gRPC framing is still tonic's), decodes responses.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryResponse>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Opens a stream, sends `messages` as raw request bytes, and returns how it ended: the responses
/// received and the final status (None: still open after `wait`).
async fn raw_exchange(url: &str, messages: Vec<Vec<u8>>, wait: Duration) -> (Vec<DiscoveryResponse>, Option<Status>) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(messages.len().max(1));
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let resp = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), http::uri::PathAndQuery::from_static(ADS_PATH), RawCodec)
        .await;
    let mut stream = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), Some(s)),
    };
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(r))) => got.push(r),
            Ok(Ok(None)) => return (got, Some(Status::ok(""))),
            Ok(Err(s)) => return (got, Some(s)),
            Err(_) => {
                drop(tx);
                return (got, None);
            }
        }
    }
}

fn registry_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.yaml");
    std::fs::write(&path, example_registry()).unwrap();
    (dir, path)
}

fn request(type_url: &str) -> DiscoveryRequest {
    DiscoveryRequest { type_url: type_url.into(), node: Some(istiod_node()), ..Default::default() }
}

/// The held stream still works: an edit reaches it with the full state.
async fn edit_reaches(good: &mut AdsStream, path: &std::path::Path, address: &str) {
    write_atomic(path, &example_registry().replace("52.192.72.89", address));
    let r = good.recv(Duration::from_secs(10)).await.expect("held stream still served");
    assert_eq!(r.type_url, SE_V1);
    assert_eq!(service_entries(&r).len(), 3);
    good.ack(&r).await;
}

/// protobuf bytes of a `google.protobuf.Struct` nested `depth` levels through `Value.struct_value`.
fn nested_struct(depth: usize) -> prost_types::Struct {
    use prost_types::{value::Kind, Struct, Value};
    let mut s = Struct::default();
    for _ in 0..depth {
        s = Struct { fields: [("a".to_string(), Value { kind: Some(Kind::StructValue(s)) })].into() };
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_node_data_get_a_status() {
    let (_dir, path) = registry_dir();
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "100ms"]);
    let mut good = AdsStream::connect(&server.url()).await;
    good.istiod_handshake(ISTIOD_130_KINDS).await;

    let valid = request(SE_V1).encode_to_vec();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("truncated varint".into(), vec![0x0a, 0xff, 0xff]),
        ("length past the end".into(), vec![0x22, 0x7f, b'a']),
        ("field number 0".into(), vec![0x00, 0x01]),
        ("wrong wire type for type_url".into(), vec![0x21, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("invalid UTF-8 in type_url".into(), vec![0x22, 0x02, 0xff, 0xfe]),
        ("group wire type".into(), vec![0x23, 0x24]),
        ("valid request cut in half".into(), valid[..valid.len() / 2].to_vec()),
    ];
    // Node metadata nested past prost's recursion limit (100).
    let mut deep = request(SE_V1);
    deep.node = Some(Node { id: "x".into(), metadata: Some(nested_struct(150)), ..Default::default() });
    cases.push(("node metadata nested 150 deep".into(), deep.encode_to_vec()));
    // Invalid UTF-8 inside node.id: field 1 (node) holding field 1 (id).
    cases.push(("invalid UTF-8 in node.id".into(), vec![0x12, 0x04, 0x0a, 0x02, 0xc3, 0x28]));
    // Pseudo-random garbage.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        let len = 1 + (i * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        cases.push((format!("random {len} bytes #{i}"), bytes));
    }

    let mut statuses = std::collections::BTreeMap::new();
    for (name, bytes) in &cases {
        let (got, status) = raw_exchange(&server.url(), vec![bytes.clone()], Duration::from_secs(5)).await;
        let status = status.unwrap_or_else(|| panic!("{name}: no status within 5 s (got {} responses)", got.len()));
        // Garbage that happens to decode as a request with a type URL is simply answered.
        if got.is_empty() {
            assert_ne!(status.code(), tonic::Code::Ok, "{name}: closed without a status");
            assert!(!status.message().is_empty(), "{name}: status without a message");
        }
        *statuses.entry(format!("{:?}", status.code())).or_insert(0) += 1;
    }
    eprintln!("BAD_INPUT garbage: {} inputs, statuses {statuses:?}", cases.len());

    // Invalid node data, on a well-formed request.
    let mut long = request(SE_V1);
    long.node.as_mut().unwrap().id = "n".repeat(2000);
    let (got, status) = raw_exchange(&server.url(), vec![long.encode_to_vec()], Duration::from_secs(5)).await;
    let status = status.unwrap();
    assert!(got.is_empty());
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("node.id is 2000 bytes"), "{status:?}");

    let mut deep = request(SE_V1);
    deep.node.as_mut().unwrap().metadata = Some(nested_struct(150));
    let (_, status) = raw_exchange(&server.url(), vec![deep.encode_to_vec()], Duration::from_secs(5)).await;
    let status = status.unwrap();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");

    // Control characters in node.id are accepted but never reach logs or /debug/clients raw.
    let mut forged = request(SE_V1);
    forged.node.as_mut().unwrap().id = "evil\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}".into();
    let (got, status) = raw_exchange(&server.url(), vec![forged.encode_to_vec()], Duration::from_millis(1500)).await;
    assert_eq!(got.len(), 1, "answered normally: {status:?}");
    assert!(server.wait_log("evil\\\\n", Duration::from_secs(5)), "escaped node id logged:\n{}", server.logs());
    assert!(!server.logs().lines().any(|l| l.starts_with("{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"")));

    // Large but legal node metadata is accepted (only node.id is kept).
    let mut wide = request(SE_V1);
    wide.node.as_mut().unwrap().metadata = Some(prost_types::Struct {
        fields: (0..5000)
            .map(|i| (format!("k{i}"), prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("v".repeat(100))) }))
            .collect(),
    });
    let (got, _) = raw_exchange(&server.url(), vec![wide.encode_to_vec()], Duration::from_millis(1500)).await;
    assert_eq!(got.len(), 1);

    edit_reaches(&mut good, &path, "52.192.72.90").await;
    assert!(!server.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_resource_names_and_the_size_limit() {
    let (_dir, path) = registry_dir();
    let limit = 4 * 1024 * 1024;
    let server = ServerProcess::start(&["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "100ms"]);
    let mut good = AdsStream::connect(&server.url()).await;
    good.istiod_handshake(ISTIOD_130_KINDS).await;

    // 10,001 names: over the count limit.
    let mut r = request(SE_V1);
    r.resource_names = (0..10_001).map(|i| format!("n{i}")).collect();
    let (got, status) = raw_exchange(&server.url(), vec![r.encode_to_vec()], Duration::from_secs(5)).await;
    assert!(got.is_empty());
    let status = status.unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("10001 resources; the limit is 10000"), "{status:?}");

    // 10,000 odd names under the byte limit: state of the world ignores names, full state served.
    let odd = ["", "*", "/", "a/b/c", "名前", "\u{0}", "../../etc/passwd"];
    let mut r = request(SE_V1);
    r.resource_names = (0..10_000).map(|i| format!("{}{}", odd[i % odd.len()], "x".repeat(300))).collect();
    let bytes = r.encode_to_vec();
    assert!(bytes.len() < limit && bytes.len() > 3_000_000);
    let (got, _) = raw_exchange(&server.url(), vec![bytes], Duration::from_millis(1500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(service_entries(&got[0]).len(), 3);

    // Just under and just over the default 4 MiB request limit.
    let mut r = request(SE_V1);
    r.resource_names = vec!["y".repeat(1000)];
    let base = r.encode_to_vec().len();
    let mut len = 1000 + limit - base;
    r.resource_names = vec!["y".repeat(len)];
    while r.encode_to_vec().len() > limit {
        len -= 1;
        r.resource_names = vec!["y".repeat(len)];
    }
    let at_limit = r.encode_to_vec();
    assert_eq!(at_limit.len(), limit);
    let (got, status) = raw_exchange(&server.url(), vec![at_limit], Duration::from_millis(2000)).await;
    assert_eq!(got.len(), 1, "{status:?}");
    r.resource_names = vec!["y".repeat(len + 1)];
    let over = r.encode_to_vec();
    assert!(over.len() > limit);
    let (got, status) = raw_exchange(&server.url(), vec![over], Duration::from_secs(5)).await;
    assert!(got.is_empty());
    let status = status.unwrap();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("message length too large"), "{status:?}");

    edit_reaches(&mut good, &path, "52.192.72.91").await;
    assert!(!server.logs().contains("panicked"));
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A flood of ACKs and stale requests on one stream: read at the per-stream bound (1000/s after a
/// burst of 1000), measured, and harmless to others; pushes to the flooding stream are not delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_flood_on_one_stream() {
    let n: usize = std::env::var("CLOUDMAP_MCP_FLOOD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(4_000);
    let (_dir, path) = registry_dir();
    let server = ServerProcess::start_env(
        &["--registry-file", path.to_str().unwrap(), "--registry-poll-interval", "100ms"],
        &[("RUST_LOG", "info")],
    );
    let pid = server.child.id();
    let mut good = AdsStream::connect(&server.url()).await;
    good.istiod_handshake(ISTIOD_130_KINDS).await;

    let mut flood = AdsStream::connect(&server.url()).await;
    let got = flood.istiod_handshake(ISTIOD_130_KINDS).await;
    let se = got[SE_V1].clone();
    let tx = flood.tx.clone();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let nonce = if i % 2 == 0 { se.nonce.clone() } else { format!("stale-{i}") };
            let r = DiscoveryRequest {
                type_url: SE_V1.into(),
                response_nonce: nonce,
                version_info: se.version_info.clone(),
                node: Some(istiod_node()),
                ..Default::default()
            };
            tx.send(r).await.unwrap();
        }
    });
    // While the flood is being read at the bound (its requests wait in the HTTP/2 windows), an edit
    // reaches the held stream and the flooding stream promptly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t_edit = Instant::now();
    write_atomic(&path, &example_registry().replace("52.192.72.89", "52.192.72.92"));
    let r = good.recv(Duration::from_secs(10)).await.expect("held stream served during the flood");
    let edit_latency = t_edit.elapsed();
    assert_eq!(service_entries(&r).len(), 3);
    good.ack(&r).await;
    let r = flood.recv(Duration::from_secs(10)).await.expect("flooding stream still gets pushes");
    let flood_push_latency = t_edit.elapsed();
    assert_eq!(service_entries(&r).len(), 3);
    sender.await.unwrap();
    // A final empty-nonce request is answered once everything before it was read.
    flood.send(SE_V1, "", "").await;
    let r = flood.recv(Duration::from_secs(60)).await.expect("flood stream still answered");
    assert_eq!(service_entries(&r).len(), 3);
    let took = t0.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    let (_, metrics) = http_get(server.admin, "/metrics");
    let count = |name: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let acks = count("cloudmap_mcp_xds_acks_total{type_url=\"networking.istio.io/v1/ServiceEntry\"}");
    let stale = count("cloudmap_mcp_xds_stale_requests_total{type_url=\"networking.istio.io/v1/ServiceEntry\"}");
    let throttled = count("cloudmap_mcp_xds_throttled_streams_total");
    eprintln!(
        "BAD_INPUT flood: {n} requests on one stream read in {took:.2?} ({:.0}/s), server CPU {cpu:.2}s ({:.1} us/request); acks {acks}, stale {stale}, throttled streams {throttled}; edit reached a held stream in {edit_latency:.2?}, the flooding stream in {flood_push_latency:.2?}",
        n as f64 / took.as_secs_f64(),
        cpu * 1e6 / n as f64
    );
    assert!(acks + stale >= n as f64, "every request was processed");
    assert_eq!(throttled, 1.0);
    // Bounded: 1000/s after a burst of 1000 (allow scheduling slack).
    let floor = Duration::from_secs_f64((n.saturating_sub(1000)) as f64 / 1000.0 * 0.8);
    assert!(took >= floor, "read faster than the bound: {took:?} < {floor:?}");
    assert!(edit_latency < Duration::from_secs(3), "the flood delayed others: {edit_latency:?}");
    assert!(flood_push_latency < Duration::from_secs(3), "the flood delayed its own pushes: {flood_push_latency:?}");
    assert!(server.logs().contains("faster than the per-stream bound"));
    assert!(!server.logs().contains("panicked"));
}
