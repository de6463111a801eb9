//! Watching a file (the registry file, the mapping file) for edits.
//!
//! An inotify event on the file's directory (see [`super::notify`]) wakes the watcher at once; the
//! interval wakes it anyway, so an event that never comes (an unsupported filesystem, a file
//! reached through a symlink elsewhere) costs at most one interval. Every wake-up costs one `stat`:
//! while the file's metadata (device, inode, length, modification and change times) stays what it
//! was when its contents were last read, the contents are not read. A file modified so shortly
//! before that read that a later write could have left the same metadata (timestamps are only as
//! fine as the kernel's clock tick, seconds on some filesystems) is "racy": its contents are hashed
//! again, in small blocks, until that window has passed. A file whose metadata moved is read once,
//! checked, parsed once, and published. The watcher keeps the served version's hash and a
//! fingerprint for the cut-off check, never a copy of the file.
//!
//! Everything runs on one thread of its own: parsing a large file is long CPU work that must not
//! hold an async worker, and one thread means one malloc arena for every parse's short-lived
//! buffers instead of a new arena's worth of retained memory per blocking-pool thread.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::notify::Wake;
use super::{open_regular, parse_bytes_remembering, read_capped, Limits, Memo, RegistryFileError};
use crate::metrics::Metrics;
use crate::model;
use crate::source::SnapshotTx;

/// Parses one version of a watched file: path (for messages), contents, caps, the version served
/// so far (to share from), and what the parse that made it left to remember.
pub type ParseFn<T, E> = fn(&Path, &[u8], &Limits, Option<&T>, &mut Memo) -> Result<T, E>;

/// A kind of watched file: how to parse it, how to talk about it, and the error its first load
/// returns.
pub struct Watched<T, E> {
    /// In logs and thread names: "registry file", "mapping file".
    pub what: &'static str,
    /// The `source` label of `cloudmap_mcp_source_loads_total` / `_errors_total`.
    pub metric: &'static str,
    /// How to serve nothing on purpose (an empty file while something is served is a truncation).
    pub empty_hint: &'static str,
    /// A read error (missing file, over the size cap) as this kind's error.
    pub read_error: fn(RegistryFileError) -> E,
    /// Parses one version (see [`ParseFn`] and [`parse_remembering`]).
    ///
    /// [`parse_remembering`]: super::parse_remembering
    pub parse: ParseFn<T, E>,
    /// Items served (services, rules): an empty file never replaces a version with items.
    pub size: fn(&T) -> usize,
    /// Lets a new version share what did not change with the served one.
    pub share: fn(&mut T, &T),
    /// Logs a good version (`reload`: not the first load).
    pub log_loaded: fn(&Path, &T, bool),
    /// Why the file on disk is not the version served, for readiness (see [`Problem`]).
    pub problem: Problem,
}

/// Why the watched file on disk is not the version being served (refused, rejected, held back),
/// or `None` while it is. Readiness shows it: the server stays ready on its last good version,
/// and says which file is not applied and why.
#[derive(Clone, Debug, Default)]
pub struct Problem(Arc<Mutex<Option<String>>>);

impl Problem {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, problem: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
}

/// The registry file as a [`Watched`] file.
pub fn registry() -> Watched<model::Snapshot, RegistryFileError> {
    Watched {
        what: "registry file",
        metric: "file",
        empty_hint: "write `namespaces: []` to serve nothing",
        read_error: |e| e,
        parse: parse_bytes_remembering,
        size: model::Snapshot::service_count,
        share: share_unchanged,
        log_loaded: |path, snap, reload| {
            tracing::info!(
                path = %path.display(),
                namespaces = snap.namespaces.len(),
                services = snap.service_count(),
                instances = snap.instance_count(),
                "{}",
                if reload { "registry file reloaded" } else { "registry file loaded" }
            )
        },
        problem: Problem::default(),
    }
}

/// How long a changed file must have stayed unmodified (by its modification time) before its
/// contents are used (a writer that truncates and then writes is usually done by then). A file
/// replaced atomically (written aside, then renamed) is usually older than this when it is seen.
pub fn settle_time(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(100))
}

/// How long a file that looks cut off (a strict prefix of the served version) must stay unchanged
/// before it is applied.
pub fn cut_off_hold(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(5))
}

/// A file modified less than this before its contents were read may change again without its
/// metadata moving (coarse timestamps): it is re-hashed on every tick until this has passed. This
/// window is for filesystems with whole-second timestamps (no nanoseconds in them).
const RACY: Duration = Duration::from_secs(2);

/// The same where timestamps carry nanoseconds (ext4, xfs, tmpfs, overlayfs): they move with the
/// kernel's clock tick, at most 10 ms apart.
const RACY_FINE: Duration = Duration::from_millis(100);

/// What a `stat` says about the file; equal stamps mean unchanged contents (outside the racy window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    modified: Option<SystemTime>,
}

impl Stamp {
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (dev, ino, mtime, ctime) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino(), (m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (dev, ino, mtime, ctime) = (0, 0, (0, 0), (0, 0));
        Ok(Stamp { dev, ino, len: m.len(), mtime, ctime, modified: m.modified().ok() })
    }

    /// Time since the last modification (zero for a time in the future or unknown).
    fn age(&self, now: SystemTime) -> Duration {
        self.modified.and_then(|m| now.duration_since(m).ok()).unwrap_or_default()
    }

    /// Whether contents read at `read_at` may have changed since without moving this stamp.
    fn racy(&self, read_at: SystemTime) -> bool {
        // Whole seconds in both times: probably a filesystem without finer timestamps.
        let window = if self.mtime.1 == 0 && self.ctime.1 == 0 { RACY } else { RACY_FINE };
        match self.modified {
            Some(m) => read_at.duration_since(m).map_or(true, |d| d < window),
            None => true,
        }
    }
}

/// The 128-bit hash contents are compared by (the served bytes are kept for the cut-off check).
fn hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Hashes the file in 64 KiB blocks (no buffer of its size); `None` past `max` bytes.
fn hash_file(path: &Path, max: u64) -> std::io::Result<Option<u128>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(Some(h.digest128()));
        }
        total += n as u64;
        if total > max {
            return Ok(None);
        }
        h.update(&buf[..n]);
    }
}

/// The first load, with what the watcher needs to know about it.
struct Initial<T> {
    value: T,
    bytes: Vec<u8>,
    stamp: Option<Stamp>,
    read_at: SystemTime,
    memo: Memo,
}

impl<T> Initial<T> {
    /// Reads and parses the file (refused over `limits`).
    fn load<E>(path: &Path, limits: &Limits, kind: &Watched<T, E>) -> Result<Initial<T>, E> {
        let stamp = Stamp::of(path).ok();
        let read_at = SystemTime::now();
        let bytes = read_capped(path, limits.max_bytes).map_err(kind.read_error)?;
        let mut memo = Memo::default();
        let value = (kind.parse)(path, &bytes, limits, None, &mut memo)?;
        Ok(Initial { value, bytes, stamp, read_at, memo })
    }
}

/// What the watcher decided about one read of the file.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The version being served, or a version already looked at: nothing to do.
    Unchanged,
    /// New contents: parse and, if good, serve.
    Apply,
    /// A version held back as cut off that stayed unchanged for the whole hold: an edit after all.
    ApplyCutOff,
    /// Empty while services are served: a truncation, not an edit (`namespaces: []` serves nothing).
    Empty,
    /// A strict prefix of the served version: looks like a write cut off; held back.
    CutOff,
}

/// The watcher's memory, separate from I/O so the rules are testable.
/// What the cut-off check needs of the served version, without keeping its bytes (a large file's
/// copy would be most of the watcher's memory): a hash of each whole block, and the bytes after
/// the last one.
#[derive(Debug)]
struct ServedShape {
    len: usize,
    blocks: Vec<u64>,
    tail: Vec<u8>,
}

/// Block size of [`ServedShape`]: 8 bytes kept per 4 KiB served.
const BLOCK: usize = 4096;

impl ServedShape {
    fn of(bytes: &[u8]) -> ServedShape {
        let whole = bytes.len() / BLOCK * BLOCK;
        ServedShape {
            len: bytes.len(),
            blocks: bytes[..whole].chunks_exact(BLOCK).map(xxhash_rust::xxh3::xxh3_64).collect(),
            tail: bytes[whole..].to_vec(),
        }
    }

    /// Whether `bytes`, shorter than the served version, is its prefix. Exact when `bytes` ends in
    /// the served tail; otherwise its whole blocks decide and its last partial block (under 4 KiB)
    /// is taken to match: at worst an edit that shortens the file within its last 4 KiB is held
    /// like a cut-off copy, for [`cut_off_hold`], and then applied.
    fn has_prefix(&self, bytes: &[u8]) -> bool {
        if bytes.len() >= self.len {
            return false;
        }
        let whole = bytes.len() / BLOCK;
        let blocks_match =
            bytes.chunks_exact(BLOCK).zip(&self.blocks).all(|(block, h)| xxhash_rust::xxh3::xxh3_64(block) == *h);
        blocks_match && (whole < self.blocks.len() || self.tail.starts_with(&bytes[whole * BLOCK..]))
    }
}

#[derive(Debug)]
struct WatchState {
    /// The shape of the version being served, for the cut-off check.
    served: Option<ServedShape>,
    served_hash: Option<u128>,
    served_services: usize,
    /// Hash of the last contents looked at (served or not).
    seen: Option<u128>,
    /// Since when `seen` has been held back as cut off.
    cut_since: Option<Instant>,
}

impl WatchState {
    fn new(served: Option<&[u8]>, served_services: usize) -> WatchState {
        let h = served.map(hash);
        WatchState { served: served.map(ServedShape::of), served_hash: h, served_services, seen: h, cut_since: None }
    }

    fn judge(&mut self, bytes: &[u8], h: u128, now: Instant, hold: Duration) -> Verdict {
        if self.served_hash == Some(h) {
            self.seen = Some(h);
            self.cut_since = None;
            return Verdict::Unchanged;
        }
        if self.seen == Some(h) {
            return match self.cut_since {
                Some(t) if now.duration_since(t) >= hold => {
                    self.cut_since = None;
                    Verdict::ApplyCutOff
                }
                _ => Verdict::Unchanged,
            };
        }
        self.seen = Some(h);
        self.cut_since = None;
        let blank = bytes.iter().all(|b| b.is_ascii_whitespace());
        if blank && self.served_services > 0 {
            return Verdict::Empty;
        }
        if let Some(served) = &self.served {
            if !blank && served.has_prefix(bytes) {
                self.cut_since = Some(now);
                return Verdict::CutOff;
            }
        }
        Verdict::Apply
    }

    fn serve(&mut self, bytes: &[u8], h: u128, services: usize) {
        self.served = Some(ServedShape::of(bytes));
        self.served_hash = Some(h);
        self.served_services = services;
    }
}

/// Replaces each service of `next` that equals the service of the same namespace and name in
/// `prev` by `prev`'s `Arc`: the new snapshot then costs only what changed, the copy parsed from
/// the file is freed at once, and the resource cache skips the shared services by pointer.
fn share_unchanged(next: &mut model::Snapshot, prev: &model::Snapshot) {
    for ns in &mut next.namespaces {
        let Ok(p) = prev.namespaces.binary_search_by(|p| (&p.name, &p.id).cmp(&(&ns.name, &ns.id))) else {
            continue;
        };
        let pns = &prev.namespaces[p];
        for svc in &mut ns.services {
            if let Ok(i) = pns.services.binary_search_by(|s| (&s.name, &s.id).cmp(&(&svc.name, &svc.id))) {
                if pns.services[i] == *svc {
                    *svc = pns.services[i].clone();
                }
            }
        }
    }
}

/// Loads the registry file and watches it; see [`watch_file`].
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    limits: Limits,
    tx: SnapshotTx,
    metrics: Arc<Metrics>,
) -> Result<(), RegistryFileError> {
    watch_file(path, interval, limits, tx, registry(), metrics).await
}

/// Loads the file and publishes it, then checks it every `interval` and publishes each new good version.
/// Returns when every receiver is gone. What is never published:
/// - a file that does not parse (logged with its position), or over `limits`;
/// - a file still being written: a changed file is used once it has stayed unmodified for
///   [`settle_time`] (not waited for when an event said a writer closed it or renamed it into
///   place) and its metadata did not move while it was read;
/// - an empty file while items are served (a truncation; see [`Watched::empty_hint`]);
/// - a strict prefix of the served file (a cut-off write) until it has stayed unchanged for
///   [`cut_off_hold`].
///
/// In all these cases the last good version stays, and `cloudmap_mcp_source_errors_total{source=...}`
/// counts the event.
///
/// The first load happens on the watcher's thread too (see the module doc: one arena for every
/// parse); its error, if any, is returned and nothing is started.
pub async fn watch_file<T, E>(
    path: PathBuf,
    interval: Duration,
    limits: Limits,
    tx: tokio::sync::watch::Sender<Option<Arc<T>>>,
    kind: Watched<T, E>,
    metrics: Arc<Metrics>,
) -> Result<(), E>
where
    T: PartialEq + Send + Sync + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), E>>();
    let thread_path = path.clone();
    let read_error = kind.read_error;
    let spawned = std::thread::Builder::new().name(kind.what.replace(' ', "-")).spawn(move || {
        let initial = match Initial::load(&thread_path, &limits, &kind) {
            Ok(i) => i,
            Err(e) => {
                let _ = first_tx.send(Err(e));
                return;
            }
        };
        (kind.log_loaded)(&thread_path, &initial.value, false);
        let watcher = Watcher::new(thread_path, interval, limits, initial, tx, kind, metrics);
        crate::util::return_freed_memory();
        let _ = first_tx.send(Ok(()));
        watcher.run();
    });
    if let Err(source) = spawned {
        return Err(read_error(RegistryFileError::Io { path, source }));
    }
    first_rx.await.unwrap_or(Ok(()))
}

struct Watcher<T, E> {
    path: PathBuf,
    interval: Duration,
    limits: Limits,
    tx: tokio::sync::watch::Sender<Option<Arc<T>>>,
    kind: Watched<T, E>,
    metrics: Arc<Metrics>,
    st: WatchState,
    /// The version being served (shared with the channel).
    served_model: Arc<T>,
    /// The stamp of the contents last looked at, and when they were read.
    stamp: Option<Stamp>,
    read_at: SystemTime,
    /// The stamp of a version refused before parsing (over the size cap).
    refused: Option<Stamp>,
    failing: bool,
    /// Freed memory is to be returned to the kernel (a version was published since).
    trim_due: bool,
    /// What the served version's parse left for the next one.
    memo: Memo,
}

impl<T: PartialEq, E: std::fmt::Display> Watcher<T, E> {
    fn new(
        path: PathBuf,
        interval: Duration,
        limits: Limits,
        initial: Initial<T>,
        tx: tokio::sync::watch::Sender<Option<Arc<T>>>,
        kind: Watched<T, E>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let served_model = Arc::new(initial.value);
        let st = WatchState::new(Some(&initial.bytes), (kind.size)(&served_model));
        drop(initial.bytes);
        tx.send_replace(Some(served_model.clone()));
        metrics.source_loaded(kind.metric);
        Watcher {
            path,
            interval,
            limits,
            tx,
            kind,
            metrics,
            st,
            served_model,
            stamp: initial.stamp,
            read_at: initial.read_at,
            refused: None,
            failing: false,
            trim_due: false,
            memo: initial.memo,
        }
    }

    /// Counts a version not applied, logs it unless the last look already failed, and shows
    /// `problem` in readiness until a version is served again.
    fn error(&mut self, problem: String, log: impl FnOnce()) {
        if !self.failing {
            log();
        }
        self.kind.problem.set(Some(format!("{} {problem}; serving its last good version", self.kind.what)));
        self.metrics.source_error(self.kind.metric);
        self.failing = true;
    }

    fn run(mut self) {
        let hold = cut_off_hold(self.interval);
        let events = super::notify::DirEvents::new(&self.path);
        if events.is_none() {
            tracing::debug!(path = %self.path.display(), "no inotify for the {}: checking it every interval only", self.kind.what);
        }
        loop {
            let wake = match &events {
                Some(ev) => ev.wait(self.interval),
                None => {
                    std::thread::sleep(self.interval);
                    Wake::Interval
                }
            };
            if self.tx.is_closed() {
                return;
            }
            if std::mem::take(&mut self.trim_due) {
                crate::util::return_freed_memory();
            }
            self.tick(hold, wake == Wake::Event { written: true });
        }
    }

    /// Whether contents with an unmoved stamp are still those last looked at: certain once the
    /// racy window has passed, else checked by hashing the file again.
    fn unchanged_since_read(&mut self, stamp: &Stamp) -> bool {
        if !stamp.racy(self.read_at) {
            return true;
        }
        let read_at = SystemTime::now();
        match hash_file(&self.path, self.limits.max_bytes) {
            Ok(Some(h)) if self.st.seen == Some(h) => {
                self.read_at = read_at;
                true
            }
            _ => false,
        }
    }

    /// One check of the file.
    /// `written`: an event said a writer finished the file (no partial write to wait out).
    fn tick(&mut self, hold: Duration, written: bool) {
        let path = self.path.clone();
        let what = self.kind.what;
        let stamp = match Stamp::of(&path) {
            Ok(s) => s,
            Err(e) => {
                self.stamp = None;
                let problem = format!("cannot be read ({e})");
                self.error(problem, || tracing::error!(path = %path.display(), error = %e, "cannot read {what}; still serving the last good version"));
                return;
            }
        };
        if self.refused == Some(stamp) {
            return;
        }
        if Some(stamp) == self.stamp && self.unchanged_since_read(&stamp) {
            // Only a cut-off copy held long enough has anything left to do.
            if self.st.cut_since.is_none_or(|t| t.elapsed() < hold) {
                return;
            }
        }
        let read_at = SystemTime::now();
        let started = Instant::now();
        let bytes = match read_capped(&path, self.limits.max_bytes) {
            Ok(b) => b,
            Err(e) => {
                // Refused from what it is (over the size cap, not a regular file): not read again
                // until it moves.
                let refused = match &e {
                    RegistryFileError::TooLarge { .. } => true,
                    RegistryFileError::Io { source, .. } => source.kind() == std::io::ErrorKind::InvalidInput,
                    _ => false,
                };
                let e = match e {
                    RegistryFileError::TooLarge { bytes, max, .. } => {
                        format!("{bytes} bytes, over the {max}-byte cap")
                    }
                    RegistryFileError::Io { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                if refused {
                    // Not read again until it moves; logged for every new version.
                    self.refused = Some(stamp);
                    self.failing = false;
                }
                self.stamp = None;
                self.st.seen = None;
                self.error(format!("edit refused: {e}"), || {
                    tracing::error!(path = %path.display(), error = %e, "{what} edit refused; still serving the last good version")
                });
                return;
            }
        };
        if Stamp::of(&path).ok() != Some(stamp) {
            // Written while it was read: look again on the next tick.
            self.stamp = None;
            return;
        }
        self.stamp = Some(stamp);
        self.read_at = read_at;
        let h = hash(&bytes);
        let held = match self.st.judge(&bytes, h, Instant::now(), hold) {
            Verdict::Unchanged => {
                if self.failing && self.st.served_hash == Some(h) {
                    tracing::info!(path = %path.display(), "{what} is back to the served version");
                    self.failing = false;
                    self.kind.problem.set(None);
                }
                return;
            }
            Verdict::Empty => {
                let served_items = self.st.served_services;
                let hint = self.kind.empty_hint;
                self.failing = false;
                self.error("is empty (truncated?)".into(), || {
                    tracing::error!(
                        path = %path.display(),
                        served_items,
                        "{what} is empty (truncated?); still serving the last good version ({hint})"
                    )
                });
                return;
            }
            Verdict::CutOff => {
                let served_bytes = self.st.served.as_ref().map_or(0, |s| s.len);
                self.failing = false;
                self.error("is a cut-off copy of the served version (held back)".into(), || {
                    tracing::warn!(
                        path = %path.display(),
                        bytes = bytes.len(),
                        served_bytes,
                        hold = ?hold,
                        "{what} is a cut-off copy of the served version (truncated?); still serving the last good version, applying it only if it stays like this"
                    )
                });
                return;
            }
            Verdict::Apply => false,
            Verdict::ApplyCutOff => true,
        };
        // New contents must have settled (the writer may not be done); a version held as cut off
        // has been stable for the whole hold already.
        if !held && !written {
            let settle = settle_time(self.interval);
            let age = stamp.age(SystemTime::now());
            if age < settle {
                std::thread::sleep(settle - age);
                if Stamp::of(&path).ok() != Some(stamp) {
                    // Still being written: look again on the next tick.
                    self.st.seen = None;
                    self.stamp = None;
                    return;
                }
            }
        }
        let limits = self.limits;
        let parse = self.kind.parse;
        let parse_started = Instant::now();
        let served = &*self.served_model;
        let memo = &mut self.memo;
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parse(&path, &bytes, &limits, Some(served), memo)
        }));
        tracing::debug!(
            path = %path.display(),
            written,
            read_ms = (parse_started - started).as_secs_f64() * 1e3,
            parse_ms = parse_started.elapsed().as_secs_f64() * 1e3,
            "{what} read and parsed"
        );
        match parsed {
            Ok(Ok(mut snap)) => {
                self.failing = false;
                self.kind.problem.set(None);
                if held {
                    tracing::warn!(path = %path.display(), "{what} stayed cut off for the whole hold; applying it as an edit");
                }
                (self.kind.share)(&mut snap, &self.served_model);
                (self.kind.log_loaded)(&path, &snap, true);
                self.metrics.source_loaded(self.kind.metric);
                self.st.serve(&bytes, h, (self.kind.size)(&snap));
                drop(bytes);
                let snap = Arc::new(snap);
                self.served_model = snap.clone();
                self.tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&snap) {
                        false
                    } else {
                        *cur = Some(snap);
                        true
                    }
                });
                // On the next wake-up, once the snapshot builder is done with this version: a
                // trim holds each malloc arena's lock while it walks it.
                self.trim_due = true;
            }
            Ok(Err(e)) => {
                self.failing = false;
                self.error(format!("edit rejected: {e}"), || {
                    tracing::error!(error = %e, "{what} edit rejected; still serving the last good version")
                });
            }
            Err(_) => {
                self.failing = false;
                self.error("edit rejected: its parser panicked".into(), || {
                    tracing::error!(
                        "{what} parser panicked (a bug: please report it); still serving the last good version"
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{hash, share_unchanged, Verdict, WatchState};

    fn state(served: &str, services: usize) -> WatchState {
        WatchState::new(Some(served.as_bytes()), services)
    }

    fn judge(st: &mut WatchState, bytes: &[u8], now: Instant, hold: Duration) -> Verdict {
        st.judge(bytes, hash(bytes), now, hold)
    }

    #[test]
    fn served_and_already_seen_versions_are_unchanged() {
        let mut st = state("namespaces: [a]\n", 1);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        assert_eq!(judge(&mut st, b"namespaces: [a]\n", now, hold), Verdict::Unchanged);
        assert_eq!(judge(&mut st, b"namespaces: [b]\n", now, hold), Verdict::Apply);
        // A broken version is looked at once.
        assert_eq!(judge(&mut st, b"namespaces: [b]\n", now, hold), Verdict::Unchanged);
    }

    #[test]
    fn an_empty_file_never_replaces_served_services() {
        let mut st = state("namespaces: [a]\n", 1);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        assert_eq!(judge(&mut st, b"", now, hold), Verdict::Empty);
        assert_eq!(judge(&mut st, b"", now + hold * 10, hold), Verdict::Unchanged, "never applied");
        assert_eq!(judge(&mut st, b" \n", now, hold), Verdict::Empty);
        // Nothing served: an empty file is harmless.
        let mut st = state("namespaces: []\n", 0);
        assert_eq!(judge(&mut st, b"", now, hold), Verdict::Apply);
    }

    #[test]
    fn a_cut_off_copy_is_held_until_it_stays() {
        let full = "namespaces:\n  - name: a\n    type: HTTP\n  - name: b\n    type: HTTP\n";
        let mut st = state(full, 2);
        let now = Instant::now();
        let hold = Duration::from_secs(5);
        let cut = &full.as_bytes()[..25];
        assert_eq!(judge(&mut st, cut, now, hold), Verdict::CutOff);
        assert_eq!(judge(&mut st, cut, now + Duration::from_secs(1), hold), Verdict::Unchanged);
        assert_eq!(judge(&mut st, cut, now + hold, hold), Verdict::ApplyCutOff);
        // Restored before the hold ends: back to the served version, nothing applied.
        let mut st = state(full, 2);
        assert_eq!(judge(&mut st, cut, now, hold), Verdict::CutOff);
        assert_eq!(judge(&mut st, full.as_bytes(), now + Duration::from_secs(1), hold), Verdict::Unchanged);
        assert_eq!(st.cut_since, None);
        // A different cut restarts the hold.
        assert_eq!(judge(&mut st, cut, now, hold), Verdict::CutOff);
        assert_eq!(judge(&mut st, &full.as_bytes()[..30], now + Duration::from_secs(4), hold), Verdict::CutOff);
        assert_eq!(judge(&mut st, &full.as_bytes()[..30], now + Duration::from_secs(6), hold), Verdict::Unchanged);
        // A longer file or a different one is an ordinary edit.
        assert_eq!(
            judge(&mut st, format!("{full}  - name: c\n    type: HTTP\n").as_bytes(), now, hold),
            Verdict::Apply
        );
    }

    #[test]
    fn the_cut_off_check_keeps_block_hashes_not_the_served_bytes() {
        use super::{ServedShape, BLOCK};
        let served: Vec<u8> = (0..BLOCK * 3 + 100).map(|i| (i * 7 % 251) as u8).collect();
        let shape = ServedShape::of(&served);
        assert_eq!((shape.blocks.len(), shape.tail.len()), (3, 100), "8 bytes per block and the tail are kept");
        // Exact prefixes of every kind are recognized: within the tail, at a block edge, mid-block.
        for cut in [BLOCK * 3 + 50, BLOCK * 3, BLOCK * 2, BLOCK + 10, 1] {
            assert!(shape.has_prefix(&served[..cut]), "{cut}");
        }
        // Not a prefix: a whole block differs, the tail differs, or it is not shorter.
        let mut other = served[..BLOCK * 2 + 10].to_vec();
        other[BLOCK + 5] ^= 1;
        assert!(!shape.has_prefix(&other));
        let mut other = served[..BLOCK * 3 + 50].to_vec();
        other[BLOCK * 3 + 49] ^= 1;
        assert!(!shape.has_prefix(&other));
        assert!(!shape.has_prefix(&served));
        // What is not kept: a change in the last partial block of a shorter file inside a served
        // block is taken as a prefix (held for the cut-off hold, then applied).
        let mut other = served[..BLOCK + 10].to_vec();
        other[BLOCK + 9] ^= 1;
        assert!(shape.has_prefix(&other));
    }

    #[test]
    fn unchanged_services_are_shared_with_the_previous_snapshot() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/registry.yaml"));
        let text = std::fs::read_to_string(path).unwrap();
        let prev = super::super::parse(path, &text).unwrap();
        let mut next = super::super::parse(path, &text).unwrap();
        // Change one service: every other one is taken from `prev`.
        let changed = &mut next.namespaces[0].services[0];
        crate::model::Service::edit_instances(changed, |v| v.clear());
        share_unchanged(&mut next, &prev);
        let pairs: Vec<_> = prev
            .namespaces
            .iter()
            .zip(&next.namespaces)
            .flat_map(|(a, b)| a.services.iter().zip(&b.services))
            .collect();
        assert!(pairs.len() >= 2, "the example has several services");
        assert!(!std::sync::Arc::ptr_eq(pairs[0].0, pairs[0].1), "the changed service is new");
        assert!(pairs[1..].iter().all(|(a, b)| std::sync::Arc::ptr_eq(a, b)), "the others are shared");
        assert_eq!(next.namespaces[0].services[0].instances.len(), 0);
    }
}
