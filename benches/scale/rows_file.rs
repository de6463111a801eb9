//! Row group `file`: the real `serve` binary fed by a registry file (the synthetic registry written
//! as YAML), edited atomically (temp file + rename) one endpoint at a time, with one istiod-like
//! ADS client connected. Default poll interval.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use cloudmap_mcp::model::{self, NamespaceType};

use super::realpath::{self, AdsWatcher, Serve};
use super::{mb, memory_of, ms, percentile, synthetic_model, Cell, Config, Size, Unit};

pub const P: &str = "file";

pub fn file_mb() -> String {
    format!("{P}: registry file size (MB)")
}
pub fn rss_ready() -> String {
    format!("{P}: server RSS when ready, client synced (MB)")
}
pub fn rss_after(n: usize) -> String {
    format!(
        "{P}: server RSS after {n} edit{} (MB)",
        if n == 1 { "" } else { "s" }
    )
}
pub fn peak() -> String {
    format!("{P}: server peak RSS over the edits (VmHWM, MB)")
}
pub fn peak_ratio() -> String {
    format!("{P}: server peak RSS ÷ RSS when ready (target ≤ 1.3)")
}
pub fn to_source(p: &str) -> String {
    format!("{P}: rename → source reloaded it (server log) {p} (ms)")
}
pub fn to_client(p: &str) -> String {
    format!("{P}: rename → client has the change {p} (ms)")
}
pub fn source_to_client() -> String {
    format!("{P}: source reloaded → client has it p50 (ms)")
}
pub fn idle_cpu() -> String {
    format!("{P}: idle CPU, unchanged file, default poll interval (% of a core)")
}
pub fn edits() -> String {
    format!("{P}: edits measured")
}

pub fn labels(cfg: &Config) -> Vec<String> {
    let mut v = vec![file_mb(), rss_ready()];
    v.extend(realpath::checkpoints(cfg.edits).into_iter().map(rss_after));
    v.extend([
        peak(),
        peak_ratio(),
        to_source("p50"),
        to_source("p99"),
        to_client("p50"),
        to_client("p99"),
        source_to_client(),
        idle_cpu(),
        edits(),
    ]);
    v
}

/// The snapshot as a registry file (block YAML, as a person or a generator would write it).
pub fn registry_yaml(snap: &model::Snapshot) -> String {
    let mut s = String::with_capacity(snap.instance_count() * 330);
    s.push_str("namespaces:\n");
    for ns in &snap.namespaces {
        let kind = match ns.kind {
            NamespaceType::Http => "HTTP",
            NamespaceType::DnsPrivate => "DNS_PRIVATE",
            NamespaceType::DnsPublic => "DNS_PUBLIC",
        };
        let _ = writeln!(s, "  - name: {}\n    type: {kind}", ns.name);
        if let Some(id) = &ns.id {
            let _ = writeln!(s, "    id: {id}");
        }
        s.push_str("    services:\n");
        for svc in &ns.services {
            let _ = writeln!(s, "      - name: {}", svc.name);
            if let Some(id) = &svc.id {
                let _ = writeln!(s, "        id: {id}");
            }
            if let Some(d) = svc.create_date {
                let t = time::OffsetDateTime::from_unix_timestamp(d.seconds).unwrap();
                let _ = writeln!(
                    s,
                    "        createDate: \"{}\"",
                    t.format(&time::format_description::well_known::Rfc3339)
                        .unwrap()
                );
            }
            s.push_str("        instances:\n");
            for i in svc.instances.iter() {
                let _ = writeln!(s, "          - id: \"{}\"\n            healthStatus: HEALTHY\n            attributes:", i.id);
                for (k, v) in &i.attributes {
                    let _ = writeln!(s, "              {k}: \"{v}\"");
                }
            }
        }
    }
    s
}

/// The registry file being edited, with the current address of each service's first endpoint.
pub struct EditableFile {
    pub path: std::path::PathBuf,
    text: String,
    endpoints: usize,
    services: usize,
    current: HashMap<usize, String>,
}

impl EditableFile {
    pub fn create(dir: &Path, size: Size) -> EditableFile {
        let path = dir.join("registry.yaml");
        let text = registry_yaml(&synthetic_model(size));
        std::fs::write(&path, &text).unwrap();
        EditableFile {
            path,
            text,
            endpoints: size.endpoints,
            services: size.services,
            current: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Edit number `seq`: one service's first endpoint moves to a new address, written atomically.
    /// Returns the new address.
    pub fn edit(&mut self, seq: usize) -> String {
        let target = (seq * 7919) % self.services;
        let old = self
            .current
            .get(&target)
            .cloned()
            .unwrap_or_else(|| super::ipv4(target * self.endpoints));
        let new = realpath::changed_ip(seq);
        let from = format!("AWS_INSTANCE_IPV4: \"{old}\"\n");
        let at = self
            .text
            .find(&from)
            .unwrap_or_else(|| panic!("{old} in the registry file"));
        self.text.replace_range(
            at..at + from.len(),
            &format!("AWS_INSTANCE_IPV4: \"{new}\"\n"),
        );
        self.current.insert(target, new.clone());
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, &self.text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        new
    }
}

pub fn rows(cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let dir = tempfile::tempdir().unwrap();
    let mut file = EditableFile::create(dir.path(), size);
    t.set(file_mb(), Unit::Mb, col, mb(file.len() as u64));
    progress(&format!(
        "  file: {:.1} MB registry file; starting serve",
        mb(file.len() as u64)
    ));
    let server = Serve::start(
        &["--registry-file".into(), file.path.display().to_string()],
        &[],
    );
    let (mut client, _) = rt.block_on(AdsWatcher::connect(server.grpc, Duration::from_secs(600)));
    std::thread::sleep(Duration::from_millis(500));
    t.set(rss_ready(), Unit::Mb, col, mb(memory_of(server.pid()).1));
    let hwm_ready = memory_of(server.pid()).0;

    let checkpoints = realpath::checkpoints(cfg.edits);
    let (mut to_src, mut to_cli, mut src_cli) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for seq in 1..=cfg.edits {
        let mark = server.log_mark();
        let wall0 = SystemTime::now();
        let ip = file.edit(seq);
        let t0 = Instant::now();
        let got = rt.block_on(client.wait_for(&realpath::ip_needle(&ip), Duration::from_secs(120)));
        let Some((r, _)) = got else {
            panic!(
                "edit {seq}: the client never got {ip}; server log:\n{}",
                server.log_tail(20)
            );
        };
        to_cli.push(ms(r.at - t0));
        if let Some(l) = server.find_log(mark, &["registry file reloaded"], Duration::from_secs(5))
        {
            to_src.push(realpath::wall_ms(wall0, l.at));
            src_cli.push(realpath::wall_ms(l.at, r.wall));
        }
        drop(r);
        if checkpoints.contains(&seq) {
            realpath::rss_checkpoint(server.pid(), t, rss_after(seq), col, progress);
        }
        if seq >= 5 && started.elapsed() > cfg.change_budget * 5 {
            progress(&format!("  file: edit budget spent after {seq} edits"));
            break;
        }
    }
    let peak_rss = memory_of(server.pid()).0;
    t.set(peak(), Unit::Mb, col, mb(peak_rss));
    let ready_rss = t.get(&rss_ready(), col);
    t.set(peak_ratio(), Unit::Ratio, col, mb(peak_rss) / ready_rss);
    let _ = hwm_ready;
    t.set(
        to_source("p50"),
        Unit::Ms,
        col,
        percentile(&mut to_src, 50.0),
    );
    t.set(
        to_source("p99"),
        Unit::Ms,
        col,
        percentile(&mut to_src, 99.0),
    );
    t.set(
        to_client("p50"),
        Unit::Ms,
        col,
        percentile(&mut to_cli, 50.0),
    );
    t.set(
        to_client("p99"),
        Unit::Ms,
        col,
        percentile(&mut to_cli, 99.0),
    );
    t.set(
        source_to_client(),
        Unit::Ms,
        col,
        percentile(&mut src_cli, 50.0),
    );
    t.set(edits(), Unit::Count, col, to_cli.len() as f64);

    // Idle: nothing changes; the watcher keeps checking the file at its default interval.
    std::thread::sleep(Duration::from_secs(2));
    client.drain();
    let cpu =
        realpath::cpu_percent_over(server.pid(), cfg.real_idle, super::clock_ticks_per_second());
    t.set(idle_cpu(), Unit::Percent, col, cpu);
    let pushes = client.drain();
    assert_eq!(
        pushes, 0,
        "nothing is pushed while the file does not change"
    );
    progress(&format!(
        "  file: rename → client p50 {:.1} ms; idle CPU {cpu:.2} % of a core over {:?}",
        t.get(&to_client("p50"), col),
        cfg.real_idle
    ));
}
