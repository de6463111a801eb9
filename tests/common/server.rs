//! The server, started in-process with `app::serve` on port 0.
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use cloudmap_mcp::app::{self, BoundAddrs};
use cloudmap_mcp::config::{Cli, Command};
use tokio::sync::oneshot;

use super::http1;

pub struct Server {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), app::AppError>>,
}

impl Server {
    /// `serve --cloudmap --aws-region us-east-1 --aws-endpoint-url ENDPOINT` plus `extra` flags.
    pub async fn cloudmap(endpoint: &str, extra: &[&str]) -> Server {
        let mut argv = vec![
            "cloudmap-mcp",
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--shutdown-grace",
            "1s",
            "--cloudmap",
            "--aws-region",
            "us-east-1",
            "--aws-endpoint-url",
            endpoint,
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Serve(args) = cli.command else { unreachable!() };
        let (bound_tx, bound_rx) = oneshot::channel::<BoundAddrs>();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::serve(
            args,
            async move {
                let _ = stop_rx.await;
            },
            Some(bound_tx),
        ));
        let addrs = tokio::time::timeout(Duration::from_secs(30), bound_rx)
            .await
            .expect("server bound within 30s")
            .expect("server started");
        Server { grpc: addrs.grpc, admin: addrs.admin, stop: Some(stop), task }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http1::get(self.admin, path).await
    }

    pub async fn debug(&self) -> serde_json::Value {
        let (status, body) = self.get("/debug/cloudmap").await;
        assert_eq!(status, 200, "/debug/cloudmap: {body}");
        serde_json::from_str(&body).expect("debug JSON")
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Sum of the samples of `name` whose labels contain every `key="value"` in `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            if !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}
