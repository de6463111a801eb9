//! Synchronous tests of the per-stream state machine, playing istiod's request sequences.
use std::path::Path;

use super::*;
use crate::cache::ResourceCache;
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::google::rpc::Status;
use crate::source::file;
use crate::translate::Options;

const SE_V1: &str = "networking.istio.io/v1/ServiceEntry";
const MESH: &str = "core/v1alpha1/MeshConfig";

fn snapshots() -> (ResourceSnapshot, ResourceSnapshot) {
    let mut model = file::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap();
    let mut cache = ResourceCache::new(Options::default());
    let (a, _) = cache.build(&std::sync::Arc::new(model.clone()));
    model.namespaces.retain(|n| n.name == "my-namespace");
    let (b, _) = cache.build(&std::sync::Arc::new(model));
    (a, b)
}

fn req(type_url: &str, nonce: &str, version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        node: Some(Node { id: "sidecar~10.0.0.9~istiod-abc.istio-system~istio-system.svc.cluster.local".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn respond(a: Result<Action, RequestError>) -> Outgoing {
    match a {
        Ok(Action::Respond(o)) => o,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn initial_requests_with_timestamp_nonces_are_answered() {
    let (snap, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    // istiod's first requests carry a nonce this server never sent.
    let o = respond(st.on_request(&req(MESH, "2026-11-21 23:16:09.123 +0000 UTC", ""), Some(&snap)));
    assert_eq!(o.type_url, MESH);
    assert!(o.body.resources.is_empty());
    assert_eq!(st.node_id(), Some("sidecar~10.0.0.9~istiod-abc.istio-system~istio-system.svc.cluster.local"));
    let o = respond(st.on_request(&req(SE_V1, "2026-11-21 23:16:09.124 +0000 UTC", ""), Some(&snap)));
    assert_eq!(o.type_url, SE_V1);
    assert_eq!(o.body.resources.len(), 3);
    assert_eq!(o.body.version, snap.service_entries.version);
}

#[test]
fn ack_sends_nothing_and_is_recorded() {
    let (snap, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&snap)));
    match st.on_request(&req(SE_V1, &o.nonce, &o.body.version), Some(&snap)) {
        Ok(Action::Ack { version }) => assert_eq!(version, o.body.version),
        other => panic!("expected ACK, got {other:?}"),
    }
    let ts = &st.types()[SE_V1];
    assert_eq!(ts.last_acked_version.as_deref(), Some(o.body.version.as_str()));
    assert_eq!((ts.responses, ts.acks), (1, 1));
    // Nothing changed: a new identical snapshot pushes nothing.
    assert!(st.on_snapshot(&snap).is_empty());
}

#[test]
fn stale_nonce_is_ignored() {
    let (a, b) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let first = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&a)));
    let pushed = st.on_snapshot(&b);
    assert_eq!(pushed.len(), 1);
    // The ACK of the first response arrives after the second was sent: stale.
    match st.on_request(&req(SE_V1, &first.nonce, &first.body.version), Some(&b)) {
        Ok(Action::Stale { nonce }) => assert_eq!(nonce, first.nonce),
        other => panic!("expected stale, got {other:?}"),
    }
    assert!(matches!(st.on_request(&req(SE_V1, &pushed[0].nonce, &pushed[0].body.version), Some(&b)), Ok(Action::Ack { .. })));
}

#[test]
fn nack_is_counted_and_not_answered() {
    let (snap, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&snap)));
    let mut nack = req(SE_V1, &o.nonce, "");
    nack.error_detail = Some(Status { code: 3, message: "bad entry".into(), details: vec![] });
    match st.on_request(&nack, Some(&snap)) {
        Ok(Action::Nack { message, .. }) => assert_eq!(message, "bad entry"),
        other => panic!("expected NACK, got {other:?}"),
    }
    assert_eq!(st.types()[SE_V1].nacks, 1);
    assert_eq!(st.types()[SE_V1].last_acked_version, None);
    // No resend loop: the same snapshot produces nothing.
    assert!(st.on_snapshot(&snap).is_empty());
}

#[test]
fn unknown_type_gets_an_empty_response_with_a_stable_version() {
    let (a, b) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o = respond(st.on_request(&req("example.com/v9/Unheard", "x", ""), Some(&a)));
    assert_eq!(o.type_url, "example.com/v9/Unheard");
    assert!(o.body.resources.is_empty());
    assert_eq!(o.body.version, b.empty.version);
    // A ServiceEntry change does not push the unrelated kind again.
    assert!(st.on_snapshot(&b).is_empty());
}

#[test]
fn only_changed_types_are_pushed_on_a_new_snapshot() {
    let (a, b) = snapshots();
    let mut st = StreamState::new(Limits::default());
    for t in [MESH, SE_V1, "networking.istio.io/v1/VirtualService"] {
        respond(st.on_request(&req(t, "ts", ""), Some(&a)));
    }
    let pushed = st.on_snapshot(&b);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].type_url, SE_V1);
    assert_eq!(pushed[0].body.resources.len(), 1, "removed services are gone by omission");
    assert_ne!(pushed[0].nonce, "ts");
}

#[test]
fn v1alpha3_and_v1beta1_service_entry_kinds_get_the_same_resources() {
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let v1a3 = respond(st.on_request(&req("networking.istio.io/v1alpha3/ServiceEntry", "ts", ""), Some(&a)));
    let v1b1 = respond(st.on_request(&req("networking.istio.io/v1beta1/ServiceEntry", "ts", ""), Some(&a)));
    assert_eq!(v1a3.body.resources, a.service_entries.resources);
    assert_eq!(v1b1.body.version, a.service_entries.version);
}

#[test]
fn requests_before_the_first_snapshot_are_held_then_answered() {
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    assert!(matches!(st.on_request(&req(MESH, "ts", ""), None), Ok(Action::Deferred)));
    assert!(matches!(st.on_request(&req(SE_V1, "ts", ""), None), Ok(Action::Deferred)));
    let out = st.on_snapshot(&a);
    let types: Vec<_> = out.iter().map(|o| o.type_url.as_str()).collect();
    assert_eq!(types, [MESH, SE_V1]);
    let nonces: std::collections::HashSet<_> = out.iter().map(|o| o.nonce.clone()).collect();
    assert_eq!(nonces.len(), 2, "nonces are unique on a stream");
}

#[test]
fn empty_nonce_after_the_first_request_is_answered_again() {
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o1 = respond(st.on_request(&req(SE_V1, "", ""), Some(&a)));
    let o2 = respond(st.on_request(&req(SE_V1, "", ""), Some(&a)));
    assert_ne!(o1.nonce, o2.nonce);
}

#[test]
fn reconnect_starts_fresh() {
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&a)));
    // A new stream (reconnect) sending the version it already holds is still answered.
    let mut st2 = StreamState::new(Limits::default());
    let o2 = respond(st2.on_request(&req(SE_V1, &o.nonce, &o.body.version), Some(&a)));
    assert_eq!(o2.body.version, o.body.version);
}

#[test]
fn bad_requests_end_the_stream_with_a_clear_error() {
    let (a, _) = snapshots();
    let limits = Limits { max_types: 2, max_type_url_len: 64, max_resource_names: 3, ..Limits::default() };
    let mut st = StreamState::new(limits);
    assert_eq!(st.on_request(&req("", "", ""), Some(&a)).unwrap_err(), RequestError::EmptyTypeUrl);
    assert!(matches!(st.on_request(&req(&"x".repeat(65), "", ""), Some(&a)), Err(RequestError::TypeUrlTooLong(65, 64))));
    let mut many = req(SE_V1, "", "");
    many.resource_names = vec!["a".into(); 4];
    assert!(matches!(st.on_request(&many, Some(&a)), Err(RequestError::TooManyResourceNames(4, 3))));
    respond(st.on_request(&req("a/1", "", ""), Some(&a)));
    respond(st.on_request(&req("a/2", "", ""), Some(&a)));
    assert_eq!(st.on_request(&req("a/3", "", ""), Some(&a)).unwrap_err(), RequestError::TooManyTypes(2));
    let status: tonic::Status = RequestError::TooManyTypes(2).into();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let status: tonic::Status = RequestError::EmptyTypeUrl.into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[test]
fn pre_encoded_response_decodes_as_a_discovery_response() {
    use prost::Message;
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let o = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&a)));
    let cp = crate::xds::codec::control_plane_field();
    let bytes = crate::xds::codec::encode_to_vec(&o, &cp);
    assert_eq!(bytes.len(), crate::xds::codec::encoded_len(&o, &cp));
    let resp = crate::proto::DiscoveryResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(resp.type_url, SE_V1);
    assert_eq!(resp.nonce, o.nonce);
    assert_eq!(resp.version_info, a.service_entries.version);
    assert_eq!(resp.resources.len(), 3);
    assert!(resp.resources.iter().all(|r| r.type_url == crate::proto::MCP_RESOURCE_TYPE_URL));
    assert!(resp.control_plane.unwrap().identifier.starts_with("cloudmap-mcp/"));
    let r = crate::proto::istio::mcp::v1alpha1::Resource::decode(resp.resources[0].value.as_slice()).unwrap();
    let md = r.metadata.unwrap();
    assert_eq!(md.name.matches('/').count(), 1);
    assert_eq!(r.body.unwrap().type_url, crate::proto::SERVICE_ENTRY_BODY_TYPE_URL);
    assert!(!md.version.is_empty() && md.create_time.is_some());
}

#[test]
fn node_id_is_bounded_and_escaped() {
    let (a, _) = snapshots();
    let mut st = StreamState::new(Limits::default());
    let mut r = req(SE_V1, "", "");
    r.node.as_mut().unwrap().id = "x".repeat(1025);
    assert_eq!(st.on_request(&r, Some(&a)).unwrap_err(), RequestError::NodeIdTooLong(1025, 1024));
    let status: tonic::Status = RequestError::NodeIdTooLong(1025, 1024).into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Control characters cannot forge log lines or debug output.
    let mut st = StreamState::new(Limits::default());
    r.node.as_mut().unwrap().id = "istiod\n{\"level\":\"ERROR\"}\u{1b}[31m".into();
    respond(st.on_request(&r, Some(&a)));
    let shown = st.node_id().unwrap();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.starts_with("istiod\\n"));
}

#[test]
fn request_budget_allows_a_burst_then_the_rate() {
    use std::time::{Duration, Instant};
    let limits = Limits { max_requests_per_second: 100, request_burst: 10, ..Limits::default() };
    let t0 = Instant::now();
    let mut b = RequestBudget::new(&limits, t0);
    for _ in 0..10 {
        assert_eq!(b.spend(t0), Duration::ZERO);
    }
    // The 11th request at the same instant waits one token's time (10 ms at 100/s).
    let wait = b.spend(t0);
    assert!(wait > Duration::from_millis(9) && wait <= Duration::from_millis(11), "{wait:?}");
    // After waiting, reading at the rate goes on without further delay.
    let mut now = t0 + wait;
    for _ in 0..100 {
        now += Duration::from_millis(10);
        assert!(b.spend(now) <= Duration::from_millis(11));
    }
    // A quiet second refills the burst, no more.
    now += Duration::from_secs(5);
    for _ in 0..10 {
        assert_eq!(b.spend(now), Duration::ZERO);
    }
    assert!(b.spend(now) > Duration::ZERO);
}

fn sharded_snapshots(shards: usize) -> (ResourceSnapshot, ResourceSnapshot) {
    let mut model = file::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap();
    let mut cache = ResourceCache::new(Options::default()).with_shards(shards);
    let (a, _) = cache.build(&std::sync::Arc::new(model.clone()));
    model.namespaces.retain(|n| n.name == "my-namespace");
    let (b, _) = cache.build(&std::sync::Arc::new(model));
    (a, b)
}

#[test]
fn a_shard_stream_serves_its_shard_and_every_other_kind_in_full() {
    use crate::cache::shard::shard_of;
    let (a, _) = sharded_snapshots(4);
    let mut seen = Vec::new();
    for shard in 0..4 {
        let mut st = StreamState::new(Limits::default()).with_shard(shard);
        assert_eq!(st.shard(), shard);
        let mesh = respond(st.on_request(&req(MESH, "ts", ""), Some(&a)));
        assert!(mesh.body.resources.is_empty());
        let vs = respond(st.on_request(&req("networking.istio.io/v1/VirtualService", "ts", ""), Some(&a)));
        assert_eq!(vs.body.version, a.empty.version, "other kinds are the same on every shard");
        for t in ["networking.istio.io/v1/ServiceEntry", "networking.istio.io/v1alpha3/ServiceEntry"] {
            let se = respond(st.on_request(&req(t, "ts", ""), Some(&a)));
            assert!(std::sync::Arc::ptr_eq(&se.body, &a.shards[shard]), "every ServiceEntry kind gets the shard");
            assert!(se.body.names.iter().all(|(n, _)| shard_of(n, 4) == shard));
        }
        seen.extend(a.shards[shard].names.iter().map(|(n, _)| n.clone()));
    }
    seen.sort();
    assert_eq!(seen, a.service_entries.names.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), "the shards together are the whole set");
}

#[test]
fn a_new_snapshot_pushes_only_on_the_shards_it_changed() {
    use crate::cache::shard::shard_of;
    let (a, b) = sharded_snapshots(4);
    // `b` drops the services of two namespaces: their shards change, the others do not.
    let kept: Vec<_> = b.service_entries.names.iter().map(|(n, _)| n.clone()).collect();
    let gone: std::collections::BTreeSet<usize> =
        a.service_entries.names.iter().filter(|(n, _)| !kept.contains(n)).map(|(n, _)| shard_of(n, 4)).collect();
    assert!(!gone.is_empty() && gone.len() < 4, "{gone:?}");
    for shard in 0..4 {
        let mut st = StreamState::new(Limits::default()).with_shard(shard);
        let first = respond(st.on_request(&req(SE_V1, "ts", ""), Some(&a)));
        respond(st.on_request(&req(MESH, "ts", ""), Some(&a)));
        st.on_request(&req(SE_V1, &first.nonce, &first.body.version), Some(&a)).unwrap();
        let pushed = st.on_snapshot(&b);
        if gone.contains(&shard) {
            assert_eq!(pushed.len(), 1, "shard {shard}");
            assert_eq!(pushed[0].type_url, SE_V1);
            assert!(std::sync::Arc::ptr_eq(&pushed[0].body, &b.shards[shard]));
        } else {
            assert!(pushed.is_empty(), "shard {shard} did not change and must push nothing: {pushed:?}");
        }
    }
}
