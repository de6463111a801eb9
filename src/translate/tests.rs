//! Golden-file tests: each `testdata/NAME.registry.yaml` is translated with default options and the
//! rendered YAML (plus what was left out, as comments) must equal `testdata/NAME.golden.yaml`.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test --lib translate`.
use std::path::{Path, PathBuf};

use super::*;
use crate::model::HealthStatus;
use crate::source::file;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/testdata")
}

/// Translates `input` with default options plus, when `NAME.mapping.yaml` sits next to it, that
/// mapping file, and compares with the golden file.
fn golden(input: &Path, golden_name: &str) {
    let snapshot = file::load(input).expect("test registry parses");
    let mapping_path =
        input.with_file_name(input.file_name().unwrap().to_str().unwrap().replace(".registry.yaml", ".mapping.yaml"));
    let mut opts = Options::default();
    if mapping_path != input && mapping_path.exists() {
        let text = std::fs::read_to_string(&mapping_path).unwrap();
        opts.mapping = Arc::new(mapping::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", mapping_path.display())));
    }
    let t = translate(&snapshot, &opts);
    let got = format!("{}{}", render::yaml(&t.entries), render::report_comments(&t));
    let path = testdata().join(golden_name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(got, want, "translation of {} differs from {}", input.display(), path.display());
}

#[test]
fn golden_seed_example() {
    golden(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml"), "seed.golden.yaml");
}

#[test]
fn golden_ports() {
    golden(&testdata().join("ports.registry.yaml"), "ports.golden.yaml");
}

#[test]
fn golden_mapping_rules() {
    golden(&testdata().join("mapping.registry.yaml"), "mapping.golden.yaml");
}

#[test]
fn golden_service_attribute_overrides() {
    golden(&testdata().join("overrides.registry.yaml"), "overrides.golden.yaml");
}

#[test]
fn golden_invalid() {
    golden(&testdata().join("invalid.registry.yaml"), "invalid.golden.yaml");
}

fn seed() -> model::Snapshot {
    file::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap()
}

/// The seed documents' expected output for getmesh-external-service, field by field.
#[test]
fn seed_getmesh_matches_expected_output() {
    let t = translate(&seed(), &Options::default());
    let se = t.entries.iter().find(|e| e.name == "cloudmap-getmesh-external-service.my-namespace").expect("present");
    assert_eq!(se.namespace, "istio-system");
    assert_eq!(se.resource_name(), "istio-system/cloudmap-getmesh-external-service.my-namespace");
    let s = &se.spec;
    assert_eq!(s.hosts, ["getmesh-external-service.my-namespace"]);
    assert_eq!(s.addresses, ["52.192.72.89"]);
    assert_eq!(s.resolution, Resolution::Static);
    assert_eq!(s.location, Location::MeshExternal);
    assert_eq!(
        s.ports,
        [
            Port { number: 80, name: "http".into(), protocol: "HTTP".into() },
            Port { number: 443, name: "https".into(), protocol: "HTTPS".into() }
        ]
    );
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].address, "52.192.72.89");
    assert_eq!(s.endpoints[0].ports, BTreeMap::from([("http".into(), 80), ("https".into(), 443)]));
    assert_eq!(se.create_time, Timestamp::parse_rfc3339("2021-06-01T00:00:00Z").unwrap());
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
}

#[test]
fn colorapp_endpoints_carry_version_labels_for_subsets() {
    let t = translate(&seed(), &Options::default());
    let se = t.entries.iter().find(|e| e.spec.hosts[0] == "colorapp.howto-k8s-cloudmap.pvt.aws.local").unwrap();
    let versions: Vec<_> = se.spec.endpoints.iter().map(|e| e.labels["version"].as_str()).collect();
    assert_eq!(versions, ["blue", "red"]);
    // A multi-endpoint service gets a VIP from the range, never an endpoint's address.
    assert_eq!(se.spec.addresses.len(), 1);
    let vip: std::net::IpAddr = se.spec.addresses[0].parse().unwrap();
    assert!(vip::DEFAULT_CIDR.parse::<vip::Cidr>().unwrap().contains(&vip), "{vip}");
    let off = translate(
        &seed(),
        &Options { vips: VipSettings { enabled: false, ..VipSettings::default() }, ..Options::default() },
    );
    let se = off.entries.iter().find(|e| e.spec.hosts[0] == "colorapp.howto-k8s-cloudmap.pvt.aws.local").unwrap();
    assert!(se.spec.addresses.is_empty(), "--allocate-vips=false: no VIP");
    assert!(se.spec.endpoints.iter().all(|e| !e.labels.contains_key("AWS_INIT_HEALTH_STATUS")));
}

/// Same state in a different order gives byte-identical resources.
#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let a = seed();
    let mut b = a.clone();
    b.namespaces.reverse();
    for ns in &mut b.namespaces {
        ns.services.reverse();
        for s in &mut ns.services {
            model::Service::edit_instances(s, |v| v.reverse());
        }
    }
    let ta = translate(&a, &Options::default());
    let tb = translate(&b, &Options::default());
    let enc = |t: &Translation| t.entries.iter().map(crate::cache::encode_entry).collect::<Vec<_>>();
    assert_eq!(enc(&ta), enc(&tb));
}

#[test]
fn options_shape_metadata_and_hosts() {
    let opts = Options {
        istio_namespace: "mesh-config".into(),
        host_template: HostTemplate::new("{service}.{namespace}.cloudmap").unwrap(),
        health_filter: HealthFilter::All,
        location: Location::MeshInternal,
        revision: Some("canary".into()),
        labels: BTreeMap::from([("team".into(), "platform".into())]),
        export_to: vec![".".into()],
        ..Options::default()
    };
    let t = translate(&seed(), &opts);
    let se = &t.entries.iter().find(|e| e.source.service == "getmesh-external-service").unwrap();
    assert_eq!(se.spec.hosts, ["getmesh-external-service.my-namespace.cloudmap"]);
    assert_eq!(se.namespace, "mesh-config");
    assert_eq!(se.labels.get("istio.io/rev").map(String::as_str), Some("canary"));
    assert_eq!(se.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(se.spec.location, Location::MeshInternal);
    assert_eq!(se.spec.export_to, ["."]);
    // Without a revision, no istio.io/rev label (istiod would drop the resource).
    let t = translate(&seed(), &Options::default());
    assert!(t.entries.iter().all(|e| !e.labels.contains_key("istio.io/rev")));
}

#[test]
fn host_template_rejects_unknown_placeholders() {
    assert!(HostTemplate::new("{service}.{ns}").is_err());
    assert!(HostTemplate::new("{namespace}").is_err());
    assert!(HostTemplate::new("{service}.svc").is_ok());
}

/// A snapshot of one HTTP namespace `ns` holding one service.
fn one_service(name: &str, instances: Vec<model::Instance>) -> model::Snapshot {
    model::Snapshot {
        namespaces: vec![model::Namespace {
            name: "ns".into(),
            id: None,
            arn: None,
            kind: model::NamespaceType::Http,
            http_name: "ns".into(),
            services: vec![std::sync::Arc::new(model::Service {
                name: name.into(),
                id: None,
                arn: None,
                create_date: None,
                attributes: Default::default(),
                instances: instances.into(),
            })],
        }],
    }
}

#[test]
fn health_filters() {
    use model::Instance;
    let inst = |id: &str, ip: &str, h| Instance {
        id: id.into(),
        attributes: BTreeMap::from([(attr::IPV4.into(), ip.into())]),
        health: h,
    };
    let snap = one_service(
        "s",
        vec![
            inst("a", "10.0.0.1", HealthStatus::Healthy),
            inst("b", "10.0.0.2", HealthStatus::Unhealthy),
            inst("c", "10.0.0.3", HealthStatus::Unknown),
        ],
    );
    let addrs = |f| {
        let t = translate(&snap, &Options { health_filter: f, ..Options::default() });
        t.entries[0].spec.endpoints.iter().map(|e| e.address.clone()).collect::<Vec<_>>()
    };
    assert_eq!(addrs(HealthFilter::Healthy), ["10.0.0.1", "10.0.0.3"]);
    assert_eq!(addrs(HealthFilter::HealthyOrElseAll), ["10.0.0.1", "10.0.0.3"]);
    assert_eq!(addrs(HealthFilter::Unhealthy), ["10.0.0.2"]);
    assert_eq!(addrs(HealthFilter::All), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
}

#[test]
fn validation_rules() {
    let ok = || ServiceEntrySpec {
        hosts: vec!["a.example".into()],
        addresses: vec![],
        ports: vec![Port { number: 80, name: "http".into(), protocol: "HTTP".into() }],
        location: Location::MeshExternal,
        resolution: Resolution::Static,
        endpoints: vec![Endpoint {
            address: "10.0.0.1".into(),
            ports: BTreeMap::from([("http".into(), 8080)]),
            labels: BTreeMap::new(),
            locality: String::new(),
        }],
        export_to: vec![],
    };
    assert_eq!(validate::service_entry(&ok()), Ok(()));
    let fails = |f: &dyn Fn(&mut ServiceEntrySpec), want: &str| {
        let mut s = ok();
        f(&mut s);
        let err = validate::service_entry(&s).expect_err(want);
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    };
    fails(&|s| s.hosts.clear(), "no hosts");
    fails(&|s| s.hosts = vec!["*.example".into()], "wildcard");
    fails(&|s| s.hosts = vec!["a.123".into()], "all digits");
    fails(&|s| s.addresses = vec!["not-an-ip".into()], "not an IP address or CIDR");
    fails(&|s| s.ports[0].number = 0, "out of range");
    fails(&|s| s.ports.push(Port { number: 80, name: "web".into(), protocol: "HTTP".into() }), "declared twice");
    fails(&|s| s.ports.push(Port { number: 81, name: "http".into(), protocol: "HTTP".into() }), "declared twice");
    fails(&|s| s.ports[0].name = "Http_1".into(), "DNS-1123");
    fails(&|s| s.ports[0].protocol = "SMTP".into(), "unknown protocol");
    fails(&|s| s.endpoints[0].address = "db.example".into(), "STATIC resolution needs IP endpoints");
    fails(&|s| s.endpoints[0].ports = BTreeMap::from([("grpc".into(), 1)]), "does not declare");
    fails(&|s| s.endpoints[0].labels = BTreeMap::from([("bad key".into(), "v".into())]), "label key");
    fails(
        &|s| {
            s.hosts.push("b.example".into());
            s.ports[0].protocol = "TCP".into();
        },
        "more than one host",
    );
    assert!(validate::service_entry(&ServiceEntrySpec { addresses: vec!["10.0.0.0/8".into()], ..ok() }).is_ok());
}

#[test]
fn long_names_get_a_stable_hash_suffix() {
    let host = format!("{}.example", "a".repeat(63) + "." + &"b".repeat(63) + "." + &"c".repeat(63) + "." + &"d".repeat(60));
    let n1 = object_name(&host);
    assert!(n1.len() <= MAX_NAME_LEN, "{}", n1.len());
    assert_eq!(n1, object_name(&host));
    assert_ne!(n1, object_name(&host.replace("example", "example2")));
    assert_eq!(object_name("a.b"), "cloudmap-a.b");
}

#[test]
fn host_template_fills_placeholders_once() {
    let t = HostTemplate::new("{service}.{namespace}").unwrap();
    assert_eq!(t.render("Web", "Prod.Local"), "web.prod.local");
    // A name that looks like a placeholder is not expanded (found by reading the fuzz target's
    // dictionary: `{namespace}` as a service name used to become the namespace's name).
    assert_eq!(t.render("{namespace}", "ns"), "{namespace}.ns");
    assert_eq!(t.render("a", "{service}"), "a.{service}");
    let t = HostTemplate::new("{namespace}-{service}.{service}.mesh").unwrap();
    assert_eq!(t.render("s", "n"), "n-s.s.mesh");
}

#[test]
fn instances_at_the_same_address_and_port_become_one_endpoint() {
    use crate::model::Instance;
    let inst = |id: &str, ip: &str, version: &str| Instance {
        id: id.into(),
        attributes: [("AWS_INSTANCE_IPV4", ip), ("AWS_INSTANCE_PORT", "8080"), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        health: Default::default(),
    };
    let snap = one_service(
        "api",
        vec![inst("a", "10.0.0.1", "blue"), inst("b", "10.0.0.1", "green"), inst("c", "10.0.0.1", "blue"), inst("d", "10.0.0.2", "blue")],
    );
    let t = translate(&snap, &Options::default());
    let eps = &t.entries[0].spec.endpoints;
    assert_eq!(eps.len(), 2, "{eps:?}");
    assert_eq!((eps[0].address.as_str(), eps[0].labels["version"].as_str()), ("10.0.0.1", "blue"));
    assert_eq!(eps[1].address, "10.0.0.2");
    validate::service_entry(&t.entries[0].spec).unwrap();
    // The conflicting duplicate is reported; the identical one is not.
    let notes: Vec<_> = t.notes.iter().filter_map(|n| n.instance.as_deref()).collect();
    assert_eq!(notes, ["b"]);
    assert!(t.notes[0].message.contains("same address and ports as instance a"));
}
