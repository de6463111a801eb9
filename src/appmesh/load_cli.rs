//! CLI JSON: `aws appmesh describe-*` output (`{"virtualNode": {...}}`) and `create-*`/`update-*`
//! `--cli-input-json` inputs (`{"meshName", "virtualNodeName", "spec"}`); a list of either.
use std::path::Path;

use super::load::{api_object, Builder, KINDS};
use super::node::Node;
use super::reader::{Ctx, Dialect, LoadError};

const WRAPPERS: [&str; 7] =
    ["virtualNode", "virtualRouter", "route", "virtualService", "virtualGateway", "gatewayRoute", "mesh"];

pub fn load(b: &mut Builder, path: &Path, doc: &Node) -> Result<(), LoadError> {
    let cx = Ctx { path, dialect: Dialect::Cli, intrinsics: None, k8s_namespace: String::new() };
    if let Some(m) = doc.as_map() {
        if m.len() == 1 && WRAPPERS.contains(&m[0].0.as_str()) {
            return object(b, &cx, &m[0].1);
        }
    }
    object(b, &cx, doc)
}

fn object(b: &mut Builder, cx: &Ctx, n: &Node) -> Result<(), LoadError> {
    let kind = KINDS.into_iter().find(|k| n.get(k).is_some());
    let Some(kind) = kind else {
        if n.get("meshName").is_some() {
            return Ok(());
        }
        return Err(cx.err(n.pos, "not an App Mesh object: no meshName, virtualNodeName, virtualRouterName, routeName, virtualServiceName, virtualGatewayName or gatewayRouteName"));
    };
    api_object(b, cx, n, kind, None, &["metadata", "status", "tags", "clientToken", "meshOwner"]).map(drop)
}
