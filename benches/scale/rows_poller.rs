//! Row groups `api` and `moto`: the real `serve --cloudmap` binary, its poller and the AWS SDK
//! building every snapshot, against the in-process Cloud Map API ([`super::cloudmap_api`]) or
//! against moto_server. One istiod-like ADS client connected.
//!
//! A round changes the first endpoint of a few "hot" services (one warm-up round first, so they are
//! polled at the base revision interval, as a service in a rolling deployment is) and waits until
//! the client has every change. The delay of a change in a service quiet for long (the revision
//! back-off ceiling) is not measured here.
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use super::cloudmap_api::CloudMapApi;
use super::realpath::{self, AdsWatcher, Serve};
use super::{mb, memory_of, ms, percentile, Cell, Config, Size, Table, Unit};

/// API budget given to the server against the in-process API (the default 100/s would spend
/// 200 s on the first sync of 10k services: a GetService and a DiscoverInstances each).
pub const API_RATE: &str = "1000";
pub const API_BURST: &str = "100";
/// Services changed per round.
pub const HOT: usize = 10;

pub fn first_sync(p: &str) -> String {
    format!("{p}: serve start → client has every ServiceEntry (s)")
}
pub fn rss_ready(p: &str) -> String {
    format!("{p}: server RSS when ready, client synced (MB)")
}
pub fn rss_after(p: &str, n: usize) -> String {
    format!(
        "{p}: server RSS after {n} round{} of changes (MB)",
        if n == 1 { "" } else { "s" }
    )
}
pub fn peak(p: &str) -> String {
    format!("{p}: server peak RSS (VmHWM, MB)")
}
pub fn peak_ratio(p: &str) -> String {
    format!("{p}: server peak RSS ÷ RSS when ready (target ≤ 1.3)")
}
pub fn to_source(p: &str, q: &str) -> String {
    format!("{p}: change → poller saw it (server log) {q} (ms)")
}
pub fn to_client(p: &str, q: &str) -> String {
    format!("{p}: change → client has it {q} (ms)")
}
pub fn source_to_client(p: &str) -> String {
    format!("{p}: poller saw it → client has it p50 (ms)")
}
pub fn calls_rounds(p: &str) -> String {
    format!("{p}: Cloud Map calls/min during the rounds")
}
pub fn calls_idle(p: &str) -> String {
    format!("{p}: Cloud Map calls/min while nothing changes")
}
pub fn idle_cpu(p: &str) -> String {
    format!("{p}: idle CPU, nothing changes (% of a core)")
}
pub fn changes(p: &str) -> String {
    format!("{p}: changes measured")
}

pub fn labels(p: &str, cfg: &Config) -> Vec<String> {
    let mut v = vec![first_sync(p), rss_ready(p)];
    v.extend(
        realpath::checkpoints(cfg.edits)
            .into_iter()
            .map(|n| rss_after(p, n)),
    );
    v.extend([
        peak(p),
        peak_ratio(p),
        to_source(p, "p50"),
        to_source(p, "p99"),
        to_client(p, "p50"),
        to_client(p, "p99"),
        source_to_client(p),
        calls_rounds(p),
        calls_idle(p),
        idle_cpu(p),
        changes(p),
    ]);
    v
}

/// Where the poller reads Cloud Map from.
pub(super) trait Backend {
    fn endpoint(&self) -> String;
    /// Moves the first endpoint of service `index` to `ip`.
    fn set_ip(&mut self, index: usize, ip: &str) -> impl Future<Output = ()>;
    /// The service's name, as the poller logs it.
    fn service_name(&self, index: usize) -> String {
        format!("svc-{index:05}")
    }
}

impl Backend for CloudMapApi {
    fn endpoint(&self) -> String {
        CloudMapApi::endpoint(self)
    }
    async fn set_ip(&mut self, index: usize, ip: &str) {
        CloudMapApi::set_ip(self, index, ip)
    }
}

/// Sum of every sample of a counter family (all label sets).
fn counter_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn aws_calls(server: &Serve) -> f64 {
    counter_sum(
        &server.admin_get("/metrics"),
        "cloudmap_mcp_aws_calls_total",
    )
}

/// Group `api`.
pub fn api_rows(cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let mut api = rt.block_on(CloudMapApi::start(size));
    let mut extra = vec!["--aws-api-rate", API_RATE, "--aws-api-burst", API_BURST];
    extra.extend(cfg.poller_args.iter().map(String::as_str));
    t.note(format!(
        "api: serve runs with {} (other Cloud Map flags at their defaults)",
        extra.join(" ")
    ));
    poller_rows("api", cfg, size, col, rt, &mut api, &extra, t, progress);
    let calls = api.calls();
    progress(&format!(
        "  api: calls answered by the in-process API: {calls:?}"
    ));
}

#[allow(clippy::too_many_arguments)]
pub(super) fn poller_rows<B: Backend>(
    p: &str,
    cfg: &Config,
    size: Size,
    col: usize,
    rt: &tokio::runtime::Runtime,
    backend: &mut B,
    extra_args: &[&str],
    t: &mut Table,
    progress: &mut dyn FnMut(&str),
) {
    let mut args: Vec<String> = [
        "--cloudmap",
        "--aws-endpoint-url",
        &backend.endpoint(),
        "--aws-region",
        "us-east-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let env = [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
    ];
    progress(&format!(
        "  {p}: starting serve --cloudmap against {}",
        backend.endpoint()
    ));
    let t_start = Instant::now();
    let server = Serve::start(&args, &env);
    let (mut client, first) =
        rt.block_on(AdsWatcher::connect(server.grpc, Duration::from_secs(1800)));
    assert_eq!(
        first.resp.resources.len(),
        size.services,
        "{p}: every service is served after the first sync"
    );
    t.set(
        first_sync(p),
        Unit::Secs,
        col,
        (first.at - t_start).as_secs_f64(),
    );
    drop(first);
    progress(&format!(
        "  {p}: first sync served after {:.1} s",
        t.get(&first_sync(p), col)
    ));
    std::thread::sleep(Duration::from_millis(500));
    t.set(rss_ready(p), Unit::Mb, col, mb(memory_of(server.pid()).1));

    let hot: Vec<usize> = (0..HOT.min(size.services))
        .map(|i| i * size.services / HOT.min(size.services))
        .collect();
    let mut seq = 0;
    let mut round = |backend: &mut B, client: &mut AdsWatcher, lat: &mut Vec<[f64; 3]>| {
        let mark = server.log_mark();
        let mut pending: HashMap<Vec<u8>, (usize, Instant, SystemTime)> = HashMap::new();
        for &i in &hot {
            seq += 1;
            let ip = realpath::changed_ip(seq);
            let wall0 = SystemTime::now();
            rt.block_on(backend.set_ip(i, &ip));
            pending.insert(realpath::ip_needle(&ip), (i, Instant::now(), wall0));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while !pending.is_empty() {
            let r = rt
                .block_on(async {
                    tokio::time::timeout_at(deadline.into(), client.rx.recv()).await
                })
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "{p}: {} changes never reached the client; server log:\n{}",
                        pending.len(),
                        server.log_tail(20)
                    )
                });
            let found: Vec<Vec<u8>> = pending.keys().filter(|n| r.contains(n)).cloned().collect();
            for n in found {
                let (i, t0, wall0) = pending.remove(&n).unwrap();
                let name = format!("\"service\":\"{}\"", backend.service_name(i));
                let saw = server.find_log(
                    mark,
                    &["Cloud Map instances changed", &name],
                    Duration::from_secs(1),
                );
                let (to_src, src_cli) = match saw {
                    Some(l) => (
                        realpath::wall_ms(wall0, l.at),
                        realpath::wall_ms(l.at, r.wall),
                    ),
                    None => (f64::NAN, f64::NAN),
                };
                lat.push([ms(r.at - t0), to_src, src_cli]);
            }
        }
    };
    // Warm-up: the hot services change once, so they are polled at the base interval.
    round(backend, &mut client, &mut Vec::new());
    let checkpoints = realpath::checkpoints(cfg.edits);
    let mut lat = Vec::new();
    let (calls0, t0) = (aws_calls(&server), Instant::now());
    let started = Instant::now();
    for n in 1..=cfg.edits {
        round(backend, &mut client, &mut lat);
        if checkpoints.contains(&n) {
            realpath::rss_checkpoint(server.pid(), t, rss_after(p, n), col, progress);
        }
        if n >= 3 && started.elapsed() > cfg.change_budget * 10 {
            progress(&format!("  {p}: round budget spent after {n} rounds"));
            break;
        }
    }
    let per_min = |c: f64, d: Duration| c / d.as_secs_f64() * 60.0;
    t.set(
        calls_rounds(p),
        Unit::Count,
        col,
        per_min(aws_calls(&server) - calls0, t0.elapsed()),
    );
    let peak_rss = memory_of(server.pid()).0;
    t.set(peak(p), Unit::Mb, col, mb(peak_rss));
    t.set(
        peak_ratio(p),
        Unit::Ratio,
        col,
        mb(peak_rss) / t.get(&rss_ready(p), col),
    );
    let col_of = |k: usize| {
        lat.iter()
            .map(|l: &[f64; 3]| l[k])
            .filter(|v| v.is_finite())
            .collect::<Vec<f64>>()
    };
    let (mut cli, mut src, mut src_cli) = (col_of(0), col_of(1), col_of(2));
    t.set(
        to_client(p, "p50"),
        Unit::Ms,
        col,
        percentile(&mut cli, 50.0),
    );
    t.set(
        to_client(p, "p99"),
        Unit::Ms,
        col,
        percentile(&mut cli, 99.0),
    );
    t.set(
        to_source(p, "p50"),
        Unit::Ms,
        col,
        percentile(&mut src, 50.0),
    );
    t.set(
        to_source(p, "p99"),
        Unit::Ms,
        col,
        percentile(&mut src, 99.0),
    );
    t.set(
        source_to_client(p),
        Unit::Ms,
        col,
        percentile(&mut src_cli, 50.0),
    );
    t.set(changes(p), Unit::Count, col, lat.len() as f64);

    // Idle: nothing changes; the poller keeps polling revisions at its back-off.
    std::thread::sleep(Duration::from_secs(1));
    client.drain();
    let (c0, i0) = (aws_calls(&server), Instant::now());
    let cpu =
        realpath::cpu_percent_over(server.pid(), cfg.real_idle, super::clock_ticks_per_second());
    t.set(
        calls_idle(p),
        Unit::Count,
        col,
        per_min(aws_calls(&server) - c0, i0.elapsed()),
    );
    t.set(idle_cpu(p), Unit::Percent, col, cpu);
    let pushes = client.drain();
    assert_eq!(
        pushes, 0,
        "{p}: nothing is pushed while Cloud Map does not change"
    );
    progress(&format!(
        "  {p}: change → client p50 {:.0} ms p99 {:.0} ms; {:.0} calls/min in rounds, {:.0} idle; idle CPU {cpu:.2} %",
        t.get(&to_client(p, "p50"), col),
        t.get(&to_client(p, "p99"), col),
        t.get(&calls_rounds(p), col),
        t.get(&calls_idle(p), col)
    ));
}
