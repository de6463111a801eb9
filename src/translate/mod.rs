//! Cloud Map model → Istio ServiceEntries: a pure, deterministic function (SPEC section 2).
//!
//! [`translate`] takes a [`model::Snapshot`] and [`Options`] and returns every ServiceEntry the server
//! will serve plus the reasons for everything it left out. It does no I/O, reads no clock, and sorts
//! every collection, so the same snapshot gives byte-identical output on every replica and every poll.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{self, attr, Timestamp};
pub use crate::model::HealthFilter;
pub use hosts::HostPolicy;
pub use mapping::Mapping;
pub use shape::keys as override_keys;
use shape::Shape;
pub use vip::{Allocation, VipMode, VipSettings};

pub mod hosts;
pub mod mapping;
pub mod render;
mod shape;
#[cfg(test)]
mod address_tests;
#[cfg(test)]
mod tests;
pub mod validate;
pub mod vip;

/// ServiceEntry `location`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[clap(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

/// ServiceEntry `resolution` (only the two this server emits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    Static,
    Dns,
}

/// A host template with `{service}` and `{namespace}` placeholders, e.g. `{service}.{namespace}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTemplate(String);

impl HostTemplate {
    pub fn new(t: &str) -> Result<Self, String> {
        if !t.contains("{service}") {
            return Err(format!("host template {t:?} must contain {{service}}"));
        }
        let rest = t.replace("{service}", "").replace("{namespace}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!("host template {t:?}: only {{service}} and {{namespace}} are known placeholders"));
        }
        Ok(HostTemplate(t.to_string()))
    }

    /// A template checked elsewhere (mapping rules check theirs while parsing).
    pub(crate) fn unchecked(t: &str) -> Self {
        HostTemplate(t.to_string())
    }

    /// Fills the placeholders in one pass: text that came from a name is never read as a
    /// placeholder (a service named `{namespace}` stays that, and fails host validation).
    pub fn render(&self, service: &str, namespace: &str) -> String {
        let mut out = String::with_capacity(self.0.len() + service.len() + namespace.len());
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(r) = rest.strip_prefix("{service}") {
                out.push_str(service);
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{namespace}") {
                out.push_str(namespace);
                rest = r;
            } else {
                out.push('{');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        out.to_ascii_lowercase()
    }
}

impl Default for HostTemplate {
    fn default() -> Self {
        HostTemplate("{service}.{namespace}".into())
    }
}

/// Everything that shapes the output besides the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Kubernetes namespace the ServiceEntries are placed in.
    pub istio_namespace: String,
    pub host_template: HostTemplate,
    pub health_filter: HealthFilter,
    pub location: Location,
    /// Sets the `istio.io/rev` label; istiod drops resources whose revision is not its own.
    pub revision: Option<String>,
    /// Extra labels on every ServiceEntry.
    pub labels: BTreeMap<String, String>,
    /// `exportTo` of every ServiceEntry (empty: exported everywhere).
    pub export_to: Vec<String>,
    /// The mapping file's rules (empty without one).
    pub mapping: Arc<Mapping>,
    /// VIP allocation for entries without an address.
    pub vips: VipSettings,
    /// What extra hosts a service may have.
    pub hosts: HostPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            istio_namespace: "istio-system".into(),
            host_template: HostTemplate::default(),
            health_filter: HealthFilter::default(),
            location: Location::default(),
            revision: None,
            labels: BTreeMap::new(),
            export_to: Vec::new(),
            mapping: Arc::new(Mapping::default()),
            vips: VipSettings::default(),
            hosts: HostPolicy::default(),
        }
    }
}

/// Prefix of the annotations that trace a ServiceEntry back to Cloud Map.
pub const ANNOTATION_PREFIX: &str = "cloudmap-mcp/";
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "cloudmap-mcp");

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Port {
    pub number: u32,
    pub name: String,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub locality: String,
}

/// The ServiceEntry spec, in the shape of `networking.istio.io` ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "is_mesh_external")]
    pub location: Location,
    pub resolution: Resolution,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

fn is_mesh_external(l: &Location) -> bool {
    *l == Location::MeshExternal
}

/// Which Cloud Map service an output or a rejection came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub service: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)
    }
}

/// One ServiceEntry with its Kubernetes-style metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Kubernetes object name (`cloudmap-<host>`, hashed when too long).
    pub name: String,
    pub namespace: String,
    pub create_time: Timestamp,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: ServiceEntrySpec,
    pub source: ServiceRef,
    /// Whether it gets a VIP (set as `addresses` by the allocation across all entries).
    pub wants_vip: bool,
}

impl ServiceEntry {
    /// The MCP resource name, `<namespace>/<name>`.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Cloud Map service that produced no ServiceEntry, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Rejection {
    pub source: ServiceRef,
    pub reason: String,
}

/// Something left out of a ServiceEntry that was still emitted (an instance, an attribute).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Note {
    pub source: ServiceRef,
    /// Instance id, when the note is about one instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: NoteKind,
    pub message: String,
}

/// What a [`Note`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// An instance left out (no usable address or port, or a duplicate endpoint).
    SkippedInstance,
    /// An instance attribute not used as it was (not a label, an unknown protocol, a zone without
    /// a region).
    Attribute,
    /// A `cloudmap-mcp/*` service attribute ignored.
    Override,
    /// Something the mapping asked for that could not be applied (aliases on a TCP port).
    Mapping,
    /// No VIP: the range is full.
    Vip,
    /// An extra host not served (another service's host, in the cluster's domains, outside the
    /// allowed domains, beyond the cap; see [`hosts`]).
    Host,
}

/// The result of [`translate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// Sorted by resource name.
    pub entries: Vec<ServiceEntry>,
    /// Sorted by source.
    pub rejected: Vec<Rejection>,
    /// Skipped instances and ignored attributes, sorted.
    pub notes: Vec<Note>,
    /// The VIPs of the entries that have one (by first host).
    pub vips: Allocation,
    /// Entries whose VIP is not the address their host hashes to (another host had it).
    pub vip_collisions: usize,
}

/// Translates a snapshot into ServiceEntries (see the module docs). A function of the snapshot and
/// the options alone, VIPs included.
pub fn translate(snapshot: &model::Snapshot, opts: &Options) -> Translation {
    let mut out = Translation::default();
    let mut candidates = Vec::new();
    for ns in &snapshot.namespaces {
        for svc in &ns.services {
            let (result, mut notes) = translate_service(ns, svc, opts);
            out.notes.append(&mut notes);
            match result {
                Ok(se) => candidates.push(se),
                Err(reason) => out.rejected.push(Rejection { source: source_of(ns, svc), reason }),
            }
        }
    }
    let mut entries = resolve_collisions(candidates, &mut out.rejected);
    let dropped = hosts::drop_contested_hosts(&entries, &mut out.notes);
    for (e, d) in entries.iter_mut().zip(dropped) {
        e.spec.hosts.retain(|h| !d.contains(h));
    }
    sort_by_resource_name(&mut entries, |e| (e.namespace.as_str(), e.name.as_str()));
    let allocated =
        vip::allocate(entries.iter().filter(|e| e.wants_vip).map(|e| (e.create_time, e.host())), &opts.vips.cidrs);
    for e in entries.iter_mut().filter(|e| e.wants_vip) {
        e.spec.addresses = vip_addresses(&allocated.addresses, e.host());
    }
    out.notes.extend(vip_notes(&allocated.exhausted, &entries));
    out.entries = entries;
    out.vips = allocated.addresses;
    out.vip_collisions = allocated.collisions;
    out.rejected.sort();
    out.notes.sort();
    out
}

/// Sorts entries by `<namespace>/<name>` (the order of a response and of the version hash).
pub fn sort_by_resource_name<T>(entries: &mut [T], key: impl Fn(&T) -> (&str, &str)) {
    entries.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// The `addresses` of an entry given its host's VIPs.
pub fn vip_addresses(allocation: &Allocation, host: &str) -> Vec<String> {
    allocation.get(host).map(|v| v.iter().map(IpAddr::to_string).collect()).unwrap_or_default()
}

/// Notes for entries that wanted a VIP and got none (in entry order). One walk over the entries:
/// looking each exhausted host up among them was quadratic when a range is full.
pub fn vip_notes<T: CollisionCandidate>(exhausted: &[String], entries: &[T]) -> Vec<Note> {
    let mut notes = Vec::new();
    if exhausted.is_empty() {
        return notes;
    }
    let exhausted: std::collections::HashSet<&str> = exhausted.iter().map(String::as_str).collect();
    for e in entries {
        if exhausted.contains(e.host()) {
            notes.push(Note {
                source: e.source().clone(),
                instance: None,
                kind: NoteKind::Vip,
                message: "the VIP range (--vip-cidr) is full: served without a VIP in it".into(),
            });
        }
    }
    notes
}

/// The reference to a model service.
pub fn source_of(ns: &model::Namespace, svc: &model::Service) -> ServiceRef {
    ServiceRef { namespace: ns.name.clone(), service: svc.name.clone() }
}

/// What the collision pass of [`resolve_collisions`] looks at in a candidate ServiceEntry (the
/// typed one here, or a pre-encoded one in the resource cache).
pub trait CollisionCandidate {
    /// Kubernetes object name.
    fn object_name(&self) -> &str;
    fn create_time(&self) -> Timestamp;
    fn source(&self) -> &ServiceRef;
    fn host(&self) -> &str;
    /// The hosts besides [`Self::host`] (mapping aliases, `cloudmap-mcp/hosts`).
    fn extra_hosts(&self) -> &[String];
}

impl CollisionCandidate for ServiceEntry {
    fn object_name(&self) -> &str {
        &self.name
    }
    fn create_time(&self) -> Timestamp {
        self.create_time
    }
    fn source(&self) -> &ServiceRef {
        &self.source
    }
    fn host(&self) -> &str {
        &self.spec.hosts[0]
    }
    fn extra_hosts(&self) -> &[String] {
        &self.spec.hosts[1..]
    }
}

/// Two services may map to the same host (names differing only in case, or a template that drops
/// the namespace) or the same object name. Keeps the oldest, as istiod would, adds a rejection
/// saying why for each other one, and returns the kept candidates sorted by object name.
pub fn resolve_collisions<T: CollisionCandidate>(mut candidates: Vec<T>, rejected: &mut Vec<Rejection>) -> Vec<T> {
    candidates.sort_by(|a, b| {
        a.object_name()
            .cmp(b.object_name())
            .then(a.create_time().cmp(&b.create_time()))
            .then_with(|| a.source().cmp(b.source()))
    });
    // The object name is a function of the host, so entries sharing a host (or only an object
    // name) are adjacent now, the oldest first: it is kept and the others are rejected. Decided on
    // borrowed names (no copies: this runs over every service on every build).
    let mut keep = vec![false; candidates.len()];
    let mut winner: Option<&T> = None;
    for (i, c) in candidates.iter().enumerate() {
        match winner.filter(|w| w.object_name() == c.object_name()) {
            Some(w) if w.host() == c.host() => rejected.push(Rejection {
                reason: format!("host {:?} is already served for the older service {}", c.host(), w.source()),
                source: c.source().clone(),
            }),
            Some(w) => rejected.push(Rejection {
                reason: format!("resource name {:?} is already used by {}", c.object_name(), w.source()),
                source: c.source().clone(),
            }),
            None => {
                winner = Some(c);
                keep[i] = true;
            }
        }
    }
    candidates.into_iter().zip(keep).filter_map(|(c, k)| k.then_some(c)).collect()
}

/// Translates one service: its ServiceEntry or the reason it has none, and notes on what was left
/// out of it. Depends only on the namespace, the service and the options (not on other services:
/// collisions between services are [`resolve_collisions`]' job).
pub fn translate_service(
    ns: &model::Namespace,
    svc: &model::Service,
    opts: &Options,
) -> (Result<ServiceEntry, String>, Vec<Note>) {
    let source = source_of(ns, svc);
    let mut notes = Vec::new();
    let result = translate_one(ns, svc, opts, &source, &mut notes);
    (result, notes)
}

fn translate_one(
    ns: &model::Namespace,
    svc: &model::Service,
    opts: &Options,
    source: &ServiceRef,
    notes: &mut Vec<Note>,
) -> Result<ServiceEntry, String> {
    let mut shape = Shape::resolve(ns, svc, opts, source, notes);
    let (svc_name, ns_name) = (shape.name(&svc.name), shape.name(&ns.name));
    let host = shape.host.render(&svc_name, &ns_name);
    validate::host(&host).map_err(|e| {
        let fixed = shape::sanitize(&host);
        if !shape.sanitize && host.contains('_') && validate::host(&fixed).is_ok() {
            format!("{e} (a mapping rule with `sanitize: true` serves it as {fixed:?})")
        } else {
            e
        }
    })?;
    // A Cloud Map namespace named `default.svc.cluster.local` (or an HTTP namespace `svc` with a
    // service `istiod.istio-system`) must not shadow the cluster's own services; nor, with
    // --host-domain, an HTTP namespace `amazonaws.com` a public name.
    if let Some(why) = opts.hosts.refused(&host) {
        return Err(format!("host {host:?} not served: {why}"));
    }
    let note = |kind, instance: Option<&str>, message: String| Note {
        source: source.clone(),
        instance: instance.map(str::to_string),
        kind,
        message,
    };

    let mut eps: Vec<Candidate> = Vec::new();
    for inst in opts.health_filter.select(&svc.instances) {
        match candidate(inst) {
            Ok(c) => eps.push(c),
            Err(message) => notes.push(note(NoteKind::SkippedInstance, Some(&inst.id), message)),
        }
    }
    for c in &eps {
        if let Some(m) = protocol_attribute_problem(&c.inst.attributes) {
            notes.push(note(NoteKind::Attribute, Some(&c.inst.id), m));
        }
        if let Some(m) = locality_problem(&c.inst.attributes) {
            notes.push(note(NoteKind::Attribute, Some(&c.inst.id), m));
        }
    }

    let served = shape.ports(opts, service_ports(&eps));
    let ports: Vec<Port> = served.iter().map(|(_, p)| p.clone()).collect();
    let default_pair = served.len() == 2 && served[0].0 == 80 && served[1].0 == 443;
    let resolution = if eps.iter().all(|c| c.is_ip) { Resolution::Static } else { Resolution::Dns };
    let resolution = shape.resolution.unwrap_or(resolution);
    let mut endpoints = Vec::with_capacity(eps.len());
    let mut ignored: BTreeMap<String, String> = BTreeMap::new();
    for c in &eps {
        let ports = match c.port {
            Some(p) => BTreeMap::from([(ports[0].name.clone(), p)]),
            None if default_pair => served.iter().map(|(orig, p)| (p.name.clone(), *orig)).collect(),
            // No instance port: the endpoint takes the service port, unless a rule renumbered it.
            None if served[0].0 != served[0].1.number => BTreeMap::from([(ports[0].name.clone(), served[0].0)]),
            None => BTreeMap::new(),
        };
        let labels = endpoint_labels(&c.inst.attributes, shape.endpoint_labels, &mut ignored);
        let ep = Endpoint { address: c.address.clone(), ports, labels, locality: locality(&c.inst.attributes) };
        endpoints.push((ep, c.inst.id.as_str()));
    }
    if !ignored.is_empty() {
        let why: Vec<String> = ignored.into_values().collect();
        notes.push(note(
            NoteKind::Attribute,
            None,
            format!("attributes not usable as Kubernetes labels were not copied: {}", why.join("; ")),
        ));
    }
    // One endpoint per address and ports. Two instances registered with the same address and port
    // (a re-registration under a new id) are one network endpoint: keep the first by instance id
    // (stable sort; instances come sorted by id) and say so when their labels or locality differ.
    // (Found by the `translate` fuzz target: such duplicates used to be served side by side.)
    endpoints.sort_by(|(a, _), (b, _)| a.address.cmp(&b.address).then_with(|| a.ports.cmp(&b.ports)));
    let mut kept: Vec<(Endpoint, &str)> = Vec::with_capacity(endpoints.len());
    for (ep, id) in endpoints {
        if let Some((last, last_id)) = kept.last() {
            if last.address == ep.address && last.ports == ep.ports {
                if *last != ep {
                    notes.push(note(
                        NoteKind::SkippedInstance,
                        Some(id),
                        format!(
                            "same address and ports as instance {last_id} but different labels or locality; only {last_id}'s endpoint is served"
                        ),
                    ));
                }
                continue;
            }
        }
        kept.push((ep, id));
    }
    let endpoints: Vec<Endpoint> = kept.into_iter().map(|(ep, _)| ep).collect();

    // The address rule (docs/reaching-services.md, module `vip`): a single STATIC endpoint of a
    // service that is not made of tasks or pods is the address (SPEC 2.7); everything else gets a
    // VIP (allocated across all entries), so a service whose tasks come and go keeps one address.
    let single = match (resolution, endpoints.as_slice()) {
        (Resolution::Static, [only]) => Some(only.address.clone()),
        _ => None,
    };
    let wants_vip = !opts.vips.cidrs.is_empty()
        && match shape.vip {
            VipMode::Never => false,
            VipMode::Always => true,
            VipMode::Auto => single.is_none() || vip::dynamic(&svc.instances),
        };
    let addresses = if wants_vip { Vec::new() } else { single.into_iter().collect() };

    // Attribute hosts are held to the allowed domains; the mapping's aliases are not.
    let allowed = shape.aliases_from_attribute.then(|| opts.mapping.override_domains(&ns.name));
    let extras = shape.aliases.iter().map(|a| a.render(&svc_name, &ns_name));
    let mut hosts = hosts::own_and_extra(host.clone(), extras, allowed.as_deref(), &opts.hosts, source, notes);
    let http_or_tls = ports.iter().all(|p| validate::is_http_or_tls(&p.protocol));
    if hosts.len() > 1 && !http_or_tls {
        notes.push(note(
            NoteKind::Mapping,
            None,
            format!(
                "extra hosts {} not served: a ServiceEntry with more than one host needs HTTP or TLS ports (set a protocol)",
                hosts[1..].join(", ")
            ),
        ));
        hosts.truncate(1);
    }
    for h in &hosts[1..] {
        validate::host(h).map_err(|e| format!("alias: {e}"))?;
    }

    let spec = ServiceEntrySpec {
        hosts,
        addresses,
        ports,
        location: shape.location,
        resolution,
        endpoints,
        export_to: shape.export_to.clone(),
    };
    validate::service_entry(&spec)?;
    validate::export_to(&spec.export_to, Some(shape.istio_namespace))?;
    validate::dns_label(shape.istio_namespace).map_err(|e| format!("istio namespace {e}"))?;

    let mut labels = shape.labels.clone();
    labels.insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    if let Some(rev) = &opts.revision {
        labels.insert("istio.io/rev".into(), rev.clone());
    }
    let mut annotations = shape.annotations.clone();
    let mut annotate = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            annotations.insert(format!("{ANNOTATION_PREFIX}{k}"), v.clone());
        }
    };
    annotate("namespace", Some(&ns.name));
    annotate("namespace-id", ns.id.as_ref());
    annotate("service", Some(&svc.name));
    annotate("service-id", svc.id.as_ref());
    annotate("service-arn", svc.arn.as_ref());
    let (rules, overrides) = shape.provenance();
    annotate("rules", rules.as_ref());
    annotate("overrides", overrides.as_ref());

    Ok(ServiceEntry {
        name: object_name(&host),
        namespace: shape.istio_namespace.to_string(),
        create_time: svc.create_date.unwrap_or_default(),
        labels,
        annotations,
        spec,
        source: source.clone(),
        wants_vip,
    })
}

struct Candidate<'a> {
    inst: &'a model::Instance,
    address: String,
    is_ip: bool,
    port: Option<u32>,
}

/// SPEC 2.2: the endpoint address of an instance, and its port.
fn candidate(inst: &model::Instance) -> Result<Candidate<'_>, String> {
    let a = &inst.attributes;
    let port = match a.get(attr::PORT).map(|p| p.trim()) {
        None | Some("") => None,
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Some(n),
            _ => return Err(format!("{} {p:?} is not a port number (1-65535)", attr::PORT)),
        },
    };
    let (address, is_ip) = if let Some(v) = a.get(attr::IPV4) {
        match v.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => (ip.to_string(), true),
            _ => return Err(format!("{} {v:?} is not an IPv4 address", attr::IPV4)),
        }
    } else if let Some(v) = a.get(attr::IPV6) {
        match v.trim().parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => (ip.to_string(), true),
            _ => return Err(format!("{} {v:?} is not an IPv6 address", attr::IPV6)),
        }
    } else if let Some((key, v)) = [attr::CNAME, attr::ALIAS_DNS_NAME].iter().find_map(|k| a.get(*k).map(|v| (*k, v))) {
        let name = v.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            (ip.to_string(), true)
        } else {
            validate::dns_name(&name).map_err(|e| format!("{key} {v:?}: {e}"))?;
            (name, false)
        }
    } else {
        return Err(format!(
            "no address: none of {}, {}, {}, {} is set",
            attr::IPV4,
            attr::IPV6,
            attr::CNAME,
            attr::ALIAS_DNS_NAME
        ));
    };
    Ok(Candidate { inst, address, is_ip, port })
}

/// Istio protocol names accepted from an instance's `protocol` attribute.
const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS"];

/// SPEC 2.3: one service port; `http 80` + `https 443` when no instance has a port.
fn service_ports(eps: &[Candidate<'_>]) -> Vec<Port> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for p in eps.iter().filter_map(|c| c.port) {
        *counts.entry(p).or_default() += 1;
    }
    // Most common port; ties go to the lowest number (BTreeMap order + max_by_key keeps the last max,
    // so iterate in reverse).
    let Some((&number, _)) = counts.iter().rev().max_by_key(|(_, n)| **n) else {
        return vec![
            Port { number: 80, name: "http".into(), protocol: "HTTP".into() },
            Port { number: 443, name: "https".into(), protocol: "HTTPS".into() },
        ];
    };
    let (name, protocol) = match number {
        80 => ("http".to_string(), "HTTP".to_string()),
        443 => ("https".to_string(), "HTTPS".to_string()),
        n => {
            let mut votes: BTreeMap<String, usize> = BTreeMap::new();
            for c in eps {
                if let Some(p) = protocol_attribute(&c.inst.attributes) {
                    *votes.entry(p).or_default() += 1;
                }
            }
            let proto = votes.iter().rev().max_by_key(|(_, n)| **n).map(|(p, _)| p.clone()).unwrap_or_else(|| "TCP".into());
            (format!("{}-{n}", proto.to_ascii_lowercase()), proto)
        }
    };
    vec![Port { number, name, protocol }]
}

fn protocol_attribute(a: &BTreeMap<String, String>) -> Option<String> {
    let v = a.iter().find(|(k, _)| k.eq_ignore_ascii_case("protocol"))?.1.trim().to_ascii_uppercase();
    PROTOCOLS.contains(&v.as_str()).then_some(v)
}

/// Item for the notes: a `protocol` attribute that is not an Istio protocol.
fn protocol_attribute_problem(a: &BTreeMap<String, String>) -> Option<String> {
    let (k, v) = a.iter().find(|(k, _)| k.eq_ignore_ascii_case("protocol"))?;
    let up = v.trim().to_ascii_uppercase();
    (!PROTOCOLS.contains(&up.as_str())).then(|| {
        format!(
            "attribute {k}={v:?} is not a protocol this server knows ({}); it does not set the port protocol",
            PROTOCOLS.join(", ")
        )
    })
}

/// SPEC 2.4: custom attributes that are valid Kubernetes labels and pass the endpoint label
/// filter. Keys that are not valid labels go to `ignored`, with the rule they break.
fn endpoint_labels(
    a: &BTreeMap<String, String>,
    filter: Option<&mapping::EndpointLabels>,
    ignored: &mut BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (k, v) in a {
        if k.starts_with("AWS_") || filter.is_some_and(|f| !f.keeps(k)) {
            continue;
        }
        match validate::label_key(k).and_then(|_| validate::label_value(v).map_err(|e| format!("attribute {k:?}: {e}")))
        {
            Ok(()) => {
                labels.insert(k.clone(), v.clone());
            }
            Err(why) => {
                ignored.entry(k.clone()).or_insert(why);
            }
        }
    }
    labels
}

/// SPEC 2.4: `REGION`/`AVAILABILITY_ZONE` → `region/zone`.
fn locality(a: &BTreeMap<String, String>) -> String {
    match (clean_locality(a, attr::REGION), clean_locality(a, attr::AVAILABILITY_ZONE)) {
        (Some(r), Some(z)) => format!("{r}/{z}"),
        (Some(r), None) => r.to_string(),
        _ => String::new(),
    }
}

fn clean_locality<'a>(a: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    a.get(k).map(|v| v.trim()).filter(|v| !v.is_empty() && !v.contains('/'))
}

/// Item for the notes: locality attributes that give no (or less) locality.
fn locality_problem(a: &BTreeMap<String, String>) -> Option<String> {
    let bad = |k: &str| {
        a.get(k).filter(|v| v.contains('/')).map(|v| format!("attribute {k}={v:?} contains '/'; not used for locality"))
    };
    if let Some(m) = bad(attr::REGION).or_else(|| bad(attr::AVAILABILITY_ZONE)) {
        return Some(m);
    }
    match (clean_locality(a, attr::REGION), clean_locality(a, attr::AVAILABILITY_ZONE)) {
        (None, Some(z)) => Some(format!(
            "attribute {}={z:?} without {}: the endpoint has no locality (set {} too)",
            attr::AVAILABILITY_ZONE,
            attr::REGION,
            attr::REGION
        )),
        _ => None,
    }
}

/// Longest Kubernetes object name (DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// `cloudmap-<host>`, shortened with a stable hash suffix when longer than Kubernetes allows.
pub fn object_name(host: &str) -> String {
    let name = format!("cloudmap-{host}");
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()));
    let keep = MAX_NAME_LEN - hash.len() - 1;
    let head = name[..keep].trim_end_matches(['.', '-']);
    format!("{head}-{hash}")
}
