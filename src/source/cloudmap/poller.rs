//! The poller: an in-memory view of the selected part of Cloud Map, kept fresh with few calls and
//! published as [`model::Snapshot`]s.
//!
//! - **Resync** (every `resync_interval`): ListNamespaces, ListServices per namespace (every page),
//!   GetService once per new service id (its namespace is learned from there, never from the
//!   ListServices filter, which an emulator ignores), then DiscoverInstances only for services with
//!   no data yet, re-created under a new id, or whose last call failed. Known services are kept
//!   fresh by the poll loop, not re-read at every resync.
//! - **Revision poll** (per service, spread with jitter): DiscoverInstancesRevision, and
//!   DiscoverInstances when the number moved. The interval adapts: `revision_poll_interval` after a
//!   change, doubled after each poll that saw none, up to `revision_poll_max_interval`; any change
//!   (revision moved, or instances read that differ) brings it back to the base at once. Errors
//!   leave it as it is. Max = base gives constant polling.
//! - **Refresh** (from the poll schedule): a poll whose service's instances are older than
//!   `instances_refresh_interval` reads them instead (DiscoverInstances): the revision is a hint,
//!   not proof that nothing changed. Spread like the polls, never a burst at resync time. Services
//!   with health checks are re-read every `health_refresh_interval` (health changes do not move the
//!   revision).
//!
//! Safety rules: nothing is published before the first complete sync; a failed call keeps the last
//! good data; a service is removed only when a complete listing of its namespace (or a complete
//! ListNamespaces, for a vanished namespace) no longer has it; a resync removing more than
//! `max_removal_ratio` of the served services is held until it repeats on
//! `removal_confirmations` consecutive resyncs. Services are keyed by `(namespace name, service
//! name)`, the identity of their ServiceEntry, so a service re-created under a new id is an update.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use super::attributes::{self, ServiceAttributes};
use super::budget::{backoff, doubled, jittered};
use super::client::{Api, ApiError, Discovered, ErrorKind, NamespaceInfo, ServiceMeta, ServiceSummary, DISCOVER_MAX_RESULTS};
use super::debug::{self, DebugView};
use super::metrics::CloudMapMetrics;
use super::Settings;
use crate::metrics::Metrics;
use crate::model::{self, Timestamp};
use crate::source::SnapshotTx;
use crate::util::LogLimiter;

/// `(namespace name, service name)`: the identity of a ServiceEntry.
pub(super) type SvcKey = (String, String);

/// Coalesces publications: changes arriving within this window make one snapshot.
const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(100);
/// Before the first complete sync, attempts are retried with backoff from 1 s up to this.
const FIRST_SYNC_RETRY_CAP: Duration = Duration::from_secs(30);

/// A failure kept for the debug view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ErrorRecord {
    pub at: String,
    #[serde(flatten)]
    pub error: ApiError,
}

impl ErrorRecord {
    pub(super) fn new(error: ApiError) -> Self {
        ErrorRecord { at: now_rfc3339(), error }
    }
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: 0 }.to_rfc3339()
}

fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub(super) struct NsEntry {
    pub info: NamespaceInfo,
    /// Last complete ListServices of this namespace.
    pub listed_at: Option<SystemTime>,
    pub last_error: Option<ErrorRecord>,
}

pub(super) struct SvcEntry {
    pub id: String,
    pub arn: Option<String>,
    pub create_date: Option<Timestamp>,
    pub health_checked: bool,
    /// Last good DiscoverInstances answer; `None` until the first one (not served until then).
    pub data: Option<Discovered>,
    /// Sequence number of the request behind `data` (an older answer never overwrites a newer one).
    pub loaded_seq: u64,
    pub refreshed_at: Option<SystemTime>,
    /// When `data` was last read (monotonic), to skip a revision poll right after a read.
    pub loaded_at: Option<Instant>,
    pub last_error: Option<ErrorRecord>,
    /// Last DiscoverInstancesRevision seen (compared with the next poll).
    pub revision_seen: Option<i64>,
    /// Consecutive polls that saw no change (the poll interval doubles with each, up to the max).
    pub unchanged_polls: u32,
    /// Not listed any more, kept because the mass-removal guard holds the removal.
    pub removal_held: bool,
    pub next_poll: Instant,
    pub next_health: Instant,
    /// The model form of this service in the last published snapshot, reused by the next one
    /// while nothing in it changed (snapshots then share it, and the resource cache skips it).
    pub published: Option<Arc<model::Service>>,
    /// Service-level attributes (GetServiceAttributes; see `attributes.rs`).
    pub attributes: ServiceAttributes,
}

impl SvcEntry {
    fn served(&self) -> bool {
        self.data.is_some()
    }

    /// The current revision poll interval: `base × 2^unchanged_polls`, at most the max.
    pub(super) fn poll_interval(&self, c: &Cadence) -> Duration {
        doubled(c.base, self.unchanged_polls, c.max)
    }

    /// A poll saw no change: the next one comes later.
    fn note_quiet(&mut self, c: &Cadence, now: Instant) {
        self.unchanged_polls = self.unchanged_polls.saturating_add(1);
        self.next_poll = now + jittered(self.poll_interval(c), 0.1);
    }

    /// A change: back to the base interval, starting now (a later scheduled poll is pulled in).
    fn note_change(&mut self, s: &Settings, now: Instant) {
        self.unchanged_polls = 0;
        self.next_poll = self.next_poll.min(now + jittered(s.revision_poll_interval, 0.1));
    }

    /// A call about this service succeeded: a previous error is over.
    fn clear_error(&mut self, key: &SvcKey) {
        if let Some(err) = self.last_error.take() {
            tracing::info!(namespace = %key.0, service = %key.1, previous_error = %err.error, "Cloud Map service readable again");
        }
    }

    /// A call about this service failed: the last good data is kept.
    fn record_error(&mut self, key: &SvcKey, err: ApiError) {
        let first = self.last_error.as_ref().is_none_or(|p| p.error.kind != err.kind);
        if first {
            if self.data.is_some() {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %err, "cannot read Cloud Map service; keeping its last good instances");
            } else {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %err, "cannot read Cloud Map service; not served until it can be read");
            }
        } else {
            tracing::debug!(namespace = %key.0, service = %key.1, error = %err, "cannot read Cloud Map service");
        }
        self.last_error = Some(ErrorRecord::new(err));
    }
}

/// The poll cadence in force: the settings', or the slower one while an events queue delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cadence {
    pub base: Duration,
    pub max: Duration,
    pub refresh: Duration,
}

/// Why a service's instances are read (DiscoverInstances).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Never read, re-created, or the last call failed (by a resync, or a poll of a never-read service).
    New,
    /// The polled revision moved to this.
    Revision(i64),
    /// Not read for `instances_refresh_interval`: the safety net under the revision.
    Refresh,
    /// A health-checked service's `health_refresh_interval` is up.
    Health,
    /// An event from the events queue named this service.
    Event,
}

impl Read {
    fn label(self) -> &'static str {
        match self {
            Read::New => "new",
            Read::Revision(_) => "revision",
            Read::Refresh => "refresh",
            Read::Health => "health",
            Read::Event => "event",
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResyncReport {
    pub started_at: String,
    pub took_ms: u64,
    pub complete: bool,
    pub namespaces: usize,
    pub services_listed: usize,
    pub added: usize,
    pub removed: usize,
    pub held_back_removals: usize,
    pub errors: Vec<String>,
}

#[derive(Default)]
pub(super) struct Guard {
    /// Consecutive resyncs that proposed a mass removal.
    pub consecutive: u32,
    pub pending: Vec<SvcKey>,
}

#[derive(Default)]
pub(super) struct State {
    pub synced: bool,
    pub last_complete_sync: Option<SystemTime>,
    pub namespaces: BTreeMap<String, NsEntry>,
    pub services: BTreeMap<SvcKey, SvcEntry>,
    /// Learned by GetService, by service id.
    pub meta: HashMap<String, ServiceMeta>,
    pub guard: Guard,
    pub last_resync: Option<ResyncReport>,
    /// Namespaces ignored because another selected namespace has the same name: (name, kept id, ignored id).
    pub collisions: Vec<(String, String, String)>,
    /// Whether GetServiceAttributes is denied.
    pub attributes: attributes::Access,
    seq: u64,
    pub(super) dirty: bool,
}

impl State {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The served view, in canonical order. Services that did not change since the previous call
    /// are the same `Arc`s as in the snapshot it returned.
    pub fn snapshot(&mut self) -> model::Snapshot {
        let mut namespaces = Vec::with_capacity(self.namespaces.len());
        for (name, ns) in &self.namespaces {
            let services = self
                .services
                .range_mut((name.clone(), String::new())..)
                .take_while(|((n, _), _)| n == name)
                .filter_map(|((_, svc), e)| {
                    let d = e.data.as_ref()?;
                    let current = e.published.as_ref().filter(|p| {
                        p.name == *svc
                            && p.id.as_deref() == Some(e.id.as_str())
                            && p.arn == e.arn
                            && p.create_date == e.create_date
                            && p.attributes == e.attributes.values
                            && (Arc::ptr_eq(&p.instances, &d.instances) || p.instances == d.instances)
                    });
                    let service = match current {
                        Some(p) => p.clone(),
                        None => {
                            // Sorted by the client already: then the very same allocation.
                            let instances = if d.instances.is_sorted_by(|a, b| a.id <= b.id) {
                                d.instances.clone()
                            } else {
                                let mut v = d.instances.to_vec();
                                v.sort_by(|a, b| a.id.cmp(&b.id));
                                v.into()
                            };
                            Arc::new(model::Service {
                                name: svc.clone(),
                                id: Some(e.id.clone()),
                                arn: e.arn.clone(),
                                create_date: e.create_date,
                                attributes: e.attributes.values.clone(),
                                instances,
                            })
                        }
                    };
                    e.published = Some(service.clone());
                    Some(service)
                })
                .collect();
            namespaces.push(model::Namespace {
                name: name.clone(),
                id: Some(ns.info.id.clone()),
                arn: ns.info.arn.clone(),
                kind: ns.info.kind,
                http_name: ns.info.http_name.clone(),
                services,
            });
        }
        let mut snap = model::Snapshot { namespaces };
        snap.normalize();
        snap
    }

    fn served_count(&self) -> usize {
        self.services.values().filter(|e| e.served()).count()
    }
}

/// What one resync found, before it is applied.
struct Listed {
    id: String,
    arn: Option<String>,
    create_date: Option<Timestamp>,
    health_checked: bool,
}

/// One unit of work of the revision poll loop.
struct Job {
    key: SvcKey,
    http_name: String,
    owner: Option<String>,
    /// Read instances directly (no data yet, refresh or health refresh due); else poll the revision first.
    read: Option<Read>,
    revision_seen: Option<i64>,
}

pub struct Poller {
    pub(super) api: Api,
    pub(super) settings: Settings,
    pub(super) state: Mutex<State>,
    pub(super) tx: SnapshotTx,
    pub(super) metrics: Arc<CloudMapMetrics>,
    core: Option<Arc<Metrics>>,
    publish: Notify,
    /// An events queue delivers: the slower safety-net cadence applies (`Settings::events`).
    events_active: AtomicBool,
    /// A resync asked for out of schedule (an event about the topology); rate-limited by `run`.
    resync_requested: Notify,
    /// The warning about services whose instances reach the DiscoverInstances cap.
    cap_log: LogLimiter,
}

/// Warnings a registry can cause over and over (services at the instance cap) are logged at most
/// once per this interval, with the number held back.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Resyncs asked for by events start at most this often.
const REQUESTED_RESYNC_MIN_GAP: Duration = Duration::from_secs(5);

fn describe(errors: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = errors.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if errors.len() > SHOWN {
        s.push_str(&format!("; and {} more", errors.len() - SHOWN));
    }
    s
}

impl Poller {
    pub(super) fn new(
        api: Api,
        settings: Settings,
        tx: SnapshotTx,
        metrics: Arc<CloudMapMetrics>,
        core: Option<Arc<Metrics>>,
    ) -> Self {
        Poller {
            api,
            settings,
            state: Mutex::new(State::default()),
            tx,
            metrics,
            core,
            publish: Notify::new(),
            events_active: AtomicBool::new(false),
            resync_requested: Notify::new(),
            cap_log: LogLimiter::new(WARN_EVERY),
        }
    }

    /// The revision poll cadence in force now.
    pub(super) fn cadence(&self) -> Cadence {
        let s = &self.settings;
        match &s.events {
            Some(e) if self.events_active() => Cadence {
                base: s.revision_poll_interval,
                max: e.revision_poll_max_interval,
                refresh: e.instances_refresh_interval,
            },
            _ => Cadence {
                base: s.revision_poll_interval,
                max: s.revision_poll_max_interval,
                refresh: s.instances_refresh_interval,
            },
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn concurrency(&self) -> usize {
        self.settings.budget.concurrency.max(1) as usize
    }

    /// Something changed outside the poll loop: publish (debounced).
    pub(super) fn notify_changed(&self) {
        self.publish.notify_one();
    }

    pub fn debug_view(&self) -> DebugView {
        debug::view(self)
    }

    /// The source's name ([`Settings::name`]).
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Whether the first complete sync is done.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// Runs forever (until every snapshot receiver is gone): first sync with retries, then the
    /// resync, poll and publish loops.
    pub(super) async fn run(self: Arc<Self>) {
        let mut attempt = 0u32;
        loop {
            if self.resync().await {
                break;
            }
            let wait = backoff(attempt, Duration::from_secs(1), FIRST_SYNC_RETRY_CAP);
            attempt += 1;
            let errors = self.lock().last_resync.as_ref().map(|r| describe(&r.errors)).unwrap_or_default();
            tracing::error!(
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                errors = %errors,
                "Cloud Map is not synced: nothing is served (istiod keeps waiting) until a complete sync succeeds"
            );
            if let Some(core) = &self.core {
                core.source_error("cloudmap");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.tx.closed() => return,
            }
        }
        tokio::spawn(self.clone().poll_loop().in_current_span());
        tokio::spawn(self.clone().publish_loop().in_current_span());
        tokio::spawn(self.clone().attributes_loop().in_current_span());
        // Start to start: a resync that takes long does not push the next one back.
        let mut next = Instant::now() + jittered(self.settings.resync_interval, 0.05);
        let mut started = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.resync_requested.notified() => {
                    tokio::time::sleep_until(started + REQUESTED_RESYNC_MIN_GAP).await;
                    tracing::debug!("resync asked for by an event");
                }
                _ = self.tx.closed() => return,
            }
            started = Instant::now();
            self.resync().await;
            next = started + jittered(self.settings.resync_interval, 0.05);
        }
    }

    /// One full resync. Returns whether it was complete. Publishes nothing before the first
    /// complete one; publishes at once when that one is done.
    pub(super) async fn resync(&self) -> bool {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let mut report = ResyncReport { started_at: rfc3339(started_wall), ..Default::default() };
        let complete = self.resync_inner(&mut report).await;
        report.complete = complete;
        report.took_ms = started.elapsed().as_millis() as u64;
        self.metrics.resync(complete);

        let mut st = self.lock();
        let first = complete && !st.synced;
        if complete {
            st.last_complete_sync = Some(SystemTime::now());
            self.metrics.mark_synced();
            if let Some(core) = &self.core {
                core.source_loaded("cloudmap");
            }
        }
        if first {
            st.synced = true;
            let snap = st.snapshot();
            tracing::info!(
                namespaces = snap.namespaces.len(),
                services = snap.service_count(),
                instances = snap.instance_count(),
                took_ms = report.took_ms,
                "first complete Cloud Map sync: serving"
            );
        } else if complete {
            tracing::debug!(took_ms = report.took_ms, services = report.services_listed, "Cloud Map resync complete");
        } else if st.synced {
            tracing::warn!(
                took_ms = report.took_ms,
                errors = %describe(&report.errors),
                "Cloud Map resync incomplete: keeping the last good data of what could not be read"
            );
            if let Some(core) = &self.core {
                core.source_error("cloudmap");
            }
        }
        const KEPT_ERRORS: usize = 50;
        if report.errors.len() > KEPT_ERRORS {
            let more = report.errors.len() - KEPT_ERRORS;
            report.errors.truncate(KEPT_ERRORS);
            report.errors.push(format!("... and {more} more"));
        }
        st.last_resync = Some(report);
        if st.synced {
            st.dirty = true;
            self.publish_locked(&mut st);
        }
        complete
    }

    async fn resync_inner(&self, report: &mut ResyncReport) -> bool {
        let mut complete = true;
        // 1. Namespaces.
        let all = match self.api.list_namespaces().await {
            Ok(v) => v,
            Err(e) => {
                report.errors.push(e.to_string());
                return false;
            }
        };
        let selected = self.select_namespaces(all);
        report.namespaces = selected.len();
        let by_id: HashMap<&str, &NamespaceInfo> = selected.values().map(|n| (n.id.as_str(), n)).collect();

        // 2. Services of each selected namespace, every page.
        let lists: Vec<(String, Result<Vec<ServiceSummary>, ApiError>)> =
            stream::iter(selected.values().map(|n| (n.name.clone(), n.id.clone())).collect::<Vec<_>>())
                .map(|(name, id)| async move { (name, self.api.list_services(&id).await) })
                .buffer_unordered(self.concurrency())
                .collect()
                .await;
        let mut complete_ns: HashSet<String> = HashSet::new();
        let mut summaries: BTreeMap<String, ServiceSummary> = BTreeMap::new();
        let mut ns_errors: HashMap<String, ApiError> = HashMap::new();
        for (ns, r) in lists {
            match r {
                Ok(list) => {
                    complete_ns.insert(ns);
                    for s in list {
                        summaries.entry(s.id.clone()).or_insert(s);
                    }
                }
                Err(e) => {
                    complete = false;
                    report.errors.push(format!("namespace {ns}: {e}"));
                    ns_errors.insert(ns, e);
                }
            }
        }
        let all_lists_complete = ns_errors.is_empty();

        // 3. Learn the namespace of services seen for the first time (GetService, once per id).
        let unknown: Vec<String> = {
            let st = self.lock();
            summaries
                .values()
                .filter(|s| self.settings.selection.service_name_may_match(&s.name) && !st.meta.contains_key(&s.id))
                .map(|s| s.id.clone())
                .collect()
        };
        let metas: Vec<(String, Result<ServiceMeta, ApiError>)> = stream::iter(unknown)
            .map(|id| async move {
                let r = self.api.get_service(&id).await;
                (id, r)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut placement_uncertain = false;
        {
            let mut st = self.lock();
            for (id, r) in metas {
                match r {
                    Ok(m) => {
                        st.meta.insert(id, m);
                    }
                    // Deleted between the listing and GetService: as if not listed.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        tracing::debug!(service_id = %id, "service vanished between ListServices and GetService");
                    }
                    Err(e) => {
                        if e.kind.is_transient() {
                            // Its namespace is unknown: a removal could be a service that moved here.
                            placement_uncertain = true;
                            complete = false;
                        }
                        report.errors.push(format!("service {id}: {e}"));
                    }
                }
            }
        }

        // 4. Place every listed service under its namespace and apply the selection.
        let mut listed: BTreeMap<SvcKey, Listed> = BTreeMap::new();
        {
            let st = self.lock();
            for s in summaries.values() {
                let Some(meta) = st.meta.get(&s.id) else { continue };
                let Some(ns) = by_id.get(meta.namespace_id.as_str()) else { continue };
                if !self.settings.selection.service(&ns.name, &s.name) {
                    continue;
                }
                listed.insert(
                    (ns.name.clone(), s.name.clone()),
                    Listed {
                        id: s.id.clone(),
                        arn: s.arn.clone().or_else(|| meta.arn.clone()),
                        create_date: s.create_date.or(meta.create_date),
                        health_checked: s.health_checked || meta.health_checked,
                    },
                );
            }
        }
        report.services_listed = listed.len();

        // 5. Apply the topology (additions and updates; removals come last).
        let to_discover: Vec<(SvcKey, String, Option<String>, u64)> = {
            let mut st = self.lock();
            let now_wall = SystemTime::now();
            for (name, info) in &selected {
                let e = st.namespaces.entry(name.clone()).or_insert_with(|| {
                    tracing::info!(namespace = %name, id = %info.id, kind = %info.kind, http_name = %info.http_name, "Cloud Map namespace added");
                    NsEntry { info: info.clone(), listed_at: None, last_error: None }
                });
                if e.info.id != info.id {
                    tracing::info!(namespace = %name, old_id = %e.info.id, new_id = %info.id, "Cloud Map namespace re-created");
                }
                e.info = info.clone();
                match ns_errors.get(name) {
                    Some(err) => e.last_error = Some(ErrorRecord::new(err.clone())),
                    None => {
                        e.listed_at = Some(now_wall);
                        e.last_error = None;
                    }
                }
            }
            let now = Instant::now();
            let mut jobs = Vec::new();
            for (key, l) in &listed {
                let ns = &selected[&key.0];
                let entry = st.services.entry(key.clone()).or_insert_with(|| {
                    report.added += 1;
                    SvcEntry {
                        id: l.id.clone(),
                        arn: None,
                        create_date: None,
                        health_checked: false,
                        data: None,
                        loaded_seq: 0,
                        refreshed_at: None,
                        loaded_at: None,
                        last_error: None,
                        revision_seen: None,
                        unchanged_polls: 0,
                        removal_held: false,
                        // A random place in the interval, so the polls of many services spread out.
                        next_poll: now + self.settings.revision_poll_interval.mul_f64(rand::random::<f64>()),
                        next_health: now,
                        published: None,
                        attributes: Default::default(),
                    }
                });
                let id_changed = entry.id != l.id;
                if id_changed {
                    tracing::info!(namespace = %key.0, service = %key.1, old_id = %entry.id, new_id = %l.id, "Cloud Map service re-created");
                    entry.id = l.id.clone();
                    entry.revision_seen = None;
                    entry.note_change(&self.settings, now);
                }
                entry.arn = l.arn.clone();
                entry.create_date = l.create_date;
                entry.health_checked = l.health_checked;
                if entry.removal_held {
                    tracing::info!(namespace = %key.0, service = %key.1, "service listed again: its held removal is cancelled");
                    entry.removal_held = false;
                }
                // Only what is missing, re-created, or failed last time (so that completeness below
                // reflects fresh answers); the poll loop keeps the others fresh.
                if entry.data.is_none() || id_changed || entry.last_error.is_some() {
                    jobs.push((key.clone(), ns.http_name.clone(), ns.owner.clone()));
                }
            }
            jobs.into_iter()
                .map(|(k, h, o)| {
                    let seq = st.next_seq();
                    (k, h, o, seq)
                })
                .collect()
        };

        // 6. Instances of those services. One bad service never blocks the others.
        stream::iter(to_discover)
            .map(|(key, http_name, owner, seq)| async move {
                // Attributes first, so that a new service is never published without them.
                let ((), r) = tokio::join!(
                    self.read_attributes_if_new(&key),
                    self.api.discover_instances(&http_name, &key.1, owner.as_deref())
                );
                self.apply_discovered(&key, seq, r, Read::New);
            })
            .buffer_unordered(self.concurrency())
            .for_each(|()| async {})
            .await;
        {
            let st = self.lock();
            for key in listed.keys() {
                let Some(e) = st.services.get(key) else { continue };
                if let Some(err) = &e.last_error {
                    report.errors.push(format!("service {}/{}: {}", key.0, key.1, err.error));
                    // A transient failure means "try again" (and, before the first sync, hold);
                    // a permanent one (deleted, access denied) is about that service only.
                    if err.error.kind.is_transient() {
                        complete = false;
                    }
                }
            }
        }

        // 7. Removals, only where the listing was complete, through the mass-removal guard.
        let selected_names: HashSet<&String> = selected.keys().collect();
        let mut st = self.lock();
        if placement_uncertain {
            report.errors.push("removals skipped: some new services could not be placed in a namespace".into());
        } else {
            let candidates: Vec<SvcKey> = st
                .services
                .keys()
                .filter(|k| !listed.contains_key(*k) && (complete_ns.contains(&k.0) || !selected_names.contains(&k.0)))
                .cloned()
                .collect();
            let (served, unserved): (Vec<SvcKey>, Vec<SvcKey>) =
                candidates.into_iter().partition(|k| st.services.get(k).is_some_and(|e| e.served()));
            for k in unserved {
                st.services.remove(&k);
            }
            self.apply_removals(&mut st, served, report);
        }
        // Namespaces that are gone and hold nothing any more.
        let keep: BTreeSet<String> = st.services.keys().map(|(ns, _)| ns.clone()).collect();
        st.namespaces.retain(|name, ns| {
            let kept = selected_names.contains(name) || keep.contains(name);
            if !kept {
                tracing::info!(namespace = %name, id = %ns.info.id, "Cloud Map namespace removed");
            }
            kept
        });
        if all_lists_complete && !placement_uncertain {
            st.meta.retain(|id, _| summaries.contains_key(id));
        }
        complete
    }

    /// Selected namespaces by name. Two selected namespaces of the same name (DNS namespaces in
    /// different VPCs) would serve the same hosts: the oldest is kept and the other reported.
    fn select_namespaces(&self, all: Vec<NamespaceInfo>) -> BTreeMap<String, NamespaceInfo> {
        let mut out: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
        let mut collisions = Vec::new();
        for ns in all.into_iter().filter(|n| self.settings.selection.namespace(n)) {
            match out.get(&ns.name) {
                None => {
                    out.insert(ns.name.clone(), ns);
                }
                Some(cur) => {
                    let older = |n: &NamespaceInfo| {
                        (n.create_date.unwrap_or(Timestamp { seconds: i64::MAX, nanos: 0 }), n.id.clone())
                    };
                    let (keep, drop) = if older(&ns) < older(cur) { (ns, cur.clone()) } else { (cur.clone(), ns) };
                    collisions.push((keep.name.clone(), keep.id.clone(), drop.id.clone()));
                    out.insert(keep.name.clone(), keep);
                }
            }
        }
        collisions.sort();
        let mut st = self.lock();
        for c in &collisions {
            if !st.collisions.contains(c) {
                tracing::warn!(
                    namespace = %c.0, kept_id = %c.1, ignored_id = %c.2,
                    "two selected Cloud Map namespaces have the same name; the older is served (exclude one by id with --exclude-namespace)"
                );
            }
        }
        st.collisions = collisions;
        out
    }

    fn apply_removals(&self, st: &mut State, removals: Vec<SvcKey>, report: &mut ResyncReport) {
        if removals.is_empty() {
            if st.guard.consecutive > 0 {
                tracing::info!("the held mass removal is no longer proposed; nothing removed");
            }
            st.guard = Guard::default();
            return;
        }
        let served = st.served_count().max(1);
        let ratio = removals.len() as f64 / served as f64;
        if ratio > self.settings.max_removal_ratio {
            st.guard.consecutive += 1;
            if st.guard.consecutive < self.settings.removal_confirmations {
                for k in &removals {
                    if let Some(e) = st.services.get_mut(k) {
                        e.removal_held = true;
                    }
                }
                tracing::error!(
                    removals = removals.len(),
                    served,
                    ratio = format!("{:.0}%", ratio * 100.0),
                    limit = format!("{:.0}%", self.settings.max_removal_ratio * 100.0),
                    consecutive = st.guard.consecutive,
                    required = self.settings.removal_confirmations,
                    "mass removal held back: Cloud Map no longer lists these services; they stay served until consecutive resyncs confirm it"
                );
                self.metrics.removal_guard_holds.inc();
                report.held_back_removals = removals.len();
                st.guard.pending = removals;
                return;
            }
            tracing::warn!(
                removals = removals.len(),
                consecutive = st.guard.consecutive,
                "mass removal confirmed by consecutive resyncs: removing"
            );
        }
        st.guard = Guard::default();
        for k in removals {
            if let Some(e) = st.services.remove(&k) {
                let n = e.data.as_ref().map(|d| d.instances.len()).unwrap_or(0);
                tracing::info!(namespace = %k.0, service = %k.1, instances = n, "Cloud Map service removed");
                report.removed += 1;
                st.dirty = true;
            }
        }
    }

    /// Applies a DiscoverInstances answer (or failure). Returns whether the served data changed.
    fn apply_discovered(&self, key: &SvcKey, seq: u64, r: Result<Discovered, ApiError>, read: Read) -> bool {
        self.metrics.instance_read(read.label());
        let mut st = self.lock();
        let now = Instant::now();
        let Some(e) = st.services.get_mut(key) else { return false };
        let polled_revision = match read {
            Read::Revision(r) => Some(r),
            _ => None,
        };
        if polled_revision.is_some() || read == Read::Event {
            // A moved revision (or an event) is a change, whether or not this read succeeds; after
            // an event, the polls that follow also catch what the read was too early to see.
            e.note_change(&self.settings, now);
        }
        let changed = match r {
            Ok(d) => {
                if seq < e.loaded_seq {
                    return false;
                }
                e.clear_error(key);
                e.revision_seen = polled_revision.or(e.revision_seen).or(d.revision);
                e.loaded_seq = seq;
                e.refreshed_at = Some(SystemTime::now());
                e.loaded_at = Some(now);
                e.next_health = now + jittered(self.settings.health_refresh_interval, 0.1);
                let changed = log_instance_changes(key, e.data.as_ref(), &d, read);
                if d.at_cap && !e.data.as_ref().is_some_and(|old| old.at_cap) {
                    if let Some(held) = self.cap_log.allow() {
                        tracing::warn!(
                            namespace = %key.0,
                            service = %key.1,
                            instances = d.instances.len(),
                            cap = DISCOVER_MAX_RESULTS,
                            held_back = held,
                            "DiscoverInstances returned its maximum number of instances: the service is served with these, but Cloud Map may hold more that are not served (the API has no paging); split the service or filter by health"
                        );
                    }
                }
                if changed {
                    e.note_change(&self.settings, now);
                }
                e.data = Some(d);
                changed
            }
            Err(err) => {
                e.record_error(key, err);
                false
            }
        };
        if changed {
            st.dirty = true;
        }
        changed
    }

    /// Applies a DiscoverInstancesRevision answer that needs no read: the revision seen before (a
    /// quiet poll: the next one comes later, and a previous error is over), or a failure (kept; the
    /// poll interval stays as it is).
    fn apply_revision(&self, key: &SvcKey, r: Result<(), ApiError>) {
        let mut st = self.lock();
        let Some(e) = st.services.get_mut(key) else { return };
        match r {
            Ok(()) => {
                e.clear_error(key);
                e.note_quiet(&self.cadence(), Instant::now());
            }
            Err(err) => e.record_error(key, err),
        }
    }

    /// Polls revisions of the services that are due, in batches, forever.
    async fn poll_loop(self: Arc<Self>) {
        let interval = self.settings.revision_poll_interval;
        let tick = (interval / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut paused = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.tx.closed() => return,
            }
            // While Cloud Map does not answer at all, polling every service only piles up
            // timeouts: the resyncs keep probing, and polls resume with the first answer.
            if self.api.unreachable() != paused {
                paused = !paused;
                if paused {
                    tracing::warn!("Cloud Map is unreachable: revision polls paused; resyncs keep trying; serving the last good data");
                } else {
                    tracing::info!("Cloud Map answers again: revision polls resumed");
                }
            }
            if paused {
                continue;
            }
            let jobs = self.due_jobs();
            if jobs.is_empty() {
                continue;
            }
            stream::iter(jobs)
                .map(|job| self.run_job(job))
                .buffer_unordered(self.concurrency())
                .for_each(|changed| {
                    if changed {
                        self.publish.notify_one();
                    }
                    async {}
                })
                .await;
        }
    }

    fn due_jobs(&self) -> Vec<Job> {
        let mut st = self.lock();
        let now = Instant::now();
        let settings = &self.settings;
        let cadence = self.cadence();
        let mut jobs = Vec::new();
        let State { services, namespaces, .. } = &mut *st;
        for (key, e) in services.iter_mut() {
            let health_due = e.health_checked && e.next_health <= now;
            if e.next_poll > now && !health_due {
                continue;
            }
            let interval = e.poll_interval(&cadence);
            // Instances read less than an interval ago (by a resync or a refresh) are as fresh as a poll.
            if let Some(t) = e.loaded_at.filter(|t| !health_due && now.duration_since(*t) < interval.mul_f64(0.8)) {
                e.next_poll = t + jittered(interval, 0.1);
                continue;
            }
            // Also when this poll is retried if it fails.
            e.next_poll = now + jittered(interval, 0.1);
            if health_due {
                e.next_health = now + jittered(settings.health_refresh_interval, 0.1);
            }
            let Some(ns) = namespaces.get(&key.0) else { continue };
            let stale = e.loaded_at.is_none_or(|t| now.duration_since(t) >= cadence.refresh);
            let read = match (&e.data, &e.last_error) {
                // Never read: retry transient failures; permanent ones wait for the next resync.
                (None, Some(err)) if !err.error.kind.is_transient() => continue,
                (None, _) => Some(Read::New),
                (Some(_), _) if health_due => Some(Read::Health),
                (Some(_), _) if stale => Some(Read::Refresh),
                (Some(_), _) => None,
            };
            jobs.push(Job {
                key: key.clone(),
                http_name: ns.info.http_name.clone(),
                owner: ns.info.owner.clone(),
                read,
                revision_seen: e.revision_seen,
            });
        }
        jobs
    }

    async fn run_job(&self, job: Job) -> bool {
        let read = match job.read {
            Some(read) => read,
            None => match self.api.discover_revision(&job.http_name, &job.key.1, job.owner.as_deref()).await {
                Ok(r) if Some(r) == job.revision_seen => {
                    self.apply_revision(&job.key, Ok(()));
                    return false;
                }
                Ok(r) => {
                    tracing::debug!(namespace = %job.key.0, service = %job.key.1, old = ?job.revision_seen, new = r, "instances revision moved");
                    Read::Revision(r)
                }
                Err(e) => {
                    self.apply_revision(&job.key, Err(e));
                    return false;
                }
            },
        };
        let seq = self.lock().next_seq();
        let r = self.api.discover_instances(&job.http_name, &job.key.1, job.owner.as_deref()).await;
        self.apply_discovered(&job.key, seq, r, read)
    }

    // Hooks for the events consumer (`events.rs`).

    /// Switches between the slower cadence (an events queue delivers) and the normal one. Going
    /// back to normal pulls in polls scheduled beyond the normal max interval, spread over it.
    pub(super) fn set_events_active(&self, active: bool) {
        if self.events_active.swap(active, Ordering::Relaxed) == active || active {
            return;
        }
        let max = self.settings.revision_poll_max_interval;
        let now = Instant::now();
        for e in self.lock().services.values_mut() {
            e.next_poll = e.next_poll.min(now + max.mul_f64(rand::random::<f64>()));
        }
    }

    /// The service-attributes refresh interval in force: while an events queue answers
    /// (UpdateServiceAttributes events re-read at once), at least the events refresh interval.
    pub(super) fn attributes_interval(&self) -> Duration {
        match &self.settings.events {
            Some(e) if self.events_active() => self.settings.attributes_refresh_interval.max(e.instances_refresh_interval),
            _ => self.settings.attributes_refresh_interval,
        }
    }

    pub(super) fn events_active(&self) -> bool {
        self.events_active.load(Ordering::Relaxed)
    }

    /// Asks for a resync out of schedule (at most one per `REQUESTED_RESYNC_MIN_GAP`; requests
    /// made meanwhile are one).
    pub(super) fn request_resync(&self) {
        self.resync_requested.notify_one();
    }

    /// Reads one known service's instances now (an event named it) and publishes a change at
    /// once. Returns whether the served data changed; `None` when the service is not known.
    pub(super) async fn read_now(&self, key: &SvcKey) -> Option<bool> {
        let (http_name, owner, seq) = {
            let mut st = self.lock();
            let ns = st.namespaces.get(&key.0)?;
            let (http_name, owner) = (ns.info.http_name.clone(), ns.info.owner.clone());
            st.services.get(key)?;
            (http_name, owner, st.next_seq())
        };
        let r = self.api.discover_instances(&http_name, &key.1, owner.as_deref()).await;
        let changed = self.apply_discovered(key, seq, r, Read::Event);
        if changed {
            let mut st = self.lock();
            self.publish_locked(&mut st);
        }
        Some(changed)
    }

    /// Resolves when nobody receives snapshots any more (the server is stopping).
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }

    /// Publishes coalesced changes from the poll loop.
    async fn publish_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.publish.notified() => {}
                _ = self.tx.closed() => return,
            }
            tokio::time::sleep(PUBLISH_DEBOUNCE).await;
            let mut st = self.lock();
            self.publish_locked(&mut st);
        }
    }

    /// Publishes the state if it changed since the last publication (only once synced), and
    /// updates the gauges.
    fn publish_locked(&self, st: &mut State) {
        let served = st.services.values().filter(|e| e.served()).count();
        self.metrics.namespaces.set(st.namespaces.len() as i64);
        self.metrics.services.set(served as i64);
        self.metrics
            .instances
            .set(st.services.values().filter_map(|e| e.data.as_ref()).map(|d| d.instances.len()).sum::<usize>() as i64);
        self.metrics.set_held_back("removal_guard", st.services.values().filter(|e| e.removal_held).count());
        self.metrics
            .set_held_back("stale", st.services.values().filter(|e| e.served() && e.last_error.is_some()).count());
        self.metrics.set_held_back("pending", st.services.values().filter(|e| !e.served()).count());
        self.metrics.at_instance_cap.set(st.services.values().filter(|e| e.data.as_ref().is_some_and(|d| d.at_cap)).count() as i64);
        if !st.synced || !st.dirty {
            return;
        }
        st.dirty = false;
        let snap = st.snapshot();
        self.tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&snap) {
                false
            } else {
                *cur = Some(Arc::new(snap));
                true
            }
        });
    }
}

/// Logs what changed in a service's instances; returns whether anything did.
fn log_instance_changes(key: &SvcKey, old: Option<&Discovered>, new: &Discovered, read: Read) -> bool {
    let Some(old) = old else {
        tracing::info!(namespace = %key.0, service = %key.1, instances = new.instances.len(), "Cloud Map service added");
        return true;
    };
    if old.instances == new.instances {
        return false;
    }
    let before: HashMap<&str, &model::Instance> = old.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let after: HashMap<&str, &model::Instance> = new.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let mut health = 0;
    let mut attributes = 0;
    for (id, a) in &after {
        if let Some(b) = before.get(id) {
            if a.health != b.health {
                health += 1;
            }
            if a.attributes != b.attributes {
                attributes += 1;
            }
        }
    }
    tracing::info!(
        namespace = %key.0,
        service = %key.1,
        before = old.instances.len(),
        after = new.instances.len(),
        added,
        removed,
        health_changed = health,
        attributes_changed = attributes,
        read = read.label(),
        "Cloud Map instances changed"
    );
    true
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::source::cloudmap::budget::Budget;
    use crate::source::cloudmap::client::Op;

    fn poller(ratio: f64, confirmations: u32) -> Poller {
        poller_with(|s| {
            s.max_removal_ratio = ratio;
            s.removal_confirmations = confirmations;
        })
    }

    /// The default settings, changed by `f`.
    pub(in crate::source::cloudmap) fn poller_with(f: impl FnOnce(&mut Settings)) -> Poller {
        let mut settings = super::super::test_settings();
        f(&mut settings);
        // Never called: these tests drive the state directly.
        let conf = aws_sdk_servicediscovery::Config::builder()
            .behavior_version(aws_sdk_servicediscovery::config::BehaviorVersion::latest())
            .region(aws_sdk_servicediscovery::config::Region::new("us-east-1"))
            .build();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = CloudMapMetrics::register(&mut registry);
        let api = Api::new(
            aws_sdk_servicediscovery::Client::from_conf(conf),
            Arc::new(Budget::new(settings.budget)),
            metrics.clone(),
            3,
            settings.health,
        );
        let (tx, _rx) = crate::source::channel();
        Poller::new(api, settings, tx, metrics, None)
    }

    fn instance(id: &str, ip: &str) -> model::Instance {
        model::Instance {
            id: id.into(),
            attributes: BTreeMap::from([("AWS_INSTANCE_IPV4".to_string(), ip.to_string())]),
            health: model::HealthStatus::Healthy,
        }
    }

    fn served(id: &str, instances: Vec<model::Instance>) -> SvcEntry {
        let now = Instant::now();
        SvcEntry {
            id: id.into(),
            arn: None,
            create_date: None,
            health_checked: false,
            data: Some(Discovered { instances: instances.into(), revision: Some(1), duplicates: Vec::new(), at_cap: false }),
            loaded_seq: 1,
            refreshed_at: None,
            loaded_at: None,
            last_error: None,
            revision_seen: Some(1),
            unchanged_polls: 0,
            removal_held: false,
            next_poll: now,
            next_health: now,
            published: None,
            attributes: Default::default(),
        }
    }

    pub(in crate::source::cloudmap) fn state_with(n: usize) -> State {
        let mut st = State::default();
        st.namespaces.insert(
            "ns".into(),
            NsEntry {
                info: NamespaceInfo {
                    id: "ns-1".into(),
                    name: "ns".into(),
                    arn: None,
                    kind: model::NamespaceType::Http,
                    http_name: "ns".into(),
                    owner: None,
                    create_date: None,
                },
                listed_at: None,
                last_error: None,
            },
        );
        for i in 0..n {
            st.services
                .insert(("ns".into(), format!("s{i}")), served(&format!("srv-{i}"), vec![instance("a", "10.0.0.1")]));
        }
        st
    }

    pub(in crate::source::cloudmap) fn keys(v: &[usize]) -> Vec<SvcKey> {
        v.iter().map(|i| ("ns".to_string(), format!("s{i}"))).collect()
    }

    #[test]
    fn small_removals_apply_at_once() {
        let p = poller(0.5, 3);
        let mut st = state_with(4);
        let mut report = ResyncReport::default();
        p.apply_removals(&mut st, keys(&[0]), &mut report);
        assert_eq!(st.services.len(), 3);
        assert_eq!(report.removed, 1);
        assert_eq!(st.guard.consecutive, 0);
    }

    #[test]
    fn mass_removal_is_held_until_confirmed() {
        let p = poller(0.5, 3);
        let mut st = state_with(4);
        for round in 1..=2 {
            let mut report = ResyncReport::default();
            p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut report);
            assert_eq!(st.services.len(), 4, "round {round}: held");
            assert_eq!(report.held_back_removals, 3);
            assert_eq!(st.guard.consecutive, round);
            assert!(st.services[&keys(&[1])[0]].removal_held);
        }
        let mut report = ResyncReport::default();
        p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut report);
        assert_eq!(st.services.len(), 1, "third consecutive resync applies it");
        assert_eq!(report.removed, 3);
        assert_eq!(st.guard.consecutive, 0);
    }

    #[test]
    fn a_resync_without_the_mass_removal_resets_the_guard() {
        let p = poller(0.5, 2);
        let mut st = state_with(4);
        p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut ResyncReport::default());
        assert_eq!(st.guard.consecutive, 1);
        p.apply_removals(&mut st, Vec::new(), &mut ResyncReport::default());
        assert_eq!(st.guard.consecutive, 0);
        p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut ResyncReport::default());
        assert_eq!(st.services.len(), 4, "counting starts again");
    }

    #[test]
    fn answers_at_the_instance_cap_are_served_counted_and_noted_until_they_shrink() {
        let p = poller(0.5, 3);
        *p.lock() = state_with(2);
        let key = keys(&[0]).remove(0);
        let at = |n: usize, at_cap: bool| Discovered {
            instances: (0..n).map(|i| instance(&format!("i{i:04}"), &format!("10.0.{}.{}", i / 256, i % 256))).collect::<Vec<_>>().into(),
            revision: Some(n as i64),
            duplicates: vec![],
            at_cap,
        };
        let gauge = |p: &Poller| {
            p.publish_locked(&mut p.lock());
            p.metrics.at_instance_cap.get()
        };
        let note = |p: &Poller| debug::view(p).namespaces.iter().flat_map(|n| &n.services).find(|s| s.name == key.1).and_then(|s| s.note.clone());
        assert_eq!(gauge(&p), 0);
        assert!(p.apply_discovered(&key, 1, Ok(at(1000, true)), Read::Refresh));
        assert_eq!(p.lock().services[&key].data.as_ref().unwrap().instances.len(), 1000, "served as returned");
        assert_eq!(gauge(&p), 1);
        assert!(note(&p).is_some_and(|n| n.contains("1000")), "{:?}", note(&p));
        assert!(p.apply_discovered(&key, 2, Ok(at(999, false)), Read::Refresh));
        assert_eq!(gauge(&p), 0);
        assert_eq!(note(&p), None);
    }

    #[test]
    fn failures_keep_data_and_older_answers_never_win() {
        let p = poller(0.5, 3);
        *p.lock() = state_with(1);
        let key = keys(&[0]).remove(0);
        let err = ApiError {
            operation: Op::DiscoverInstances,
            kind: ErrorKind::Unavailable,
            code: None,
            message: "down".into(),
        };
        assert!(!p.apply_discovered(&key, 5, Err(err), Read::New));
        {
            let st = p.lock();
            let e = &st.services[&key];
            assert_eq!(e.data.as_ref().unwrap().instances.len(), 1, "never shrink on error");
            assert!(e.last_error.is_some());
        }
        let newer = Discovered {
            instances: vec![instance("a", "10.0.0.1"), instance("b", "10.0.0.2")].into(),
            revision: Some(2),
            duplicates: vec![],
            at_cap: false,
        };
        assert!(p.apply_discovered(&key, 7, Ok(newer), Read::Revision(2)));
        let older = Discovered { instances: Vec::new().into(), revision: Some(0), duplicates: vec![], at_cap: false };
        assert!(!p.apply_discovered(&key, 6, Ok(older), Read::New), "an answer to an older request is dropped");
        let st = p.lock();
        let e = &st.services[&key];
        assert_eq!(e.data.as_ref().unwrap().instances.len(), 2);
        assert!(e.last_error.is_none());
        assert_eq!(e.revision_seen, Some(2));
    }

    #[test]
    fn snapshot_serves_only_services_with_data_in_canonical_order() {
        let mut st = state_with(2);
        st.services.get_mut(&keys(&[1])[0]).unwrap().data = None;
        st.services.insert(
            ("ns".into(), "a-first".into()),
            served("srv-x", vec![instance("z", "10.0.0.9"), instance("b", "10.0.0.8")]),
        );
        let snap = st.snapshot();
        assert_eq!(snap.namespaces.len(), 1);
        let names: Vec<_> = snap.namespaces[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a-first", "s0"]);
        let ids: Vec<_> = snap.namespaces[0].services[0].instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["b", "z"]);
    }

    #[test]
    fn snapshots_share_the_services_that_did_not_change() {
        let mut st = state_with(3);
        let a = st.snapshot();
        let b = st.snapshot();
        for (x, y) in a.namespaces[0].services.iter().zip(&b.namespaces[0].services) {
            assert!(Arc::ptr_eq(x, y), "{} is shared", x.name);
        }
        let data = st.services.get_mut(&keys(&[1])[0]).unwrap().data.as_mut().unwrap();
        let mut instances = data.instances.to_vec();
        instances[0].attributes.insert(model::attr::IPV4.into(), "10.9.9.9".into());
        data.instances = instances.into();
        let c = st.snapshot();
        let shared: Vec<bool> = b.namespaces[0].services.iter().zip(&c.namespaces[0].services).map(|(x, y)| Arc::ptr_eq(x, y)).collect();
        assert_eq!(shared, [true, false, true]);
        assert_eq!(c.namespaces[0].services[1].instances[0].attributes[model::attr::IPV4], "10.9.9.9");
    }

    fn unavailable(op: Op) -> ApiError {
        ApiError { operation: op, kind: ErrorKind::Unavailable, code: None, message: "down".into() }
    }

    /// Whether `t` is `d` from `from`, give or take the ±10 % jitter (and the test's own time).
    fn about(t: Instant, from: Instant, d: Duration) -> bool {
        t >= from + d.mul_f64(0.89) && t <= from + d.mul_f64(1.11) + Duration::from_millis(100)
    }

    #[test]
    fn the_poll_interval_doubles_with_each_quiet_poll_up_to_the_max() {
        let p = poller_with(|_| {});
        let mut e = served("srv-1", vec![]);
        let secs: Vec<u64> = (0..7)
            .map(|n| {
                e.unchanged_polls = n;
                e.poll_interval(&p.cadence()).as_secs()
            })
            .collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 60, 60, 60]);
        e.unchanged_polls = u32::MAX;
        assert_eq!(e.poll_interval(&p.cadence()), Duration::from_secs(60), "no overflow");

        // max = base: constant polling.
        let p = poller_with(|s| s.revision_poll_max_interval = s.revision_poll_interval);
        e.unchanged_polls = 3;
        assert_eq!(e.poll_interval(&p.cadence()), Duration::from_secs(5));
    }

    #[test]
    fn quiet_polls_back_off_and_a_change_resets_at_once() {
        let p = poller_with(|_| {});
        let mut e = served("srv-1", vec![]);
        let now = Instant::now();
        e.note_quiet(&p.cadence(), now);
        assert_eq!(e.unchanged_polls, 1);
        assert!(about(e.next_poll, now, Duration::from_secs(10)));
        for _ in 0..5 {
            e.note_quiet(&p.cadence(), now);
        }
        assert_eq!(e.unchanged_polls, 6);
        assert!(about(e.next_poll, now, Duration::from_secs(60)), "capped");

        // A change pulls the next poll in to the base interval...
        e.note_change(&p.settings, now);
        assert_eq!(e.unchanged_polls, 0);
        assert!(about(e.next_poll, now, Duration::from_secs(5)));
        // ...and never pushes an earlier one back.
        e.next_poll = now + Duration::from_secs(1);
        e.note_change(&p.settings, now);
        assert_eq!(e.next_poll, now + Duration::from_secs(1));
    }

    #[test]
    fn revision_answers_drive_the_backoff_and_clear_old_errors() {
        let p = poller_with(|_| {});
        *p.lock() = state_with(1);
        let key = keys(&[0]).remove(0);
        let level = |p: &Poller| p.lock().services[&key].unchanged_polls;

        p.apply_revision(&key, Ok(()));
        p.apply_revision(&key, Ok(()));
        assert_eq!(level(&p), 2);
        // An error is kept, and leaves the level as it is.
        p.apply_revision(&key, Err(unavailable(Op::DiscoverInstancesRevision)));
        assert_eq!(level(&p), 2);
        assert!(p.lock().services[&key].last_error.is_some());
        // The next good answer (same revision) clears it.
        p.apply_revision(&key, Ok(()));
        assert_eq!(level(&p), 3);
        assert!(p.lock().services[&key].last_error.is_none(), "an OK revision answer clears the error");

        // A read that finds the same instances changes nothing; one that finds others resets.
        let same = Discovered { instances: vec![instance("a", "10.0.0.1")].into(), revision: Some(1), duplicates: vec![], at_cap: false };
        assert!(!p.apply_discovered(&key, 2, Ok(same), Read::Refresh));
        assert_eq!(level(&p), 3);
        let other = Discovered { instances: vec![instance("a", "10.0.0.9")].into(), revision: Some(1), duplicates: vec![], at_cap: false };
        assert!(p.apply_discovered(&key, 3, Ok(other), Read::Refresh));
        assert_eq!(level(&p), 0);
        let now = Instant::now();
        assert!(p.lock().services[&key].next_poll <= now + Duration::from_secs(6));

        // A moved revision resets, even when the read that follows fails.
        p.apply_revision(&key, Ok(()));
        p.lock().services.get_mut(&key).unwrap().next_poll = now + Duration::from_secs(3600);
        assert!(!p.apply_discovered(&key, 4, Err(unavailable(Op::DiscoverInstances)), Read::Revision(2)));
        let st = p.lock();
        let e = &st.services[&key];
        assert_eq!(e.unchanged_polls, 0);
        assert!(e.next_poll <= Instant::now() + Duration::from_secs(6), "pulled in to the base interval");
        assert_eq!(e.revision_seen, Some(1), "not read yet: the next poll sees the move again");
    }

    #[test]
    fn due_polls_read_instances_when_the_refresh_or_health_interval_is_up() {
        let p = poller_with(|s| {
            s.revision_poll_interval = Duration::from_millis(200);
            s.revision_poll_max_interval = Duration::from_millis(200);
            s.instances_refresh_interval = Duration::from_secs(1);
        });
        let mut st = state_with(6);
        let now = Instant::now();
        let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).expect("a monotonic clock past 2 s");
        for e in st.services.values_mut() {
            e.next_poll = now;
            e.next_health = now + Duration::from_secs(3600);
        }
        let mut set = |i: usize, f: &dyn Fn(&mut SvcEntry)| f(st.services.get_mut(&keys(&[i])[0]).unwrap());
        set(0, &|e| e.loaded_at = Some(ago(1500))); // not read for longer than the refresh interval
        set(1, &|e| e.data = None); // never read
        set(2, &|e| {
            // health-checked, due, and read recently
            e.loaded_at = Some(now);
            e.health_checked = true;
            e.next_health = now;
        });
        set(3, &|e| e.loaded_at = Some(ago(500))); // read a while ago, within the refresh interval
        set(4, &|e| e.loaded_at = Some(now)); // read just now: as fresh as a poll
        set(5, &|e| e.next_poll = now + Duration::from_secs(3600)); // not due
        *p.lock() = st;
        let reads = |p: &Poller| p.due_jobs().into_iter().map(|j| (j.key.1, j.read)).collect::<Vec<_>>();
        assert_eq!(
            reads(&p),
            vec![
                ("s0".into(), Some(Read::Refresh)),
                ("s1".into(), Some(Read::New)),
                ("s2".into(), Some(Read::Health)),
                ("s3".into(), None),
            ]
        );
        assert!(reads(&p).is_empty(), "nothing due right after: every poll is scheduled");
        let st = p.lock();
        assert!(
            about(st.services[&keys(&[4])[0]].next_poll, now, Duration::from_millis(200)),
            "skipped to a poll after the read"
        );
        assert!(st.services[&keys(&[2])[0]].next_health > now, "the next health refresh is scheduled");
    }
}
