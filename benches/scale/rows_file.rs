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

/// The registry file's format: the `file` group writes YAML, `file-json` the same registry as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The row group (and row-label prefix).
    pub fn group(self) -> &'static str {
        match self {
            Format::Yaml => "file",
            Format::Json => "file-json",
        }
    }
}

pub fn file_mb(f: Format) -> String {
    let g = f.group();
    format!("{g}: registry file size (MB)")
}
pub fn rss_ready(f: Format) -> String {
    let g = f.group();
    format!("{g}: server RSS when ready, client synced (MB)")
}
pub fn rss_after(f: Format, n: usize) -> String {
    let g = f.group();
    format!(
        "{g}: server RSS after {n} edit{} (MB)",
        if n == 1 { "" } else { "s" }
    )
}
pub fn peak_ready(f: Format) -> String {
    let g = f.group();
    format!("{g}: server peak RSS by the time it was ready (VmHWM, MB)")
}
pub fn peak(f: Format) -> String {
    let g = f.group();
    format!("{g}: server peak RSS over the edits (VmHWM, MB)")
}
pub fn peak_ratio(f: Format) -> String {
    let g = f.group();
    format!("{g}: server peak RSS ÷ RSS when ready (target ≤ 1.3)")
}
pub fn to_source(f: Format, p: &str) -> String {
    let g = f.group();
    format!("{g}: rename → source reloaded it (server log) {p} (ms)")
}
pub fn to_client(f: Format, p: &str) -> String {
    let g = f.group();
    format!("{g}: rename → client has the change {p} (ms)")
}
pub fn source_to_client(f: Format) -> String {
    let g = f.group();
    format!("{g}: source reloaded → client has it p50 (ms)")
}
pub fn idle_cpu(f: Format) -> String {
    let g = f.group();
    format!("{g}: idle CPU, unchanged file, default poll interval (% of a core)")
}
pub fn edits(f: Format) -> String {
    let g = f.group();
    format!("{g}: edits measured")
}

pub fn labels(f: Format, cfg: &Config) -> Vec<String> {
    let mut v = vec![file_mb(f), rss_ready(f)];
    v.extend(
        realpath::checkpoints(cfg.edits)
            .into_iter()
            .map(|n| rss_after(f, n)),
    );
    v.extend([
        peak_ready(f),
        peak(f),
        peak_ratio(f),
        to_source(f, "p50"),
        to_source(f, "p99"),
        to_client(f, "p50"),
        to_client(f, "p99"),
        source_to_client(f),
        idle_cpu(f),
        edits(f),
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

/// The snapshot as a JSON registry file (one instance per line, as a generator would write it).
pub fn registry_json(snap: &model::Snapshot) -> String {
    let q = |v: &str| serde_json::to_string(v).unwrap();
    let mut s = String::with_capacity(snap.instance_count() * 330);
    s.push_str("{\"namespaces\": [\n");
    for (ni, ns) in snap.namespaces.iter().enumerate() {
        let _ = write!(
            s,
            "{}{{\"name\": {}, \"type\": \"{}\"",
            if ni > 0 { ",\n" } else { "" },
            q(&ns.name),
            ns.kind
        );
        if let Some(id) = &ns.id {
            let _ = write!(s, ", \"id\": {}", q(id));
        }
        s.push_str(", \"services\": [\n");
        for (si, svc) in ns.services.iter().enumerate() {
            let _ = write!(
                s,
                "{} {{\"name\": {}",
                if si > 0 { ",\n" } else { "" },
                q(&svc.name)
            );
            if let Some(id) = &svc.id {
                let _ = write!(s, ", \"id\": {}", q(id));
            }
            if let Some(d) = svc.create_date {
                let _ = write!(s, ", \"createDate\": {}", q(&d.to_rfc3339()));
            }
            s.push_str(", \"instances\": [\n");
            for (ii, i) in svc.instances.iter().enumerate() {
                let attrs: Vec<String> = i
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                    .collect();
                let _ = write!(
                    s,
                    "{}  {{\"id\": {}, \"healthStatus\": \"HEALTHY\", \"attributes\": {{{}}}\n  }}",
                    if ii > 0 { ",\n" } else { "" },
                    q(&i.id),
                    attrs.join(", ")
                );
            }
            s.push_str("]}");
        }
        s.push_str("]}");
    }
    s.push_str("\n]}\n");
    s
}

/// The registry file being edited, with the current address of each service's first endpoint.
pub struct EditableFile {
    pub path: std::path::PathBuf,
    format: Format,
    text: String,
    endpoints: usize,
    services: usize,
    current: HashMap<usize, String>,
}

impl EditableFile {
    pub fn create(dir: &Path, size: Size, format: Format) -> EditableFile {
        let snap = synthetic_model(size);
        let (path, text) = match format {
            Format::Yaml => (dir.join("registry.yaml"), registry_yaml(&snap)),
            Format::Json => (dir.join("registry.json"), registry_json(&snap)),
        };
        std::fs::write(&path, &text).unwrap();
        EditableFile {
            path,
            format,
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
        let needle = |ip: &str| match self.format {
            Format::Yaml => format!("AWS_INSTANCE_IPV4: \"{ip}\"\n"),
            Format::Json => format!("\"AWS_INSTANCE_IPV4\": \"{ip}\","),
        };
        let from = needle(&old);
        let at = self
            .text
            .find(&from)
            .unwrap_or_else(|| panic!("{old} in the registry file"));
        self.text.replace_range(at..at + from.len(), &needle(&new));
        self.current.insert(target, new.clone());
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, &self.text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        new
    }
}

/// The `file` group: a YAML registry file.
pub fn rows(cell: Cell<'_>) {
    rows_of(Format::Yaml, cell)
}

/// The `file-json` group: the same registry as JSON.
pub fn json_rows(cell: Cell<'_>) {
    rows_of(Format::Json, cell)
}

fn rows_of(f: Format, cell: Cell<'_>) {
    let Cell {
        cfg,
        size,
        col,
        rt,
        t,
        progress,
    } = cell;
    let dir = tempfile::tempdir().unwrap();
    let mut file = EditableFile::create(dir.path(), size, f);
    t.set(file_mb(f), Unit::Mb, col, mb(file.len() as u64));
    progress(&format!(
        "  {}: {:.1} MB registry file; starting serve",
        f.group(),
        mb(file.len() as u64)
    ));
    let server = Serve::start(
        &["--registry-file".into(), file.path.display().to_string()],
        &[],
    );
    let (mut client, _) = rt.block_on(AdsWatcher::connect(server.grpc, Duration::from_secs(600)));
    std::thread::sleep(Duration::from_millis(500));
    t.set(rss_ready(f), Unit::Mb, col, mb(memory_of(server.pid()).1));
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
        // The next edit comes after a quiet period longer than push pacing's window (1 s by
        // default), so each edit is measured as an isolated change, not held for the window.
        std::thread::sleep(Duration::from_millis(1200));
        if checkpoints.contains(&seq) {
            realpath::rss_checkpoint(server.pid(), t, rss_after(f, seq), col, progress);
        }
        if seq >= 5 && started.elapsed() > cfg.change_budget * 5 {
            progress(&format!(
                "  {}: edit budget spent after {seq} edits",
                f.group()
            ));
            break;
        }
    }
    let peak_rss = memory_of(server.pid()).0;
    t.set(peak(f), Unit::Mb, col, mb(peak_rss));
    let ready_rss = t.get(&rss_ready(f), col);
    t.set(peak_ratio(f), Unit::Ratio, col, mb(peak_rss) / ready_rss);
    t.set(peak_ready(f), Unit::Mb, col, mb(hwm_ready));
    t.set(
        to_source(f, "p50"),
        Unit::Ms,
        col,
        percentile(&mut to_src, 50.0),
    );
    t.set(
        to_source(f, "p99"),
        Unit::Ms,
        col,
        percentile(&mut to_src, 99.0),
    );
    t.set(
        to_client(f, "p50"),
        Unit::Ms,
        col,
        percentile(&mut to_cli, 50.0),
    );
    t.set(
        to_client(f, "p99"),
        Unit::Ms,
        col,
        percentile(&mut to_cli, 99.0),
    );
    t.set(
        source_to_client(f),
        Unit::Ms,
        col,
        percentile(&mut src_cli, 50.0),
    );
    t.set(edits(f), Unit::Count, col, to_cli.len() as f64);

    // Idle: nothing changes; the watcher keeps checking the file at its default interval.
    std::thread::sleep(Duration::from_secs(2));
    client.drain();
    let cpu =
        realpath::cpu_percent_over(server.pid(), cfg.real_idle, super::clock_ticks_per_second());
    t.set(idle_cpu(f), Unit::Percent, col, cpu);
    let pushes = client.drain();
    assert_eq!(
        pushes, 0,
        "nothing is pushed while the file does not change"
    );
    progress(&format!(
        "  {}: rename → client p50 {:.1} ms; idle CPU {cpu:.2} % of a core over {:?}",
        f.group(),
        t.get(&to_client(f, "p50"), col),
        cfg.real_idle
    ));
}
