//! What shapes one service's ServiceEntry: the flag defaults, the mapping rules that match it
//! (first match wins per field) and its own `cloudmap-mcp/*` service attributes (which win over
//! both). Invalid attribute values are ignored with a [`Note`] saying why.
use std::collections::BTreeMap;

use super::mapping::{EndpointLabels, PortRule, Rule};
use super::vip::VipMode;
use super::{validate, HostTemplate, Location, Note, NoteKind, Options, Port, Resolution, ServiceRef};
use crate::model;

/// Service attribute keys that override the mapping for their service.
pub mod keys {
    pub const PROTOCOL: &str = "cloudmap-mcp/protocol";
    pub const HOSTS: &str = "cloudmap-mcp/hosts";
    pub const EXPORT_TO: &str = "cloudmap-mcp/export-to";
    pub const LOCATION: &str = "cloudmap-mcp/location";
    pub const VIP: &str = "cloudmap-mcp/vip";
    pub const ALL: &[&str] = &[PROTOCOL, HOSTS, EXPORT_TO, LOCATION, VIP];
}

/// Protocols a service may ask for with `cloudmap-mcp/protocol`.
const OVERRIDE_PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "GRPC", "HTTP2", "TCP", "TLS"];

/// The settings of one service, resolved.
pub struct Shape<'a> {
    pub host: HostTemplate,
    /// Extra host templates (mapping `aliases`) or hosts (`cloudmap-mcp/hosts`).
    pub aliases: Vec<HostTemplate>,
    /// `aliases` are the `cloudmap-mcp/hosts` attribute's (held to the allowed domains).
    pub aliases_from_attribute: bool,
    pub sanitize: bool,
    pub istio_namespace: &'a str,
    pub export_to: Vec<String>,
    pub location: Location,
    pub resolution: Option<Resolution>,
    /// Port entries of the matching rules, in rule order, with the rule's index.
    port_rules: Vec<(usize, &'a PortRule)>,
    pub protocol: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub endpoint_labels: Option<&'a EndpointLabels>,
    pub vip: VipMode,
    /// Rule index and name → the fields it gave.
    shaped_by: BTreeMap<(usize, &'a str), Vec<&'static str>>,
    /// Override keys applied (without the prefix).
    overrides: Vec<&'static str>,
}

impl<'a> Shape<'a> {
    pub fn resolve(
        ns: &model::Namespace,
        svc: &model::Service,
        opts: &'a Options,
        source: &ServiceRef,
        notes: &mut Vec<Note>,
    ) -> Shape<'a> {
        let mut s = Shape {
            host: opts.host_template.clone(),
            aliases: Vec::new(),
            aliases_from_attribute: false,
            sanitize: false,
            istio_namespace: &opts.istio_namespace,
            export_to: opts.export_to.clone(),
            location: opts.location,
            resolution: None,
            port_rules: Vec::new(),
            protocol: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            endpoint_labels: None,
            vip: opts.vips.default_mode(),
            shaped_by: BTreeMap::new(),
            overrides: Vec::new(),
        };
        let mut set = Fields::default();
        for (i, rule) in opts.mapping.rules().iter().enumerate().filter(|(_, r)| r.matches(ns, svc)) {
            let fields = s.apply(i, rule, &mut set);
            if !fields.is_empty() {
                s.shaped_by.insert((i, rule.name()), fields);
            }
        }
        // Flag labels are the defaults under the rules' labels.
        for (k, v) in &opts.labels {
            s.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        s.apply_overrides(svc, source, notes);
        s
    }

    /// Takes from `rule` every field no earlier rule set; returns the fields taken.
    fn apply(&mut self, index: usize, rule: &'a Rule, set: &mut Fields) -> Vec<&'static str> {
        let mut took = Vec::new();
        macro_rules! first {
            ($field:ident, $name:literal, |$v:ident| $assign:expr) => {
                if let (false, Some($v)) = (set.$field, rule.$field.as_ref()) {
                    set.$field = true;
                    $assign;
                    took.push($name);
                }
            };
        }
        first!(host, "host", |v| self.host = HostTemplate::unchecked(&v.0));
        first!(aliases, "aliases", |v| self.aliases = v.iter().map(|t| HostTemplate::unchecked(&t.0)).collect());
        first!(sanitize, "sanitize", |v| self.sanitize = *v);
        first!(istio_namespace, "istioNamespace", |v| self.istio_namespace = &v.0);
        first!(export_to, "exportTo", |v| self.export_to = v.0.clone());
        first!(location, "location", |v| self.location = *v);
        first!(resolution, "resolution", |v| self.resolution = Some(*v));
        first!(endpoint_labels, "endpointLabels", |v| self.endpoint_labels = Some(v));
        first!(vip, "vip", |v| self.vip = *v);
        if let Some(ports) = &rule.ports {
            self.port_rules.extend(ports.iter().map(|p| (index, p)));
        }
        if merge_first(&mut self.labels, rule.labels.as_ref().map(|l| &l.0)) {
            took.push("labels");
        }
        if merge_first(&mut self.annotations, rule.annotations.as_ref().map(|a| &a.0)) {
            took.push("annotations");
        }
        took
    }

    fn apply_overrides(&mut self, svc: &model::Service, source: &ServiceRef, notes: &mut Vec<Note>) {
        for (key, value) in svc.attributes.range(super::ANNOTATION_PREFIX.to_string()..) {
            if !key.starts_with(super::ANNOTATION_PREFIX) {
                break;
            }
            let v = value.trim();
            let result = match key.as_str() {
                keys::PROTOCOL => {
                    let up = v.to_ascii_uppercase();
                    if OVERRIDE_PROTOCOLS.contains(&up.as_str()) {
                        self.protocol = Some(up);
                        Ok("protocol")
                    } else {
                        Err(format!("not one of {}", OVERRIDE_PROTOCOLS.join(", ")))
                    }
                }
                keys::HOSTS => list(v)
                    .iter()
                    .map(|h| {
                        let h = h.trim_end_matches('.').to_ascii_lowercase();
                        validate::host(&h).map(|_| HostTemplate::unchecked(&h))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|hosts| {
                        self.aliases = hosts;
                        self.aliases_from_attribute = true;
                        "hosts"
                    }),
                keys::EXPORT_TO => {
                    let l = list(v);
                    validate::export_to(&l, Some(self.istio_namespace)).map(|_| {
                        self.export_to = l;
                        "export-to"
                    })
                }
                keys::LOCATION => match v {
                    "MESH_EXTERNAL" => Ok(Location::MeshExternal),
                    "MESH_INTERNAL" => Ok(Location::MeshInternal),
                    _ => Err("not MESH_EXTERNAL or MESH_INTERNAL".to_string()),
                }
                .map(|l| {
                    self.location = l;
                    "location"
                }),
                keys::VIP => v.parse::<VipMode>().map(|m| {
                    self.vip = m;
                    "vip"
                }),
                _ => Err(format!("unknown key (known: {})", keys::ALL.join(", "))),
            };
            match result {
                Ok(k) => self.overrides.push(k),
                Err(why) => notes.push(Note {
                    source: source.clone(),
                    instance: None,
                    kind: NoteKind::Override,
                    message: format!("service attribute {key}={value:?} ignored: {why}"),
                }),
            }
        }
    }

    /// `name` made host-friendly when the rules ask for it (the template lower-cases).
    pub fn name<'n>(&self, name: &'n str) -> std::borrow::Cow<'n, str> {
        if self.sanitize && name.contains('_') {
            sanitize(name).into()
        } else {
            name.into()
        }
    }

    /// Applies the port rules and the protocol override to the ports derived from the instances.
    /// Returns, per port, the instance port it serves and the port as served.
    pub fn ports(&mut self, opts: &'a Options, derived: Vec<Port>) -> Vec<(u32, Port)> {
        derived
            .into_iter()
            .map(|p| {
                let orig = p.number;
                let found = self.port_rules.iter().find(|(_, r)| r.instance_port.is_none_or(|n| n == orig));
                if let Some((i, _)) = found {
                    let fields = self.shaped_by.entry((*i, opts.mapping.rules()[*i].name())).or_default();
                    if !fields.contains(&"ports") {
                        fields.push("ports");
                    }
                }
                let rule = found.map(|(_, r)| *r);
                let number = rule.and_then(|r| r.number).unwrap_or(orig);
                let mut protocol = rule.and_then(|r| r.protocol.as_ref()).map_or(p.protocol.clone(), |x| x.0.clone());
                if let Some(o) = &self.protocol {
                    protocol = o.clone();
                }
                let name = match rule.and_then(|r| r.name.as_ref()) {
                    Some(n) => n.0.clone(),
                    None if protocol == p.protocol && number == orig => p.name,
                    None => format!("{}-{number}", protocol.to_ascii_lowercase()),
                };
                (orig, Port { number, name, protocol })
            })
            .collect()
    }

    /// The `cloudmap-mcp/rules` and `cloudmap-mcp/overrides` annotation values, when any rule or
    /// override shaped the entry.
    pub fn provenance(&self) -> (Option<String>, Option<String>) {
        let rules = (!self.shaped_by.is_empty()).then(|| {
            self.shaped_by.iter().map(|((_, n), f)| format!("{n} ({})", f.join(", "))).collect::<Vec<_>>().join("; ")
        });
        let overrides = (!self.overrides.is_empty()).then(|| self.overrides.join(", "));
        (rules, overrides)
    }
}

/// Which single-valued fields an earlier rule already set.
#[derive(Default)]
struct Fields {
    host: bool,
    aliases: bool,
    sanitize: bool,
    istio_namespace: bool,
    export_to: bool,
    location: bool,
    resolution: bool,
    endpoint_labels: bool,
    vip: bool,
}

/// Adds the keys of `from` not in `into` yet; whether any was added.
fn merge_first(into: &mut BTreeMap<String, String>, from: Option<&BTreeMap<String, String>>) -> bool {
    let before = into.len();
    for (k, v) in from.into_iter().flatten() {
        into.entry(k.clone()).or_insert_with(|| v.clone());
    }
    into.len() > before
}

/// `_` → `-`, then no `-` at either end of a label (`_sip._tcp` → `sip.tcp`).
pub fn sanitize(name: &str) -> String {
    name.replace('_', "-").split('.').map(|l| l.trim_matches('-')).collect::<Vec<_>>().join(".")
}

/// A comma-separated attribute value, trimmed, without empty items.
fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}
