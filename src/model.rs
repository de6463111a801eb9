//! Plain types for what Cloud Map holds: namespaces, services, instances.
//!
//! Every source (registry file, Cloud Map poller) produces a [`Snapshot`]; nothing from the AWS SDK
//! or from protobuf appears here. Collections are ordered (`BTreeMap`, sorted `Vec`s) so a snapshot
//! has one canonical form and everything derived from it is deterministic.
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Cloud Map namespace types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NamespaceType {
    Http,
    DnsPrivate,
    DnsPublic,
}

impl NamespaceType {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceType::Http => "HTTP",
            NamespaceType::DnsPrivate => "DNS_PRIVATE",
            NamespaceType::DnsPublic => "DNS_PUBLIC",
        }
    }
}

impl fmt::Display for NamespaceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which instances DiscoverInstances returns (Cloud Map's `HealthStatus` filter), applied again here so
/// a registry file behaves like the API. The Cloud Map source passes it to the API; translate applies
/// it to every source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[clap(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthFilter {
    /// Healthy (and UNKNOWN) instances.
    Healthy,
    /// Unhealthy instances only.
    Unhealthy,
    /// Every instance.
    All,
    /// Healthy instances, or every instance when none is healthy (fail open).
    #[default]
    HealthyOrElseAll,
}

impl HealthFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthFilter::Healthy => "HEALTHY",
            HealthFilter::Unhealthy => "UNHEALTHY",
            HealthFilter::All => "ALL",
            HealthFilter::HealthyOrElseAll => "HEALTHY_OR_ELSE_ALL",
        }
    }

    /// The instances this filter keeps.
    pub fn select(self, instances: &[Instance]) -> Vec<&Instance> {
        let healthy = || instances.iter().filter(|i| i.health.counts_as_healthy());
        match self {
            HealthFilter::All => instances.iter().collect(),
            HealthFilter::Healthy => healthy().collect(),
            HealthFilter::Unhealthy => instances.iter().filter(|i| i.health == HealthStatus::Unhealthy).collect(),
            HealthFilter::HealthyOrElseAll => {
                let h: Vec<_> = healthy().collect();
                if h.is_empty() {
                    instances.iter().collect()
                } else {
                    h
                }
            }
        }
    }
}

/// Health of an instance as Cloud Map reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    /// No health check, or not yet checked. Counts as healthy.
    #[default]
    Unknown,
}

impl HealthStatus {
    pub fn counts_as_healthy(self) -> bool {
        !matches!(self, HealthStatus::Unhealthy)
    }
}

/// Seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl Timestamp {
    /// Parses an RFC 3339 date-time such as `2021-06-01T12:00:00Z`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, time::error::Parse> {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?;
        Ok(Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 })
    }

    /// RFC 3339 in UTC, e.g. `2021-06-01T12:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.seconds)
            .ok()
            .and_then(|t| t.replace_nanosecond(self.nanos.max(0) as u32).ok())
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
    }
}

/// One registered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// Attributes as registered, including reserved `AWS_*` keys.
    pub attributes: BTreeMap<String, String>,
    pub health: HealthStatus,
}

/// One Cloud Map service with its current instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub id: Option<String>,
    pub arn: Option<String>,
    /// Cloud Map's `CreateDate`; used as the resource's stable create time.
    pub create_date: Option<Timestamp>,
    /// Service-level attributes (Cloud Map `GetServiceAttributes`, the registry file's service
    /// `attributes`). Keys under `cloudmap-mcp/` override the mapping for this service.
    pub attributes: BTreeMap<String, String>,
    /// Instances sorted by id. Shared: the Cloud Map poller's own copy and every snapshot that
    /// serves the same instances are one allocation.
    pub instances: Arc<[Instance]>,
}

impl Service {
    /// Edits the instances of a shared service, copy on write: snapshots holding the old `Arc`
    /// keep the old instances.
    pub fn edit_instances(svc: &mut Arc<Service>, f: impl FnOnce(&mut Vec<Instance>)) {
        let mut v = svc.instances.to_vec();
        f(&mut v);
        Arc::make_mut(svc).instances = v.into();
    }
}

/// One Cloud Map namespace with its services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub id: Option<String>,
    pub arn: Option<String>,
    pub kind: NamespaceType,
    /// The name DiscoverInstances takes; not always equal to `name`.
    pub http_name: String,
    /// Services sorted by name. Shared between snapshots: a source that publishes a new snapshot
    /// reuses the `Arc` of every service that did not change, so a snapshot costs a pointer per
    /// service to copy, and the resource cache skips unchanged services by pointer comparison.
    pub services: Vec<Arc<Service>>,
}

/// A complete view of the selected part of Cloud Map at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Namespaces sorted by name.
    pub namespaces: Vec<Namespace>,
}

impl Snapshot {
    /// Puts every collection in canonical order.
    pub fn normalize(&mut self) {
        self.sort_services();
        for ns in &mut self.namespaces {
            for svc in &mut ns.services {
                if !svc.instances.is_sorted_by(|a, b| a.id <= b.id) {
                    Service::edit_instances(svc, |v| v.sort_by(|a, b| a.id.cmp(&b.id)));
                }
            }
        }
    }

    /// Puts namespaces and services in canonical order, for a source whose services each hold
    /// their instances in order already ([`Snapshot::normalize`] checks every service's).
    pub fn sort_services(&mut self) {
        self.namespaces.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        for ns in &mut self.namespaces {
            ns.services.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        }
    }

    pub fn service_count(&self) -> usize {
        self.namespaces.iter().map(|n| n.services.len()).sum()
    }

    pub fn instance_count(&self) -> usize {
        self.namespaces.iter().flat_map(|n| &n.services).map(|s| s.instances.len()).sum()
    }
}

/// Reserved Cloud Map attribute keys.
pub mod attr {
    pub const IPV4: &str = "AWS_INSTANCE_IPV4";
    pub const IPV6: &str = "AWS_INSTANCE_IPV6";
    pub const PORT: &str = "AWS_INSTANCE_PORT";
    pub const CNAME: &str = "AWS_INSTANCE_CNAME";
    pub const ALIAS_DNS_NAME: &str = "AWS_ALIAS_DNS_NAME";
    pub const INIT_HEALTH_STATUS: &str = "AWS_INIT_HEALTH_STATUS";
    pub const EC2_INSTANCE_ID: &str = "AWS_EC2_INSTANCE_ID";
    /// Custom attributes read for locality.
    pub const REGION: &str = "REGION";
    pub const AVAILABILITY_ZONE: &str = "AVAILABILITY_ZONE";
}
