//! Plain types for an App Mesh configuration, whichever of the four forms it was written in.
//!
//! Names are App Mesh names (`virtualNodeName`, the CRs' `awsName`); references hold the name of
//! the object they point at once the loaders resolved CR names and CloudFormation logical ids.
//! Nothing from AWS SDKs, Kubernetes or protobuf appears here.
use std::collections::BTreeMap;

/// Where an object came from: its kind and name name it in annotations and the report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// `file:line` of the object's definition (not part of any translated output).
    pub at: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }
    /// The Istio port protocol.
    pub fn istio(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::Tcp => "TCP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub port: u32,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(String),
    /// `range {start, end}`: no Istio equivalent.
    Range {
        start: i64,
        end: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub invert: bool,
    /// None: the header must be present.
    pub matcher: Option<StringMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub prefix: Option<String>,
    /// `path {exact | regex}`.
    pub path: Option<StringMatch>,
    pub headers: Vec<HeaderMatch>,
    pub method: Option<String>,
    pub scheme: Option<String>,
    /// Query parameters: name and exact value (None: present).
    pub query: Vec<(String, Option<String>)>,
    pub port: Option<u32>,
    /// gRPC `serviceName`, `methodName`, `metadata`.
    pub service_name: Option<String>,
    pub method_name: Option<String>,
    pub metadata: Vec<HeaderMatch>,
    /// Gateway routes: `hostname {exact | suffix}`.
    pub hostname: Option<StringMatch>,
}

impl RouteMatch {
    /// App Mesh's ordering key without priorities: the longer match first.
    pub fn length(&self) -> usize {
        let s = |m: &Option<StringMatch>| match m {
            Some(StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Suffix(s) | StringMatch::Regex(s)) => {
                s.len()
            }
            _ => 0,
        };
        self.prefix.as_ref().map_or(0, String::len)
            + s(&self.path)
            + self.service_name.as_ref().map_or(0, String::len)
            + self.method_name.as_ref().map_or(0, String::len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedTarget {
    pub virtual_node: String,
    pub weight: u32,
    pub port: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    pub http_events: Vec<String>,
    pub tcp_events: Vec<String>,
    pub grpc_events: Vec<String>,
    pub max_retries: u32,
    pub per_retry_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub per_request_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub origin: Origin,
    pub priority: Option<u32>,
    pub protocol: Protocol,
    pub matcher: RouteMatch,
    pub targets: Vec<WeightedTarget>,
    pub retry: Option<RetryPolicy>,
    pub timeout: Timeouts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualRouter {
    pub mesh: String,
    pub name: String,
    pub origin: Origin,
    pub listeners: Vec<PortMapping>,
    /// In the order given; translation sorts them.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    VirtualNode(String),
    VirtualRouter(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub mesh: String,
    /// The App Mesh name: the host clients call.
    pub name: String,
    pub origin: Origin,
    pub provider: Option<Provider>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    CloudMap { namespace: String, service: String, attributes: BTreeMap<String, String> },
    Dns { hostname: String, response_type: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    pub max_server_errors: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
}

/// A listener's (inbound) connection pool: the protocol's block with its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionPool {
    pub protocol: Protocol,
    pub limits: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeListener {
    pub port_mapping: PortMapping,
    pub outlier: Option<OutlierDetection>,
    pub connection_pool: Option<ConnectionPool>,
    pub health_check: bool,
    pub tls: bool,
    pub timeout: Timeouts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    File { chain: String },
    Sds { secret: String },
    Acm { authorities: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certificate {
    File { chain: String, key: String },
    Sds { secret: String },
    Acm { arn: String },
}

/// `clientPolicy.tls` of a backend or of `backendDefaults`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub enforce: bool,
    pub ports: Vec<u32>,
    pub trust: Option<Trust>,
    pub subject_alt_names: Vec<String>,
    pub certificate: Option<Certificate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub virtual_service: String,
    pub tls: Option<ClientTls>,
}

/// The pods a Kubernetes VirtualNode selects (`metadata.namespace`, `podSelector`). The other
/// forms describe ECS tasks or other compute that an Istio Sidecar resource does not select.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `podSelector.matchLabels` (without `matchExpressions`).
    Labels { namespace: String, labels: BTreeMap<String, String> },
    /// A selector a `workloadSelector` cannot express (`matchExpressions`), with what it held.
    Unsupported { namespace: String, why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNode {
    pub mesh: String,
    pub name: String,
    pub origin: Origin,
    pub discovery: Option<Discovery>,
    pub listeners: Vec<NodeListener>,
    pub backends: Vec<Backend>,
    pub backend_defaults_tls: Option<ClientTls>,
    pub workload: Option<Workload>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayListener {
    pub port_mapping: PortMapping,
    /// `tls {mode, certificate}`: mode and the certificate.
    pub tls: Option<(String, Certificate)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualGateway {
    pub mesh: String,
    pub name: String,
    pub origin: Origin,
    pub listeners: Vec<GatewayListener>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// `prefix {defaultPrefix: DISABLED}` keeps the path; `value` replaces the matched prefix.
    pub prefix: Option<String>,
    pub default_prefix_disabled: bool,
    pub path: Option<String>,
    pub hostname_disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRoute {
    pub mesh: String,
    pub gateway: String,
    pub name: String,
    pub origin: Origin,
    pub priority: Option<u32>,
    pub protocol: Protocol,
    pub matcher: RouteMatch,
    pub target: String,
    pub target_port: Option<u32>,
    pub rewrite: Rewrite,
}

/// Everything loaded from the `--appmesh-file`s, each list sorted by (mesh, name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppMesh {
    pub virtual_services: Vec<VirtualService>,
    pub virtual_routers: Vec<VirtualRouter>,
    pub virtual_nodes: Vec<VirtualNode>,
    pub virtual_gateways: Vec<VirtualGateway>,
    pub gateway_routes: Vec<GatewayRoute>,
    /// Routes whose virtual router is not loaded: (router name, route).
    pub orphan_routes: Vec<(String, Route)>,
}

impl AppMesh {
    pub fn is_empty(&self) -> bool {
        self.virtual_services.is_empty()
            && self.virtual_routers.is_empty()
            && self.virtual_nodes.is_empty()
            && self.virtual_gateways.is_empty()
            && self.gateway_routes.is_empty()
            && self.orphan_routes.is_empty()
    }

    pub fn object_count(&self) -> usize {
        self.virtual_services.len()
            + self.virtual_routers.len()
            + self.virtual_nodes.len()
            + self.virtual_gateways.len()
            + self.gateway_routes.len()
            + self.orphan_routes.len()
    }

    pub fn sort(&mut self) {
        self.virtual_services.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        self.virtual_routers.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        self.virtual_nodes.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        self.virtual_gateways.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        self.gateway_routes.sort_by(|a, b| (&a.mesh, &a.gateway, &a.name).cmp(&(&b.mesh, &b.gateway, &b.name)));
        self.orphan_routes.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        for r in &mut self.virtual_routers {
            r.routes.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}
