//! An in-process implementation of the Cloud Map API (awsJson1.1 over HTTP, `X-Amz-Target:
//! Route53AutoNaming_v20170314.<Op>`) for the operations the poller calls, backed by the synthetic
//! registry, which the benchmark mutates. `serve --cloudmap --aws-endpoint-url` points at it, so the
//! real poller and the AWS SDK build every snapshot. It answers in microseconds: what it measures
//! is the server, not Cloud Map's latency.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudmap_mcp::model::{self, HealthStatus, NamespaceType};
use serde_json::{json, Value};

use super::{synthetic_model, Size};

const PAGE: usize = 100;

struct Ns {
    id: String,
    name: String,
    arn: String,
    kind: NamespaceType,
    services: Vec<usize>,
}

struct Svc {
    id: String,
    name: String,
    arn: String,
    ns: usize,
    create: i64,
    instances: Vec<model::Instance>,
    revision: i64,
}

#[derive(Default)]
struct Data {
    namespaces: Vec<Ns>,
    services: Vec<Svc>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<(String, String), usize>,
    calls: BTreeMap<String, u64>,
}

/// The running API. Stops when dropped.
pub struct CloudMapApi {
    data: Arc<Mutex<Data>>,
    pub addr: SocketAddr,
    services: usize,
    endpoints: usize,
    current: HashMap<usize, String>,
    task: tokio::task::JoinHandle<()>,
}

impl CloudMapApi {
    /// Serves the synthetic registry of `size` on a loopback port (on the current runtime).
    pub async fn start(size: Size) -> CloudMapApi {
        let snap = synthetic_model(size);
        let mut d = Data::default();
        for ns in &snap.namespaces {
            let n = d.namespaces.len();
            let id = ns.id.clone().unwrap();
            let mut ids = Vec::new();
            for s in &ns.services {
                let i = d.services.len();
                let sid = s.id.clone().unwrap();
                d.by_id.insert(sid.clone(), i);
                d.by_name.insert((ns.http_name.clone(), s.name.clone()), i);
                d.services.push(Svc {
                    arn: s.arn.clone().unwrap(),
                    id: sid,
                    name: s.name.clone(),
                    ns: n,
                    create: s.create_date.map_or(0, |t| t.seconds),
                    instances: s.instances.to_vec(),
                    revision: 1,
                });
                ids.push(i);
            }
            d.namespaces.push(Ns {
                arn: ns.arn.clone().unwrap(),
                id,
                name: ns.http_name.clone(),
                kind: ns.kind,
                services: ids,
            });
        }
        let data = Arc::new(Mutex::new(d));
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(data.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CloudMapApi {
            data,
            addr,
            services: size.services,
            endpoints: size.endpoints,
            current: HashMap::new(),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Moves the first endpoint of service `index` to `ip` (its revision moves, as in Cloud Map).
    pub fn set_ip(&mut self, index: usize, ip: &str) {
        let mut d = self.data.lock().unwrap();
        let s = &mut d.services[index];
        s.instances[0]
            .attributes
            .insert("AWS_INSTANCE_IPV4".into(), ip.to_string());
        s.revision += 1;
        self.current.insert(index, ip.to_string());
    }

    pub fn services(&self) -> usize {
        self.services
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Calls answered so far, by operation.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.data.lock().unwrap().calls.clone()
    }
}

impl Drop for CloudMapApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"__type": kind, "Message": message}).to_string();
    (
        status,
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-errortype", kind),
        ],
        body,
    )
        .into_response()
}

fn kind_str(k: NamespaceType) -> &'static str {
    match k {
        NamespaceType::Http => "HTTP",
        NamespaceType::DnsPrivate => "DNS_PRIVATE",
        NamespaceType::DnsPublic => "DNS_PUBLIC",
    }
}

fn page_of(req: &Value, total: usize) -> (usize, usize, Option<String>) {
    let start = req["NextToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0usize)
        .min(total);
    let max = req["MaxResults"]
        .as_u64()
        .map_or(PAGE, |m| m as usize)
        .clamp(1, PAGE);
    let end = (start + max).min(total);
    (start, end, (end < total).then(|| end.to_string()))
}

async fn handle(State(data): State<Arc<Mutex<Data>>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(op) = target.strip_prefix("Route53AutoNaming_v20170314.") else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "no X-Amz-Target",
        );
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut d = data.lock().unwrap();
    *d.calls.entry(op.to_string()).or_default() += 1;
    let out = match op {
        "ListNamespaces" => {
            let (a, b, next) = page_of(&req, d.namespaces.len());
            let list: Vec<Value> = d.namespaces[a..b]
                .iter()
                .map(|n| {
                    json!({"Id": n.id, "Arn": n.arn, "Name": n.name, "Type": kind_str(n.kind),
                           "Properties": {"HttpProperties": {"HttpName": n.name}}, "CreateDate": 1.6e9})
                })
                .collect();
            json!({"Namespaces": list, "NextToken": next})
        }
        "ListServices" => {
            let ns_id = req["Filters"][0]["Values"][0].as_str().unwrap_or("");
            let Some(ns) = d.namespaces.iter().find(|n| n.id == ns_id) else {
                return json_ok(json!({"Services": []}));
            };
            let (a, b, next) = page_of(&req, ns.services.len());
            let list: Vec<Value> = ns.services[a..b]
                .iter()
                .map(|i| {
                    let s = &d.services[*i];
                    json!({"Id": s.id, "Arn": s.arn, "Name": s.name, "Type": "HTTP",
                           "InstanceCount": s.instances.len(), "CreateDate": s.create})
                })
                .collect();
            json!({"Services": list, "NextToken": next})
        }
        "GetService" => {
            let Some(s) = req["Id"]
                .as_str()
                .and_then(|id| d.by_id.get(id))
                .map(|i| &d.services[*i])
            else {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "ServiceNotFound",
                    "no such service",
                );
            };
            json!({"Service": {"Id": s.id, "Arn": s.arn, "Name": s.name, "NamespaceId": d.namespaces[s.ns].id,
                               "Type": "HTTP", "InstanceCount": s.instances.len(), "CreateDate": s.create}})
        }
        "GetServiceAttributes" => {
            let arn = req["ServiceArn"]
                .as_str()
                .or(req["ServiceId"].as_str())
                .unwrap_or("");
            json!({"ServiceAttributes": {"ServiceArn": arn, "Attributes": {}}})
        }
        "DiscoverInstances" | "DiscoverInstancesRevision" => {
            let key = (
                req["NamespaceName"].as_str().unwrap_or("").to_string(),
                req["ServiceName"].as_str().unwrap_or("").to_string(),
            );
            let Some(s) = d.by_name.get(&key).map(|i| &d.services[*i]) else {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "ServiceNotFound",
                    "no such service",
                );
            };
            if op == "DiscoverInstancesRevision" {
                json!({"InstancesRevision": s.revision})
            } else {
                let ns = &d.namespaces[s.ns].name;
                let list: Vec<Value> = s
                    .instances
                    .iter()
                    .map(|i| {
                        let health = match i.health {
                            HealthStatus::Unhealthy => "UNHEALTHY",
                            HealthStatus::Unknown => "UNKNOWN",
                            _ => "HEALTHY",
                        };
                        json!({"InstanceId": i.id, "NamespaceName": ns, "ServiceName": s.name,
                               "HealthStatus": health, "Attributes": i.attributes})
                    })
                    .collect();
                json!({"Instances": list, "InstancesRevision": s.revision})
            }
        }
        other => return aws_error(StatusCode::BAD_REQUEST, "UnknownOperationException", other),
    };
    json_ok(out)
}

fn json_ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        v.to_string(),
    )
        .into_response()
}
