//! Row groups `istiod` and `pacing`: a real istiod (pilot-discovery, as the conformance harness
//! builds and runs it: no Kubernetes, a mesh config whose `configSources` lists only our server) as
//! a client of the real `serve` binary. Skipped with a note when the binary is absent.
//!
//! - `istiod`: serve + registry file; istiod's sync time, then edits one at a time: rename → istiod
//!   logged the ServiceEntry response, istiod's CPU per push and its heap/RSS growth per push (its
//!   config-source client keeps every response: see docs/operations.md).
//! - `pacing`: serve + the poller against the in-process Cloud Map API, with service changes at a
//!   fixed rate over a hot set; pushes istiod received per second and istiod's CPU, with push pacing
//!   at its default and off (`--min-push-interval 0`).
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cloudmap_api::CloudMapApi;
use super::realpath::{self, AdsWatcher, Serve};
use super::rows_file::EditableFile;
use super::{
    clock_ticks_per_second, cpu_ticks_of, mb, memory_of, ms, percentile, Cell, Config, Unit,
};

/// The istiod release the rows run (its adsc keeps responses like 1.22 does).
pub const VERSION: &str = "1.31";
const SE_RECEIVED: &str = "type=networking.istio.io/v1/ServiceEntry";

/// pilot-discovery: $CLOUDMAP_MCP_ISTIOD_BIN, else `$CLOUDMAP_MCP_ISTIOD_CACHE/<VERSION>/pilot-discovery`
/// (default cache `target/istiod`, where scripts/istiod-harness.sh builds it).
pub fn find() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CLOUDMAP_MCP_ISTIOD_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "CLOUDMAP_MCP_ISTIOD_BIN={} does not exist",
                p.display()
            ))
        };
    }
    let cache = std::env::var_os("CLOUDMAP_MCP_ISTIOD_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/istiod"));
    let bin = cache.join(VERSION).join("pilot-discovery");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "istiod {VERSION} not found at {} (build it with `scripts/istiod-harness.sh --build-only`, or set \
             CLOUDMAP_MCP_ISTIOD_CACHE or CLOUDMAP_MCP_ISTIOD_BIN)",
            bin.display()
        ))
    }
}

/// A running istiod. Killed on drop.
pub struct Istiod {
    child: Child,
    pub monitoring: SocketAddr,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Istiod {
    pub fn start(bin: &PathBuf, xds: SocketAddr) -> Istiod {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(&mesh, format!("configSources:\n- address: xds://{xds}\n")).unwrap();
        let networks = dir.path().join("meshNetworks.yaml");
        std::fs::write(&networks, "networks: {}\n").unwrap();
        let port = |_: &str| format!("127.0.0.1:{}", free_port());
        let monitoring = port("monitoring");
        let mut child = Command::new(bin)
            .current_dir(dir.path())
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "istiod-bench-0")
            .env("ENABLE_CA_SERVER", "false")
            .env("PILOT_ENABLE_ANALYSIS", "false")
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .env("ISTIOD_CONFORMANCE_FAKE_KUBE", "1")
            .args([
                "discovery".to_string(),
                "--registries=".into(),
                format!("--meshConfig={}", mesh.display()),
                format!("--networksConfig={}", networks.display()),
                "--secureGRPCAddr=".into(),
                format!("--grpcAddr={}", port("grpc")),
                format!("--httpAddr={}", port("http")),
                format!("--httpsAddr={}", port("https")),
                format!("--monitoringAddr={monitoring}"),
                "--ctrlz_address=127.0.0.1".into(),
                format!("--ctrlz_port={}", free_port()),
                "--domain=cluster.local".into(),
                "--shutdownDuration=1s".into(),
                "--log_output_level=default:info,adsc:info".into(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push((Instant::now(), l));
                }
            });
        }
        Istiod {
            child,
            monitoring: monitoring.parse().unwrap(),
            lines,
            started: Instant::now(),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Lines after `mark` containing `needle`, with the time each was read.
    pub fn lines_with(&self, mark: usize, needle: &str) -> Vec<(Instant, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .skip(mark)
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The first line after `mark` containing every needle, waiting up to `timeout`.
    pub fn wait_line(
        &self,
        mark: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(mark)
                .find(|(_, l)| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l.clone());
            }
            if Instant::now() > deadline || matches!(self.child_exited(), Some(true)) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn child_exited(&self) -> Option<bool> {
        let status = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        Some(
            status
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        )
    }

    pub fn tail(&self, n: usize) -> String {
        let l = self.lines.lock().unwrap();
        l.iter()
            .skip(l.len().saturating_sub(n))
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `go_memstats_heap_inuse_bytes` from istiod's monitoring port (NaN if absent).
    pub fn heap_inuse(&self) -> f64 {
        realpath::metric(
            &realpath::http_get(self.monitoring, "/metrics"),
            "go_memstats_heap_inuse_bytes",
        )
        .unwrap_or(f64::NAN)
    }

    /// Waits for istiod's sync line and its first ServiceEntry response with `services` resources;
    /// returns the seconds from start to the sync line.
    pub fn wait_synced(&self, services: usize, timeout: Duration) -> f64 {
        let Some((at, _)) =
            self.wait_line(0, &["All controller caches have been synced up"], timeout)
        else {
            panic!("istiod did not sync; its log:\n{}", self.tail(40));
        };
        let count = format!("count={services}");
        if self
            .wait_line(0, &["Received", SE_RECEIVED, &count], timeout)
            .is_none()
        {
            panic!(
                "istiod never logged the {services} ServiceEntries; its log:\n{}",
                self.tail(40)
            );
        }
        (at - self.started).as_secs_f64()
    }

    /// CPU ticks from `c0` until istiod has been quiet (no new tick) for `quiet`, at most `max`.
    pub fn cpu_until_quiet(&self, c0: u64, quiet: Duration, max: Duration) -> u64 {
        let deadline = Instant::now() + max;
        let mut last = cpu_ticks_of(self.pid());
        loop {
            std::thread::sleep(quiet);
            let now = cpu_ticks_of(self.pid());
            if now <= last + 1 || Instant::now() > deadline {
                return now - c0;
            }
            last = now;
        }
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sync_s() -> String {
    "istiod: start → synced with every ServiceEntry (its log, s)".into()
}
pub fn to_istiod(p: &str) -> String {
    format!("istiod: rename → istiod logged the push {p} (ms)")
}
pub fn cpu_per_push() -> String {
    "istiod: CPU per push (ms of CPU)".into()
}
pub fn heap_per_push() -> String {
    "istiod: heap in use growth per push (go_memstats_heap_inuse_bytes, MB)".into()
}
pub fn rss_per_push() -> String {
    "istiod: RSS growth per push (MB)".into()
}
pub fn rss_synced() -> String {
    "istiod: RSS when synced (MB)".into()
}
pub fn rss_end() -> String {
    "istiod: RSS after the pushes (MB)".into()
}
pub fn pushes() -> String {
    "istiod: pushes measured".into()
}

pub fn labels(_cfg: &Config) -> Vec<String> {
    vec![
        sync_s(),
        rss_synced(),
        to_istiod("p50"),
        to_istiod("p99"),
        cpu_per_push(),
        heap_per_push(),
        rss_per_push(),
        rss_end(),
        pushes(),
    ]
}

/// Group `istiod`.
pub fn rows(cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let Some(bin) = realpath::tool_or_skip(find(), "istiod", t, progress) else {
        return;
    };
    t.note(format!(
        "istiod rows: pilot-discovery {VERSION} ({})",
        bin.display()
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut file = EditableFile::create(dir.path(), size, super::rows_file::Format::Yaml);
    let server = Serve::start(
        &["--registry-file".into(), file.path.display().to_string()],
        &[],
    );
    let istiod = Istiod::start(&bin, server.grpc);
    let sync = istiod.wait_synced(size.services, Duration::from_secs(900));
    t.set(sync_s(), Unit::Secs, col, sync);
    std::thread::sleep(Duration::from_secs(2));
    let tck = clock_ticks_per_second();
    let (rss0, heap0) = (memory_of(istiod.pid()).1, istiod.heap_inuse());
    t.set(rss_synced(), Unit::Mb, col, mb(rss0));
    progress(&format!(
        "  istiod: synced in {sync:.1} s; RSS {:.0} MB, heap in use {:.0} MB",
        mb(rss0),
        heap0 / 1048576.0
    ));
    let (mut lat, mut cpu) = (Vec::new(), Vec::new());
    for seq in 1..=cfg.istiod_pushes {
        let mark = istiod.mark();
        let c0 = cpu_ticks_of(istiod.pid());
        file.edit(1_000_000 + seq);
        let t0 = Instant::now();
        let Some((at, _)) =
            istiod.wait_line(mark, &["Received", SE_RECEIVED], Duration::from_secs(300))
        else {
            panic!(
                "istiod did not receive edit {seq}; its log:\n{}",
                istiod.tail(30)
            );
        };
        lat.push(ms(at - t0));
        let ticks =
            istiod.cpu_until_quiet(c0, Duration::from_millis(700), Duration::from_secs(120));
        cpu.push(ticks as f64 / tck * 1000.0);
    }
    let _ = rt;
    std::thread::sleep(Duration::from_secs(1));
    let (rss1, heap1) = (memory_of(istiod.pid()).1, istiod.heap_inuse());
    let n = cfg.istiod_pushes as f64;
    t.set(to_istiod("p50"), Unit::Ms, col, percentile(&mut lat, 50.0));
    t.set(to_istiod("p99"), Unit::Ms, col, percentile(&mut lat, 99.0));
    t.set(cpu_per_push(), Unit::Ms, col, percentile(&mut cpu, 50.0));
    t.set(
        heap_per_push(),
        Unit::Mb,
        col,
        (heap1 - heap0) / 1048576.0 / n,
    );
    t.set(rss_per_push(), Unit::Mb, col, (mb(rss1) - mb(rss0)) / n);
    t.set(rss_end(), Unit::Mb, col, mb(rss1));
    t.set(pushes(), Unit::Count, col, n);
    progress(&format!(
        "  istiod: {n} pushes: CPU p50 {:.0} ms each, heap {:.1} MB/push, RSS {:.0} → {:.0} MB",
        t.get(&cpu_per_push(), col),
        t.get(&heap_per_push(), col),
        mb(rss0),
        mb(rss1)
    ));
}

// ---------------------------------------------------------------------------------------------
// Push pacing

/// Whether the server has `--min-push-interval` (push pacing).
pub fn server_has_pacing() -> bool {
    Command::new(realpath::server_bin())
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--min-push-interval"))
        .unwrap_or(false)
}

pub fn pacing_modes() -> [(&'static str, &'static [&'static str]); 2] {
    [
        ("pacing on (default)", &[]),
        (
            "pacing off (--min-push-interval 0)",
            &["--min-push-interval", "0"],
        ),
    ]
}

pub fn istiod_pushes_per_s(mode: &str) -> String {
    format!("{mode}: pushes per istiod per second under churn (target ≤ 1.2)")
}
pub fn client_pushes_per_s(mode: &str) -> String {
    format!("{mode}: pushes per ADS client per second under churn")
}
pub fn istiod_cpu(mode: &str) -> String {
    format!("{mode}: istiod CPU under churn (% of a core)")
}
pub fn isolated(mode: &str) -> String {
    format!("{mode}: isolated change, poller saw it → client p50 (ms, target ≤ 50)")
}
pub fn isolated_alone(mode: &str) -> String {
    format!("{mode}: isolated change before istiod connects, poller saw it → client p50 (ms, target ≤ 50)")
}
pub fn isolated_published(mode: &str) -> String {
    format!("{mode}: of which poller saw it → new snapshot published (server log) p50 (ms)")
}
pub fn isolated_handed(mode: &str) -> String {
    format!("{mode}: of which poller saw it → new state handed to the client's stream (server log) p50 (ms)")
}
pub fn churn_rate(mode: &str) -> String {
    format!("{mode}: service changes per second applied")
}

pub fn pacing_labels(_cfg: &Config) -> Vec<String> {
    let has = server_has_pacing();
    pacing_modes()
        .iter()
        .filter(|(_, flags)| has || flags.is_empty())
        .flat_map(|(m, _)| {
            [
                churn_rate(m),
                istiod_pushes_per_s(m),
                client_pushes_per_s(m),
                istiod_cpu(m),
                isolated_alone(m),
                isolated_published(m),
                isolated_handed(m),
                isolated(m),
            ]
        })
        .collect()
}

/// Group `pacing`.
pub fn pacing_rows(cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let Some(bin) = realpath::tool_or_skip(find(), "pacing", t, progress) else {
        return;
    };
    let has = server_has_pacing();
    if !has {
        t.note("pacing: this server has no --min-push-interval; only the current behaviour is measured (row 'pacing on (default)' = no pacing)");
    }
    let hot = 500.min(size.services);
    t.note(format!(
        "pacing: serve --cloudmap against the in-process API (--aws-api-rate {}), {} changes/s round-robin over {hot} services for {:?}",
        super::rows_poller::API_RATE,
        cfg.churn_rate,
        cfg.churn
    ));
    for (mode, flags) in pacing_modes() {
        if !has && !flags.is_empty() {
            continue;
        }
        let mut api = rt.block_on(CloudMapApi::start(size));
        let mut args: Vec<String> = [
            "--cloudmap",
            "--aws-endpoint-url",
            &api.endpoint(),
            "--aws-region",
            "us-east-1",
            "--aws-api-rate",
            super::rows_poller::API_RATE,
            "--aws-api-burst",
            super::rows_poller::API_BURST,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend(cfg.poller_args.iter().cloned());
        let env = [
            ("AWS_ACCESS_KEY_ID", "bench"),
            ("AWS_SECRET_ACCESS_KEY", "bench"),
            ("AWS_REGION", "us-east-1"),
            // "response sent" (debug): when a new state is handed to a client's stream.
            ("RUST_LOG", "info,cloudmap_mcp::xds::service=debug"),
        ];
        let server = Serve::start(&args, &env);
        let (mut client, _) =
            rt.block_on(AdsWatcher::connect(server.grpc, Duration::from_secs(1800)));
        progress(&format!("  {mode}: client synced; warming {hot} services"));
        // Warm-up: every hot service changes once (then it is polled at the base interval).
        let mut seq = 2_000_000;
        let mut last = None;
        for i in 0..hot {
            seq += 1;
            let ip = realpath::changed_ip(seq);
            api.set_ip(i * size.services / hot, &ip);
            last = Some(ip);
        }
        rt.block_on(client.wait_for(
            &realpath::ip_needle(&last.unwrap()),
            Duration::from_secs(300),
        ))
        .expect("warm-up reaches the client");
        // Isolated changes with only the benchmark's client connected: the server's own part.
        std::thread::sleep(cfg.quiet * 3);
        client.drain();
        let (mut iso, mut published, mut handed) = isolated_changes(
            cfg,
            rt,
            &mut api,
            &server,
            &mut client,
            hot,
            size,
            &mut seq,
            mode,
        );
        t.set(
            isolated_alone(mode),
            Unit::Ms,
            col,
            percentile(&mut iso, 50.0),
        );
        t.set(
            isolated_published(mode),
            Unit::Ms,
            col,
            percentile(&mut published, 50.0),
        );
        t.set(
            isolated_handed(mode),
            Unit::Ms,
            col,
            percentile(&mut handed, 50.0),
        );
        let istiod = Istiod::start(&bin, server.grpc);
        istiod.wait_synced(size.services, Duration::from_secs(900));
        progress(&format!("  {mode}: istiod synced"));
        std::thread::sleep(Duration::from_secs(2));
        client.drain();
        // Churn.
        let mark = istiod.mark();
        let c0 = cpu_ticks_of(istiod.pid());
        let t0 = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / cfg.churn_rate);
        let mut n = 0usize;
        while t0.elapsed() < cfg.churn {
            let due = t0 + gap.mul_f64(n as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            seq += 1;
            api.set_ip((n % hot) * size.services / hot, &realpath::changed_ip(seq));
            n += 1;
        }
        let window = t0.elapsed();
        let cpu_ticks = cpu_ticks_of(istiod.pid()) - c0;
        let istiod_pushes = istiod
            .lines_with(mark, SE_RECEIVED)
            .into_iter()
            .filter(|(at, l)| l.contains("Received") && *at <= t0 + window)
            .count();
        let client_pushes = client.drain();
        let secs = window.as_secs_f64();
        t.set(churn_rate(mode), Unit::Ratio, col, n as f64 / secs);
        t.set(
            istiod_pushes_per_s(mode),
            Unit::Ratio,
            col,
            istiod_pushes as f64 / secs,
        );
        t.set(
            client_pushes_per_s(mode),
            Unit::Ratio,
            col,
            client_pushes as f64 / secs,
        );
        t.set(
            istiod_cpu(mode),
            Unit::Percent,
            col,
            cpu_ticks as f64 / clock_ticks_per_second() / secs * 100.0,
        );
        // Isolated changes after a quiet period: the first change is pushed at once.
        std::thread::sleep(cfg.quiet * 3);
        client.drain();
        let (mut iso, _, _) = isolated_changes(
            cfg,
            rt,
            &mut api,
            &server,
            &mut client,
            hot,
            size,
            &mut seq,
            mode,
        );
        t.set(isolated(mode), Unit::Ms, col, percentile(&mut iso, 50.0));
        progress(&format!(
            "  {mode}: {:.1} changes/s → istiod {:.2} pushes/s, client {:.2}/s, istiod CPU {:.0} %; isolated change {:.1} ms ({:.1} ms before istiod connected)",
            n as f64 / secs,
            istiod_pushes as f64 / secs,
            client_pushes as f64 / secs,
            t.get(&istiod_cpu(mode), col),
            t.get(&isolated(mode), col),
            t.get(&isolated_alone(mode), col)
        ));
    }
}

/// `cfg.isolated` changes, each after `cfg.quiet` without changes, to hot services: the time from
/// the poller's log line to `client` holding the new address, to the server's "serving new
/// ServiceEntry snapshot" line, and to its first "response sent" line of the ServiceEntry kind (the
/// new state handed to a client's stream; the first client's, when several are connected), per change.
#[allow(clippy::too_many_arguments)]
fn isolated_changes(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    api: &mut CloudMapApi,
    server: &Serve,
    client: &mut AdsWatcher,
    hot: usize,
    size: super::Size,
    seq: &mut usize,
    mode: &str,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut iso = Vec::new();
    let mut published = Vec::new();
    let mut handed = Vec::new();
    for k in 0..cfg.isolated {
        std::thread::sleep(cfg.quiet);
        *seq += 1;
        let ip = realpath::changed_ip(*seq);
        let svc = (k % hot) * size.services / hot;
        let mark = server.log_mark();
        api.set_ip(svc, &ip);
        let Some((r, _)) =
            rt.block_on(client.wait_for(&realpath::ip_needle(&ip), Duration::from_secs(120)))
        else {
            panic!("{mode}: isolated change never reached the client");
        };
        let name = format!("\"service\":\"svc-{svc:05}\"");
        if let Some(l) = server.find_log(
            mark,
            &["Cloud Map instances changed", &name],
            Duration::from_secs(1),
        ) {
            iso.push(realpath::wall_ms(l.at, r.wall));
            if let Some(p) = server.find_log(
                mark,
                &["serving new ServiceEntry snapshot"],
                Duration::from_secs(1),
            ) {
                published.push(realpath::wall_ms(l.at, p.at));
            }
            if let Some(h) = server.find_log(
                mark,
                &["response sent", "\"networking.istio.io/v1/ServiceEntry\""],
                Duration::from_secs(1),
            ) {
                handed.push(realpath::wall_ms(l.at, h.at));
            }
        }
    }
    (iso, published, handed)
}
