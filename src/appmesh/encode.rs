//! The translated Istio objects as MCP resources: `Any{istio.mcp.v1alpha1.Resource{metadata,
//! body: Any{istio.networking.v1alpha3.<Kind>}}}`, framed like the cache's ServiceEntries.
use bytes::Bytes;
use prost::Message;
use serde_json::Value;

use super::istio::{Kind, Object};
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::MCP_RESOURCE_TYPE_URL;

/// The type URLs istiod asks for, per kind (v1 for current istiod, v1alpha3 for older ones).
pub const TYPE_URLS: [(Kind, &str); 8] = [
    (Kind::VirtualService, "networking.istio.io/v1/VirtualService"),
    (Kind::VirtualService, "networking.istio.io/v1alpha3/VirtualService"),
    (Kind::DestinationRule, "networking.istio.io/v1/DestinationRule"),
    (Kind::DestinationRule, "networking.istio.io/v1alpha3/DestinationRule"),
    (Kind::Gateway, "networking.istio.io/v1/Gateway"),
    (Kind::Gateway, "networking.istio.io/v1alpha3/Gateway"),
    (Kind::Sidecar, "networking.istio.io/v1/Sidecar"),
    (Kind::Sidecar, "networking.istio.io/v1alpha3/Sidecar"),
];

/// The kind a type URL asks for, if it is one of these.
pub fn kind_of(type_url: &str) -> Option<Kind> {
    TYPE_URLS.iter().find(|(_, u)| *u == type_url).map(|(k, _)| *k)
}

pub fn body_type_url(kind: Kind) -> &'static str {
    match kind {
        Kind::VirtualService => "type.googleapis.com/istio.networking.v1alpha3.VirtualService",
        Kind::DestinationRule => "type.googleapis.com/istio.networking.v1alpha3.DestinationRule",
        Kind::Gateway => "type.googleapis.com/istio.networking.v1alpha3.Gateway",
        Kind::Sidecar => "type.googleapis.com/istio.networking.v1alpha3.Sidecar",
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default()
}

fn n(v: &Value) -> u32 {
    v.as_u64().unwrap_or(0) as u32
}

fn each<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    v.as_array().map(|a| a.iter().map(f).collect()).unwrap_or_default()
}

/// `15s`, `250ms` as the translation writes them.
fn duration(v: &Value) -> Option<prost_types::Duration> {
    let t = v.as_str()?;
    let ms: i64 = match t.strip_suffix("ms") {
        Some(ms) => ms.parse().ok()?,
        None => t.strip_suffix('s')?.parse::<i64>().ok()? * 1000,
    };
    Some(prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

fn string_match(v: &Value) -> Option<net::StringMatch> {
    use net::string_match::MatchType;
    let m = v.as_object()?;
    let t = if let Some(x) = m.get("exact") {
        MatchType::Exact(s(x))
    } else if let Some(x) = m.get("prefix") {
        MatchType::Prefix(s(x))
    } else {
        MatchType::Regex(s(m.get("regex")?))
    };
    Some(net::StringMatch { match_type: Some(t) })
}

fn match_map(v: &Value) -> std::collections::BTreeMap<String, net::StringMatch> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), string_match(v)?))).collect())
        .unwrap_or_default()
}

fn destination(v: &Value) -> Option<net::Destination> {
    v.as_object()?;
    Some(net::Destination {
        host: s(&v["host"]),
        subset: s(&v["subset"]),
        port: v["port"].as_object().map(|_| net::PortSelector { number: n(&v["port"]["number"]) }),
    })
}

fn virtual_service(v: &Value) -> net::VirtualService {
    net::VirtualService {
        hosts: strs(&v["hosts"]),
        gateways: strs(&v["gateways"]),
        http: each(&v["http"], |h| net::HttpRoute {
            name: s(&h["name"]),
            r#match: each(&h["match"], |m| net::HttpMatchRequest {
                uri: string_match(&m["uri"]),
                scheme: string_match(&m["scheme"]),
                method: string_match(&m["method"]),
                headers: match_map(&m["headers"]),
                without_headers: match_map(&m["withoutHeaders"]),
                query_params: match_map(&m["queryParams"]),
                port: n(&m["port"]),
                name: String::new(),
            }),
            route: each(&h["route"], |r| net::HttpRouteDestination {
                destination: destination(&r["destination"]),
                weight: n(&r["weight"]) as i32,
            }),
            rewrite: h["rewrite"]
                .as_object()
                .map(|_| net::HttpRewrite { uri: s(&h["rewrite"]["uri"]), authority: s(&h["rewrite"]["authority"]) }),
            timeout: duration(&h["timeout"]),
            retries: h["retries"].as_object().map(|_| net::HttpRetry {
                attempts: n(&h["retries"]["attempts"]) as i32,
                per_try_timeout: duration(&h["retries"]["perTryTimeout"]),
                retry_on: s(&h["retries"]["retryOn"]),
            }),
        }),
        tcp: each(&v["tcp"], |t| net::TcpRoute {
            r#match: each(&t["match"], |m| net::L4MatchAttributes { port: n(&m["port"]) }),
            route: each(&t["route"], |r| net::RouteDestination {
                destination: destination(&r["destination"]),
                weight: n(&r["weight"]) as i32,
            }),
        }),
        export_to: Vec::new(),
    }
}

fn client_tls(v: &Value) -> Option<net::ClientTlsSettings> {
    v.as_object()?;
    let mode =
        net::client_tls_settings::TlSmode::from_str_name(v["mode"].as_str().unwrap_or("DISABLE")).unwrap_or_default();
    Some(net::ClientTlsSettings {
        mode: mode as i32,
        client_certificate: s(&v["clientCertificate"]),
        private_key: s(&v["privateKey"]),
        ca_certificates: s(&v["caCertificates"]),
        subject_alt_names: strs(&v["subjectAltNames"]),
        credential_name: s(&v["credentialName"]),
    })
}

fn traffic_policy(v: &Value) -> Option<net::TrafficPolicy> {
    use net::connection_pool_settings::{HttpSettings, TcpSettings};
    v.as_object()?;
    let od = &v["outlierDetection"];
    let cp = &v["connectionPool"];
    Some(net::TrafficPolicy {
        connection_pool: cp.as_object().map(|_| net::ConnectionPoolSettings {
            tcp: cp["tcp"].as_object().map(|_| TcpSettings { idle_timeout: duration(&cp["tcp"]["idleTimeout"]) }),
            http: cp["http"].as_object().map(|_| HttpSettings { idle_timeout: duration(&cp["http"]["idleTimeout"]) }),
        }),
        outlier_detection: od.as_object().map(|_| net::OutlierDetection {
            consecutive_5xx_errors: od["consecutive5xxErrors"].as_u64().map(|x| x as u32),
            interval: duration(&od["interval"]),
            base_ejection_time: duration(&od["baseEjectionTime"]),
            max_ejection_percent: n(&od["maxEjectionPercent"]) as i32,
        }),
        tls: client_tls(&v["tls"]),
        port_level_settings: each(&v["portLevelSettings"], |p| net::traffic_policy::PortTrafficPolicy {
            port: Some(net::PortSelector { number: n(&p["port"]["number"]) }),
            connection_pool: None,
            outlier_detection: None,
            tls: client_tls(&p["tls"]),
        }),
    })
}

fn labels(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect()).unwrap_or_default()
}

fn destination_rule(v: &Value) -> net::DestinationRule {
    net::DestinationRule {
        host: s(&v["host"]),
        traffic_policy: traffic_policy(&v["trafficPolicy"]),
        subsets: each(&v["subsets"], |x| net::Subset {
            name: s(&x["name"]),
            labels: labels(&x["labels"]),
            traffic_policy: traffic_policy(&x["trafficPolicy"]),
        }),
        export_to: Vec::new(),
    }
}

fn gateway(v: &Value) -> net::Gateway {
    net::Gateway {
        selector: labels(&v["selector"]),
        servers: each(&v["servers"], |x| net::Server {
            port: Some(net::Port {
                number: n(&x["port"]["number"]),
                protocol: s(&x["port"]["protocol"]),
                name: s(&x["port"]["name"]),
            }),
            hosts: strs(&x["hosts"]),
            tls: x["tls"].as_object().map(|_| net::ServerTlsSettings {
                mode: net::server_tls_settings::TlSmode::from_str_name(x["tls"]["mode"].as_str().unwrap_or("SIMPLE"))
                    .unwrap_or_default() as i32,
                server_certificate: s(&x["tls"]["serverCertificate"]),
                private_key: s(&x["tls"]["privateKey"]),
                credential_name: s(&x["tls"]["credentialName"]),
            }),
        }),
    }
}

fn sidecar(v: &Value) -> net::Sidecar {
    net::Sidecar {
        workload_selector: v["workloadSelector"].as_object().map(|_| net::WorkloadSelector {
            labels: labels(&v["workloadSelector"]["labels"]),
        }),
        egress: each(&v["egress"], |e| net::IstioEgressListener { hosts: strs(&e["hosts"]) }),
    }
}

/// The protobuf body of an object.
pub fn body(o: &Object) -> Vec<u8> {
    match o.kind {
        Kind::VirtualService => virtual_service(&o.spec).encode_to_vec(),
        Kind::DestinationRule => destination_rule(&o.spec).encode_to_vec(),
        Kind::Gateway => gateway(&o.spec).encode_to_vec(),
        Kind::Sidecar => sidecar(&o.spec).encode_to_vec(),
    }
}

/// One object as an MCP resource, framed as a `DiscoveryResponse.resources` entry, with its
/// content version.
pub fn encode(o: &Object) -> (Bytes, String) {
    let body = body(o);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&body);
    for (k, v) in &o.annotations {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    let version = format!("{:016x}", h.digest());
    let resource = mcp::Resource {
        metadata: Some(mcp::Metadata {
            name: o.resource_name(),
            create_time: None,
            version: version.clone(),
            labels: std::collections::BTreeMap::from([(
                crate::translate::MANAGED_BY_LABEL.0.into(),
                crate::translate::MANAGED_BY_LABEL.1.into(),
            )]),
            annotations: o.annotations.clone(),
        }),
        body: Some(prost_types::Any { type_url: body_type_url(o.kind).into(), value: body }),
    };
    let any = prost_types::Any { type_url: MCP_RESOURCE_TYPE_URL.into(), value: resource.encode_to_vec() };
    (crate::proto::frame_resource(&any), version)
}
