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
use crate::config::{ServeArgs, SourceArgs, TranslateArgs};
use crate::guard::{self, EditGuards};
use crate::metrics::{Activity, Metrics};
use crate::net::{self, http2::Preface};
use crate::source::{self, cloudmap, file, SnapshotRx};
use crate::translate::{self, mapping, HealthFilter, Mapping};
use crate::xds::{AdsServer, Clients};

pub mod settings;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    RegistryFile(#[from] file::RegistryFileError),
    #[error("mapping file {path}: {message}")]
    MappingFile { path: std::path::PathBuf, message: String },
    #[error(transparent)]
    CloudMap(#[from] cloudmap::CloudMapError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    BindShards(#[from] net::bind::BindError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    #[error(transparent)]
    AppMesh(#[from] crate::appmesh::LoadError),
}

/// The addresses actually bound (useful with port 0).
#[derive(Clone, Debug)]
pub struct BoundAddrs {
    /// The first gRPC port (shard 0).
    pub grpc: SocketAddr,
    /// Every gRPC port, by shard (`--shards`; one without sharding).
    pub grpc_shards: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// With `--debug-addr`: where the debug views are served.
    pub debug: Option<SocketAddr>,
}

/// A started source: its snapshot channel, and the Cloud Map pollers when that is the source.
pub struct StartedSource {
    pub snapshots: SnapshotRx,
    pub cloudmap: Option<cloudmap::CloudMapSource>,
    /// With the registry file: why the file on disk is not served (for readiness).
    pub file_problem: Option<file::Problem>,
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
    let cloudmap = args.cloudmap.enabled || args.cloudmap.sources_file.is_some();
    match (&args.registry_file, cloudmap) {
        (Some(_), true) => Err(AppError::Config(
            "--registry-file and --cloudmap/--sources-file exclude each other: give one".into(),
        )),
        (None, false) => {
            Err(AppError::Config("no source: give --registry-file FILE, --cloudmap or --sources-file FILE".into()))
        }
        (None, true) => {
            let src = match settings::cloudmap_sources(&args.cloudmap, health)? {
                None => cloudmap::start(settings::cloudmap_settings(&args.cloudmap, health)?, registry, metrics).await?,
                Some(sources) => cloudmap::start_many(sources, registry, metrics).await?,
            };
            Ok(StartedSource { snapshots: src.snapshots.clone(), cloudmap: Some(src), file_problem: None })
        }
        (Some(path), false) => {
            let (tx, rx) = source::channel();
            let limits = settings::registry_limits(args);
            let kind = file::registry();
            let problem = kind.problem.clone();
            file::watch_file(path.clone(), args.registry_poll_interval, limits, tx, kind, metrics).await?;
            Ok(StartedSource { snapshots: rx, cloudmap: None, file_problem: Some(problem) })
        }
    }
}

/// The largest mapping file read (a mapping is rules, not data: kilobytes).
const MAPPING_MAX_BYTES: u64 = 4 << 20;

/// Reads and parses the mapping file.
pub fn load_mapping(path: &std::path::Path) -> Result<Mapping, AppError> {
    let kind = mapping_file();
    let limits = file::Limits { max_bytes: MAPPING_MAX_BYTES, ..Default::default() };
    let bytes = file::read_capped(path, MAPPING_MAX_BYTES).map_err(kind.read_error)?;
    (kind.parse)(path, &bytes, &limits, None, &mut file::Memo::default())
}

/// The mapping file as a watched file.
fn mapping_file() -> file::Watched<Mapping, AppError> {
    file::Watched {
        what: "mapping file",
        metric: "mapping",
        empty_hint: "write `rules: []` to use no rules",
        read_error: |e| match e {
            file::RegistryFileError::Io { path, source } => AppError::MappingFile { path, message: format!("cannot read it: {source}") },
            file::RegistryFileError::TooLarge { path, bytes, max } => {
                AppError::MappingFile { path, message: format!("{bytes} bytes, over the {max}-byte cap") }
            }
            other => AppError::Config(other.to_string()),
        },
        parse: |path, bytes, _, _, _| {
            let err = |message: String| AppError::MappingFile { path: path.to_path_buf(), message };
            let text = std::str::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))?;
            mapping::parse(text).map_err(|e| err(e.to_string()))
        },
        size: |m| m.rules().len(),
        share: |_, _| {},
        log_loaded: |path, m, reload| {
            tracing::info!(
                path = %path.display(),
                rules = m.rules().len(),
                "{}",
                if reload { "mapping file reloaded" } else { "mapping file loaded" }
            )
        },
        problem: file::Problem::default(),
    }
}

/// The translation options from the flags and the mapping file; with a mapping file, a task
/// keeps them up to date with its good versions, and why the file on disk is not the version in
/// use (for readiness).
pub async fn start_options(
    args: &TranslateArgs,
    metrics: Arc<Metrics>,
) -> Result<(cache::OptionsRx, Option<file::Problem>), AppError> {
    let base = settings::translate_options(args).map_err(AppError::Config)?;
    for warning in base.vips.cidrs.iter().filter_map(|c| c.warning()) {
        tracing::warn!("{warning}");
    }
    let Some(path) = args.mapping_file.clone() else {
        return Ok((cache::fixed_options(base), None));
    };
    let (map_tx, mut map_rx) = watch::channel(None);
    let limits = file::Limits { max_bytes: MAPPING_MAX_BYTES, ..Default::default() };
    let kind = mapping_file();
    let problem = kind.problem.clone();
    file::watch_file(path, args.mapping_poll_interval, limits, map_tx, kind, metrics.clone()).await?;
    let initial = map_rx.borrow_and_update().clone().expect("the watcher publishes the first load");
    metrics.mapping_rules.set(initial.rules().len() as i64);
    let (opts_tx, opts_rx) = watch::channel(Arc::new(translate::Options { mapping: initial, ..base.clone() }));
    tokio::spawn(async move {
        while map_rx.changed().await.is_ok() {
            let Some(m) = map_rx.borrow_and_update().clone() else {
                continue;
            };
            metrics.mapping_rules.set(m.rules().len() as i64);
            let next = translate::Options { mapping: m, ..base.clone() };
            opts_tx.send_if_modified(|cur| {
                if **cur == next {
                    false
                } else {
                    *cur = Arc::new(next);
                    true
                }
            });
        }
    });
    Ok((opts_rx, Some(problem)))
}

/// Runs the server until `shutdown` completes, then drains. `bound` receives the listen addresses.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<oneshot::Sender<BoundAddrs>>,
) -> Result<(), AppError> {
    let mut grpc_limits = settings::grpc_listener(&args);
    // The admin listener (and the --debug-addr one) share the descriptors too.
    let admin_listeners = if args.debug_addr.is_some() { 2 } else { 1 };
    let mut admin_cap = args.admin_max_connections as usize;
    match crate::net::raise_open_file_limit() {
        Ok((open_files, _)) => {
            let caps = crate::net::fit_connection_caps(open_files, &[grpc_limits.max_connections, admin_cap * admin_listeners]);
            let [grpc_cap, admin_total] = caps[..] else { unreachable!("two caps in, two out") };
            admin_cap = (admin_total / admin_listeners).max(1);
            if grpc_cap < grpc_limits.max_connections {
                tracing::warn!(
                    open_files,
                    max_connections = grpc_cap,
                    "--max-connections lowered to fit the open-file limit (raise `ulimit -n` to allow more)"
                );
            }
            grpc_limits.max_connections = grpc_cap;
            tracing::info!(open_files, max_connections = grpc_limits.max_connections, admin_max_connections = admin_cap, "open-file limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    if args.debug_addr.is_some() && !args.debug_views {
        return Err(AppError::Config("--debug-addr serves the debug views, which --debug-views=false turns off: give one".into()));
    }
    let view_metrics = ViewMetrics::register(&mut registry);
    let guards = EditGuards::register(&mut registry);
    let guard_settings = settings::edit_guard(&args);
    let (options, mapping_problem) = start_options(&args.translate, metrics.clone()).await?;
    let opts = options.borrow().clone();
    let source = start_source(&args.source, opts.health_filter, metrics.clone(), &mut registry).await?;
    let registry = Arc::new(registry);
    // A registry file edit that removes most services is held (Cloud Map has its own guard).
    let snapshots = match &args.source.registry_file {
        Some(_) => {
            type Model = Option<Arc<crate::model::Snapshot>>;
            let loss: guard::Evaluate<Model> = Arc::new(|a: &Model, p: &Model| match (a, p) {
                (Some(a), Some(p)) => guard::model_loss(a, p),
                _ => guard::Loss::default(),
            });
            guards.guard("registry file", source.snapshots.clone(), loss, guard_settings)
        }
        None => source.snapshots.clone(),
    };
    // Pacing sits before the build: a change held back is neither built nor pushed until its window ends.
    let model_rx = crate::pacing::paced(snapshots, args.min_push_interval, metrics.delayed_pushes.clone());
    let (res_tx, res_rx) = watch::channel(None);
    // So is a mapping edit that would stop serving most services, judged on the served model.
    let options = match &args.translate.mapping_file {
        Some(_) => {
            let served = res_rx.clone();
            let loss: guard::Evaluate<Arc<translate::Options>> = Arc::new(move |a: &Arc<translate::Options>, p: &Arc<translate::Options>| {
                let snap: Option<Arc<cache::ResourceSnapshot>> = served.borrow().clone();
                snap.map(|s| guard::options_loss(&s.model, a, p)).unwrap_or_default()
            });
            let guarded = guards.guard("mapping file", options, loss, guard_settings);
            // At startup there is no earlier mapping to keep: judge the one in force against no
            // mapping file on the served model (the pods of a rollout restart with the new file).
            let (served, in_force) = (res_rx.clone(), guarded.clone());
            let judge: guard::StartupEvaluate = Arc::new(move || {
                let snap: Arc<cache::ResourceSnapshot> = served.borrow().clone()?;
                let applied: Arc<translate::Options> = in_force.borrow().clone();
                let baseline = translate::Options { mapping: Arc::new(Mapping::default()), ..(*applied).clone() };
                Some(guard::options_loss(&snap.model, &baseline, &applied))
            });
            let mut first = res_rx.clone();
            let served = async move {
                crate::util::until_some(&mut first).await;
            };
            guards.hold_at_startup("mapping file", "no mapping file", guarded.clone(), served, judge, guard_settings);
            guarded
        }
        None => options,
    };
    let shards = usize::from(args.shards);
    let mut cache = ResourceCache::new((*opts).clone()).with_shards(shards);
    if !args.translate.appmesh_files.is_empty() {
        let rx = crate::appmesh::watch::start(settings::appmesh(&args.translate)).await?;
        cache = cache.with_appmesh(rx);
    }
    tokio::spawn(cache::run(model_rx, options, cache, res_tx, metrics.clone()));

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
    let grpc_listeners = net::bind::consecutive(args.grpc_addr, shards).await?;
    let grpc_addrs = grpc_listeners
        .iter()
        .map(|l| l.local_addr().map_err(|source| AppError::Bind { addr: args.grpc_addr, source }))
        .collect::<Result<Vec<_>, _>>()?;
    let admin_listener =
        TcpListener::bind(args.admin_addr).await.map_err(|source| AppError::Bind { addr: args.admin_addr, source })?;
    let debug_listener = match args.debug_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?),
        None => None,
    };
    let addrs = BoundAddrs {
        grpc: grpc_addrs[0],
        grpc_shards: grpc_addrs.clone(),
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
    let grpc_list = grpc_addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");
    tracing::info!(
        grpc_addr = %addrs.grpc,
        grpc_addrs = %grpc_list,
        shards,
        admin_addr = %addrs.admin,
        debug_views = %debug_views,
        "listening"
    );
    if let Some(b) = bound {
        let _ = b.send(addrs.clone());
    }

    // One server per shard port, sharing the stream limits, the connection cap and TLS.
    let grpc: futures::future::BoxFuture<'static, ()> = {
        let routes = |shard: usize| {
            tonic::service::Routes::new(ads.for_shard(shard))
                .add_service(health_svc.clone())
                .add_service(reflection_v1.clone())
                .add_service(reflection_v1alpha.clone())
                .prepare()
        };
        let (h2, h2_errors, listener_metrics) =
            (settings::http2(&args), metrics.http2_connection_errors.clone(), metrics.listener("grpc"));
        let cap = net::ConnectionCap::new(grpc_limits.max_connections);
        let tls = tls.map(|(files, cfg)| {
            crate::tls::TlsHandshake::reloading(files, cfg, args.tls_reload_interval, metrics.tls_handshake_errors.clone(), stop_rx.clone())
        });
        let mut servers: Vec<futures::future::BoxFuture<'static, ()>> = Vec::with_capacity(shards);
        for (shard, listener) in grpc_listeners.into_iter().enumerate() {
            let addr = grpc_addrs[shard];
            let bind_err = |source| AppError::Bind { addr, source };
            let (limits, lm, stop) = (grpc_limits.clone(), listener_metrics.clone(), stop_rx.clone());
            servers.push(match &tls {
                Some(tls) => {
                    let incoming = net::incoming_capped(listener, limits, Preface(tls.clone()), lm, stop, cap.clone())
                        .map_err(bind_err)?;
                    Box::pin(net::http2::serve(incoming, routes(shard), h2.clone(), h2_errors.clone(), stop_rx.clone()))
                }
                None => {
                    let incoming = net::incoming_capped(listener, limits, Preface(net::Plain), lm, stop, cap.clone())
                        .map_err(bind_err)?;
                    Box::pin(net::http2::serve(incoming, routes(shard), h2.clone(), h2_errors.clone(), stop_rx.clone()))
                }
            });
        }
        Box::pin(async move {
            futures::future::join_all(servers).await;
        })
    };
    // With several sources, readiness names any that has not synced; with files, any file whose
    // version on disk is not the one served, and why; and any held edit.
    let mut details: Vec<admin::ReadinessDetail> = Vec::new();
    if let Some(c) = source.cloudmap.as_ref().filter(|c| c.multi) {
        let pollers = c.pollers.clone();
        details.push(Arc::new(move || cloudmap::multi::not_synced(&pollers)));
    }
    for problem in [source.file_problem.clone(), mapping_problem].into_iter().flatten() {
        details.push(Arc::new(move || problem.get()));
    }
    let held = guards.clone();
    details.push(Arc::new(move || held.readiness()));
    let detail: Option<admin::ReadinessDetail> = Some(Arc::new(move || {
        let parts: Vec<String> = details.iter().filter_map(|d| d()).collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }));
    let blocker = guards.clone();
    let blocker: Option<admin::ReadinessDetail> = Some(Arc::new(move || blocker.not_ready()));
    let health_app = admin::health_router(HealthState { snapshots: res_rx.clone(), registry, detail, blocker });
    let debug_app = args.debug_views.then(|| {
        let mut extra: Vec<ExtraView> = source
            .cloudmap
            .map(|c| {
                let snapshots = res_rx.clone();
                ExtraView {
                    path: cloudmap::debug::PATH,
                    view: View::CloudMap,
                    render: Arc::new(move || {
                        let views = c.pollers.iter().map(|p| p.debug_view()).collect();
                        cloudmap::debug::render_json(views, c.multi, &skipped_instances(&snapshots))
                    }),
                }
            })
            .into_iter()
            .collect();
        let held = guards.clone();
        extra.push(ExtraView {
            path: "/debug/held-edits",
            view: View::HeldEdits,
            render: Arc::new(move || {
                let mut body = serde_json::to_vec(&serde_json::json!({ "held": held.held() })).expect("serializes");
                body.push(b'\n');
                body.into()
            }),
        });
        let cache = Arc::new(ViewCache::new(view_metrics));
        let grpc_addrs = Arc::new(grpc_addrs.clone());
        admin::debug_router(DebugState { snapshots: res_rx.clone(), clients, cache, grpc_addrs }, extra)
    });
    let (admin_app, debug_app) = match (debug_app, debug_listener) {
        (Some(d), Some(l)) => (health_app, Some((d, l))),
        (Some(d), None) => (health_app.merge(d), None),
        (None, _) => (health_app, None),
    };
    let serve_http = |listener: TcpListener, app: axum::Router, name: &'static str| {
        let addr = listener.local_addr().unwrap_or(args.admin_addr);
        let limits = settings::admin_listener(&args, name, admin_cap);
        let incoming = net::incoming(listener, limits, net::Plain, metrics.listener(name), stop_rx.clone())
            .map_err(|source| AppError::Bind { addr, source })?;
        Ok::<_, AppError>(admin::serve::serve(incoming, app, args.admin_header_timeout, stop_rx.clone()))
    };
    let admin = serve_http(admin_listener, admin_app, "admin")?;
    let debug = match debug_app {
        Some((app, listener)) => Some(serve_http(listener, app, "debug")?),
        None => None,
    };
    let grpc = tokio::spawn(grpc);
    let admin = tokio::spawn(async move {
        match debug {
            Some(debug) => {
                tokio::join!(admin, debug);
            }
            None => admin.await,
        }
        Ok::<(), std::io::Error>(())
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

/// The instances the served snapshot's translation skipped, by `(namespace, service)`, for
/// `/debug/cloudmap` (the poller cannot know them: it reads Cloud Map, not the translation).
fn skipped_instances(snapshots: &cache::ResourceRx) -> cloudmap::debug::Skipped {
    let mut by_service = cloudmap::debug::Skipped::new();
    let Some(snap) = snapshots.borrow().clone() else { return by_service };
    for n in snap.notes.iter() {
        if let Some(id) = &n.instance {
            by_service
                .entry((n.source.namespace.clone(), n.source.service.clone()))
                .or_default()
                .push(cloudmap::debug::SkippedView { id: id.clone(), reason: n.message.clone() });
        }
    }
    by_service
}
