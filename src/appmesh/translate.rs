//! App Mesh model + the served ServiceEntries → Istio VirtualServices, DestinationRules and
//! Gateways, with a migration report. Pure and deterministic: no I/O, sorted output.
//!
//! Hosts come from the ServiceEntries `translate` produced, so a Cloud Map-discovered virtual node
//! routes to exactly the host cloudmap-mcp serves for its Cloud Map service.
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::istio::{Kind, Object, Outcome, ReportEntry, SOURCE_ANNOTATION};
use super::model::*;
use super::routes;
use crate::translate::{validate, ServiceEntry, ServiceRef};

/// The result of [`translate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    /// Sorted by (kind, resource name).
    pub objects: Vec<Object>,
    /// One entry per App Mesh object, sorted.
    pub report: Vec<ReportEntry>,
    /// Port protocols the virtual nodes' listeners give the served hosts: host → port → protocol.
    pub port_protocols: BTreeMap<String, BTreeMap<u32, Protocol>>,
}

impl Translation {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.report.iter().filter(|r| r.outcome == outcome).count()
    }
}

/// Where traffic for a virtual node goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u32>,
}

/// Collects report entries: the worst outcome wins.
#[derive(Default)]
pub struct Reporter(BTreeMap<(String, String), (Outcome, Vec<String>)>);

impl Reporter {
    pub fn add(&mut self, kind: &str, name: &str, outcome: Outcome, reason: Option<String>) {
        let e = self.0.entry((kind.to_string(), name.to_string())).or_insert((Outcome::Translated, Vec::new()));
        e.0 = e.0.max(outcome);
        if let Some(r) = reason {
            if !e.1.contains(&r) {
                e.1.push(r);
            }
        }
    }

    fn finish(self) -> Vec<ReportEntry> {
        self.0
            .into_iter()
            .map(|((kind, name), (outcome, reasons))| ReportEntry { kind, name, outcome, reasons })
            .collect()
    }
}

/// A Kubernetes object name / subset name: lower case DNS-1123, hashed when longer than `max`.
pub fn dns_name(s: &str, max: usize) -> String {
    let mut out: String =
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let mut out = out.trim_matches('-').to_string();
    if out.len() > max {
        out = hashed(&out, s, max);
    }
    if out.is_empty() {
        out = "x".into();
    }
    out
}

/// `name` cut to fit `max` with a hash of `original` appended.
fn hashed(name: &str, original: &str, max: usize) -> String {
    let hash = format!("{:08x}", xxhash_rust::xxh3::xxh3_64(original.as_bytes()) as u32);
    let keep = name.len().min(max - hash.len() - 1);
    format!("{}-{hash}", name[..keep].trim_end_matches('-'))
}

/// `5s`, `2.5s`: an Istio duration.
pub fn duration(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}ms", ms)
    }
}

/// Per destination host: what the DestinationRule holds.
#[derive(Default)]
struct Rule {
    sources: Vec<String>,
    subsets: BTreeMap<String, (BTreeMap<String, String>, Option<Value>)>,
    outlier: Option<Value>,
    idle_ms: Option<u64>,
    tls: Option<Value>,
    port_tls: BTreeMap<u32, Value>,
}

pub struct Ctx<'a> {
    pub mesh: &'a AppMesh,
    pub namespace: &'a str,
    pub nodes: BTreeMap<&'a str, Result<Destination, String>>,
    pub report: Reporter,
    rules: BTreeMap<String, Rule>,
    /// Virtual gateways that became a Gateway.
    pub gateways: std::collections::BTreeSet<String>,
}

impl<'a> Ctx<'a> {
    pub fn object(&self, kind: Kind, name: String, source: String, spec: Value) -> Object {
        Object {
            kind,
            name,
            namespace: self.namespace.to_string(),
            annotations: BTreeMap::from([(SOURCE_ANNOTATION.to_string(), source)]),
            spec,
        }
    }

    /// Records an idle timeout of a route on the hosts it routes to.
    pub fn idle_timeout(&mut self, host: &str, ms: u64) {
        let r = self.rules.entry(host.to_string()).or_default();
        r.idle_ms = Some(r.idle_ms.map_or(ms, |m| m.min(ms)));
    }
}

/// Translates `mesh` against the ServiceEntries being served (`entries`), placing objects in
/// `namespace`.
pub fn translate(mesh: &AppMesh, entries: &[ServiceEntry], namespace: &str) -> Translation {
    let mut cx = Ctx {
        mesh,
        namespace,
        nodes: BTreeMap::new(),
        report: Reporter::default(),
        rules: BTreeMap::new(),
        gateways: Default::default(),
    };
    let by_source: BTreeMap<ServiceRef, &ServiceEntry> = entries.iter().map(|e| (e.source.clone(), e)).collect();
    let mut port_protocols: BTreeMap<String, BTreeMap<u32, Protocol>> = BTreeMap::new();
    for n in &mesh.virtual_nodes {
        let d = node(&mut cx, n, &by_source, &mut port_protocols);
        cx.nodes.insert(n.name.as_str(), d);
    }
    let mut objects = Vec::new();
    for n in &mesh.virtual_nodes {
        client_tls(&mut cx, n);
    }
    for s in &mesh.virtual_services {
        objects.extend(routes::virtual_service(&mut cx, s));
    }
    for r in &mesh.virtual_routers {
        if !mesh.virtual_services.iter().any(|s| s.provider == Some(Provider::VirtualRouter(r.name.clone()))) {
            cx.report.add(
                "VirtualRouter",
                &r.name,
                Outcome::Dropped,
                Some("no virtual service uses this router".into()),
            );
        }
    }
    for (router, route) in &mesh.orphan_routes {
        cx.report.add(
            "Route",
            &format!("{router}/{}", route.name),
            Outcome::Dropped,
            Some(format!("virtual router {router:?} is not defined")),
        );
    }
    for g in &mesh.virtual_gateways {
        if let Some(o) = routes::gateway(&mut cx, g) {
            cx.gateways.insert(g.name.clone());
            objects.push(o);
        }
    }
    for g in &mesh.gateway_routes {
        objects.extend(routes::gateway_route(&mut cx, g));
    }
    objects.extend(destination_rules(&cx));
    objects.extend(super::scope::sidecars(&mut cx));
    objects.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Translation { objects, report: cx.report.finish(), port_protocols }
}

fn node(
    cx: &mut Ctx,
    n: &VirtualNode,
    by_source: &BTreeMap<ServiceRef, &ServiceEntry>,
    ports: &mut BTreeMap<String, BTreeMap<u32, Protocol>>,
) -> Result<Destination, String> {
    let port = n.listeners.first().map(|l| l.port_mapping.port);
    let name = n.name.as_str();
    for l in &n.listeners {
        if l.health_check {
            cx.report.add(
                "VirtualNode",
                name,
                Outcome::Approximated,
                Some(
                    "active health check dropped: Istio has none; Cloud Map health status and outlier detection remain"
                        .into(),
                ),
            );
        }
        if l.tls {
            cx.report.add(
                "VirtualNode",
                name,
                Outcome::Approximated,
                Some("listener TLS dropped: no server-side equivalent for workloads outside the mesh".into()),
            );
        }
        if l.connection_pool.is_some() {
            cx.report.add(
                "VirtualNode",
                name,
                Outcome::Approximated,
                Some("inbound connection pool dropped: Istio's connectionPool limits each client, not the node".into()),
            );
        }
        if l.timeout != Timeouts::default() {
            cx.report.add(
                "VirtualNode",
                name,
                Outcome::Approximated,
                Some("listener timeout dropped: no server-side equivalent; route timeouts apply".into()),
            );
        }
    }
    let d = match &n.discovery {
        None => Err("no service discovery: nothing to route to".to_string()),
        Some(Discovery::Dns { hostname, .. }) => {
            Ok(Destination { host: hostname.to_ascii_lowercase(), subset: None, port })
        }
        Some(Discovery::CloudMap { namespace, service, attributes }) => {
            let key = ServiceRef { namespace: namespace.clone(), service: service.clone() };
            match by_source.get(&key) {
                None => Err(format!("Cloud Map service {key} is not served (no ServiceEntry): nothing to route to")),
                Some(se) => cloud_map_node(cx, n, se, attributes, port, ports),
            }
        }
    };
    match &d {
        Err(reason) => cx.report.add("VirtualNode", name, Outcome::Dropped, Some(reason.clone())),
        Ok(d) => {
            cx.report.add("VirtualNode", name, Outcome::Translated, None);
            let outlier = n.listeners.iter().find_map(|l| l.outlier.as_ref()).map(|o| {
                json!({"consecutive5xxErrors": o.max_server_errors, "interval": duration(o.interval_ms),
                       "baseEjectionTime": duration(o.base_ejection_ms), "maxEjectionPercent": o.max_ejection_percent})
            });
            let rule = cx.rules.entry(d.host.clone()).or_default();
            rule.sources.push(format!("VirtualNode {name}"));
            match &d.subset {
                Some(s) => {
                    if let Some(sub) = rule.subsets.get_mut(s) {
                        sub.1 = outlier.map(|o| json!({"outlierDetection": o}));
                    }
                }
                None => rule.outlier = outlier.or(rule.outlier.take()),
            }
        }
    }
    d
}

fn cloud_map_node(
    cx: &mut Ctx,
    n: &VirtualNode,
    se: &ServiceEntry,
    attributes: &BTreeMap<String, String>,
    port: Option<u32>,
    ports: &mut BTreeMap<String, BTreeMap<u32, Protocol>>,
) -> Result<Destination, String> {
    let host = se.spec.hosts[0].clone();
    for l in &n.listeners {
        let pm = l.port_mapping;
        let e = ports.entry(host.clone()).or_default();
        match e.get(&pm.port) {
            Some(p) if *p != pm.protocol => cx.report.add(
                "VirtualNode",
                &n.name,
                Outcome::Approximated,
                Some(format!(
                    "listener {} {}: another virtual node on {host} gives this port {}; kept that",
                    pm.port,
                    pm.protocol.istio(),
                    p.istio()
                )),
            ),
            _ => {
                e.insert(pm.port, pm.protocol);
            }
        }
    }
    if attributes.is_empty() {
        return Ok(Destination { host, subset: None, port });
    }
    for (k, v) in attributes {
        if let Err(e) = validate::label_key(k).and_then(|_| validate::label_value(v)) {
            return Err(format!("Cloud Map attribute {k}={v} cannot select a subset: {e}"));
        }
    }
    let mut subset = dns_name(&n.name, 63);
    // Two node names that sanitize alike (`a.b`, `a-b`) keep apart.
    if cx.rules.get(&host).and_then(|r| r.subsets.get(&subset)).is_some_and(|(l, _)| l != attributes) {
        subset = hashed(&subset, &n.name, 63);
    }
    if !se.spec.endpoints.iter().any(|ep| attributes.iter().all(|(k, v)| ep.labels.get(k) == Some(v))) {
        cx.report.add(
            "VirtualNode",
            &n.name,
            Outcome::Approximated,
            Some(format!(
                "subset {subset} of {host} selects no endpoint in the current snapshot (no instance has {})",
                attributes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            )),
        );
    }
    cx.rules.entry(host.clone()).or_default().subsets.insert(subset.clone(), (attributes.clone(), None));
    Ok(Destination { host, subset: Some(subset), port })
}

/// Backends' client TLS policies → the DestinationRule TLS of the hosts behind those services.
fn client_tls(cx: &mut Ctx, n: &VirtualNode) {
    for b in &n.backends {
        let Some(tls) = b.tls.as_ref().or(n.backend_defaults_tls.as_ref()) else { continue };
        let what = format!("backend {} client TLS", b.virtual_service);
        let mut v = Map::new();
        v.insert(
            "mode".into(),
            json!(if matches!(tls.certificate, Some(Certificate::File { .. } | Certificate::Sds { .. })) {
                "MUTUAL"
            } else {
                "SIMPLE"
            }),
        );
        match &tls.trust {
            Some(Trust::File { chain }) => {
                v.insert("caCertificates".into(), json!(chain));
            }
            Some(Trust::Sds { secret }) => {
                v.insert("credentialName".into(), json!(secret));
            }
            Some(Trust::Acm { .. }) => {
                cx.report.add(
                    "VirtualNode",
                    &n.name,
                    Outcome::Dropped,
                    Some(format!("{what}: ACM private CA trust has no in-cluster equivalent")),
                );
                continue;
            }
            None => {}
        }
        match &tls.certificate {
            Some(Certificate::File { chain, key }) => {
                v.insert("clientCertificate".into(), json!(chain));
                v.insert("privateKey".into(), json!(key));
            }
            Some(Certificate::Sds { secret }) => {
                v.insert("credentialName".into(), json!(secret));
            }
            Some(Certificate::Acm { .. }) => {
                cx.report.add(
                    "VirtualNode",
                    &n.name,
                    Outcome::Dropped,
                    Some(format!("{what}: ACM certificates have no in-cluster equivalent")),
                );
                continue;
            }
            None => {}
        }
        if !tls.subject_alt_names.is_empty() {
            v.insert("subjectAltNames".into(), json!(tls.subject_alt_names));
        }
        let hosts = service_hosts(cx, &b.virtual_service);
        if hosts.is_empty() {
            cx.report.add(
                "VirtualNode",
                &n.name,
                Outcome::Approximated,
                Some(format!("{what}: virtual service {} routes to no host", b.virtual_service)),
            );
            continue;
        }
        cx.report.add(
            "VirtualNode",
            &n.name,
            Outcome::Approximated,
            Some(format!("{what} applies to every client of {} in Istio, not only to {}", hosts.join(", "), n.name)),
        );
        for h in hosts {
            let rule = cx.rules.entry(h).or_default();
            rule.sources.push(format!("VirtualNode {} backend", n.name));
            if tls.ports.is_empty() {
                rule.tls = Some(Value::Object(v.clone()));
            } else {
                for p in &tls.ports {
                    rule.port_tls.insert(*p, Value::Object(v.clone()));
                }
            }
        }
    }
}

/// The destination hosts a virtual service's provider routes to.
fn service_hosts(cx: &Ctx, vs: &str) -> Vec<String> {
    let Some(s) = cx.mesh.virtual_services.iter().find(|s| s.name == vs) else { return Vec::new() };
    let nodes: Vec<&str> = match &s.provider {
        Some(Provider::VirtualNode(n)) => vec![n.as_str()],
        Some(Provider::VirtualRouter(r)) => cx
            .mesh
            .virtual_routers
            .iter()
            .filter(|x| &x.name == r)
            .flat_map(|x| x.routes.iter().flat_map(|r| r.targets.iter().map(|t| t.virtual_node.as_str())))
            .collect(),
        None => Vec::new(),
    };
    let mut hosts: Vec<String> =
        nodes.iter().filter_map(|n| cx.nodes.get(n).and_then(|d| d.as_ref().ok()).map(|d| d.host.clone())).collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn destination_rules(cx: &Ctx) -> Vec<Object> {
    let mut out = Vec::new();
    for (host, r) in &cx.rules {
        let mut policy = Map::new();
        if let Some(o) = &r.outlier {
            policy.insert("outlierDetection".into(), o.clone());
        }
        if let Some(ms) = r.idle_ms {
            policy.insert(
                "connectionPool".into(),
                json!({"http": {"idleTimeout": duration(ms)}, "tcp": {"idleTimeout": duration(ms)}}),
            );
        }
        if let Some(t) = &r.tls {
            policy.insert("tls".into(), t.clone());
        }
        if !r.port_tls.is_empty() {
            let pls: Vec<Value> = r.port_tls.iter().map(|(p, t)| json!({"port": {"number": p}, "tls": t})).collect();
            policy.insert("portLevelSettings".into(), Value::Array(pls));
        }
        let mut spec = Map::new();
        spec.insert("host".into(), json!(host));
        if !r.subsets.is_empty() {
            let subsets: Vec<Value> = r
                .subsets
                .iter()
                .map(|(name, (labels, p))| {
                    let mut s = json!({"name": name, "labels": labels});
                    if let Some(p) = p {
                        s["trafficPolicy"] = p.clone();
                    }
                    s
                })
                .collect();
            spec.insert("subsets".into(), Value::Array(subsets));
        }
        if !policy.is_empty() {
            spec.insert("trafficPolicy".into(), Value::Object(policy));
        }
        if spec.len() == 1 {
            continue;
        }
        let mut sources = r.sources.clone();
        sources.sort();
        sources.dedup();
        out.push(cx.object(
            Kind::DestinationRule,
            format!("appmesh-{}", dns_name(host, 200)),
            sources.join(", "),
            Value::Object(spec),
        ));
    }
    out
}

/// Gives the served ServiceEntries' ports the protocols of the virtual nodes' listeners (App Mesh
/// knows 8080 is HTTP; an ECS registration does not). Only ports served as TCP change; a renamed
/// port keeps its endpoints (their port maps name the port, and istiod drops an entry whose
/// endpoints name an undeclared port).
pub fn apply_port_protocols(entries: &mut [ServiceEntry], protocols: &BTreeMap<String, BTreeMap<u32, Protocol>>) {
    for e in entries {
        let Some(p) = e.spec.hosts.first().and_then(|h| protocols.get(h)) else { continue };
        let mut renamed: Vec<(String, String)> = Vec::new();
        for port in &mut e.spec.ports {
            if let Some(proto) = p.get(&port.number) {
                if port.protocol == "TCP" && *proto != Protocol::Tcp {
                    let name = format!("{}-{}", proto.istio().to_ascii_lowercase(), port.number);
                    renamed.push((std::mem::replace(&mut port.name, name.clone()), name));
                    port.protocol = proto.istio().to_string();
                }
            }
        }
        for ep in &mut e.spec.endpoints {
            for (old, new) in &renamed {
                if let Some(n) = ep.ports.remove(old) {
                    ep.ports.insert(new.clone(), n);
                }
            }
        }
    }
}
