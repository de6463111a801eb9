//! Resource cache: turns model snapshots into pre-encoded, versioned resources shared by every stream.
//!
//! Each ServiceEntry is encoded once, as the framed bytes of one `DiscoveryResponse.resources` entry
//! (`Any{istio.mcp.v1alpha1.Resource{metadata, body: Any{ServiceEntry}}}`); entries that did not
//! change since the previous snapshot reuse their bytes. Streams write those bytes straight into the
//! gRPC frame (see `xds::codec`), so a push to N clients encodes nothing N times.
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes};
use prost::Message;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model;
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::{MCP_RESOURCE_TYPE_URL, SERVICE_ENTRY_BODY_TYPE_URL};
use crate::source::SnapshotRx;
use crate::translate::{
    self, Location, Note, NoteKind, Rejection, Resolution, ServiceEntry, Translation,
};
use crate::util::Escaped;

pub mod appmesh;
mod build;
pub mod decode;
pub mod shard;
#[cfg(test)]
mod tests;

pub use appmesh::{AppMeshRx, AppMeshServed};
use crate::appmesh::istio::Outcome as AmOutcome;
pub use build::ResourceCache;

/// The resources of one kind, encoded and versioned.
#[derive(Debug, Default)]
pub struct EncodedType {
    /// `version_info`: a hash of every resource name and version.
    pub version: String,
    /// Each element is one complete, framed `resources` field (tag + length + Any).
    pub resources: Vec<Bytes>,
    /// Sum of `resources` lengths.
    pub resources_len: usize,
    /// `(resource name, metadata.version)`, sorted by name. Shared with the builder's memo: a
    /// build copies a pointer per entry, not two strings.
    pub names: Vec<(Arc<str>, Arc<str>)>,
}

impl EncodedType {
    pub(crate) fn new(resources: Vec<Bytes>, names: Vec<(Arc<str>, Arc<str>)>) -> Self {
        // One pass over one buffer: fed to a streaming hasher piece by piece, the 40,000 short
        // strings of 10,000 entries cost ten times as much (the same digest either way).
        let mut all = Vec::with_capacity(names.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
        for (n, v) in &names {
            all.extend_from_slice(n.as_bytes());
            all.push(0);
            all.extend_from_slice(v.as_bytes());
            all.push(0);
        }
        let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&all));
        let resources_len = resources.iter().map(Bytes::len).sum();
        EncodedType { version, resources, resources_len, names }
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
    /// With `--shards N` (N > 1): `service_entries` split into N disjoint shards, shard i served
    /// on the i-th gRPC port (see [`shard`]). Empty with one shard.
    pub shards: Vec<Arc<EncodedType>>,
    /// Served for every kind this server does not produce.
    pub empty: Arc<EncodedType>,
    /// The model snapshot this was built from (shared with the source, not copied).
    pub model: Arc<model::Snapshot>,
    /// The options it was translated with.
    pub options: Arc<translate::Options>,
    /// The VIPs it serves (by host).
    pub vips: Arc<translate::Allocation>,
    /// Entries whose VIP is not their host's hash address.
    pub vip_collisions: usize,
    /// Services that produced no ServiceEntry, and why (sorted).
    pub rejected: Arc<Vec<Rejection>>,
    /// What was left out of emitted ServiceEntries (sorted).
    pub notes: Arc<Vec<Note>>,
    pub model_services: usize,
    pub model_instances: usize,
    /// Istio routing translated from App Mesh (`--appmesh-file`); empty without one.
    pub appmesh: Arc<AppMeshServed>,
}

/// The ServiceEntry kinds istiod asks for, by Istio version.
pub const SERVICE_ENTRY_TYPE_URLS: &[&str] = &[
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1beta1/ServiceEntry",
    "networking.istio.io/v1alpha3/ServiceEntry",
];

impl ResourceSnapshot {
    /// The resources for a requested type URL on a stream of `shard`: the shard's ServiceEntries;
    /// the VirtualServices, DestinationRules, Gateways and Sidecars translated from App Mesh on shard 0 only
    /// (istiod keeps one store per source: the same object on several sources would conflict);
    /// or the empty set for any other kind (the same on every shard).
    pub fn for_type(&self, type_url: &str, shard: usize) -> &Arc<EncodedType> {
        if SERVICE_ENTRY_TYPE_URLS.contains(&type_url) {
            self.shard(shard)
        } else if let Some(t) = crate::appmesh::encode::kind_of(type_url).and_then(|k| self.appmesh.types.get(&k)) {
            if shard == 0 {
                t
            } else {
                &self.empty
            }
        } else {
            &self.empty
        }
    }

    /// How many shards the ServiceEntries are served as (1: not sharded).
    pub fn shard_count(&self) -> usize {
        self.shards.len().max(1)
    }

    /// The ServiceEntries of shard `i` (`i` < [`Self::shard_count`]); without shards, all of them.
    pub fn shard(&self, i: usize) -> &Arc<EncodedType> {
        if self.shards.is_empty() {
            &self.service_entries
        } else {
            &self.shards[i]
        }
    }

    /// The typed ServiceEntries behind `service_entries`, for debug views. Not kept in memory
    /// (at 10,000 services they take several times the encoded size): translated again from the
    /// model, which gives the same entries because translation is deterministic.
    pub fn translation(&self) -> Translation {
        let mut t = translate::translate(&self.model, &self.options);
        crate::appmesh::translate::apply_port_protocols(&mut t.entries, &self.appmesh.port_protocols);
        t
    }
}

/// A build that encoded at least this many entries returns the memory it freed (see
/// [`crate::util::return_freed_memory`]).
const TRIM_AFTER_ENCODED: usize = 1000;

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
    (crate::proto::frame_resource(&any), version)
}

/// Translation options, replaced when the mapping file changes.
pub type OptionsRx = watch::Receiver<Arc<translate::Options>>;

/// Options that never change.
pub fn fixed_options(opts: translate::Options) -> OptionsRx {
    watch::channel(Arc::new(opts)).1
}
pub type ResourceTx = watch::Sender<Option<Arc<ResourceSnapshot>>>;
pub type ResourceRx = watch::Receiver<Option<Arc<ResourceSnapshot>>>;

/// Watches model snapshots, builds resource snapshots and publishes them. Logs what changed.
/// Returns when the source is gone.
///
/// The builds run on a thread of their own, not on the async runtime: a build of a large registry
/// is long CPU work (hundreds of milliseconds at 10,000 services) that would otherwise hold one of
/// the runtime's few worker threads away from the streams; and with every build allocating from one
/// thread, glibc's malloc reuses that thread's arena instead of spreading each generation of
/// resources over per-thread arenas (which tripled peak RSS in `cargo bench --bench scale`).
///
/// `options` carries new translation options (a mapping file edit); the current model is built
/// again with them.
pub async fn run(
    mut model_rx: SnapshotRx,
    mut options: OptionsRx,
    mut cache: ResourceCache,
    tx: ResourceTx,
    metrics: Arc<Metrics>,
) {
    let handle = tokio::runtime::Handle::current();
    let mut appmesh_rx = cache.appmesh_rx();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let builder = move || {
        loop {
            cache.set_options(options.borrow_and_update().clone());
            if let Some(rx) = appmesh_rx.as_mut() {
                cache.set_appmesh(rx.borrow_and_update().clone());
            }
            let model = model_rx.borrow_and_update().clone();
            if let Some(model) = model {
                // A bug in translation must not stop every future update: the last good snapshot
                // stays served, the failure is logged and counted, and the next model is built
                // from scratch.
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish(&mut cache, &model, &tx, &metrics)));
                if built.is_err() {
                    metrics.build_failures.inc();
                    tracing::error!(
                        services = model.service_count(),
                        "building the ServiceEntry snapshot panicked (a bug: please report it with this log); still serving the last good snapshot"
                    );
                }
            }
            // Waiting on a watch channel needs no I/O or timer driver: fine from outside the runtime.
            let changed = handle.block_on(async {
                tokio::select! {
                    r = model_rx.changed() => r.is_ok(),
                    // Options that can no longer change: keep building models.
                    r = options.changed(), if options.has_changed().is_ok() => r.is_ok() || model_rx.changed().await.is_ok(),
                    r = async { appmesh_rx.as_mut().expect("guarded").changed().await }, if appmesh_rx.as_ref().is_some_and(|rx| rx.has_changed().is_ok()) => {
                        r.is_ok() || model_rx.changed().await.is_ok()
                    }
                }
            });
            if !changed {
                break;
            }
        }
        drop(done_tx);
    };
    if let Err(e) = std::thread::Builder::new().name("cache-builder".into()).spawn(builder) {
        tracing::error!(error = %e, "cannot start the snapshot builder thread");
        return;
    }
    let _ = done_rx.await;
}

/// Builds one snapshot from `model` and publishes it.
pub fn publish(cache: &mut ResourceCache, model: &Arc<model::Snapshot>, tx: &ResourceTx, metrics: &Metrics) {
    let started = Instant::now();
    let patched_before = cache.patched;
    let (snap, encoded) = cache.build(model);
    let build = if cache.patched > patched_before { "patch" } else { "full" };
    metrics.translate_seconds.observe(started.elapsed().as_secs_f64());
    metrics.snapshots_built.inc();
    let se = &snap.service_entries;
    metrics.resources.set(se.names.len() as i64);
    metrics.resource_bytes.set(se.resources_len as i64);
    for i in 0..snap.shard_count() {
        let shard = snap.shard(i);
        Metrics::by_shard(&metrics.shard_resources, i).set(shard.names.len() as i64);
        Metrics::by_shard(&metrics.shard_resource_bytes, i).set(shard.resources_len as i64);
    }
    metrics.rejected_services.set(snap.rejected.len() as i64);
    for o in [AmOutcome::Translated, AmOutcome::Approximated, AmOutcome::Dropped] {
        metrics.appmesh_objects.get_or_create(&vec![("outcome", o.as_str().to_string())]).set(snap.appmesh.count(o) as i64);
    }
    metrics.skipped_instances.set(snap.notes.iter().filter(|n| n.kind == NoteKind::SkippedInstance).count() as i64);
    metrics.ignored_overrides.set(snap.notes.iter().filter(|n| n.kind == NoteKind::Override).count() as i64);
    metrics.dropped_hosts.set(snap.notes.iter().filter(|n| n.kind == NoteKind::Host).count() as i64);
    metrics.vips.set(snap.vips.len() as i64);
    metrics.vip_collisions.set(snap.vip_collisions as i64);
    metrics.ready.set(1);

    let prev = tx.borrow().clone();
    log_changes(prev.as_deref(), &snap, encoded, build, started.elapsed());
    tx.send_replace(Some(Arc::new(snap)));
    if encoded >= TRIM_AFTER_ENCODED {
        // A full build's typed entries and encoding buffers are freed by now: without this they
        // stay resident in this thread's arena (measured: ~70 MB after the first build at 10k × 10).
        // After the snapshot is out, so that it never waits for the trim.
        drop(prev);
        crate::util::return_freed_memory();
    }
}

fn log_changes(
    prev: Option<&ResourceSnapshot>,
    next: &ResourceSnapshot,
    encoded: usize,
    build: &str,
    took: std::time::Duration,
) {
    // Both lists are sorted by name: one merge walk.
    let old: &[(Arc<str>, Arc<str>)] = prev.map(|p| p.service_entries.names.as_slice()).unwrap_or_default();
    let new = next.service_entries.names.as_slice();
    let (mut added, mut updated, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            // Names and versions that did not change are the same `Arc`s: compared by pointer first.
            (Some(o), Some(n)) if Arc::ptr_eq(&o.0, &n.0) || o.0 == n.0 => {
                if !Arc::ptr_eq(&o.1, &n.1) && o.1 != n.1 {
                    updated.push(&*n.0);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                removed.push(&*o.0);
                i += 1;
            }
            (Some(o), None) => {
                removed.push(&*o.0);
                i += 1;
            }
            (_, Some(n)) => {
                added.push(&*n.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    let changed = prev.is_none_or(|p| p.service_entries.version != next.service_entries.version);
    if changed {
        let shards = shard::changed(prev, next);
        tracing::info!(
            version = %next.service_entries.version,
            shards_changed = ?shards,
            serviceentries = next.service_entries.names.len(),
            added = added.len(),
            updated = updated.len(),
            removed = removed.len(),
            encoded,
            build,
            took_ms = took.as_secs_f64() * 1000.0,
            "serving new ServiceEntry snapshot"
        );
        for (what, list) in [("added", &added), ("updated", &updated), ("removed", &removed)] {
            for n in list.iter().take(20) {
                tracing::debug!(resource = n, "ServiceEntry {what}");
            }
        }
    }
    let old_rejected = prev.map(|p| p.rejected.as_slice()).unwrap_or_default();
    for r in next.rejected.iter() {
        if !old_rejected.contains(r) {
            tracing::warn!(service = %Escaped(&r.source.to_string()), reason = %Escaped(&r.reason), "Cloud Map service left out: its ServiceEntry would be invalid");
        }
    }
    let old_notes = prev.map(|p| p.notes.as_slice()).unwrap_or_default();
    for n in next.notes.iter() {
        if !old_notes.contains(n) {
            tracing::warn!(
                service = %Escaped(&n.source.to_string()),
                instance = %Escaped(n.instance.as_deref().unwrap_or("-")),
                "{}",
                Escaped(&n.message)
            );
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

