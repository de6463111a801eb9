//! Resource cache: turns model snapshots into pre-encoded, versioned resources shared by every stream.
//!
//! Each ServiceEntry is encoded once, as the framed bytes of one `DiscoveryResponse.resources` entry
//! (`Any{istio.mcp.v1alpha1.Resource{metadata, body: Any{ServiceEntry}}}`); entries that did not
//! change since the previous snapshot reuse their bytes. Streams write those bytes straight into the
//! gRPC frame (see `xds::codec`), so a push to N clients encodes nothing N times.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model;
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::{MCP_RESOURCE_TYPE_URL, SERVICE_ENTRY_BODY_TYPE_URL};
use crate::source::SnapshotRx;
use crate::translate::{self, Location, Resolution, ServiceEntry, Translation};

/// Field number of `DiscoveryResponse.resources`.
const RESOURCES_FIELD: u32 = 2;

/// The resources of one kind, encoded and versioned.
#[derive(Debug, Default)]
pub struct EncodedType {
    /// `version_info`: a hash of every resource name and version.
    pub version: String,
    /// Each element is one complete, framed `resources` field (tag + length + Any).
    pub resources: Vec<Bytes>,
    /// Sum of `resources` lengths.
    pub resources_len: usize,
    /// `(resource name, metadata.version)`, sorted by name.
    pub names: Vec<(String, String)>,
}

impl EncodedType {
    fn new(resources: Vec<Bytes>, names: Vec<(String, String)>) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (n, v) in &names {
            h.update(n.as_bytes());
            h.update(&[0]);
            h.update(v.as_bytes());
            h.update(&[0]);
        }
        let resources_len = resources.iter().map(Bytes::len).sum();
        EncodedType { version: format!("{:016x}", h.digest()), resources, resources_len, names }
    }

    pub fn empty() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

/// Everything the xDS streams serve at one moment.
#[derive(Debug)]
pub struct ResourceSnapshot {
    /// Increases with every snapshot built by this process.
    pub serial: u64,
    /// When this snapshot was published (push latency is measured from here).
    pub published_at: Instant,
    pub service_entries: Arc<EncodedType>,
    /// Served for every kind this server does not produce.
    pub empty: Arc<EncodedType>,
    /// The translation behind `service_entries`, for debug views.
    pub translation: Arc<Translation>,
    pub model_services: usize,
    pub model_instances: usize,
}

/// The ServiceEntry kinds istiod asks for, by Istio version.
pub const SERVICE_ENTRY_TYPE_URLS: &[&str] = &[
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1beta1/ServiceEntry",
    "networking.istio.io/v1alpha3/ServiceEntry",
];

impl ResourceSnapshot {
    /// The resources for a requested type URL: ServiceEntries, or the empty set for any other kind.
    pub fn for_type(&self, type_url: &str) -> &Arc<EncodedType> {
        if SERVICE_ENTRY_TYPE_URLS.contains(&type_url) {
            &self.service_entries
        } else {
            &self.empty
        }
    }
}

/// Builds [`ResourceSnapshot`]s, reusing the encoding of unchanged entries.
pub struct ResourceCache {
    opts: translate::Options,
    /// The last snapshot's translation and encoding (shared with that snapshot, not copied):
    /// `entries[i]` was encoded as `resources[i]` with version `names[i].1`.
    prev: Option<(Arc<Translation>, Arc<EncodedType>)>,
    serial: u64,
    empty: Arc<EncodedType>,
}

impl ResourceCache {
    pub fn new(opts: translate::Options) -> Self {
        ResourceCache { opts, prev: None, serial: 0, empty: Arc::new(EncodedType::empty()) }
    }

    pub fn options(&self) -> &translate::Options {
        &self.opts
    }

    /// Translates and encodes `model`. Returns the snapshot and how many entries were (re)encoded.
    pub fn build(&mut self, model: &model::Snapshot) -> (ResourceSnapshot, usize) {
        let translation = translate::translate(model, &self.opts);
        let mut resources = Vec::with_capacity(translation.entries.len());
        let mut names = Vec::with_capacity(translation.entries.len());
        let mut encoded = 0;
        // Where each resource name was in the previous snapshot.
        let prev_index: HashMap<&str, usize> = match &self.prev {
            Some((_, enc)) => enc.names.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect(),
            None => HashMap::new(),
        };
        for se in &translation.entries {
            let key = se.resource_name();
            let reused = match (&self.prev, prev_index.get(key.as_str())) {
                (Some((old_t, old_enc)), Some(&i)) if old_t.entries[i] == *se => {
                    Some((old_enc.resources[i].clone(), old_enc.names[i].1.clone()))
                }
                _ => None,
            };
            let (framed, version) = reused.unwrap_or_else(|| {
                encoded += 1;
                encode_entry(se)
            });
            resources.push(framed);
            names.push((key, version));
        }
        drop(prev_index);
        self.serial += 1;
        let snap = ResourceSnapshot {
            serial: self.serial,
            published_at: Instant::now(),
            service_entries: Arc::new(EncodedType::new(resources, names)),
            empty: self.empty.clone(),
            model_services: model.service_count(),
            model_instances: model.instance_count(),
            translation: Arc::new(translation),
        };
        self.prev = Some((snap.translation.clone(), snap.service_entries.clone()));
        (snap, encoded)
    }
}

/// The protobuf form of a ServiceEntry spec.
pub fn to_proto(spec: &translate::ServiceEntrySpec) -> net::ServiceEntry {
    net::ServiceEntry {
        hosts: spec.hosts.clone(),
        addresses: spec.addresses.clone(),
        ports: spec
            .ports
            .iter()
            .map(|p| net::ServicePort { number: p.number, protocol: p.protocol.clone(), name: p.name.clone(), target_port: 0 })
            .collect(),
        location: match spec.location {
            Location::MeshExternal => net::service_entry::Location::MeshExternal,
            Location::MeshInternal => net::service_entry::Location::MeshInternal,
        } as i32,
        resolution: match spec.resolution {
            Resolution::Static => net::service_entry::Resolution::Static,
            Resolution::Dns => net::service_entry::Resolution::Dns,
        } as i32,
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| net::WorkloadEntry {
                address: e.address.clone(),
                ports: e.ports.clone(),
                labels: e.labels.clone(),
                locality: e.locality.clone(),
                ..Default::default()
            })
            .collect(),
        export_to: spec.export_to.clone(),
        subject_alt_names: Vec::new(),
        workload_selector: None,
    }
}

/// Encodes one entry as a framed `resources` field and returns it with its content version.
pub fn encode_entry(se: &ServiceEntry) -> (Bytes, String) {
    let body = to_proto(&se.spec).encode_to_vec();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&body);
    for (k, v) in se.labels.iter().chain(se.annotations.iter()) {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.update(&se.create_time.seconds.to_le_bytes());
    h.update(&se.create_time.nanos.to_le_bytes());
    let version = format!("{:016x}", h.digest());
    let resource = mcp::Resource {
        metadata: Some(mcp::Metadata {
            name: se.resource_name(),
            create_time: Some(prost_types::Timestamp { seconds: se.create_time.seconds, nanos: se.create_time.nanos }),
            version: version.clone(),
            labels: se.labels.clone(),
            annotations: se.annotations.clone(),
        }),
        body: Some(prost_types::Any { type_url: SERVICE_ENTRY_BODY_TYPE_URL.into(), value: body }),
    };
    let any = prost_types::Any { type_url: MCP_RESOURCE_TYPE_URL.into(), value: resource.encode_to_vec() };
    let len = any.encoded_len();
    let mut buf = BytesMut::with_capacity(len + 8);
    prost::encoding::encode_key(RESOURCES_FIELD, prost::encoding::WireType::LengthDelimited, &mut buf);
    prost::encoding::encode_varint(len as u64, &mut buf);
    any.encode(&mut buf).expect("buffer has capacity");
    (buf.freeze(), version)
}

pub type ResourceTx = watch::Sender<Option<Arc<ResourceSnapshot>>>;
pub type ResourceRx = watch::Receiver<Option<Arc<ResourceSnapshot>>>;

/// Watches model snapshots, builds resource snapshots and publishes them. Logs what changed.
/// Returns when the source is gone.
pub async fn run(mut model_rx: SnapshotRx, mut cache: ResourceCache, tx: ResourceTx, metrics: Arc<Metrics>) {
    loop {
        let model = model_rx.borrow_and_update().clone();
        if let Some(model) = model {
            publish(&mut cache, &model, &tx, &metrics);
        }
        if model_rx.changed().await.is_err() {
            return;
        }
    }
}

/// Builds one snapshot from `model` and publishes it.
pub fn publish(cache: &mut ResourceCache, model: &model::Snapshot, tx: &ResourceTx, metrics: &Metrics) {
    let started = Instant::now();
    let (snap, encoded) = cache.build(model);
    metrics.translate_seconds.observe(started.elapsed().as_secs_f64());
    metrics.snapshots_built.inc();
    let se = &snap.service_entries;
    metrics.resources.set(se.names.len() as i64);
    metrics.resource_bytes.set(se.resources_len as i64);
    let t = &snap.translation;
    metrics.rejected_services.set(t.rejected.len() as i64);
    metrics.skipped_instances.set(t.notes.iter().filter(|n| n.instance.is_some()).count() as i64);
    metrics.ready.set(1);

    let prev = tx.borrow().clone();
    log_changes(prev.as_deref(), &snap, encoded, started.elapsed());
    tx.send_replace(Some(Arc::new(snap)));
}

fn log_changes(prev: Option<&ResourceSnapshot>, next: &ResourceSnapshot, encoded: usize, took: std::time::Duration) {
    let old: HashMap<&str, &str> = prev
        .map(|p| p.service_entries.names.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect())
        .unwrap_or_default();
    let mut added = Vec::new();
    let mut updated = Vec::new();
    for (n, v) in &next.service_entries.names {
        match old.get(n.as_str()) {
            None => added.push(n.as_str()),
            Some(ov) if ov != v => updated.push(n.as_str()),
            _ => {}
        }
    }
    let new_names: std::collections::HashSet<&str> = next.service_entries.names.iter().map(|(n, _)| n.as_str()).collect();
    let removed: Vec<&str> = old.keys().filter(|n| !new_names.contains(*n)).copied().collect();
    let changed = prev.is_none_or(|p| p.service_entries.version != next.service_entries.version);
    if changed {
        tracing::info!(
            version = %next.service_entries.version,
            serviceentries = next.service_entries.names.len(),
            added = added.len(),
            updated = updated.len(),
            removed = removed.len(),
            encoded,
            took_ms = took.as_secs_f64() * 1000.0,
            "serving new ServiceEntry snapshot"
        );
        for (what, list) in [("added", &added), ("updated", &updated), ("removed", &removed)] {
            for n in list.iter().take(20) {
                tracing::debug!(resource = n, "ServiceEntry {what}");
            }
        }
    }
    let old_rejected = prev.map(|p| p.translation.rejected.as_slice()).unwrap_or_default();
    for r in &next.translation.rejected {
        if !old_rejected.contains(r) {
            tracing::warn!(service = %r.source, reason = %r.reason, "Cloud Map service left out: its ServiceEntry would be invalid");
        }
    }
    let old_notes = prev.map(|p| p.translation.notes.as_slice()).unwrap_or_default();
    for n in &next.translation.notes {
        if !old_notes.contains(n) {
            tracing::warn!(service = %n.source, instance = n.instance.as_deref().unwrap_or("-"), "{}", n.message);
        }
    }
}

/// Writes a complete `DiscoveryResponse` from pre-encoded parts.
pub fn encode_response(body: &EncodedType, type_url: &str, nonce: &str, control_plane: &[u8], buf: &mut impl BufMut) {
    prost::encoding::string::encode(1, &body.version, buf);
    for r in &body.resources {
        buf.put_slice(r);
    }
    prost::encoding::string::encode(4, &type_url.to_string(), buf);
    prost::encoding::string::encode(5, &nonce.to_string(), buf);
    buf.put_slice(control_plane);
}

/// Length of what [`encode_response`] writes.
pub fn encoded_response_len(body: &EncodedType, type_url: &str, nonce: &str, control_plane: &[u8]) -> usize {
    prost::encoding::string::encoded_len(1, &body.version)
        + body.resources_len
        + prost::encoding::string::encoded_len(4, &type_url.to_string())
        + prost::encoding::string::encoded_len(5, &nonce.to_string())
        + control_plane.len()
}
