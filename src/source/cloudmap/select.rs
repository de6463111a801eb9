//! Which namespaces and services are served: globs (include/exclude) and namespace types.
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::client::NamespaceInfo;
use crate::model::NamespaceType;

#[derive(Debug, thiserror::Error)]
#[error("{flag}: {pattern:?} is not a valid glob: {source}")]
pub struct SelectionError {
    flag: &'static str,
    pattern: String,
    source: globset::Error,
}

/// Globs of one flag, split by what they match.
#[derive(Clone, Debug, Default)]
struct Patterns {
    /// Globs without '/': matched against a name (or a namespace id).
    plain: Option<GlobSet>,
    /// Globs with '/': matched against `namespace/service`.
    qualified: Option<GlobSet>,
    source: Vec<String>,
}

fn glob(flag: &'static str, p: &str) -> Result<Glob, SelectionError> {
    GlobBuilder::new(p).case_insensitive(true).literal_separator(false).build().map_err(|source| SelectionError {
        flag,
        pattern: p.to_string(),
        source,
    })
}

impl Patterns {
    fn new(flag: &'static str, patterns: &[String]) -> Result<Self, SelectionError> {
        let mut plain = GlobSetBuilder::new();
        let mut qualified = GlobSetBuilder::new();
        let (mut np, mut nq) = (0, 0);
        let mut source = Vec::new();
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            source.push(p.to_string());
            if p.contains('/') {
                qualified.add(glob(flag, p)?);
                nq += 1;
            } else {
                plain.add(glob(flag, p)?);
                np += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>, SelectionError> {
            if n == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|source| SelectionError { flag, pattern: patterns.join(","), source })
        };
        Ok(Patterns { plain: build(plain, np)?, qualified: build(qualified, nq)?, source })
    }

    fn is_empty(&self) -> bool {
        self.plain.is_none() && self.qualified.is_none()
    }

    fn matches_plain(&self, s: &str) -> bool {
        self.plain.as_ref().is_some_and(|g| g.is_match(s))
    }

    fn matches_qualified(&self, s: &str) -> bool {
        self.qualified.as_ref().is_some_and(|g| g.is_match(s))
    }
}

/// The configured selection.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    ns_include: Patterns,
    ns_exclude: Patterns,
    svc_include: Patterns,
    svc_exclude: Patterns,
    types: Vec<NamespaceType>,
    owner_account: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SelectionView {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_services: Vec<String>,
    pub exclude_services: Vec<String>,
    pub namespace_types: Vec<NamespaceType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_account: Option<String>,
}

impl Selection {
    pub fn new(
        include_namespaces: &[String],
        exclude_namespaces: &[String],
        include_services: &[String],
        exclude_services: &[String],
        types: &[NamespaceType],
    ) -> Result<Self, SelectionError> {
        Self::with_names(
            ["--include-namespace", "--exclude-namespace", "--include-service", "--exclude-service"],
            include_namespaces,
            exclude_namespaces,
            include_services,
            exclude_services,
            types,
        )
    }

    /// As [`Selection::new`], with the names errors give the four glob lists (flags, or the keys
    /// of a sources file).
    pub fn with_names(
        names: [&'static str; 4],
        include_namespaces: &[String],
        exclude_namespaces: &[String],
        include_services: &[String],
        exclude_services: &[String],
        types: &[NamespaceType],
    ) -> Result<Self, SelectionError> {
        Ok(Selection {
            ns_include: Patterns::new(names[0], include_namespaces)?,
            ns_exclude: Patterns::new(names[1], exclude_namespaces)?,
            svc_include: Patterns::new(names[2], include_services)?,
            svc_exclude: Patterns::new(names[3], exclude_services)?,
            types: types.to_vec(),
            owner_account: None,
        })
    }

    /// Only namespaces owned by this account (shared through AWS RAM): ListNamespaces'
    /// `ResourceOwner`, else the account of the namespace ARN.
    pub fn with_owner_account(mut self, account: Option<String>) -> Self {
        self.owner_account = account;
        self
    }

    pub fn view(&self) -> SelectionView {
        SelectionView {
            include_namespaces: self.ns_include.source.clone(),
            exclude_namespaces: self.ns_exclude.source.clone(),
            include_services: self.svc_include.source.clone(),
            exclude_services: self.svc_exclude.source.clone(),
            namespace_types: self.types.clone(),
            owner_account: self.owner_account.clone(),
        }
    }

    /// Namespace globs match the name or the id (ids tell apart namespaces of the same name).
    pub fn namespace(&self, ns: &NamespaceInfo) -> bool {
        if !self.types.is_empty() && !self.types.contains(&ns.kind) {
            return false;
        }
        if let Some(want) = &self.owner_account {
            let arn_account = ns.arn.as_deref().and_then(|a| a.split(':').nth(4)).filter(|a| !a.is_empty());
            if ns.owner.as_deref().or(arn_account) != Some(want.as_str()) {
                return false;
            }
        }
        let m = |p: &Patterns| p.matches_plain(&ns.name) || p.matches_plain(&ns.id);
        (self.ns_include.is_empty() || m(&self.ns_include)) && !m(&self.ns_exclude)
    }

    /// A first cut on the service name alone, before its namespace is known: false only when the
    /// service can be excluded for sure.
    pub fn service_name_may_match(&self, service: &str) -> bool {
        if self.svc_exclude.matches_plain(service) {
            return false;
        }
        self.svc_include.is_empty() || self.svc_include.qualified.is_some() || self.svc_include.matches_plain(service)
    }

    pub fn service(&self, namespace: &str, service: &str) -> bool {
        let qualified = format!("{namespace}/{service}");
        let m = |p: &Patterns| p.matches_plain(service) || p.matches_qualified(&qualified);
        (self.svc_include.is_empty() || m(&self.svc_include)) && !m(&self.svc_exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, id: &str, kind: NamespaceType) -> NamespaceInfo {
        NamespaceInfo {
            id: id.into(),
            name: name.into(),
            arn: None,
            kind,
            http_name: name.into(),
            owner: None,
            create_date: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn everything_by_default() {
        let sel = Selection::new(&[], &[], &[], &[], &[]).unwrap();
        assert!(sel.namespace(&ns("a", "ns-1", NamespaceType::DnsPublic)));
        assert!(sel.service("a", "b"));
        assert!(sel.service_name_may_match("b"));
    }

    #[test]
    fn namespace_globs_types_and_ids() {
        let sel =
            Selection::new(&s(&["prod-*", "ns-keep"]), &s(&["prod-legacy"]), &[], &[], &[NamespaceType::Http]).unwrap();
        assert!(sel.namespace(&ns("prod-a", "ns-1", NamespaceType::Http)));
        assert!(sel.namespace(&ns("PROD-B", "ns-2", NamespaceType::Http)));
        assert!(!sel.namespace(&ns("prod-legacy", "ns-3", NamespaceType::Http)));
        assert!(!sel.namespace(&ns("prod-c", "ns-4", NamespaceType::DnsPrivate)));
        assert!(!sel.namespace(&ns("dev", "ns-5", NamespaceType::Http)));
        assert!(sel.namespace(&ns("dev", "ns-keep", NamespaceType::Http)));
    }

    #[test]
    fn service_globs_plain_and_qualified() {
        let sel =
            Selection::new(&[], &[], &s(&["front*", "colorapp/*"]), &s(&["*-canary", "colorapp/red"]), &[]).unwrap();
        assert!(sel.service("any", "frontend"));
        assert!(!sel.service("any", "frontend-canary"));
        assert!(sel.service("colorapp", "blue"));
        assert!(!sel.service("colorapp", "red"));
        assert!(!sel.service("other", "blue"));
        assert!(!sel.service_name_may_match("x-canary"));
        assert!(sel.service_name_may_match("blue"), "qualified includes need the namespace");
        let sel = Selection::new(&[], &[], &s(&["front*"]), &[], &[]).unwrap();
        assert!(!sel.service_name_may_match("blue"));
    }

    #[test]
    fn owner_account_from_resource_owner_else_arn() {
        let sel = Selection::default().with_owner_account(Some("444455556666".into()));
        let mut shared = ns("shared", "ns-1", NamespaceType::Http);
        assert!(!sel.namespace(&shared), "no owner and no ARN: not the wanted owner");
        shared.arn = Some("arn:aws:servicediscovery:us-east-1:444455556666:namespace/ns-1".into());
        assert!(sel.namespace(&shared));
        shared.owner = Some("111122223333".into());
        assert!(!sel.namespace(&shared), "ResourceOwner wins over the ARN");
        shared.owner = Some("444455556666".into());
        assert!(sel.namespace(&shared));
    }

    #[test]
    fn bad_glob_is_reported() {
        let e = Selection::new(&s(&["a[b"]), &[], &[], &[], &[]).unwrap_err();
        assert!(e.to_string().contains("--include-namespace"), "{e}");
    }
}
