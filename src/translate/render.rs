//! ServiceEntries as Kubernetes objects (`networking.istio.io/v1`), for `render` and the debug view.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::util::escape_control;

use super::{Note, NoteKind, Rejection, ServiceEntry, ServiceEntrySpec, Translation};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta<'a>,
    spec: &'a ServiceEntrySpec,
}

#[derive(Serialize)]
struct Meta<'a> {
    name: &'a str,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
}

/// What the output shows of one ServiceEntry: its metadata and spec. Made from a translated
/// [`ServiceEntry`], or from a served entry read back from its encoding (the debug view).
#[derive(Clone, Copy)]
pub struct Shown<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub spec: &'a ServiceEntrySpec,
}

impl<'a> From<&'a ServiceEntry> for Shown<'a> {
    fn from(se: &'a ServiceEntry) -> Self {
        Shown { name: &se.name, namespace: &se.namespace, labels: &se.labels, annotations: &se.annotations, spec: &se.spec }
    }
}

fn object(s: Shown<'_>) -> Object<'_> {
    Object {
        api_version: "networking.istio.io/v1",
        kind: "ServiceEntry",
        metadata: Meta { name: s.name, namespace: s.namespace, labels: s.labels, annotations: s.annotations },
        spec: s.spec,
    }
}

/// Output formats of `render`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

/// Multi-document YAML, one ServiceEntry per document: input for `kubectl apply -f -`.
pub fn yaml(entries: &[ServiceEntry]) -> String {
    let mut out = String::new();
    for se in entries {
        yaml_document(se.into(), &mut out);
    }
    out
}

/// Appends one document of [`yaml`] to `out`.
pub fn yaml_document(s: Shown<'_>, out: &mut String) {
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&object(s)).expect("ServiceEntry serializes"));
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<Object<'a>>,
}

/// A Kubernetes `List` of the ServiceEntries as JSON. Serialized straight from the entries (no
/// intermediate JSON tree: at 10,000 services that tree is several times the output).
pub fn json(entries: &[ServiceEntry]) -> String {
    let list = List { api_version: "v1", kind: "List", items: entries.iter().map(|se| object(se.into())).collect() };
    serde_json::to_string_pretty(&list).expect("ServiceEntry serializes") + "\n"
}

/// [`json`] piece by piece, for output written as it is made: [`JSON_LIST_HEAD`], then
/// [`json_item`] for each entry, then [`json_list_tail`] give exactly the bytes of [`json`].
pub const JSON_LIST_HEAD: &str = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\",\n  \"items\": [";

/// Appends one item of the list (`first`: the list's first item) to `out`, indented as
/// `to_string_pretty` indents it inside the list. A JSON string never holds a raw line break, so
/// indenting line by line cannot touch a value.
pub fn json_item(s: Shown<'_>, first: bool, out: &mut String) {
    out.push_str(if first { "\n" } else { ",\n" });
    let item = serde_json::to_string_pretty(&object(s)).expect("ServiceEntry serializes");
    for (i, line) in item.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("    ");
        out.push_str(line);
    }
}

/// Appends the end of the list (`empty`: no item was written).
pub fn json_list_tail(empty: bool, out: &mut String) {
    out.push_str(if empty { "]\n}\n" } else { "\n  ]\n}\n" });
}

pub fn render(entries: &[ServiceEntry], format: Format) -> String {
    match format {
        Format::Yaml => yaml(entries),
        Format::Json => json(entries),
    }
}

/// YAML comment lines listing what was left out, appended by `render` and the debug view. Names,
/// ids and reasons come from the registry: control characters are escaped, so each stays one
/// comment line and the YAML around it still parses.
pub fn report_comments(t: &Translation) -> String {
    comments(&t.rejected, &t.notes)
}

/// [`report_comments`] of the services left out and the notes (as a resource snapshot keeps them).
pub fn comments(rejected: &[Rejection], notes: &[Note]) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str("# ");
        out.push_str(&escape_control(&text));
        out.push('\n');
    };
    for r in rejected {
        line(format!("rejected {}: {}", r.source, r.reason));
    }
    for n in notes {
        match (&n.instance, n.kind) {
            (Some(i), NoteKind::SkippedInstance) => line(format!("skipped instance {} of {}: {}", i, n.source, n.message)),
            (Some(i), _) => line(format!("note on instance {} of {}: {}", i, n.source, n.message)),
            (None, _) => line(format!("note on {}: {}", n.source, n.message)),
        }
    }
    out
}
