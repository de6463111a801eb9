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

use super::budget::{backoff, doubled, jittered};
use super::client::{Api, ApiError, Discovered, ErrorKind, NamespaceInfo, ServiceMeta, ServiceSummary, DISCOVER_MAX_RESULTS};
use super::debug::DebugView;
use super::record::{rfc3339, ErrorRecord, ResyncReport};
use super::metrics::CloudMapMetrics;
use super::Settings;
use crate::metrics::Metrics;
use crate::model::{self, Timestamp};
use crate::source::SnapshotTx;
use crate::util::LogLimiter;

pub(super) mod attributes;
mod poll;
mod resync;
mod view;

use attributes::ServiceAttributes;

/// `(namespace name, service name)`: the identity of a ServiceEntry.
pub(super) type SvcKey = (String, String);

/// Coalesces publications: at most one snapshot per this window. A change after a quiet window is
/// published at once; changes arriving within a window after a publication make one snapshot at
/// its end.
const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(100);
/// Freed memory is returned to the kernel at most this often while changes are published (a walk
/// over every arena's free chunks: milliseconds at 10,000 services).
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// ... and only once publications have paused this long: a trim holds each arena's lock while it
/// walks it, which the snapshot builder working on a publication would wait for.
const TRIM_QUIET: Duration = Duration::from_secs(1);
/// Before the first complete sync, attempts are retried with backoff from 1 s up to this.
const FIRST_SYNC_RETRY_CAP: Duration = Duration::from_secs(30);

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
        // Already canonical: namespaces and services come out of their maps sorted by name (the
        // keys), and instances were sorted when their `Service` was made. `normalize` would walk
        // every instance of every service (at 10,000 services: 100,000 ids, mostly cache misses,
        // 10 ms and more on every publication) to find nothing to do.
        model::Snapshot { namespaces }
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
        view::view(self)
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
        // The first sync parsed an answer or two per service; what they left freed in the
        // arenas would otherwise stay resident until a burst as large comes again.
        crate::util::return_freed_memory();
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

    /// Publishes coalesced changes from the poll loop. After changes, the memory freed meanwhile
    /// (the reads' answers, the previous snapshots and their resources) is returned to the kernel,
    /// at most once per [`TRIM_EVERY`] and only after [`TRIM_QUIET`] without publications.
    async fn publish_loop(self: Arc<Self>) {
        let mut last_trim = Instant::now();
        let mut last_publish: Option<Instant> = None;
        let mut trim_due = false;
        loop {
            tokio::select! {
                _ = self.publish.notified() => {}
                _ = tokio::time::sleep(TRIM_QUIET), if trim_due => {
                    if last_trim.elapsed() >= TRIM_EVERY {
                        last_trim = Instant::now();
                        trim_due = false;
                        crate::util::return_freed_memory();
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
            }
            // Leading edge: an isolated change goes out without waiting; a burst is held to one
            // publication per window (each one is a model snapshot and a resource build).
            if let Some(next) = last_publish.map(|t| t + PUBLISH_DEBOUNCE).filter(|n| *n > Instant::now()) {
                tracing::debug!(wait_ms = (next - Instant::now()).as_secs_f64() * 1000.0, "Cloud Map publication held by the debounce");
                tokio::time::sleep_until(next).await;
            }
            last_publish = Some(Instant::now());
            {
                let mut st = self.lock();
                self.publish_locked(&mut st);
            }
            trim_due = true;
        }
    }

    /// Publishes the state if it changed since the last publication (only once synced), and
    /// updates the gauges.
    fn publish_locked(&self, st: &mut State) {
        // One walk over the services for every gauge (this runs before each publication, under
        // the lock the polls wait for).
        let (mut served, mut instances, mut removal_held, mut stale, mut pending, mut at_cap) = (0, 0, 0, 0, 0, 0);
        for e in st.services.values() {
            removal_held += usize::from(e.removal_held);
            match &e.data {
                Some(d) => {
                    served += 1;
                    instances += d.instances.len();
                    stale += usize::from(e.last_error.is_some());
                    at_cap += usize::from(d.at_cap);
                }
                None => pending += 1,
            }
        }
        self.metrics.namespaces.set(st.namespaces.len() as i64);
        self.metrics.services.set(served as i64);
        self.metrics.instances.set(instances as i64);
        self.metrics.set_held_back("removal_guard", removal_held);
        self.metrics.set_held_back("stale", stale);
        self.metrics.set_held_back("pending", pending);
        self.metrics.at_instance_cap.set(at_cap as i64);
        if !st.synced || !st.dirty {
            return;
        }
        st.dirty = false;
        let started = std::time::Instant::now();
        let snap = st.snapshot();
        let services = snap.service_count();
        let sent = self.tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&snap) {
                false
            } else {
                *cur = Some(Arc::new(snap));
                true
            }
        });
        tracing::debug!(services, sent, took_ms = started.elapsed().as_secs_f64() * 1000.0, "Cloud Map model snapshot published");
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
pub(super) mod tests;
