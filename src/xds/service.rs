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
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::codec;
use super::stream::{Action, Limits, Outgoing, RequestBudget, StreamState, TypeState};
use crate::cache::{ResourceRx, SERVICE_ENTRY_TYPE_URLS};
use crate::metrics::Metrics;
use crate::net::http2::CloseConnection;
use crate::proto::DiscoveryRequest;
use crate::util::LogLimiter;

/// Least time between two warnings of the same kind that clients can trigger.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Stream settings.
#[derive(Clone, Debug)]
pub struct AdsConfig {
    pub limits: Limits,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// A stream whose responses make no progress for this long (the client stopped reading) is
    /// dropped with its connection, even when a single response is in flight.
    pub send_timeout: Duration,
    /// Most ADS streams open at once, over all connections; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
}

impl Default for AdsConfig {
    fn default() -> Self {
        AdsConfig {
            limits: Limits::default(),
            max_request_bytes: 4 * 1024 * 1024,
            send_timeout: Duration::from_secs(60),
            max_streams: 1000,
        }
    }
}

/// What `/debug/clients` shows about one stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientInfo {
    pub stream_id: u64,
    /// The shard (`--shards`) of the port the stream came in on.
    pub shard: usize,
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
    /// One permit per open stream (`max_streams`).
    slots: Arc<Semaphore>,
    /// Warnings a client can cause once per stream, at most one line per interval each.
    refused_log: LogLimiter,
    bad_request_log: LogLimiter,
    slow_log: LogLimiter,
    throttled_log: LogLimiter,
    nack_log: LogLimiter,
}

/// The ADS gRPC service (add it to a tonic `Server`). Serves shard 0 (everything, without
/// sharding); [`AdsServer::for_shard`] gives the service of another shard's port.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
    shard: usize,
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
                shutdown,
                next_id: AtomicU64::new(1),
                control_plane: codec::control_plane_field(),
                slots: Arc::new(Semaphore::new(config.max_streams)),
                refused_log: LogLimiter::new(WARN_EVERY),
                bad_request_log: LogLimiter::new(WARN_EVERY),
                slow_log: LogLimiter::new(WARN_EVERY),
                throttled_log: LogLimiter::new(WARN_EVERY),
                nack_log: LogLimiter::new(WARN_EVERY),
                config,
            }),
            shard: 0,
        }
    }

    /// The same server for the port of shard `shard`: its streams serve that shard's
    /// ServiceEntries; limits, the client registry and shutdown are shared by all shards.
    pub fn for_shard(&self, shard: usize) -> AdsServer {
        AdsServer { inner: self.inner.clone(), shard }
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
        let (inner, shard) = (self.inner.clone(), self.shard);
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move { Ok(sotw(inner, shard, req)) }),
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
fn sotw(inner: Arc<Inner>, shard: usize, req: http::Request<Body>) -> http::Response<Body> {
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
    let Ok(slot) = inner.slots.clone().try_acquire_owned() else {
        inner.metrics.streams_refused.inc();
        let max = inner.config.max_streams;
        if let Some(suppressed) = inner.refused_log.allow() {
            tracing::warn!(peer = ?peer, max_ads_streams = max, suppressed, "ADS stream limit reached; refusing new streams");
        }
        return Status::resource_exhausted(format!(
            "cloudmap-mcp already serves {max} ADS streams (--max-ads-streams); retry later or against another replica"
        ))
        .into_http();
    };
    let closer = req.extensions().get::<CloseConnection>().cloned();
    let (tx, rx) = mpsc::channel(1);
    let (done_tx, done_rx) = oneshot::channel::<Status>();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("ads", stream = id, shard, peer = %peer.map(|p| p.to_string()).unwrap_or_default(), node = tracing::field::Empty);
    let progress = Arc::new(codec::Progress::default());
    let body = codec::ResponseBody::new(rx, done_rx, inner.control_plane.clone(), progress.clone());
    let stream = Stream { id, shard, peer, slot, progress, closer };
    tokio::spawn(run_stream(inner, stream, req.into_inner(), tx, done_tx).instrument(span));
    let mut resp = http::Response::new(Body::new(body));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    resp
}

/// Longest a stream's entry in [`Clients`] lags behind its state.
const REGISTRY_REFRESH: Duration = Duration::from_millis(50);

/// What a stream task owns besides its channels.
struct Stream {
    id: u64,
    shard: usize,
    peer: Option<SocketAddr>,
    /// Its place under `max_streams`, given back when the task ends.
    slot: OwnedSemaphorePermit,
    progress: Arc<codec::Progress>,
    /// Its connection, to drop with a client that stopped reading.
    closer: Option<CloseConnection>,
}

/// Removes the stream from the registry and the gauge however the task ends.
struct StreamGuard {
    id: u64,
    inner: Arc<Inner>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.inner.clients.remove(&self.id);
        self.inner.metrics.streams_connected.dec();
        self.inner.metrics.streams_closed.inc();
    }
}

/// How often a busy stream checks that its responses still move: a quarter of the send timeout.
fn watchdog_period(send_timeout: Duration) -> Duration {
    (send_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(5))
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
    stream: Stream,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Outgoing>,
    done: oneshot::Sender<Status>,
) {
    let m = inner.metrics.clone();
    m.streams_total.inc();
    m.streams_connected.inc();
    let Stream { id, shard, peer, slot, progress, closer } = stream;
    let _guard = StreamGuard { id, inner: inner.clone(), _slot: slot };
    let connected_at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let mut info =
        ClientInfo { stream_id: id, shard, node_id: None, peer: peer.map(|p| p.to_string()), connected_at, types: BTreeMap::new() };
    inner.clients.insert(id, info.clone());
    tracing::debug!("stream opened");

    let mut state = StreamState::new(inner.config.limits).with_shard(shard);
    let (shard_pushes, shard_push_bytes) =
        (Metrics::by_shard(&m.shard_pushes, shard), Metrics::by_shard(&m.shard_push_bytes, shard));
    let mut snaps = inner.snapshots.clone();
    let mut shutdown = inner.shutdown.clone();
    let send = |o: Outgoing| {
        let tx = tx.clone();
        let m = m.clone();
        let cp = inner.control_plane.len();
        let timeout = inner.config.send_timeout;
        let mut shutdown = inner.shutdown.clone();
        let progress = progress.clone();
        async move {
            progress.queued();
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
    let mut watchdog = tokio::time::interval(watchdog_period(inner.config.send_timeout));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = 'outer: loop {
        tokio::select! {
            biased;
            _ = crate::util::until_true(&mut shutdown) => break End::Shutdown,
            _ = watchdog.tick(), if progress.busy() => {
                if progress.stalled_for() >= inner.config.send_timeout {
                    break End::SlowClient;
                }
                continue;
            }
            // Snapshots before requests: a client flooding requests cannot delay its own pushes.
            changed = snaps.changed() => {
                if changed.is_err() { break End::Shutdown; }
                let snap = snaps.borrow_and_update().clone();
                if let Some(snap) = snap {
                    for o in state.on_snapshot(&snap) {
                        if SERVICE_ENTRY_TYPE_URLS.contains(&o.type_url.as_str()) {
                            shard_pushes.inc();
                            shard_push_bytes.inc_by((codec::encoded_len(&o, &[]) + inner.control_plane.len()) as u64);
                        }
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
                        if let Some(suppressed) = inner.throttled_log.allow() {
                            tracing::warn!(
                                limit = inner.config.limits.max_requests_per_second,
                                suppressed,
                                "client sends requests faster than the per-stream bound; reading them at that rate"
                            );
                        }
                    }
                }
                let had_node = state.node_id().is_some();
                let snap = snaps.borrow().clone();
                let action = state.on_request(&req, snap.as_deref());
                if !had_node {
                    if let Some(node) = state.node_id() {
                        tracing::Span::current().record("node", node);
                        info.node_id = Some(node.to_string());
                        tracing::debug!(node, "client connected");
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
                        if let Some(suppressed) = inner.nack_log.allow() {
                            tracing::warn!(type_url = t, version, error = message, suppressed, "client rejected a response (NACK); not resending");
                        }
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
            tracing::debug!("client closed the stream");
            None
        }
        End::ClientError(s) => {
            // Decode failures (oversized or malformed requests) surface here: tell the client why.
            if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::Internal | tonic::Code::InvalidArgument) {
                if let Some(suppressed) = inner.bad_request_log.allow() {
                    tracing::warn!(code = ?s.code(), message = s.message(), suppressed, "unreadable request; ending stream");
                }
            } else {
                tracing::debug!(code = ?s.code(), message = s.message(), "stream ended by the client or transport");
            }
            let _ = done.send(s);
            Some("client_error")
        }
        End::BadRequest(s) => {
            if let Some(suppressed) = inner.bad_request_log.allow() {
                tracing::warn!(code = ?s.code(), message = s.message(), suppressed, "bad request; ending stream");
            }
            let _ = done.send(s);
            Some("bad_request")
        }
        End::SlowClient => {
            if let Some(suppressed) = inner.slow_log.allow() {
                tracing::warn!(
                    timeout = ?inner.config.send_timeout,
                    suppressed,
                    "client took no response data for the send timeout; dropping its connection"
                );
            }
            let _ = done.send(Status::deadline_exceeded("client did not read responses in time; stream dropped"));
            // The response in flight waits in the connection's buffers, which only the client can
            // drain: closing the connection frees them.
            if let Some(c) = &closer {
                c.close();
            }
            Some("slow_client")
        }
        End::Gone => {
            tracing::debug!("client went away");
            None
        }
        End::Shutdown => {
            tracing::debug!("server shutting down; closing stream");
            let _ = done.send(Status::unavailable("cloudmap-mcp is shutting down; reconnect"));
            None
        }
    };
    if let Some(r) = reason {
        m.stream_errors.get_or_create(&vec![("reason", r.to_string())]).inc();
    }
}
