//! The registry file: YAML that mirrors Cloud Map (namespaces → services → instances).
//!
//! ```yaml
//! namespaces:
//!   - name: my-namespace
//!     type: HTTP                 # HTTP | DNS_PRIVATE | DNS_PUBLIC
//!     services:
//!       - name: getmesh-external-service
//!         createDate: "2021-06-01T00:00:00Z"
//!         instances:
//!           - id: getmesh-1
//!             attributes: {AWS_INSTANCE_IPV4: 52.192.72.89}
//! ```
//!
//! [`watch`] re-reads the file on an interval; a broken edit is logged with its position and the last
//! good snapshot stays in place.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::SnapshotTx;
use crate::metrics::Metrics;
use crate::model::{self, HealthStatus, NamespaceType, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read registry file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("registry file {path}: {at}: {message}")]
    Invalid { path: PathBuf, at: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    #[serde(default)]
    namespaces: Vec<FileNamespace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileNamespace {
    name: String,
    #[serde(rename = "type")]
    kind: NamespaceType,
    id: Option<String>,
    arn: Option<String>,
    http_name: Option<String>,
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileService {
    name: String,
    id: Option<String>,
    arn: Option<String>,
    create_date: Option<String>,
    /// Service-level attributes (Cloud Map's per-service attributes).
    #[serde(default, deserialize_with = "scalar_map")]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    instances: Vec<FileInstance>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileInstance {
    id: String,
    #[serde(default, deserialize_with = "scalar_map")]
    attributes: BTreeMap<String, String>,
    health_status: Option<HealthStatus>,
}

/// Attribute values are strings in Cloud Map; accept YAML numbers and booleans too (`AWS_INSTANCE_PORT: 8080`).
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Deepest nesting of YAML flow collections accepted. The YAML parser's cost grows with the square of
/// this depth (a 100 KB file of nested `[` took minutes), and the deserializer refuses anything
/// deeper than 128 levels anyway, so deeper files are refused before parsing.
pub const MAX_FLOW_NESTING: usize = 256;

/// Where flow collections (`[`, `{`) first nest deeper than `limit`, as (line, column), ignoring
/// quoted scalars and comments. Brackets inside plain scalars are counted too, which can only make
/// a broken file fail sooner: no valid registry comes near the limit.
pub(crate) fn flow_nesting_beyond(text: &str, limit: usize) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Comment,
    }
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut state = In::Plain;
    let mut escaped = false;
    let mut prev = '\n';
    for ch in text.chars() {
        column += 1;
        if ch == '\n' {
            line += 1;
            column = 0;
            if state == In::Comment {
                state = In::Plain;
            }
            prev = ch;
            continue;
        }
        let token_start = prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':');
        match state {
            In::Comment => {}
            In::Double => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == '"' {
                    state = In::Plain;
                }
            }
            In::Single => {
                if ch == '\'' {
                    state = In::Plain;
                }
            }
            In::Plain => match ch {
                '#' if token_start => state = In::Comment,
                '"' if token_start => state = In::Double,
                '\'' if token_start => state = In::Single,
                '[' | '{' => {
                    depth += 1;
                    if depth > limit {
                        return Some((line, column));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = ch;
    }
    None
}

/// Parses registry file contents. `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<model::Snapshot, RegistryFileError> {
    let path_buf = || path.to_path_buf();
    if let Some((line, column)) = flow_nesting_beyond(text, MAX_FLOW_NESTING) {
        return Err(RegistryFileError::Parse {
            path: path_buf(),
            message: format!("line {line} column {column}: flow collections ([ ] {{ }}) nested deeper than {MAX_FLOW_NESTING}"),
        });
    }
    let file: FileRegistry = if text.trim().is_empty() {
        FileRegistry { namespaces: Vec::new() }
    } else {
        serde_yaml::from_str(text).map_err(|e| RegistryFileError::Parse { path: path_buf(), message: e.to_string() })?
    };
    let invalid = |at: String, message: String| RegistryFileError::Invalid { path: path_buf(), at, message };

    let mut seen_ns = HashSet::new();
    let mut namespaces = Vec::with_capacity(file.namespaces.len());
    for (ni, ns) in file.namespaces.into_iter().enumerate() {
        let at = format!("namespaces[{ni}] ({:?})", ns.name);
        if ns.name.trim().is_empty() {
            return Err(invalid(at, "namespace name is empty".into()));
        }
        if !seen_ns.insert(ns.name.clone()) {
            return Err(invalid(at, "namespace name appears twice".into()));
        }
        let mut seen_svc = HashSet::new();
        let mut services = Vec::with_capacity(ns.services.len());
        for (si, svc) in ns.services.into_iter().enumerate() {
            let at = format!("{at}.services[{si}] ({:?})", svc.name);
            if svc.name.trim().is_empty() {
                return Err(invalid(at, "service name is empty".into()));
            }
            if !seen_svc.insert(svc.name.clone()) {
                return Err(invalid(at, "service name appears twice in this namespace".into()));
            }
            let create_date = match &svc.create_date {
                None => None,
                Some(d) => Some(
                    Timestamp::parse_rfc3339(d)
                        .map_err(|e| invalid(at.clone(), format!("createDate {d:?} is not an RFC 3339 date-time: {e}")))?,
                ),
            };
            let mut seen_inst = HashSet::new();
            let mut instances = Vec::with_capacity(svc.instances.len());
            for (ii, inst) in svc.instances.into_iter().enumerate() {
                if inst.id.trim().is_empty() {
                    return Err(invalid(format!("{at}.instances[{ii}]"), "instance id is empty".into()));
                }
                if !seen_inst.insert(inst.id.clone()) {
                    return Err(invalid(
                        format!("{at}.instances[{ii}] ({:?})", inst.id),
                        "instance id appears twice in this service".into(),
                    ));
                }
                instances.push(model::Instance {
                    id: inst.id,
                    attributes: inst.attributes,
                    health: inst.health_status.unwrap_or_default(),
                });
            }
            services.push(Arc::new(model::Service {
                name: svc.name,
                id: svc.id,
                arn: svc.arn,
                create_date,
                attributes: svc.attributes,
                instances: instances.into(),
            }));
        }
        namespaces.push(model::Namespace {
            http_name: ns.http_name.unwrap_or_else(|| ns.name.clone()),
            name: ns.name,
            id: ns.id,
            arn: ns.arn,
            kind: ns.kind,
            services,
        });
    }
    let mut snap = model::Snapshot { namespaces };
    snap.normalize();
    Ok(snap)
}

/// Reads and parses the file.
pub fn load(path: &Path) -> Result<model::Snapshot, RegistryFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| RegistryFileError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// How long a changed file must stay unchanged before it is read as a new version (a writer that
/// truncates and then writes is usually done by then).
pub fn settle_time(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(250))
}

/// How long a file that looks cut off (a strict prefix of the served version) must stay unchanged
/// before it is applied.
pub fn cut_off_hold(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(5))
}

/// What the watcher decided about one read of the file.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The version being served, or a version already looked at: nothing to do.
    Unchanged,
    /// New contents: parse and, if good, serve.
    Apply,
    /// A version held back as cut off that stayed unchanged for the whole hold: an edit after all.
    ApplyCutOff,
    /// Empty while services are served: a truncation, not an edit (`namespaces: []` serves nothing).
    Empty,
    /// A strict prefix of the served version: looks like a write cut off; held back.
    CutOff,
}

/// The watcher's memory, separate from I/O so the rules are testable.
#[derive(Debug)]
struct WatchState {
    /// Bytes of the version being served.
    served: Option<Vec<u8>>,
    served_services: usize,
    /// The last bytes looked at (served or not).
    seen: Option<Vec<u8>>,
    /// Since when `seen` has been held back as cut off.
    cut_since: Option<std::time::Instant>,
}

impl WatchState {
    fn judge(&mut self, bytes: &[u8], now: std::time::Instant, hold: Duration) -> Verdict {
        if self.served.as_deref() == Some(bytes) {
            self.seen = self.served.clone();
            self.cut_since = None;
            return Verdict::Unchanged;
        }
        if self.seen.as_deref() == Some(bytes) {
            return match self.cut_since {
                Some(t) if now.duration_since(t) >= hold => {
                    self.cut_since = None;
                    Verdict::ApplyCutOff
                }
                _ => Verdict::Unchanged,
            };
        }
        self.seen = Some(bytes.to_vec());
        self.cut_since = None;
        let blank = bytes.iter().all(|b| b.is_ascii_whitespace());
        if blank && self.served_services > 0 {
            return Verdict::Empty;
        }
        if let Some(served) = &self.served {
            if !blank && bytes.len() < served.len() && served.starts_with(bytes) {
                self.cut_since = Some(now);
                return Verdict::CutOff;
            }
        }
        Verdict::Apply
    }
}

/// Publishes `initial`, then polls the file every `interval` and publishes each new good version.
/// Returns when every receiver is gone. What is never published:
/// - a file that does not parse (logged with its position);
/// - a file still being written: a changed file is read again after [`settle_time`] and used only
///   if both reads agree;
/// - an empty file while services are served (a truncation; write `namespaces: []` to serve none);
/// - a strict prefix of the served file (a cut-off write) until it has stayed unchanged for
///   [`cut_off_hold`].
///
/// In all these cases the last good snapshot stays, and `cloudmap_mcp_source_errors_total{source="file"}`
/// counts the event.
pub async fn watch(path: PathBuf, interval: Duration, initial: model::Snapshot, tx: SnapshotTx, metrics: Arc<Metrics>) {
    let first = std::fs::read(&path).ok();
    let mut st = WatchState { served: first.clone(), served_services: initial.service_count(), seen: first, cut_since: None };
    let _ = tx.send(Some(Arc::new(initial)));
    metrics.source_loaded("file");
    let settle = settle_time(interval);
    let hold = cut_off_hold(interval);
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tx.closed() => return,
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if !failing {
                    tracing::error!(path = %path.display(), error = %e, "cannot read registry file; still serving the last good version");
                    metrics.source_error("file");
                    failing = true;
                }
                continue;
            }
        };
        let held = match st.judge(&bytes, std::time::Instant::now(), hold) {
            Verdict::Unchanged => {
                if failing && st.served.as_deref() == Some(bytes.as_slice()) {
                    tracing::info!(path = %path.display(), "registry file is back to the served version");
                    failing = false;
                }
                continue;
            }
            Verdict::Empty => {
                failing = true;
                metrics.source_error("file");
                tracing::error!(
                    path = %path.display(),
                    served_services = st.served_services,
                    "registry file is empty (truncated?); still serving the last good version (write `namespaces: []` to serve nothing)"
                );
                continue;
            }
            Verdict::CutOff => {
                failing = true;
                metrics.source_error("file");
                tracing::warn!(
                    path = %path.display(),
                    bytes = bytes.len(),
                    served_bytes = st.served.as_ref().map_or(0, Vec::len),
                    hold = ?hold,
                    "registry file is a cut-off copy of the served version (truncated?); still serving the last good version, applying it only if it stays like this"
                );
                continue;
            }
            Verdict::Apply => false,
            Verdict::ApplyCutOff => true,
        };
        // New contents must settle (the writer may not be done); a version held as cut off has been
        // stable for the whole hold already.
        if !held {
            tokio::time::sleep(settle).await;
            match tokio::fs::read(&path).await {
                Ok(again) if again == bytes => {}
                _ => {
                    // Still being written: look again on the next tick.
                    st.seen = None;
                    continue;
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let parse_path = path.clone();
        // Parsing is CPU work proportional to the file (and worse for pathological YAML): keep it
        // off the runtime's worker threads so streams are never starved.
        let parsed = match tokio::task::spawn_blocking(move || parse(&parse_path, &text)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "registry file parser failed; still serving the last good version");
                metrics.source_error("file");
                failing = true;
                continue;
            }
        };
        match parsed {
            Ok(snap) => {
                failing = false;
                if held {
                    tracing::warn!(path = %path.display(), "registry file stayed cut off for the whole hold; applying it as an edit");
                }
                tracing::info!(
                    path = %path.display(),
                    namespaces = snap.namespaces.len(),
                    services = snap.service_count(),
                    instances = snap.instance_count(),
                    "registry file reloaded"
                );
                metrics.source_loaded("file");
                st.served = Some(bytes);
                st.served_services = snap.service_count();
                tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&snap) {
                        false
                    } else {
                        *cur = Some(Arc::new(snap));
                        true
                    }
                });
            }
            Err(e) => {
                failing = true;
                metrics.source_error("file");
                tracing::error!(error = %e, "registry file edit rejected; still serving the last good version");
            }
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use std::time::{Duration, Instant};

    use super::{Verdict, WatchState};

    fn state(served: &str, services: usize) -> WatchState {
        WatchState {
            served: Some(served.as_bytes().to_vec()),
            served_services: services,
            seen: Some(served.as_bytes().to_vec()),
            cut_since: None,
        }
    }

    #[test]
    fn served_and_already_seen_versions_are_unchanged() {
        let mut st = state("namespaces: [a]\n", 1);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        assert_eq!(st.judge(b"namespaces: [a]\n", now, hold), Verdict::Unchanged);
        assert_eq!(st.judge(b"namespaces: [b]\n", now, hold), Verdict::Apply);
        // A broken version is looked at once.
        assert_eq!(st.judge(b"namespaces: [b]\n", now, hold), Verdict::Unchanged);
    }

    #[test]
    fn an_empty_file_never_replaces_served_services() {
        let mut st = state("namespaces: [a]\n", 1);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        assert_eq!(st.judge(b"", now, hold), Verdict::Empty);
        assert_eq!(st.judge(b"", now + hold * 10, hold), Verdict::Unchanged, "never applied");
        assert_eq!(st.judge(b" \n", now, hold), Verdict::Empty);
        // Nothing served: an empty file is harmless.
        let mut st = state("namespaces: []\n", 0);
        assert_eq!(st.judge(b"", now, hold), Verdict::Apply);
    }

    #[test]
    fn a_cut_off_copy_is_held_until_it_stays() {
        let full = "namespaces:\n  - name: a\n    type: HTTP\n  - name: b\n    type: HTTP\n";
        let mut st = state(full, 2);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        let cut = &full.as_bytes()[..25];
        assert_eq!(st.judge(cut, now, hold), Verdict::CutOff);
        assert_eq!(st.judge(cut, now + Duration::from_secs(1), hold), Verdict::Unchanged);
        assert_eq!(st.judge(cut, now + hold, hold), Verdict::ApplyCutOff);
        // Restored before the hold ends: back to the served version, nothing applied.
        let mut st = state(full, 2);
        assert_eq!(st.judge(cut, now, hold), Verdict::CutOff);
        assert_eq!(st.judge(full.as_bytes(), now + Duration::from_secs(1), hold), Verdict::Unchanged);
        assert_eq!(st.cut_since, None);
        // A different cut restarts the hold.
        assert_eq!(st.judge(cut, now, hold), Verdict::CutOff);
        assert_eq!(st.judge(&full.as_bytes()[..30], now + Duration::from_secs(4), hold), Verdict::CutOff);
        assert_eq!(st.judge(&full.as_bytes()[..30], now + Duration::from_secs(6), hold), Verdict::Unchanged);
        // A longer file or a different one is an ordinary edit.
        assert_eq!(st.judge(format!("{full}  - name: c\n    type: HTTP\n").as_bytes(), now, hold), Verdict::Apply);
    }
}

#[cfg(test)]
mod nesting_tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::{flow_nesting_beyond, parse, MAX_FLOW_NESTING};

    #[test]
    fn deep_flow_nesting_is_refused_quickly_with_its_position() {
        // Found by the registry_file fuzz corpus: 50,000 nested `[` (100 KB) kept the YAML parser
        // busy for minutes; now it is refused before parsing.
        let text = format!("namespaces: {}{}", "[".repeat(50_000), "]".repeat(50_000));
        let t0 = Instant::now();
        let err = parse(Path::new("deep.yaml"), &text).unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(err.contains("deep.yaml") && err.contains("line 1 column 269") && err.contains("nested deeper than 256"), "{err}");
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count() {
        let many = "[".repeat(MAX_FLOW_NESTING + 10);
        for text in [
            format!("a: \"{many}\"\n"),
            format!("a: '{many}'\n"),
            format!("# {many}\na: 1\n"),
            format!("a: \"x\\\"{many}\"\n"),
            format!("a: 1 # {many}\n"),
        ] {
            assert_eq!(flow_nesting_beyond(&text, MAX_FLOW_NESTING), None, "{text:?}");
        }
        // Balanced brackets in plain scalars cost nothing; real nesting counts.
        assert_eq!(flow_nesting_beyond(&"a: x[1] y[2]\n".repeat(1000), 2), None);
        assert_eq!(flow_nesting_beyond("a: [[[1]]]\n", 2), Some((1, 6)));
        // The example registry and the test data are far from the limit.
        let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/registry.yaml")).unwrap();
        assert_eq!(flow_nesting_beyond(&example, 2), None);
    }
}
