//! `/debug/cloudmap`: what the poller knows, per namespace and service, as JSON.
//!
//! The view types and their rendering; a leaf. The poller fills a [`DebugView`]
//! ([`Poller::debug_view`](super::Poller::debug_view)); the composition root adds what the
//! translation skipped, which only the served snapshot knows.
use std::collections::BTreeMap;

use bytes::Bytes;

use super::budget::BudgetConfig;
use super::record::{ErrorRecord, ResyncReport};
use super::select::SelectionView;
use crate::model::NamespaceType;

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

/// Where the view is served (the admin server routes it through its debug-view cache).
pub const PATH: &str = "/debug/cloudmap";

/// The instances the translation skipped (no usable address, bad port), by `(namespace, service)`.
pub type Skipped = BTreeMap<(String, String), Vec<SkippedView>>;

/// The `/debug/cloudmap` body: each poller's view, with the instances the translation skipped
/// joined in. One source (the single-source flags): its view; several (`multi`, a sources file):
/// `{"sources": [view, ...]}` by source name.
pub fn render_json(mut views: Vec<DebugView>, multi: bool, skipped: &Skipped) -> Bytes {
    if !skipped.is_empty() {
        for view in &mut views {
            for ns in &mut view.namespaces {
                for svc in &mut ns.services {
                    if let Some(list) = skipped.get(&(ns.name.clone(), svc.name.clone())) {
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
