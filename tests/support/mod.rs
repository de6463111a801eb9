//! Shared helpers for integration tests: run the real binary, talk ADS like istiod, fetch admin pages.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudmap_mcp::proto::envoy::config::core::v3::Node;
use cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use cloudmap_mcp::proto::istio::mcp::v1alpha1 as mcp;
use cloudmap_mcp::proto::istio::networking::v1alpha3 as net;
use cloudmap_mcp::proto::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The 15 kinds istiod 1.30+ asks for.
pub const ISTIOD_130_KINDS: &[&str] = &[
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

/// The 14 kinds istiod 1.13-1.23 asks for.
pub const ISTIOD_123_KINDS: &[&str] = &[
    "security.istio.io/v1beta1/AuthorizationPolicy",
    "networking.istio.io/v1alpha3/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1alpha3/Gateway",
    "security.istio.io/v1beta1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1beta1/RequestAuthentication",
    "networking.istio.io/v1alpha3/ServiceEntry",
    "networking.istio.io/v1alpha3/Sidecar",
    "telemetry.istio.io/v1alpha1/Telemetry",
    "networking.istio.io/v1alpha3/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1alpha3/WorkloadEntry",
    "networking.istio.io/v1alpha3/WorkloadGroup",
];

pub const MESH_CONFIG: &str = "core/v1alpha1/MeshConfig";

/// A running `cloudmap-mcp serve` process. Killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// With `--debug-addr`: where the debug views are served.
    pub debug: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the binary with `args` after `serve`, on loopback port 0, and waits for its "listening" log.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::start_limited(args, env, None)
    }

    /// Like [`Self::start_env`], with the open-file limit (soft and hard) set to `open_files`.
    pub fn start_limited(args: &[&str], env: &[(&str, &str)], open_files: Option<u64>) -> ServerProcess {
        Self::start_with(args, env, open_files, "json")
    }

    /// Like [`Self::start_env`], logging in the text format (`--log-format text`).
    pub fn start_text_logs(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with(args, env, None, "text")
    }

    fn start_with(args: &[&str], env: &[(&str, &str)], open_files: Option<u64>, log_format: &str) -> ServerProcess {
        // CLOUDMAP_MCP_BIN: another build of the server (e.g. release, for measured runs).
        let bin = std::env::var_os("CLOUDMAP_MCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cloudmap-mcp").into());
        let mut cmd = Command::new(bin);
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            let rl = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
            // SAFETY: setrlimit is async-signal-safe and touches only this (forked) process.
            unsafe {
                cmd.pre_exec(move || if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
            }
        }
        cmd.args(["--log-format", log_format, "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info,cloudmap_mcp=debug")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            // An empty value removes the variable (e.g. RUST_LOG: the binary's default filter).
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("start cloudmap-mcp");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("\"listening\"") || line.contains(" listening grpc_addr=") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; logs:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        let field = |name: &str| -> Option<String> {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => v[name].as_str().map(str::to_owned),
                // Text format: `... listening grpc_addr=127.0.0.1:1 admin_addr=127.0.0.1:2 debug_views=...`
                Err(_) => line.split(' ').find_map(|w| w.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned),
            }
        };
        let grpc = field("grpc_addr").unwrap().parse().unwrap();
        let admin = field("admin_addr").unwrap().parse().unwrap();
        let debug = field("debug_views").and_then(|a| a.parse().ok());
        ServerProcess { child, grpc, admin, debug, logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A `/proc/PID/status` figure in KiB, e.g. `VmRSS` or `VmHWM`.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (VmRSS, VmHWM) of a process, in KiB, from /proc.
pub fn proc_mem(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// GET over plain HTTP/1.0; returns (status, body).
/// Runs `serve` with `args` (loopback, port 0) until it exits, which it must within `limit`;
/// returns its exit code, how long it ran and its stderr. `CLOUDMAP_MCP_BIN` as for
/// [`ServerProcess`] (another build, e.g. the old code, to see a test fail there).
pub fn serve_to_exit(args: &[&str], limit: Duration) -> (Option<i32>, Duration, String) {
    let bin = std::env::var_os("CLOUDMAP_MCP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cloudmap-mcp").into());
    let mut child = Command::new(bin)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    let mut err = String::new();
    child.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), took, err)
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_within(addr, path, Duration::from_secs(10))
}

/// [`http_get`] with a read timeout.
pub fn http_get_within(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// istiod's node for config-source streams.
pub fn istiod_node() -> Node {
    use prost_types::{value::Kind, Struct, Value};
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    Node {
        id: "sidecar~10.244.0.7~istiod-6d4d7c9b8-xk2p9.istio-system~istio-system.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: BTreeMap::from([("GENERATOR".into(), s("api")), ("ISTIO_VERSION".into(), s("65536.65536.65536"))]),
        }),
        ..Default::default()
    }
}

/// A timestamp-looking nonce, as istiod puts on its initial requests.
pub fn timestamp_nonce() -> String {
    format!("{:?}", std::time::SystemTime::now())
}

/// One ADS stream, driven like istiod drives it.
pub struct AdsStream {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: tonic::Streaming<DiscoveryResponse>,
}

impl AdsStream {
    pub async fn connect(url: &str) -> AdsStream {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.expect("connect ADS");
        Self::open(channel).await
    }

    /// Opens a stream on an existing channel (e.g. one configured for TLS).
    pub async fn open(channel: tonic::transport::Channel) -> AdsStream {
        let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel(64);
        let resp = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.expect("open stream");
        AdsStream { tx, rx: resp.into_inner() }
    }

    pub async fn send(&self, type_url: &str, nonce: &str, version: &str) {
        assert!(self.try_send(type_url, nonce, version).await, "send request: the request stream is closed");
    }

    /// Sends a request; false when the request stream is already closed (the server ended the stream).
    pub async fn try_send(&self, type_url: &str, nonce: &str, version: &str) -> bool {
        let r = DiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            node: Some(istiod_node()),
            ..Default::default()
        };
        self.tx.send(r).await.is_ok()
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(m)) => m,
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Err(_) => None,
        }
    }

    /// Plays istiod's opening: MeshConfig first, then every kind with a timestamp nonce; returns the
    /// responses by type URL and ACKs each one.
    pub async fn istiod_handshake(&mut self, kinds: &[&str]) -> BTreeMap<String, DiscoveryResponse> {
        self.send(MESH_CONFIG, &timestamp_nonce(), "").await;
        for k in kinds {
            self.send(k, &timestamp_nonce(), "").await;
        }
        let mut got = BTreeMap::new();
        while got.len() < kinds.len() + 1 {
            let r = self.recv(Duration::from_secs(10)).await.unwrap_or_else(|| {
                panic!("only {} of {} kinds answered: {:?}", got.len(), kinds.len() + 1, got.keys().collect::<Vec<_>>())
            });
            self.ack(&r).await;
            assert!(got.insert(r.type_url.clone(), r).is_none(), "a kind was answered twice");
        }
        got
    }

    pub async fn ack(&self, r: &DiscoveryResponse) {
        self.send(&r.type_url, &r.nonce, &r.version_info).await;
    }
}

/// Decodes the ServiceEntries of a response: (resource name, metadata, spec), sorted by name.
pub fn service_entries(r: &DiscoveryResponse) -> Vec<(String, mcp::Metadata, net::ServiceEntry)> {
    r.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, "type.googleapis.com/istio.mcp.v1alpha1.Resource");
            let res = mcp::Resource::decode(any.value.as_slice()).expect("MCP resource");
            let body = res.body.expect("body");
            assert_eq!(body.type_url, "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry");
            let md = res.metadata.expect("metadata");
            (md.name.clone(), md, net::ServiceEntry::decode(body.value.as_slice()).expect("ServiceEntry"))
        })
        .collect()
}

/// Writes `text` to `path` atomically (write + rename), as editors and ConfigMap updates do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn example_registry() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap()
}

pub trait UnwrapErrOrLogs<T> {
    fn unwrap_err_or_logs(self, server: &ServerProcess) -> tonic::Status;
}

impl<T: std::fmt::Debug> UnwrapErrOrLogs<T> for Result<T, tonic::Status> {
    fn unwrap_err_or_logs(self, server: &ServerProcess) -> tonic::Status {
        match self {
            Err(s) => s,
            Ok(v) => panic!("expected an error status, got {v:?}; server logs:\n{}", server.logs()),
        }
    }
}

/// The grpcurl binary: $GRPCURL, else `.venv/bin/grpcurl`, else PATH. When none works, fails if
/// CLOUDMAP_MCP_REQUIRE_TOOLS=1 (as in CI), else prints a skip message and returns None.
pub fn grpcurl_bin() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let candidates = [
        std::env::var_os("GRPCURL").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl")),
        Some(PathBuf::from("grpcurl")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| Command::new(p).arg("-version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(
            std::env::var("CLOUDMAP_MCP_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "grpcurl not found (set GRPCURL or run scripts/test-all.sh, which installs it into .venv)"
        );
        eprintln!("SKIPPED: grpcurl not found; set GRPCURL or CLOUDMAP_MCP_REQUIRE_TOOLS=1");
    }
    found
}
