//! Wiring of `serve`: source → cache → ADS + admin servers, and graceful shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::admin::{self, AdminState};
use crate::cache::{self, ResourceCache};
use crate::config::{ServeArgs, SourceArgs};
use crate::metrics::Metrics;
use crate::source::{self, file, SnapshotRx};
use crate::xds::{AdsServer, Clients};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    RegistryFile(#[from] file::RegistryFileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
}

/// The addresses actually bound (useful with port 0).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts the configured source; returns its snapshot channel. Fails fast on a broken registry file.
pub fn start_source(args: &SourceArgs, metrics: Arc<Metrics>) -> Result<SnapshotRx, AppError> {
    let Some(path) = &args.registry_file else {
        return Err(AppError::Config("no source: give --registry-file".into()));
    };
    let initial = file::load(path)?;
    tracing::info!(
        path = %path.display(),
        namespaces = initial.namespaces.len(),
        services = initial.service_count(),
        instances = initial.instance_count(),
        "registry file loaded"
    );
    let (tx, rx) = source::channel();
    tokio::spawn(file::watch(path.clone(), args.registry_poll_interval, initial, tx, metrics));
    Ok(rx)
}

/// Runs the server until `shutdown` completes, then drains. `bound` receives the listen addresses.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<oneshot::Sender<BoundAddrs>>,
) -> Result<(), AppError> {
    let opts = args.translate.options().map_err(AppError::Config)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);

    let model_rx = start_source(&args.source, metrics.clone())?;
    let (res_tx, res_rx) = watch::channel(None);
    tokio::spawn(cache::run(model_rx, ResourceCache::new(opts), res_tx, metrics.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let clients = Arc::new(Clients::default());
    let ads = AdsServer::new(res_rx.clone(), metrics.clone(), clients.clone(), args.ads_config(), stop_rx.clone());

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_not_serving::<AdsServer>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    {
        let mut rx = res_rx.clone();
        let mut stop = stop_rx.clone();
        let health = health.clone();
        tokio::spawn(async move {
            tokio::select! {
                ok = crate::util::until_some(&mut rx) => if ok {
                    health.set_serving::<AdsServer>().await;
                    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                    tracing::info!("first snapshot served; ready");
                },
                _ = crate::util::until_true(&mut stop) => {}
            }
            crate::util::until_true(&mut stop).await;
            health.set_not_serving::<AdsServer>().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        });
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| AppError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| AppError::Config(format!("reflection: {e}")))?;

    let grpc_listener =
        TcpListener::bind(args.grpc_addr).await.map_err(|source| AppError::Bind { addr: args.grpc_addr, source })?;
    let admin_listener =
        TcpListener::bind(args.admin_addr).await.map_err(|source| AppError::Bind { addr: args.admin_addr, source })?;
    let addrs = BoundAddrs {
        grpc: grpc_listener.local_addr().map_err(|source| AppError::Bind { addr: args.grpc_addr, source })?,
        admin: admin_listener.local_addr().map_err(|source| AppError::Bind { addr: args.admin_addr, source })?,
    };
    tracing::info!(grpc_addr = %addrs.grpc, admin_addr = %addrs.admin, "listening");
    if let Some(b) = bound {
        let _ = b.send(addrs);
    }

    let grpc = {
        let mut stop = stop_rx.clone();
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(args.keepalive_interval))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(ads)
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, async move {
                crate::util::until_true(&mut stop).await;
            })
    };
    let admin = {
        let mut stop = stop_rx.clone();
        let app = admin::router(AdminState { snapshots: res_rx.clone(), registry, clients });
        axum::serve(admin_listener, app).with_graceful_shutdown(async move {
            crate::util::until_true(&mut stop).await;
        })
    };
    let grpc = tokio::spawn(grpc);
    let admin = tokio::spawn(async move { admin.await });

    shutdown.await;
    tracing::info!(grace = ?args.shutdown_grace, "shutting down: closing streams and listeners");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(args.shutdown_grace, async {
        let g = grpc.await;
        let a = admin.await;
        (g, a)
    })
    .await;
    match drained {
        Ok((g, a)) => {
            if let Ok(Err(e)) = g {
                return Err(AppError::Grpc(e));
            }
            if let Ok(Err(e)) = a {
                return Err(AppError::Admin(e));
            }
            tracing::info!("shutdown complete");
        }
        Err(_) => tracing::warn!("shutdown grace period over; exiting with connections still open"),
    }
    Ok(())
}
