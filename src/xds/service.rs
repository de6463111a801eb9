//! The tonic side of ADS: one task per stream drives a [`StreamState`] with requests from the client
//! and snapshots from the cache, and hands responses to the transport.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::body::Body;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::codec;
use super::stream::{Action, Limits, Outgoing, RequestBudget, StreamState, TypeState};
use crate::cache::ResourceRx;
use crate::metrics::Metrics;
use crate::proto::DiscoveryRequest;

pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Stream settings.
#[derive(Clone, Debug)]
pub struct AdsConfig {
    pub limits: Limits,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// A client that has not taken a response within this time is dropped.
    pub send_timeout: Duration,
}

impl Default for AdsConfig {
    fn default() -> Self {
        AdsConfig { limits: Limits::default(), max_request_bytes: 4 * 1024 * 1024, send_timeout: Duration::from_secs(60) }
    }
}

/// What `/debug/clients` shows about one stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientInfo {
    pub stream_id: u64,
    pub node_id: Option<String>,
    pub peer: Option<String>,
    pub connected_at: String,
    pub types: BTreeMap<String, TypeState>,
}

/// Open streams, by stream id.
pub type Clients = DashMap<u64, ClientInfo>;

struct Inner {
    snapshots: ResourceRx,
    metrics: Arc<Metrics>,
    clients: Arc<Clients>,
    config: AdsConfig,
    shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
    control_plane: Bytes,
}

/// The ADS gRPC service (add it to a tonic `Server`).
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

impl AdsServer {
    /// `shutdown` turning true ends every stream with UNAVAILABLE so clients reconnect elsewhere.
    pub fn new(
        snapshots: ResourceRx,
        metrics: Arc<Metrics>,
        clients: Arc<Clients>,
        config: AdsConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AdsServer {
            inner: Arc::new(Inner {
                snapshots,
                metrics,
                clients,
                config,
                shutdown,
                next_id: AtomicU64::new(1),
                control_plane: codec::control_plane_field(),
            }),
        }
    }
}

impl tonic::server::NamedService for AdsServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for AdsServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move { Ok(sotw(inner, req)) }),
            DELTA_PATH => Box::pin(async {
                Ok(Status::unimplemented(
                    "DeltaAggregatedResources is not served: use StreamAggregatedResources (state of the world), as istiod does",
                )
                .into_http())
            }),
            other => {
                let msg = format!("unknown method {other}");
                Box::pin(async move { Ok(Status::unimplemented(msg).into_http()) })
            }
        }
    }
}

/// Starts one SotW stream. Requests are decoded by tonic (prost); responses are written by
/// [`codec::ResponseBody`] in chunks straight from the shared pre-encoded resources, so a stream never
/// holds a copy of a whole response, however many streams receive one at once. The response channel
/// has capacity 1: at most one response waits beside the one being written. If the stream ends with
/// an error, its status travels on its own channel so a full response channel can never swallow it.
fn sotw(inner: Arc<Inner>, req: http::Request<Body>) -> http::Response<Body> {
    // No request compression is accepted (what tonic answers without compression enabled).
    if let Some(enc) = req.headers().get("grpc-encoding").filter(|e| *e != "identity") {
        let msg = format!("request compression {:?} is not supported", enc.to_str().unwrap_or("?"));
        let mut resp = Status::unimplemented(msg).into_http::<Body>();
        resp.headers_mut().insert("grpc-accept-encoding", http::HeaderValue::from_static("identity"));
        return resp;
    }
    let max = inner.config.max_request_bytes;
    let req = tonic::Request::from_http(
        req.map(|body| Streaming::new_request(tonic_prost::ProstDecoder::<DiscoveryRequest>::default(), body, None, Some(max))),
    );
    let peer = req.remote_addr();
    let (tx, rx) = mpsc::channel(1);
    let (done_tx, done_rx) = oneshot::channel::<Status>();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("ads", stream = id, peer = %peer.map(|p| p.to_string()).unwrap_or_default(), node = tracing::field::Empty);
    let body = codec::ResponseBody::new(rx, done_rx, inner.control_plane.clone());
    tokio::spawn(run_stream(inner, id, peer, req.into_inner(), tx, done_tx).instrument(span));
    let mut resp = http::Response::new(Body::new(body));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    resp
}

/// Longest a stream's entry in [`Clients`] lags behind its state.
const REGISTRY_REFRESH: Duration = Duration::from_millis(50);

/// Removes the stream from the registry and the gauge however the task ends.
struct StreamGuard {
    id: u64,
    inner: Arc<Inner>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.inner.clients.remove(&self.id);
        self.inner.metrics.streams_connected.dec();
    }
}

enum End {
    ClientClosed,
    ClientError(Status),
    BadRequest(Status),
    SlowClient,
    Gone,
    Shutdown,
}

async fn run_stream(
    inner: Arc<Inner>,
    id: u64,
    peer: Option<SocketAddr>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Outgoing>,
    done: oneshot::Sender<Status>,
) {
    let m = inner.metrics.clone();
    m.streams_total.inc();
    m.streams_connected.inc();
    let _guard = StreamGuard { id, inner: inner.clone() };
    let connected_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut info = ClientInfo { stream_id: id, node_id: None, peer: peer.map(|p| p.to_string()), connected_at, types: BTreeMap::new() };
    inner.clients.insert(id, info.clone());
    tracing::debug!("stream opened");

    let mut state = StreamState::new(inner.config.limits);
    let mut snaps = inner.snapshots.clone();
    let mut shutdown = inner.shutdown.clone();
    let send = |o: Outgoing| {
        let tx = tx.clone();
        let m = m.clone();
        let cp = inner.control_plane.len();
        let timeout = inner.config.send_timeout;
        let mut shutdown = inner.shutdown.clone();
        async move {
            let bytes = codec::encoded_len(&o, &[]) + cp;
            let (type_url, serial, version) = (o.type_url.clone(), o.serial, o.body.version.clone());
            // A shutdown does not wait for a client that is slow to take its response.
            let sent = tokio::select! {
                biased;
                _ = crate::util::until_true(&mut shutdown) => return Err(End::Shutdown),
                r = tokio::time::timeout(timeout, tx.send(o)) => r,
            };
            match sent {
                Ok(Ok(())) => {
                    Metrics::by_type(&m.responses, &type_url).inc();
                    Metrics::by_type(&m.response_bytes, &type_url).inc_by(bytes as u64);
                    tracing::debug!(type_url, version, serial, bytes, "response sent");
                    Ok(())
                }
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(End::SlowClient),
            }
        }
    };

    // `/debug/clients` is refreshed at most every REGISTRY_REFRESH, so a flood of ACKs costs no
    // copy of the stream's state per request.
    let mut registry_due: Option<tokio::time::Instant> = None;
    // The per-stream request bound: while `read_after` is set, requests wait in the transport.
    let mut budget = RequestBudget::new(&inner.config.limits, std::time::Instant::now());
    let mut read_after: Option<tokio::time::Instant> = None;
    let mut throttled = false;
    let end = 'outer: loop {
        tokio::select! {
            biased;
            _ = crate::util::until_true(&mut shutdown) => break End::Shutdown,
            // Snapshots before requests: a client flooding requests cannot delay its own pushes.
            changed = snaps.changed() => {
                if changed.is_err() { break End::Shutdown; }
                let snap = snaps.borrow_and_update().clone();
                if let Some(snap) = snap {
                    for o in state.on_snapshot(&snap) {
                        if let Err(e) = send(o).await { break 'outer e; }
                        m.push_latency.observe(snap.published_at.elapsed().as_secs_f64());
                    }
                }
            }
            _ = tokio::time::sleep_until(registry_due.unwrap_or_else(tokio::time::Instant::now)), if registry_due.is_some() => {
                registry_due = None;
                info.types = state.types().clone();
                inner.clients.insert(id, info.clone());
                continue;
            }
            _ = tokio::time::sleep_until(read_after.unwrap_or_else(tokio::time::Instant::now)), if read_after.is_some() => {
                read_after = None;
                continue;
            }
            msg = inbound.message(), if read_after.is_none() => {
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => break End::ClientClosed,
                    Err(status) => break End::ClientError(status),
                };
                let wait = budget.spend(std::time::Instant::now());
                if !wait.is_zero() {
                    read_after = Some(tokio::time::Instant::now() + wait);
                    if !throttled {
                        throttled = true;
                        m.throttled_streams.inc();
                        tracing::warn!(
                            limit = inner.config.limits.max_requests_per_second,
                            "client sends requests faster than the per-stream bound; reading them at that rate"
                        );
                    }
                }
                let had_node = state.node_id().is_some();
                let snap = snaps.borrow().clone();
                let action = state.on_request(&req, snap.as_deref());
                if !had_node {
                    if let Some(node) = state.node_id() {
                        tracing::Span::current().record("node", node);
                        info.node_id = Some(node.to_string());
                        tracing::info!(node, "client connected");
                    }
                }
                let t = req.type_url.as_str();
                match action {
                    Err(e) => break End::BadRequest(e.into()),
                    Ok(Action::Respond(o)) => {
                        if let Err(e) = send(o).await { break e; }
                    }
                    Ok(Action::Deferred) => tracing::debug!(type_url = t, "no snapshot yet; answer held until the source has synced"),
                    Ok(Action::Ack { version }) => {
                        Metrics::by_type(&m.acks, t).inc();
                        tracing::trace!(type_url = t, version, "ack");
                    }
                    Ok(Action::Nack { version, message }) => {
                        Metrics::by_type(&m.nacks, t).inc();
                        tracing::warn!(type_url = t, version, error = message, "client rejected a response (NACK); not resending");
                    }
                    Ok(Action::Stale { nonce }) => {
                        Metrics::by_type(&m.stale_requests, t).inc();
                        tracing::debug!(type_url = t, nonce, "stale nonce ignored");
                    }
                }
            }
        }
        if registry_due.is_none() {
            registry_due = Some(tokio::time::Instant::now() + REGISTRY_REFRESH);
        }
    };

    let reason = match end {
        End::ClientClosed => {
            tracing::info!("client closed the stream");
            None
        }
        End::ClientError(s) => {
            // Decode failures (oversized or malformed requests) surface here: tell the client why.
            if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::Internal | tonic::Code::InvalidArgument) {
                tracing::warn!(code = ?s.code(), message = s.message(), "unreadable request; ending stream");
            } else {
                tracing::info!(code = ?s.code(), message = s.message(), "stream ended by the client or transport");
            }
            let _ = done.send(s);
            Some("client_error")
        }
        End::BadRequest(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "bad request; ending stream");
            let _ = done.send(s);
            Some("bad_request")
        }
        End::SlowClient => {
            tracing::warn!(timeout = ?inner.config.send_timeout, "client did not take a response in time; dropping the stream");
            let _ = done.send(Status::deadline_exceeded("client did not read responses in time; stream dropped"));
            Some("slow_client")
        }
        End::Gone => {
            tracing::info!("client went away");
            None
        }
        End::Shutdown => {
            tracing::info!("server shutting down; closing stream");
            let _ = done.send(Status::unavailable("cloudmap-mcp is shutting down; reconnect"));
            None
        }
    };
    if let Some(r) = reason {
        m.stream_errors.get_or_create(&vec![("reason", r.to_string())]).inc();
    }
}
