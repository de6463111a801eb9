//! Admin HTTP: health, readiness, Prometheus metrics and debug views.
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the source has loaded and a snapshot is served, else 503 with the reason (naming any Cloud Map source not synced yet); also 503 while the mapping file in force since startup stops serving most services (`guard`); a registry or mapping file not applied is named with the reason (still 200: its last good version is served), and so is a snapshot where the source has services but none is served (all rejected) |
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/debug/serviceentries` | the served ServiceEntries as Kubernetes YAML (`?format=json` for a JSON List), with what was left out as comments; streamed ([`stream`]) |
//! | `/debug/rejected` | JSON: services left out and instances skipped, with reasons |
//! | `/debug/appmesh` | JSON: the App Mesh migration report (per object: translated, approximated or dropped, with reasons) and the Istio objects served per kind |
//! | `/debug/clients` | JSON: each stream's node id, peer, shard, and per type the last sent/acked version and nonce |
//! | `/debug/held-edits` | JSON: mapping or registry file edits held by the edit guard (see `guard`) |
//! | `/debug/shards` | JSON: per shard (`--shards`) its gRPC address, ServiceEntries, bytes, version and open streams (rendered by [`shards`]) |
//! | `/debug/cloudmap` | JSON, with `--cloudmap`/`--sources-file` only (`{"sources": [...]}` with several): per namespace and service, ids, revision, last refresh, instance count, skipped instances, last error (rendered by `source::cloudmap::debug`) |
//!
//! [`health_router`] serves the first three, [`debug_router`] the debug views; the composition root
//! puts them on one listener or two, or leaves the debug views out. `/debug/serviceentries` is
//! streamed per request ([`stream`]); every other debug view is rendered through one
//! [`views::ViewCache`] (single flight, once per snapshot). All render on one thread.
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use prometheus_client::registry::Registry;

use crate::cache::ResourceRx;
use crate::translate::render;
use crate::xds::Clients;

pub mod serve;
pub mod stream;
pub mod shards;
pub mod views;

use views::{Freshness, View, ViewCache};

/// Extra readiness text from the source, e.g. which of several sources has not synced yet.
pub type ReadinessDetail = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// State of `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone)]
pub struct HealthState {
    pub snapshots: ResourceRx,
    pub registry: Arc<Registry>,
    pub detail: Option<ReadinessDetail>,
    /// Why the server must not be ready although it serves a snapshot (e.g. a mapping file held
    /// at startup); 503 with this reason while it says something.
    pub blocker: Option<ReadinessDetail>,
}

/// A live debug view provided by another module (e.g. `/debug/cloudmap`): a path and a function
/// rendering its JSON body.
#[derive(Clone)]
pub struct ExtraView {
    pub path: &'static str,
    pub view: View,
    pub render: Arc<dyn Fn() -> Bytes + Send + Sync>,
}

/// State of the debug views.
#[derive(Clone)]
pub struct DebugState {
    pub snapshots: ResourceRx,
    pub clients: Arc<Clients>,
    pub cache: Arc<ViewCache>,
    /// The gRPC address of each shard (one without `--shards`).
    pub grpc_addrs: Arc<Vec<std::net::SocketAddr>>,
}

pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

pub fn debug_router(state: DebugState, extra: Vec<ExtraView>) -> Router {
    let mut router = Router::new()
        .route("/debug/serviceentries", get(serviceentries))
        .route("/debug/rejected", get(rejected))
        .route("/debug/appmesh", get(appmesh))
        .route("/debug/clients", get(clients))
        .route("/debug/shards", get(shards_view));
    for x in extra {
        let cache = state.cache.clone();
        router = router.route(
            x.path,
            get(move || {
                let (cache, x) = (cache.clone(), x.clone());
                async move {
                    let render = x.render.clone();
                    respond(
                        cache.get(x.view, Freshness::Live, move || render()).await,
                        "application/json",
                    )
                }
            }),
        );
    }
    router.with_state(state)
}

async fn readyz(State(s): State<HealthState>) -> Response {
    let mut detail = s.detail.as_ref().and_then(|d| d());
    let (served, none_served) = match s.snapshots.borrow().as_ref() {
        Some(snap) => (Some(snap.service_entries.names.len()), none_served(snap)),
        None => (None, None),
    };
    // Still ready (the server answers istiod, and istiod cannot start without an answer), but say
    // why nothing is served: a mapping whose hosts fit no name, for example.
    if let Some(why) = none_served {
        detail = Some(match detail {
            Some(d) => format!("{why}; {d}"),
            None => why,
        });
    }
    if let (Some(n), Some(why)) = (served, s.blocker.as_ref().and_then(|b| b())) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why} (serving {n} ServiceEntries)\n")).into_response();
    }
    match (served, detail) {
        (Some(n), None) => (StatusCode::OK, format!("ready: {n} ServiceEntries\n")).into_response(),
        (Some(n), Some(d)) => (StatusCode::OK, format!("ready: {n} ServiceEntries; {d}\n")).into_response(),
        (None, None) => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: the source has not completed its first sync\n").into_response()
        }
        (None, Some(d)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {d}\n")).into_response(),
    }
}

/// When the source has services but none of them is served: how many were rejected, and the first
/// reason (all of them are in `/debug/rejected`).
fn none_served(snap: &crate::cache::ResourceSnapshot) -> Option<String> {
    if snap.model_services == 0 || !snap.service_entries.names.is_empty() {
        return None;
    }
    let first = snap
        .rejected
        .first()
        .map(|r| format!(", e.g. {}: {}", crate::util::Escaped(&r.source.to_string()), crate::util::Escaped(&r.reason)))
        .unwrap_or_default();
    Some(format!(
        "none of the {} services is served ({} rejected{first}; see /debug/rejected)",
        snap.model_services,
        snap.rejected.len()
    ))
}

async fn metrics(State(s): State<HealthState>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn respond(body: Result<Bytes, views::RenderError>, content_type: &'static str) -> Response {
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "debug view");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

fn json_bytes(value: &impl serde::Serialize) -> Bytes {
    let mut out = serde_json::to_vec(value).expect("debug views serialize");
    out.push(b'\n');
    Bytes::from(out)
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn serviceentries(State(s): State<DebugState>, Query(q): Query<FormatQuery>) -> Response {
    let (format, view, content_type) = match q.format.as_deref() {
        None | Some("yaml") => (
            render::Format::Yaml,
            View::ServiceEntriesYaml,
            "application/yaml",
        ),
        Some("json") => (
            render::Format::Json,
            View::ServiceEntriesJson,
            "application/json",
        ),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?}: use yaml or json\n"),
            )
                .into_response()
        }
    };
    let Some(snap) = s.snapshots.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "# not ready: no snapshot yet\n",
        )
            .into_response();
    };
    // Streamed: the served entries read back one by one (tens of megabytes at 10,000 services,
    // never held whole).
    s.cache.count_render(view);
    let body = stream::body(s.cache.clone(), stream::EntryPieces::new(snap, format));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn rejected(State(s): State<DebugState>) -> Response {
    let Some(snap) = s.snapshots.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"not ready\"}\n",
        )
            .into_response();
    };
    let body = s
        .cache
        .get(
            View::Rejected,
            Freshness::Snapshot(snap.serial),
            move || {
                json_bytes(&serde_json::json!({ "rejected": *snap.rejected, "notes": *snap.notes }))
            },
        )
        .await;
    respond(body, "application/json")
}

async fn appmesh(State(s): State<DebugState>) -> Response {
    let Some(snap) = s.snapshots.borrow().clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"not ready\"}\n").into_response();
    };
    let body = s
        .cache
        .get(View::AppMesh, Freshness::Snapshot(snap.serial), move || {
            let served: std::collections::BTreeMap<&str, Vec<String>> = snap
                .appmesh
                .types
                .iter()
                .map(|(k, t)| (k.as_str(), t.names.iter().map(|(n, _)| n.to_string()).collect()))
                .collect();
            json_bytes(&serde_json::json!({ "report": snap.appmesh.report, "served": served }))
        })
        .await;
    respond(body, "application/json")
}

async fn clients(State(s): State<DebugState>) -> Response {
    let clients = s.clients.clone();
    let body = s
        .cache
        .get(View::Clients, Freshness::Live, move || {
            let mut list: Vec<_> = clients.iter().map(|e| e.value().clone()).collect();
            list.sort_by_key(|c| c.stream_id);
            json_bytes(&list)
        })
        .await;
    respond(body, "application/json")
}

async fn shards_view(State(s): State<DebugState>) -> Response {
    let (snapshots, clients, addrs) = (s.snapshots.clone(), s.clients.clone(), s.grpc_addrs.clone());
    let body = s
        .cache
        .get(View::Shards, Freshness::Live, move || {
            let snap = snapshots.borrow().clone();
            shards::render(snap.as_deref(), &addrs, &clients)
        })
        .await;
    respond(body, "application/json")
}
