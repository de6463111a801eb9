//! The App Mesh `spec` of each kind, read the same way in all four forms (field spelling and the
//! CRs' `*Ref` references are the form's business, see [`Obj`] and [`reference`]).
use std::collections::BTreeMap;

use super::model::*;
use super::node::Node;
use super::reader::{Dialect, LoadError, Obj};

type R<T> = Result<T, LoadError>;

/// A reference to another object: the API's `<kind>Name` field, or in a CR its `<kind>Ref {name,
/// namespace}` (kept as `k8s:<Kind>:<namespace>/<name>` until the loader maps it to the App Mesh
/// name) or `<kind>ARN`.
pub fn reference(o: &mut Obj, api: &str, kind: &str) -> R<Option<String>> {
    if o.cx.dialect == Dialect::K8s {
        let field = api.trim_end_matches("Name");
        if let Some(mut r) = o.obj(&format!("{field}Ref"))? {
            let name = r.req_str("name")?;
            let ns = r.str("namespace")?.unwrap_or_else(|| o.cx.k8s_namespace.clone());
            r.finish()?;
            return Ok(Some(format!("k8s:{kind}:{ns}/{name}")));
        }
        if let Some(arn) = o.str(&format!("{field}ARN"))? {
            return Ok(Some(arn.rsplit('/').next().unwrap_or(&arn).to_string()));
        }
        return Ok(None);
    }
    o.str(api)
}

fn port_mapping(o: &mut Obj) -> R<PortMapping> {
    let mut p = o.obj("portMapping")?.ok_or_else(|| o.cx.err(o.pos(), "listener without a portMapping"))?;
    let port = p.u32("port")?.ok_or_else(|| p.cx.err(p.pos(), "portMapping without a port"))?;
    let proto = p.req_str("protocol")?;
    let protocol = Protocol::parse(&proto).ok_or_else(|| p.cx.err(p.pos(), format!("unknown protocol {proto:?}")))?;
    p.finish()?;
    Ok(PortMapping { port, protocol })
}

fn string_match(o: &mut Obj, range_ok: bool) -> R<Option<StringMatch>> {
    let m = if let Some(s) = o.str("exact")? {
        Some(StringMatch::Exact(s))
    } else if let Some(s) = o.str("prefix")? {
        Some(StringMatch::Prefix(s))
    } else if let Some(s) = o.str("suffix")? {
        Some(StringMatch::Suffix(s))
    } else {
        o.str("regex")?.map(StringMatch::Regex)
    };
    if range_ok && m.is_none() {
        if let Some(mut r) = o.obj("range")? {
            let start = r.num("start")?.unwrap_or(0) as i64;
            let end = r.num("end")?.unwrap_or(0) as i64;
            r.finish()?;
            return Ok(Some(StringMatch::Range { start, end }));
        }
    }
    Ok(m)
}

fn header_matches(o: &mut Obj, api: &str) -> R<Vec<HeaderMatch>> {
    let mut out = Vec::new();
    for n in o.list(api)? {
        let mut h = Obj::new(o.cx, n, api)?;
        let name = h.req_str("name")?;
        let invert = h.bool("invert")?.unwrap_or(false);
        let matcher = match h.obj("match")? {
            Some(mut m) => {
                let v = string_match(&mut m, true)?;
                m.finish()?;
                v
            }
            None => None,
        };
        h.finish()?;
        out.push(HeaderMatch { name, invert, matcher });
    }
    Ok(out)
}

fn route_match(o: &mut Obj, gateway: bool) -> R<RouteMatch> {
    let mut m = RouteMatch { prefix: o.str("prefix")?, ..Default::default() };
    if let Some(mut p) = o.obj("path")? {
        m.path = string_match(&mut p, false)?;
        p.finish()?;
    }
    m.headers = header_matches(o, "headers")?;
    m.metadata = header_matches(o, "metadata")?;
    m.method = o.str("method")?;
    m.scheme = o.str("scheme")?;
    m.port = o.u32("port")?;
    m.service_name = o.str("serviceName")?;
    m.method_name = o.str("methodName")?;
    for n in o.list("queryParameters")? {
        let mut q = Obj::new(o.cx, n, "queryParameters")?;
        let name = q.req_str("name")?;
        let exact = match q.obj("match")? {
            Some(mut qm) => {
                let v = qm.str("exact")?;
                qm.finish()?;
                v
            }
            None => None,
        };
        q.finish()?;
        m.query.push((name, exact));
    }
    if gateway {
        if let Some(mut h) = o.obj("hostname")? {
            m.hostname = string_match(&mut h, false)?;
            h.finish()?;
        }
    }
    Ok(m)
}

fn timeouts(o: &mut Obj) -> R<Timeouts> {
    let Some(mut t) = o.obj("timeout")? else { return Ok(Timeouts::default()) };
    let v = Timeouts { per_request_ms: t.duration("perRequest")?, idle_ms: t.duration("idle")? };
    t.finish()?;
    Ok(v)
}

fn retry(o: &mut Obj) -> R<Option<RetryPolicy>> {
    let Some(mut r) = o.obj("retryPolicy")? else { return Ok(None) };
    let v = RetryPolicy {
        http_events: r.strs("httpRetryEvents")?,
        tcp_events: r.strs("tcpRetryEvents")?,
        grpc_events: r.strs("grpcRetryEvents")?,
        max_retries: r.u32("maxRetries")?.unwrap_or(0),
        per_retry_timeout_ms: r.duration("perRetryTimeout")?,
    };
    r.finish()?;
    Ok(Some(v))
}

const ROUTE_KINDS: [(&str, Protocol); 4] = [
    ("httpRoute", Protocol::Http),
    ("http2Route", Protocol::Http2),
    ("grpcRoute", Protocol::Grpc),
    ("tcpRoute", Protocol::Tcp),
];

/// A route spec (`priority` and one of `httpRoute`/`http2Route`/`grpcRoute`/`tcpRoute`).
pub fn route(spec: &mut Obj, name: String, origin: Origin) -> R<Route> {
    let priority = spec.u32("priority")?;
    let mut found = None;
    for (api, protocol) in ROUTE_KINDS {
        if let Some(r) = spec.obj(api)? {
            if found.is_some() {
                return Err(spec
                    .cx
                    .err(r.pos(), "a route holds exactly one of httpRoute, http2Route, grpcRoute, tcpRoute"));
            }
            found = Some((r, protocol));
        }
    }
    let Some((mut r, protocol)) = found else {
        return Err(spec
            .cx
            .err(spec.pos(), format!("route {name:?} has no httpRoute, http2Route, grpcRoute or tcpRoute")));
    };
    let matcher = match r.obj("match")? {
        Some(mut m) => {
            let v = route_match(&mut m, false)?;
            m.finish()?;
            v
        }
        None => RouteMatch::default(),
    };
    let mut action = r.obj("action")?.ok_or_else(|| r.cx.err(r.pos(), format!("route {name:?} has no action")))?;
    let mut targets = Vec::new();
    for n in action.list("weightedTargets")? {
        let mut t = Obj::new(action.cx, n, "weightedTargets")?;
        let virtual_node = reference(&mut t, "virtualNode", "VirtualNode")?
            .ok_or_else(|| t.cx.err(t.pos(), "weighted target without a virtual node"))?;
        let weight = t.u32("weight")?.ok_or_else(|| t.cx.err(t.pos(), "weighted target without a weight"))?;
        if weight > 100 {
            return Err(t.cx.err(t.pos(), format!("weight {weight} is over 100")));
        }
        let port = t.u32("port")?;
        t.finish()?;
        targets.push(WeightedTarget { virtual_node, weight, port });
    }
    action.finish()?;
    let retry = retry(&mut r)?;
    let timeout = timeouts(&mut r)?;
    r.finish()?;
    Ok(Route { name, origin, priority, protocol, matcher, targets, retry, timeout })
}

fn certificate(o: &mut Obj) -> R<Option<Certificate>> {
    let Some(mut c) = o.obj("certificate")? else { return Ok(None) };
    let v = if let Some(mut f) = c.obj("file")? {
        let v = Certificate::File { chain: f.req_str("certificateChain")?, key: f.req_str("privateKey")? };
        f.finish()?;
        v
    } else if let Some(mut s) = c.obj("sds")? {
        let v = Certificate::Sds { secret: s.req_str("secretName")? };
        s.finish()?;
        v
    } else if let Some(mut a) = c.obj("acm")? {
        let v = Certificate::Acm { arn: a.req_str("certificateArn")? };
        a.finish()?;
        v
    } else {
        return Err(c.cx.err(c.pos(), "certificate without file, sds or acm"));
    };
    c.finish()?;
    Ok(Some(v))
}

fn client_policy_tls(o: &mut Obj) -> R<Option<ClientTls>> {
    let Some(mut cp) = o.obj("clientPolicy")? else { return Ok(None) };
    let Some(mut t) = cp.obj("tls")? else {
        cp.finish()?;
        return Ok(None);
    };
    let enforce = t.bool("enforce")?.unwrap_or(true);
    let ports = t.nums("ports")?;
    let certificate = certificate(&mut t)?;
    let (mut trust, mut subject_alt_names) = (None, Vec::new());
    if let Some(mut v) = t.obj("validation")? {
        if let Some(mut tr) = v.obj("trust")? {
            trust = Some(if let Some(mut f) = tr.obj("file")? {
                let x = Trust::File { chain: f.req_str("certificateChain")? };
                f.finish()?;
                x
            } else if let Some(mut s) = tr.obj("sds")? {
                let x = Trust::Sds { secret: s.req_str("secretName")? };
                s.finish()?;
                x
            } else if let Some(mut a) = tr.obj("acm")? {
                let x = Trust::Acm { authorities: a.strs("certificateAuthorityArns")? };
                a.finish()?;
                x
            } else {
                return Err(tr.cx.err(tr.pos(), "trust without file, sds or acm"));
            });
            tr.finish()?;
        }
        if let Some(mut s) = v.obj("subjectAlternativeNames")? {
            if let Some(mut m) = s.obj("match")? {
                subject_alt_names = m.strs("exact")?;
                m.finish()?;
            }
            s.finish()?;
        }
        v.finish()?;
    }
    t.finish()?;
    cp.finish()?;
    Ok(Some(ClientTls { enforce, ports, trust, subject_alt_names, certificate }))
}

fn discovery(o: &mut Obj) -> R<Option<Discovery>> {
    let Some(mut sd) = o.obj("serviceDiscovery")? else { return Ok(None) };
    let v = if let Some(mut cm) = sd.obj("awsCloudMap")? {
        let namespace = cm.req_str("namespaceName")?;
        let service = cm.req_str("serviceName")?;
        let mut attributes = BTreeMap::new();
        match cm.raw("attributes") {
            // Terraform: a map.
            Some(n) if n.as_map().is_some() => {
                for (k, v) in n.as_map().unwrap_or_default() {
                    attributes.insert(k.clone(), cm.text(v)?);
                }
            }
            Some(n) => {
                let items: &[Node] = n.as_seq().ok_or_else(|| cm.cx.err(n.pos, "attributes must be a list"))?;
                for a in items {
                    let mut a = Obj::new(cm.cx, a, "attributes")?;
                    let (k, v) = (a.req_str("key")?, a.req_str("value")?);
                    a.finish()?;
                    attributes.insert(k, v);
                }
            }
            None => {}
        }
        cm.skip(&["ipPreference"]);
        cm.finish()?;
        Discovery::CloudMap { namespace, service, attributes }
    } else if let Some(mut d) = sd.obj("dns")? {
        let hostname = d.req_str("hostname")?;
        let response_type = d.str("responseType")?;
        d.skip(&["ipPreference"]);
        d.finish()?;
        Discovery::Dns { hostname, response_type }
    } else {
        return Err(sd.cx.err(sd.pos(), "serviceDiscovery without awsCloudMap or dns"));
    };
    sd.finish()?;
    Ok(Some(v))
}

fn node_listener(n: &Node, o: &Obj) -> R<NodeListener> {
    let mut l = Obj::new(o.cx, n, "listeners")?;
    let port_mapping = port_mapping(&mut l)?;
    let outlier = match l.obj("outlierDetection")? {
        Some(mut od) => {
            let v = OutlierDetection {
                max_server_errors: od.u32("maxServerErrors")?.unwrap_or(0),
                interval_ms: od.duration("interval")?.unwrap_or(0),
                base_ejection_ms: od.duration("baseEjectionDuration")?.unwrap_or(0),
                max_ejection_percent: od.u32("maxEjectionPercent")?.unwrap_or(0),
            };
            od.finish()?;
            Some(v)
        }
        None => None,
    };
    let mut connection_pool = None;
    if let Some(mut cp) = l.obj("connectionPool")? {
        for (api, protocol) in
            [("http", Protocol::Http), ("http2", Protocol::Http2), ("grpc", Protocol::Grpc), ("tcp", Protocol::Tcp)]
        {
            if let Some(mut p) = cp.obj(api)? {
                let mut limits = BTreeMap::new();
                for f in ["maxConnections", "maxPendingRequests", "maxRequests"] {
                    if let Some(v) = p.num(f)? {
                        limits.insert(f.to_string(), v);
                    }
                }
                p.finish()?;
                connection_pool = Some(ConnectionPool { protocol, limits });
            }
        }
        cp.finish()?;
    }
    let health_check = l.raw("healthCheck").is_some();
    let tls = l.raw("tls").is_some();
    // Listener timeouts are per protocol: `timeout {http {perRequest, idle}}`.
    let mut timeout = Timeouts::default();
    if let Some(mut t) = l.obj("timeout")? {
        for api in ["http", "http2", "grpc", "tcp"] {
            if let Some(mut p) = t.obj(api)? {
                timeout = Timeouts { per_request_ms: p.duration("perRequest")?, idle_ms: p.duration("idle")? };
                p.finish()?;
            }
        }
        t.finish()?;
    }
    l.finish()?;
    Ok(NodeListener { port_mapping, outlier, connection_pool, health_check, tls, timeout })
}

pub fn virtual_node(spec: &mut Obj, mesh: String, name: String, origin: Origin) -> R<VirtualNode> {
    let discovery = discovery(spec)?;
    let listeners = spec.list("listeners")?.into_iter().map(|n| node_listener(n, spec)).collect::<R<Vec<_>>>()?;
    let mut backends = Vec::new();
    for n in spec.list("backends")? {
        let mut b = Obj::new(spec.cx, n, "backends")?;
        let mut vs = b.obj("virtualService")?.ok_or_else(|| b.cx.err(b.pos(), "backend without a virtualService"))?;
        let virtual_service = reference(&mut vs, "virtualServiceName", "VirtualService")?
            .ok_or_else(|| vs.cx.err(vs.pos(), "backend without a virtual service name"))?;
        let tls = client_policy_tls(&mut vs)?;
        vs.finish()?;
        b.finish()?;
        backends.push(Backend { virtual_service, tls });
    }
    let backend_defaults_tls = match spec.obj("backendDefaults")? {
        Some(mut bd) => {
            let v = client_policy_tls(&mut bd)?;
            bd.finish()?;
            v
        }
        None => None,
    };
    spec.skip(&["logging"]);
    Ok(VirtualNode { mesh, name, origin, discovery, listeners, backends, backend_defaults_tls, workload: None })
}

pub fn virtual_router_listeners(spec: &mut Obj) -> R<Vec<PortMapping>> {
    let mut out = Vec::new();
    for n in spec.list("listeners")? {
        let mut l = Obj::new(spec.cx, n, "listeners")?;
        out.push(port_mapping(&mut l)?);
        l.finish()?;
    }
    Ok(out)
}

pub fn provider(spec: &mut Obj) -> R<Option<Provider>> {
    let Some(mut p) = spec.obj("provider")? else { return Ok(None) };
    let v = if let Some(mut n) = p.obj("virtualNode")? {
        let r = reference(&mut n, "virtualNodeName", "VirtualNode")?;
        n.finish()?;
        r.map(Provider::VirtualNode)
    } else if let Some(mut r) = p.obj("virtualRouter")? {
        let v = reference(&mut r, "virtualRouterName", "VirtualRouter")?;
        r.finish()?;
        v.map(Provider::VirtualRouter)
    } else {
        None
    };
    p.finish()?;
    Ok(v)
}

pub fn virtual_gateway(spec: &mut Obj, mesh: String, name: String, origin: Origin) -> R<VirtualGateway> {
    let mut listeners = Vec::new();
    for n in spec.list("listeners")? {
        let mut l = Obj::new(spec.cx, n, "listeners")?;
        let port_mapping = port_mapping(&mut l)?;
        let tls = match l.obj("tls")? {
            Some(mut t) => {
                let mode = t.str("mode")?.unwrap_or_else(|| "STRICT".into());
                let cert =
                    certificate(&mut t)?.ok_or_else(|| t.cx.err(t.pos(), "listener tls without a certificate"))?;
                t.skip(&["validation"]);
                t.finish()?;
                Some((mode, cert))
            }
            None => None,
        };
        l.skip(&["healthCheck", "connectionPool"]);
        l.finish()?;
        listeners.push(GatewayListener { port_mapping, tls });
    }
    spec.skip(&["logging", "backendDefaults"]);
    Ok(VirtualGateway { mesh, name, origin, listeners })
}

/// A gateway route spec; `gateway` is the owning virtual gateway's name.
pub fn gateway_route(spec: &mut Obj, mesh: String, gateway: String, name: String, origin: Origin) -> R<GatewayRoute> {
    let priority = spec.u32("priority")?;
    let mut found = None;
    for (api, protocol) in
        [("httpRoute", Protocol::Http), ("http2Route", Protocol::Http2), ("grpcRoute", Protocol::Grpc)]
    {
        if let Some(r) = spec.obj(api)? {
            found = Some((r, protocol));
        }
    }
    let Some((mut r, protocol)) = found else {
        return Err(spec
            .cx
            .err(spec.pos(), format!("gateway route {name:?} has no httpRoute, http2Route or grpcRoute")));
    };
    let matcher = match r.obj("match")? {
        Some(mut m) => {
            let v = route_match(&mut m, true)?;
            m.finish()?;
            v
        }
        None => RouteMatch::default(),
    };
    let mut action = r.obj("action")?.ok_or_else(|| r.cx.err(r.pos(), "gateway route without an action"))?;
    let mut target =
        action.obj("target")?.ok_or_else(|| action.cx.err(action.pos(), "gateway route without a target"))?;
    let mut vs =
        target.obj("virtualService")?.ok_or_else(|| target.cx.err(target.pos(), "target without a virtualService"))?;
    let target_service = reference(&mut vs, "virtualServiceName", "VirtualService")?
        .ok_or_else(|| vs.cx.err(vs.pos(), "target without a virtual service name"))?;
    vs.finish()?;
    let target_port = target.u32("port")?;
    target.finish()?;
    let mut rewrite = Rewrite::default();
    if let Some(mut rw) = action.obj("rewrite")? {
        if let Some(mut p) = rw.obj("prefix")? {
            rewrite.default_prefix_disabled = p.str("defaultPrefix")?.is_some_and(|d| d == "DISABLED");
            rewrite.prefix = p.str("value")?;
            p.finish()?;
        }
        if let Some(mut p) = rw.obj("path")? {
            rewrite.path = p.str("exact")?;
            p.finish()?;
        }
        if let Some(mut h) = rw.obj("hostname")? {
            rewrite.hostname_disabled = h.str("defaultTargetHostname")?.is_some_and(|d| d == "DISABLED");
            h.finish()?;
        }
        rw.finish()?;
    }
    action.finish()?;
    r.finish()?;
    Ok(GatewayRoute {
        mesh,
        gateway,
        name,
        origin,
        priority,
        protocol,
        matcher,
        target: target_service,
        target_port,
        rewrite,
    })
}
