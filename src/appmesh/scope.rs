//! A virtual node's `backends` → an Istio `Sidecar` (APPMESH.md: scope, not authorization).
//!
//! App Mesh configured each node's proxy with its backends only. The Istio equivalent is a Sidecar
//! in the pods' namespace, selecting them by the VirtualNode's `podSelector` labels, whose egress
//! hosts are each backend's virtual service host and every host its routes send to: a sidecar then
//! holds the configuration of those services alone. Only the Kubernetes form names pods; nodes of
//! the other forms stand for ECS tasks, which no Sidecar resource selects.
//!
//! It is scope, not authorization: a host left out still answers through the mesh's outbound
//! traffic policy (`ALLOW_ANY` passes it through without routing, `REGISTRY_ONLY` blocks it).
use std::collections::BTreeSet;

use serde_json::json;

use super::istio::{Kind, Object, Outcome, SOURCE_ANNOTATION};
use super::model::{Provider, VirtualNode, Workload};
use super::translate::{dns_name, Ctx};

/// One Sidecar per Kubernetes virtual node with backends and a label selector.
pub fn sidecars(cx: &mut Ctx) -> Vec<Object> {
    let mut out = Vec::new();
    for n in &cx.mesh.virtual_nodes {
        if n.backends.is_empty() {
            continue;
        }
        match &n.workload {
            None => {}
            Some(Workload::Unsupported { why, .. }) => {
                let why = format!("backends: no Sidecar: {why}; every pod sees every host");
                cx.report.add("VirtualNode", &n.name, Outcome::Approximated, Some(why));
            }
            Some(Workload::Labels { namespace, labels }) => {
                if let Some(o) = sidecar(cx, n, namespace, labels) {
                    out.push(o);
                }
            }
        }
    }
    out
}

fn sidecar(
    cx: &mut Ctx,
    n: &VirtualNode,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<Object> {
    let mut hosts = BTreeSet::new();
    for b in &n.backends {
        let Some(s) = cx.mesh.virtual_services.iter().find(|s| s.name == b.virtual_service) else {
            let why = format!("backend {:?} is not a defined virtual service: left out of the Sidecar", b.virtual_service);
            cx.report.add("VirtualNode", &n.name, Outcome::Approximated, Some(why));
            continue;
        };
        hosts.insert(s.name.to_ascii_lowercase());
        let targets: Vec<&str> = match &s.provider {
            None => Vec::new(),
            Some(Provider::VirtualNode(t)) => vec![t.as_str()],
            Some(Provider::VirtualRouter(r)) => cx
                .mesh
                .virtual_routers
                .iter()
                .filter(|x| &x.name == r)
                .flat_map(|x| &x.routes)
                .flat_map(|route| &route.targets)
                .map(|t| t.virtual_node.as_str())
                .collect(),
        };
        hosts.extend(targets.iter().filter_map(|t| cx.nodes.get(t)?.as_ref().ok()).map(|d| d.host.clone()));
    }
    if hosts.is_empty() {
        return None;
    }
    let name = format!("appmesh-{}", dns_name(&n.name, 200));
    cx.report.add(
        "VirtualNode",
        &n.name,
        Outcome::Translated,
        Some(format!(
            "backends: Sidecar {namespace}/{name} limits the selected pods' configuration to {} hosts (scope, not authorization)",
            hosts.len()
        )),
    );
    let spec = json!({
        "workloadSelector": {"labels": labels},
        "egress": [{"hosts": hosts.iter().map(|h| format!("*/{h}")).collect::<Vec<_>>()}],
    });
    Some(Object {
        kind: Kind::Sidecar,
        name,
        namespace: namespace.to_string(),
        annotations: [(SOURCE_ANNOTATION.to_string(), format!("VirtualNode {}", n.name))].into(),
        spec,
    })
}
