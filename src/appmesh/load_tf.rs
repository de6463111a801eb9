//! `terraform show -json` (state or plan): `aws_appmesh_*` resources of the root module and its
//! child modules. Nested blocks are one-element lists, absent attributes `null` (see [`Obj`]).
use std::path::Path;

use super::load::{api_object, Builder};
use super::node::Node;
use super::reader::{Ctx, Dialect, LoadError};

/// Terraform's own attributes of every `aws_appmesh_*` resource.
const TF_KEYS: [&str; 8] =
    ["id", "arn", "created_date", "last_updated_date", "mesh_owner", "resource_owner", "tags", "tags_all"];

pub fn load(b: &mut Builder, path: &Path, doc: &Node) -> Result<(), LoadError> {
    let cx = Ctx { path, dialect: Dialect::Tf, intrinsics: None, k8s_namespace: String::new() };
    let root = ["values", "planned_values"]
        .iter()
        .find_map(|k| doc.get(k).and_then(|v| v.get("root_module")))
        .ok_or_else(|| cx.err(doc.pos, "terraform JSON without values.root_module or planned_values.root_module"))?;
    module(b, &cx, root)
}

fn module(b: &mut Builder, cx: &Ctx, m: &Node) -> Result<(), LoadError> {
    for r in m.get("resources").and_then(Node::as_seq).unwrap_or_default() {
        let ty = r.get("type").and_then(Node::as_str).unwrap_or("");
        if r.get("mode").and_then(Node::as_str) == Some("data") {
            continue;
        }
        let kind = match ty {
            "aws_appmesh_virtual_node" => "virtualNodeName",
            "aws_appmesh_virtual_service" => "virtualServiceName",
            "aws_appmesh_virtual_router" => "virtualRouterName",
            "aws_appmesh_route" => "routeName",
            "aws_appmesh_virtual_gateway" => "virtualGatewayName",
            "aws_appmesh_gateway_route" => "gatewayRouteName",
            _ => continue,
        };
        let values = r.get("values").ok_or_else(|| cx.err(r.pos, format!("{ty} without values")))?;
        // Terraform names every kind's object `name`.
        let named = rename_name(values, kind);
        api_object(b, cx, &named, kind, None, &TF_KEYS)?;
    }
    for c in m.get("child_modules").and_then(Node::as_seq).unwrap_or_default() {
        module(b, cx, c)?;
    }
    Ok(())
}

/// `values` with its `name` key spelled as the API's `<kind>Name` in snake case.
fn rename_name(values: &Node, kind: &str) -> Node {
    let mut v = values.clone();
    if let super::node::Value::Map(m) = &mut v.value {
        let key = cx_snake(kind);
        for (k, _) in m.iter_mut() {
            if k == "name" {
                *k = key.clone();
            }
        }
    }
    v
}

fn cx_snake(kind: &str) -> String {
    let cx = Ctx { path: Path::new(""), dialect: Dialect::Tf, intrinsics: None, k8s_namespace: String::new() };
    cx.key(kind).into_owned()
}
