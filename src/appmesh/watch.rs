//! `--appmesh-file` at run time: loaded at startup (an error stops the start), then checked every
//! poll interval; a changed file is loaded again, and a bad edit keeps the last good model with one
//! log line giving the reason.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::model::AppMesh;
use super::LoadError;
use crate::util::Escaped;

/// The watcher's settings (mapped from the command line by the composition root).
#[derive(Clone, Debug)]
pub struct Settings {
    pub paths: Vec<PathBuf>,
    pub poll_interval: Duration,
    pub max_bytes: u64,
}

/// What the files look like on disk: a change of any is a reason to load again.
type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    let mut out = Vec::new();
    for p in paths {
        for f in super::load::files(p).unwrap_or_else(|_| vec![p.clone()]) {
            let m = std::fs::metadata(&f).ok();
            out.push((f, m.as_ref().map_or(0, |m| m.len()), m.and_then(|m| m.modified().ok())));
        }
    }
    out
}

fn log_loaded(m: &AppMesh, reload: bool) {
    tracing::info!(
        virtual_services = m.virtual_services.len(),
        virtual_routers = m.virtual_routers.len(),
        virtual_nodes = m.virtual_nodes.len(),
        virtual_gateways = m.virtual_gateways.len(),
        gateway_routes = m.gateway_routes.len(),
        "{}",
        if reload { "App Mesh configuration reloaded" } else { "App Mesh configuration loaded" }
    );
}

/// Loads the files and starts watching them; the receiver carries every good model.
pub async fn start(settings: Settings) -> Result<watch::Receiver<Arc<AppMesh>>, LoadError> {
    let s = settings.clone();
    let (initial, mut last) =
        tokio::task::spawn_blocking(move || (super::load(&s.paths, s.max_bytes), stamp(&s.paths)))
            .await
            .expect("App Mesh load does not panic");
    let initial = initial?;
    log_loaded(&initial, false);
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let s = settings.clone();
            let now = tokio::task::spawn_blocking(move || stamp(&s.paths)).await.unwrap_or_default();
            if now == last {
                continue;
            }
            last = now;
            let s = settings.clone();
            match tokio::task::spawn_blocking(move || super::load(&s.paths, s.max_bytes)).await {
                Ok(Ok(m)) => {
                    log_loaded(&m, true);
                    tx.send_replace(Arc::new(m));
                }
                Ok(Err(e)) => tracing::warn!(
                    error = %Escaped(&e.to_string()),
                    "App Mesh file edit not applied: still serving the last good App Mesh translation"
                ),
                Err(e) => tracing::error!(error = %e, "loading the App Mesh files failed"),
            }
        }
    });
    Ok(rx)
}
