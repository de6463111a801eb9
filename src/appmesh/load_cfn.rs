//! CloudFormation templates (YAML with short-form intrinsics, or JSON): `AWS::AppMesh::*`
//! resources. Objects name each other by name or through `!Ref`/`!GetAtt`/`!Sub`/`!Join` on
//! logical ids (and parameters' defaults); both resolve to the App Mesh name.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use super::load::{api_object, Builder};
use super::node::{Node, Value};
use super::reader::{Ctx, Dialect, LoadError, Obj};

/// How deep intrinsics may nest before the template is refused.
const MAX_DEPTH: usize = 64;

struct Template<'a> {
    params: BTreeMap<&'a str, Option<&'a Node>>,
    /// Logical id → (type, properties).
    resources: BTreeMap<&'a str, (&'a str, Option<&'a Node>)>,
    /// Logical ids being resolved: a repeat is a cycle.
    stack: RefCell<Vec<String>>,
}

fn kind_of(ty: &str) -> Option<(&'static str, &'static str)> {
    Some(match ty {
        "AWS::AppMesh::VirtualNode" => ("virtualNodeName", "VirtualNode"),
        "AWS::AppMesh::VirtualService" => ("virtualServiceName", "VirtualService"),
        "AWS::AppMesh::VirtualRouter" => ("virtualRouterName", "VirtualRouter"),
        "AWS::AppMesh::Route" => ("routeName", "Route"),
        "AWS::AppMesh::VirtualGateway" => ("virtualGatewayName", "VirtualGateway"),
        "AWS::AppMesh::GatewayRoute" => ("gatewayRouteName", "GatewayRoute"),
        "AWS::AppMesh::Mesh" => ("meshName", "Mesh"),
        _ => return None,
    })
}

impl<'a> Template<'a> {
    fn eval(&self, n: &Node, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!("intrinsic functions nested deeper than {MAX_DEPTH}"));
        }
        let (func, arg) = match (&n.tag, &n.value) {
            (Some(t), _) => (t.as_str(), n),
            (None, Value::Map(m)) if m.len() == 1 && (m[0].0 == "Ref" || m[0].0.starts_with("Fn::")) => {
                (m[0].0.trim_start_matches("Fn::"), &m[0].1)
            }
            _ => return n.scalar_text().ok_or_else(|| format!("expected a string, found {}", n.kind())),
        };
        let d = depth + 1;
        match func {
            "Ref" => self.reference(&self.eval(&plain(arg), d)?, d),
            "GetAtt" => {
                let (id, attr) = match &arg.value {
                    Value::Seq(s) if s.len() == 2 => (self.eval(&s[0], d)?, self.eval(&s[1], d)?),
                    Value::Str(s) => match s.split_once('.') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return Err(format!("!GetAtt {s:?}: expected LogicalId.Attribute")),
                    },
                    _ => return Err("GetAtt takes LogicalId.Attribute or [LogicalId, Attribute]".into()),
                };
                self.get_att(&id, &attr, d)
            }
            "Sub" => {
                let (text, vars) = match &arg.value {
                    Value::Seq(s) if s.len() == 2 => (self.eval(&s[0], d)?, s[1].as_map()),
                    _ => (self.eval(&plain(arg), d)?, None),
                };
                self.sub(&text, vars, d)
            }
            "Join" => {
                let parts = arg.as_seq().filter(|s| s.len() == 2).ok_or("Join takes [delimiter, [values]]")?;
                let delim = self.eval(&parts[0], d)?;
                let items = parts[1].as_seq().ok_or("Join's second argument must be a list")?;
                Ok(items.iter().map(|i| self.eval(i, d)).collect::<Result<Vec<_>, _>>()?.join(&delim))
            }
            f => Err(format!("intrinsic function {f} is not supported here")),
        }
    }

    /// `Ref`: a parameter's default, or a resource's name.
    fn reference(&self, id: &str, d: usize) -> Result<String, String> {
        if id.starts_with("AWS::") {
            return Ok(format!("${{{id}}}"));
        }
        if let Some(p) = self.params.get(id) {
            let default = p.and_then(|p| p.get("Default")).ok_or_else(|| format!("parameter {id} has no Default"))?;
            return self.eval(default, d);
        }
        let (ty, _) = self.resources.get(id).ok_or_else(|| format!("Ref to {id:?}: no such parameter or resource"))?;
        let attr = kind_of(ty).map_or("Name".to_string(), |(k, _)| pascal_name(k));
        self.get_att(id, &attr, d).or_else(|_| Ok(id.to_string()))
    }

    fn get_att(&self, id: &str, attr: &str, d: usize) -> Result<String, String> {
        let (ty, props) = self.resources.get(id).ok_or_else(|| format!("GetAtt {id}.{attr}: no resource {id:?}"))?;
        {
            let mut stack = self.stack.borrow_mut();
            if stack.iter().any(|s| s == id) {
                let mut chain = stack.clone();
                chain.push(id.to_string());
                return Err(format!("cycle of references: {}", chain.join(" -> ")));
            }
            stack.push(id.to_string());
        }
        let attr = if matches!(attr, "Arn" | "Uid") {
            kind_of(ty).map_or("Name".to_string(), |(k, _)| pascal_name(k))
        } else {
            attr.to_string()
        };
        let r = match props.and_then(|p| p.get(&attr)) {
            Some(v) => self.eval(v, d),
            // A generated name: CloudFormation names the object after its logical id here.
            None if kind_of(ty).is_some_and(|(k, _)| pascal_name(k) == attr) => Ok(id.to_string()),
            None => Err(format!("GetAtt {id}.{attr}: {ty} {id} has no {attr} property")),
        };
        self.stack.borrow_mut().pop();
        r
    }

    fn sub(&self, text: &str, vars: Option<&[(String, Node)]>, d: usize) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or_else(|| format!("Sub {text:?}: unclosed ${{"))?;
            let var = &after[..end];
            if let Some(lit) = var.strip_prefix('!') {
                out.push_str("${");
                out.push_str(lit);
                out.push('}');
            } else if let Some(v) = vars.and_then(|m| m.iter().find(|(k, _)| k == var)) {
                out.push_str(&self.eval(&v.1, d)?);
            } else if let Some((id, attr)) = var.split_once('.') {
                out.push_str(&self.get_att(id, attr, d)?);
            } else {
                out.push_str(&self.reference(var, d)?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The argument of a short-form function without its tag.
fn plain(n: &Node) -> Node {
    Node { tag: None, ..n.clone() }
}

fn pascal_name(api: &str) -> String {
    let mut c = api.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

pub fn load(b: &mut Builder, path: &Path, doc: &Node) -> Result<(), LoadError> {
    let cx0 = Ctx { path, dialect: Dialect::Cfn, intrinsics: None, k8s_namespace: String::new() };
    let resources =
        doc.get("Resources").and_then(Node::as_map).ok_or_else(|| cx0.err(doc.pos, "Resources must be a mapping"))?;
    let params = doc.get("Parameters").and_then(Node::as_map).unwrap_or_default();
    let t = Template {
        params: params.iter().map(|(k, v)| (k.as_str(), Some(v))).collect(),
        resources: resources
            .iter()
            .map(|(k, v)| (k.as_str(), (v.get("Type").and_then(Node::as_str).unwrap_or(""), v.get("Properties"))))
            .collect(),
        stack: RefCell::new(Vec::new()),
    };
    let eval = |n: &Node| t.eval(n, 0).map(Some);
    let cx = Ctx { intrinsics: Some(&eval), ..cx0 };
    for (id, r) in resources {
        let ty = r.get("Type").and_then(Node::as_str).unwrap_or("");
        let Some((kind, alias_kind)) = kind_of(ty) else { continue };
        if alias_kind == "Mesh" {
            continue;
        }
        let mut o = Obj::new(&cx, r, id)?;
        o.skip_keys(&["Type", "DependsOn", "Condition", "Metadata", "DeletionPolicy", "UpdateReplacePolicy"]);
        let props = o.raw_key("Properties").ok_or_else(|| cx.err(r.pos, format!("{id}: {ty} without Properties")))?;
        o.finish()?;
        let name = api_object(b, &cx, props, kind, Some(id), &["Tags", "MeshOwner"])?;
        b.alias(alias_kind, id.clone(), &name);
    }
    Ok(())
}
