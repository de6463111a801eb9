//! Admin HTTP: health, readiness, Prometheus metrics and debug views.
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the source has loaded and a snapshot is served, else 503 with the reason (naming any Cloud Map source not synced yet) |
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/debug/serviceentries` | the served ServiceEntries as Kubernetes YAML (`?format=json` for a JSON List), with what was left out as comments |
//! | `/debug/rejected` | JSON: services left out and instances skipped, with reasons |
//! | `/debug/clients` | JSON: each stream's node id, peer, and per type the last sent/acked version and nonce |
//! | `/debug/cloudmap` | JSON, with `--cloudmap`/`--sources-file` only (per source, `?source=NAME`): per namespace and service, ids, revision, last refresh, instance count, skipped instances, last error (route in `source::cloudmap::debug`) |
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::cache::ResourceRx;
use crate::translate::render;
use crate::xds::Clients;

/// Extra readiness text from the source, e.g. which of several sources has not synced yet.
pub type ReadinessDetail = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct AdminState {
    pub snapshots: ResourceRx,
    pub registry: Arc<Registry>,
    pub clients: Arc<Clients>,
    pub detail: Option<ReadinessDetail>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/serviceentries", get(serviceentries))
        .route("/debug/rejected", get(rejected))
        .route("/debug/clients", get(clients))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let detail = s.detail.as_ref().and_then(|d| d());
    let served = s.snapshots.borrow().as_ref().map(|snap| snap.service_entries.names.len());
    match (served, detail) {
        (Some(n), None) => (StatusCode::OK, format!("ready: {n} ServiceEntries\n")).into_response(),
        (Some(n), Some(d)) => (StatusCode::OK, format!("ready: {n} ServiceEntries; {d}\n")).into_response(),
        (None, None) => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: the source has not completed its first sync\n").into_response()
        }
        (None, Some(d)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {d}\n")).into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn serviceentries(State(s): State<AdminState>, Query(q): Query<FormatQuery>) -> Response {
    let Some(snap) = s.snapshots.borrow().clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "# not ready: no snapshot yet\n").into_response();
    };
    let (format, content_type) = match q.format.as_deref() {
        None | Some("yaml") => (render::Format::Yaml, "application/yaml"),
        Some("json") => (render::Format::Json, "application/json"),
        Some(other) => {
            return (StatusCode::BAD_REQUEST, format!("unknown format {other:?}: use yaml or json\n")).into_response()
        }
    };
    // Translated again (the snapshot keeps only the encoded entries) and rendered off the async
    // threads: at 10,000 services that is hundreds of milliseconds of CPU.
    let body = tokio::task::spawn_blocking(move || {
        let t = snap.translation();
        let mut body = render::render(&t.entries, format);
        if format == render::Format::Yaml {
            body.push_str(&render::report_comments(&t));
        }
        body
    })
    .await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "# rendering failed\n").into_response(),
    }
}

async fn rejected(State(s): State<AdminState>) -> Response {
    let Some(snap) = s.snapshots.borrow().clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"not ready\"}\n").into_response();
    };
    let body = serde_json::json!({
        "rejected": *snap.rejected,
        "notes": *snap.notes,
    });
    axum::Json(body).into_response()
}

async fn clients(State(s): State<AdminState>) -> Response {
    let mut list: Vec<_> = s.clients.iter().map(|e| e.value().clone()).collect();
    list.sort_by_key(|c| c.stream_id);
    axum::Json(list).into_response()
}
