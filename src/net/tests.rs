use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http2::{Preface, PREFACE};
use super::*;

fn settings(max_connections: usize, handshake_timeout: Duration) -> ListenerSettings {
    ListenerSettings { name: "test", max_connections, handshake_timeout, tcp_keepalive: Some(Duration::from_secs(30)) }
}

async fn listen<H: Handshake>(s: ListenerSettings, h: H) -> (Incoming<H::Io>, ListenerMetrics, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = ListenerMetrics::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let inc = incoming(listener, s, h, metrics.clone(), stop_rx).unwrap();
    (inc, metrics, stop_tx)
}

/// Reads until EOF or error; true when the peer closed within `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, c.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_a_freed_slot_is_reused() {
    let (mut inc, m, _stop) = listen(settings(2, Duration::from_secs(5)), Plain).await;
    let addr = inc.local_addr();
    let _c1 = TcpStream::connect(addr).await.unwrap();
    let _c2 = TcpStream::connect(addr).await.unwrap();
    let a1 = inc.next().await.unwrap();
    let _a2 = inc.next().await.unwrap();
    assert_eq!(m.open.get(), 2);
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut c3, Duration::from_secs(2)).await, "the third connection is closed");
    assert_eq!(m.refused.get(), 1);
    assert_eq!(m.accepted.get(), 2);
    drop(a1);
    assert_eq!(m.open.get(), 1);
    let mut c4 = TcpStream::connect(addr).await.unwrap();
    let mut a4 = tokio::time::timeout(Duration::from_secs(2), inc.next()).await.unwrap().unwrap();
    c4.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    a4.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(m.refused.get(), 1);
}

#[tokio::test]
async fn a_connection_without_the_http2_preface_is_closed_at_the_handshake_deadline() {
    let (mut inc, m, _stop) = listen(settings(10, Duration::from_millis(300)), Preface(Plain)).await;
    let addr = inc.local_addr();
    let t = Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    assert!(closed_within(&mut partial, Duration::from_secs(3)).await);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}, before the deadline");
    assert_eq!(m.handshake_timeouts.get(), 2);
    assert_eq!(m.open.get(), 0, "their slots are free again");
    // Nothing was handed to the server.
    assert!(tokio::time::timeout(Duration::from_millis(50), inc.next()).await.is_err());
}

#[tokio::test]
async fn the_preface_is_handed_on_and_anything_else_fails_the_handshake() {
    let (mut inc, m, _stop) = listen(settings(10, Duration::from_secs(5)), Preface(Plain)).await;
    let addr = inc.local_addr();
    let mut http1 = TcpStream::connect(addr).await.unwrap();
    http1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut http1, Duration::from_secs(2)).await);
    assert_eq!(m.handshake_errors.get(), 1);

    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(PREFACE).await.unwrap();
    h2.write_all(b"after").await.unwrap();
    let mut a = inc.next().await.unwrap();
    let mut got = vec![0u8; PREFACE.len() + 5];
    // Small reads: the replayed preface may be split.
    let mut n = 0;
    while n < got.len() {
        let end = (n + 7).min(got.len());
        n += a.read(&mut got[n..end]).await.unwrap();
    }
    assert_eq!(&got[..PREFACE.len()], PREFACE);
    assert_eq!(&got[PREFACE.len()..], b"after");
    assert_eq!(a.peer, h2.local_addr().unwrap());
}

#[tokio::test]
async fn stop_closes_the_listening_socket_and_ends_the_stream() {
    let (mut inc, _m, stop) = listen(settings(10, Duration::from_secs(5)), Plain).await;
    let addr = inc.local_addr();
    stop.send(true).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(2), inc.next()).await.unwrap().is_none());
    assert!(TcpStream::connect(addr).await.is_err(), "nothing listens any more");
}

#[test]
fn accept_errors_back_off_exponentially_up_to_a_bound() {
    let mut b = Duration::ZERO;
    let mut seen = Vec::new();
    for _ in 0..12 {
        b = next_backoff(b);
        seen.push(b);
    }
    assert_eq!(seen[0], ACCEPT_BACKOFF_MIN);
    assert_eq!(seen[1], ACCEPT_BACKOFF_MIN * 2);
    assert!(seen.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*seen.last().unwrap(), ACCEPT_BACKOFF_MAX);
    assert!(per_connection_error(&io::Error::from(io::ErrorKind::ConnectionAborted)));
    assert!(!per_connection_error(&io::Error::from_raw_os_error(libc::EMFILE)));
}

#[test]
fn connection_caps_are_fitted_into_the_open_file_limit() {
    assert_eq!(fit_connection_caps(1_048_576, &[1000, 100]), vec![1000, 100]);
    let fitted = fit_connection_caps(256, &[1000, 100]);
    assert!(fitted.iter().sum::<usize>() as u64 <= 256 - RESERVED_FILES, "{fitted:?}");
    assert!(fitted[0] > fitted[1] && fitted[1] >= 1);
    assert_eq!(fit_connection_caps(10, &[5, 5]), vec![1, 1]);
}

#[cfg(unix)]
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let (soft, hard) = raise_open_file_limit().unwrap();
    assert_eq!(soft, hard);
}

#[tokio::test]
async fn at_the_cap_a_new_connection_takes_the_place_of_the_oldest_one_in_its_handshake() {
    let (mut inc, m, _stop) = listen(settings(3, Duration::from_secs(30)), Preface(Plain)).await;
    let addr = inc.local_addr();
    // One established connection, then idle ones filling the cap.
    let mut real = TcpStream::connect(addr).await.unwrap();
    real.write_all(PREFACE).await.unwrap();
    let _established = inc.next().await.unwrap();
    let mut idle1 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut idle2 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(m.open.get(), 3);
    // A new client at the cap: the oldest idle connection makes room, and the client gets through.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(PREFACE).await.unwrap();
    let _client = tokio::time::timeout(Duration::from_secs(2), inc.next()).await.unwrap().unwrap();
    assert!(closed_within(&mut idle1, Duration::from_secs(2)).await, "the oldest idle connection was closed");
    assert_eq!(m.evicted.get(), 1);
    // Now every slot holds an established connection or idle2: idle2 gives way next, then refusal.
    let mut next = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut idle2, Duration::from_secs(2)).await);
    assert_eq!(m.evicted.get(), 2);
    next.write_all(PREFACE).await.unwrap();
    let _n = tokio::time::timeout(Duration::from_secs(2), inc.next()).await.unwrap().unwrap();
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(2)).await, "nothing to evict: refused");
    assert_eq!(m.refused.get(), 1);
    assert_eq!(m.open.get(), 3);
    let _ = real.write_all(b"x").await;
}

/// The server wrote its last bytes and is done while the client is still reading, and the client
/// had written something the server never read (an ACK, a window update). A plain close resets the
/// connection and the client loses the tail; [`http2::linger`] delivers all of it, then EOF.
#[tokio::test]
async fn lingering_close_delivers_the_tail_a_plain_close_loses() {
    const LEN: usize = 512 * 1024;
    async fn run(lingering: bool) -> (usize, Option<std::io::ErrorKind>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&vec![7u8; LEN]).await.unwrap();
            if lingering {
                super::http2::linger(s, Duration::from_secs(5)).await;
            }
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Bytes the server will not read before it is done.
        c.write_all(b"window update").await.unwrap();
        // A slow reader: the server's last write completes while much of it is still in flight.
        let (mut got, mut buf) = (0, vec![0u8; 4096]);
        let error = loop {
            match c.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e.kind()),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        drop(c);
        server.await.unwrap();
        (got, error)
    }
    let (got, error) = run(true).await;
    assert_eq!((got, error), (LEN, None), "lingering: every byte, then EOF");
    // The control: the same exchange with a plain close loses the tail to a reset.
    let (got, error) = run(false).await;
    assert!(got < LEN && error == Some(std::io::ErrorKind::ConnectionReset), "plain close: {got} bytes, {error:?}");
}
