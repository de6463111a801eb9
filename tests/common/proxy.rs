//! A fault-injecting HTTP proxy in front of moto. It records every Cloud Map call (operation,
//! body, time) and lets a test hook answer instead of moto (throttling, errors), serve a list in
//! several pages (moto ignores MaxResults/NextToken), or send extra calls upstream first.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::time::Instant;

use super::http1;

#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    /// Operation name, e.g. `DiscoverInstances`.
    pub op: String,
    pub body: Value,
}

pub enum Action {
    Forward,
    /// Answer this instead of moto.
    Reply {
        status: u16,
        body: Value,
    },
    /// Forward, then serve the list under `field` in pages of `page_size`, with an empty page
    /// (NextToken set) between two pages.
    Paginate {
        field: &'static str,
        page_size: usize,
    },
    /// Send these calls (operation, body) to moto first, then forward.
    Before(Vec<(String, Value)>),
}

pub type Hook = Arc<dyn Fn(&Call) -> Action + Send + Sync>;

pub fn forward_all() -> Hook {
    Arc::new(|_| Action::Forward)
}

/// A throttling answer as Cloud Map sends it (`ThrottlingException` or `RequestLimitExceeded`).
pub fn throttle(code: &str) -> Action {
    Action::Reply { status: 400, body: serde_json::json!({"__type": code, "message": "Rate exceeded"}) }
}

#[derive(Clone)]
struct Inner {
    upstream: SocketAddr,
    hook: Arc<Mutex<Hook>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    inner: Inner,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, hook: Hook) -> Proxy {
        let inner = Inner { upstream, hook: Arc::new(Mutex::new(hook)), calls: Arc::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { addr, inner, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_hook(&self, hook: Hook) {
        *self.inner.hook.lock().unwrap() = hook;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }

    pub fn count(&self, op: &str) -> usize {
        self.inner.calls.lock().unwrap().iter().filter(|c| c.op == op).count()
    }

    pub fn clear(&self) {
        self.inner.calls.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/x-amz-json-1.1"));
    r
}

async fn forward(
    inner: &Inner,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<http1::Response, Response> {
    http1::request(inner.upstream, "POST", path, headers, body)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("proxy: upstream unreachable: {e}")).into_response())
}

async fn handle(State(inner): State<Inner>, req: Request) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let target = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let call = Call {
        at: Instant::now(),
        op: target.rsplit('.').next().unwrap_or_default().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    inner.calls.lock().unwrap().push(call.clone());
    let hook = inner.hook.lock().unwrap().clone();
    let action = hook(&call);
    let upstream = match action {
        Action::Reply { status, body } => return json_response(status, &body),
        Action::Forward => forward(&inner, &path, &headers, &body).await,
        Action::Before(calls) => {
            for (op, b) in calls {
                let mut h = headers.clone();
                for (k, v) in h.iter_mut() {
                    if k.eq_ignore_ascii_case("x-amz-target") {
                        *v = format!("{}.{op}", target.rsplit_once('.').map(|(p, _)| p).unwrap_or_default());
                    }
                }
                if let Err(r) = forward(&inner, &path, &h, b.to_string().as_bytes()).await {
                    return r;
                }
            }
            forward(&inner, &path, &headers, &body).await
        }
        Action::Paginate { field, page_size } => {
            let mut full_req = call.body.clone();
            let page: usize = full_req
                .get("NextToken")
                .and_then(|t| t.as_str())
                .and_then(|t| t.strip_prefix("pg-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if let Some(o) = full_req.as_object_mut() {
                o.remove("NextToken");
                o.remove("MaxResults");
            }
            let r = match forward(&inner, &path, &headers, full_req.to_string().as_bytes()).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            if r.status != 200 {
                return json_response(r.status, &serde_json::from_slice(&r.body).unwrap_or(Value::Null));
            }
            let mut v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let items = v.get(field).and_then(|i| i.as_array()).cloned().unwrap_or_default();
            let content_pages = items.len().div_ceil(page_size).max(1);
            let (slice, has_next) = if page % 2 == 1 {
                (Vec::new(), true)
            } else {
                let n = page / 2;
                let end = ((n + 1) * page_size).min(items.len());
                (items.get(n * page_size..end).map(|s| s.to_vec()).unwrap_or_default(), n + 1 < content_pages)
            };
            if let Some(o) = v.as_object_mut() {
                o.insert(field.to_string(), Value::Array(slice));
                if has_next {
                    o.insert("NextToken".into(), Value::String(format!("pg-{}", page + 1)));
                } else {
                    o.remove("NextToken");
                }
            }
            return json_response(200, &v);
        }
    };
    match upstream {
        Err(r) => r,
        Ok(r) => {
            let mut resp = (StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY), r.body).into_response();
            for (k, v) in r.headers {
                let lk = k.to_ascii_lowercase();
                if matches!(lk.as_str(), "content-length" | "transfer-encoding" | "connection" | "keep-alive") {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(lk), HeaderValue::try_from(v)) {
                    resp.headers_mut().append(n, v);
                }
            }
            resp
        }
    }
}
