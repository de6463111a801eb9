//! Command line and environment: one documented struct per command (every flag also reads a
//! `CLOUDMAP_MCP_*` environment variable).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::translate::{self, render, HealthFilter, HostTemplate, Location};
use crate::xds::{stream::Limits, AdsConfig};

#[derive(Parser, Debug)]
#[command(name = "cloudmap-mcp", version, about = "Serve AWS Cloud Map services to istiod as ServiceEntries over MCP-over-xDS")]
pub struct Cli {
    /// Log format. The level filter is read from RUST_LOG (default: info).
    #[arg(long, global = true, env = "CLOUDMAP_MCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve ServiceEntries to istiod (ADS on --grpc-addr) with health, metrics and debug views on --admin-addr.
    Serve(ServeArgs),
    /// Print the ServiceEntries the server would serve, as Kubernetes objects (input for `kubectl apply -f -`).
    Render(RenderArgs),
}

/// Where the Cloud Map view comes from.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// A registry file (YAML mirroring Cloud Map) instead of the Cloud Map API. Re-read when it changes.
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_FILE")]
    pub registry_file: Option<PathBuf>,
    /// How often the registry file is checked for changes.
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub registry_poll_interval: Duration,
}

/// How Cloud Map services become ServiceEntries.
#[derive(Args, Debug, Clone)]
pub struct TranslateArgs {
    /// Kubernetes namespace of the ServiceEntries [default: $POD_NAMESPACE, else istio-system].
    #[arg(long, env = "CLOUDMAP_MCP_ISTIO_NAMESPACE")]
    pub istio_namespace: Option<String>,
    /// Host of each ServiceEntry; placeholders {service} and {namespace} (the Cloud Map namespace name). Lower-cased.
    #[arg(long, env = "CLOUDMAP_MCP_HOST_TEMPLATE", default_value = "{service}.{namespace}")]
    pub host_template: String,
    /// Which instances are served, as Cloud Map's DiscoverInstances HealthStatus filter.
    #[arg(long, env = "CLOUDMAP_MCP_HEALTH_FILTER", value_enum, default_value_t = HealthFilter::HealthyOrElseAll)]
    pub health_filter: HealthFilter,
    /// ServiceEntry location.
    #[arg(long, env = "CLOUDMAP_MCP_LOCATION", value_enum, default_value_t = Location::MeshExternal)]
    pub location: Location,
    /// Set the istio.io/rev label so only the istiod of this revision uses the ServiceEntries.
    #[arg(long, env = "CLOUDMAP_MCP_ISTIO_REVISION")]
    pub istio_revision: Option<String>,
    /// Extra label on every ServiceEntry, KEY=VALUE (repeatable; comma-separated in the env var).
    #[arg(long = "label", env = "CLOUDMAP_MCP_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// exportTo of every ServiceEntry (repeatable; comma-separated in the env var). Empty: all namespaces.
    #[arg(long = "export-to", env = "CLOUDMAP_MCP_EXPORT_TO", value_delimiter = ',')]
    pub export_to: Vec<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    translate::validate::label_key(k)?;
    translate::validate::label_value(v)?;
    Ok((k.to_string(), v.to_string()))
}

impl TranslateArgs {
    pub fn options(&self) -> Result<translate::Options, String> {
        let istio_namespace = self
            .istio_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "istio-system".to_string());
        translate::validate::dns_label(&istio_namespace).map_err(|e| format!("--istio-namespace: {e}"))?;
        if let Some(rev) = &self.istio_revision {
            translate::validate::label_value(rev).map_err(|e| format!("--istio-revision: {e}"))?;
        }
        Ok(translate::Options {
            istio_namespace,
            host_template: HostTemplate::new(&self.host_template)?,
            health_filter: self.health_filter,
            location: self.location,
            revision: self.istio_revision.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            export_to: self.export_to.clone(),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// gRPC (ADS, health, reflection) listen address.
    #[arg(long, env = "CLOUDMAP_MCP_GRPC_ADDR", default_value = "0.0.0.0:15010")]
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address: /healthz, /readyz, /metrics, /debug/*.
    #[arg(long, env = "CLOUDMAP_MCP_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Largest DiscoveryRequest accepted, in bytes.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Most distinct type URLs one stream may subscribe to.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_TYPES_PER_STREAM", default_value_t = 64)]
    pub max_types_per_stream: usize,
    /// Most resource_names one request may carry.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_RESOURCE_NAMES", default_value_t = 10_000)]
    pub max_resource_names: usize,
    /// A client that does not take a response within this time is disconnected.
    #[arg(long, env = "CLOUDMAP_MCP_SEND_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub send_timeout: Duration,
    /// HTTP/2 keepalive ping interval towards clients (istiod pings every 30s on its own).
    #[arg(long, env = "CLOUDMAP_MCP_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub keepalive_interval: Duration,
    /// On SIGTERM, how long to wait for streams to close before exiting.
    #[arg(long, env = "CLOUDMAP_MCP_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    pub fn ads_config(&self) -> AdsConfig {
        AdsConfig {
            limits: Limits {
                max_types: self.max_types_per_stream,
                max_resource_names: self.max_resource_names,
                ..Limits::default()
            },
            max_request_bytes: self.max_request_bytes,
            send_timeout: self.send_timeout,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// Output format: multi-document YAML, or a JSON List.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = render::Format::Yaml)]
    pub output: render::Format,
}
