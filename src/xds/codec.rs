//! The wire side of ADS responses: `DiscoveryResponse`s written from pre-encoded resource bytes (no
//! per-stream protobuf encoding of resources), streamed in chunks by [`ResponseBody`] so a stream
//! never holds a copy of a whole response. Requests are decoded by tonic with prost.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::stream::Outgoing;
use crate::cache;
use crate::proto::envoy::config::core::v3::ControlPlane;

/// `DiscoveryResponse.control_plane` identifying this server, encoded once.
pub fn control_plane_field() -> Bytes {
    let cp = ControlPlane { identifier: format!("cloudmap-mcp/{}", env!("CARGO_PKG_VERSION")) };
    let mut buf = BytesMut::new();
    prost::encoding::message::encode(6, &cp, &mut buf);
    buf.freeze()
}

/// Most bytes of resources copied into one chunk of a response body. The transport asks for the next
/// chunk only when it has room for it (HTTP/2 flow control), so a stream holds a chunk or two of its
/// own, whatever the size of the state it sends. One HTTP/2 DATA frame at the default frame size:
/// a client that stops reading pins about this much per stream (measured in RELIABILITY.md).
pub const CHUNK: usize = 16 * 1024;

/// How a stream's responses are moving out, shared by its task and its [`ResponseBody`]: the
/// responses queued and not yet fully handed to the transport, and when the transport last took
/// something. The transport asks the body for a chunk only when the client's flow-control window
/// and the send buffer have room, so a client that stops reading stops the clock, even when a
/// single response (of any size) is in flight.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    /// Milliseconds from `origin` to the last progress.
    last: AtomicU64,
    outstanding: AtomicUsize,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { origin: Instant::now(), last: AtomicU64::new(0), outstanding: AtomicUsize::new(0) }
    }
}

impl Progress {
    fn touch(&self) {
        self.last.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A response is about to be queued for the body.
    pub fn queued(&self) {
        if self.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.touch();
        }
    }

    fn written(&self) {
        self.touch();
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a response is queued or being written.
    pub fn busy(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) > 0
    }

    /// How long nothing moved while a response was outstanding (zero when none is).
    pub fn stalled_for(&self) -> Duration {
        if !self.busy() {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// The HTTP body of one ADS stream: every [`Outgoing`] becomes one gRPC message written in chunks
/// of about [`CHUNK`] bytes straight from the shared pre-encoded resources (no per-stream copy of the
/// whole response); after the last response, the stream's status goes out as trailers.
pub struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    done: oneshot::Receiver<Status>,
    control_plane: Bytes,
    writing: Option<Writing>,
    ended: bool,
    progress: Arc<Progress>,
}

impl ResponseBody {
    /// `rx`: the responses; `done`: the final status when the stream ends with an error (OK when
    /// dropped); `progress`: updated as chunks are handed out (the stream task calls
    /// [`Progress::queued`] for each response it sends on `rx`).
    pub fn new(rx: mpsc::Receiver<Outgoing>, done: oneshot::Receiver<Status>, control_plane: Bytes, progress: Arc<Progress>) -> Self {
        ResponseBody { rx, done, control_plane, writing: None, ended: false, progress }
    }

    fn trailers(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        let mut map = http::HeaderMap::new();
        match status.add_header(&mut map) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(map)))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// One response being written.
struct Writing {
    /// gRPC message prefix and `version_info`.
    head: Option<Bytes>,
    body: Arc<cache::EncodedType>,
    next: usize,
    /// `type_url`, `nonce`, `control_plane`.
    tail: Option<Bytes>,
    /// Bytes not yet handed out.
    remaining: usize,
}

impl Writing {
    fn new(o: &Outgoing, control_plane: &[u8]) -> Result<Writing, Status> {
        let len = encoded_len(o, control_plane);
        let len32 = u32::try_from(len)
            .map_err(|_| Status::resource_exhausted(format!("response of {len} bytes exceeds gRPC's 4 GiB message limit")))?;
        let mut head = BytesMut::with_capacity(5 + 11 + o.body.version.len());
        head.put_u8(0); // not compressed
        head.put_u32(len32);
        prost::encoding::string::encode(1, &o.body.version, &mut head);
        let mut tail = BytesMut::new();
        prost::encoding::string::encode(4, &o.type_url, &mut tail);
        prost::encoding::string::encode(5, &o.nonce, &mut tail);
        tail.put_slice(control_plane);
        Ok(Writing { head: Some(head.freeze()), body: o.body.clone(), next: 0, tail: Some(tail.freeze()), remaining: 5 + len })
    }

    /// The next chunk: small resources are copied together up to [`CHUNK`] bytes; a resource of at
    /// least that size goes out as it is (no copy).
    fn next_chunk(&mut self) -> Option<Bytes> {
        fn copy(out: &mut BytesMut, remaining: &mut usize, b: &[u8]) {
            if out.capacity() == 0 {
                out.reserve((*remaining).min(CHUNK + 256));
            }
            out.put_slice(b);
            *remaining -= b.len();
        }
        let mut out = BytesMut::new();
        if let Some(h) = self.head.take() {
            copy(&mut out, &mut self.remaining, &h);
        }
        while let Some(r) = self.body.resources.get(self.next) {
            if out.is_empty() && r.len() >= CHUNK {
                self.next += 1;
                self.remaining -= r.len();
                return Some(r.clone());
            }
            if out.len() + r.len() > CHUNK {
                return Some(out.freeze());
            }
            copy(&mut out, &mut self.remaining, r);
            self.next += 1;
        }
        if let Some(t) = self.tail.take() {
            copy(&mut out, &mut self.remaining, &t);
        }
        debug_assert!(!out.is_empty() || self.remaining == 0, "the length prefix matches what was written");
        (!out.is_empty()).then(|| out.freeze())
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(w) = &mut this.writing {
                if let Some(chunk) = w.next_chunk() {
                    this.progress.touch();
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.writing = None;
                this.progress.written();
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(o)) => match Writing::new(&o, &this.control_plane) {
                    Ok(w) => this.writing = Some(w),
                    Err(status) => return this.trailers(status),
                },
                // The stream task is over: its final status, or OK.
                Poll::Ready(None) => {
                    let status = match Pin::new(&mut this.done).poll(cx) {
                        Poll::Ready(Ok(status)) => status,
                        Poll::Ready(Err(_)) => Status::ok(""),
                        Poll::Pending => return Poll::Pending,
                    };
                    return this.trailers(status);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Encoded size of the response `item` becomes.
pub fn encoded_len(item: &Outgoing, control_plane: &[u8]) -> usize {
    cache::encoded_response_len(&item.body, &item.type_url, &item.nonce, control_plane)
}

/// One response as a contiguous message (what [`ResponseBody`] writes, without the gRPC prefix), for tests.
pub fn encode_to_vec(item: &Outgoing, control_plane: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(encoded_len(item, control_plane));
    cache::encode_response(&item.body, &item.type_url, &item.nonce, control_plane, &mut v);
    debug_assert!(<crate::proto::DiscoveryResponse as prost::Message>::decode(v.as_slice()).is_ok());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use prost::Message;

    fn outgoing(resource_sizes: &[usize], nonce: &str) -> Outgoing {
        // Each resource is a framed `resources` field holding an `Any` with `n` bytes of value.
        let resources: Vec<Bytes> = resource_sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let any = prost_types::Any { type_url: String::new(), value: vec![b'a' + (i % 26) as u8; *n] };
                let mut b = BytesMut::new();
                prost::encoding::message::encode(2, &any, &mut b);
                b.freeze()
            })
            .collect();
        let resources_len = resources.iter().map(Bytes::len).sum();
        let body = cache::EncodedType { version: "v1".into(), resources, resources_len, names: Vec::new() };
        Outgoing { type_url: "networking.istio.io/v1/ServiceEntry".into(), nonce: nonce.into(), body: Arc::new(body), serial: 1 }
    }

    /// Polls the body to its end: the data frames in order, and the trailers.
    async fn drain(mut body: ResponseBody) -> (Vec<Bytes>, http::HeaderMap) {
        let mut data = Vec::new();
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.expect("trailers end the body").unwrap();
            match frame.into_data() {
                Ok(d) => data.push(d),
                Err(f) => {
                    let t = f.into_trailers().expect("data or trailers");
                    assert!(body.is_end_stream());
                    assert!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.is_none());
                    return (data, t);
                }
            }
        }
    }

    #[tokio::test]
    async fn body_writes_each_response_as_one_grpc_message_in_bounded_chunks() {
        let cp = control_plane_field();
        // Small resources (copied together), one at the chunk size (sent as it is), an empty state.
        let sends = [outgoing(&[100; 2000], "1"), outgoing(&[10, CHUNK, 10, CHUNK + 7, 5], "2"), outgoing(&[], "3")];
        let (tx, rx) = mpsc::channel(8);
        let (done_tx, done_rx) = oneshot::channel::<Status>();
        for o in &sends {
            tx.send(o.clone()).await.unwrap();
        }
        // The stream task ends without an error: both its senders go.
        drop((tx, done_tx));
        let (chunks, trailers) = drain(ResponseBody::new(rx, done_rx, cp.clone(), Arc::default())).await;
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        for c in &chunks {
            assert!(c.len() <= CHUNK + 64, "chunk of {} bytes", c.len());
        }
        // The concatenation is exactly the gRPC framing of each response.
        let wire: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = Vec::new();
        for o in &sends {
            let msg = encode_to_vec(o, &cp);
            expected.put_u8(0);
            expected.put_u32(msg.len() as u32);
            expected.extend_from_slice(&msg);
            let resp = crate::proto::DiscoveryResponse::decode(msg.as_slice()).unwrap();
            assert_eq!(resp.resources.len(), o.body.resources.len());
            assert_eq!(resp.nonce, o.nonce);
        }
        assert_eq!(wire.len(), expected.len());
        assert!(wire == expected);
        // The big resources went out without a copy.
        let big = &sends[1].body.resources[1];
        assert!(chunks.iter().any(|c| c.as_ptr() == big.as_ptr() && c.len() == big.len()));
    }

    #[tokio::test]
    async fn body_ends_with_the_stream_status() {
        let (tx, rx) = mpsc::channel(1);
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(outgoing(&[3], "1")).await.unwrap();
        done_tx.send(Status::deadline_exceeded("client did not read responses in time")).unwrap();
        drop(tx);
        let (chunks, trailers) = drain(ResponseBody::new(rx, done_rx, control_plane_field(), Arc::default())).await;
        assert!(!chunks.is_empty());
        assert_eq!(trailers.get("grpc-status").unwrap(), &(tonic::Code::DeadlineExceeded as i32).to_string());
        assert!(trailers.get("grpc-message").is_some());
    }

    #[tokio::test]
    async fn progress_stops_while_the_transport_takes_nothing_and_clears_when_written() {
        let progress = Arc::new(Progress::default());
        let (tx, rx) = mpsc::channel(1);
        let (_done_tx, done_rx) = oneshot::channel();
        let mut body = ResponseBody::new(rx, done_rx, control_plane_field(), progress.clone());
        assert!(!progress.busy());
        assert_eq!(progress.stalled_for(), Duration::ZERO);
        // One response of several chunks; the transport takes the first chunk, then nothing.
        progress.queued();
        tx.send(outgoing(&[1000; 3 * CHUNK / 1000], "1")).await.unwrap();
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
        assert!(first.is_data());
        std::thread::sleep(Duration::from_millis(120));
        assert!(progress.busy());
        assert!(progress.stalled_for() >= Duration::from_millis(100), "{:?}", progress.stalled_for());
        // Taking a chunk is progress.
        let _ = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
        assert!(progress.stalled_for() < Duration::from_millis(100));
        // Draining the response (the next poll waits for another) leaves nothing outstanding.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut body).poll_frame(&mut cx) {}
        assert!(!progress.busy());
        assert_eq!(progress.stalled_for(), Duration::ZERO);
    }
}
