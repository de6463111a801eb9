//! ServiceEntries as Kubernetes objects (`networking.istio.io/v1`), for `render` and the debug view.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::util::escape_control;

use super::{NoteKind, ServiceEntry, ServiceEntrySpec, Translation};

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

fn object(se: &ServiceEntry) -> Object<'_> {
    Object {
        api_version: "networking.istio.io/v1",
        kind: "ServiceEntry",
        metadata: Meta { name: &se.name, namespace: &se.namespace, labels: &se.labels, annotations: &se.annotations },
        spec: &se.spec,
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
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&object(se)).expect("ServiceEntry serializes"));
    }
    out
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
    let list = List { api_version: "v1", kind: "List", items: entries.iter().map(object).collect() };
    serde_json::to_string_pretty(&list).expect("ServiceEntry serializes") + "\n"
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
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str("# ");
        out.push_str(&escape_control(&text));
        out.push('\n');
    };
    for r in &t.rejected {
        line(format!("rejected {}: {}", r.source, r.reason));
    }
    for n in &t.notes {
        match (&n.instance, n.kind) {
            (Some(i), NoteKind::SkippedInstance) => line(format!("skipped instance {} of {}: {}", i, n.source, n.message)),
            (Some(i), _) => line(format!("note on instance {} of {}: {}", i, n.source, n.message)),
            (None, _) => line(format!("note on {}: {}", n.source, n.message)),
        }
    }
    out
}
