//! The admin listener: [`crate::net::incoming`] (connection cap, TCP keepalive, accept errors
//! backed off) and hyper's HTTP/1 server with a header-read timeout. The timeout also bounds how
//! long a kept-alive connection may sit idle between requests (hyper starts it whenever it waits
//! for a request head), so neither a silent connection nor a slow-loris header holds a slot for
//! longer than that.
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::net::Incoming;

/// Serves `app` on every connection of `incoming` until `stop` turns true; then stops accepting,
/// lets requests in flight finish and returns once every connection closed.
pub async fn serve(mut incoming: Incoming<TcpStream>, app: axum::Router, header_timeout: Duration, mut stop: watch::Receiver<bool>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    // Every connection task holds a sender; all gone = all connections closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let next = tokio::select! {
            _ = crate::util::until_true(&mut stop) => None,
            c = incoming.next() => c,
        };
        let Some(conn) = next else { break };
        let peer = conn.peer;
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let served = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
        let (open, mut stop) = (open_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(served);
            let result = tokio::select! {
                r = &mut served => r,
                _ = crate::util::until_true(&mut stop) => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(incoming);
    drop(open_tx);
    let _ = open_rx.recv().await;
}
