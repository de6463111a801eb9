//! Virtual services with their routers, virtual gateways and gateway routes → Istio objects.
use serde_json::{json, Map, Value};

use super::istio::{Kind, Object, Outcome};
use super::model::*;
use super::translate::{dns_name, duration, Ctx};

/// App Mesh's per-request timeout when a route sets none (Istio has none).
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;

fn string_match(m: &StringMatch) -> Result<Value, String> {
    Ok(match m {
        StringMatch::Exact(s) => json!({"exact": s}),
        StringMatch::Prefix(s) => json!({"prefix": s}),
        StringMatch::Regex(s) => json!({"regex": s}),
        StringMatch::Suffix(s) => json!({"regex": format!(".*{}", regex_escape(s))}),
        StringMatch::Range { start, end } => {
            return Err(format!("header range match [{start}, {end}) has no Istio equivalent"))
        }
    })
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut o, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            o.push('\\');
        }
        o.push(c);
        o
    })
}

/// An Istio `HTTPMatchRequest`; Err when a condition cannot be expressed (the route is left out:
/// dropping the condition would match more requests).
fn http_match(m: &RouteMatch) -> Result<Value, String> {
    let mut v = Map::new();
    if let (Some(s), Some(meth)) = (&m.service_name, &m.method_name) {
        v.insert("uri".into(), json!({"exact": format!("/{s}/{meth}")}));
    } else if let Some(s) = &m.service_name {
        v.insert("uri".into(), json!({"prefix": format!("/{s}/")}));
    } else if let Some(p) = &m.path {
        v.insert("uri".into(), string_match(p)?);
    } else if let Some(p) = &m.prefix {
        v.insert("uri".into(), json!({"prefix": p}));
    }
    let (mut with, mut without) = (Map::new(), Map::new());
    for h in m.headers.iter().chain(&m.metadata) {
        let value = match &h.matcher {
            Some(sm) => string_match(sm)?,
            None => json!({"regex": ".*"}),
        };
        if h.invert { &mut without } else { &mut with }.insert(h.name.to_ascii_lowercase(), value);
    }
    if !with.is_empty() {
        v.insert("headers".into(), Value::Object(with));
    }
    if !without.is_empty() {
        v.insert("withoutHeaders".into(), Value::Object(without));
    }
    if let Some(x) = &m.method {
        v.insert("method".into(), json!({"exact": x}));
    }
    if let Some(x) = &m.scheme {
        v.insert("scheme".into(), json!({"exact": x}));
    }
    if !m.query.is_empty() {
        let q: Map<String, Value> = m
            .query
            .iter()
            .map(|(k, e)| (k.clone(), e.as_ref().map_or(json!({"regex": ".*"}), |e| json!({"exact": e}))))
            .collect();
        v.insert("queryParams".into(), Value::Object(q));
    }
    if let Some(p) = m.port {
        v.insert("port".into(), json!(p));
    }
    Ok(Value::Object(v))
}

fn retry_on(r: &RetryPolicy) -> String {
    let mut on: Vec<&str> = Vec::new();
    for e in &r.http_events {
        on.push(match e.as_str() {
            "server-error" => "5xx",
            "gateway-error" => "gateway-error",
            "client-error" => "retriable-4xx",
            "stream-error" => "refused-stream",
            other => other,
        });
    }
    for e in &r.tcp_events {
        on.push(if e == "connection-error" { "connect-failure" } else { e });
    }
    on.extend(r.grpc_events.iter().map(String::as_str));
    on.dedup();
    on.join(",")
}

/// The router's routes in App Mesh's order: priority (0 first, none last), then longer match first.
fn ordered(routes: &[Route]) -> Vec<&Route> {
    let mut v: Vec<&Route> = routes.iter().collect();
    v.sort_by(|a, b| {
        (a.priority.is_none(), a.priority, std::cmp::Reverse(a.matcher.length()), &a.name).cmp(&(
            b.priority.is_none(),
            b.priority,
            std::cmp::Reverse(b.matcher.length()),
            &b.name,
        ))
    });
    v
}

fn destination(cx: &Ctx, node: &str, port: Option<u32>) -> Result<Value, String> {
    match cx.nodes.get(node) {
        None => Err(format!("virtual node {node:?} is not defined")),
        Some(Err(e)) => Err(format!("virtual node {node}: {e}")),
        Some(Ok(d)) => {
            let mut v = json!({"host": d.host});
            if let Some(s) = &d.subset {
                v["subset"] = json!(s);
            }
            if let Some(p) = port.or(d.port) {
                v["port"] = json!({"number": p});
            }
            Ok(v)
        }
    }
}

/// One route's Istio `http` or `tcp` entry, or why it is left out.
fn route(cx: &mut Ctx, r: &Route, report_as: &str) -> Result<(bool, Value), String> {
    let mut dests = Vec::new();
    for t in &r.targets {
        match destination(cx, &t.virtual_node, t.port) {
            Ok(d) => dests.push((d, t.weight)),
            Err(e) if r.targets.len() > 1 => {
                cx.report.add("Route", report_as, Outcome::Approximated, Some(format!("target dropped: {e}")))
            }
            Err(e) => return Err(e),
        }
    }
    if dests.is_empty() {
        return Err("no weighted target left".into());
    }
    if dests.iter().all(|(_, w)| *w == 0) {
        return Err("every weighted target has weight 0: App Mesh sends it no traffic, Istio rejects the split".into());
    }
    let single = dests.len() == 1;
    let route: Vec<Value> = dests
        .into_iter()
        .filter(|(_, w)| !single || *w > 0)
        .map(|(d, w)| if single { json!({"destination": d}) } else { json!({"destination": d, "weight": w}) })
        .collect();
    if let Some(idle) = r.timeout.idle_ms {
        for d in &route {
            if let Some(h) = d["destination"]["host"].as_str() {
                cx.idle_timeout(h, idle);
            }
        }
        cx.report.add(
            "Route",
            report_as,
            Outcome::Approximated,
            Some("idle timeout → DestinationRule connectionPool idleTimeout (connection idle, not stream idle)".into()),
        );
    }
    if r.protocol == Protocol::Tcp {
        let mut v = json!({"route": route});
        if let Some(p) = r.matcher.port {
            v["match"] = json!([{"port": p}]);
        }
        return Ok((true, v));
    }
    let m = http_match(&r.matcher)?;
    let mut v = json!({"name": dns_name(&r.name, 63), "route": route});
    if m.as_object().is_some_and(|o| !o.is_empty()) {
        v["match"] = json!([m]);
    }
    let timeout = r.timeout.per_request_ms.unwrap_or_else(|| {
        cx.report.add(
            "Route",
            report_as,
            Outcome::Translated,
            Some("App Mesh's default 15s per-request timeout made explicit".into()),
        );
        DEFAULT_TIMEOUT_MS
    });
    v["timeout"] = json!(duration(timeout));
    v["retries"] = match &r.retry {
        Some(p) => {
            let mut x = json!({"attempts": p.max_retries, "retryOn": retry_on(p)});
            if let Some(t) = p.per_retry_timeout_ms {
                x["perTryTimeout"] = json!(duration(t));
            }
            x
        }
        None => {
            cx.report.add(
                "Route",
                report_as,
                Outcome::Translated,
                Some("App Mesh's default retry policy (2 retries, 503 retriable) made explicit".into()),
            );
            json!({"attempts": 2, "retryOn": "connect-failure,refused-stream,gateway-error,503"})
        }
    };
    Ok((false, v))
}

/// The `http`/`tcp` entries of a router (or a node provider), in App Mesh's order.
fn entries(cx: &mut Ctx, routes: &[Route], router: &str) -> (Vec<Value>, Vec<Value>) {
    let (mut http, mut tcp) = (Vec::new(), Vec::new());
    for r in ordered(routes) {
        let id = format!("{router}/{}", r.name);
        match route(cx, r, &id) {
            Ok((true, v)) => tcp.push(v),
            Ok((false, v)) => http.push(v),
            Err(e) => cx.report.add("Route", &id, Outcome::Dropped, Some(e)),
        }
        cx.report.add("Route", &id, Outcome::Translated, None);
    }
    (http, tcp)
}

pub fn virtual_service(cx: &mut Ctx, s: &VirtualService) -> Option<Object> {
    let (routes, source): (Vec<Route>, String) = match &s.provider {
        None => {
            cx.report.add("VirtualService", &s.name, Outcome::Dropped, Some("no provider".into()));
            return None;
        }
        Some(Provider::VirtualNode(n)) => {
            let r = Route {
                name: "default".into(),
                origin: s.origin.clone(),
                priority: None,
                protocol: Protocol::Http,
                matcher: RouteMatch::default(),
                targets: vec![WeightedTarget { virtual_node: n.clone(), weight: 100, port: None }],
                retry: None,
                timeout: Timeouts::default(),
            };
            (vec![r], format!("VirtualService {}, VirtualNode {n}", s.name))
        }
        Some(Provider::VirtualRouter(r)) => match cx.mesh.virtual_routers.iter().find(|x| &x.name == r) {
            None => {
                cx.report.add(
                    "VirtualService",
                    &s.name,
                    Outcome::Dropped,
                    Some(format!("virtual router {r:?} is not defined")),
                );
                return None;
            }
            Some(router) => {
                cx.report.add("VirtualRouter", r, Outcome::Translated, None);
                let mut routes = router.routes.clone();
                if router.listeners.iter().all(|l| l.protocol == Protocol::Tcp) && !router.listeners.is_empty() {
                    routes.iter_mut().for_each(|r| r.protocol = Protocol::Tcp);
                }
                (routes, format!("VirtualService {}, VirtualRouter {r}", s.name))
            }
        },
    };
    let router = match &s.provider {
        Some(Provider::VirtualRouter(r)) => r.clone(),
        _ => s.name.clone(),
    };
    let (http, tcp) = entries(cx, &routes, &router);
    if http.is_empty() && tcp.is_empty() {
        cx.report.add("VirtualService", &s.name, Outcome::Dropped, Some("no route could be translated".into()));
        return None;
    }
    let mut spec = json!({"hosts": [s.name.to_ascii_lowercase()]});
    if !http.is_empty() {
        spec["http"] = Value::Array(http);
    }
    if !tcp.is_empty() {
        spec["tcp"] = Value::Array(tcp);
    }
    cx.report.add(
        "VirtualService",
        &s.name,
        Outcome::Translated,
        Some(format!("host {} must exist as a Kubernetes Service or a ServiceEntry for Istio to route it", s.name)),
    );
    Some(cx.object(Kind::VirtualService, format!("appmesh-{}", dns_name(&s.name, 200)), source, spec))
}

pub fn gateway(cx: &mut Ctx, g: &VirtualGateway) -> Option<Object> {
    let mut servers = Vec::new();
    for l in &g.listeners {
        let p = l.port_mapping;
        let mut s = json!({"port": {"number": p.port, "name": format!("{}-{}", p.protocol.istio().to_ascii_lowercase(), p.port), "protocol": p.protocol.istio()}, "hosts": ["*"]});
        match &l.tls {
            Some((_, Certificate::File { chain, key })) => {
                s["tls"] = json!({"mode": "SIMPLE", "serverCertificate": chain, "privateKey": key});
                s["port"]["protocol"] = json!("HTTPS");
            }
            Some((_, Certificate::Sds { secret })) => {
                s["tls"] = json!({"mode": "SIMPLE", "credentialName": secret});
                s["port"]["protocol"] = json!("HTTPS");
            }
            Some((_, Certificate::Acm { .. })) => {
                cx.report.add(
                    "VirtualGateway",
                    &g.name,
                    Outcome::Dropped,
                    Some(format!("listener {}: ACM certificates have no in-cluster equivalent", p.port)),
                );
                continue;
            }
            None => {}
        }
        servers.push(s);
    }
    if servers.is_empty() {
        cx.report.add("VirtualGateway", &g.name, Outcome::Dropped, Some("no listener could be translated".into()));
        return None;
    }
    cx.report.add(
        "VirtualGateway",
        &g.name,
        Outcome::Approximated,
        Some(
            "selector istio=ingressgateway: point it at the gateway deployment that replaces the App Mesh Envoy".into(),
        ),
    );
    let spec = json!({"selector": {"istio": "ingressgateway"}, "servers": servers});
    Some(cx.object(
        Kind::Gateway,
        format!("appmesh-{}", dns_name(&g.name, 200)),
        format!("VirtualGateway {}", g.name),
        spec,
    ))
}

/// A gateway route: the gateway's match, then the target virtual service's router applied after it
/// (App Mesh chains them; an Istio gateway VirtualService does not re-apply the mesh one).
pub fn gateway_route(cx: &mut Ctx, g: &GatewayRoute) -> Option<Object> {
    let id = format!("{}/{}", g.gateway, g.name);
    let drop = |cx: &mut Ctx, why: String| {
        cx.report.add("GatewayRoute", &id, Outcome::Dropped, Some(why));
        None
    };
    if !cx.mesh.virtual_gateways.iter().any(|x| x.name == g.gateway) {
        return drop(cx, format!("virtual gateway {:?} is not defined", g.gateway));
    }
    if !cx.gateways.contains(&g.gateway) {
        return drop(cx, format!("virtual gateway {:?} was not translated (see its entry)", g.gateway));
    }
    let Some(vs) = cx.mesh.virtual_services.iter().find(|s| s.name == g.target).cloned() else {
        return drop(cx, format!("target virtual service {:?} is not defined", g.target));
    };
    let gm = match http_match(&g.matcher) {
        Ok(m) => m,
        Err(e) => return drop(cx, e),
    };
    let Some(inner) = virtual_service(cx, &vs) else {
        return drop(cx, format!("target virtual service {} was not translated", vs.name));
    };
    let mut http = Vec::new();
    for mut h in inner.spec["http"].as_array().cloned().unwrap_or_default() {
        // The gateway's match, with the router route's headers; the router's own path match
        // applied after a rewrite cannot be combined.
        let mut m = gm.clone();
        if let Some(rm) = h.get("match").and_then(|x| x[0].as_object()).cloned() {
            for (k, v) in rm {
                if k == "uri" {
                    if v != json!({"prefix": "/"}) {
                        cx.report.add(
                            "GatewayRoute",
                            &id,
                            Outcome::Approximated,
                            Some(format!("router path match {v} not combined with the gateway route's path")),
                        );
                    }
                } else {
                    m[k] = v;
                }
            }
        }
        h["match"] = json!([m]);
        let mut rewrite = Map::new();
        if let Some(p) = &g.rewrite.prefix {
            rewrite.insert("uri".into(), json!(p));
        } else if let Some(p) = &g.rewrite.path {
            rewrite.insert("uri".into(), json!(p));
        }
        if !g.rewrite.hostname_disabled {
            rewrite.insert("authority".into(), json!(vs.name));
        }
        h["rewrite"] = Value::Object(rewrite);
        http.push(h);
    }
    let hosts = match &g.matcher.hostname {
        Some(StringMatch::Exact(h)) => json!([h]),
        Some(StringMatch::Suffix(s)) => {
            json!([format!("*{}", if s.starts_with('.') { s.clone() } else { format!(".{s}") })])
        }
        _ => json!(["*"]),
    };
    let gw = format!("{}/appmesh-{}", cx.namespace, dns_name(&g.gateway, 200));
    let spec = json!({"hosts": hosts, "gateways": [gw], "http": http});
    cx.report.add(
        "GatewayRoute",
        &id,
        Outcome::Translated,
        Some(format!("the routes of {} are repeated after the gateway match, as App Mesh chained them", vs.name)),
    );
    Some(cx.object(
        Kind::VirtualService,
        format!("appmesh-{}-{}", dns_name(&g.gateway, 100), dns_name(&g.name, 100)),
        format!("GatewayRoute {id}, VirtualService {}", vs.name),
        spec,
    ))
}
