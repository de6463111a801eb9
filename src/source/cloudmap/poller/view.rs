//! Builds the `/debug/cloudmap` view of one poller from its state.
use std::collections::BTreeMap;
use std::time::SystemTime;

use super::Poller;
use crate::source::cloudmap::client::DISCOVER_MAX_RESULTS;
use crate::source::cloudmap::debug::{
    CollisionView, DebugView, EventsView, GuardView, NamespaceView, ServiceView, SettingsView, SkippedView,
};
use crate::source::cloudmap::record::rfc3339;

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
