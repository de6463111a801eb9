//! The mapping file (`--mapping-file`): ordered rules that shape the ServiceEntry of each Cloud Map
//! service (docs/mapping.md is the user reference).
//!
//! Parsing is pure (text in, [`Mapping`] out) and strict: every value is checked while it is
//! deserialized, so an error carries the YAML path and the line and column of the bad value.
//! Which rule gives which field of a service is decided in [`Mapping::resolve`].
//!
//! The file is bounded before its cost is: flow collections nested deeper than the registry file
//! allows are refused before the YAML parser sees them (its cost grows with the square of the
//! depth), and rules and glob alternatives are counted while they are read, so a file over
//! [`MAX_RULES`] or [`MAX_GLOB_ALTERNATIVES`] is refused before its globs are compiled.
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{validate, HostTemplate, Location, Resolution};
use crate::model::{self, NamespaceType};

/// A parsed, validated mapping file.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    rules: Vec<Rule>,
    host_overrides: Option<HostOverrides>,
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules && self.host_overrides == other.host_overrides
    }
}
impl Eq for Mapping {}

impl Mapping {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The domains a `cloudmap-mcp/hosts` attribute of a service in namespace `namespace` may put
    /// hosts under (`x.<domain>` and deeper): `hostOverrides.allowedDomains` with `{namespace}`
    /// filled in, or else the namespace itself.
    pub fn override_domains(&self, namespace: &str) -> Vec<String> {
        let ns = namespace.trim_end_matches('.').to_ascii_lowercase();
        match &self.host_overrides {
            None => vec![ns],
            Some(h) => h.allowed_domains.iter().map(|d| d.0.replace("{namespace}", &ns).to_ascii_lowercase()).collect(),
        }
    }
}

/// The mapping's `hostOverrides`: what the `cloudmap-mcp/hosts` service attribute may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostOverrides {
    /// Domains whose subdomains an attribute may claim; `{namespace}` is the service's Cloud Map
    /// namespace. Empty: no extra hosts from attributes.
    pub allowed_domains: Vec<AllowedDomain>,
}

/// A domain of `hostOverrides.allowedDomains` (may contain `{namespace}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedDomain(pub String);

impl<'de> Deserialize<'de> for AllowedDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if t.replace("{namespace}", "").contains(['{', '}']) {
            return Err(de::Error::custom(format!("allowed domain {s:?}: {{namespace}} is the only placeholder")));
        }
        validate::dns_name(&t.replace("{namespace}", "ns"))
            .map_err(|e| de::Error::custom(format!("allowed domain {s:?}: {e}")))?;
        Ok(AllowedDomain(t))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(String);

/// Most rules a mapping file may hold (a mapping has a rule per team or kind of service: tens).
/// Sized with the glob cap so that the largest accepted file translates within the Helm chart's
/// memory limit (measured in docs/mapping.md).
pub const MAX_RULES: usize = 1_000;

/// Most glob alternatives a mapping file may hold: each glob of a list counts one, and a
/// `{a,b,c}` group counts one per alternative. Every glob is compiled into a matcher that
/// costs memory and time for every service it is tried on.
pub const MAX_GLOB_ALTERNATIVES: usize = 10_000;

thread_local! {
    /// Glob alternatives the file being parsed may still hold (set by [`parse`] for one parse on
    /// its thread; unlimited outside one).
    static ALTERNATIVES_LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    #[serde(default, deserialize_with = "capped_rules")]
    rules: Vec<Rule>,
    host_overrides: Option<HostOverrides>,
}

/// Parses mapping file contents. An empty file is an empty mapping (no rules).
pub fn parse(text: &str) -> Result<Mapping, MappingError> {
    if text.trim().is_empty() {
        return Ok(Mapping::default());
    }
    if let Some((line, column)) = crate::util::flow_nesting_beyond(text, crate::util::MAX_FLOW_NESTING) {
        return Err(MappingError(format!(
            "line {line} column {column}: flow collections ([ ] {{ }}) nested deeper than {}",
            crate::util::MAX_FLOW_NESTING
        )));
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ALTERNATIVES_LEFT.set(usize::MAX);
        }
    }
    ALTERNATIVES_LEFT.set(MAX_GLOB_ALTERNATIVES);
    let _reset = Reset;
    let file: File = serde_yaml::from_str(text).map_err(|e| MappingError(e.to_string()))?;
    let mut names = BTreeSet::new();
    let mut rules = file.rules;
    for (i, r) in rules.iter_mut().enumerate() {
        let name = r.name.get_or_insert_with(|| format!("rules[{i}]"));
        if !names.insert(name.clone()) {
            return Err(MappingError(format!(
                "rules[{i}].name: {name:?} is the name of an earlier rule; rule names must be unique"
            )));
        }
    }
    Ok(Mapping { rules, host_overrides: file.host_overrides })
}

/// The rules, refused past [`MAX_RULES`] as soon as one more is read.
fn capped_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rule>, D::Error> {
    struct Rules;
    impl<'de> de::Visitor<'de> for Rules {
        type Value = Vec<Rule>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of rules")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Rule>, A::Error> {
            let mut rules = Vec::new();
            while let Some(rule) = seq.next_element()? {
                if rules.len() == MAX_RULES {
                    return Err(de::Error::custom(format!("more than {MAX_RULES} rules (the mapping file's cap)")));
                }
                rules.push(rule);
            }
            Ok(rules)
        }
    }
    d.deserialize_seq(Rules)
}

/// One rule: which services it matches and the fields it sets. Every field is optional; for each
/// field the first matching rule that sets it wins.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Shown in the `cloudmap-mcp/rules` annotation; `rules[N]` when not given.
    #[serde(default, deserialize_with = "rule_name")]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Match,
    pub host: Option<Template>,
    pub aliases: Option<Vec<Template>>,
    pub sanitize: Option<bool>,
    pub istio_namespace: Option<Namespace>,
    pub export_to: Option<ExportTo>,
    pub location: Option<Location>,
    pub resolution: Option<Resolution>,
    pub ports: Option<Vec<PortRule>>,
    pub labels: Option<Labels>,
    pub annotations: Option<Annotations>,
    pub endpoint_labels: Option<EndpointLabels>,
    pub vip: Option<super::vip::VipMode>,
}

impl Rule {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// Whether this rule applies to `svc` in `ns`: every given condition holds.
    pub fn matches(&self, ns: &model::Namespace, svc: &model::Service) -> bool {
        let m = &self.matches;
        m.namespace.as_ref().is_none_or(|g| g.name_or_id(&ns.name, ns.id.as_deref()))
            && m.service.as_ref().is_none_or(|g| g.name_or_id(&svc.name, svc.id.as_deref()))
            && m.namespace_type.as_ref().is_none_or(|t| t.contains(&ns.kind))
            && m.attributes
                .as_ref()
                .is_none_or(|a| a.iter().all(|(k, g)| svc.attributes.get(k).is_some_and(|v| g.is_match(v))))
    }
}

fn rule_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > 63 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(de::Error::custom(format!("rule name {s:?}: use 1-63 characters of A-Z, a-z, 0-9, '-', '_', '.'")));
    }
    Ok(Some(s))
}

/// What a rule matches. Empty: every service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    /// Globs matched against the Cloud Map namespace name or id.
    pub namespace: Option<Globs>,
    /// Globs matched against the Cloud Map service name or id.
    pub service: Option<Globs>,
    pub namespace_type: Option<Vec<NamespaceType>>,
    /// Service attributes (Cloud Map service-level attributes) that must be present, with a glob
    /// their value must match.
    pub attributes: Option<BTreeMap<String, Globs>>,
}

/// One glob or a list of globs (case-insensitive; `*`, `?`, `[abc]`, `{a,b}`).
///
/// Every rule's globs are tried on every service, so matching is on the hot path of a full
/// translation (rules × services). Globs that are a plain name, or a name with one `*` at an end
/// (most of them), are compared directly; only the others are compiled into a [`GlobSet`] (a
/// case-insensitive glob is a regex, with its own search cache).
#[derive(Clone, Debug)]
pub struct Globs {
    source: Vec<String>,
    simple: Vec<Simple>,
    set: Option<GlobSet>,
}

/// A glob matched without a regex: ASCII, lower-cased.
#[derive(Clone, Debug)]
enum Simple {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Simple {
    fn of(glob: &str) -> Option<Simple> {
        let plain = |s: &str| s.is_ascii() && !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        if plain(glob) {
            Some(Simple::Exact(glob.to_ascii_lowercase()))
        } else if let Some(p) = glob.strip_suffix('*').filter(|p| plain(p)) {
            Some(Simple::Prefix(p.to_ascii_lowercase()))
        } else {
            glob.strip_prefix('*').filter(|s| plain(s)).map(|s| Simple::Suffix(s.to_ascii_lowercase()))
        }
    }

    /// Case-insensitive in ASCII only, as a compiled glob is (its regex matches bytes).
    fn is_match(&self, s: &str) -> bool {
        let (b, (p, at_start, exact)) = (
            s.as_bytes(),
            match self {
                Simple::Exact(p) => (p, true, true),
                Simple::Prefix(p) => (p, true, false),
                Simple::Suffix(p) => (p, false, false),
            },
        );
        let p = p.as_bytes();
        if b.len() < p.len() || (exact && b.len() != p.len()) {
            return false;
        }
        let part = if at_start { &b[..p.len()] } else { &b[b.len() - p.len()..] };
        part.eq_ignore_ascii_case(p)
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Globs {}

impl Globs {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut b = GlobSetBuilder::new();
        let (mut simple, mut compiled) = (Vec::new(), 0);
        for p in patterns {
            if p.is_empty() {
                return Err("empty glob".into());
            }
            let g = GlobBuilder::new(p)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("{p:?} is not a valid glob: {}", e.kind()))?;
            match Simple::of(p) {
                Some(s) => simple.push(s),
                None => {
                    b.add(g);
                    compiled += 1;
                }
            }
        }
        let set = match compiled {
            0 => None,
            _ => Some(b.build().map_err(|e| format!("globs {patterns:?}: {e}"))?),
        };
        Ok(Globs { source: patterns.to_vec(), simple, set })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.simple.iter().any(|g| g.is_match(s)) || self.set.as_ref().is_some_and(|set| set.is_match(s))
    }

    fn name_or_id(&self, name: &str, id: Option<&str>) -> bool {
        self.is_match(name) || id.is_some_and(|i| self.is_match(i))
    }
}

/// What a glob counts against [`MAX_GLOB_ALTERNATIVES`]: one, plus one for each further
/// alternative of a `{a,b}` group (its matcher grows with the alternatives; escaped characters and
/// character classes `[...]` do not count).
fn alternatives(glob: &str) -> usize {
    let mut total = 1usize;
    let (mut in_group, mut in_class, mut escaped) = (false, false, false);
    for c in glob.chars() {
        if std::mem::take(&mut escaped) {
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => in_group = true,
            '}' if !in_class => in_group = false,
            ',' if in_group && !in_class => total += 1,
            _ => {}
        }
    }
    total
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for Globs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v =
            OneOrMany::deserialize(d).map_err(|_| de::Error::custom("expected a glob or a list of globs"))?.into_vec();
        if v.is_empty() {
            return Err(de::Error::custom("empty list of globs (leave the field out to match everything)"));
        }
        let wanted = v.iter().map(|p| alternatives(p)).fold(0usize, usize::saturating_add);
        let left = ALTERNATIVES_LEFT.get();
        if wanted > left {
            return Err(de::Error::custom(format!(
                "more than {MAX_GLOB_ALTERNATIVES} glob alternatives in the file (the mapping file's cap; \
                 each glob counts one, a {{a,b,c}} group one per alternative)"
            )));
        }
        ALTERNATIVES_LEFT.set(left - wanted);
        Globs::new(&v).map_err(de::Error::custom)
    }
}

/// A host template (`{service}`, `{namespace}` placeholders) or, for aliases, a plain host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub String);

impl Template {
    pub fn render(&self, service: &str, namespace: &str) -> String {
        HostTemplate::unchecked(&self.0).render(service, namespace)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_template(&s).map_err(de::Error::custom)?;
        Ok(Template(s))
    }
}

/// A template must give a valid host once filled with valid names.
fn check_template(s: &str) -> Result<(), String> {
    let rest = s.replace("{service}", "").replace("{namespace}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err(format!("host template {s:?}: only {{service}} and {{namespace}} are known placeholders"));
    }
    let sample = HostTemplate::unchecked(s).render("svc", "ns");
    validate::host(&sample).map_err(|e| format!("host template {s:?} does not give a valid host: {e}"))
}

/// An Istio (Kubernetes) namespace name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(pub String);

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate::dns_label(&s).map_err(|e| de::Error::custom(format!("istioNamespace {e}")))?;
        Ok(Namespace(s))
    }
}

/// A ServiceEntry `exportTo` list, checked as istiod checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTo(pub Vec<String>);

impl<'de> Deserialize<'de> for ExportTo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = OneOrMany::deserialize(d).map_err(|_| de::Error::custom("expected a list of namespaces"))?.into_vec();
        validate::export_to(&v, None).map_err(de::Error::custom)?;
        Ok(ExportTo(v))
    }
}

/// An Istio port protocol name (upper case in the output; accepted in any case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol(pub String);

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate::protocol(&s).map(Protocol).map_err(|e| de::Error::custom(format!("protocol {e}")))
    }
}

/// How one Cloud Map port is served.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// The instance port (`AWS_INSTANCE_PORT`, or 80/443 for services without one) this entry is
    /// for; absent: any port.
    #[serde(default, deserialize_with = "port_number")]
    pub instance_port: Option<u32>,
    /// The service port number apps connect to; the endpoints keep the instance port as their
    /// target port. Absent: the instance port.
    #[serde(default, deserialize_with = "port_number")]
    pub number: Option<u32>,
    /// Absent: `<protocol>-<number>` in lower case (`http-8080`).
    pub name: Option<PortName>,
    pub protocol: Option<Protocol>,
}

fn port_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = u64::deserialize(d)?;
    if (1..=65535).contains(&n) {
        Ok(Some(n as u32))
    } else {
        Err(de::Error::custom(format!("port {n} is out of range 1-65535")))
    }
}

/// A port name (a DNS-1123 label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortName(pub String);

impl<'de> Deserialize<'de> for PortName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate::dns_label(&s).map_err(|e| de::Error::custom(format!("port name {e}")))?;
        Ok(PortName(s))
    }
}

/// Extra ServiceEntry labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, String>::deserialize(d)?;
        for (k, v) in &m {
            validate::label_key(k)
                .and_then(|_| validate::label_value(v))
                .map_err(|e| de::Error::custom(format!("labels: {e}")))?;
            if k == "istio.io/rev" || k == super::MANAGED_BY_LABEL.0 {
                return Err(de::Error::custom(format!(
                    "label {k:?} is set by cloudmap-mcp (use --istio-revision for istio.io/rev)"
                )));
            }
        }
        Ok(Labels(m))
    }
}

/// Extra ServiceEntry annotations (keys as Kubernetes label keys, any value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, String>::deserialize(d)?;
        for k in m.keys() {
            validate::label_key(k).map_err(|e| de::Error::custom(e.replace("label key", "annotation key")))?;
            if k.starts_with(super::ANNOTATION_PREFIX) {
                return Err(de::Error::custom(format!(
                    "annotation {k:?}: keys under {} are set by cloudmap-mcp",
                    super::ANNOTATION_PREFIX
                )));
            }
        }
        Ok(Annotations(m))
    }
}

/// Which instance attributes become endpoint labels (reserved `AWS_*` keys never do).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLabels {
    /// Only keys matching one of these globs.
    pub allow: Option<Globs>,
    /// Never keys matching one of these globs (applied after `allow`).
    pub deny: Option<Globs>,
}

impl EndpointLabels {
    pub fn keeps(&self, key: &str) -> bool {
        self.allow.as_ref().is_none_or(|g| g.is_match(key)) && !self.deny.as_ref().is_some_and(|g| g.is_match(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_field() {
        let m = parse(
            r#"
rules:
  - name: ecs
    match: {namespace: "prod-*", service: [api, "web-*"], namespaceType: [HTTP], attributes: {team: pay*}}
    host: "{service}.{namespace}.mesh"
    aliases: ["{service}.legacy.local", colorapp.appmesh.local]
    sanitize: true
    istioNamespace: mesh-config
    exportTo: [".", team-a]
    location: MESH_INTERNAL
    resolution: DNS
    ports: [{instancePort: 8080, protocol: http}, {instancePort: 50051, name: grpc, protocol: GRPC, number: 9000}]
    labels: {team: platform}
    annotations: {example.com/owner: "Team A"}
    endpointLabels: {allow: [version, "app*"], deny: "app-internal"}
    vip: false
  - match: {service: other}
    vip: always
"#,
        )
        .unwrap();
        assert_eq!(m.rules.len(), 2);
        let r = &m.rules[0];
        assert_eq!(r.name(), "ecs");
        assert_eq!(m.rules[1].name(), "rules[1]");
        assert_eq!(r.ports.as_ref().unwrap()[0].protocol, Some(Protocol("HTTP".into())));
        assert_eq!(r.ports.as_ref().unwrap()[1].number, Some(9000));
        assert_eq!(r.export_to, Some(ExportTo(vec![".".into(), "team-a".into()])));
        assert_eq!(r.location, Some(Location::MeshInternal));
        assert_eq!(r.resolution, Some(Resolution::Dns));
        assert_eq!(r.vip, Some(super::super::VipMode::Never));
        assert_eq!(m.rules[1].vip, Some(super::super::VipMode::Always));
        let el = r.endpoint_labels.as_ref().unwrap();
        assert!(el.keeps("version") && el.keeps("APP") && !el.keeps("app-internal") && !el.keeps("ECS_CLUSTER_NAME"));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("rules: []\n").unwrap().is_empty());
    }

    #[test]
    fn errors_carry_the_yaml_path_and_position() {
        let mut failures = Vec::new();
        for (text, want) in [
            ("rules:\n  - hots: x\n", "line 2 column 5"),
            ("rules:\n  - hots: x\n", "unknown field `hots`"),
            ("rules:\n  - match:\n      service: \"[a\"\n", "rules[0].match: \"[a\" is not a valid glob"),
            ("rules:\n  - match:\n      service: \"[a\"\n", "line 3 column 7"),
            ("rules:\n  - match: {service: \"[a\"}\n", "not a valid glob"),
            ("rules:\n  - match: {servce: a}\n", "unknown field `servce`"),
            ("rules:\n  - host: \"{svc}.x\"\n", "only {service} and {namespace}"),
            ("rules:\n  - host: \"{service}.*\"\n", "does not give a valid host"),
            ("rules:\n  - aliases: [\"a b\"]\n", "rules[0].aliases: host template \"a b\" does not give a valid host"),
            (
                "rules:\n  - istioNamespace: Mesh_Config\n",
                "rules[0]: istioNamespace \"Mesh_Config\" is not a DNS-1123 label",
            ),
            ("rules:\n  - exportTo: [Not Valid]\n", "only .,*, or a valid DNS 1123 label"),
            ("rules:\n  - exportTo: [\"*\", a]\n", "cannot have both public (*)"),
            ("rules:\n  - exportTo: [\"~\", a]\n", "no one (~) and someone"),
            ("rules:\n  - exportTo: [a, a]\n", "duplicate entries in exportTo"),
            ("rules:\n  - location: MESH_OUTSIDE\n", "unknown variant `MESH_OUTSIDE`"),
            ("rules:\n  - resolution: NONE\n", "unknown variant `NONE`"),
            (
                "rules:\n  - ports: [{instancePort: 8080, protocol: HTTP3}]\n",
                "rules[0].ports[0]: protocol \"HTTP3\" is not an Istio protocol",
            ),
            ("rules:\n  - ports: [{instancePort: 70000}]\n", "out of range"),
            ("rules:\n  - ports: [{name: Http_1}]\n", "port name"),
            ("rules:\n  - labels: {\"bad key!\": x}\n", "rules[0]: labels: label key \"bad key!\""),
            ("rules:\n  - labels: {istio.io/rev: x}\n", "--istio-revision"),
            ("rules:\n  - annotations: {cloudmap-mcp/rules: x}\n", "set by cloudmap-mcp"),
            ("rules:\n  - endpointLabels: {allow: []}\n", "empty list of globs"),
            ("rules:\n  - match: {namespaceType: [HTTPS]}\n", "unknown variant"),
            ("rules:\n  - name: a\n  - name: a\n", "rules[1].name: \"a\" is the name of an earlier rule"),
            ("rules:\n  - vip: maybe\n", "rules[0].vip"),
        ] {
            let e = err(text);
            if !e.contains(want) {
                failures.push(format!("{text:?}: {e:?} lacks {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn nesting_rules_and_glob_alternatives_are_capped() {
        // 100 KB of nested `[`: refused before the YAML parser sees it (it took 26.7 s).
        let t0 = std::time::Instant::now();
        let e = err(&format!("rules:\n  - match: {{service: {}\n", "[".repeat(100_000)));
        assert!(t0.elapsed() < std::time::Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(e.contains("line 2 column 277") && e.contains("nested deeper than 256"), "{e}");
        let rules = |n: usize| format!("rules:\n{}", (0..n).map(|i| format!("  - match: {{service: s{i}}}\n")).collect::<String>());
        assert_eq!(parse(&rules(MAX_RULES)).unwrap().rules().len(), MAX_RULES);
        assert!(err(&rules(MAX_RULES + 1)).contains("more than 1000 rules (the mapping file's cap)"));
        // Alternatives count across the file: a list, a group, several rules.
        let group = |n: usize| format!("\"{{{}}}\"", (0..n).map(|i| format!("a{i}")).collect::<Vec<_>>().join(","));
        assert!(parse(&format!("rules:\n  - match: {{service: {}}}\n", group(MAX_GLOB_ALTERNATIVES))).is_ok());
        let e = err(&format!("rules:\n  - match: {{service: {}}}\n", group(MAX_GLOB_ALTERNATIVES + 1)));
        assert!(e.contains("more than 10000 glob alternatives in the file"), "{e}");
        let half = group(MAX_GLOB_ALTERNATIVES / 2);
        let e = err(&format!("rules:\n  - match: {{service: {half}}}\n  - match: {{namespace: [{half}, x]}}\n"));
        assert!(e.contains("rules[1].match") && e.contains("glob alternatives"), "{e}");
        // The budget is per parse: a second parse of an accepted file is accepted again.
        assert!(parse(&format!("rules:\n  - match: {{service: {half}}}\n")).is_ok());
        assert!(parse(&format!("rules:\n  - match: {{service: {half}}}\n")).is_ok());
    }

    #[test]
    fn alternatives_count_group_members_not_escapes_or_classes() {
        for (glob, want) in [
            ("svc", 1),
            ("prod-*", 1),
            ("{a,b,c}", 3),
            ("{a,b}-{c,d}", 3),
            ("[a,b]", 1),
            ("\\{a,b}", 1),
            ("x,y", 1),
            ("{a,[,]b}", 2),
        ] {
            assert_eq!(alternatives(glob), want, "{glob}");
        }
    }

    #[test]
    fn simple_globs_match_as_the_compiled_glob_does() {
        let patterns = ["svc", "Pay-API", "prod-*", "*-api", "*", "a.b", "x,y", "k", "s*", "*K"];
        let names =
            ["svc", "SVC", "svc2", "pay-api", "PAY-api", "prod-", "prod-x/y", "web-API", "", "a.b", "aXb", "x,y", "\u{212A}", "\u{17F}vc", "ſ", "é-api", "k\u{212A}"];
        for p in patterns {
            let fast = Globs::new(&[p.to_string()]).unwrap();
            assert!(fast.set.is_none(), "{p} is simple");
            let full = GlobBuilder::new(p).case_insensitive(true).literal_separator(false).build().unwrap().compile_matcher();
            for n in names {
                assert_eq!(fast.is_match(n), full.is_match(n), "{p:?} on {n:?}");
            }
        }
        // Wildcards elsewhere are compiled; a list mixes both.
        let mixed = Globs::new(&["a?c".to_string(), "svc".to_string()]).unwrap();
        assert!(mixed.set.is_some() && mixed.simple.len() == 1);
        assert!(mixed.is_match("ABC") && mixed.is_match("Svc") && !mixed.is_match("ac"));
    }
}
