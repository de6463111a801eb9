//! Command line and environment: one documented struct per command (every flag also reads a
//! `CLOUDMAP_MCP_*` environment variable). Plain data: the composition root (`app::settings`)
//! turns these into each module's own settings type.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::model::NamespaceType;
use crate::translate::{self, render, HealthFilter, Location};

#[derive(Parser, Debug)]
#[command(name = "cloudmap-mcp", version, about = "Serve AWS Cloud Map services to istiod as ServiceEntries over MCP-over-xDS")]
pub struct Cli {
    /// Log format. The level filter is read from RUST_LOG (default: info).
    #[arg(long, global = true, env = "CLOUDMAP_MCP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and the environment like [`Parser::parse`], and also refuses
    /// settings of the source that was not chosen (they would be silently ignored); exits with a
    /// usage error.
    pub fn parse_checked() -> Cli {
        Self::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_checked`] without exiting.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        if let Some((name, sub)) = matches.subcommand() {
            if let Err(msg) = check_unused_source_settings(sub) {
                let mut sub_cmd = cmd.find_subcommand_mut(name).cloned().unwrap_or(cmd);
                return Err(sub_cmd.error(clap::error::ErrorKind::ArgumentConflict, msg));
            }
        }
        Ok(cli)
    }
}

/// The settings given explicitly (on the command line, or by a non-empty environment variable)
/// among `args`' arguments, as `--flag` or `--flag (from ENV_VAR)`. Defaults do not count.
fn explicitly_set(matches: &ArgMatches, args: clap::Command, skip: &[&str]) -> Vec<String> {
    args.get_arguments()
        .filter(|a| !skip.contains(&a.get_id().as_str()))
        .filter_map(|a| {
            let flag = format!("--{}", a.get_long()?);
            match matches.value_source(a.get_id().as_str())? {
                ValueSource::CommandLine => Some(flag),
                ValueSource::EnvVariable => {
                    let env = a.get_env()?.to_string_lossy().into_owned();
                    // An empty variable (a template rendering `value: ""`) means "not set".
                    std::env::var_os(&env).filter(|v| !v.is_empty())?;
                    Some(format!("{flag} (from {env})"))
                }
                _ => None,
            }
        })
        .collect()
}

/// Refuses Cloud Map settings next to `--registry-file` and registry-file settings next to
/// `--cloudmap`: the source that was not chosen would ignore them. Environment variables count like
/// flags (a deployment that sets one expects it to apply); empty ones do not.
fn check_unused_source_settings(m: &ArgMatches) -> Result<(), String> {
    let given = matches!(m.value_source("registry_file"), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
    if given {
        // The removal guard's ratio and confirmations hold registry and mapping file edits too.
        let ignored = explicitly_set(
            m,
            CloudMapArgs::augment_args(clap::Command::new("x")),
            &["cloudmap", "max_removal_ratio", "removal_confirmations"],
        );
        if !ignored.is_empty() {
            return Err(format!(
                "--registry-file is given, so these Cloud Map settings would be ignored: {}. \
                 Remove them, or drop --registry-file and use --cloudmap",
                ignored.join(", ")
            ));
        }
    } else if m.get_flag("cloudmap")
        || matches!(m.value_source("sources_file"), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    {
        let ignored = explicitly_set(m, SourceArgs::augment_args(clap::Command::new("x")), &["registry_file"])
            .into_iter()
            .filter(|f| f.starts_with("--registry-"))
            .collect::<Vec<_>>();
        if !ignored.is_empty() {
            return Err(format!(
                "--cloudmap is given, so these registry-file settings would be ignored: {}. Remove them",
                ignored.join(", ")
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
pub enum Command {
    /// Serve ServiceEntries to istiod (ADS on --grpc-addr) with health, metrics and debug views on --admin-addr.
    Serve(ServeArgs),
    /// Print the ServiceEntries the server would serve, as Kubernetes objects (input for `kubectl apply -f -`).
    Render(RenderArgs),
}

/// Where the Cloud Map view comes from.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// A registry file (YAML or JSON mirroring Cloud Map) instead of the Cloud Map API. Re-read when it changes.
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_FILE", conflicts_with = "cloudmap")]
    pub registry_file: Option<PathBuf>,
    /// How often the registry file is checked for changes without an inotify event (a `stat`; events wake the check
    /// at once; the contents are read only when it moved).
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "250ms")]
    pub registry_poll_interval: Duration,
    /// Largest registry file read, in bytes; a larger file is refused (at startup: an error; an edit: logged, the last good version stays).
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_MAX_BYTES", default_value_t = 128 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub registry_max_bytes: u64,
    /// Most services in the registry file, counted after YAML alias expansion while it is read; more is refused like an oversized file.
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_MAX_SERVICES", default_value_t = 50_000)]
    pub registry_max_services: usize,
    /// Most instances in the registry file (all services together), counted after YAML alias expansion while it is read.
    #[arg(long, env = "CLOUDMAP_MCP_REGISTRY_MAX_INSTANCES", default_value_t = 200_000)]
    pub registry_max_instances: usize,
    #[command(flatten)]
    pub cloudmap: CloudMapArgs,
}

/// The AWS Cloud Map source (`--cloudmap`); see docs/cloudmap.md.
#[derive(Args, Debug, Clone)]
pub struct CloudMapArgs {
    /// Read services from the AWS Cloud Map API (credentials from the standard AWS chain).
    #[arg(id = "cloudmap", long = "cloudmap", env = "CLOUDMAP_MCP_CLOUDMAP", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub enabled: bool,
    /// Several Cloud Map sources (accounts, Regions, roles) from a YAML file (docs/multi-source.md); implies --cloudmap.
    /// Excludes the single-source flags (--aws-region, the selection flags); the others apply to every source.
    #[arg(long, env = "CLOUDMAP_MCP_SOURCES_FILE", value_name = "FILE", conflicts_with_all = ["registry_file", "aws_region", "include_namespaces", "exclude_namespaces", "include_services", "exclude_services", "namespace_types"])]
    pub sources_file: Option<PathBuf>,
    /// With --sources-file: how long the server waits for each source's first sync before serving the others without it (per source: firstSyncTimeout).
    #[arg(long, env = "CLOUDMAP_MCP_FIRST_SYNC_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub first_sync_timeout: Duration,
    /// AWS Region [default: from the standard chain: AWS_REGION, profile, instance metadata].
    #[arg(long, env = "CLOUDMAP_MCP_AWS_REGION", value_name = "REGION")]
    pub aws_region: Option<String>,
    /// Cloud Map endpoint URL, e.g. an emulator (AWS_ENDPOINT_URL_SERVICEDISCOVERY and AWS_ENDPOINT_URL are also honoured).
    #[arg(long, env = "CLOUDMAP_MCP_AWS_ENDPOINT_URL", value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Only these namespaces: globs matched against the namespace name or id (repeatable; comma-separated in the env var). Empty: all.
    #[arg(long = "include-namespace", value_name = "GLOB", env = "CLOUDMAP_MCP_INCLUDE_NAMESPACES", value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    /// Never these namespaces: globs matched against the namespace name or id.
    #[arg(long = "exclude-namespace", value_name = "GLOB", env = "CLOUDMAP_MCP_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Only these services: globs matched against the service name, or against NAMESPACE/SERVICE when the glob has a '/'. Empty: all.
    #[arg(long = "include-service", value_name = "GLOB", env = "CLOUDMAP_MCP_INCLUDE_SERVICES", value_delimiter = ',')]
    pub include_services: Vec<String>,
    /// Never these services (same matching as --include-service).
    #[arg(long = "exclude-service", value_name = "GLOB", env = "CLOUDMAP_MCP_EXCLUDE_SERVICES", value_delimiter = ',')]
    pub exclude_services: Vec<String>,
    /// Only namespaces of these types (repeatable; comma-separated in the env var). Empty: all types.
    #[arg(long = "namespace-type", value_name = "TYPE", env = "CLOUDMAP_MCP_NAMESPACE_TYPES", value_delimiter = ',', value_parser = parse_namespace_type)]
    pub namespace_types: Vec<NamespaceType>,
    /// Full resync: list namespaces and services (removals, additions); reads the instances of new or re-created services only.
    #[arg(long, env = "CLOUDMAP_MCP_RESYNC_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub resync_interval: Duration,
    /// How often a service's DiscoverInstancesRevision is polled after a change (instances are re-read when it moves).
    #[arg(long, env = "CLOUDMAP_MCP_REVISION_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub revision_poll_interval: Duration,
    /// A quiet service's poll interval doubles after each unchanged poll up to this; any change resets it. The default keeps a deregistration under 20 s (ECS waits 30 s before stopping a deregistered task). Equal to --revision-poll-interval: constant polling.
    #[arg(long, env = "CLOUDMAP_MCP_REVISION_POLL_MAX_INTERVAL", value_parser = humantime::parse_duration, default_value = "15s")]
    pub revision_poll_max_interval: Duration,
    /// SQS queue URL fed by an EventBridge rule with Cloud Map's CloudTrail API-call events (and optionally ECS task state changes): services named by an event are re-read at once, and polling slows down to the --events-* cadence while the queue answers.
    #[arg(long, env = "CLOUDMAP_MCP_EVENTS_QUEUE_URL", value_name = "URL")]
    pub events_queue_url: Option<String>,
    /// SQS endpoint URL, e.g. an emulator (AWS_ENDPOINT_URL_SQS and AWS_ENDPOINT_URL are also honoured).
    #[arg(long, env = "CLOUDMAP_MCP_EVENTS_ENDPOINT_URL", value_name = "URL")]
    pub events_endpoint_url: Option<String>,
    /// While the events queue answers: the longest revision poll interval of a quiet service (replaces --revision-poll-max-interval).
    #[arg(long, env = "CLOUDMAP_MCP_EVENTS_REVISION_POLL_MAX_INTERVAL", value_parser = humantime::parse_duration, default_value = "3m")]
    pub events_revision_poll_max_interval: Duration,
    /// While the events queue answers: each service's instances are re-read at least this often (replaces --instances-refresh-interval).
    #[arg(long, env = "CLOUDMAP_MCP_EVENTS_INSTANCES_REFRESH_INTERVAL", value_parser = humantime::parse_duration, default_value = "15m")]
    pub events_instances_refresh_interval: Duration,
    /// Each service's instances are re-read at least this often, whatever the revision says (a safety net: the revision is a hint).
    #[arg(long, env = "CLOUDMAP_MCP_INSTANCES_REFRESH_INTERVAL", value_parser = humantime::parse_duration, default_value = "5m")]
    pub instances_refresh_interval: Duration,
    /// Services with health checks are re-read this often (health changes do not move the revision).
    #[arg(long, env = "CLOUDMAP_MCP_HEALTH_REFRESH_INTERVAL", value_parser = humantime::parse_duration, default_value = "15s")]
    pub health_refresh_interval: Duration,
    /// Each service's Cloud Map service attributes (GetServiceAttributes) are re-read this often: updating them moves no
    /// revision, so this is the longest an `update-service-attributes` takes to be served without events.
    #[arg(long, env = "CLOUDMAP_MCP_SERVICE_ATTRIBUTES_REFRESH_INTERVAL", value_parser = humantime::parse_duration, default_value = "5m")]
    pub service_attributes_refresh_interval: Duration,
    /// API budget: Cloud Map calls per second, all operations together (token bucket).
    #[arg(long, env = "CLOUDMAP_MCP_AWS_API_RATE", default_value_t = 100.0, value_parser = parse_positive_f64)]
    pub aws_api_rate: f64,
    /// API budget: calls allowed at once above the rate after a quiet period (bucket size).
    #[arg(long, env = "CLOUDMAP_MCP_AWS_API_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub aws_api_burst: u32,
    /// API budget: most Cloud Map calls in flight at once.
    #[arg(long, env = "CLOUDMAP_MCP_AWS_API_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub aws_api_concurrency: u32,
    /// Timeout of one Cloud Map call attempt.
    #[arg(long, env = "CLOUDMAP_MCP_AWS_CALL_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub aws_call_timeout: Duration,
    /// Attempts per call when Cloud Map throttles (ThrottlingException, RequestLimitExceeded), with exponential backoff and jitter.
    #[arg(long, env = "CLOUDMAP_MCP_AWS_MAX_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub aws_max_attempts: u32,
    /// A resync, or a registry or mapping file edit, that would remove more than this share of the served services (e.g. 0.5 or 50%) is held back.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_REMOVAL_RATIO", default_value = "50%", value_parser = parse_ratio)]
    pub max_removal_ratio: f64,
    /// A held-back mass removal is applied once this many consecutive resyncs (held file edits: checks, --held-edit-check-interval apart) propose it.
    #[arg(long, env = "CLOUDMAP_MCP_REMOVAL_CONFIRMATIONS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub removal_confirmations: u32,
}

fn parse_namespace_type(s: &str) -> Result<NamespaceType, String> {
    match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
        "HTTP" => Ok(NamespaceType::Http),
        "DNS_PRIVATE" => Ok(NamespaceType::DnsPrivate),
        "DNS_PUBLIC" => Ok(NamespaceType::DnsPublic),
        _ => Err(format!("{s:?} is not a namespace type: use HTTP, DNS_PRIVATE or DNS_PUBLIC")),
    }
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// `0.5` or `50%`.
fn parse_ratio(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a ratio such as 0.5 or 50%"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} must be between 0 and 1 (0% and 100%)"))
    }
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
    /// exportTo of every ServiceEntry (repeatable; comma-separated in the env var): `.`, `*`, `~` or a namespace name. Empty: all namespaces.
    #[arg(long = "export-to", env = "CLOUDMAP_MCP_EXPORT_TO", value_delimiter = ',')]
    pub export_to: Vec<String>,
    /// Mapping file: ordered rules for hosts, aliases, namespaces, exportTo, ports and protocols, labels, VIPs per Cloud Map service (docs/mapping.md). Re-read when it changes.
    #[arg(long, env = "CLOUDMAP_MCP_MAPPING_FILE")]
    pub mapping_file: Option<PathBuf>,
    /// How often the mapping file is checked for changes.
    #[arg(long, env = "CLOUDMAP_MCP_MAPPING_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub mapping_poll_interval: Duration,
    /// App Mesh configuration translated into Istio VirtualServices, DestinationRules, Gateways and Sidecars (a Kubernetes VirtualNode's backends) served (and rendered) next to the ServiceEntries (docs/appmesh.md): a file or a directory of Kubernetes CRs, CloudFormation templates, `terraform show -json` output or CLI JSON (repeatable; comma-separated in the env var). Re-read when it changes.
    #[arg(long = "appmesh-file", env = "CLOUDMAP_MCP_APPMESH_FILES", value_delimiter = ',')]
    pub appmesh_files: Vec<PathBuf>,
    /// How often the App Mesh files are checked for changes.
    #[arg(long, env = "CLOUDMAP_MCP_APPMESH_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub appmesh_poll_interval: Duration,
    /// Give every ServiceEntry a VIP from --vip-cidr (except a single hand-registered IP), so Istio's DNS proxy resolves its hosts (`--allocate-vips=false`: never, unless a mapping rule or the service asks).
    #[arg(long, env = "CLOUDMAP_MCP_ALLOCATE_VIPS", default_value = "true", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allocate_vips: bool,
    /// VIP ranges: at most one IPv4 and one IPv6 CIDR (each entry gets one address from each); must not overlap Istio's 240.240.0.0/16 and 2001:2::/48, loopback, link-local, multicast, unspecified or IPv4-mapped addresses; a warning outside 240.0.0.0/4 and fc00::/7.
    #[arg(long = "vip-cidr", env = "CLOUDMAP_MCP_VIP_CIDRS", value_delimiter = ',', default_value = translate::vip::DEFAULT_CIDR, value_parser = parse_cidr)]
    pub vip_cidrs: Vec<translate::vip::Cidr>,
    /// The Kubernetes cluster domain: no host (a service's own, a mapping alias, `cloudmap-mcp/hosts`) in it, in cluster.local, or ending in .svc is served.
    #[arg(long, env = "CLOUDMAP_MCP_CLUSTER_DOMAIN", default_value = translate::hosts::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// Domains every ServiceEntry host must be in (the domain or below it): a service whose own host is outside is rejected, an extra host outside is left out (repeatable; comma-separated in the env var). Unset: any domain outside the cluster's. Whoever can create a Cloud Map namespace names hosts: an HTTP namespace `amazonaws.com` would otherwise serve `sts.amazonaws.com` to the mesh.
    #[arg(long = "host-domain", env = "CLOUDMAP_MCP_HOST_DOMAINS", value_delimiter = ',')]
    pub host_domains: Vec<String>,
    /// Most extra hosts (mapping aliases or `cloudmap-mcp/hosts`) one ServiceEntry serves; the others are left out with a note.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_EXTRA_HOSTS", default_value_t = translate::hosts::DEFAULT_MAX_EXTRA_HOSTS)]
    pub max_extra_hosts: usize,
}

fn parse_cidr(s: &str) -> Result<translate::vip::Cidr, String> {
    s.parse()
}

/// `KEY=VALUE`; the key and value are validated with the other translation options.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
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
    /// Serve the ServiceEntries as N disjoint shards, shard i on --grpc-addr's port + i, each port listed in istiod as
    /// its own config source: a change then re-sends (and istiod decodes) one shard, not every ServiceEntry. A service's
    /// shard depends only on its name and N; every port answers the other kinds and MeshConfig. See docs/sharding.md.
    #[arg(long, env = "CLOUDMAP_MCP_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: u16,
    /// Admin HTTP listen address: /healthz, /readyz, /metrics, and /debug/* unless --debug-addr or
    /// --debug-views=false. No authentication: see docs/operations.md (exposure).
    #[arg(long, env = "CLOUDMAP_MCP_ADMIN_ADDR", default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Serve the debug views (/debug/*) on this address instead of --admin-addr (health, readiness and
    /// metrics stay on --admin-addr), e.g. 127.0.0.1:15015 to keep them off the pod network.
    #[arg(long, env = "CLOUDMAP_MCP_DEBUG_ADDR", value_name = "ADDR")]
    pub debug_addr: Option<SocketAddr>,
    /// Serve the debug views at all (`--debug-views=false`: /debug/* answers 404; health, readiness
    /// and metrics stay).
    #[arg(long, env = "CLOUDMAP_MCP_DEBUG_VIEWS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub debug_views: bool,
    /// Largest DiscoveryRequest accepted, in bytes.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Most distinct type URLs one stream may subscribe to.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_TYPES_PER_STREAM", default_value_t = 64)]
    pub max_types_per_stream: usize,
    /// Most resource_names one request may carry.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_RESOURCE_NAMES", default_value_t = 10_000)]
    pub max_resource_names: usize,
    /// A stream whose responses make no progress for this long (the client stopped reading, even in the
    /// middle of a single response) is dropped together with its connection.
    #[arg(long, env = "CLOUDMAP_MCP_SEND_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub send_timeout: Duration,
    /// Most gRPC connections open at once (handshakes included); more are closed on accept. Lowered
    /// to fit the open-file limit. Default: ~100x a large istiod fleet (one connection per istiod), and
    /// a few tens of MB at most if all are used.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_CONNECTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A connection that has not completed TLS (when configured) and sent the HTTP/2 client preface
    /// within this time is closed.
    #[arg(long, env = "CLOUDMAP_MCP_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Most admin (and --debug-addr) HTTP connections open at once, each listener; more are closed on accept.
    #[arg(long, env = "CLOUDMAP_MCP_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: u32,
    /// Admin HTTP: a request's headers must arrive within this time, and a kept-alive connection is
    /// closed after this long without a request.
    #[arg(long, env = "CLOUDMAP_MCP_ADMIN_HEADER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub admin_header_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS); istiod opens one.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Most ADS streams open at once over all connections; more get RESOURCE_EXHAUSTED. Default: far
    /// above any istiod fleet (one stream per istiod), and at most ~130 KB each while a client stalls.
    #[arg(long, env = "CLOUDMAP_MCP_MAX_ADS_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_ads_streams: u32,
    /// How often client activity (streams opened/closed/refused, connections refused, failed
    /// handshakes) is summarized at info level when there was any; per-stream lines are at debug.
    #[arg(long, env = "CLOUDMAP_MCP_ACTIVITY_LOG_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub activity_log_interval: Duration,
    /// HTTP/2 keepalive ping interval towards clients (istiod pings every 30s on its own); also the
    /// idle time before TCP keepalive probes.
    #[arg(long, env = "CLOUDMAP_MCP_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub keepalive_interval: Duration,
    /// Pushes to clients are at least this far apart: the first change after a quiet period is pushed at once, later
    /// changes within this window are coalesced into one push at its end (each push costs every istiod a full decode).
    /// 0 pushes every change at once.
    #[arg(long, env = "CLOUDMAP_MCP_MIN_PUSH_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub min_push_interval: Duration,
    /// On SIGTERM, how long to wait for streams to close before exiting.
    #[arg(long, env = "CLOUDMAP_MCP_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
    /// A held mapping or registry file edit (one that would stop serving more than --max-removal-ratio of the services) is checked again this often; --removal-confirmations consecutive checks apply it.
    #[arg(long, env = "CLOUDMAP_MCP_HELD_EDIT_CHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub held_edit_check_interval: Duration,
    /// PEM certificate chain: serve gRPC over TLS (istiod 1.26+ `tlsSettings: {mode: SIMPLE}`). Reloaded when it changes.
    #[arg(long, env = "CLOUDMAP_MCP_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "CLOUDMAP_MCP_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle: verify client certificates against it (see --tls-client-auth).
    #[arg(long, env = "CLOUDMAP_MCP_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// With --tls-client-ca-file: `optional` accepts clients without a certificate (istiod never sends one),
    /// `required` refuses them.
    #[arg(long, env = "CLOUDMAP_MCP_TLS_CLIENT_AUTH", value_enum, default_value_t = crate::tls::ClientAuth::Optional)]
    pub tls_client_auth: crate::tls::ClientAuth,
    /// How often the TLS files are checked for changes.
    #[arg(long, env = "CLOUDMAP_MCP_TLS_RELOAD_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub tls_reload_interval: Duration,
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
    /// Print istiod's `meshConfig.configSources` for the server instead (one `xds://` entry per shard, and `k8s://`);
    /// needs no source.
    #[arg(long)]
    pub istiod_config: bool,
    /// With --istiod-config: the server as istiod reaches it, HOST:PORT of shard 0 (e.g. the Service name and its gRPC port).
    #[arg(long, value_name = "HOST:PORT", default_value = "cloudmap-mcp.istio-system.svc:15010")]
    pub server_address: String,
    /// With --istiod-config: the server's --shards.
    #[arg(long, env = "CLOUDMAP_MCP_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: u16,
}
