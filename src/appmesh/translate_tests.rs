//! Translation golden files: the colorapp in each form gives the same Istio objects.
use super::istio::{self, Outcome};
use super::tests::{load_str, testdata, FORMS};
use super::translate::{apply_port_protocols, translate, Translation};
use crate::translate::{self as se, ServiceEntry};

fn entries() -> Vec<ServiceEntry> {
    let snapshot = crate::source::file::load(&testdata("colorapp.registry.yaml")).unwrap();
    se::translate(&snapshot, &se::Options::default()).entries
}

fn render(t: &Translation) -> String {
    istio::yaml(&t.objects, &t.report)
}

#[test]
fn colorapp_golden_is_the_same_for_every_form() {
    let golden = testdata("colorapp/istio.golden.yaml");
    let k8s = super::load(&[testdata(FORMS[0])], super::DEFAULT_MAX_BYTES).unwrap();
    let got = render(&translate(&k8s, &entries(), "istio-system"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    assert_eq!(got, std::fs::read_to_string(&golden).unwrap(), "{} differs from {}", FORMS[0], golden.display());
    // The other forms name no pods, so they give the same objects without the Sidecars.
    let without_pods = render(&translate(&super::tests::without_workloads(k8s), &entries(), "istio-system"));
    assert!(!without_pods.contains("kind: Sidecar"));
    for f in &FORMS[1..] {
        let m = super::load(&[testdata(f)], super::DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(render(&translate(&m, &entries(), "istio-system")), without_pods, "{f}");
    }
}

#[test]
fn colorapp_routes_weights_subsets_retries_and_timeouts() {
    let m = super::load(&[testdata(FORMS[0])], super::DEFAULT_MAX_BYTES).unwrap();
    let mut served = entries();
    let t = translate(&m, &served, "istio-system");
    let vs = t.objects.iter().find(|o| o.name == "appmesh-colorapp-howto-k8s-cloudmap-svc-cluster-local").unwrap();
    // Priority 10 (the header route) before the unprioritised catch-all.
    assert_eq!(vs.spec["http"][0]["match"][0]["headers"]["color"]["exact"], "red");
    assert_eq!(vs.spec["http"][0]["timeout"], "5s");
    let split = &vs.spec["http"][1];
    assert_eq!(split["route"][0]["destination"]["subset"], "colorapp-blue");
    assert_eq!(split["route"][0]["destination"]["host"], "colorapp.howto-k8s-cloudmap.pvt.aws.local");
    assert_eq!(split["route"][1]["weight"], 1);
    assert_eq!(split["retries"]["retryOn"], "5xx,gateway-error,connect-failure");
    assert_eq!(split["retries"]["perTryTimeout"], "2s");
    assert_eq!(split["timeout"], "15s", "App Mesh's default timeout is explicit");
    let dr = t.objects.iter().find(|o| o.name == "appmesh-colorapp-howto-k8s-cloudmap-pvt-aws-local").unwrap();
    assert_eq!(dr.spec["subsets"][0]["labels"]["color"], "blue");
    assert_eq!(dr.spec["subsets"][0]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"], 5);
    assert_eq!(dr.spec["trafficPolicy"]["portLevelSettings"][0]["tls"]["caCertificates"], "/certs/ca.pem");
    // The imported mesh's 8080 is HTTP, not TCP.
    assert_eq!(served[0].spec.ports[0].protocol, "TCP");
    apply_port_protocols(&mut served, &t.port_protocols);
    assert_eq!(served[0].spec.ports[0].protocol, "HTTP");
    assert_eq!(served[0].spec.ports[0].name, "http-8080");
    // Endpoints that map the port by name follow the rename (istiod drops an entry whose endpoints
    // name an undeclared port).
    assert!(served[0].spec.endpoints.iter().any(|ep| !ep.ports.is_empty()), "the registry maps endpoint ports");
    for ep in &served[0].spec.endpoints {
        assert!(ep.ports.keys().all(|k| served[0].spec.ports.iter().any(|p| &p.name == k)), "{:?}", ep.ports);
    }
    let hc = t.report.iter().find(|r| r.name == "front").unwrap();
    assert_eq!(hc.outcome, Outcome::Approximated);
    assert!(hc.reasons.iter().any(|r| r.contains("active health check")), "{hc:?}");
}

#[test]
fn a_subset_that_selects_no_endpoint_is_reported() {
    let text = std::fs::read_to_string(testdata(FORMS[0]))
        .unwrap()
        .replace("{key: color, value: red}", "{key: color, value: green}");
    let t = translate(&load_str("k.yaml", &text).unwrap(), &entries(), "istio-system");
    let red = t.report.iter().find(|r| r.name == "colorapp-red").unwrap();
    assert!(
        red.reasons
            .iter()
            .any(|r| r.contains("selects no endpoint in the current snapshot (no instance has color=green)")),
        "{red:?}"
    );
}

#[test]
fn missing_nodes_and_routers_zero_weights_and_range_matches_are_reported_not_fatal() {
    let text = r#"[
      {"meshName": "m", "virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}},
      {"meshName": "m", "virtualRouterName": "r", "routeName": "zero", "spec": {"httpRoute": {"action": {"weightedTargets": [{"virtualNode": "n", "weight": 0}, {"virtualNode": "n2", "weight": 0}]}}}},
      {"meshName": "m", "virtualRouterName": "r", "routeName": "missing", "spec": {"httpRoute": {"match": {"prefix": "/m"}, "action": {"weightedTargets": [{"virtualNode": "ghost", "weight": 1}]}}}},
      {"meshName": "m", "virtualRouterName": "r", "routeName": "range", "spec": {"httpRoute": {"match": {"prefix": "/r", "headers": [{"name": "v", "match": {"range": {"start": 1, "end": 5}}}]}, "action": {"weightedTargets": [{"virtualNode": "n", "weight": 1}]}}}},
      {"meshName": "m", "virtualRouterName": "gone", "routeName": "orphan", "spec": {"httpRoute": {"action": {"weightedTargets": [{"virtualNode": "n", "weight": 1}]}}}},
      {"meshName": "m", "virtualNodeName": "n", "spec": {"serviceDiscovery": {"dns": {"hostname": "n.example"}}}},
      {"meshName": "m", "virtualNodeName": "n2", "spec": {"serviceDiscovery": {"dns": {"hostname": "n2.example"}}}},
      {"meshName": "m", "virtualServiceName": "s.example", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}},
      {"meshName": "m", "virtualServiceName": "t.example", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "nope"}}}}
    ]"#;
    let t = translate(&load_str("bad.json", text).unwrap(), &[], "istio-system");
    let reason = |name: &str| {
        let r = t.report.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("{name} not in {:?}", t.report));
        assert_eq!(r.outcome, Outcome::Dropped, "{r:?}");
        r.reasons.join("; ")
    };
    assert!(reason("r/zero").contains("every weighted target has weight 0"));
    assert!(reason("r/missing").contains("virtual node \"ghost\" is not defined"));
    assert!(reason("r/range").contains("header range match [1, 5) has no Istio equivalent"));
    assert!(reason("gone/orphan").contains("virtual router \"gone\" is not defined"));
    assert!(reason("t.example").contains("virtual router \"nope\" is not defined"));
    assert_eq!(t.objects.len(), 0, "every route of s.example was dropped: {:?}", t.objects);
}

#[test]
fn ten_thousand_routes_translate_in_order() {
    let mut text = String::from(
        r#"[{"meshName": "m", "virtualNodeName": "n", "spec": {"serviceDiscovery": {"dns": {"hostname": "n.example"}}}},
      {"meshName": "m", "virtualServiceName": "s.example", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}},
      {"meshName": "m", "virtualRouterName": "r", "spec": {}}"#,
    );
    for i in 0..10_000 {
        text.push_str(&format!(r#",{{"meshName": "m", "virtualRouterName": "r", "routeName": "r{i}", "spec": {{"priority": {}, "httpRoute": {{"match": {{"prefix": "/{i}"}}, "action": {{"weightedTargets": [{{"virtualNode": "n", "weight": 1}}]}}}}}}}}"#, i % 1001));
    }
    text.push(']');
    let t = translate(&load_str("many.json", &text).unwrap(), &[], "istio-system");
    let http = t.objects[0].spec["http"].as_array().unwrap();
    assert_eq!(http.len(), 10_000);
    // Priority first (i % 1001), then the longer prefix: "/1001" before "/0".
    let prio = |h: &serde_json::Value| h["name"].as_str().unwrap()[1..].parse::<usize>().unwrap() % 1001;
    assert!(http.windows(2).all(|w| prio(&w[0]) <= prio(&w[1])));
    assert_eq!(http[0]["match"][0]["uri"]["prefix"], "/1001");
    assert_eq!(http[9]["match"][0]["uri"]["prefix"], "/0");
}

#[test]
fn objects_encode_as_mcp_resources_with_their_bodies() {
    use crate::proto::istio::mcp::v1alpha1 as mcp;
    use crate::proto::istio::networking::v1alpha3 as net;
    use prost::Message;
    let m = super::load(&[testdata(FORMS[0])], super::DEFAULT_MAX_BYTES).unwrap();
    let t = translate(&m, &entries(), "istio-system");
    for o in &t.objects {
        let (framed, version) = super::encode::encode(o);
        // Strip the `resources` field's tag and length.
        let mut buf = &framed[..];
        let _ = prost::encoding::decode_key(&mut buf).unwrap();
        let _ = prost::encoding::decode_varint(&mut buf).unwrap();
        let any = prost_types::Any::decode(buf).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/istio.mcp.v1alpha1.Resource");
        let r = mcp::Resource::decode(&any.value[..]).unwrap();
        let meta = r.metadata.unwrap();
        assert_eq!(meta.name, o.resource_name());
        assert_eq!(meta.version, version);
        assert_eq!(meta.annotations, o.annotations);
        let body = r.body.unwrap();
        assert_eq!(body.type_url, super::encode::body_type_url(o.kind));
        if o.name == "appmesh-colorapp-howto-k8s-cloudmap-svc-cluster-local" {
            let vs = net::VirtualService::decode(&body.value[..]).unwrap();
            assert_eq!(vs.hosts, ["colorapp.howto-k8s-cloudmap.svc.cluster.local"]);
            let split = &vs.http[1];
            assert_eq!(split.route.iter().map(|r| r.weight).collect::<Vec<_>>(), [1, 1]);
            assert_eq!(split.route[0].destination.as_ref().unwrap().subset, "colorapp-blue");
            assert_eq!(split.timeout, Some(prost_types::Duration { seconds: 15, nanos: 0 }));
            let retries = split.retries.as_ref().unwrap();
            assert_eq!((retries.attempts, retries.retry_on.as_str()), (3, "5xx,gateway-error,connect-failure"));
            assert_eq!(retries.per_try_timeout, Some(prost_types::Duration { seconds: 2, nanos: 0 }));
            let header = &vs.http[0].r#match[0].headers["color"];
            assert_eq!(header.match_type, Some(net::string_match::MatchType::Exact("red".into())));
        }
        if o.kind == super::istio::Kind::DestinationRule {
            let dr = net::DestinationRule::decode(&body.value[..]).unwrap();
            assert_eq!(dr.subsets.len(), 2);
            assert_eq!(dr.subsets[0].labels["color"], "blue");
            let od = dr.subsets[0].traffic_policy.as_ref().unwrap().outlier_detection.as_ref().unwrap();
            assert_eq!(od.consecutive_5xx_errors, Some(5));
            assert_eq!(od.base_ejection_time, Some(prost_types::Duration { seconds: 30, nanos: 0 }));
            let tls = dr.traffic_policy.as_ref().unwrap().port_level_settings[0].tls.as_ref().unwrap();
            assert_eq!(tls.mode, net::client_tls_settings::TlSmode::Simple as i32);
        }
        if o.kind == super::istio::Kind::Gateway {
            let gw = net::Gateway::decode(&body.value[..]).unwrap();
            assert_eq!(gw.servers[0].port.as_ref().unwrap().number, 8088);
            assert_eq!(gw.selector["istio"], "ingressgateway");
        }
    }
}

#[test]
fn grpc_tcp_matches_and_gateway_hostnames_translate_field_by_field() {
    let text = r#"[
      {"meshName": "m", "virtualNodeName": "g", "spec": {"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}], "serviceDiscovery": {"dns": {"hostname": "g.example"}}}},
      {"meshName": "m", "virtualNodeName": "t", "spec": {"listeners": [{"portMapping": {"port": 5432, "protocol": "tcp"}}], "serviceDiscovery": {"dns": {"hostname": "t.example"}}}},
      {"meshName": "m", "virtualRouterName": "gr", "spec": {"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}]}},
      {"meshName": "m", "virtualRouterName": "gr", "routeName": "method", "spec": {"grpcRoute": {
        "match": {"serviceName": "pkg.Svc", "methodName": "Get", "metadata": [{"name": "X-Env", "invert": true, "match": {"suffix": ".prod"}}]},
        "action": {"weightedTargets": [{"virtualNode": "g", "weight": 80}, {"virtualNode": "g", "weight": 20, "port": 50052}]},
        "retryPolicy": {"grpcRetryEvents": ["unavailable", "cancelled"], "maxRetries": 1},
        "timeout": {"perRequest": {"unit": "ms", "value": 2500}, "idle": {"unit": "s", "value": 60}}}}},
      {"meshName": "m", "virtualRouterName": "tr", "spec": {"listeners": [{"portMapping": {"port": 5432, "protocol": "tcp"}}]}},
      {"meshName": "m", "virtualRouterName": "tr", "routeName": "db", "spec": {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "t", "weight": 1}]}}}},
      {"meshName": "m", "virtualServiceName": "g.svc", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "gr"}}}},
      {"meshName": "m", "virtualServiceName": "t.svc", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "tr"}}}},
      {"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": [{"portMapping": {"port": 443, "protocol": "http"}, "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:aws:acm:x"}}}}]}},
      {"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "r", "spec": {"httpRoute": {"match": {"prefix": "/", "hostname": {"suffix": "example.com"}}, "action": {"target": {"virtualService": {"virtualServiceName": "g.svc"}}}}}}
    ]"#;
    let t = translate(&load_str("f.json", text).unwrap(), &[], "ns");
    let vs = |name: &str| {
        t.objects.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("{name} in {:?}", t.objects)).spec.clone()
    };
    let g = vs("appmesh-g-svc");
    let m = &g["http"][0]["match"][0];
    assert_eq!(m["uri"]["exact"], "/pkg.Svc/Get");
    assert_eq!(m["withoutHeaders"]["x-env"]["regex"], ".*\\.prod");
    assert_eq!(g["http"][0]["route"][1]["destination"]["port"]["number"], 50052);
    assert_eq!(g["http"][0]["route"][0]["weight"], 80);
    assert_eq!(g["http"][0]["retries"]["retryOn"], "unavailable,cancelled");
    assert_eq!(g["http"][0]["timeout"], "2500ms");
    let tcp = vs("appmesh-t-svc");
    assert!(tcp.get("http").is_none());
    assert_eq!(tcp["tcp"][0]["route"][0]["destination"]["host"], "t.example");
    // The idle timeout lands on the destination host's DestinationRule.
    let dr = vs("appmesh-g-example");
    assert_eq!(dr["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"], "60s");
    // An ACM-only listener leaves no server: the gateway is dropped, with the reason; its route too.
    let gw = t.report.iter().find(|r| r.name == "gw").unwrap();
    assert_eq!(gw.outcome, Outcome::Dropped);
    assert!(gw.reasons.iter().any(|r| r.contains("ACM certificates")), "{gw:?}");
    assert!(t.objects.iter().all(|o| o.kind != super::istio::Kind::Gateway));
    let r = t.report.iter().find(|r| r.name == "gw/r").unwrap();
    assert!(r.outcome == Outcome::Dropped && r.reasons[0].contains("\"gw\" was not translated"), "{r:?}");
    // With a file certificate the gateway serves HTTPS and the route binds to it, hosts by suffix.
    let t = translate(
        &load_str(
            "f.json",
            &text.replace(
                r#"{"acm": {"certificateArn": "arn:aws:acm:x"}}"#,
                r#"{"file": {"certificateChain": "/c.pem", "privateKey": "/k.pem"}}"#,
            ),
        )
        .unwrap(),
        &[],
        "ns",
    );
    let gw = t.objects.iter().find(|o| o.name == "appmesh-gw").unwrap();
    assert_eq!(gw.spec["servers"][0]["tls"]["serverCertificate"], "/c.pem");
    assert_eq!(gw.spec["servers"][0]["port"]["protocol"], "HTTPS");
    let r = t.objects.iter().find(|o| o.name == "appmesh-gw-r").unwrap();
    assert_eq!(r.spec["hosts"][0], "*.example.com");
    assert_eq!(r.spec["gateways"][0], "ns/appmesh-gw");
}

#[test]
fn backends_give_a_sidecar_only_for_a_label_selector() {
    let text = std::fs::read_to_string(testdata(FORMS[0])).unwrap();
    let sidecars = |t: &Translation| -> Vec<String> {
        t.objects.iter().filter(|o| o.kind == super::istio::Kind::Sidecar).map(|o| o.resource_name()).collect()
    };
    let front = |t: &Translation| t.report.iter().find(|r| r.name == "front").cloned().unwrap();
    assert_eq!(sidecars(&translate(&load_str("k.yaml", &text).unwrap(), &entries(), "ns")), ["howto-k8s-cloudmap/appmesh-front"]);

    // matchExpressions: no workloadSelector can say it.
    let exprs = text.replacen(
        "matchLabels: {app: front}",
        "matchExpressions: [{key: app, operator: In, values: [front, front-v2]}]",
        1,
    );
    let t = translate(&load_str("k.yaml", &exprs).unwrap(), &entries(), "ns");
    assert!(sidecars(&t).is_empty(), "{:?}", sidecars(&t));
    let r = front(&t);
    assert_eq!(r.outcome, Outcome::Approximated);
    assert!(r.reasons.iter().any(|x| x.contains("podSelector.matchExpressions (1) has no workloadSelector equivalent")), "{r:?}");

    // A backend that names no defined virtual service is left out, the others kept.
    let unknown = text.replacen("virtualServiceRef: {name: colorapp}", "virtualServiceARN: arn:aws:appmesh:x:1:mesh/m/virtualService/nope", 1);
    {
        let m = load_str("k.yaml", &unknown).unwrap();
        let t = translate(&m, &entries(), "ns");
        assert!(sidecars(&t).is_empty(), "{:?}", sidecars(&t));
        assert!(front(&t).reasons.iter().any(|x| x.contains("is not a defined virtual service")), "{:?}", front(&t));
    }
}
