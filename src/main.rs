use anyhow::Context;
use cloudmap_mcp::config::{Cli, Command, LogFormat, RenderArgs};
use cloudmap_mcp::{app, appmesh, source, translate};

/// The level filter when RUST_LOG is unset: info, except the HTTP/2 stack's own warnings about
/// misbehaving connections (one line per connection a client breaks): they are counted in
/// `cloudmap_mcp_http2_connection_errors_total` and logged by the server at debug.
const DEFAULT_FILTER: &str = "info,h2=error,hyper=error";

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    // Colour codes only on a terminal, never into files or pipes.
    // Every event on one line: a newline in a registry's attribute or name cannot forge a log line.
    let ansi = std::io::stderr().is_terminal();
    let writer = move || cloudmap_mcp::util::OneLinePerEvent::new(std::io::stderr(), ansi);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    if args.istiod_config {
        let snippet = cloudmap_mcp::cache::shard::istiod_config_sources(&args.server_address, usize::from(args.shards))
            .context("--server-address")?;
        print!("{snippet}");
        return Ok(());
    }
    let mut opts = app::settings::translate_options(&args.translate).map_err(anyhow::Error::msg).context("invalid options")?;
    for warning in opts.vips.cidrs.iter().filter_map(|c| c.warning()) {
        eprintln!("warning: {warning}");
    }
    if let Some(path) = &args.translate.mapping_file {
        opts.mapping = std::sync::Arc::new(app::load_mapping(path)?);
    }
    let cloudmap = args.source.cloudmap.enabled || args.source.cloudmap.sources_file.is_some();
    let snapshot = match (&args.source.registry_file, cloudmap) {
        (Some(_), true) => anyhow::bail!("--registry-file and --cloudmap/--sources-file exclude each other: give one"),
        (None, false) => anyhow::bail!("render needs a source: give --registry-file FILE, --cloudmap or --sources-file FILE"),
        (Some(path), false) => source::file::load_with(path, &app::settings::registry_limits(&args.source))?,
        (None, true) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            match app::settings::cloudmap_sources(&args.source.cloudmap, opts.health_filter)? {
                Some(sources) => rt.block_on(source::cloudmap::sync_all_once(sources, 3))?,
                None => {
                    let settings = app::settings::cloudmap_settings(&args.source.cloudmap, opts.health_filter)?;
                    rt.block_on(source::cloudmap::sync_once(settings, 3))?
                }
            }
        }
    };
    let mut t = translate::translate(&snapshot, &opts);
    if args.translate.appmesh_files.is_empty() {
        print!("{}", translate::render::render(&t.entries, args.output));
    } else {
        if args.output != translate::render::Format::Yaml {
            anyhow::bail!("--appmesh-file: render prints YAML only (drop -o json)");
        }
        let am = app::settings::appmesh(&args.translate);
        let mesh = appmesh::load(&am.paths, am.max_bytes)?;
        let routing = appmesh::translate::translate(&mesh, &t.entries, &opts.istio_namespace);
        appmesh::translate::apply_port_protocols(&mut t.entries, &routing.port_protocols);
        print!("{}", translate::render::render(&t.entries, args.output));
        print!("{}", appmesh::istio::yaml(&routing.objects, &routing.report));
    }
    for line in translate::render::report_comments(&t).lines() {
        eprintln!("{line}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Before any other thread starts; MALLOC_ARENA_MAX in the environment overrides it.
    let arenas = cloudmap_mcp::util::limit_malloc_arenas();
    let cli = Cli::parse_checked();
    init_logging(cli.log_format);
    if let Some(n) = arenas {
        tracing::debug!(malloc_arena_max = n, "malloc arenas limited (MALLOC_ARENA_MAX in the environment overrides)");
    }
    match cli.command {
        Command::Render(args) => render(&args),
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            rt.block_on(app::serve(args, shutdown_signal(), None))?;
            Ok(())
        }
    }
}
