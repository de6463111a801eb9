//! [`ResourceCache`]: model snapshots to resource snapshots, translating and encoding only what
//! changed.
//!
//! Two paths give the same result (the tests hold every build to a fresh translation):
//! - **patch**: the same services as last time, in the same namespaces, and every changed one
//!   still served under the same name, host, creation time and VIP wish with the same notes.
//!   Nothing that crosses services (host collisions, order, VIPs, rejections) can have moved (the
//!   VIPs are a function of the hosts that want one and their creation times), so the last output
//!   is copied with the changed entries' bytes put in. This is the common case, an ECS task starting or stopping,
//!   and its cost is one pointer comparison per service plus the changed entries' encoding.
//! - **full**: anything else (a service came or went, a host or name changed, new options). Each
//!   service's outcome is still reused when it did not change; the cross-service passes run over
//!   everything.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{encode_entry, EncodedType, ResourceSnapshot};
use crate::model;
use crate::model::Timestamp;
use crate::translate::{self, CollisionCandidate, Note, Rejection, ServiceEntry, ServiceRef};

/// One service's part of a build: its encoded ServiceEntry (before host collisions are resolved)
/// or the reason it has none, and notes on what was left out.
#[derive(Debug)]
pub(super) struct Outcome {
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
    /// The entry's other hosts, as translated (before the cross-service pass).
    extras: Vec<String>,
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
    /// The extra hosts left out of `framed` (lost to other services in the build that encoded it).
    encoded_dropped: Vec<String>,
}

impl Built {
    fn namespace(&self) -> &str {
        &self.resource_name[..self.namespace_len]
    }

    /// This entry encoded from `se`, a translation of the same service under the same name and
    /// host, with the VIPs its host holds in `vips` if it wants one, and without the extra hosts
    /// `dropped` (lost to other services).
    fn encoded_from(&self, mut se: ServiceEntry, vips: &translate::Allocation, dropped: &[String]) -> Built {
        se.spec.hosts.retain(|h| !dropped.contains(h));
        let held = if self.wants_vip {
            se.spec.addresses = translate::vip_addresses(vips, &self.host);
            vips.get(self.host.as_str()).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (framed, version) = encode_entry(&se);
        Built {
            resource_name: self.resource_name.clone(),
            namespace_len: self.namespace_len,
            object_name: self.object_name.clone(),
            host: self.host.clone(),
            extras: self.extras.clone(),
            create_time: self.create_time,
            source: self.source.clone(),
            framed,
            version: version.into(),
            wants_vip: self.wants_vip,
            encoded_vip: Some(held),
            encoded_dropped: dropped.to_vec(),
        }
    }
}

/// A candidate of the collision pass: a service whose translation succeeded, with its place in
/// the memo and in the model.
struct Kept<'m> {
    outcome: Arc<Outcome>,
    memo_index: usize,
    /// Extra hosts it loses to other services ([`translate::hosts::drop_contested_hosts`]).
    dropped: Vec<String>,
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
    fn extra_hosts(&self) -> &[String] {
        &self.built().extras
    }
}

/// Builds [`ResourceSnapshot`]s incrementally: a service whose namespace and data are unchanged
/// since the previous build is neither translated nor encoded again; only the cheap cross-service
/// pass (host collisions, ordering, the version hash) runs over everything. The result is always
/// exactly what a fresh [`translate::translate`] + [`encode_entry`] of the whole model gives.
pub struct ResourceCache {
    pub(super) opts: Arc<translate::Options>,
    /// The VIPs of the last build.
    pub(super) vips: Arc<translate::Allocation>,
    /// What they were allocated from: the hosts that wanted one with their services' creation
    /// times, sorted. The same input gives the same allocation, which is then kept (not rebuilt).
    vip_input: Vec<(String, Timestamp)>,
    /// The last allocation's collision count and the hosts it left without an address.
    vip_collisions: usize,
    vip_exhausted: Vec<String>,
    /// The model of the last build (shared with its snapshot and the source, not copied).
    pub(super) prev_model: Option<Arc<model::Snapshot>>,
    /// What each service of `prev_model` produced, in its order.
    pub(super) memo: Vec<Arc<Outcome>>,
    /// What the last build served, for the patch path; `None` after a build that panicked or
    /// new options.
    served: Option<Served>,
    serial: u64,
    empty: Arc<EncodedType>,
    /// How many builds took the patch path (for tests and the benchmark's reading).
    pub(super) patched: u64,
    /// Splits the served entries into `--shards` (see `cache::shard`).
    pub(super) sharding: super::shard::Sharding,
    /// The App Mesh model served next to the ServiceEntries (`None`: none configured).
    appmesh: Option<Arc<crate::appmesh::model::AppMesh>>,
    appmesh_rx: Option<super::AppMeshRx>,
}

/// What the last build served, beyond the memo: enough to repeat its cross-service decisions.
struct Served {
    /// For each memo entry, its position in `service_entries` ([`NOT_SERVED`]: rejected, or lost a
    /// host collision).
    position: Vec<u32>,
    service_entries: Arc<EncodedType>,
    rejected: Arc<Vec<Rejection>>,
    notes: Arc<Vec<Note>>,
    vip_collisions: usize,
}

const NOT_SERVED: u32 = u32::MAX;

impl ResourceCache {
    pub fn new(opts: translate::Options) -> Self {
        ResourceCache {
            opts: Arc::new(opts),
            vips: Arc::new(translate::Allocation::new()),
            vip_input: Vec::new(),
            vip_collisions: 0,
            vip_exhausted: Vec::new(),
            prev_model: None,
            memo: Vec::new(),
            served: None,
            serial: 0,
            empty: Arc::new(EncodedType::empty()),
            patched: 0,
            sharding: super::shard::Sharding::new(1),
            appmesh: None,
            appmesh_rx: None,
        }
    }

    /// Serves the Istio routing of the App Mesh model `rx` carries next to the ServiceEntries
    /// (see [`super::appmesh`]); [`super::run`] rebuilds when it changes.
    pub fn with_appmesh(mut self, rx: super::AppMeshRx) -> Self {
        self.appmesh = Some(rx.borrow().clone());
        self.appmesh_rx = Some(rx);
        self
    }

    pub(super) fn appmesh_rx(&self) -> Option<super::AppMeshRx> {
        self.appmesh_rx.clone()
    }

    /// A new App Mesh model: the next build translates it (the ServiceEntries' memo stays).
    pub fn set_appmesh(&mut self, mesh: Arc<crate::appmesh::model::AppMesh>) {
        self.appmesh = Some(mesh);
    }

    pub fn options(&self) -> &translate::Options {
        &self.opts
    }

    /// New options (a mapping file edit): the next build translates every service again and
    /// allocates the VIPs again (the ranges may have changed).
    pub fn set_options(&mut self, opts: Arc<translate::Options>) {
        if *opts != *self.opts {
            self.opts = opts;
            self.memo.clear();
            self.prev_model = None;
            self.served = None;
            self.vip_input.clear();
            self.vip_exhausted.clear();
            self.vips = Arc::new(translate::Allocation::new());
        }
    }

    /// Translates and encodes `model`. Returns the snapshot and how many entries were (re)encoded.
    pub fn build(&mut self, model: &Arc<model::Snapshot>) -> (ResourceSnapshot, usize) {
        if let Some(patched) = self.patch(model) {
            self.patched += 1;
            return patched;
        }
        self.full_build(model)
    }

    /// The full path (see the module doc).
    fn full_build(&mut self, model: &Arc<model::Snapshot>) -> (ResourceSnapshot, usize) {
        // The previous model's services, in the order `memo` follows. Models come in canonical
        // order (sorted by namespace and service name), so one forward walk pairs each service
        // with its previous version. A service's outcome depends only on its namespace, itself and
        // the options, so it is reused whenever those are equal (an unchanged `Arc` is equal).
        // Taken out, so that a build that panics leaves a cache that simply builds from scratch.
        let prev_model = self.prev_model.take();
        let old_memo = std::mem::take(&mut self.memo);
        self.served = None;
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
                                extras: se.spec.hosts[1..].to_vec(),
                                encoded_dropped: Vec::new(),
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
                    Ok(_) => candidates.push(Kept {
                        outcome: outcome.clone(),
                        memo_index: memo.len(),
                        dropped: Vec::new(),
                        ns,
                        svc,
                    }),
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
        let dropped = translate::hosts::drop_contested_hosts(&kept, &mut notes);
        for (k, d) in kept.iter_mut().zip(dropped) {
            k.dropped = d;
        }
        translate::sort_by_resource_name(&mut kept, |k| (k.built().namespace(), k.built().object_name.as_str()));

        // VIPs across all kept entries; an entry is (re)encoded only when its VIP is new to it.
        // The allocation is a function of the hosts that want one and their creation times: when
        // those are what the last allocation was made from, it is kept as it is (shared, not
        // rebuilt) and this pass allocates nothing per entry. At 10,000 services it ran on every
        // build, and its tens of thousands of small allocations, each taking a malloc arena lock
        // that the runtime's threads (the poller's calls) hold too, made a build after a single
        // change wait 100 ms and more for those locks on 2 busy cores.
        let mut vip_hosts: Vec<(&str, Timestamp)> =
            kept.iter().filter(|k| k.built().wants_vip).map(|k| (k.built().host.as_str(), k.built().create_time)).collect();
        vip_hosts.sort_unstable();
        vip_hosts.dedup();
        let same_input = self.vip_input.len() == vip_hosts.len()
            && self.vip_input.iter().zip(&vip_hosts).all(|((h, t), (h2, t2))| h == h2 && t == t2);
        if !same_input {
            let a = translate::vip::allocate(vip_hosts.iter().map(|(h, t)| (*t, *h)), &self.opts.vips.cidrs);
            self.vip_input = vip_hosts.iter().map(|(h, t)| (h.to_string(), *t)).collect();
            self.vips = Arc::new(a.addresses);
            self.vip_collisions = a.collisions;
            self.vip_exhausted = a.exhausted;
        }
        drop(vip_hosts);
        let vips = self.vips.clone();
        // Also (re)encoded: an entry whose extra hosts lost to other services differ from those
        // left out of its bytes.
        for k in kept.iter_mut() {
            let b = k.built();
            let held: &[IpAddr] =
                if b.wants_vip { vips.get(b.host.as_str()).map(Vec::as_slice).unwrap_or_default() } else { &[] };
            if b.encoded_vip.as_deref() == Some(held) && b.encoded_dropped == k.dropped {
                continue;
            }
            let se = translate::translate_service(k.ns, k.svc, &self.opts).0.expect("translated before");
            encoded += 1;
            let built = k.built().encoded_from(se, &vips, &k.dropped);
            k.outcome = Arc::new(Outcome { entry: Ok(built), notes: k.outcome.notes.clone() });
            memo[k.memo_index] = k.outcome.clone();
        }
        notes.extend(translate::vip_notes(&self.vip_exhausted, &kept));
        rejected.sort();
        notes.sort();
        let mut resources = Vec::with_capacity(kept.len());
        let mut names = Vec::with_capacity(kept.len());
        let mut position = vec![NOT_SERVED; memo.len()];
        for (i, k) in kept.iter().enumerate() {
            let b = k.built();
            resources.push(b.framed.clone());
            names.push((b.resource_name.clone(), b.version.clone()));
            position[k.memo_index] = i as u32;
        }
        drop(kept);
        self.memo = memo;
        let served = Served {
            position,
            service_entries: Arc::new(EncodedType::new(resources, names)),
            rejected: Arc::new(rejected),
            notes: Arc::new(notes),
            vip_collisions: self.vip_collisions,
        };
        (self.commit(model, served), encoded)
    }

    /// The patch path (see the module doc); `None` when only a full build is exact. Changes
    /// nothing before it knows it applies (nor if a translation panics).
    fn patch(&mut self, model: &Arc<model::Snapshot>) -> Option<(ResourceSnapshot, usize)> {
        let prev = self.prev_model.as_ref()?;
        let served = self.served.as_ref()?;
        if prev.namespaces.len() != model.namespaces.len() || served.position.len() != self.memo.len() {
            return None;
        }
        // The services whose data changed: (memo index, new outcome).
        let mut changed: Vec<(usize, Arc<Outcome>)> = Vec::new();
        let mut at = 0;
        for (pns, ns) in prev.namespaces.iter().zip(&model.namespaces) {
            if pns.services.len() != ns.services.len() || !same_namespace(pns, ns) {
                return None;
            }
            for (psvc, svc) in pns.services.iter().zip(&ns.services) {
                let i = at;
                at += 1;
                if Arc::ptr_eq(psvc, svc) {
                    continue;
                }
                if psvc.name != svc.name {
                    return None;
                }
                if psvc.as_ref() == svc.as_ref() {
                    continue;
                }
                let old = self.memo.get(i)?;
                let new = self.outcome_in_place(ns, svc, old)?;
                changed.push((i, Arc::new(new)));
            }
        }
        if at != self.memo.len() {
            return None;
        }
        let encoded = changed.len();
        let mut resources = served.service_entries.resources.clone();
        let mut names = served.service_entries.names.clone();
        for (i, outcome) in &changed {
            let pos = served.position[*i];
            if pos != NOT_SERVED {
                let b = outcome.entry.as_ref().expect("in-place outcomes are entries");
                resources[pos as usize] = b.framed.clone();
                names[pos as usize].1 = b.version.clone();
            }
        }
        let service_entries =
            if changed.is_empty() { served.service_entries.clone() } else { Arc::new(EncodedType::new(resources, names)) };
        let served = Served {
            position: served.position.clone(),
            service_entries,
            rejected: served.rejected.clone(),
            notes: served.notes.clone(),
            vip_collisions: served.vip_collisions,
        };
        for (i, outcome) in changed {
            self.memo[i] = outcome;
        }
        // The VIP pass would have the same input, so `self.vips` as it is.
        Some((self.commit(model, served), encoded))
    }

    /// The new outcome of a changed service if it can take `old`'s place without moving any
    /// cross-service decision: both served entries under the same name, host, creation time and
    /// VIP wish, with the same notes. Encoded with the VIPs its host holds (kept as they are: the
    /// hosts that want one and their creation times are the same).
    fn outcome_in_place(&self, ns: &model::Namespace, svc: &model::Service, old: &Outcome) -> Option<Outcome> {
        let was = old.entry.as_ref().ok()?;
        let (result, notes) = translate::translate_service(ns, svc, &self.opts);
        let se = result.ok()?;
        let same = notes == old.notes
            && *was.resource_name == se.resource_name()
            && was.object_name == se.name
            && was.host == se.spec.hosts[0]
            && was.extras[..] == se.spec.hosts[1..]
            && was.create_time == se.create_time
            && was.source == se.source
            && was.wants_vip == se.wants_vip;
        if !same {
            return None;
        }
        // Its extra hosts are the same, so it loses the same ones as in the last build.
        let entry = was.encoded_from(se, &self.vips, &was.encoded_dropped);
        Some(Outcome { entry: Ok(entry), notes })
    }

    /// Makes `served` the last build's output for `model` and returns its snapshot.
    fn commit(&mut self, model: &Arc<model::Snapshot>, served: Served) -> ResourceSnapshot {
        self.prev_model = Some(model.clone());
        self.serial += 1;
        let snap = ResourceSnapshot {
            serial: self.serial,
            published_at: Instant::now(),
            shards: self.sharding.split(&served.service_entries),
            service_entries: served.service_entries.clone(),
            empty: self.empty.clone(),
            model: model.clone(),
            options: self.opts.clone(),
            vips: self.vips.clone(),
            vip_collisions: served.vip_collisions,
            rejected: served.rejected.clone(),
            notes: served.notes.clone(),
            model_services: model.service_count(),
            model_instances: model.instance_count(),
            appmesh: Default::default(),
        };
        self.served = Some(served);
        let mut snap = snap;
        if let Some(mesh) = self.appmesh.as_ref().filter(|m| !m.is_empty()) {
            super::appmesh::apply(mesh, &mut snap);
        }
        snap
    }
}

fn built_placeholder() -> (Bytes, String, Option<Vec<IpAddr>>) {
    (Bytes::new(), String::new(), None)
}

/// Whether two namespaces are the same input to the translation of their services.
fn same_namespace(a: &model::Namespace, b: &model::Namespace) -> bool {
    a.name == b.name && a.id == b.id && a.arn == b.arn && a.kind == b.kind && a.http_name == b.http_name
}
