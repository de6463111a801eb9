//! HTTP/2 (gRPC) on top of [`super::incoming`]: the client preface as part of the handshake (a
//! connection that never sends it is closed at the handshake deadline), and hyper's HTTP/2 server
//! with explicit limits on streams, resets and send buffers for each connection.
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::{Handshake, Incoming};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs the inner handshake (e.g. TLS), then reads the HTTP/2 client preface. Anything else
/// (HTTP/1, garbage) fails the handshake. The preface is handed on to the server by [`Rewind`].
#[derive(Clone, Debug)]
pub struct Preface<H>(pub H);

impl<H: Handshake> Handshake for Preface<H> {
    type Io = Rewind<H::Io>;

    fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send {
        let inner = self.0.clone();
        async move {
            let mut io = inner.handshake(tcp, peer).await?;
            let mut buf = [0u8; PREFACE.len()];
            io.read_exact(&mut buf).await?;
            if &buf != PREFACE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/2 client preface"));
            }
            Ok(Rewind { prefix: buf, pos: 0, io })
        }
    }
}

/// A stream whose first bytes (already read) are read again before the rest.
pub struct Rewind<Io> {
    prefix: [u8; PREFACE.len()],
    pos: usize,
    io: Io,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Rewind<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

super::delegate_async_write!(Rewind);

/// Ends one connection at once (no GOAWAY, no drain): every request on it carries one in its
/// extensions. For a client that stopped reading: its streams' buffers go with the connection.
#[derive(Clone, Debug, Default)]
pub struct CloseConnection(std::sync::Arc<tokio::sync::Notify>);

impl CloseConnection {
    pub fn close(&self) {
        self.0.notify_one();
    }

    async fn closed(&self) {
        self.0.notified().await
    }
}

/// Per-connection HTTP/2 limits.
#[derive(Clone, Debug)]
pub struct Http2Settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams over it are refused by the HTTP/2 layer
    /// (REFUSED_STREAM) before reaching any service.
    pub max_concurrent_streams: u32,
    /// Streams the client reset before the server took them; more → GOAWAY (ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset for protocol errors; more → GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// A PING not answered within this closes the connection.
    pub keepalive_timeout: Duration,
    /// Bytes of response data buffered per stream beyond what the client's flow-control window
    /// lets through: the body is asked for more only when this has room.
    pub max_send_buf_size: usize,
    /// Largest request header block.
    pub max_header_list_size: u32,
}

/// Serves HTTP/2 on every connection of `incoming` with `svc` (a tonic `Routes`, for one) until
/// `stop` turns true; then stops accepting, asks every connection to finish (GOAWAY) and returns
/// once they all closed. Each request carries tonic's `TcpConnectInfo`, so `remote_addr()` works.
/// Each request also carries the connection's [`CloseConnection`].
/// Connection errors (a client's protocol error, a GOAWAY for too many resets, a reset socket) are
/// counted in `connection_errors` and logged at debug.
pub async fn serve<S, B, Io>(
    mut incoming: Incoming<Io>,
    svc: S,
    settings: Http2Settings,
    connection_errors: Counter,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(settings.max_local_error_reset_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_send_buf_size(settings.max_send_buf_size)
        .max_header_list_size(settings.max_header_list_size);
    // Every connection task holds a sender; all gone = all connections closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let conn = tokio::select! {
            _ = crate::util::until_true(&mut stop) => break,
            c = incoming.next() => match c {
                Some(c) => c,
                None => break,
            },
        };
        let info = tonic::transport::server::TcpConnectInfo { local_addr: Some(conn.local), remote_addr: Some(conn.peer) };
        let peer = conn.peer;
        let closer = CloseConnection::default();
        let svc = svc.clone();
        let handle = closer.clone();
        let hyper_svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(tonic::body::Body::new);
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(handle.clone());
            let mut svc = svc.clone();
            async move {
                std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                svc.call(req).await
            }
        });
        let served = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), hyper_svc);
        let (errors, open, mut stop) = (connection_errors.clone(), open_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(served);
            let result = tokio::select! {
                r = &mut served => r,
                _ = closer.closed() => {
                    tracing::debug!(%peer, "connection closed by the server");
                    Ok(())
                }
                _ = crate::util::until_true(&mut stop) => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = result {
                errors.inc();
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
        });
    }
    drop(incoming);
    drop(open_tx);
    let _ = open_rx.recv().await;
}
