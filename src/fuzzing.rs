//! Bodies of the fuzz targets in `fuzz/` (cargo-fuzz), kept in the library so the normal test suite
//! (`tests/fuzz_corpus.rs`) runs every target's invariants over a fixed and a generated corpus
//! without the fuzzer. Each function takes arbitrary bytes and panics when an invariant breaks.
//!
//! - [`registry_file`]: `source::file::parse` on arbitrary text; a parsed registry must translate
//!   into ServiceEntries that all pass validation.
//! - [`translate`]: a [`model::Snapshot`] and [`Options`] decoded from the bytes (names, attributes,
//!   ports, addresses drawn from a dictionary of tricky values or taken raw), checked for: every
//!   emitted ServiceEntry passes `validate::service_entry`, output deterministic and independent of
//!   input order, every service either emitted or rejected, encoding round-trips.
//! - [`stream`]: a sequence of `DiscoveryRequest`s (raw protobuf decoded by prost, or built to hit
//!   ACK/NACK/stale paths) and snapshot changes driven through [`StreamState`], checked against a
//!   reference model of the nonce rules; every response carries the full state of its type.
#![doc(hidden)]
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use prost::Message;

use crate::cache::{self, ResourceCache, ResourceSnapshot};
use crate::model::{self, HealthStatus, NamespaceType, Timestamp};
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::{DiscoveryRequest, DiscoveryResponse};
use crate::translate::{self, validate, HealthFilter, HostTemplate, Location, Options, Translation};
use crate::xds::codec;
use crate::xds::stream::{Action, Limits, RequestError, StreamState};

// ---------------------------------------------------------------------------------------------
// Target 1: the registry-file parser.

/// `source::file::parse` on arbitrary bytes (read as the watcher reads them: lossy UTF-8).
pub fn registry_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz/registry.yaml");
    let first = crate::source::file::parse(path, &text);
    let second = crate::source::file::parse(path, &text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parse is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parse errors are deterministic"),
        _ => panic!("parse gave Ok once and Err once"),
    }
    let snap = match first {
        Ok(s) => s,
        Err(e) => {
            // Error messages name the file.
            assert!(e.to_string().contains("fuzz/registry.yaml"), "{e}");
            return;
        }
    };
    let mut normalized = snap.clone();
    normalized.normalize();
    assert_eq!(normalized, snap, "a parsed registry is in canonical order");
    let mut ns_names = HashSet::new();
    for ns in &snap.namespaces {
        assert!(!ns.name.trim().is_empty());
        assert!(ns_names.insert(&ns.name), "duplicate namespace survived parsing");
        let mut svc_names = HashSet::new();
        for svc in &ns.services {
            assert!(!svc.name.trim().is_empty());
            assert!(svc_names.insert(&svc.name), "duplicate service survived parsing");
            let mut ids = HashSet::new();
            for i in svc.instances.iter() {
                assert!(!i.id.trim().is_empty());
                assert!(ids.insert(&i.id), "duplicate instance survived parsing");
            }
        }
    }
    check_translation(&snap, &Options::default());
}

// ---------------------------------------------------------------------------------------------
// Target 2: translate on arbitrary Cloud Map names and attributes.

/// Reads fuzz bytes as a sequence of small choices; past the end every choice is 0.
pub struct Unstructured<'a> {
    data: &'a [u8],
}

impl<'a> Unstructured<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Unstructured { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// A string: from the dictionary, raw bytes, or a combination.
    pub fn string(&mut self, dict: &[&str]) -> String {
        match self.byte() % 8 {
            0..=3 => self.pick(dict).to_string(),
            4 | 5 => {
                let n = self.byte() as usize % 48;
                String::from_utf8_lossy(self.take(n)).into_owned()
            }
            6 => format!("{}{}", self.pick(dict), self.pick(STRINGS)),
            _ => {
                // Long values: names near and over the Kubernetes and DNS limits.
                let unit = self.pick(&["a", "ab.", "x-", "9", "é", "a.b"]);
                let n = 40 + self.byte() as usize * 2;
                unit.chars().cycle().take(n).collect()
            }
        }
    }
}

/// Values that sit on the edges of the validation rules.
const STRINGS: &[&str] = &[
    "",
    " ",
    "a",
    "A",
    "web",
    "Front-End",
    "front_end",
    "-lead",
    "trail-",
    "a..b",
    ".lead",
    "trail.",
    "*",
    "*.example.com",
    "123",
    "1.2.3.4",
    "example.com",
    "ns.svc.cluster.local",
    "xn--bcher-kva",
    "bücher",
    "{namespace}",
    "{service}",
    "a/b",
    "a b",
    "new\nline",
    "0",
    "80",
    "443",
    "8080",
    "65535",
    "65536",
    "-1",
    " 9090 ",
    "http",
    "HTTP",
    "grpc",
    "tcp",
    "UDP",
    "blue",
];

const ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "52.192.72.89",
    "0.0.0.0",
    "255.255.255.255",
    "010.001.002.003",
    "1.2.3",
    "1.2.3.4.5",
    " 10.0.0.2 ",
    "10.0.0.1/24",
    "::1",
    "fe80::1",
    "2001:db8::1",
    "::ffff:10.0.0.1",
    "[::1]",
    "fe80::1%eth0",
    "db.example.com",
    "db.example.com.",
    "DB.Example.COM",
    "db",
    "123.example.123",
    "-bad.example.com",
    "a_b.example.com",
    "*.example.com",
    "10.0.0.300",
];

const ATTRIBUTE_KEYS: &[&str] = &[
    model::attr::IPV4,
    model::attr::IPV6,
    model::attr::PORT,
    model::attr::CNAME,
    model::attr::ALIAS_DNS_NAME,
    model::attr::INIT_HEALTH_STATUS,
    model::attr::EC2_INSTANCE_ID,
    model::attr::REGION,
    model::attr::AVAILABILITY_ZONE,
    "protocol",
    "PROTOCOL",
    "version",
    "app",
    "k8s.io/pod",
    "app.kubernetes.io/name",
    "Bad Key",
    "/empty-prefix",
    "a/b/c",
    "AWS_CUSTOM",
];

const HOST_TEMPLATES: &[&str] =
    &["{service}.{namespace}", "{service}", "{service}.svc.{namespace}.example.com", "{namespace}-{service}.mesh", "{service}.{namespace}.{namespace}"];

fn decode_timestamp(u: &mut Unstructured<'_>) -> Option<Timestamp> {
    match u.byte() % 4 {
        0 => None,
        1 => Some(Timestamp { seconds: 1_600_000_000 + u.u16() as i64, nanos: 0 }),
        2 => Some(Timestamp { seconds: i64::from_le_bytes(std::array::from_fn(|_| u.byte())), nanos: i32::from_le_bytes(std::array::from_fn(|_| u.byte())) }),
        _ => Some(Timestamp { seconds: -(u.u16() as i64), nanos: 999_999_999 }),
    }
}

/// Decodes a snapshot the way a source would deliver one: names unique where Cloud Map makes them
/// unique, canonical order.
pub fn decode_snapshot(u: &mut Unstructured<'_>) -> model::Snapshot {
    let mut namespaces = Vec::new();
    let mut ns_names = HashSet::new();
    for _ in 0..u.below(4) {
        let name = u.string(STRINGS);
        if !ns_names.insert(name.clone()) {
            continue;
        }
        let kind = u.pick(&[NamespaceType::Http, NamespaceType::DnsPrivate, NamespaceType::DnsPublic]);
        let mut services = Vec::new();
        let mut svc_names = HashSet::new();
        for _ in 0..u.below(6) {
            let svc_name = u.string(STRINGS);
            if !svc_names.insert(svc_name.clone()) {
                continue;
            }
            let mut instances = Vec::new();
            let mut ids = HashSet::new();
            for i in 0..u.below(7) {
                let id = if u.bool() { format!("i-{i}") } else { u.string(STRINGS) };
                if !ids.insert(id.clone()) {
                    continue;
                }
                let mut attributes = BTreeMap::new();
                for _ in 0..u.below(6) {
                    let key = u.string(ATTRIBUTE_KEYS);
                    let value = match key.as_str() {
                        model::attr::IPV4 | model::attr::IPV6 | model::attr::CNAME | model::attr::ALIAS_DNS_NAME => {
                            u.string(ADDRESSES)
                        }
                        _ => u.string(STRINGS),
                    };
                    attributes.insert(key, value);
                }
                let health = u.pick(&[HealthStatus::Healthy, HealthStatus::Unhealthy, HealthStatus::Unknown]);
                instances.push(model::Instance { id, attributes, health });
            }
            services.push(Arc::new(model::Service {
                name: svc_name,
                id: u.bool().then(|| format!("srv-{}", u.byte())),
                arn: u.bool().then(|| u.string(STRINGS)),
                create_date: decode_timestamp(u),
                attributes: Default::default(),
                instances: instances.into(),
            }));
        }
        namespaces.push(model::Namespace {
            http_name: name.clone(),
            name,
            id: u.bool().then(|| format!("ns-{}", u.byte())),
            arn: None,
            kind,
            services,
        });
    }
    let mut snap = model::Snapshot { namespaces };
    snap.normalize();
    snap
}

pub fn decode_options(u: &mut Unstructured<'_>) -> Options {
    let host_template = HostTemplate::new(u.pick(HOST_TEMPLATES)).expect("dictionary templates are valid");
    let health_filter =
        u.pick(&[HealthFilter::HealthyOrElseAll, HealthFilter::Healthy, HealthFilter::Unhealthy, HealthFilter::All]);
    let location = u.pick(&[Location::MeshExternal, Location::MeshInternal]);
    let revision = u.bool().then(|| "canary".to_string());
    let labels = if u.bool() { BTreeMap::from([("team".to_string(), "mesh".to_string())]) } else { BTreeMap::new() };
    let export_to = if u.bool() { vec![".".to_string()] } else { Vec::new() };
    Options { host_template, health_filter, location, revision, labels, export_to, ..Options::default() }
}

/// Decodes a snapshot and options from the bytes and checks the translation.
pub fn translate(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let opts = decode_options(&mut u);
    let snap = decode_snapshot(&mut u);
    check_translation(&snap, &opts);
}

/// A Kubernetes object name: at most 253 characters of `[a-z0-9.-]`, each dot-separated part
/// alphanumeric at both ends.
fn object_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= translate::MAX_NAME_LEN
        && n.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Every invariant of `translate` and of the encoding for one snapshot.
pub fn check_translation(snap: &model::Snapshot, opts: &Options) -> Translation {
    let t = translate::translate(snap, opts);
    assert_eq!(t, translate::translate(snap, opts), "translate is deterministic");

    // Input order does not matter.
    let mut shuffled = snap.clone();
    shuffled.namespaces.reverse();
    for ns in &mut shuffled.namespaces {
        ns.services.reverse();
        for s in &mut ns.services {
            model::Service::edit_instances(s, |v| v.reverse());
        }
    }
    shuffled.normalize();
    assert_eq!(t, translate::translate(&shuffled, opts), "output independent of input order");

    // Every service is accounted for.
    assert_eq!(t.entries.len() + t.rejected.len(), snap.service_count(), "each service is emitted or rejected");

    let mut names = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    let mut vips = BTreeSet::new();
    for se in &t.entries {
        validate::service_entry(&se.spec).unwrap_or_else(|e| panic!("emitted an invalid ServiceEntry ({e}): {se:#?}"));
        assert!(object_name_ok(&se.name), "bad object name {:?}", se.name);
        assert_eq!(se.resource_name().matches('/').count(), 1, "resource name {:?}", se.resource_name());
        assert_eq!(se.namespace, opts.istio_namespace);
        assert!(names.insert(se.name.clone()), "resource name {} emitted twice", se.name);
        for h in &se.spec.hosts {
            assert!(hosts.insert(h.clone()), "host {h} emitted twice");
        }
        assert!(se.spec.ports.windows(2).all(|w| w[0].number < w[1].number), "ports sorted: {:?}", se.spec.ports);
        assert!(
            se.spec.endpoints.windows(2).all(|w| (&w[0].address, &w[0].ports) < (&w[1].address, &w[1].ports)),
            "endpoints sorted and unique"
        );
        if se.wants_vip {
            for a in &se.spec.addresses {
                let ip: std::net::IpAddr = a.parse().expect("a VIP is an IP");
                assert!(opts.vips.cidrs.iter().any(|c| c.contains(&ip)), "VIP {ip} outside the ranges");
                assert!(vips.insert(ip), "VIP {ip} given twice");
            }
        } else if !se.spec.addresses.is_empty() {
            assert_eq!(se.spec.resolution, translate::Resolution::Static);
            assert_eq!(se.spec.endpoints.len(), 1, "an endpoint address only for a single STATIC endpoint");
            assert_eq!(se.spec.addresses, [se.spec.endpoints[0].address.clone()]);
        }
        assert_eq!(opts.revision.is_some(), se.labels.contains_key("istio.io/rev"));
        for (k, v) in &se.labels {
            validate::label_key(k).unwrap();
            validate::label_value(v).unwrap();
        }
    }
    assert!(
        t.entries.windows(2).all(|w| w[0].resource_name() < w[1].resource_name()),
        "entries sorted by resource name"
    );
    assert!(t.rejected.windows(2).all(|w| w[0] <= w[1]), "rejections sorted");

    // Encoding: deterministic, reusable across snapshots, and decodes to what was translated.
    let (a, _) = ResourceCache::new(opts.clone()).build(&Arc::new(snap.clone()));
    let mut warm = ResourceCache::new(opts.clone());
    warm.build(&Arc::new(model::Snapshot::default()));
    let (s, _) = warm.build(&Arc::new(shuffled.clone()));
    assert_eq!(s.service_entries.resources, a.service_entries.resources, "incremental build of a shuffled input");
    warm.build(&Arc::new(snap.clone()));
    let (b, reencoded) = warm.build(&Arc::new(snap.clone()));
    assert_eq!(reencoded, 0, "unchanged services are not re-encoded");
    assert_eq!(a.service_entries.version, b.service_entries.version);
    assert_eq!(a.service_entries.resources, b.service_entries.resources);
    assert_eq!(a.service_entries.names.len(), t.entries.len());
    let mut buf = Vec::new();
    cache::encode_response(&a.service_entries, "networking.istio.io/v1/ServiceEntry", "1", &[], &mut buf);
    let resp = DiscoveryResponse::decode(buf.as_slice()).expect("response decodes");
    assert_eq!(resp.resources.len(), t.entries.len());
    for (any, se) in resp.resources.iter().zip(&t.entries) {
        let r = mcp::Resource::decode(any.value.as_slice()).expect("resource decodes");
        let md = r.metadata.expect("metadata");
        assert_eq!(md.name, se.resource_name());
        assert_eq!(md.version.len(), 16);
        let body = net::ServiceEntry::decode(r.body.expect("body").value.as_slice()).expect("body decodes");
        assert_eq!(body, cache::to_proto(&se.spec));
    }
    // The debug and render views serialize whatever was emitted.
    let _ = translate::render::yaml(&t.entries);
    let _ = translate::render::report_comments(&t);
    t
}

// ---------------------------------------------------------------------------------------------
// Target 3: the per-stream request handler.

/// The snapshots a fuzzed stream switches between: unsharded, or in [`STREAM_SHARDS`] shards.
fn stream_snapshots(sharded: bool) -> &'static [ResourceSnapshot; 3] {
    static PLAIN: OnceLock<[ResourceSnapshot; 3]> = OnceLock::new();
    static SHARDED: OnceLock<[ResourceSnapshot; 3]> = OnceLock::new();
    let build = move || {
        let text = include_str!("../examples/registry.yaml");
        let mut model = crate::source::file::parse(Path::new("examples/registry.yaml"), text).expect("example parses");
        let mut cache = ResourceCache::new(Options::default()).with_shards(if sharded { STREAM_SHARDS } else { 1 });
        let (full, _) = cache.build(&Arc::new(model.clone()));
        model.namespaces.retain(|n| n.name == "my-namespace");
        let (one, _) = cache.build(&Arc::new(model));
        let (empty, _) = cache.build(&Arc::default());
        [full, one, empty]
    };
    if sharded {
        SHARDED.get_or_init(build)
    } else {
        PLAIN.get_or_init(build)
    }
}

/// Shards of the sharded snapshots of the stream target.
const STREAM_SHARDS: usize = 3;

const TYPE_URLS: &[&str] = &[
    "core/v1alpha1/MeshConfig",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1alpha3/ServiceEntry",
    "networking.istio.io/v1/VirtualService",
    "example.com/v9/Unheard",
    "",
];

/// What the reference model expects of one type on the stream.
#[derive(Default)]
struct ModelType {
    last_nonce: Option<String>,
    last_version: Option<String>,
    pending: bool,
}

/// Drives a [`StreamState`] with requests and snapshots decoded from the bytes and checks every
/// outcome against a reference model of the nonce rules (see `xds::stream`).
pub fn stream(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let limits = Limits {
        max_types: 1 + u.below(8),
        max_type_url_len: 16 + u.below(64),
        max_resource_names: u.below(8),
        max_node_id_len: 8 + u.below(128),
        ..Limits::default()
    };
    // A stream of one shard of a sharded server, or of an unsharded one.
    let (snaps, shard) = match u.byte() % 4 {
        0 => (stream_snapshots(false), 0),
        k => (stream_snapshots(true), usize::from(k - 1)),
    };
    let cp = codec::control_plane_field();
    let mut st = StreamState::new(limits).with_shard(shard);
    let mut snap: Option<&ResourceSnapshot> = None;
    let mut model: BTreeMap<String, ModelType> = BTreeMap::new();
    let mut node: Option<String> = None;
    let mut last_nonce: u64 = 0;

    let check_response = |o: &crate::xds::stream::Outgoing,
                          s: &ResourceSnapshot,
                          model: &mut BTreeMap<String, ModelType>,
                          last_nonce: &mut u64| {
        assert!(Arc::ptr_eq(&o.body, s.for_type(&o.type_url, shard)), "a response carries the full current state of its type");
        for (name, _) in &o.body.names {
            assert_eq!(cache::shard::shard_of(name, s.shard_count()), shard, "a stream gets its own shard's entries only");
        }
        assert_eq!(o.serial, s.serial);
        let n: u64 = o.nonce.parse().expect("nonces are sequence numbers");
        assert!(n > *last_nonce, "nonces increase");
        *last_nonce = n;
        let bytes = codec::encode_to_vec(o, &cp);
        assert_eq!(bytes.len(), codec::encoded_len(o, &cp));
        let resp = DiscoveryResponse::decode(bytes.as_slice()).expect("response decodes");
        assert_eq!(resp.type_url, o.type_url);
        assert_eq!(resp.nonce, o.nonce);
        assert_eq!(resp.version_info, o.body.version);
        assert_eq!(resp.resources.len(), o.body.resources.len());
        let m = model.get_mut(&o.type_url).expect("responded type is subscribed");
        m.last_nonce = Some(o.nonce.clone());
        m.last_version = Some(o.body.version.clone());
        m.pending = false;
    };

    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        steps += 1;
        let req = match u.byte() % 4 {
            0 => {
                // A new snapshot.
                let s = &snaps[u.below(3)];
                snap = Some(s);
                let out = st.on_snapshot(s);
                let expected: BTreeSet<&str> = model
                    .iter()
                    .filter(|(t, m)| m.pending || (m.last_version.is_some() && m.last_version.as_deref() != Some(s.for_type(t, shard).version.as_str())))
                    .map(|(t, _)| t.as_str())
                    .collect();
                let got: BTreeSet<&str> = out.iter().map(|o| o.type_url.as_str()).collect();
                assert_eq!(got.len(), out.len(), "one response per type per snapshot");
                assert_eq!(got, expected, "pushed exactly the pending and changed types");
                for o in &out {
                    check_response(o, s, &mut model, &mut last_nonce);
                }
                continue;
            }
            1 => {
                // Raw protobuf bytes.
                let n = u.below(200);
                match DiscoveryRequest::decode(u.take(n)) {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            }
            _ => {
                // A request built to reach every branch of the nonce rules.
                let type_url = if u.byte() % 16 == 0 { u.string(STRINGS) } else { u.pick(TYPE_URLS).to_string() };
                let known = model.get(&type_url);
                let response_nonce = match u.byte() % 5 {
                    0 => String::new(),
                    1 | 2 => known.and_then(|m| m.last_nonce.clone()).unwrap_or_default(),
                    3 => "2026-11-21 23:16:09.123 +0000 UTC".into(),
                    _ => (last_nonce.saturating_sub(u.below(3) as u64)).to_string(),
                };
                let version_info = known.and_then(|m| m.last_version.clone()).unwrap_or_default();
                let error_detail = (u.byte() % 5 == 0)
                    .then(|| crate::proto::google::rpc::Status { code: 3, message: u.string(STRINGS), details: vec![] });
                let node = (u.byte() % 3 != 0).then(|| crate::proto::envoy::config::core::v3::Node {
                    id: if u.bool() { "sidecar~10.0.0.9~istiod.istio-system~istio-system.svc.cluster.local".into() } else { u.string(STRINGS) },
                    ..Default::default()
                });
                let resource_names = (0..u.below(12)).map(|i| format!("r{i}")).collect();
                DiscoveryRequest { type_url, response_nonce, version_info, error_detail, node, resource_names }
            }
        };

        let t = req.type_url.clone();
        let first = !model.contains_key(&t);
        let result = st.on_request(&req, snap);
        // Errors end the stream (the server closes it with a status): nothing after them counts.
        let expected_err = if t.is_empty() {
            Some(RequestError::EmptyTypeUrl)
        } else if t.len() > limits.max_type_url_len {
            Some(RequestError::TypeUrlTooLong(t.len(), limits.max_type_url_len))
        } else if req.resource_names.len() > limits.max_resource_names {
            Some(RequestError::TooManyResourceNames(req.resource_names.len(), limits.max_resource_names))
        } else if req.node.as_ref().is_some_and(|n| n.id.len() > limits.max_node_id_len) {
            Some(RequestError::NodeIdTooLong(req.node.as_ref().unwrap().id.len(), limits.max_node_id_len))
        } else if first && model.len() >= limits.max_types {
            Some(RequestError::TooManyTypes(limits.max_types))
        } else {
            None
        };
        if let Some(e) = expected_err {
            assert_eq!(result.expect_err("request should have been refused"), e);
            let _: tonic::Status = e.into();
            return;
        }
        let action = result.unwrap_or_else(|e| panic!("unexpected refusal {e:?} of {req:?}"));
        if node.is_none() {
            node = req.node.as_ref().map(|n| n.id.clone());
        }
        assert_eq!(st.node_id().map(str::to_owned), node.as_ref().map(|n| crate::xds::stream::display_node_id(n)));
        let m = model.entry(t.clone()).or_default();
        let nonce = req.response_nonce.as_str();
        match action {
            Action::Respond(o) => {
                assert!(first || nonce.is_empty(), "answered a non-initial request with nonce {nonce:?}");
                assert_eq!(o.type_url, t, "the response echoes the requested type URL");
                let s = snap.expect("responded without a snapshot");
                check_response(&o, s, &mut model, &mut last_nonce);
            }
            Action::Deferred => {
                assert!(snap.is_none(), "deferred although a snapshot exists");
                assert!(first || nonce.is_empty());
                m.pending = true;
            }
            Action::Ack { version } => {
                assert!(!first && m.last_nonce.as_deref() == Some(nonce) && req.error_detail.is_none());
                assert_eq!(version, req.version_info);
            }
            Action::Nack { .. } => {
                assert!(!first && m.last_nonce.as_deref() == Some(nonce) && req.error_detail.is_some());
            }
            Action::Stale { nonce: n } => {
                assert!(!first && !nonce.is_empty() && m.last_nonce.as_deref() != Some(nonce));
                assert_eq!(n, nonce);
            }
        }
        assert_eq!(st.types().len(), model.len());
        for (t, m) in &model {
            let ts = &st.types()[t];
            assert_eq!(ts.last_sent_nonce, m.last_nonce);
            assert_eq!(ts.last_sent_version, m.last_version);
        }
    }
}
