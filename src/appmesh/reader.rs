//! Reading one mapping of a loaded document field by field, in the spelling of its form
//! (camelCase for CRs and CLI JSON, PascalCase for CloudFormation, snake_case with nested blocks as
//! one-element lists for Terraform), and failing on any field left unread.
use std::borrow::Cow;
use std::path::PathBuf;

use super::node::{Node, Pos, Value};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read App Mesh file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("App Mesh file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("App Mesh file {path}: {pos}: {message}")]
    Invalid { path: PathBuf, pos: Pos, message: String },
    #[error("App Mesh file {path} is {bytes} bytes, over the {max}-byte cap")]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
}

/// The four forms App Mesh configuration survives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Kubernetes CRs `appmesh.k8s.aws/v1beta2`.
    K8s,
    /// CloudFormation `AWS::AppMesh::*`.
    Cfn,
    /// `terraform show -json`.
    Tf,
    /// `aws appmesh describe-*` output and `--cli-input-json` inputs.
    Cli,
}

/// Resolves a CloudFormation intrinsic (`!Ref`, `!GetAtt`, `!Sub`, their long forms) to text.
pub type Intrinsics<'a> = &'a dyn Fn(&Node) -> Result<Option<String>, String>;

pub struct Ctx<'a> {
    pub path: &'a std::path::Path,
    pub dialect: Dialect,
    pub intrinsics: Option<Intrinsics<'a>>,
    /// A CR's namespace: the default namespace of its `*Ref`s.
    pub k8s_namespace: String,
}

impl Ctx<'_> {
    pub fn err(&self, pos: Pos, message: impl Into<String>) -> LoadError {
        LoadError::Invalid { path: self.path.to_path_buf(), pos, message: message.into() }
    }

    /// The spelling of an API (camelCase) field name in this form.
    pub fn key<'k>(&self, api: &'k str) -> Cow<'k, str> {
        match self.dialect {
            Dialect::K8s | Dialect::Cli => Cow::Borrowed(api),
            Dialect::Cfn => Cow::Owned(pascal(api)),
            Dialect::Tf => Cow::Owned(snake(api)),
        }
    }

    fn absent(&self, n: &Node) -> bool {
        match &n.value {
            Value::Null => true,
            Value::Seq(s) => self.dialect == Dialect::Tf && s.is_empty(),
            Value::Map(m) => self.dialect == Dialect::Tf && m.is_empty(),
            _ => false,
        }
    }
}

fn pascal(api: &str) -> String {
    match api {
        "awsCloudMap" => return "AWSCloudMap".into(),
        "dns" | "tls" | "acm" | "sds" | "grpc" | "http" | "http2" | "tcp" => return api.to_ascii_uppercase(),
        _ => {}
    }
    let mut c = api.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

fn snake(api: &str) -> String {
    let api = match api {
        "listeners" => "listener",
        "backends" => "backend",
        "weightedTargets" => "weightedTarget",
        "headers" => "header",
        "queryParameters" => "queryParameter",
        _ => api,
    };
    let mut out = String::with_capacity(api.len() + 4);
    for ch in api.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// One mapping being read. [`Obj::finish`] fails on the first field nobody asked for.
pub struct Obj<'a, 'c> {
    pub cx: &'c Ctx<'c>,
    pub node: &'a Node,
    entries: &'a [(String, Node)],
    used: Vec<bool>,
}

impl<'a, 'c> Obj<'a, 'c> {
    /// `node` must be a mapping (in Terraform also a one-element list of one).
    pub fn new(cx: &'c Ctx<'c>, node: &'a Node, what: &str) -> Result<Self, LoadError> {
        let node = match (&node.value, cx.dialect) {
            (Value::Seq(s), Dialect::Tf) if s.len() == 1 => &s[0],
            _ => node,
        };
        let entries =
            node.as_map().ok_or_else(|| cx.err(node.pos, format!("{what} must be a mapping, not {}", node.kind())))?;
        Ok(Obj { cx, node, entries, used: vec![false; entries.len()] })
    }

    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    /// The raw value of a field in this form's spelling (Null, and Terraform's empty lists, are absent).
    pub fn raw_key(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        self.used[i] = true;
        let n = &self.entries[i].1;
        (!self.cx.absent(n)).then_some(n)
    }

    pub fn raw(&mut self, api: &str) -> Option<&'a Node> {
        let key = self.cx.key(api);
        self.raw_key(&key)
    }

    pub fn text(&self, n: &Node) -> Result<String, LoadError> {
        let intrinsic = n.tag.is_some()
            || n.as_map().is_some_and(|m| m.len() == 1 && (m[0].0 == "Ref" || m[0].0.starts_with("Fn::")));
        if intrinsic {
            if let Some(f) = self.cx.intrinsics {
                return f(n)
                    .map_err(|m| self.cx.err(n.pos, m))?
                    .ok_or_else(|| self.cx.err(n.pos, "the intrinsic function gives no value"));
            }
            return Err(self.cx.err(n.pos, format!("tag !{} is not understood here", n.tag.as_deref().unwrap_or("?"))));
        }
        n.scalar_text().ok_or_else(|| self.cx.err(n.pos, format!("expected a string, found {}", n.kind())))
    }

    pub fn str(&mut self, api: &str) -> Result<Option<String>, LoadError> {
        self.raw(api).map(|n| self.text(n)).transpose()
    }

    pub fn req_str(&mut self, api: &str) -> Result<String, LoadError> {
        let key = self.cx.key(api).into_owned();
        self.str(api)?.ok_or_else(|| self.cx.err(self.node.pos, format!("field {key:?} is required")))
    }

    pub fn num(&mut self, api: &str) -> Result<Option<u64>, LoadError> {
        let Some(n) = self.raw(api) else { return Ok(None) };
        let t = self.text(n)?;
        t.trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| self.cx.err(n.pos, format!("expected a non-negative integer, found {t:?}")))
    }

    pub fn u32(&mut self, api: &str) -> Result<Option<u32>, LoadError> {
        let pos = self.raw_pos(api);
        match self.num(api)? {
            Some(v) => u32::try_from(v).map(Some).map_err(|_| self.cx.err(pos, format!("{v} is out of range"))),
            None => Ok(None),
        }
    }

    fn raw_pos(&self, api: &str) -> Pos {
        let key = self.cx.key(api);
        self.entries.iter().find(|(k, _)| *k == key).map_or(self.node.pos, |(_, n)| n.pos)
    }

    pub fn bool(&mut self, api: &str) -> Result<Option<bool>, LoadError> {
        let Some(n) = self.raw(api) else { return Ok(None) };
        match &n.value {
            Value::Bool(b) => Ok(Some(*b)),
            _ => match self.text(n)?.to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                t => Err(self.cx.err(n.pos, format!("expected true or false, found {t:?}"))),
            },
        }
    }

    pub fn obj(&mut self, api: &str) -> Result<Option<Obj<'a, 'c>>, LoadError> {
        let key = self.cx.key(api).into_owned();
        self.raw(api).map(|n| Obj::new(self.cx, n, &key)).transpose()
    }

    /// A list field (a lone mapping counts as a one-element list in Terraform).
    pub fn list(&mut self, api: &str) -> Result<Vec<&'a Node>, LoadError> {
        let Some(n) = self.raw(api) else { return Ok(Vec::new()) };
        match &n.value {
            Value::Seq(s) => Ok(s.iter().collect()),
            _ => Err(self.cx.err(n.pos, format!("{} must be a list, not {}", self.cx.key(api), n.kind()))),
        }
    }

    pub fn strs(&mut self, api: &str) -> Result<Vec<String>, LoadError> {
        let items = self.list(api)?;
        items.into_iter().map(|n| self.text(n)).collect()
    }

    pub fn nums(&mut self, api: &str) -> Result<Vec<u32>, LoadError> {
        let items = self.list(api)?;
        items
            .into_iter()
            .map(|n| {
                let t = self.text(n)?;
                t.parse().map_err(|_| self.cx.err(n.pos, format!("expected a port number, found {t:?}")))
            })
            .collect()
    }

    /// App Mesh fields this translator knows and does not use (logging, IP preference, ...).
    pub fn skip(&mut self, api: &[&str]) {
        for a in api {
            self.raw(a);
        }
    }

    /// Form-specific fields given in the form's own spelling (`metadata`, Terraform's `id`).
    pub fn skip_keys(&mut self, keys: &[&str]) {
        for k in keys {
            self.raw_key(k);
        }
    }

    /// Fails on a field nobody read (Terraform's null attributes of its schema pass).
    pub fn finish(self) -> Result<(), LoadError> {
        for ((k, n), used) in self.entries.iter().zip(&self.used) {
            if !(*used || self.cx.dialect == Dialect::Tf && self.cx.absent(n)) {
                return Err(self.cx.err(n.pos, format!("unknown field {k:?}")));
            }
        }
        Ok(())
    }

    /// A duration `{unit: s|ms, value}` in milliseconds.
    pub fn duration(&mut self, api: &str) -> Result<Option<u64>, LoadError> {
        let Some(mut d) = self.obj(api)? else { return Ok(None) };
        let unit = d.req_str("unit")?;
        let value = d.num("value")?.ok_or_else(|| d.cx.err(d.pos(), "duration without a value"))?;
        let pos = d.pos();
        d.finish()?;
        match unit.as_str() {
            "ms" => Ok(Some(value)),
            "s" => Ok(Some(value.saturating_mul(1000))),
            u => Err(self.cx.err(pos, format!("duration unit {u:?} is not s or ms"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_fields_per_form() {
        assert_eq!(pascal("awsCloudMap"), "AWSCloudMap");
        assert_eq!(pascal("weightedTargets"), "WeightedTargets");
        assert_eq!(pascal("tls"), "TLS");
        assert_eq!(snake("weightedTargets"), "weighted_target");
        assert_eq!(snake("http2Route"), "http2_route");
        assert_eq!(snake("virtualServiceName"), "virtual_service_name");
    }
}
