//! Kubernetes manifests: `appmesh.k8s.aws/v1beta2` CRs. Other kinds (Namespace, Deployment,
//! Service, ...) are skipped unread; `kind: List` is read item by item.
use std::collections::BTreeMap;
use std::path::Path;

use super::load::{origin, Builder};
use super::model::Workload;
use super::node::Node;
use super::reader::{Ctx, Dialect, LoadError, Obj};
use super::spec;

const GROUP: &str = "appmesh.k8s.aws/";

pub fn load(b: &mut Builder, path: &Path, doc: &Node) -> Result<(), LoadError> {
    let api = doc.get("apiVersion").and_then(Node::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or("");
    if kind == "List" {
        for item in doc.get("items").and_then(Node::as_seq).unwrap_or_default() {
            load(b, path, item)?;
        }
        return Ok(());
    }
    if !api.starts_with(GROUP) {
        return Ok(());
    }
    let cx0 = Ctx { path, dialect: Dialect::K8s, intrinsics: None, k8s_namespace: String::new() };
    if api != "appmesh.k8s.aws/v1beta2" {
        return Err(cx0.err(doc.pos, format!("apiVersion {api:?}: only appmesh.k8s.aws/v1beta2 is read")));
    }
    let meta = doc.get("metadata").ok_or_else(|| cx0.err(doc.pos, format!("{kind} without metadata")))?;
    let name = meta.get("name").and_then(Node::as_str).ok_or_else(|| cx0.err(meta.pos, "metadata.name is required"))?;
    let ns = meta.get("namespace").and_then(Node::as_str).unwrap_or("default").to_string();
    let cx = Ctx { k8s_namespace: ns.clone(), ..cx0 };
    let mut top = Obj::new(&cx, doc, kind)?;
    top.skip_keys(&["apiVersion", "kind", "metadata", "status"]);
    let at = origin(path, doc);
    let Some(mut s) = top.obj("spec")? else {
        return Err(cx.err(doc.pos, format!("{kind} {name:?} has no spec")));
    };
    top.finish()?;
    let mesh = match s.obj("meshRef")? {
        Some(mut m) => {
            let v = m.req_str("name")?;
            m.skip(&["uid"]);
            m.finish()?;
            v
        }
        None => String::new(),
    };
    // The controller's default App Mesh names.
    let aws_name = |s: &mut Obj, sep: &str| -> Result<String, LoadError> {
        Ok(s.str("awsName")?.unwrap_or_else(|| format!("{name}{sep}{ns}")))
    };
    let dup = |e: String| cx.err(doc.pos, e);
    match kind {
        "Mesh" => return Ok(()),
        "VirtualNode" => {
            let n = aws_name(&mut s, "_")?;
            let workload = pod_selector(&mut s, &ns)?;
            let mut v = spec::virtual_node(&mut s, mesh, n.clone(), at.clone())?;
            v.workload = workload;
            s.finish()?;
            b.define("VirtualNode", n.clone(), &at.at).map_err(dup)?;
            b.alias("VirtualNode", format!("k8s:VirtualNode:{ns}/{name}"), &n);
            b.mesh.virtual_nodes.push(v);
        }
        "VirtualService" => {
            let n = aws_name(&mut s, ".")?;
            let provider = spec::provider(&mut s)?;
            s.finish()?;
            b.define("VirtualService", n.clone(), &at.at).map_err(dup)?;
            b.alias("VirtualService", format!("k8s:VirtualService:{ns}/{name}"), &n);
            b.mesh.virtual_services.push(super::model::VirtualService { mesh, name: n, origin: at, provider });
        }
        "VirtualRouter" => {
            let n = aws_name(&mut s, "_")?;
            let listeners = spec::virtual_router_listeners(&mut s)?;
            let mut routes = Vec::new();
            for r in s.list("routes")? {
                let mut ro = Obj::new(&cx, r, "routes")?;
                let rname = ro.req_str("name")?;
                routes.push(spec::route(&mut ro, rname, origin(path, r))?);
                ro.finish()?;
            }
            s.finish()?;
            b.define("VirtualRouter", n.clone(), &at.at).map_err(dup)?;
            b.alias("VirtualRouter", format!("k8s:VirtualRouter:{ns}/{name}"), &n);
            b.mesh.virtual_routers.push(super::model::VirtualRouter { mesh, name: n, origin: at, listeners, routes });
        }
        "VirtualGateway" => {
            let n = aws_name(&mut s, "_")?;
            s.skip(&["podSelector", "namespaceSelector", "gatewayRouteSelector"]);
            let v = spec::virtual_gateway(&mut s, mesh, n.clone(), at.clone())?;
            s.finish()?;
            b.define("VirtualGateway", n.clone(), &at.at).map_err(dup)?;
            b.alias("VirtualGateway", format!("k8s:VirtualGateway:{ns}/{name}"), &n);
            b.mesh.virtual_gateways.push(v);
        }
        "GatewayRoute" => {
            let n = aws_name(&mut s, "_")?;
            // Without a virtualGatewayRef the route joins the only gateway (see Builder::finish).
            let gateway = spec::reference(&mut s, "virtualGatewayName", "VirtualGateway")?.unwrap_or_default();
            let v = spec::gateway_route(&mut s, mesh, gateway, n.clone(), at.clone())?;
            s.finish()?;
            b.define("GatewayRoute", n, &at.at).map_err(dup)?;
            b.mesh.gateway_routes.push(v);
        }
        other => return Err(cx.err(doc.pos, format!("unknown App Mesh kind {other:?}"))),
    }
    Ok(())
}

/// `spec.podSelector` of a VirtualNode: the pods (in the CR's namespace) it stands for.
fn pod_selector(s: &mut Obj, namespace: &str) -> Result<Option<Workload>, LoadError> {
    let Some(mut sel) = s.obj("podSelector")? else { return Ok(None) };
    let mut labels = BTreeMap::new();
    if let Some(m) = sel.raw("matchLabels") {
        let entries = m.as_map().ok_or_else(|| sel.cx.err(m.pos, "podSelector.matchLabels must be a mapping"))?;
        for (k, v) in entries {
            labels.insert(k.clone(), sel.text(v)?);
        }
    }
    let expressions = sel.raw("matchExpressions").and_then(Node::as_seq).map_or(0, <[Node]>::len);
    sel.finish()?;
    let namespace = namespace.to_string();
    Ok(Some(if expressions > 0 {
        Workload::Unsupported {
            namespace,
            why: format!("podSelector.matchExpressions ({expressions}) has no workloadSelector equivalent (labels only)"),
        }
    } else if labels.is_empty() {
        Workload::Unsupported { namespace, why: "an empty podSelector selects every pod of the namespace".into() }
    } else {
        Workload::Labels { namespace, labels }
    }))
}
