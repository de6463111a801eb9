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
use tokio::sync::{mpsc, oneshot, watch};

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

/// How long a connection the server is done with stays half-open (the server's side shut down),
/// reading and dropping whatever the client still sends, until the client closes its side. Closing
/// the socket at once would make the kernel answer the client's next bytes (an ACK, a window
/// update, a ping) with a reset, and drop what the client has not received yet: after a shutdown's
/// GOAWAY, the tail of a push and the stream's UNAVAILABLE status. Envoy's `delayed_close_timeout`
/// and nginx's `lingering_close` exist for the same reason.
pub const LINGER: Duration = Duration::from_secs(5);

/// Shuts down the writing side (after what is queued, the client sees EOF) and reads until the
/// client closes, at most `within`.
pub(super) async fn linger<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io, within: Duration) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(within, async {
        let _ = io.shutdown().await;
        let mut sink = [0u8; 2048];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The connection's I/O as hyper holds it; when hyper drops it, it goes back to the connection's
/// task (for [`linger`]) instead of being closed.
struct HandBack<Io> {
    io: Option<Io>,
    back: Option<oneshot::Sender<Io>>,
}

impl<Io> HandBack<Io> {
    fn new(io: Io) -> (Self, oneshot::Receiver<Io>) {
        let (tx, rx) = oneshot::channel();
        (HandBack { io: Some(io), back: Some(tx) }, rx)
    }

    fn io(&mut self) -> Pin<&mut Io>
    where
        Io: Unpin,
    {
        Pin::new(self.io.as_mut().expect("the I/O is taken only on drop"))
    }
}

impl<Io> Drop for HandBack<Io> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // Nobody waiting (the connection is being closed at once): the I/O is dropped here.
            let _ = back.send(io);
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for HandBack<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for HandBack<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

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
/// once they all closed (each after its [`linger`], at most [`LINGER`]). Each request carries
/// tonic's `TcpConnectInfo`, so `remote_addr()` works, and the connection's [`CloseConnection`].
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
        let (io, handed_back) = HandBack::new(conn);
        let served = builder.serve_connection(hyper_util::rt::TokioIo::new(io), hyper_svc);
        let (errors, open, mut stop) = (connection_errors.clone(), open_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let _open = open;
            let mut served = Box::pin(served);
            let (result, lingering) = tokio::select! {
                r = served.as_mut() => (r, true),
                _ = closer.closed() => {
                    tracing::debug!(%peer, "connection closed by the server");
                    (Ok(()), false)
                }
                _ = crate::util::until_true(&mut stop) => {
                    served.as_mut().graceful_shutdown();
                    (served.as_mut().await, true)
                }
            };
            drop(served);
            if let Err(e) = &result {
                errors.inc();
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
            // A connection closed on purpose (a client that stopped reading) or ended by an error
            // (a protocol error, too many resets, a reset socket) frees its buffers now.
            if lingering && result.is_ok() {
                if let Ok(io) = handed_back.await {
                    linger(io, LINGER).await;
                }
            }
        });
    }
    drop(incoming);
    drop(open_tx);
    let _ = open_rx.recv().await;
}
