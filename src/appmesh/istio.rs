//! The Istio objects App Mesh translates to, the migration report, and their kubectl YAML.
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// Annotation naming the App Mesh object(s) an Istio object came from.
pub const SOURCE_ANNOTATION: &str = "cloudmap-mcp/appmesh-source";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Gateway,
    DestinationRule,
    VirtualService,
    Sidecar,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Sidecar => "Sidecar",
        }
    }
}

/// One Istio object (`networking.istio.io/v1`); `spec` in the CRD's JSON shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
}

impl Object {
    /// The MCP resource name, `<namespace>/<name>`.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Translated,
    Approximated,
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Translated => "translated",
            Outcome::Approximated => "approximated",
            Outcome::Dropped => "dropped",
        }
    }
}

/// What happened to one App Mesh object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ReportEntry {
    /// `VirtualNode`, `Route`, ...
    pub kind: String,
    /// App Mesh name (`router/route` for routes, `gateway/route` for gateway routes).
    pub name: String,
    pub outcome: Outcome,
    /// Why it was approximated or dropped, and what a user must know.
    pub reasons: Vec<String>,
}

/// Kubernetes-style YAML of `v` at `indent` (JSON strings are valid YAML double-quoted scalars).
fn yaml_value(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let _ = write!(out, "\n{pad}{}:", scalar(&Value::String(k.clone())));
                yaml_value(out, v, indent + 2);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for v in a {
                let _ = write!(out, "\n{pad}-");
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        let mut s = String::new();
                        yaml_value(&mut s, v, indent + 2);
                        // The first key goes on the dash's line.
                        out.push(' ');
                        out.push_str(s.trim_start_matches('\n').trim_start());
                    }
                    _ => yaml_value(out, v, indent + 2),
                }
            }
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(v));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
                && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~")
                && s.parse::<f64>().is_err()
                && !s.starts_with(|c: char| c.is_ascii_digit());
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// The objects as multi-document YAML for `kubectl apply -f -`, with the report as comments.
pub fn yaml(objects: &[Object], report: &[ReportEntry]) -> String {
    let mut out = String::from("# App Mesh migration report (cloudmap-mcp):\n");
    for r in report {
        let _ = writeln!(out, "#   {} {}: {}", r.kind, r.name, r.outcome.as_str());
        for reason in &r.reasons {
            let _ = writeln!(out, "#     - {}", crate::util::escape_control(reason).replace('\n', " "));
        }
    }
    for o in objects {
        let meta = serde_json::json!({"name": o.name, "namespace": o.namespace, "annotations": o.annotations});
        out.push_str("---\napiVersion: networking.istio.io/v1\nkind: ");
        out.push_str(o.kind.as_str());
        out.push_str("\nmetadata:");
        yaml_value(&mut out, &meta, 2);
        out.push_str("\nspec:");
        yaml_value(&mut out, &o.spec, 2);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_same_json() {
        let spec = serde_json::json!({"hosts": ["a.b", "*.c"], "http": [{"match": [{"uri": {"prefix": "/"}}], "route": [{"destination": {"host": "x", "port": {"number": 8080}}, "weight": 1}], "timeout": "15s", "retries": {"retryOn": "5xx,gateway-error"}}], "empty": {}, "n": "10", "t": "true"});
        let o = Object {
            kind: Kind::VirtualService,
            name: "n".into(),
            namespace: "istio-system".into(),
            annotations: BTreeMap::from([(SOURCE_ANNOTATION.into(), "VirtualService a: b".into())]),
            spec: spec.clone(),
        };
        let text = yaml(&[o], &[]);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        assert_eq!(docs[0]["spec"], spec, "{text}");
        assert_eq!(docs[0]["metadata"]["annotations"][SOURCE_ANNOTATION], "VirtualService a: b");
    }
}
