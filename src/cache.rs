//! Resource cache: turns model snapshots into pre-encoded, versioned resources shared by every stream.
//!
//! Each ServiceEntry is encoded once, as the framed bytes of one `DiscoveryResponse.resources` entry
//! (`Any{istio.mcp.v1alpha1.Resource{metadata, body: Any{ServiceEntry}}}`); entries that did not
//! change since the previous snapshot reuse their bytes. Streams write those bytes straight into the
//! gRPC frame (see `xds::codec`), so a push to N clients encodes nothing N times.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model;
use crate::model::Timestamp;
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::{MCP_RESOURCE_TYPE_URL, SERVICE_ENTRY_BODY_TYPE_URL};
use crate::source::SnapshotRx;
use crate::translate::{
    self, CollisionCandidate, Location, Note, NoteKind, Rejection, Resolution, ServiceEntry, ServiceRef, Translation,
};
use crate::util::Escaped;

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
    /// `(resource name, metadata.version)`, sorted by name. Shared with the builder's memo: a
    /// build copies a pointer per entry, not two strings.
    pub names: Vec<(Arc<str>, Arc<str>)>,
}

impl EncodedType {
    fn new(resources: Vec<Bytes>, names: Vec<(Arc<str>, Arc<str>)>) -> Self {
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
    /// The model snapshot this was built from (shared with the source, not copied).
    pub model: Arc<model::Snapshot>,
    /// The options it was translated with.
    pub options: Arc<translate::Options>,
    /// The VIPs it serves (by host): what [`Self::translation`] keeps.
    pub vips: Arc<translate::Allocation>,
    /// Entries whose VIP is not their host's hash address.
    pub vip_collisions: usize,
    /// Services that produced no ServiceEntry, and why (sorted).
    pub rejected: Arc<Vec<Rejection>>,
    /// What was left out of emitted ServiceEntries (sorted).
    pub notes: Arc<Vec<Note>>,
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

    /// The typed ServiceEntries behind `service_entries`, for debug views. Not kept in memory
    /// (at 10,000 services they take several times the encoded size): translated again from the
    /// model, which gives the same entries because translation is deterministic.
    pub fn translation(&self) -> Translation {
        translate::translate_with(&self.model, &self.options, &self.vips)
    }
}

/// One service's part of a build: its encoded ServiceEntry (before host collisions are resolved)
/// or the reason it has none, and notes on what was left out.
#[derive(Debug)]
struct Outcome {
    entry: Result<Built, String>,
    notes: Vec<Note>,
}

/// A translated and encoded ServiceEntry.
#[derive(Debug)]
struct Built {
    /// `<namespace>/<object name>`.
    resource_name: Arc<str>,
    /// The Istio namespace (the head of `resource_name`).
    namespace_len: usize,
    object_name: String,
    host: String,
    create_time: Timestamp,
    source: ServiceRef,
    /// The framed `resources` field (empty until encoded: an entry that wants a VIP is encoded
    /// once its VIP is known).
    framed: Bytes,
    /// `metadata.version`.
    version: Arc<str>,
    wants_vip: bool,
    /// The VIPs `framed` was encoded with; `None`: not encoded yet.
    encoded_vip: Option<Vec<IpAddr>>,
}

impl Built {
    fn namespace(&self) -> &str {
        &self.resource_name[..self.namespace_len]
    }
}

/// A candidate of the collision pass: a service whose translation succeeded, with its place in
/// the memo and in the model.
struct Kept<'m> {
    outcome: Arc<Outcome>,
    memo_index: usize,
    ns: &'m model::Namespace,
    svc: &'m model::Service,
}

impl Kept<'_> {
    fn built(&self) -> &Built {
        self.outcome.entry.as_ref().expect("only successful translations are candidates")
    }
}

impl CollisionCandidate for Kept<'_> {
    fn object_name(&self) -> &str {
        &self.built().object_name
    }
    fn create_time(&self) -> Timestamp {
        self.built().create_time
    }
    fn source(&self) -> &ServiceRef {
        &self.built().source
    }
    fn host(&self) -> &str {
        &self.built().host
    }
}

/// Builds [`ResourceSnapshot`]s incrementally: a service whose namespace and data are unchanged
/// since the previous build is neither translated nor encoded again; only the cheap cross-service
/// pass (host collisions, ordering, the version hash) runs over everything. The result is always
/// exactly what a fresh [`translate::translate`] + [`encode_entry`] of the whole model gives.
pub struct ResourceCache {
    opts: Arc<translate::Options>,
    /// The VIPs of the last build: kept by their hosts in the next one.
    vips: Arc<translate::Allocation>,
    /// The model of the last build (shared with its snapshot and the source, not copied).
    prev_model: Option<Arc<model::Snapshot>>,
    /// What each service of `prev_model` produced, in its order.
    memo: Vec<Arc<Outcome>>,
    serial: u64,
    empty: Arc<EncodedType>,
}

impl ResourceCache {
    pub fn new(opts: translate::Options) -> Self {
        ResourceCache {
            opts: Arc::new(opts),
            vips: Arc::new(translate::Allocation::new()),
            prev_model: None,
            memo: Vec::new(),
            serial: 0,
            empty: Arc::new(EncodedType::empty()),
        }
    }

    pub fn options(&self) -> &translate::Options {
        &self.opts
    }

    /// New options (a mapping file edit): the next build translates every service again. VIPs
    /// are kept: hosts that stay keep their addresses.
    pub fn set_options(&mut self, opts: Arc<translate::Options>) {
        if *opts != *self.opts {
            self.opts = opts;
            self.memo.clear();
            self.prev_model = None;
        }
    }

    /// Translates and encodes `model`. Returns the snapshot and how many entries were (re)encoded.
    pub fn build(&mut self, model: &Arc<model::Snapshot>) -> (ResourceSnapshot, usize) {
        // The previous model's services, in the order `memo` follows. Models come in canonical
        // order (sorted by namespace and service name), so one forward walk pairs each service
        // with its previous version. A service's outcome depends only on its namespace, itself and
        // the options, so it is reused whenever those are equal (an unchanged `Arc` is equal).
        // Taken out, so that a build that panics leaves a cache that simply builds from scratch.
        let prev_model = self.prev_model.take();
        let old_memo = std::mem::take(&mut self.memo);
        let prev: Vec<(&model::Namespace, &Arc<model::Service>)> = match &prev_model {
            Some(pm) => pm.namespaces.iter().flat_map(|ns| ns.services.iter().map(move |s| (ns, s))).collect(),
            None => Vec::new(),
        };
        let prev = if prev.len() == old_memo.len() { prev } else { Vec::new() };
        let mut memo = Vec::with_capacity(model.service_count());
        let mut candidates = Vec::with_capacity(model.service_count());
        let mut rejected = Vec::new();
        let mut notes = Vec::new();
        let mut encoded = 0;
        let mut j = 0;
        for ns in &model.namespaces {
            for svc in &ns.services {
                let key = (ns.name.as_str(), svc.name.as_str());
                while j < prev.len() && (prev[j].0.name.as_str(), prev[j].1.name.as_str()) < key {
                    j += 1;
                }
                let reuse = prev.get(j).filter(|(pns, psvc)| {
                    (pns.name.as_str(), psvc.name.as_str()) == key
                        && same_namespace(pns, ns)
                        && (Arc::ptr_eq(psvc, svc) || psvc.as_ref() == svc.as_ref())
                });
                let outcome = match reuse {
                    Some(_) => {
                        j += 1;
                        old_memo[j - 1].clone()
                    }
                    None => {
                        let (result, notes) = translate::translate_service(ns, svc, &self.opts);
                        let entry = result.map(|se| {
                            // An entry that wants a VIP is encoded once its VIP is known (below),
                            // from a second translation: keeping every typed entry until then held
                            // the whole registry a second time, as protobuf structs, during a first
                            // build (about 75 MB at 10k services × 10 instances).
                            let (framed, version, encoded_vip) = if se.wants_vip {
                                built_placeholder()
                            } else {
                                encoded += 1;
                                let (f, v) = encode_entry(&se);
                                (f, v, Some(Vec::new()))
                            };
                            Built {
                                resource_name: se.resource_name().into(),
                                namespace_len: se.namespace.len(),
                                wants_vip: se.wants_vip,
                                encoded_vip,
                                host: se.spec.hosts[0].clone(),
                                object_name: se.name,
                                create_time: se.create_time,
                                source: se.source,
                                framed,
                                version: version.into(),
                            }
                        });
                        Arc::new(Outcome { entry, notes })
                    }
                };
                notes.extend(outcome.notes.iter().cloned());
                match &outcome.entry {
                    Ok(_) => candidates.push(Kept { outcome: outcome.clone(), memo_index: memo.len(), ns, svc }),
                    Err(reason) => {
                        rejected.push(Rejection { source: translate::source_of(ns, svc), reason: reason.clone() })
                    }
                }
                memo.push(outcome);
            }
        }
        drop(prev);
        drop(old_memo);
        drop(prev_model);
        let mut kept = translate::resolve_collisions(candidates, &mut rejected);
        translate::sort_by_resource_name(&mut kept, |k| (k.built().namespace(), k.built().object_name.as_str()));

        // VIPs across all kept entries; an entry is (re)encoded only when its VIP is new to it.
        // When no host came or went, the previous allocation is kept as it is (shared, not
        // rebuilt): this pass then allocates nothing per entry. At 10,000 services it ran on
        // every build, and its tens of thousands of small allocations, each taking a malloc arena
        // lock that the runtime's threads (the poller's calls) hold too, made a build after a
        // single change wait 100 ms and more for those locks on 2 busy cores.
        let mut vip_hosts: Vec<&str> = kept.iter().filter(|k| k.built().wants_vip).map(|k| k.built().host.as_str()).collect();
        vip_hosts.sort_unstable();
        vip_hosts.dedup();
        let (vips, vip_collisions, exhausted) = match translate::vip::unchanged(&vip_hosts, &self.opts.vips.cidrs, &self.vips) {
            Some(collisions) => (self.vips.clone(), collisions, Vec::new()),
            None => {
                let a = translate::vip::allocate(vip_hosts, &self.opts.vips.cidrs, &self.vips);
                (Arc::new(a.addresses), a.collisions, a.exhausted)
            }
        };
        for k in kept.iter_mut().filter(|k| k.built().wants_vip) {
            let held: &[IpAddr] = vips.get(k.built().host.as_str()).map(Vec::as_slice).unwrap_or_default();
            if k.built().encoded_vip.as_deref() == Some(held) {
                continue;
            }
            let mut se = translate::translate_service(k.ns, k.svc, &self.opts).0.expect("translated before");
            se.spec.addresses = translate::vip_addresses(&vips, &k.built().host);
            encoded += 1;
            let (framed, version) = encode_entry(&se);
            let b = k.built();
            let built = Built {
                resource_name: b.resource_name.clone(),
                namespace_len: b.namespace_len,
                object_name: b.object_name.clone(),
                host: b.host.clone(),
                create_time: b.create_time,
                source: b.source.clone(),
                framed,
                version: version.into(),
                wants_vip: true,
                encoded_vip: Some(held.to_vec()),
            };
            k.outcome = Arc::new(Outcome { entry: Ok(built), notes: k.outcome.notes.clone() });
            memo[k.memo_index] = k.outcome.clone();
        }
        notes.extend(translate::vip_notes(&exhausted, &kept));
        rejected.sort();
        notes.sort();
        let mut resources = Vec::with_capacity(kept.len());
        let mut names = Vec::with_capacity(kept.len());
        for k in &kept {
            let b = k.built();
            resources.push(b.framed.clone());
            names.push((b.resource_name.clone(), b.version.clone()));
        }
        drop(kept);
        self.vips = vips;
        self.memo = memo;
        self.prev_model = Some(model.clone());
        self.serial += 1;
        let snap = ResourceSnapshot {
            serial: self.serial,
            published_at: Instant::now(),
            service_entries: Arc::new(EncodedType::new(resources, names)),
            empty: self.empty.clone(),
            model: model.clone(),
            options: self.opts.clone(),
            vips: self.vips.clone(),
            vip_collisions,
            rejected: Arc::new(rejected),
            notes: Arc::new(notes),
            model_services: model.service_count(),
            model_instances: model.instance_count(),
        };
        (snap, encoded)
    }
}

/// A build that encoded at least this many entries returns the memory it freed (see
/// [`crate::util::return_freed_memory`]).
const TRIM_AFTER_ENCODED: usize = 1000;

fn built_placeholder() -> (Bytes, String, Option<Vec<IpAddr>>) {
    (Bytes::new(), String::new(), None)
}

/// Whether two namespaces are the same input to the translation of their services.
fn same_namespace(a: &model::Namespace, b: &model::Namespace) -> bool {
    a.name == b.name && a.id == b.id && a.arn == b.arn && a.kind == b.kind && a.http_name == b.http_name
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
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let builder = move || {
        loop {
            cache.set_options(options.borrow_and_update().clone());
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
    let (snap, encoded) = cache.build(model);
    metrics.translate_seconds.observe(started.elapsed().as_secs_f64());
    metrics.snapshots_built.inc();
    let se = &snap.service_entries;
    metrics.resources.set(se.names.len() as i64);
    metrics.resource_bytes.set(se.resources_len as i64);
    metrics.rejected_services.set(snap.rejected.len() as i64);
    metrics.skipped_instances.set(snap.notes.iter().filter(|n| n.kind == NoteKind::SkippedInstance).count() as i64);
    metrics.ignored_overrides.set(snap.notes.iter().filter(|n| n.kind == NoteKind::Override).count() as i64);
    metrics.vips.set(snap.vips.len() as i64);
    metrics.vip_collisions.set(snap.vip_collisions as i64);
    metrics.ready.set(1);

    let prev = tx.borrow().clone();
    log_changes(prev.as_deref(), &snap, encoded, started.elapsed());
    tx.send_replace(Some(Arc::new(snap)));
    if encoded >= TRIM_AFTER_ENCODED {
        // A full build's typed entries and encoding buffers are freed by now: without this they
        // stay resident in this thread's arena (measured: ~70 MB after the first build at 10k × 10).
        // After the snapshot is out, so that it never waits for the trim.
        drop(prev);
        crate::util::return_freed_memory();
    }
}

fn log_changes(prev: Option<&ResourceSnapshot>, next: &ResourceSnapshot, encoded: usize, took: std::time::Duration) {
    // Both lists are sorted by name: one merge walk.
    let old: &[(Arc<str>, Arc<str>)] = prev.map(|p| p.service_entries.names.as_slice()).unwrap_or_default();
    let new = next.service_entries.names.as_slice();
    let (mut added, mut updated, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::model::{HealthStatus, Instance, Namespace, NamespaceType, Service};
    use crate::translate::Options;

    fn instance(id: &str, ip: &str) -> Instance {
        Instance {
            id: id.into(),
            attributes: BTreeMap::from([("AWS_INSTANCE_IPV4".into(), ip.into()), ("AWS_INSTANCE_PORT".into(), "8080".into())]),
            health: HealthStatus::Unknown,
        }
    }

    fn service(name: &str, created: i64, ips: &[&str]) -> Service {
        Service {
            name: name.into(),
            id: Some(format!("srv-{name}")),
            arn: None,
            create_date: Some(Timestamp { seconds: created, nanos: 0 }),
            attributes: Default::default(),
            instances: ips.iter().enumerate().map(|(i, ip)| instance(&format!("i-{i}"), ip)).collect::<Vec<_>>().into(),
        }
    }

    fn namespace(name: &str, services: Vec<Service>) -> Namespace {
        Namespace {
            name: name.into(),
            id: Some(format!("ns-{name}")),
            arn: None,
            kind: NamespaceType::Http,
            http_name: name.into(),
            services: services.into_iter().map(Arc::new).collect(),
        }
    }

    type Names = Vec<(Arc<str>, Arc<str>)>;

    /// What a from-scratch translation and encoding of `model` serves, given the VIPs served before.
    fn fresh(
        model: &model::Snapshot,
        opts: &Options,
        vips: &translate::Allocation,
    ) -> (Vec<Bytes>, Names, Translation) {
        let t = translate::translate_with(model, opts, vips);
        let (resources, versions): (Vec<Bytes>, Vec<String>) = t.entries.iter().map(encode_entry).unzip();
        let names = t.entries.iter().map(|e| e.resource_name().into()).zip(versions.into_iter().map(Into::into)).collect();
        (resources, names, t)
    }

    /// Builds `model` incrementally and checks it against a fresh translation; returns how many
    /// entries the build encoded.
    fn check(cache: &mut ResourceCache, model: &model::Snapshot) -> usize {
        let before = cache.vips.clone();
        let (snap, encoded) = cache.build(&Arc::new(model.clone()));
        let (resources, names, t) = fresh(model, cache.options(), &before);
        assert_eq!(*snap.vips, t.vips);
        assert_eq!(snap.service_entries.names, names);
        assert_eq!(snap.service_entries.resources, resources, "incremental bytes equal a fresh encoding");
        assert_eq!(*snap.rejected, t.rejected);
        assert_eq!(*snap.notes, t.notes);
        assert_eq!(snap.translation(), t);
        // A new cache (another replica) that served the same VIPs before builds the same bytes.
        let mut other = ResourceCache::new(cache.options().clone());
        other.vips = before;
        let again = other.build(&Arc::new(model.clone())).0;
        assert_eq!(snap.service_entries.version, again.service_entries.version, "version is content-only");
        encoded
    }

    #[test]
    fn incremental_builds_equal_fresh_ones_through_a_history_of_changes() {
        let seed = crate::source::file::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap();
        let mut m = seed.clone();
        m.namespaces.push(namespace(
            "team",
            vec![service("api", 100, &["10.0.0.1", "10.0.0.2"]), service("web", 200, &["10.0.1.1"]), service("db", 50, &[])],
        ));
        m.normalize();
        let mut cache = ResourceCache::new(Options::default());
        let total = translate::translate(&m, &Options::default()).entries.len();
        assert_eq!(check(&mut cache, &m), total, "first build encodes everything");
        assert_eq!(check(&mut cache, &m), 0, "an unchanged model encodes nothing");

        // One instance changes: one entry is encoded again.
        let team = m.namespaces.iter().position(|n| n.name == "team").unwrap();
        Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
            v[1].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.0.9".into());
        });
        let vips = cache.vips.clone();
        assert_eq!(check(&mut cache, &m), 1);
        assert!(!vips.is_empty() && Arc::ptr_eq(&vips, &cache.vips), "no host came or went: the VIP allocation is kept, not rebuilt");

        // A newer service colliding on a host (names differing in case) is rejected; when the older
        // one goes, the newer one is served, without being translated again.
        m.namespaces[team].services.push(Arc::new(service("API", 300, &["10.0.2.1"])));
        m.normalize();
        assert_eq!(check(&mut cache, &m), 1);
        let (snap, _) = cache.build(&Arc::new(m.clone()));
        assert!(snap.rejected.iter().any(|r| r.source.service == "API"), "{:?}", snap.rejected);
        m.namespaces[team].services.retain(|s| s.name != "api");
        assert_eq!(check(&mut cache, &m), 0, "the survivor's outcome is reused");

        // Namespace metadata is an input of every service in it.
        m.namespaces[team].id = Some("ns-team-recreated".into());
        let in_team = translate::translate(&m, &Options::default()).entries.iter().filter(|e| e.source.namespace == "team").count();
        assert!(in_team >= 2);
        assert_eq!(check(&mut cache, &m), in_team, "every entry of the namespace carries its id annotation");

        // A service that cannot be translated, then fixed.
        Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
            v[0].attributes.insert("AWS_INSTANCE_PORT".into(), "not-a-port".into());
        });
        check(&mut cache, &m);
        Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
            v[0].attributes.insert("AWS_INSTANCE_PORT".into(), "80".into());
        });
        assert_eq!(check(&mut cache, &m), 1);

        // Two namespaces of one name (the key is ambiguous): never reused, always correct.
        let mut twin = namespace("team", vec![service("web", 10, &["10.9.9.9"])]);
        twin.id = Some("ns-team-2".into());
        m.namespaces.push(twin);
        m.normalize();
        check(&mut cache, &m);
        check(&mut cache, &m);
        m.namespaces.retain(|n| n.id.as_deref() != Some("ns-team-2"));
        check(&mut cache, &m);

        // A cache whose memo does not match its previous model (as after a build that panicked
        // half-way) builds from scratch, correctly.
        cache.memo.clear();
        assert_eq!(check(&mut cache, &m), translate::translate(&m, &Options::default()).entries.len());
        cache.prev_model = None;
        check(&mut cache, &m);

        // Everything removed, then back.
        check(&mut cache, &model::Snapshot::default());
        assert_eq!(check(&mut cache, &seed), translate::translate(&seed, &Options::default()).entries.len());
    }

    #[test]
    fn vips_stay_with_their_hosts_and_cost_no_re_encoding() {
        // Six usable addresses: collisions are common, and every rule of the allocator shows.
        let vips = translate::VipSettings::new(true, vec!["241.9.0.0/29".parse().unwrap()]).unwrap();
        let opts = Options { vips, ..Options::default() };
        let mut cache = ResourceCache::new(opts.clone());
        let two = ["10.0.0.1", "10.0.0.2"];
        let mut m = model::Snapshot {
            namespaces: vec![namespace(
                "team",
                vec![service("a", 1, &two), service("b", 2, &two), service("c", 3, &two)],
            )],
        };
        assert_eq!(check(&mut cache, &m), 3);
        let first = cache.vips.clone();
        assert_eq!(first.len(), 3);

        // Two more services: only they are encoded; the others keep their VIPs.
        m.namespaces[0].services.push(Arc::new(service("d", 4, &two)));
        m.namespaces[0].services.push(Arc::new(service("e", 5, &two)));
        m.normalize();
        assert_eq!(check(&mut cache, &m), 2);
        for h in ["a.team", "b.team", "c.team"] {
            assert_eq!(cache.vips[h], first[h], "{h} kept its VIP");
        }

        // b goes: nothing is encoded again, and b's address is not handed to a newcomer in the
        // build right after (clients may still hold it).
        let b_addr = cache.vips["b.team"].clone();
        m.namespaces[0].services.retain(|s| s.name != "b");
        assert_eq!(check(&mut cache, &m), 0);
        m.namespaces[0].services.push(Arc::new(service("f", 6, &two)));
        m.normalize();
        assert_eq!(check(&mut cache, &m), 1);
        assert_ne!(cache.vips["f.team"], b_addr);
        assert_eq!(check(&mut cache, &m), 0);

        // New options (a mapping edit turning VIPs off for `a`): everything is translated again,
        // the others keep their VIPs.
        let before = cache.vips.clone();
        let mapping = translate::mapping::parse("rules:\n  - match: {service: a}\n    vip: false\n").unwrap();
        cache.set_options(Arc::new(Options { mapping: Arc::new(mapping), ..opts.clone() }));
        check(&mut cache, &m);
        assert!(!cache.vips.contains_key("a.team"));
        for h in ["c.team", "d.team", "e.team", "f.team"] {
            assert_eq!(cache.vips[h], before[h], "{h} kept its VIP across the options change");
        }
        // Same options again: nothing to do.
        cache.set_options(cache.opts.clone());
        assert_eq!(check(&mut cache, &m), 0);
    }
}
