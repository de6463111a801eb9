//! Wiring of `serve`: source → cache → ADS + admin servers, and graceful shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::admin::views::{View, ViewCache, ViewMetrics};
use crate::admin::{self, DebugState, ExtraView, HealthState};
use crate::cache::{self, ResourceCache};
use crate::config::{ServeArgs, SourceArgs};
use crate::metrics::{Activity, Metrics};
use crate::net::{self, http2::Preface};
use crate::source::{self, cloudmap, file, SnapshotRx};
use crate::translate::HealthFilter;
use crate::xds::{AdsServer, Clients};

pub mod settings;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    RegistryFile(#[from] file::RegistryFileError),
    #[error(transparent)]
    CloudMap(#[from] cloudmap::CloudMapError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
}

/// The addresses actually bound (useful with port 0).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// With `--debug-addr`: where the debug views are served.
    pub debug: Option<SocketAddr>,
}

/// A started source: its snapshot channel, and the Cloud Map poller when that is the source.
pub struct StartedSource {
    pub snapshots: SnapshotRx,
    pub cloudmap: Option<Arc<cloudmap::Poller>>,
}

/// Starts the configured source (the registry file or Cloud Map, never both) and returns its
/// snapshot channel. Fails fast on a broken registry file or bad Cloud Map settings; an unreachable
/// Cloud Map does not fail: the source keeps retrying and publishes nothing until it has synced.
/// Source metrics are registered on `registry`.
pub async fn start_source(
    args: &SourceArgs,
    health: HealthFilter,
    metrics: Arc<Metrics>,
    registry: &mut Registry,
) -> Result<StartedSource, AppError> {
    match (&args.registry_file, args.cloudmap.enabled) {
        (Some(_), true) => Err(AppError::Config("--registry-file and --cloudmap exclude each other: give one".into())),
        (None, false) => Err(AppError::Config("no source: give --registry-file FILE or --cloudmap".into())),
        (None, true) => {
            let settings = settings::cloudmap_settings(&args.cloudmap, health)?;
            let src = cloudmap::start(settings, registry, metrics).await?;
            Ok(StartedSource { snapshots: src.snapshots, cloudmap: Some(src.poller) })
        }
        (Some(path), false) => {
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
            Ok(StartedSource { snapshots: rx, cloudmap: None })
        }
    }
}

/// Runs the server until `shutdown` completes, then drains. `bound` receives the listen addresses.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<oneshot::Sender<BoundAddrs>>,
) -> Result<(), AppError> {
    let opts = settings::translate_options(&args.translate).map_err(AppError::Config)?;
    let mut grpc_limits = settings::grpc_listener(&args);
    match crate::net::raise_open_file_limit() {
        Ok((open_files, _)) => {
            let [grpc_cap] = crate::net::fit_connection_caps(open_files, &[grpc_limits.max_connections])[..] else {
                unreachable!("one cap in, one out")
            };
            if grpc_cap < grpc_limits.max_connections {
                tracing::warn!(
                    open_files,
                    max_connections = grpc_cap,
                    "--max-connections lowered to fit the open-file limit (raise `ulimit -n` to allow more)"
                );
            }
            grpc_limits.max_connections = grpc_cap;
            tracing::info!(open_files, max_connections = grpc_limits.max_connections, "open-file limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    if args.debug_addr.is_some() && !args.debug_views {
        return Err(AppError::Config("--debug-addr serves the debug views, which --debug-views=false turns off: give one".into()));
    }
    let view_metrics = ViewMetrics::register(&mut registry);
    let source = start_source(&args.source, opts.health_filter, metrics.clone(), &mut registry).await?;
    let registry = Arc::new(registry);
    let model_rx = source.snapshots;
    let (res_tx, res_rx) = watch::channel(None);
    tokio::spawn(cache::run(model_rx, ResourceCache::new(opts), res_tx, metrics.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(log_activity(metrics.clone(), args.activity_log_interval, stop_rx.clone()));
    let clients = Arc::new(Clients::default());
    let ads = AdsServer::new(res_rx.clone(), metrics.clone(), clients.clone(), settings::ads_config(&args), stop_rx.clone());

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

    let tls = match settings::tls_files(&args) {
        Some(files) => {
            let cfg = crate::tls::load(&files)?;
            tracing::info!(cert = %files.cert.display(), client_ca = ?files.client_ca, "gRPC listener uses TLS");
            Some((files, cfg))
        }
        None => None,
    };
    let grpc_listener =
        TcpListener::bind(args.grpc_addr).await.map_err(|source| AppError::Bind { addr: args.grpc_addr, source })?;
    let admin_listener =
        TcpListener::bind(args.admin_addr).await.map_err(|source| AppError::Bind { addr: args.admin_addr, source })?;
    let debug_listener = match args.debug_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?),
        None => None,
    };
    let addrs = BoundAddrs {
        grpc: grpc_listener.local_addr().map_err(|source| AppError::Bind { addr: args.grpc_addr, source })?,
        admin: admin_listener.local_addr().map_err(|source| AppError::Bind { addr: args.admin_addr, source })?,
        debug: match &debug_listener {
            Some(l) => Some(l.local_addr().map_err(|source| AppError::Bind { addr: args.admin_addr, source })?),
            None => None,
        },
    };
    let debug_views = match (args.debug_views, addrs.debug) {
        (false, _) => "off".to_string(),
        (true, None) => "on the admin address".to_string(),
        (true, Some(a)) => a.to_string(),
    };
    tracing::info!(grpc_addr = %addrs.grpc, admin_addr = %addrs.admin, debug_views = %debug_views, "listening");
    if let Some(b) = bound {
        let _ = b.send(addrs);
    }

    let grpc: futures::future::BoxFuture<'static, ()> = {
        let routes = tonic::service::Routes::new(ads)
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .prepare();
        let (h2, h2_errors, listener_metrics) =
            (settings::http2(&args), metrics.http2_connection_errors.clone(), metrics.listener("grpc"));
        let bind_err = |source| AppError::Bind { addr: args.grpc_addr, source };
        match tls {
            Some((files, cfg)) => {
                let tls = crate::tls::TlsHandshake::reloading(
                    files,
                    cfg,
                    args.tls_reload_interval,
                    metrics.tls_handshake_errors.clone(),
                    stop_rx.clone(),
                );
                let incoming =
                    net::incoming(grpc_listener, grpc_limits, Preface(tls), listener_metrics, stop_rx.clone())
                        .map_err(bind_err)?;
                Box::pin(net::http2::serve(incoming, routes, h2, h2_errors, stop_rx.clone()))
            }
            None => {
                let incoming =
                    net::incoming(grpc_listener, grpc_limits, Preface(net::Plain), listener_metrics, stop_rx.clone())
                        .map_err(bind_err)?;
                Box::pin(net::http2::serve(incoming, routes, h2, h2_errors, stop_rx.clone()))
            }
        }
    };
    let health_app = admin::health_router(HealthState { snapshots: res_rx.clone(), registry });
    let debug_app = args.debug_views.then(|| {
        let extra = source.cloudmap.map(|poller| {
            let snapshots = res_rx.clone();
            ExtraView {
                path: cloudmap::debug::PATH,
                view: View::CloudMap,
                render: Arc::new(move || cloudmap::debug::render_json(&poller, &snapshots)),
            }
        });
        let cache = Arc::new(ViewCache::new(view_metrics));
        admin::debug_router(DebugState { snapshots: res_rx.clone(), clients, cache }, extra)
    });
    let (admin_app, debug_app) = match (debug_app, debug_listener) {
        (Some(d), Some(l)) => (health_app, Some((d, l))),
        (Some(d), None) => (health_app.merge(d), None),
        (None, _) => (health_app, None),
    };
    let serve_http = |listener: TcpListener, app: axum::Router| {
        let mut stop = stop_rx.clone();
        axum::serve(listener, app).with_graceful_shutdown(async move {
            crate::util::until_true(&mut stop).await;
        })
    };
    let admin = serve_http(admin_listener, admin_app);
    let debug = debug_app.map(|(app, listener)| serve_http(listener, app));
    let grpc = tokio::spawn(grpc);
    let admin = tokio::spawn(async move {
        match debug {
            Some(debug) => tokio::try_join!(admin, debug).map(|_| ()),
            None => admin.await,
        }
    });

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
        Ok((_, a)) => {
            if let Ok(Err(e)) = a {
                return Err(AppError::Admin(e));
            }
            tracing::info!("shutdown complete");
        }
        Err(_) => tracing::warn!("shutdown grace period over; exiting with connections still open"),
    }
    Ok(())
}

/// Logs a summary of client activity every `every` when there was any (per-stream and
/// per-connection lines are at debug, so a flood of clients cannot flood the log).
async fn log_activity(metrics: Arc<Metrics>, every: std::time::Duration, mut stop: watch::Receiver<bool>) {
    let mut last = metrics.activity();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now = metrics.activity();
        let d: Activity = now.since(&last);
        last = now;
        if d.is_zero() {
            continue;
        }
        tracing::info!(
            period = ?every,
            streams_open = metrics.streams_connected.get(),
            streams_opened = d.streams_opened,
            streams_closed = d.streams_closed,
            streams_refused = d.streams_refused,
            connections_open = metrics.listener("grpc").open.get(),
            connections_accepted = d.connections_accepted,
            connections_refused = d.connections_refused,
            handshake_errors = d.handshake_errors,
            handshake_timeouts = d.handshake_timeouts,
            accept_errors = d.accept_errors,
            http2_errors = d.http2_errors,
            "gRPC client activity"
        );
    }
}
