//! Listening sockets that cannot be exhausted by a client: a cap on open connections, a handshake
//! deadline (TLS and/or a protocol preface must complete in time), TCP keepalive, and accept errors
//! (EMFILE, ENFILE, ENOBUFS...) backed off exponentially instead of retried in a tight loop.
//!
//! [`incoming`] runs the accept loop of one listener and yields [`Accepted`] connections whose
//! [`Handshake`] completed. Each holds a slot of the listener's connection cap until it is dropped.
//! [`http2`] serves such connections with hyper (the gRPC listener); an axum app can use
//! [`Incoming`] directly as its `axum::serve::Listener`.
pub mod bind;
pub mod http2;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::util::LogLimiter;

/// Limits of one listener.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Name in logs (`grpc`, `admin`).
    pub name: &'static str,
    /// Most connections open at once, handshakes included. At the cap, a new connection takes the
    /// place of the oldest one still in its handshake; when every connection completed its
    /// handshake, the new one is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection whose [`Handshake`] has not completed within this time is closed.
    pub handshake_timeout: Duration,
    /// TCP keepalive: idle time before the first probe (probes then every third of it, 4 of them).
    /// `None`: off.
    pub tcp_keepalive: Option<Duration>,
}

/// Counters of one listener (see `Metrics::listener`).
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    /// Connections accepted (within the cap).
    pub accepted: Counter,
    /// Connections open now, handshakes included.
    pub open: Gauge,
    /// Connections closed on accept because the cap was reached by connections past their handshake.
    pub refused: Counter,
    /// Connections still in their handshake closed to make room for a new one at the cap.
    pub evicted: Counter,
    /// Handshakes that failed (TLS error, not HTTP/2, closed early).
    pub handshake_errors: Counter,
    /// Handshakes not completed within the deadline.
    pub handshake_timeouts: Counter,
    /// `accept()` failures (e.g. out of file descriptors).
    pub accept_errors: Counter,
}

/// What happens on a new TCP connection before it is handed to the server: nothing ([`Plain`]), a
/// TLS handshake, reading the HTTP/2 preface ([`http2::Preface`]), or a combination. It runs under
/// the listener's handshake deadline.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// No handshake: the TCP stream as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    async fn handshake(&self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// One accepted connection. Holds its slot of the connection cap until dropped.
pub struct Accepted<Io> {
    pub io: Io,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    _slot: Slot,
}

/// A slot of the connection cap; keeps the open-connections gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Accepted<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// `AsyncWrite` for a wrapper type by delegating to its `io` field.
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<Io: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<Io> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use delegate_async_write;

delegate_async_write!(Accepted);

/// The connections of one listener whose handshake completed. Ends after `stop` turns true (the
/// listening socket is closed then). Also an `axum::serve::Listener`.
pub struct Incoming<Io> {
    rx: mpsc::Receiver<Accepted<Io>>,
    local: SocketAddr,
}

impl<Io> Incoming<Io> {
    /// The next connection; `None` once the listener stopped.
    pub async fn next(&mut self) -> Option<Accepted<Io>> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl<Io> futures::Stream for Incoming<Io> {
    type Item = Accepted<Io>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Accepted<Io>>> {
        self.rx.poll_recv(cx)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> axum::serve::Listener for Incoming<Io> {
    type Io = Accepted<Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Accepted<Io>, SocketAddr) {
        match self.rx.recv().await {
            Some(a) => {
                let peer = a.peer;
                (a, peer)
            }
            // Stopped: axum's graceful shutdown ends the serve loop; never hand out anything again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// First wait after an accept error; doubled on each consecutive one up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Least time between two log lines about the same kind of event on a listener.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a new connection waits for the slot of the handshake it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// The connections in their handshake, oldest first, each with the way to close it.
#[derive(Clone, Default)]
struct Handshaking(Arc<std::sync::Mutex<(u64, InHandshake)>>);

/// By connection number (in accept order): the sender that closes it.
type InHandshake = std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>;

impl Handshaking {
    fn add(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, tx);
        (id, rx)
    }

    fn remove(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1.remove(&id);
    }

    /// Closes the oldest connection still in its handshake; false when there is none.
    fn evict_oldest(&self) -> bool {
        let oldest = self.0.lock().unwrap_or_else(|e| e.into_inner()).1.pop_first();
        oldest.is_some_and(|(_, tx)| tx.send(()).is_ok())
    }
}

/// Whether an accept error is about the one connection (retry at once) rather than the process
/// (out of descriptors or memory: back off).
fn per_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// The next wait after an accept error.
fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        ACCEPT_BACKOFF_MIN
    } else {
        (current * 2).min(ACCEPT_BACKOFF_MAX)
    }
}

/// A connection cap (`max_connections` slots and the handshakes that may be evicted) shared by
/// several listeners, e.g. the gRPC ports of `--shards`.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    handshaking: Handshaking,
}

impl ConnectionCap {
    pub fn new(max_connections: usize) -> Self {
        ConnectionCap { slots: Arc::new(Semaphore::new(max_connections)), handshaking: Handshaking::default() }
    }
}

/// Runs the accept loop of `listener` on a task and returns the connections whose handshake
/// completed. Stops accepting (and closes the listening socket) when `stop` turns true.
pub fn incoming<H: Handshake>(
    listener: TcpListener,
    settings: ListenerSettings,
    handshake: H,
    metrics: ListenerMetrics,
    stop: watch::Receiver<bool>,
) -> io::Result<Incoming<H::Io>> {
    let cap = ConnectionCap::new(settings.max_connections);
    incoming_capped(listener, settings, handshake, metrics, stop, cap)
}

/// [`incoming`] under a cap shared with other listeners (`settings.max_connections` is then only
/// named in logs: the cap's own size applies).
pub fn incoming_capped<H: Handshake>(
    listener: TcpListener,
    settings: ListenerSettings,
    handshake: H,
    metrics: ListenerMetrics,
    mut stop: watch::Receiver<bool>,
    cap: ConnectionCap,
) -> io::Result<Incoming<H::Io>> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(16);
    let ConnectionCap { slots, handshaking } = cap;
    tokio::spawn(async move {
        let refused_log = LogLimiter::new(LOG_EVERY);
        let error_log = LogLimiter::new(LOG_EVERY);
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                _ = crate::util::until_true(&mut stop) => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::ZERO;
                    a
                }
                Err(e) if per_connection_error(&e) => continue,
                Err(e) => {
                    metrics.accept_errors.inc();
                    backoff = next_backoff(backoff);
                    if let Some(suppressed) = error_log.allow() {
                        tracing::warn!(listener = settings.name, error = %e, retry_in = ?backoff, suppressed, "accept failed; backing off");
                    }
                    tokio::select! {
                        _ = crate::util::until_true(&mut stop) => break,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            let mut permit = slots.clone().try_acquire_owned().ok();
            // Full: a connection still in its handshake gives way to the new one (the oldest first),
            // so connections that never complete a handshake cannot lock clients out.
            if permit.is_none() && handshaking.evict_oldest() {
                metrics.evicted.inc();
                permit = tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await.ok().and_then(Result::ok);
            }
            let Some(permit) = permit else {
                metrics.refused.inc();
                // Reset rather than FIN: nothing lingers in TIME_WAIT on this side.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                drop(tcp);
                if let Some(suppressed) = refused_log.allow() {
                    tracing::warn!(
                        listener = settings.name,
                        %peer,
                        max_connections = settings.max_connections,
                        suppressed,
                        "connection limit reached; closing new connections"
                    );
                }
                continue;
            };
            metrics.accepted.inc();
            metrics.open.inc();
            let slot = Slot { _permit: permit, open: metrics.open.clone() };
            configure(&tcp, &settings);
            let local = tcp.local_addr().unwrap_or(local);
            let (tx, handshake, metrics, deadline, name) =
                (tx.clone(), handshake.clone(), metrics.clone(), settings.handshake_timeout, settings.name);
            let (evict, handshaking) = (handshaking.add(), handshaking.clone());
            tokio::spawn(async move {
                let (id, evicted) = evict;
                let outcome = tokio::select! {
                    r = tokio::time::timeout(deadline, handshake.handshake(tcp, peer)) => Some(r),
                    _ = evicted => None,
                };
                handshaking.remove(id);
                let Some(outcome) = outcome else {
                    tracing::debug!(listener = name, %peer, "handshake not completed; closed to make room for a new connection");
                    return;
                };
                match outcome {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Accepted { io, peer, local, _slot: slot }).await;
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_errors.inc();
                        tracing::debug!(listener = name, %peer, error = %e, "handshake failed; connection closed");
                    }
                    Err(_) => {
                        metrics.handshake_timeouts.inc();
                        tracing::debug!(listener = name, %peer, timeout = ?deadline, "handshake not completed in time; connection closed");
                    }
                }
            });
        }
        tracing::debug!(listener = settings.name, "listener closed");
    });
    Ok(Incoming { rx, local })
}

fn configure(tcp: &TcpStream, settings: &ListenerSettings) {
    let _ = tcp.set_nodelay(true);
    if let Some(idle) = settings.tcp_keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(idle).with_interval((idle / 3).max(Duration::from_secs(1)));
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
        let ka = ka.with_retries(4);
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// Raises the soft limit on open files to the hard limit (each connection takes one). Returns
/// (soft, hard) after the change.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if rl.rlim_cur < rl.rlim_max {
        let raised = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        rl = raised;
    }
    Ok((rl.rlim_cur as u64, rl.rlim_max as u64))
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no open-file limit on this platform"))
}

/// Descriptors kept free for everything that is not a client connection (registry file, AWS
/// connections, TLS files, logs).
pub const RESERVED_FILES: u64 = 64;

/// The connection caps that fit in `open_files` descriptors: each cap is lowered in proportion when
/// their sum plus [`RESERVED_FILES`] would exceed the limit. Returns the caps in the order given.
pub fn fit_connection_caps(open_files: u64, caps: &[usize]) -> Vec<usize> {
    let budget = open_files.saturating_sub(RESERVED_FILES).max(caps.len() as u64) as f64;
    let total: f64 = caps.iter().map(|c| *c as f64).sum();
    if total <= budget {
        return caps.to_vec();
    }
    caps.iter().map(|c| ((*c as f64 * budget / total).floor() as usize).max(1)).collect()
}

#[cfg(test)]
mod tests;
