//! `/debug/cloudmap`: what the poller knows, per namespace and service, as JSON.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::budget::BudgetConfig;
use super::client::DISCOVER_MAX_RESULTS;
use super::poller::{rfc3339, ErrorRecord, Poller, ResyncReport};
use super::select::SelectionView;
use crate::cache::ResourceRx;
use crate::model::NamespaceType;
use crate::translate::ServiceRef;

#[derive(Debug, serde::Serialize)]
pub struct DebugView {
    /// The source's name (`default` for the single-source flags).
    pub source: String,
    /// False until the first complete sync; nothing is served before.
    pub synced: bool,
    pub last_complete_sync: Option<String>,
    pub sync_age_seconds: Option<f64>,
    pub last_resync: Option<ResyncReport>,
    /// GetServiceAttributes denied (IAM policy without it): services are served without their attributes.
    pub service_attributes_denied: Option<ErrorRecord>,
    pub removal_guard: GuardView,
    pub settings: SettingsView,
    /// Selected namespaces sharing a name with an older one, which is served instead.
    pub namespace_collisions: Vec<CollisionView>,
    pub namespaces: Vec<NamespaceView>,
}

#[derive(Debug, serde::Serialize)]
pub struct GuardView {
    pub max_removal_ratio: f64,
    pub confirmations_required: u32,
    pub consecutive: u32,
    /// `namespace/service` of every served service whose removal is held.
    pub held: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SettingsView {
    pub resync_interval_ms: u64,
    pub revision_poll_interval_ms: u64,
    pub revision_poll_max_interval_ms: u64,
    pub instances_refresh_interval_ms: u64,
    pub health_refresh_interval_ms: u64,
    pub service_attributes_refresh_interval_ms: u64,
    pub health_filter: &'static str,
    pub budget: BudgetConfig,
    pub selection: SelectionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsView>,
}

/// The events queue and the cadence in force.
#[derive(Debug, serde::Serialize)]
pub struct EventsView {
    pub queue_url: String,
    /// Whether the queue answers (then the slower cadence below applies).
    pub active: bool,
    pub revision_poll_max_interval_ms: u64,
    pub instances_refresh_interval_ms: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct CollisionView {
    pub name: String,
    pub served_id: String,
    pub ignored_id: String,
}

#[derive(Debug, serde::Serialize)]
pub struct NamespaceView {
    pub name: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(rename = "type")]
    pub kind: NamespaceType,
    pub http_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub last_listed: Option<String>,
    pub last_error: Option<ErrorRecord>,
    pub services: Vec<ServiceView>,
}

#[derive(Debug, serde::Serialize)]
pub struct ServiceView {
    pub name: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Last DiscoverInstancesRevision seen.
    pub revision: Option<i64>,
    /// Current revision poll interval (doubles with each poll that saw no change, up to the max).
    pub poll_interval_ms: u64,
    /// Consecutive polls that saw no change.
    pub unchanged_polls: u32,
    pub health_checked: bool,
    /// False until a DiscoverInstances call succeeded.
    pub served: bool,
    pub last_refresh: Option<String>,
    pub instance_count: Option<usize>,
    /// Set when the last DiscoverInstances answer held the API's maximum (1,000) instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub skipped_instances: Vec<SkippedView>,
    pub removal_held: bool,
    pub last_error: Option<ErrorRecord>,
    /// Service-level attributes (GetServiceAttributes), as served.
    pub attributes: BTreeMap<String, String>,
    pub attributes_read: Option<String>,
    pub attributes_error: Option<ErrorRecord>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkippedView {
    pub id: String,
    pub reason: String,
}

pub(super) fn view(p: &Poller) -> DebugView {
    let st = p.lock();
    let s = &p.settings;
    let cadence = p.cadence();
    let mut namespaces: Vec<NamespaceView> = st
        .namespaces
        .iter()
        .map(|(name, ns)| NamespaceView {
            name: name.clone(),
            id: ns.info.id.clone(),
            arn: ns.info.arn.clone(),
            kind: ns.info.kind,
            http_name: ns.info.http_name.clone(),
            owner: ns.info.owner.clone(),
            last_listed: ns.listed_at.map(rfc3339),
            last_error: ns.last_error.clone(),
            services: Vec::new(),
        })
        .collect();
    let index: BTreeMap<String, usize> = namespaces.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
    for ((ns, name), e) in &st.services {
        let Some(&i) = index.get(ns) else { continue };
        let skipped = e
            .data
            .as_ref()
            .map(|d| {
                d.duplicates
                    .iter()
                    .map(|id| SkippedView {
                        id: id.clone(),
                        reason: "instance id returned more than once; one kept".into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        namespaces[i].services.push(ServiceView {
            name: name.clone(),
            id: e.id.clone(),
            arn: e.arn.clone(),
            revision: e.revision_seen,
            poll_interval_ms: e.poll_interval(&cadence).as_millis() as u64,
            unchanged_polls: e.unchanged_polls,
            health_checked: e.health_checked,
            served: e.data.is_some(),
            last_refresh: e.refreshed_at.map(rfc3339),
            instance_count: e.data.as_ref().map(|d| d.instances.len()),
            note: e.data.as_ref().filter(|d| d.at_cap).map(|_| {
                format!(
                    "DiscoverInstances returned {DISCOVER_MAX_RESULTS} instances, its maximum: served as returned, but Cloud Map may hold more that are not served"
                )
            }),
            skipped_instances: skipped,
            removal_held: e.removal_held,
            last_error: e.last_error.clone(),
            attributes: e.attributes.values.clone(),
            attributes_read: e.attributes.read_at.map(rfc3339),
            attributes_error: e.attributes.last_error.clone(),
        });
    }
    DebugView {
        source: s.name.clone(),
        synced: st.synced,
        last_complete_sync: st.last_complete_sync.map(rfc3339),
        sync_age_seconds: st
            .last_complete_sync
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        last_resync: st.last_resync.clone(),
        service_attributes_denied: st.attributes.denied.clone(),
        removal_guard: GuardView {
            max_removal_ratio: s.max_removal_ratio,
            confirmations_required: s.removal_confirmations,
            consecutive: st.guard.consecutive,
            held: st.guard.pending.iter().map(|(n, s)| format!("{n}/{s}")).collect(),
        },
        settings: SettingsView {
            resync_interval_ms: s.resync_interval.as_millis() as u64,
            revision_poll_interval_ms: s.revision_poll_interval.as_millis() as u64,
            revision_poll_max_interval_ms: s.revision_poll_max_interval.as_millis() as u64,
            instances_refresh_interval_ms: s.instances_refresh_interval.as_millis() as u64,
            health_refresh_interval_ms: s.health_refresh_interval.as_millis() as u64,
            service_attributes_refresh_interval_ms: s.attributes_refresh_interval.as_millis() as u64,
            health_filter: s.health.as_str(),
            budget: s.budget,
            selection: s.selection.view(),
            events: s.events.as_ref().map(|e| EventsView {
                queue_url: e.queue_url.clone(),
                active: p.events_active(),
                revision_poll_max_interval_ms: e.revision_poll_max_interval.as_millis() as u64,
                instances_refresh_interval_ms: e.instances_refresh_interval.as_millis() as u64,
            }),
        },
        namespace_collisions: st
            .collisions
            .iter()
            .map(|(n, k, i)| CollisionView { name: n.clone(), served_id: k.clone(), ignored_id: i.clone() })
            .collect(),
        namespaces,
    }
}

/// Where the view is served (the admin server routes it through its debug-view cache).
pub const PATH: &str = "/debug/cloudmap";

/// The `/debug/cloudmap` body: each poller's view, with the instances the translation skipped (no
/// usable address, bad port) joined in from the served snapshot. One source (the single-source
/// flags): its view; several (`multi`, a sources file): `{"sources": [view, ...]}` by source name.
pub fn render_json(pollers: &[Arc<Poller>], multi: bool, snapshots: &ResourceRx) -> Bytes {
    let mut views: Vec<DebugView> = pollers.iter().map(|p| p.debug_view()).collect();
    let snap = snapshots.borrow().clone();
    if let Some(snap) = snap {
        let mut by_service: BTreeMap<ServiceRef, Vec<SkippedView>> = BTreeMap::new();
        for n in snap.notes.iter() {
            if let Some(id) = &n.instance {
                by_service
                    .entry(n.source.clone())
                    .or_default()
                    .push(SkippedView { id: id.clone(), reason: n.message.clone() });
            }
        }
        for view in &mut views {
            for ns in &mut view.namespaces {
                for svc in &mut ns.services {
                    let key = ServiceRef { namespace: ns.name.clone(), service: svc.name.clone() };
                    if let Some(list) = by_service.get(&key) {
                        svc.skipped_instances.extend(list.iter().cloned());
                    }
                }
            }
        }
    }
    let mut out = if multi || views.len() != 1 {
        serde_json::to_vec(&serde_json::json!({ "sources": views }))
    } else {
        serde_json::to_vec(&views[0])
    }
    .expect("debug view serializes");
    out.push(b'\n');
    Bytes::from(out)
}
