//! The scale benchmark, as a module shared by `benches/scale.rs` (`cargo bench --bench scale`) and
//! `tests/bench_smoke.rs` (which runs it at a tiny size, without timing assertions).
//!
//! Layout of one run, per registry size (services × endpoints per service):
//! - in this process: a synthetic Cloud Map model, then translate + encode of the full snapshot and
//!   the re-encode after one service changed (`ResourceCache::build`, the code `serve` runs);
//! - three server CHILD processes (this same executable, re-run with `CLOUDMAP_MCP_BENCH_SERVER`
//!   set), so every server's RSS and CPU are its own and the clients' are not counted:
//!   * `ours`: the library pipeline `serve` wires (model watch channel → `cache::run` →
//!     `AdsServer` on a tonic `Server` with the same HTTP/2 settings), fed by a synthetic source
//!     instead of the registry file or the Cloud Map poller; `change` on stdin edits one service's
//!     endpoint and publishes a new model snapshot, as the poller does;
//!   * `floor`: a trivial tonic server that answers every request with the very same
//!     DiscoveryResponse bytes, built once (the transport floor);
//!   * `naive`: a tonic server that keeps typed protos and builds and prost-encodes a full
//!     `DiscoveryResponse` for every client (what a server without a shared encoded cache does);
//! - real tonic clients in this process (generated `AggregatedDiscoveryServiceClient`, one HTTP/2
//!   connection each, decoding every `DiscoveryResponse` with prost).
//!
//! Measurements are interleaved (for each repetition, for each client count: floor, naive, ours) so
//! that load from other processes spreads over the three alike and the ratios stay meaningful.
#![allow(dead_code)]

pub mod cloudmap_api;
mod config;
pub mod realpath;
mod report;
pub mod rows_file;
pub mod rows_istiod;
pub mod rows_moto;
pub mod rows_poller;

pub use config::{Config, Size};
pub use report::{labels, machine, mb, median, ms, percentile, Report, Table, Unit};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use cloudmap_mcp::cache::{self, ResourceCache};
use cloudmap_mcp::metrics::Metrics;
use cloudmap_mcp::model::{self, HealthStatus, NamespaceType, Timestamp};
use cloudmap_mcp::proto::envoy::config::core::v3::Node;
use cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use cloudmap_mcp::proto::istio::mcp::v1alpha1 as mcp;
use cloudmap_mcp::proto::istio::networking::v1alpha3 as net;
use cloudmap_mcp::proto::{
    DiscoveryRequest, DiscoveryResponse, MCP_RESOURCE_TYPE_URL, SERVICE_ENTRY_BODY_TYPE_URL,
};
use cloudmap_mcp::translate;
use cloudmap_mcp::xds::{codec as ads_codec, AdsConfig, AdsServer, Clients};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

/// Environment variable that turns this executable into a benchmark server (value: `ours`, `floor`
/// or `naive`); the size comes in [`SIZE_ENV`].
pub const ROLE_ENV: &str = "CLOUDMAP_MCP_BENCH_SERVER";
pub const SIZE_ENV: &str = "CLOUDMAP_MCP_BENCH_SERVER_SIZE";
const READY: &str = "CLOUDMAP_MCP_BENCH_READY";
const PUBLISHED: &str = "CLOUDMAP_MCP_BENCH_PUBLISHED";

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";
/// The 15 kinds istiod 1.30+ asks for (SPEC section 1).
const ISTIOD_130_KINDS: &[&str] = &[
    "security.istio.io/v1/AuthorizationPolicy",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1/Gateway",
    "security.istio.io/v1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1/RequestAuthentication",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1/Sidecar",
    "telemetry.istio.io/v1/Telemetry",
    "extensions.istio.io/v1alpha1/TrafficExtension",
    "networking.istio.io/v1/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1/WorkloadEntry",
    "networking.istio.io/v1/WorkloadGroup",
];

// ---------------------------------------------------------------------------------------------
// Synthetic Cloud Map
// ---------------------------------------------------------------------------------------------

/// Services per namespace in the synthetic registry.
const SERVICES_PER_NAMESPACE: usize = 100;

/// A registry shaped like ECS services registered in Cloud Map (by ECS service discovery or the App
/// Mesh controller): DNS_PRIVATE namespaces of 100 services, each instance with an IPv4, a port,
/// region/zone and a few custom attributes that become endpoint labels.
pub fn synthetic_model(size: Size) -> model::Snapshot {
    let namespaces = size.services.div_ceil(SERVICES_PER_NAMESPACE);
    let mut out = Vec::with_capacity(namespaces);
    for n in 0..namespaces {
        let ns_id = format!("ns-{:016x}", 0x5eed_0000_0000u64 + n as u64);
        let first = n * SERVICES_PER_NAMESPACE;
        let last = ((n + 1) * SERVICES_PER_NAMESPACE).min(size.services);
        let services = (first..last)
            .map(|s| {
                let name = format!("svc-{s:05}");
                let id = format!("srv-{:016x}", 0xab_0000_0000u64 + s as u64);
                let instances = (0..size.endpoints)
                    .map(|e| instance(s, e, size.endpoints, &name))
                    .collect::<Vec<_>>()
                    .into();
                Arc::new(model::Service {
                    arn: Some(format!(
                        "arn:aws:servicediscovery:us-east-1:123456789012:service/{id}"
                    )),
                    id: Some(id),
                    name,
                    create_date: Some(Timestamp {
                        seconds: 1_600_000_000 + s as i64,
                        nanos: 0,
                    }),
                    attributes: Default::default(),
                    instances,
                })
            })
            .collect();
        let name = format!("ns-{n:04}.prod.internal");
        out.push(model::Namespace {
            arn: Some(format!(
                "arn:aws:servicediscovery:us-east-1:123456789012:namespace/{ns_id}"
            )),
            id: Some(ns_id),
            http_name: name.clone(),
            name,
            kind: NamespaceType::DnsPrivate,
            services,
        });
    }
    let mut snap = model::Snapshot { namespaces: out };
    snap.normalize();
    snap
}

fn ipv4(n: usize) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn instance(service: usize, e: usize, per_service: usize, service_name: &str) -> model::Instance {
    let n = service * per_service + e;
    let zone = ["a", "b", "c"][e % 3];
    let attrs = [
        ("AWS_INSTANCE_IPV4", ipv4(n)),
        ("AWS_INSTANCE_PORT", "8080".to_string()),
        ("AWS_INIT_HEALTH_STATUS", "HEALTHY".to_string()),
        ("REGION", "us-east-1".to_string()),
        ("AVAILABILITY_ZONE", format!("us-east-1{zone}")),
        ("ECS_CLUSTER_NAME", "prod".to_string()),
        ("ECS_SERVICE_NAME", service_name.to_string()),
        ("version", if e % 2 == 0 { "v1" } else { "v2" }.to_string()),
    ];
    model::Instance {
        id: format!("{:032x}", 0x1d_0000_0000u128 + n as u128),
        attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        health: HealthStatus::Healthy,
    }
}

/// Change number `seq` (from 1): one service's first endpoint moves to a new address.
pub fn change_one_service(snap: &mut model::Snapshot, seq: usize) {
    let total = snap.service_count();
    let target = (seq * 7919) % total;
    let ns = &mut snap.namespaces[target / SERVICES_PER_NAMESPACE];
    let addr = format!(
        "172.{}.{}.{}",
        16 + ((seq >> 16) & 15),
        (seq >> 8) & 255,
        seq & 255
    );
    model::Service::edit_instances(&mut ns.services[target % SERVICES_PER_NAMESPACE], |v| {
        v[0].attributes.insert("AWS_INSTANCE_IPV4".into(), addr);
    });
}

// ---------------------------------------------------------------------------------------------
// Server child processes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Floor,
    Naive,
    Ours,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Floor, Kind::Naive, Kind::Ours];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Naive => "naive",
            Kind::Ours => "ours",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// If this process was started as a benchmark server, runs it (until stdin closes) and returns
/// true. Call first thing in `main` (or in the test that hosts the child).
pub fn child_main() -> bool {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return false;
    };
    let kind = Kind::parse(&role)
        .unwrap_or_else(|| panic!("{ROLE_ENV}={role:?}: expected ours, floor or naive"));
    let size = Size::parse(&std::env::var(SIZE_ENV).expect("size")).expect("size");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve_child(kind, size));
    true
}

async fn serve_child(kind: Kind, size: Size) {
    // stdin: one command per line; EOF ends the process.
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if cmd_tx.blocking_send(line).is_err() {
                break;
            }
        }
        std::process::exit(0);
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // The HTTP/2 settings `app::serve` uses.
    let builder = || {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
    };
    let ready = |addr: SocketAddr| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY} {addr}").unwrap();
        out.flush().unwrap();
    };

    match kind {
        Kind::Ours => {
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = Arc::new(Metrics::register(&mut registry));
            let (model_tx, model_rx) = cloudmap_mcp::source::channel();
            let mut current = Arc::new(synthetic_model(size));
            model_tx.send_replace(Some(current.clone()));
            let (res_tx, mut res_rx) = watch::channel(None);
            tokio::spawn(cache::run(
                model_rx,
                cache::fixed_options(translate::Options::default()),
                ResourceCache::new(translate::Options::default()),
                res_tx,
                metrics.clone(),
            ));
            res_rx.wait_for(|s| s.is_some()).await.unwrap();
            let (_stop_tx, stop_rx) = watch::channel(false);
            let mut published = res_rx.clone();
            published.borrow_and_update();
            let ads = AdsServer::new(
                res_rx,
                metrics,
                Arc::new(Clients::default()),
                AdsConfig::default(),
                stop_rx,
            );
            tokio::spawn(builder().add_service(ads).serve_with_incoming(incoming));
            ready(addr);
            let mut seq = 0;
            while let Some(cmd) = cmd_rx.recv().await {
                if cmd.trim() == "change" {
                    let t0 = Instant::now();
                    seq += 1;
                    // What a source does on a change: a complete new model snapshot, sharing the
                    // unchanged services with the previous one.
                    let mut next = (*current).clone();
                    change_one_service(&mut next, seq);
                    let cloned = t0.elapsed();
                    current = Arc::new(next);
                    model_tx.send_replace(Some(current.clone()));
                    // Time until the cache has published the new resources (streams start sending).
                    if published.changed().await.is_ok() {
                        published.borrow_and_update();
                        let mut out = std::io::stdout().lock();
                        writeln!(
                            out,
                            "{PUBLISHED} {} {}",
                            t0.elapsed().as_micros(),
                            cloned.as_micros()
                        )
                        .unwrap();
                        out.flush().unwrap();
                    }
                }
            }
        }
        Kind::Floor => {
            let bytes = {
                let model = Arc::new(synthetic_model(size));
                let (snap, _) = ResourceCache::new(translate::Options::default()).build(&model);
                prebuilt_response(&snap)
            };
            let svc = FixedAds(Arc::new(Responder::Floor(bytes)));
            tokio::spawn(builder().add_service(svc).serve_with_incoming(incoming));
            ready(addr);
            while cmd_rx.recv().await.is_some() {}
        }
        Kind::Naive => {
            let typed = {
                let model = Arc::new(synthetic_model(size));
                let (snap, _) = ResourceCache::new(translate::Options::default()).build(&model);
                let entries: Vec<_> = snap
                    .translation()
                    .entries
                    .iter()
                    .zip(&snap.service_entries.names)
                    .map(|(se, (_, version))| {
                        let md = mcp::Metadata {
                            name: se.resource_name(),
                            create_time: Some(prost_types::Timestamp {
                                seconds: se.create_time.seconds,
                                nanos: se.create_time.nanos,
                            }),
                            version: version.to_string(),
                            labels: se.labels.clone(),
                            annotations: se.annotations.clone(),
                        };
                        (md, cache::to_proto(&se.spec))
                    })
                    .collect();
                NaiveState {
                    version: snap.service_entries.version.clone(),
                    entries,
                }
            };
            let svc = FixedAds(Arc::new(Responder::Naive(typed)));
            tokio::spawn(builder().add_service(svc).serve_with_incoming(incoming));
            ready(addr);
            while cmd_rx.recv().await.is_some() {}
        }
    }
}

/// The bytes `ours` sends for the first ServiceEntry request on a stream (nonce "1").
pub fn prebuilt_response(snap: &cache::ResourceSnapshot) -> Bytes {
    let cp = ads_codec::control_plane_field();
    let body = snap.for_type(SE_V1, 0);
    let mut v = Vec::with_capacity(cache::encoded_response_len(body, SE_V1, "1", &cp));
    cache::encode_response(body, SE_V1, "1", &cp, &mut v);
    Bytes::from(v)
}

struct NaiveState {
    version: String,
    entries: Vec<(mcp::Metadata, net::ServiceEntry)>,
}

impl NaiveState {
    /// Everything encoded again for this one response.
    fn response(&self, type_url: &str) -> DiscoveryResponse {
        let resources = self
            .entries
            .iter()
            .map(|(md, se)| {
                let res = mcp::Resource {
                    metadata: Some(md.clone()),
                    body: Some(prost_types::Any {
                        type_url: SERVICE_ENTRY_BODY_TYPE_URL.into(),
                        value: se.encode_to_vec(),
                    }),
                };
                prost_types::Any {
                    type_url: MCP_RESOURCE_TYPE_URL.into(),
                    value: res.encode_to_vec(),
                }
            })
            .collect();
        let cp = cloudmap_mcp::proto::envoy::config::core::v3::ControlPlane {
            identifier: format!("cloudmap-mcp/{}", env!("CARGO_PKG_VERSION")),
        };
        DiscoveryResponse {
            version_info: self.version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: "1".into(),
            control_plane: Some(cp),
            ..Default::default()
        }
    }
}

enum Responder {
    Floor(Bytes),
    Naive(NaiveState),
}

enum Reply {
    Raw(Bytes),
    Typed(Box<DiscoveryResponse>),
}

/// A minimal ADS server for the references: answers every request that is not an ACK of its own
/// nonce "1" with the full ServiceEntry state.
#[derive(Clone)]
struct FixedAds(Arc<Responder>);

impl tonic::server::NamedService for FixedAds {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tower::Service<http::Request<Body>> for FixedAds {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ReplyCodec)
                .apply_max_message_size_config(None, Some(usize::MAX));
            Ok(grpc.streaming(FixedStream(inner), req).await)
        })
    }
}

type ReplyStream = Pin<Box<dyn futures::Stream<Item = Result<Reply, Status>> + Send>>;

struct FixedStream(Arc<Responder>);

impl tower::Service<tonic::Request<Streaming<DiscoveryRequest>>> for FixedStream {
    type Response = tonic::Response<ReplyStream>;
    type Error = Status;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let responder = self.0.clone();
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                while let Ok(Some(r)) = inbound.message().await {
                    if r.response_nonce == "1" {
                        continue;
                    }
                    let reply = match &*responder {
                        Responder::Floor(b) => Reply::Raw(b.clone()),
                        Responder::Naive(n) => Reply::Typed(Box::new(n.response(&r.type_url))),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            });
            let s: ReplyStream = Box::pin(ReceiverStream::new(rx));
            Ok(tonic::Response::new(s))
        })
    }
}

#[derive(Clone)]
struct ReplyCodec;

impl Codec for ReplyCodec {
    type Encode = Reply;
    type Decode = DiscoveryRequest;
    type Encoder = ReplyEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> ReplyEncoder {
        ReplyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

struct ReplyEncoder;

impl Encoder for ReplyEncoder {
    type Item = Reply;
    type Error = Status;

    fn encode(&mut self, item: Reply, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Reply::Raw(b) => {
                buf.reserve(b.len());
                buf.put_slice(&b);
            }
            Reply::Typed(m) => {
                buf.reserve(m.encoded_len());
                m.encode(buf).map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// A running server child. Killed on drop.
pub struct ServerChild {
    pub kind: Kind,
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// Per change: ms from the `change` command to the published snapshot, and ms of that spent
    /// cloning the model (the source's part).
    published: std::sync::mpsc::Receiver<(f64, f64)>,
}

impl ServerChild {
    fn start(kind: Kind, size: Size, launcher: &dyn Fn() -> Command) -> ServerChild {
        let mut cmd = launcher();
        cmd.env(ROLE_ENV, kind.as_str())
            .env(SIZE_ENV, format!("{}x{}", size.services, size.endpoints))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start benchmark server child");
        let stdout = child.stdout.take().unwrap();
        // One thread reads the child's stdout to its end (a libtest host prints its own lines too).
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (tx, published) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Found anywhere in the line: a libtest host prints "test NAME ... " before it.
                if let Some(addr) = l.split_once(READY).and_then(|(_, a)| a.trim().parse().ok()) {
                    let _ = ready_tx.send(addr);
                } else if let Some((_, v)) = l.split_once(PUBLISHED) {
                    let us: Vec<f64> = v
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if let [total, clone] = us[..] {
                        let _ = tx.send((total / 1000.0, clone / 1000.0));
                    }
                }
            }
        });
        let addr = match ready_rx.recv_timeout(Duration::from_secs(300)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("benchmark server {kind:?} did not report ready ({e}); its stderr is above");
            }
        };
        let stdin = child.stdin.take();
        ServerChild {
            kind,
            child,
            stdin,
            addr,
            published,
        }
    }

    fn command(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Server-side time of the last change (ms, and ms of it in the source), once reported.
    fn published_ms(&self) -> (f64, f64) {
        self.published
            .recv_timeout(Duration::from_secs(300))
            .expect("the server reports each published change")
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmHWM` and `VmRSS` of a process, in bytes.
pub fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Samples a process's VmRSS every 2 ms on a thread until finished; gives how far the largest value
/// seen rose above the value at the start, in bytes.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let base = memory_of(pid).1;
        let thread = std::thread::spawn(move || {
            let mut max = base;
            loop {
                max = max.max(memory_of(pid).1);
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return max - base;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RssSampler { stop, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

fn istiod_node() -> Node {
    use prost_types::{value::Kind, Struct, Value};
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    Node {
        id: "sidecar~10.244.0.7~istiod-bench.istio-system~istio-system.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: BTreeMap::from([
                ("GENERATOR".into(), s("api")),
                ("ISTIO_VERSION".into(), s("65536.65536.65536")),
            ]),
        }),
        ..Default::default()
    }
}

fn request(type_url: &str, nonce: &str, version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        node: Some(istiod_node()),
        ..Default::default()
    }
}

fn timestamp_nonce() -> String {
    format!("{:?}", std::time::SystemTime::now())
}

/// One connection per client, as separate istiod replicas would have.
async fn connect(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        out.push(ch);
    }
    out
}

struct OpenStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

async fn open(ch: &Channel) -> OpenStream {
    let mut client =
        AggregatedDiscoveryServiceClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(64);
    let resp = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open stream");
    OpenStream {
        tx,
        rx: resp.into_inner(),
    }
}

/// A full push of the ServiceEntry kind to `n` clients at once: every client opens a stream, then
/// all send their request at t0; the time is until the last client has decoded its response.
/// Returns (time, bytes of one response, resources in it).
async fn full_push(chans: &[Channel]) -> (Duration, usize, usize) {
    let mut streams = Vec::with_capacity(chans.len());
    for ch in chans {
        streams.push(open(ch).await);
    }
    let t0 = Instant::now();
    for s in &streams {
        s.tx.send(request(SE_V1, &timestamp_nonce(), ""))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(300), s.rx.message())
                    .await
                    .expect("a response within 5 minutes")
                    .expect("response")
                    .expect("a response");
                let at = Instant::now();
                let out = (at, r.encoded_len(), r.resources.len());
                drop(r);
                drop(s);
                out
            })
        })
        .collect();
    let mut last = t0;
    let (mut bytes, mut resources) = (0, 0);
    for t in tasks {
        let (at, b, n) = t.await.unwrap();
        last = last.max(at);
        if bytes != 0 {
            assert_eq!(
                (b, n),
                (bytes, resources),
                "every client gets the same response"
            );
        }
        (bytes, resources) = (b, n);
    }
    (last - t0, bytes, resources)
}

/// What a connected istiod-like client saw.
struct Event {
    client: usize,
    type_url: String,
    at: Instant,
}

/// Connects `chans.len()` clients that play istiod's opening (MeshConfig + 15 kinds, timestamp
/// nonces), ACK every response and report each one. Returns once every kind was answered everywhere.
async fn istiod_clients(
    chans: &[Channel],
) -> (
    mpsc::UnboundedReceiver<Event>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, ch) in chans.iter().enumerate() {
        let mut s = open(ch).await;
        s.tx.send(request(MESH_CONFIG, &timestamp_nonce(), ""))
            .await
            .unwrap();
        for k in ISTIOD_130_KINDS {
            s.tx.send(request(k, &timestamp_nonce(), "")).await.unwrap();
        }
        let ev_tx = ev_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(r)) = s.rx.message().await {
                let at = Instant::now();
                let ack = request(&r.type_url, &r.nonce, &r.version_info);
                let type_url = r.type_url.clone();
                drop(r);
                if ev_tx
                    .send(Event {
                        client: i,
                        type_url,
                        at,
                    })
                    .is_err()
                    || s.tx.send(ack).await.is_err()
                {
                    break;
                }
            }
        }));
    }
    let kinds = ISTIOD_130_KINDS.len() + 1;
    let mut answered = vec![0usize; chans.len()];
    while answered.iter().any(|a| *a < kinds) {
        let ev = tokio::time::timeout(Duration::from_secs(300), ev_rx.recv())
            .await
            .expect("handshake answered")
            .expect("event");
        answered[ev.client] += 1;
    }
    (ev_rx, tasks)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Changes one service at a time on `ours` and waits until each of `n` clients has the push.
/// Returns per change: ms until the last client had it, ms until the first had it, and the
/// server's own ms from the command to the published snapshot.
async fn changes(
    ours: &mut ServerChild,
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    cfg: &Config,
) -> (Vec<f64>, Vec<f64>, Vec<(f64, f64)>) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    while events.try_recv().is_ok() {}
    let (mut all, mut first, mut built) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..cfg.changes {
        if all.len() >= 5 && started.elapsed() > cfg.change_budget {
            break;
        }
        let t0 = Instant::now();
        ours.command("change");
        let mut got = vec![false; n];
        let mut firsts = None;
        let mut last = t0;
        while got.iter().any(|g| !g) {
            let ev = tokio::time::timeout(Duration::from_secs(300), events.recv())
                .await
                .expect("every client receives the change")
                .expect("event");
            assert_eq!(
                ev.type_url, SE_V1,
                "a change pushes the ServiceEntry kind only"
            );
            assert!(!got[ev.client], "one push per change per client");
            got[ev.client] = true;
            firsts.get_or_insert(ev.at);
            last = last.max(ev.at);
        }
        all.push(ms(last - t0));
        first.push(ms(firsts.unwrap() - t0));
        built.push(ours.published_ms());
        // Let the ACKs land before the next change.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (all, first, built)
}

/// A real-path row group: measures its rows into one cell.
type GroupRows = fn(Cell<'_>);

/// What a row group measures into: one column (size) of the table.
pub struct Cell<'a> {
    pub cfg: &'a Config,
    pub size: Size,
    pub col: usize,
    pub rt: &'a tokio::runtime::Runtime,
    pub t: &'a mut Table,
    pub progress: &'a mut dyn FnMut(&str),
}

/// Runs the benchmark. `launcher` gives a command that runs [`child_main`] in a new process (this
/// executable); `progress` receives one line per step.
pub fn run(cfg: &Config, launcher: &dyn Fn() -> Command, progress: &mut dyn FnMut(&str)) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut t = Table::new(cfg.sizes.len());
    let header = machine();
    for (col, &size) in cfg.sizes.iter().enumerate() {
        progress(&format!(
            "== {} services × {} endpoints",
            size.services, size.endpoints
        ));
        if cfg.applies("synthetic", size) {
            synthetic_rows(cfg, size, col, &rt, launcher, &mut t, progress);
        }
        let groups: [(&str, GroupRows); 6] = [
            ("file", rows_file::rows),
            ("file-json", rows_file::json_rows),
            ("api", rows_poller::api_rows),
            ("moto", rows_moto::rows),
            ("istiod", rows_istiod::rows),
            ("pacing", rows_istiod::pacing_rows),
        ];
        for (group, rows) in groups {
            if cfg.applies(group, size) {
                rows(Cell {
                    cfg,
                    size,
                    col,
                    rt: &rt,
                    t: &mut t,
                    progress: &mut *progress,
                });
            }
        }
    }
    // Print rows in a fixed order.
    let order = expected_labels(cfg);
    let Table {
        mut rows, notes, ..
    } = t;
    rows.sort_by_key(|r| {
        order
            .iter()
            .position(|o| *o == r.label)
            .unwrap_or(usize::MAX)
    });
    Report {
        machine: header,
        columns: cfg.sizes.iter().map(Size::label).collect(),
        rows,
        notes,
    }
}

/// Group `synthetic`: in-process translate/encode, then the three server children (`ours` fed by
/// the synthetic source, the transport floor, naive re-encode) with real tonic clients.
fn synthetic_rows(
    cfg: &Config,
    size: Size,
    col: usize,
    rt: &tokio::runtime::Runtime,
    launcher: &dyn Fn() -> Command,
    t: &mut Table,
    progress: &mut dyn FnMut(&str),
) {
    let mut set = |label: String, unit: Unit, col: usize, v: f64| t.set(label, unit, col, v);
    let tck = clock_ticks_per_second();

    // In-process: heap held by each stage (when the executable counts allocations).
    if let Some(live) = cfg.live_heap {
        let base = live();
        let model = Arc::new(synthetic_model(size));
        let m = live().wrapping_sub(base);
        let tr = translate::translate(&model, &translate::Options::default());
        let t = live().wrapping_sub(base).wrapping_sub(m);
        drop(tr);
        let mut cache = ResourceCache::new(translate::Options::default());
        let before = live();
        let (snap, _) = cache.build(&model);
        let c = live().wrapping_sub(before);
        progress(&format!(
            "  live heap: model {:.1} MB, one translation {:.1} MB, cache + snapshot after a full build {:.1} MB (encoded resources {:.1} MB)",
            mb(m as u64),
            mb(t as u64),
            mb(c as u64),
            mb(snap.service_entries.resources_len as u64)
        ));
    }

    // In-process: translate and encode.
    let (bytes_expected, resources_expected) = {
        let mut model = synthetic_model(size);
        let opts = translate::Options::default();
        let mut translate_ms = Vec::new();
        let mut full_ms = Vec::new();
        let mut one_ms = Vec::new();
        let mut expected = (0, 0);
        for rep in 0..cfg.encode_reps {
            let t = Instant::now();
            let tr = translate::translate(&model, &opts);
            translate_ms.push(ms(t.elapsed()));
            drop(tr);
            let mut cache = ResourceCache::new(opts.clone());
            let full = Arc::new(model.clone());
            let t = Instant::now();
            let (snap, encoded) = cache.build(&full);
            full_ms.push(ms(t.elapsed()));
            assert_eq!(encoded, size.services);
            if rep == 0 {
                expected = (
                    prebuilt_response(&snap).len(),
                    snap.service_entries.resources.len(),
                );
            }
            drop(snap);
            change_one_service(&mut model, 1_000_000 + rep);
            let changed = Arc::new(model.clone());
            let t = Instant::now();
            let (snap, encoded) = cache.build(&changed);
            one_ms.push(ms(t.elapsed()));
            assert_eq!(encoded, 1, "one changed service re-encodes one entry");
            drop(snap);
        }
        set(labels::BYTES.into(), Unit::Bytes, col, expected.0 as f64);
        set(
            labels::TRANSLATE.into(),
            Unit::Ms,
            col,
            median(&mut translate_ms),
        );
        set(
            labels::BUILD_FULL.into(),
            Unit::Ms,
            col,
            median(&mut full_ms),
        );
        set(labels::BUILD_ONE.into(), Unit::Ms, col, median(&mut one_ms));
        expected
    };
    assert_eq!(
        resources_expected, size.services,
        "every synthetic service becomes a ServiceEntry"
    );

    // Servers.
    let mut servers: Vec<ServerChild> = Kind::ALL
        .iter()
        .map(|k| ServerChild::start(*k, size, launcher))
        .collect();
    let (_, ours_start_rss) = memory_of(servers[2].pid());
    set(
        labels::RSS_OURS_START.into(),
        Unit::Mb,
        col,
        mb(ours_start_rss),
    );
    let max_clients = cfg
        .clients
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(cfg.change_clients);
    let chans: Vec<Vec<Channel>> = rt.block_on(async {
        let mut v = Vec::new();
        for s in &servers {
            v.push(connect(s.addr, max_clients).await);
        }
        v
    });

    // Full pushes, interleaved.
    let mut times: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let top = cfg.clients.iter().copied().max().unwrap_or(1);
    let mut push_rss = [0u64; 3];
    for rep in 0..cfg.reps {
        for &n in &cfg.clients {
            for (k, kind) in Kind::ALL.iter().enumerate() {
                let sampler = (n == top).then(|| RssSampler::start(servers[k].pid()));
                let (d, bytes, resources) = rt.block_on(full_push(&chans[k][..n]));
                if let Some(s) = sampler {
                    push_rss[k] = push_rss[k].max(s.finish());
                }
                assert_eq!(
                    resources, size.services,
                    "{kind:?}: every ServiceEntry in the push"
                );
                if *kind != Kind::Naive {
                    assert_eq!(
                        bytes, bytes_expected,
                        "{kind:?} sends the response `ours` encodes"
                    );
                }
                progress(&format!(
                    "  rep {rep} {n:>2} clients {:<5} {:>9.1} ms {bytes} B",
                    kind.as_str(),
                    ms(d)
                ));
                times.entry((n, k)).or_default().push(ms(d));
            }
        }
    }
    let hwm = |s: &ServerChild| mb(memory_of(s.pid()).0);
    progress(&format!(
        "  peak RSS after full pushes: ours {:.1} MB, floor {:.1} MB, naive {:.1} MB",
        hwm(&servers[2]),
        hwm(&servers[0]),
        hwm(&servers[1])
    ));
    for (k, label) in [
        (2, labels::PUSH_RSS_OURS),
        (0, labels::PUSH_RSS_FLOOR),
        (1, labels::PUSH_RSS_NAIVE),
    ] {
        set(labels::push_rss(top, label), Unit::Mb, col, mb(push_rss[k]));
    }
    for &n in &cfg.clients {
        let get = |k: usize, times: &mut BTreeMap<(usize, usize), Vec<f64>>| {
            median(times.get_mut(&(n, k)).unwrap())
        };
        let (floor, naive, ours) = (get(0, &mut times), get(1, &mut times), get(2, &mut times));
        set(labels::push(n, labels::OURS_MS), Unit::Ms, col, ours);
        set(labels::push(n, labels::FLOOR_MS), Unit::Ms, col, floor);
        set(labels::push(n, labels::NAIVE_MS), Unit::Ms, col, naive);
        set(
            labels::push(n, labels::VS_FLOOR),
            Unit::Ratio,
            col,
            ours / floor,
        );
        set(
            labels::push(n, labels::VS_NAIVE),
            Unit::Ratio,
            col,
            ours / naive,
        );
    }

    // Change → receipt: first with one istiod-like client on `ours`, then with `change_clients`;
    // then idle with those connected.
    let ours = &mut servers[2];
    let (mut one, _, mut built) = rt.block_on(async {
        let (mut events, tasks) = istiod_clients(&chans[2][..1]).await;
        let r = changes(ours, &mut events, 1, cfg).await;
        for t in tasks {
            t.abort();
        }
        r
    });
    progress(&format!(
        "  peak RSS after 1-client changes: ours {:.1} MB",
        mb(memory_of(ours.pid()).0)
    ));
    let n = cfg.change_clients;
    let (mut all, mut first, mut built_n, idle_pushes, idle_ticks) = rt.block_on(async {
        let (mut events, tasks) = istiod_clients(&chans[2][..n]).await;
        let (all, first, built) = changes(ours, &mut events, n, cfg).await;
        // Idle: clients connected and ACKed, nothing changes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while events.try_recv().is_ok() {}
        let c0 = cpu_ticks_of(ours.pid());
        tokio::time::sleep(cfg.idle).await;
        let c1 = cpu_ticks_of(ours.pid());
        let mut pushes = 0;
        while events.try_recv().is_ok() {
            pushes += 1;
        }
        for t in tasks {
            t.abort();
        }
        (all, first, built, pushes, c1 - c0)
    });
    built.append(&mut built_n);
    let (mut built, mut cloned): (Vec<f64>, Vec<f64>) = built.into_iter().unzip();
    progress(&format!(
        "  peak RSS after changes: ours {:.1} MB",
        mb(memory_of(servers[2].pid()).0)
    ));
    set(
        labels::CHANGE_BUILT.into(),
        Unit::Ms,
        col,
        percentile(&mut built, 50.0),
    );
    set(
        labels::CHANGE_CLONE.into(),
        Unit::Ms,
        col,
        percentile(&mut cloned, 50.0),
    );
    set(
        labels::change_one("p50"),
        Unit::Ms,
        col,
        percentile(&mut one, 50.0),
    );
    set(
        labels::change_one("p99"),
        Unit::Ms,
        col,
        percentile(&mut one, 99.0),
    );
    let changes = all.len();
    set(
        labels::change_all(n, "p50"),
        Unit::Ms,
        col,
        percentile(&mut all, 50.0),
    );
    set(
        labels::change_all(n, "p99"),
        Unit::Ms,
        col,
        percentile(&mut all, 99.0),
    );
    set(
        labels::change_first(n),
        Unit::Ms,
        col,
        percentile(&mut first, 50.0),
    );
    for (clients, p50) in [
        (1, percentile(&mut one, 50.0)),
        (n, percentile(&mut all, 50.0)),
    ] {
        if let Some(floor) = times.get_mut(&(clients, 0)).map(|t| median(t)) {
            set(
                labels::change_vs_floor(clients),
                Unit::Ratio,
                col,
                p50 / floor,
            );
        }
    }
    set(labels::CHANGES.into(), Unit::Count, col, changes as f64);
    set(
        labels::idle_cpu(n),
        Unit::Percent,
        col,
        idle_ticks as f64 / tck / cfg.idle.as_secs_f64() * 100.0,
    );
    set(
        labels::IDLE_PUSHES.into(),
        Unit::Count,
        col,
        idle_pushes as f64,
    );
    set(
        labels::RSS_OURS.into(),
        Unit::Mb,
        col,
        mb(memory_of(servers[2].pid()).0),
    );
    drop(chans);
    drop(servers);
}

/// Every row label a report for `cfg` has.
pub fn expected_labels(cfg: &Config) -> Vec<String> {
    let any = |g: &str| cfg.sizes.iter().any(|s| cfg.applies(g, *s));
    let mut v = Vec::new();
    if any("synthetic") {
        v = synthetic_labels(cfg);
    }
    if any("file") {
        v.extend(rows_file::labels(rows_file::Format::Yaml, cfg));
    }
    if any("file-json") {
        v.extend(rows_file::labels(rows_file::Format::Json, cfg));
    }
    if any("api") {
        v.extend(rows_poller::labels("api", cfg));
    }
    if any("moto") && rows_moto::find().is_ok() {
        v.extend(rows_moto::labels(cfg));
    }
    if any("istiod") && rows_istiod::find().is_ok() {
        v.extend(rows_istiod::labels(cfg));
    }
    if any("pacing") && rows_istiod::find().is_ok() {
        v.extend(rows_istiod::pacing_labels(cfg));
    }
    v
}

fn synthetic_labels(cfg: &Config) -> Vec<String> {
    let mut v: Vec<String> = vec![
        labels::BYTES.into(),
        labels::TRANSLATE.into(),
        labels::BUILD_FULL.into(),
        labels::BUILD_ONE.into(),
    ];
    for &n in &cfg.clients {
        for w in [
            labels::OURS_MS,
            labels::FLOOR_MS,
            labels::NAIVE_MS,
            labels::VS_FLOOR,
            labels::VS_NAIVE,
        ] {
            v.push(labels::push(n, w));
        }
    }
    let n = cfg.change_clients;
    let top = cfg.clients.iter().copied().max().unwrap_or(1);
    v.extend([
        labels::CHANGE_BUILT.into(),
        labels::CHANGE_CLONE.into(),
        labels::change_one("p50"),
        labels::change_one("p99"),
        labels::change_all(n, "p50"),
        labels::change_all(n, "p99"),
        labels::change_first(n),
    ]);
    for clients in [1, n] {
        if cfg.clients.contains(&clients) && !v.contains(&labels::change_vs_floor(clients)) {
            v.push(labels::change_vs_floor(clients));
        }
    }
    v.extend([
        labels::CHANGES.into(),
        labels::RSS_OURS_START.into(),
        labels::push_rss(top, labels::PUSH_RSS_OURS),
        labels::push_rss(top, labels::PUSH_RSS_FLOOR),
        labels::push_rss(top, labels::PUSH_RSS_NAIVE),
        labels::RSS_OURS.into(),
        labels::idle_cpu(n),
        labels::IDLE_PUSHES.into(),
    ]);
    v
}
