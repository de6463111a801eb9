//! The report: one table (a column per size, a row per figure) and the notes of the run.
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Ms,
    Secs,
    Bytes,
    Mb,
    Ratio,
    Count,
    Percent,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub label: String,
    pub unit: Unit,
    /// One value per size (NaN: not measured).
    pub values: Vec<f64>,
}

/// One table: a column per size, a row per figure.
#[derive(Clone, Debug)]
pub struct Report {
    pub machine: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// What was skipped and why, sizes moto served, and such.
    pub notes: Vec<String>,
}

/// The rows being filled during a run.
pub struct Table {
    columns: usize,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(columns: usize) -> Table {
        Table {
            columns,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn set(&mut self, label: impl Into<String>, unit: Unit, col: usize, v: f64) {
        let label = label.into();
        let i = match self.rows.iter().position(|r| r.label == label) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    label,
                    unit,
                    values: vec![f64::NAN; self.columns],
                });
                self.rows.len() - 1
            }
        };
        self.rows[i].values[col] = v;
    }

    /// A value set before (NaN if not).
    pub fn get(&self, label: &str, col: usize) -> f64 {
        self.rows
            .iter()
            .find(|r| r.label == label)
            .map_or(f64::NAN, |r| r.values[col])
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

impl Report {
    pub fn row(&self, label: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.label == label)
    }

    pub fn render(&self) -> String {
        let fmt = |unit: Unit, v: f64| -> String {
            if v.is_nan() {
                return "-".into();
            }
            match unit {
                Unit::Ms if v < 10.0 => format!("{v:.2}"),
                Unit::Ms => format!("{v:.1}"),
                Unit::Secs => format!("{v:.1}"),
                Unit::Bytes => format!("{v:.0}"),
                Unit::Mb => format!("{v:.1}"),
                Unit::Ratio => format!("{v:.2}"),
                Unit::Count => format!("{v:.0}"),
                Unit::Percent => format!("{v:.2}"),
            }
        };
        let mut lines: Vec<Vec<String>> = Vec::new();
        let mut head = vec!["figure".to_string()];
        head.extend(self.columns.iter().cloned());
        lines.push(head);
        for r in &self.rows {
            let mut l = vec![r.label.clone()];
            l.extend(r.values.iter().map(|v| fmt(r.unit, *v)));
            lines.push(l);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        out.push_str(&self.machine);
        out.push('\n');
        for (n, l) in lines.iter().enumerate() {
            out.push('|');
            for (i, cell) in l.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i == 0 {
                    out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
                } else {
                    out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
                }
            }
            out.push('\n');
            if n == 0 {
                out.push('|');
                for (i, w) in widths.iter().enumerate() {
                    let dashes = "-".repeat(w + 1);
                    if i == 0 {
                        out.push_str(&format!(":{dashes}|"));
                    } else {
                        out.push_str(&format!("{dashes}:|"));
                    }
                }
                out.push('\n');
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// Row labels, in the order they are printed.
pub mod labels {
    pub const BYTES: &str = "in-process: ServiceEntry response (bytes)";
    pub const TRANSLATE: &str = "in-process: translate only, full snapshot (ms)";
    pub const BUILD_FULL: &str = "in-process: translate+encode, full snapshot (ms)";
    pub const BUILD_ONE: &str = "in-process: re-encode after 1 service changed (ms)";
    pub fn push(n: usize, what: &str) -> String {
        format!(
            "synthetic: full push, {n} client{}: {what}",
            if n == 1 { "" } else { "s" }
        )
    }
    pub const OURS_MS: &str = "ours (ms)";
    pub const FLOOR_MS: &str = "transport floor (ms)";
    pub const NAIVE_MS: &str = "naive re-encode (ms)";
    pub const VS_FLOOR: &str = "ours ÷ floor";
    pub const VS_NAIVE: &str = "ours ÷ naive";
    pub fn change_all(n: usize, p: &str) -> String {
        format!("synthetic: change→receipt at all {n} clients {p} (ms)")
    }
    pub fn change_first(n: usize) -> String {
        format!("synthetic: change→receipt at first of {n} clients p50 (ms)")
    }
    pub const CHANGES: &str = "synthetic: changes measured (per client count)";
    pub const CHANGE_BUILT: &str = "synthetic: change → new snapshot published p50 (ms)";
    pub const CHANGE_CLONE: &str = "synthetic: of which the source's new model snapshot p50 (ms)";
    /// Change latency over the transport floor's full push to as many clients (SotW sends the
    /// whole state on every change, so that push is its lower bound).
    pub fn change_vs_floor(n: usize) -> String {
        format!(
            "synthetic: change→receipt at {} p50 ÷ floor {n}-client full push",
            if n == 1 {
                "1 client".to_string()
            } else {
                format!("all {n} clients")
            }
        )
    }
    pub fn change_one(p: &str) -> String {
        format!("synthetic: change→receipt, 1 client {p} (ms)")
    }
    pub const RSS_OURS: &str = "synthetic: server peak RSS, ours (MB)";
    pub const RSS_OURS_START: &str = "synthetic: server RSS before any client, ours (MB)";
    pub fn push_rss(n: usize, what: &str) -> String {
        format!("synthetic: server RSS added by the {n}-client full push, {what} (MB)")
    }
    pub const PUSH_RSS_OURS: &str = "ours";
    pub const PUSH_RSS_FLOOR: &str = "floor";
    pub const PUSH_RSS_NAIVE: &str = "naive";
    pub fn idle_cpu(n: usize) -> String {
        format!("synthetic: idle CPU with {n} clients, ours (% of a core)")
    }
    pub const IDLE_PUSHES: &str = "synthetic: pushes received while idle";
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Nearest-rank percentile.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// nproc, CPU model, memory and load average, for the report header.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {nproc} CPUs ({model}), {:.1} GiB RAM; load average {} (1/5/15 min) at {}; {} build",
        mem_kb as f64 / 1024.0 / 1024.0,
        load.join(" "),
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        if cfg!(debug_assertions) { "DEBUG (figures meaningless)" } else { "release" },
    )
}
