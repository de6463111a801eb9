//! What the real-path row groups share: the real `cloudmap-mcp serve` binary as a child process
//! (its logs, with their own timestamps), an istiod-like ADS client that reports every ServiceEntry
//! response, and the /proc readings (RSS, peak, CPU ticks).
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cloudmap_mcp::proto::DiscoveryResponse;
use tokio::sync::mpsc;

use super::{open, request, timestamp_nonce, ISTIOD_130_KINDS, MESH_CONFIG, SE_V1};

/// The server binary `cargo bench` / `cargo test` built with this target.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloudmap-mcp")
}

/// One log line of the server, with the time it carries (its `timestamp` field).
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: SystemTime,
    pub text: String,
}

/// `cloudmap-mcp serve` as a child process, JSON logs captured. Killed on drop.
pub struct Serve {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<LogLine>>>,
}

fn log_time(line: &str) -> Option<SystemTime> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ts = v.get("timestamp")?.as_str()?;
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

impl Serve {
    /// Starts `serve` on loopback port 0 with `args` after it, and waits for its "listening" line
    /// (the registry file is loaded before that; Cloud Map syncs after it).
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "--log-format",
            "json",
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start cloudmap-mcp serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if text.contains("\"listening\"") {
                        let _ = tx.send(text.clone());
                    }
                    let at = log_time(&text).unwrap_or_else(SystemTime::now);
                    logs.lock().unwrap().push(LogLine { at, text });
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail: Vec<String> = logs
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(30)
                    .map(|l| l.text.clone())
                    .collect();
                panic!(
                    "cloudmap-mcp serve did not start; last logs:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let grpc = v["grpc_addr"].as_str().unwrap().parse().unwrap();
        let admin = v["admin_addr"].as_str().unwrap().parse().unwrap();
        Serve {
            child,
            grpc,
            admin,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of log lines so far (a position for [`Serve::find_log`]).
    pub fn log_mark(&self) -> usize {
        self.logs.lock().unwrap().len()
    }

    /// The first log line after `mark` containing every needle, waiting up to `timeout`.
    pub fn find_log(&self, mark: usize, needles: &[&str], timeout: Duration) -> Option<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .skip(mark)
                .find(|l| needles.iter().all(|n| l.text.contains(n)))
            {
                return Some(l.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap();
        let skip = logs.len().saturating_sub(n);
        logs.iter()
            .skip(skip)
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// GET on the admin port (HTTP/1.0); the body.
    pub fn admin_get(&self, path: &str) -> String {
        http_get(self.admin, path)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over plain HTTP/1.0; the body ("" on failure).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A sample of a Prometheus text exposition: the value of the first line starting with `name`
/// (name plus labels, e.g. `cloudmap_mcp_xds_responses_total{type_url="..."}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A ServiceEntry response as an istiod-like client received it.
pub struct SeResponse {
    pub at: Instant,
    pub wall: SystemTime,
    pub resp: DiscoveryResponse,
}

impl SeResponse {
    /// Whether any resource's bytes contain `needle` (a changed endpoint address).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.resp.resources.iter().any(|r| find(&r.value, needle))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|b| *b == first) {
        let at = i + p;
        if hay[at + 1..].starts_with(rest) {
            return true;
        }
        i = at + 1;
    }
    false
}

/// One ADS client that opens like istiod (MeshConfig and the 15 kinds, timestamp nonces), ACKs
/// every response and hands over every ServiceEntry response. Aborted on drop.
pub struct AdsWatcher {
    pub rx: mpsc::UnboundedReceiver<SeResponse>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsWatcher {
    /// Connects and waits for the first ServiceEntry response (returned).
    pub async fn connect(addr: SocketAddr, first_timeout: Duration) -> (AdsWatcher, SeResponse) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect ADS");
        let mut s = open(&ch).await;
        s.tx.send(request(MESH_CONFIG, &timestamp_nonce(), ""))
            .await
            .unwrap();
        for k in ISTIOD_130_KINDS {
            s.tx.send(request(k, &timestamp_nonce(), "")).await.unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _ch = ch;
            while let Ok(Some(r)) = s.rx.message().await {
                let (at, wall) = (Instant::now(), SystemTime::now());
                let ack = request(&r.type_url, &r.nonce, &r.version_info);
                if s.tx.send(ack).await.is_err() {
                    break;
                }
                if r.type_url == SE_V1 && tx.send(SeResponse { at, wall, resp: r }).is_err() {
                    break;
                }
            }
        });
        let first = tokio::time::timeout(first_timeout, rx.recv())
            .await
            .expect("the first ServiceEntry response in time")
            .expect("the client is running");
        (AdsWatcher { rx, task }, first)
    }

    /// Waits for the first ServiceEntry response containing `needle`; responses without it are
    /// counted in the second value.
    pub async fn wait_for(
        &mut self,
        needle: &[u8],
        timeout: Duration,
    ) -> Option<(SeResponse, usize)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut other = 0;
        loop {
            let r = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if r.contains(needle) {
                return Some((r, other));
            }
            other += 1;
        }
    }

    /// Responses received so far and not yet looked at (dropped).
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }
}

impl Drop for AdsWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// CPU use of a process over `window`, in % of one core.
pub fn cpu_percent_over(pid: u32, window: Duration, ticks_per_second: f64) -> f64 {
    let c0 = super::cpu_ticks_of(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let c1 = super::cpu_ticks_of(pid);
    (c1 - c0) as f64 / ticks_per_second / t0.elapsed().as_secs_f64() * 100.0
}

/// Milliseconds from `a` to `b` (wall clock; 0 when `b` is earlier).
pub fn wall_ms(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The checkpoints of the "after N edits" rows: 1, 10 and 50, those within `edits`, and `edits`.
pub fn checkpoints(edits: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 10, 50].into_iter().filter(|n| *n <= edits).collect();
    if edits > 0 && !v.contains(&edits) {
        v.push(edits);
    }
    v
}

/// The address change number `seq` gives an endpoint: unique per change, never in the synthetic data.
pub fn changed_ip(seq: usize) -> String {
    format!(
        "172.{}.{}.{}",
        16 + ((seq >> 16) & 15),
        (seq >> 8) & 255,
        seq & 255
    )
}

/// What to look for in a response's bytes to find `ip` as a whole protobuf string field (its
/// length prefix first, so 172.16.0.1 does not match 172.16.0.10).
pub fn ip_needle(ip: &str) -> Vec<u8> {
    let mut v = vec![ip.len() as u8];
    v.extend_from_slice(ip.as_bytes());
    v
}

/// The tool a group needs, or None after noting (in the report and the progress) why the group's
/// rows are skipped.
pub fn tool_or_skip<T>(
    found: Result<T, String>,
    group: &str,
    t: &mut super::Table,
    progress: &mut dyn FnMut(&str),
) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            t.note(format!("{group} rows skipped: {why}"));
            progress(&format!("  {group}: skipped: {why}"));
            None
        }
    }
}

/// Records a process's RSS after a settle second as the row `label`, and reports it with its peak.
pub fn rss_checkpoint(
    pid: u32,
    t: &mut super::Table,
    label: String,
    col: usize,
    progress: &mut dyn FnMut(&str),
) {
    std::thread::sleep(Duration::from_millis(1000));
    let (peak, rss) = super::memory_of(pid);
    progress(&format!(
        "  {label}: {:.1} (peak so far {:.1} MB)",
        super::mb(rss),
        super::mb(peak)
    ));
    t.set(label, super::Unit::Mb, col, super::mb(rss));
}
