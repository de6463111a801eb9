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
mod chunks;
mod notify;
mod previous;
mod watch;

use budget::Counted;
/// The registry file's formats. JSON is YAML too, but a JSON parser reads it several times faster
/// (measured in BENCHMARKS.md), so contents that are a JSON object are read as JSON.
use chunks::Syntax as Format;
pub use budget::{Limits, DEFAULT_MAX_BYTES, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_SERVICES};
pub use chunks::Memo;
pub use watch::{cut_off_hold, registry, settle_time, watch, watch_file, ParseFn, Problem, Stamp, Watched};

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

// The file's types borrow strings from the file where the parser allows it (instances: most of
// the file): a service that turns out unchanged is dropped without its strings ever having been
// copied.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry<'a> {
    #[serde(default, borrow, deserialize_with = "budget::seq")]
    namespaces: Vec<FileNamespace<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileNamespace<'a> {
    name: String,
    #[serde(rename = "type")]
    kind: NamespaceType,
    id: Option<String>,
    arn: Option<String>,
    http_name: Option<String>,
    #[serde(default, borrow, deserialize_with = "budget::seq")]
    services: Vec<ParsedService<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileService<'a> {
    name: String,
    id: Option<String>,
    arn: Option<String>,
    create_date: Option<String>,
    /// Service-level attributes (Cloud Map's per-service attributes).
    #[serde(default, borrow, deserialize_with = "scalar_map")]
    attributes: BTreeMap<Text<'a>, Text<'a>>,
    #[serde(default, borrow, deserialize_with = "budget::seq")]
    instances: Vec<FileInstance<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileInstance<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(default, borrow, deserialize_with = "scalar_map")]
    attributes: BTreeMap<Text<'a>, Text<'a>>,
    health_status: Option<HealthStatus>,
}

/// A string of the file: borrowed where the parser can hand out a slice of the file (no escapes),
/// else owned.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(std::borrow::Cow<'a, str>);

impl Text<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn trim(&self) -> &str {
        self.0.trim()
    }
    fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Whether a map of the file holds exactly the entries of a model map.
fn same_map(model: &BTreeMap<String, String>, file: &BTreeMap<Text<'_>, Text<'_>>) -> bool {
    model.len() == file.len() && model.iter().zip(file).all(|((k, v), (fk, fv))| **k == **fk && **v == **fv)
}

fn into_strings(map: BTreeMap<Text<'_>, Text<'_>>) -> BTreeMap<String, String> {
    map.into_iter().map(|(k, v)| (k.into_string(), v.into_string())).collect()
}

/// Visits a string, and with `SCALARS` also a number or boolean as it prints.
struct TextVisitor<const SCALARS: bool>;

impl<'de, const SCALARS: bool> serde::de::Visitor<'de> for TextVisitor<SCALARS> {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(if SCALARS { "a string, number or boolean" } else { "a string" })
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(v.into()))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(v.to_owned().into()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
        Ok(Text(v.into()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text<'de>, E> {
        self.scalar(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text<'de>, E> {
        self.scalar(v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text<'de>, E> {
        self.scalar(v)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text<'de>, E> {
        self.scalar(v)
    }
}

impl<const SCALARS: bool> TextVisitor<SCALARS> {
    fn scalar<'de, E: serde::de::Error>(self, v: impl std::fmt::Display) -> Result<Text<'de>, E> {
        if SCALARS {
            Ok(Text(v.to_string().into()))
        } else {
            Err(E::invalid_type(serde::de::Unexpected::Other(&v.to_string()), &self))
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor::<false>)
    }
}

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

impl Counted for FileNamespace<'_> {
    const ITEM: budget::Item = budget::Item::Namespace;
    fn string_bytes(&self) -> usize {
        self.name.len() + opt_len(&self.id) + opt_len(&self.arn) + opt_len(&self.http_name)
    }
}

impl FileService<'_> {
    fn string_bytes(&self) -> usize {
        self.name.len() + opt_len(&self.id) + opt_len(&self.arn) + opt_len(&self.create_date)
    }
}

/// A service as read from the file, or, when it equals a service of the snapshot served before
/// this parse (see [`parse_after`]), that service's `Arc`: the copy just read is freed at once, so
/// re-reading a large file holds one new service at a time instead of a whole second model.
enum ParsedService<'a> {
    Read(FileService<'a>),
    Shared { svc: Arc<model::Service>, string_bytes: usize },
    /// A placeholder of a shortened document (see [`chunks`]): the services of that many unchanged
    /// items of the file, taken as they were.
    Unchanged(Vec<Arc<model::Service>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ParsedService<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let svc = FileService::deserialize(d)?;
        if let Some(taken) = previous::placeholder(&svc.name) {
            let run = taken.map_err(<D::Error as serde::de::Error>::custom)?;
            budget::charge_instances::<D::Error>(run.iter().map(|s| s.instances.len()).sum())?;
            return Ok(ParsedService::Unchanged(run));
        }
        Ok(match previous::find(&svc) {
            Some(shared) => ParsedService::Shared { svc: shared, string_bytes: svc.string_bytes() },
            None => ParsedService::Read(svc),
        })
    }
}

impl Counted for ParsedService<'_> {
    const ITEM: budget::Item = budget::Item::Service;
    fn count(&self) -> usize {
        match self {
            ParsedService::Unchanged(run) => run.len(),
            _ => 1,
        }
    }
    fn string_bytes(&self) -> usize {
        match self {
            ParsedService::Read(s) => s.string_bytes(),
            ParsedService::Shared { string_bytes, .. } => *string_bytes,
            // Counted when they were read.
            ParsedService::Unchanged(_) => 0,
        }
    }
}

impl Counted for FileInstance<'_> {
    const ITEM: budget::Item = budget::Item::Instance;
    fn string_bytes(&self) -> usize {
        self.id.len()
    }
}

/// Attribute values are strings in Cloud Map; accept YAML/JSON numbers and booleans too
/// (`AWS_INSTANCE_PORT: 8080`). Each entry is charged against the parse's budget as it is read (a
/// later duplicate key wins).
fn scalar_map<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<Text<'a>, Text<'a>>, D::Error> {
    struct Scalar<'a>(Text<'a>);
    impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TextVisitor::<true>).map(Scalar)
        }
    }
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<Text<'de>, Text<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of attribute names to strings, numbers or booleans")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, Scalar(v))) = map.next_entry::<Text<'de>, Scalar<'de>>()? {
                budget::charge_bytes::<A::Error>(k.len() + v.len())?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

pub use crate::util::MAX_FLOW_NESTING;
pub(crate) use crate::util::flow_nesting_beyond;
pub use crate::util::fs::open_regular;
use crate::util::fs::ReadError;

/// Parses registry file contents with the default [`Limits`]. `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<model::Snapshot, RegistryFileError> {
    parse_with(path, text, &Limits::default())
}

/// Parses registry file contents; services and instances beyond `limits` (counted after alias
/// expansion, while deserializing) make it fail. `path` is only used in error messages.
pub fn parse_with(path: &Path, text: &str, limits: &Limits) -> Result<model::Snapshot, RegistryFileError> {
    parse_after(path, text, limits, None)
}

/// Like [`parse_with`]; every service that equals one of `previous` (the snapshot served so far) is
/// that service's `Arc` in the result, shared as soon as it has been read.
pub fn parse_after(
    path: &Path,
    text: &str,
    limits: &Limits,
    previous: Option<&model::Snapshot>,
) -> Result<model::Snapshot, RegistryFileError> {
    parse_inner(path, text, limits, previous, None)
}

/// Like [`parse_after`], for a file read again and again: `memo` remembers which service each piece
/// of the file's text (YAML or JSON) was read from, so that the next version parses only the pieces that
/// changed (see [`chunks`]). The result is the same as [`parse_after`]'s. `memo` must be the one
/// given with `previous`'s own parse; a parse that fails leaves it as it was.
pub fn parse_remembering(
    path: &Path,
    text: &str,
    limits: &Limits,
    previous: Option<&model::Snapshot>,
    memo: &mut Memo,
) -> Result<model::Snapshot, RegistryFileError> {
    parse_inner(path, text, limits, previous, Some(memo))
}

fn parse_inner(
    path: &Path,
    text: &str,
    limits: &Limits,
    previous: Option<&model::Snapshot>,
    memo: Option<&mut Memo>,
) -> Result<model::Snapshot, RegistryFileError> {
    if text.len() as u64 > limits.max_bytes {
        return Err(RegistryFileError::TooLarge { path: path.to_path_buf(), bytes: text.len() as u64, max: limits.max_bytes });
    }
    let body = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    let Some(memo) = memo else {
        return Ok(build(path, read(path, text, body, limits, previous)?.0)?.snap);
    };
    let split = chunks::split(text);
    if let Some((split, known)) = split.as_ref().and_then(|s| Some((s, memo.usable_for(s)?))) {
        if let Some(built) = parse_shortened(path, text, limits, previous, split, known) {
            memo.remember(text, split, &built.order, &built.counts);
            memo.shortened = true;
            return Ok(built.snap);
        }
    }
    let (file, format) = read(path, text, body, limits, previous)?;
    let built = build(path, file)?;
    match &split {
        // Text that looks like JSON but was read as YAML (flow style): its pieces would not be
        // read by the same parser next time.
        Some(split) if split.syntax() == format => memo.remember(text, split, &built.order, &built.counts),
        _ => memo.forget(),
    }
    memo.shortened = false;
    Ok(built.snap)
}

/// The file with the services `known` holds replaced by placeholders, parsed and checked; `None` if
/// that cannot stand for parsing the file (see [`chunks`]): any error is left for the whole parse
/// to report with the file's positions.
fn parse_shortened(
    path: &Path,
    text: &str,
    limits: &Limits,
    previous: Option<&model::Snapshot>,
    split: &chunks::Split,
    known: &std::collections::HashMap<u128, Arc<model::Service>>,
) -> Option<Built> {
    let prefix = chunks::placeholder_prefix();
    let short = split.shorten(text, known, &prefix)?;
    let count = short.runs.len();
    let unchanged: usize = short.runs.iter().map(Vec::len).sum();
    let file = {
        let _previous = previous::Scope::with_placeholders(previous, prefix, short.runs);
        let file = match split.syntax() {
            chunks::Syntax::Yaml => parse_yaml(&short.text, limits),
            chunks::Syntax::Json => {
                budget::with_budget(*limits, short.text.len(), || serde_json::from_str::<FileRegistry>(&short.text))
                    .map_err(|e| e.to_string())
            }
        };
        let all_taken = previous::placeholders_taken() == count;
        file.ok().filter(|_| all_taken)?
    };
    let built = build(path, file).ok()?;
    tracing::debug!(
        path = %path.display(),
        parsed_bytes = short.text.len(),
        file_bytes = text.len(),
        unchanged_services = unchanged,
        "registry file: parsed only the services that changed"
    );
    Some(built)
}

/// Reads the file's contents (`body`: `text` after leading blanks) into the file's types.
fn read<'a>(
    path: &Path,
    text: &'a str,
    body: &'a str,
    limits: &Limits,
    previous: Option<&model::Snapshot>,
) -> Result<(FileRegistry<'a>, Format), RegistryFileError> {
    if body.is_empty() {
        return Ok((FileRegistry { namespaces: Vec::new() }, Format::Yaml));
    }
    let _previous = previous::Scope::new(previous);
    let parsed = if body.starts_with('{') {
        // A JSON object; anything JSON cannot read at all (YAML flow style: `{namespaces: []}`)
        // is read as YAML, which reports its own errors.
        match budget::with_budget(*limits, text.len(), || serde_json::from_str::<FileRegistry>(body)) {
            Err(e) if e.is_syntax() || e.is_eof() => None,
            r => Some(r.map(|f| (f, Format::Json)).map_err(|e| (Format::Json, e.to_string()))),
        }
    } else {
        None
    };
    parsed
        .unwrap_or_else(|| parse_yaml(text, limits).map(|f| (f, Format::Yaml)).map_err(|e| (Format::Yaml, e)))
        // Parsers quote pieces of the file (unknown keys) unescaped: keep the message on one line.
        .map_err(|(format, e)| RegistryFileError::Parse {
            path: path.to_path_buf(),
            message: match format {
                Format::Json => format!("(JSON) {}", crate::util::escape_control(&e)),
                Format::Yaml => crate::util::escape_control(&e).into_owned(),
            },
        })
}

/// A parse's result, with what [`Memo`] pairs with the file's text.
struct Built {
    snap: model::Snapshot,
    /// The services in file order.
    order: Vec<Arc<model::Service>>,
    /// Services of each namespace that has any, in file order.
    counts: Vec<usize>,
}

/// Checks what was read and builds the snapshot.
fn build(path: &Path, file: FileRegistry<'_>) -> Result<Built, RegistryFileError> {
    let invalid = |at: String, message: String| RegistryFileError::Invalid { path: path.to_path_buf(), at, message };

    let mut order = Vec::new();
    let mut counts = Vec::new();
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
        for (si, parsed) in ns.services.into_iter().enumerate() {
            let mut check = |name: &str| {
                let svc_at = || format!("{at}.services[{si}] ({name:?})");
                if name.trim().is_empty() {
                    return Err(invalid(svc_at(), "service name is empty".into()));
                }
                if !seen_svc.insert(name.to_owned()) {
                    return Err(invalid(svc_at(), "service name appears twice in this namespace".into()));
                }
                Ok(())
            };
            let svc = match parsed {
                ParsedService::Read(svc) => {
                    check(&svc.name)?;
                    svc
                }
                ParsedService::Shared { svc, .. } => {
                    check(&svc.name)?;
                    order.push(svc.clone());
                    services.push(svc);
                    continue;
                }
                ParsedService::Unchanged(run) => {
                    for svc in &run {
                        check(&svc.name)?;
                    }
                    order.extend(run.iter().cloned());
                    services.extend(run);
                    continue;
                }
            };
            let at = format!("{at}.services[{si}] ({:?})", svc.name);
            let create_date =
                match &svc.create_date {
                    None => None,
                    Some(d) => Some(Timestamp::parse_rfc3339(d).map_err(|e| {
                        invalid(at.clone(), format!("createDate {d:?} is not an RFC 3339 date-time: {e}"))
                    })?),
                };
            let mut seen_inst = HashSet::new();
            let mut instances = Vec::with_capacity(svc.instances.len());
            for (ii, inst) in svc.instances.into_iter().enumerate() {
                if inst.id.trim().is_empty() {
                    return Err(invalid(format!("{at}.instances[{ii}]"), "instance id is empty".into()));
                }
                if !seen_inst.insert(inst.id.to_string()) {
                    return Err(invalid(
                        format!("{at}.instances[{ii}] ({:?})", &*inst.id),
                        "instance id appears twice in this service".into(),
                    ));
                }
                instances.push(model::Instance {
                    id: inst.id.into_string(),
                    attributes: into_strings(inst.attributes),
                    health: inst.health_status.unwrap_or_default(),
                });
            }
            // In the snapshot's order already: the snapshot is then only sorted by service, and keeps
            // this `Arc` (the one `order` holds).
            if !instances.is_sorted_by(|a, b| a.id <= b.id) {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
            }
            let svc = Arc::new(model::Service {
                name: svc.name,
                id: svc.id,
                arn: svc.arn,
                create_date,
                attributes: into_strings(svc.attributes),
                instances: instances.into(),
            });
            order.push(svc.clone());
            services.push(svc);
        }
        if !services.is_empty() {
            counts.push(services.len());
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
    // Each service's instances are in order: sorted above, or a served service's.
    snap.sort_services();
    Ok(Built { snap, order, counts })
}

/// Deserializes YAML with the budget of `limits`, streaming: the parser's events feed the
/// deserializer as they are produced, so nothing of the document is held beyond what is built.
fn parse_yaml<'a>(text: &'a str, limits: &Limits) -> Result<FileRegistry<'a>, String> {
    if let Some((line, column)) = flow_nesting_beyond(text, MAX_FLOW_NESTING) {
        return Err(format!(
            "line {line} column {column}: flow collections ([ ] {{ }}) nested deeper than {MAX_FLOW_NESTING}"
        ));
    }
    let options = serde_saphyr::options! {
        // Sizes are bounded by `limits` (counted after alias expansion, see `budget`) and the
        // file size cap; the parser's own budget keeps its alias and depth guards.
        budget: serde_saphyr::budget! {
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: usize::MAX,
            max_reader_input_bytes: None,
            flow_nesting_limit: MAX_FLOW_NESTING,
        },
        // As YAML 1.2 (and serde_yaml) read them: `yes`, `0755` and `1_000` are strings.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // A repeated field is an error, a repeated attribute keeps its last value.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // One-line messages with the position; the log escapes the rest.
        with_snippet: false,
    };
    budget::with_budget(*limits, text.len(), || serde_saphyr::from_str_with_options::<FileRegistry>(text, options))
        .map_err(|e| {
            let message = e.to_string();
            // The parser's own guard (anchored nodes copied for their aliases, nesting; the error
            // may come wrapped with the alias's position): named as the cap it is.
            if message.starts_with("budget breached") || message.starts_with("alias replay limit exceeded") {
                format!("registry too large: YAML aliases or nesting exceed the parser's limits: {message}")
            } else {
                message
            }
        })
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
    crate::util::fs::read_capped(path, max).map_err(|e| match e {
        ReadError::Io(source) => RegistryFileError::Io { path: path.to_path_buf(), source },
        ReadError::TooLarge { bytes, max } => RegistryFileError::TooLarge { path: path.to_path_buf(), bytes, max },
    })
}

/// Parses file bytes; invalid UTF-8 is read lossily (replacement characters), valid UTF-8 is
/// parsed in place without a copy.
pub fn parse_bytes(path: &Path, bytes: &[u8], limits: &Limits) -> Result<model::Snapshot, RegistryFileError> {
    parse_bytes_after(path, bytes, limits, None)
}

/// [`parse_bytes`] sharing unchanged services with `previous` (see [`parse_after`]).
pub fn parse_bytes_after(
    path: &Path,
    bytes: &[u8],
    limits: &Limits,
    previous: Option<&model::Snapshot>,
) -> Result<model::Snapshot, RegistryFileError> {
    with_text(bytes, |text| parse_after(path, text, limits, previous))
}

/// [`parse_bytes`] as [`parse_remembering`] does it.
pub fn parse_bytes_remembering(
    path: &Path,
    bytes: &[u8],
    limits: &Limits,
    previous: Option<&model::Snapshot>,
    memo: &mut Memo,
) -> Result<model::Snapshot, RegistryFileError> {
    with_text(bytes, |text| parse_remembering(path, text, limits, previous, memo))
}

/// Valid UTF-8 in place, anything else read lossily (replacement characters).
fn with_text<T>(bytes: &[u8], f: impl FnOnce(&str) -> T) -> T {
    match std::str::from_utf8(bytes) {
        Ok(text) => f(text),
        Err(_) => f(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod remembering_tests;

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
        assert!(
            err.contains("deep.yaml") && err.contains("line 1 column 269") && err.contains("nested deeper than 256"),
            "{err}"
        );
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
