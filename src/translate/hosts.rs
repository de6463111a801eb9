//! Whose hosts are whose. No host of a ServiceEntry, its own included, is in the cluster's
//! domains or outside `--host-domain` ([`HostPolicy::refused`]: a service whose own host is
//! refused is rejected). The extra hosts of a ServiceEntry (mapping `aliases`, the
//! `cloudmap-mcp/hosts` service attribute) are checked one by one for their service
//! ([`own_and_extra`]: never in the cluster's domains, attribute hosts only inside the allowed
//! domains, at most [`HostPolicy::max_extra_hosts`]), then across services
//! ([`drop_contested_hosts`]: a host is served by one entry only; a service's own host always
//! beats another service's extra host). A host left out is a [`Note`] of kind
//! [`NoteKind::Host`]; the entry stays served with its other hosts.
use std::collections::{BTreeMap, BTreeSet};

use super::{CollisionCandidate, Note, NoteKind, ServiceRef};

/// Default of `--max-extra-hosts`.
pub const DEFAULT_MAX_EXTRA_HOSTS: usize = 16;
/// Default of `--cluster-domain`.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The limits on extra hosts that come from the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPolicy {
    /// The Kubernetes cluster domain (`--cluster-domain`): no extra host in it (nor in
    /// `cluster.local`, nor ending in `.svc`).
    pub cluster_domain: String,
    /// Most extra hosts one ServiceEntry serves (`--max-extra-hosts`).
    pub max_extra_hosts: usize,
    /// The domains every host must be in, the domain itself or below it (`--host-domain`);
    /// empty: any domain outside the cluster's.
    pub domains: Vec<String>,
}

impl Default for HostPolicy {
    fn default() -> Self {
        HostPolicy {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            max_extra_hosts: DEFAULT_MAX_EXTRA_HOSTS,
            domains: Vec::new(),
        }
    }
}

impl HostPolicy {
    pub fn new(cluster_domain: &str, max_extra_hosts: usize) -> Result<Self, String> {
        let d = cluster_domain.trim().trim_end_matches('.').to_ascii_lowercase();
        super::validate::dns_name(&d).map_err(|e| format!("--cluster-domain {cluster_domain:?}: {e}"))?;
        Ok(HostPolicy { cluster_domain: d, max_extra_hosts, domains: Vec::new() })
    }

    /// The same policy, holding every host to `domains` (`--host-domain`; empty: any).
    pub fn with_domains(mut self, domains: &[String]) -> Result<Self, String> {
        self.domains = Vec::with_capacity(domains.len());
        for d in domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            super::validate::dns_name(&d).map_err(|e| format!("--host-domain {d:?}: {e}"))?;
            if let Some(why) = self.cluster_host(&d) {
                return Err(format!("--host-domain {d:?}: {why}"));
            }
            self.domains.push(d);
        }
        Ok(self)
    }

    /// Why `host` may not be served by any entry: in the cluster's domains, or outside `--host-domain`.
    pub fn refused(&self, host: &str) -> Option<String> {
        self.cluster_host(host).or_else(|| {
            (!self.domains.is_empty() && !self.domains.iter().any(|d| in_domain(host, d)))
                .then(|| format!("it is outside the allowed host domains ({}; --host-domain)", self.domains.join(", ")))
        })
    }

    /// Why `host` is in the cluster's domains, if it is.
    pub fn cluster_host(&self, host: &str) -> Option<String> {
        for d in [DEFAULT_CLUSTER_DOMAIN, self.cluster_domain.as_str()] {
            if in_domain(host, d) {
                return Some(format!("it is in the cluster domain {d} (Kubernetes services are not Cloud Map's to serve)"));
            }
        }
        (host == "svc" || host.ends_with(".svc"))
            .then(|| "it ends in .svc (a Kubernetes service's short name)".to_string())
    }
}

/// `host` is `domain` itself or below it.
fn in_domain(host: &str, domain: &str) -> bool {
    host == domain || (host.len() > domain.len() && host.ends_with(domain) && host.as_bytes()[host.len() - domain.len() - 1] == b'.')
}

/// `host` is strictly below `domain` (`x.domain` and deeper).
pub fn below(host: &str, domain: &str) -> bool {
    host != domain && in_domain(host, domain)
}

/// The hosts of one service: its own `host`, then the `extras` (rendered mapping aliases, or the
/// `cloudmap-mcp/hosts` attribute's hosts when `allowed` gives the domains they may be below),
/// without duplicates and without the ones it may not serve, with a note for each of those (one
/// note for those beyond the cap).
pub fn own_and_extra(
    host: String,
    extras: impl Iterator<Item = String>,
    allowed: Option<&[String]>,
    policy: &HostPolicy,
    source: &ServiceRef,
    notes: &mut Vec<Note>,
) -> Vec<String> {
    let what = if allowed.is_some() { "cloudmap-mcp/hosts host" } else { "mapping alias" };
    let note = |message: String| Note { source: source.clone(), instance: None, kind: NoteKind::Host, message };
    let mut seen = BTreeSet::from([host.clone()]);
    let mut out = vec![host];
    let mut beyond = Vec::new();
    for h in extras.filter(|h| seen.insert(h.clone())) {
        let refused = policy.refused(&h).or_else(|| match allowed {
            Some(allowed) if !allowed.iter().any(|d| below(&h, d)) => Some(if allowed.is_empty() {
                "the mapping allows no extra hosts from service attributes (hostOverrides.allowedDomains is empty)".to_string()
            } else {
                format!("it is not below an allowed domain ({}; mapping hostOverrides.allowedDomains)", allowed.join(", "))
            }),
            _ => None,
        });
        if let Some(why) = refused {
            notes.push(note(format!("{what} {h:?} not served: {why}")));
        } else if out.len() > policy.max_extra_hosts {
            beyond.push(h);
        } else {
            out.push(h);
        }
    }
    if !beyond.is_empty() {
        notes.push(note(format!(
            "{} more extra hosts not served: at most {} per service (--max-extra-hosts): {}",
            beyond.len(),
            policy.max_extra_hosts,
            shorten(&beyond)
        )));
    }
    out
}

/// The first few of a long list, and how many more.
fn shorten(list: &[String]) -> String {
    const SHOWN: usize = 5;
    let head = list.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if list.len() > SHOWN {
        format!("{head} and {} more", list.len() - SHOWN)
    } else {
        head
    }
}

/// The cross-service pass over extra hosts, after [`super::resolve_collisions`] kept one entry per
/// host: for each kept entry, the extra hosts it loses (in its own order), with a note for each. An
/// extra host that is another entry's own host is lost, whatever their ages; between extra hosts
/// the older service wins, then the lower source (the rule of own hosts). Independent of the order
/// of `kept`.
pub fn drop_contested_hosts<T: CollisionCandidate>(kept: &[T], notes: &mut Vec<Note>) -> Vec<Vec<String>> {
    let mut dropped = vec![Vec::new(); kept.len()];
    if kept.iter().all(|k| k.extra_hosts().is_empty()) {
        return dropped;
    }
    let own: BTreeMap<&str, usize> = kept.iter().enumerate().map(|(i, k)| (k.host(), i)).collect();
    let mut claims: Vec<(&str, usize)> =
        kept.iter().enumerate().flat_map(|(i, k)| k.extra_hosts().iter().map(move |h| (h.as_str(), i))).collect();
    claims.sort_by(|(ha, a), (hb, b)| {
        ha.cmp(hb)
            .then_with(|| kept[*a].create_time().cmp(&kept[*b].create_time()))
            .then_with(|| kept[*a].source().cmp(kept[*b].source()))
    });
    let mut lost: BTreeSet<(usize, &str)> = BTreeSet::new();
    let mut winner: Option<(&str, usize)> = None;
    for &(h, i) in &claims {
        let why = if let Some(&o) = own.get(h) {
            format!("extra host {h:?} not served: it is the host of {}", kept[o].source())
        } else if let Some((_, w)) = winner.filter(|(wh, _)| *wh == h) {
            format!("extra host {h:?} not served: the older service {} serves it as an extra host", kept[w].source())
        } else {
            winner = Some((h, i));
            continue;
        };
        lost.insert((i, h));
        notes.push(Note { source: kept[i].source().clone(), instance: None, kind: NoteKind::Host, message: why });
    }
    for (i, k) in kept.iter().enumerate() {
        dropped[i] = k.extra_hosts().iter().filter(|h| lost.contains(&(i, h.as_str()))).cloned().collect();
    }
    dropped
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{mapping, translate, Options, Translation};
    use super::*;

    /// Translates a registry file's text with `mapping` (a mapping file's text).
    fn run(registry: &str, mapping: &str, policy: HostPolicy) -> Translation {
        let snap = crate::source::file::parse(std::path::Path::new("test.yaml"), registry).unwrap();
        let opts = Options { mapping: Arc::new(mapping::parse(mapping).unwrap()), hosts: policy, ..Options::default() };
        translate(&snap, &opts)
    }

    fn hosts_of<'t>(t: &'t Translation, service: &str) -> &'t [String] {
        &t.entries.iter().find(|e| e.source.service == service).unwrap_or_else(|| panic!("{service} served")).spec.hosts
    }

    fn host_notes(t: &Translation, service: &str) -> Vec<String> {
        t.notes.iter().filter(|n| n.kind == NoteKind::Host && n.source.service == service).map(|n| n.message.clone()).collect()
    }

    /// `evil` (older than `payments`) claims `payments.prod` and more through its attribute.
    fn hijack(hosts: &str, evil_created: &str) -> String {
        format!(
            r#"
namespaces:
  - name: prod
    type: HTTP
    services:
      - name: payments
        createDate: "2024-01-01T00:00:00Z"
        instances: [{{id: p, attributes: {{AWS_INSTANCE_IPV4: 10.0.0.1, AWS_INSTANCE_PORT: 443}}}}]
      - name: evil
        createDate: "{evil_created}"
        attributes: {{cloudmap-mcp/hosts: "{hosts}", cloudmap-mcp/protocol: HTTPS}}
        instances: [{{id: e, attributes: {{AWS_INSTANCE_IPV4: 10.6.6.6, AWS_INSTANCE_PORT: 443}}}}]
"#
        )
    }

    #[test]
    fn an_attribute_cannot_take_another_services_host_whatever_its_age() {
        for created in ["2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z"] {
            let t = run(&hijack("payments.prod,www.google.com,istiod.istio-system.svc.cluster.local,sts.amazonaws.com,api.evil.prod", created), "", HostPolicy::default());
            assert_eq!(hosts_of(&t, "payments"), ["payments.prod"]);
            assert_eq!(hosts_of(&t, "evil"), ["evil.prod", "api.evil.prod"], "{:#?}", t.notes);
            let notes = host_notes(&t, "evil");
            assert_eq!(notes.len(), 4, "{notes:#?}");
            for (h, why) in [
                ("payments.prod", "it is the host of prod/payments"),
                ("www.google.com", "not below an allowed domain (prod"),
                ("istiod.istio-system.svc.cluster.local", "cluster domain cluster.local"),
                ("sts.amazonaws.com", "not below an allowed domain"),
            ] {
                assert!(notes.iter().any(|n| n.contains(&format!("{h:?}")) && n.contains(why)), "{h}: {notes:#?}");
            }
            assert!(t.rejected.is_empty(), "{:?}", t.rejected);
            // Every host is served once.
            let mut all: Vec<&String> = t.entries.iter().flat_map(|e| &e.spec.hosts).collect();
            let n = all.len();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), n);
        }
    }

    #[test]
    fn mapping_aliases_lose_to_own_hosts_and_stay_out_of_the_cluster_domain() {
        let registry = hijack("", "2020-01-01T00:00:00Z").replace("cloudmap-mcp/hosts: \"\", ", "");
        let mapping = "rules:\n  - match: {service: evil}\n    aliases: [payments.prod, legacy.example.com, kubernetes.default.svc.corp.internal, kubernetes.default.svc]\n";
        let policy = HostPolicy::new("corp.internal", 16).unwrap();
        let t = run(&registry, mapping, policy);
        assert_eq!(hosts_of(&t, "payments"), ["payments.prod"]);
        // Aliases are the platform team's: not held to the namespace.
        assert_eq!(hosts_of(&t, "evil"), ["evil.prod", "legacy.example.com"]);
        let notes = host_notes(&t, "evil");
        assert_eq!(notes.len(), 3, "{notes:#?}");
        assert!(notes.iter().any(|n| n.contains("cluster domain corp.internal")), "{notes:#?}");
        assert!(notes.iter().any(|n| n.contains("ends in .svc")), "{notes:#?}");
    }

    #[test]
    fn between_extra_hosts_the_older_service_wins_and_the_order_of_services_does_not_matter() {
        let registry = r#"
namespaces:
  - name: prod
    type: HTTP
    services:
      - name: a
        createDate: "2024-01-01T00:00:00Z"
        attributes: {cloudmap-mcp/hosts: "shared.prod,a2.prod", cloudmap-mcp/protocol: HTTP}
        instances: [{id: a, attributes: {AWS_INSTANCE_IPV4: 10.0.0.1, AWS_INSTANCE_PORT: 80}}]
      - name: b
        createDate: "2023-01-01T00:00:00Z"
        attributes: {cloudmap-mcp/hosts: "shared.prod", cloudmap-mcp/protocol: HTTP}
        instances: [{id: b, attributes: {AWS_INSTANCE_IPV4: 10.0.0.2, AWS_INSTANCE_PORT: 80}}]
"#;
        let t = run(registry, "", HostPolicy::default());
        assert_eq!(hosts_of(&t, "b"), ["b.prod", "shared.prod"]);
        assert_eq!(hosts_of(&t, "a"), ["a.prod", "a2.prod"]);
        assert_eq!(host_notes(&t, "a"), [r#"extra host "shared.prod" not served: the older service prod/b serves it as an extra host"#]);
    }

    #[test]
    fn allowed_domains_come_from_the_mapping_and_extra_hosts_are_capped() {
        let many: Vec<String> = (0..20).map(|i| format!("h{i}.apps.example.com")).collect();
        let registry = hijack(&format!("x.evil.prod,{}", many.join(",")), "2025-01-01T00:00:00Z");
        let t = run(&registry, "hostOverrides: {allowedDomains: [apps.example.com]}\n", HostPolicy::default());
        let hosts = hosts_of(&t, "evil");
        assert_eq!(hosts.len(), 17, "own host and 16 extra: {hosts:?}");
        assert_eq!(hosts[1], "h0.apps.example.com");
        let notes = host_notes(&t, "evil");
        assert!(notes.iter().any(|n| n.contains("\"x.evil.prod\"") && n.contains("apps.example.com")), "{notes:#?}");
        assert!(notes.iter().any(|n| n.starts_with("4 more extra hosts not served: at most 16")), "{notes:#?}");
        // `{namespace}` in the list; an empty list allows none.
        let t = run(&registry, "hostOverrides: {allowedDomains: [\"{namespace}\"]}\n", HostPolicy::new("cluster.local", 2).unwrap());
        assert_eq!(hosts_of(&t, "evil"), ["evil.prod", "x.evil.prod"]);
        let t = run(&registry, "hostOverrides: {allowedDomains: []}\n", HostPolicy::default());
        assert_eq!(hosts_of(&t, "evil"), ["evil.prod"]);
        assert!(mapping::parse("hostOverrides: {allowedDomains: [\"{service}.x\"]}\n").is_err());
        assert!(mapping::parse("hostOverrides: {allowedDomains: [\"bad domain\"]}\n").is_err());
    }

    #[test]
    fn domains() {
        assert!(below("a.prod", "prod") && below("a.b.prod", "prod"));
        assert!(!below("prod", "prod") && !below("aprod", "prod") && !below("a.prod.x", "prod"));
        let p = HostPolicy::default();
        assert!(p.cluster_host("cluster.local").is_some() && p.cluster_host("a.svc.cluster.local").is_some());
        assert!(p.cluster_host("notcluster.local").is_none() && p.cluster_host("a.svc.example.com").is_none());
    }
}
