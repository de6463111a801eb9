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

use serde::Deserialize;

use crate::model::{self, HealthStatus, NamespaceType, Timestamp};

mod budget;
mod watch;

use budget::Counted;
pub use budget::{Limits, DEFAULT_MAX_BYTES, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_SERVICES};
pub use watch::{cut_off_hold, registry, settle_time, watch, watch_file, Stamp, Watched};

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read registry file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("registry file {path}: {at}: {message}")]
    Invalid { path: PathBuf, at: String, message: String },
    #[error("registry file {path} is {bytes} bytes, over the {max}-byte cap (--registry-max-bytes)")]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    #[serde(default, deserialize_with = "budget::seq")]
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
    #[serde(default, deserialize_with = "budget::seq")]
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
    #[serde(default, deserialize_with = "budget::seq")]
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

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

impl Counted for FileNamespace {
    const ITEM: budget::Item = budget::Item::Namespace;
    fn string_bytes(&self) -> usize {
        self.name.len() + opt_len(&self.id) + opt_len(&self.arn) + opt_len(&self.http_name)
    }
}

impl Counted for FileService {
    const ITEM: budget::Item = budget::Item::Service;
    fn string_bytes(&self) -> usize {
        self.name.len() + opt_len(&self.id) + opt_len(&self.arn) + opt_len(&self.create_date)
    }
}

impl Counted for FileInstance {
    const ITEM: budget::Item = budget::Item::Instance;
    fn string_bytes(&self) -> usize {
        self.id.len()
    }
}

/// Attribute values are strings in Cloud Map; accept YAML numbers and booleans too (`AWS_INSTANCE_PORT: 8080`).
/// Each entry is charged against the parse's budget as it is read (a later duplicate key wins).
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of attribute names to strings, numbers or booleans")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, Scalar>()? {
                let v = match v {
                    Scalar::S(s) => s,
                    Scalar::I(i) => i.to_string(),
                    Scalar::F(f) => f.to_string(),
                    Scalar::B(b) => b.to_string(),
                };
                budget::charge_bytes::<A::Error>(k.len() + v.len())?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
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

/// Parses registry file contents with the default [`Limits`]. `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<model::Snapshot, RegistryFileError> {
    parse_with(path, text, &Limits::default())
}

/// Parses registry file contents; services and instances beyond `limits` (counted after alias
/// expansion, while deserializing) make it fail. `path` is only used in error messages.
pub fn parse_with(path: &Path, text: &str, limits: &Limits) -> Result<model::Snapshot, RegistryFileError> {
    let path_buf = || path.to_path_buf();
    if text.len() as u64 > limits.max_bytes {
        return Err(RegistryFileError::TooLarge { path: path_buf(), bytes: text.len() as u64, max: limits.max_bytes });
    }
    if let Some((line, column)) = flow_nesting_beyond(text, MAX_FLOW_NESTING) {
        return Err(RegistryFileError::Parse {
            path: path_buf(),
            message: format!("line {line} column {column}: flow collections ([ ] {{ }}) nested deeper than {MAX_FLOW_NESTING}"),
        });
    }
    let file: FileRegistry = if text.trim().is_empty() {
        FileRegistry { namespaces: Vec::new() }
    } else {
        budget::with_budget(*limits, text.len(), || serde_yaml::from_str(text))
            // The parser quotes pieces of the file (unknown keys) unescaped: keep the message on one line.
            .map_err(|e| RegistryFileError::Parse { path: path_buf(), message: crate::util::escape_control(&e.to_string()).into_owned() })?
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

/// Reads and parses the file with the default [`Limits`].
pub fn load(path: &Path) -> Result<model::Snapshot, RegistryFileError> {
    load_with(path, &Limits::default())
}

/// Reads and parses the file; a file over `limits.max_bytes` is refused before it is read.
pub fn load_with(path: &Path, limits: &Limits) -> Result<model::Snapshot, RegistryFileError> {
    let bytes = read_capped(path, limits.max_bytes)?;
    parse_bytes(path, &bytes, limits)
}

/// Reads at most `max` bytes of the file: a larger file (or one that grows past `max` while it is
/// read) is an error, and never more than `max + 1` bytes are held.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, RegistryFileError> {
    use std::io::Read;
    let io = |source| RegistryFileError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(RegistryFileError::TooLarge { path: path.to_path_buf(), bytes: len, max });
    }
    let mut bytes = Vec::with_capacity(len as usize + 1);
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(RegistryFileError::TooLarge { path: path.to_path_buf(), bytes: bytes.len() as u64, max });
    }
    Ok(bytes)
}

/// Parses file bytes; invalid UTF-8 is read lossily (replacement characters), valid UTF-8 is
/// parsed in place without a copy.
pub fn parse_bytes(path: &Path, bytes: &[u8], limits: &Limits) -> Result<model::Snapshot, RegistryFileError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_with(path, text, limits),
        Err(_) => parse_with(path, &String::from_utf8_lossy(bytes), limits),
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
