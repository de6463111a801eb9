//! Reading `--appmesh-file` paths (files, or directories of `.yaml`/`.yml`/`.json` files) into one
//! [`AppMesh`]: each document is recognised as a Kubernetes manifest, a CloudFormation template,
//! `terraform show -json` output or CLI JSON, and handed to that form's loader.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::model::{self, *};
use super::node::{self, Node};
use super::reader::{Ctx, LoadError, Obj};
use super::spec;
use super::{load_cfn, load_cli, load_k8s, load_tf};
use crate::util::fs::ReadError;

/// Files over this size are refused (a CloudFormation template is at most 1 MB; dumps are larger).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;

/// Collects objects from the loaders and resolves their references at the end.
#[derive(Default)]
pub struct Builder {
    pub mesh: AppMesh,
    /// (kind, alias) → App Mesh name: CR references (`k8s:<Kind>:<ns>/<name>`) and CloudFormation
    /// logical ids.
    pub aliases: BTreeMap<(&'static str, String), String>,
    seen: BTreeMap<(&'static str, String), String>,
    /// Routes defined apart from their router: (router reference, route).
    routes: Vec<(String, Route)>,
}

impl Builder {
    /// Records that `kind` `name` (at `at`) exists; a second definition is an error.
    pub fn define(&mut self, kind: &'static str, key: String, at: &str) -> Result<(), String> {
        if let Some(first) = self.seen.insert((kind, key.clone()), at.to_string()) {
            return Err(format!("{kind} {key:?} is defined twice (first at {first})"));
        }
        Ok(())
    }

    pub fn alias(&mut self, kind: &'static str, alias: String, name: &str) {
        self.aliases.insert((kind, alias), name.to_string());
    }

    fn resolve(&self, kind: &'static str, names: &BTreeSet<String>, r: &mut String) {
        if names.contains(r) {
            return;
        }
        if let Some(n) = self.aliases.get(&(kind, r.clone())) {
            *r = n.clone();
        } else if let Some(rest) = r.strip_prefix("k8s:") {
            // A CR that is not there: named by its CR name in the report.
            *r = rest.rsplit('/').next().unwrap_or(rest).to_string();
        }
    }

    /// Maps every reference to the App Mesh name of its object and sorts the model.
    pub fn finish(mut self) -> AppMesh {
        let names = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
        let nodes = names(self.mesh.virtual_nodes.iter().map(|n| n.name.clone()).collect());
        let routers = names(self.mesh.virtual_routers.iter().map(|n| n.name.clone()).collect());
        let services = names(self.mesh.virtual_services.iter().map(|n| n.name.clone()).collect());
        let gateways = names(self.mesh.virtual_gateways.iter().map(|n| n.name.clone()).collect());
        let mut m = std::mem::take(&mut self.mesh);
        for s in &mut m.virtual_services {
            match &mut s.provider {
                Some(Provider::VirtualNode(n)) => self.resolve("VirtualNode", &nodes, n),
                Some(Provider::VirtualRouter(n)) => self.resolve("VirtualRouter", &routers, n),
                None => {}
            }
        }
        for n in &mut m.virtual_nodes {
            for b in &mut n.backends {
                self.resolve("VirtualService", &services, &mut b.virtual_service);
            }
        }
        for g in &mut m.gateway_routes {
            self.resolve("VirtualService", &services, &mut g.target);
            if g.gateway.is_empty() && gateways.len() == 1 {
                g.gateway = gateways.iter().next().cloned().unwrap_or_default();
            }
            self.resolve("VirtualGateway", &gateways, &mut g.gateway);
        }
        // Routes given as their own objects (CloudFormation, Terraform, CLI) join their router.
        for (mut router, route) in std::mem::take(&mut self.routes) {
            self.resolve("VirtualRouter", &routers, &mut router);
            match m.virtual_routers.iter_mut().find(|r| r.name == router) {
                Some(r) => r.routes.push(route),
                None => m.orphan_routes.push((router, route)),
            }
        }
        for r in &mut m.virtual_routers {
            for route in &mut r.routes {
                for t in &mut route.targets {
                    self.resolve("VirtualNode", &nodes, &mut t.virtual_node);
                }
            }
        }
        for (_, route) in &mut m.orphan_routes {
            for t in &mut route.targets {
                self.resolve("VirtualNode", &nodes, &mut t.virtual_node);
            }
        }
        m.sort();
        m
    }
}

/// The files a path names: itself, or a directory's `.yaml`/`.yml`/`.json` entries in name order
/// (subdirectories skipped; anything else with those extensions is read, so a FIFO or socket there
/// is refused by the read rather than silently left out).
pub fn files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).map_err(io)? {
        let p = e.map_err(io)?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !p.is_dir() && matches!(ext, "yaml" | "yml" | "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every file of `paths` into one model.
pub fn load(paths: &[PathBuf], max_bytes: u64) -> Result<AppMesh, LoadError> {
    let mut b = Builder::default();
    for p in paths {
        for f in files(p)? {
            let text = crate::util::fs::read_regular_string(&f, max_bytes).map_err(|e| match e {
                ReadError::Io(source) => LoadError::Io { path: f.clone(), source },
                ReadError::TooLarge { bytes, max } => LoadError::TooLarge { path: f.clone(), bytes, max },
            })?;
            load_text(&mut b, &f, &text)?;
        }
    }
    Ok(b.finish())
}

/// Loads one file's text into `b`.
pub fn load_text(b: &mut Builder, path: &Path, text: &str) -> Result<(), LoadError> {
    let docs = node::parse_documents(text).map_err(|message| LoadError::Parse { path: path.to_path_buf(), message })?;
    for doc in &docs {
        load_document(b, path, doc)?;
    }
    Ok(())
}

fn load_document(b: &mut Builder, path: &Path, doc: &Node) -> Result<(), LoadError> {
    if let Some(items) = doc.as_seq() {
        return items.iter().try_for_each(|d| load_document(b, path, d));
    }
    let has = |k: &str| doc.get(k).is_some();
    if has("apiVersion") && has("kind") {
        load_k8s::load(b, path, doc)
    } else if has("Resources") || has("AWSTemplateFormatVersion") {
        load_cfn::load(b, path, doc)
    } else if has("format_version") || has("values") || has("planned_values") {
        load_tf::load(b, path, doc)
    } else {
        load_cli::load(b, path, doc)
    }
}

/// `file:line` for an object's origin.
pub fn origin(path: &Path, n: &Node) -> Origin {
    Origin { at: format!("{}:{}", path.display(), n.pos.line) }
}

/// Adds a route given as its own object to the router it names (joined in [`Builder::finish`]).
pub fn push_route(b: &mut Builder, router: String, route: Route) {
    b.routes.push((router, route));
}

/// The `<kind>Name` field that names an object of each API kind (a route's before its router's).
pub const KINDS: [&str; 6] = [
    "gatewayRouteName",
    "routeName",
    "virtualNodeName",
    "virtualServiceName",
    "virtualGatewayName",
    "virtualRouterName",
];

/// One object in the API's shape (`meshName`, `<kind>Name`, `spec`, and for routes the parent's
/// name), spelled as `cx`'s form: CLI JSON, a CloudFormation resource's `Properties`, a Terraform
/// resource's `values`. `kind` is one of [`KINDS`]; `default_name` stands in for a missing name
/// (CloudFormation's logical id); `skip_keys` are the form's own fields.
pub fn api_object(
    b: &mut Builder,
    cx: &Ctx,
    n: &Node,
    kind: &str,
    default_name: Option<&str>,
    skip_keys: &[&str],
) -> Result<String, LoadError> {
    let mut o = Obj::new(cx, n, "App Mesh object")?;
    o.skip_keys(skip_keys);
    let at = origin(cx.path, n);
    let mesh = o.str("meshName")?.unwrap_or_default();
    let dup = |e: String| cx.err(n.pos, e);
    let name = match (o.str(kind)?, default_name) {
        (Some(v), _) => v,
        (None, Some(d)) => d.to_string(),
        (None, None) => o.req_str(kind)?,
    };
    let out = name.clone();
    let mut s = o.obj("spec")?.ok_or_else(|| cx.err(n.pos, format!("{name:?} has no spec")))?;
    match kind {
        "virtualNodeName" => {
            let v = spec::virtual_node(&mut s, mesh, name.clone(), at.clone())?;
            s.finish()?;
            b.define("VirtualNode", name, &at.at).map_err(dup)?;
            b.mesh.virtual_nodes.push(v);
        }
        "virtualServiceName" => {
            let provider = spec::provider(&mut s)?;
            s.finish()?;
            b.define("VirtualService", name.clone(), &at.at).map_err(dup)?;
            b.mesh.virtual_services.push(model::VirtualService { mesh, name, origin: at, provider });
        }
        "routeName" => {
            let router = o.req_str("virtualRouterName")?;
            let route = spec::route(&mut s, name.clone(), at.clone())?;
            s.finish()?;
            b.define("Route", format!("{router}/{name}"), &at.at).map_err(dup)?;
            push_route(b, router, route);
        }
        "virtualRouterName" => {
            let listeners = spec::virtual_router_listeners(&mut s)?;
            s.finish()?;
            b.define("VirtualRouter", name.clone(), &at.at).map_err(dup)?;
            b.mesh.virtual_routers.push(model::VirtualRouter { mesh, name, origin: at, listeners, routes: Vec::new() });
        }
        "virtualGatewayName" => {
            let v = spec::virtual_gateway(&mut s, mesh, name.clone(), at.clone())?;
            s.finish()?;
            b.define("VirtualGateway", name, &at.at).map_err(dup)?;
            b.mesh.virtual_gateways.push(v);
        }
        _ => {
            let gateway = o.req_str("virtualGatewayName")?;
            let v = spec::gateway_route(&mut s, mesh, gateway.clone(), name.clone(), at.clone())?;
            s.finish()?;
            b.define("GatewayRoute", format!("{gateway}/{name}"), &at.at).map_err(dup)?;
            b.mesh.gateway_routes.push(v);
        }
    }
    o.finish()?;
    Ok(out)
}
