//! Debug views rendered once and shared, or streamed.
//!
//! At 10,000 services `/debug/serviceentries` is tens of megabytes of YAML: rendered whole per
//! request, 20 concurrent requests took the server from 472 MB to 3.99 GB; rendered once and
//! shared, 20 slow readers still doubled the resident memory (183 → 366 MB), which stayed. That
//! view is now streamed ([`super::stream`]): each request reads the served entries back one by
//! one from the snapshot it started on and writes them as it goes, a piece at a time on the
//! render thread below, so a request holds one piece and the server holds no whole document.
//!
//! The other views are small and go through one [`ViewCache`]:
//!
//! - **single flight**: one lock, held for the whole render, so at most one view renders at a
//!   time; requests arriving meanwhile wait in line (FIFO) and take the result when it is theirs;
//! - **per snapshot**: a view of the served snapshot ([`Freshness::Snapshot`]) is rendered once per
//!   snapshot serial and then served as shared [`Bytes`] (no copy per request) until a newer
//!   snapshot is asked for, which evicts it;
//! - **live** views ([`Freshness::Live`], state that changes without a new snapshot) are shared only
//!   by requests that arrived before their render started, so an answer is never older than its
//!   request.
//!
//! The render itself runs on a dedicated thread and is not cancelled when the requester goes away:
//! the next one in line gets it.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

/// The debug views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    ServiceEntriesYaml,
    ServiceEntriesJson,
    Rejected,
    Clients,
    CloudMap,
    HeldEdits,
    Shards,
    AppMesh,
}

impl View {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            View::ServiceEntriesYaml => "serviceentries_yaml",
            View::ServiceEntriesJson => "serviceentries_json",
            View::Rejected => "rejected",
            View::Clients => "clients",
            View::CloudMap => "cloudmap",
            View::HeldEdits => "held_edits",
            View::Shards => "shards",
            View::AppMesh => "appmesh",
        }
    }
}

/// When a rendered view may be served again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A view of the snapshot with this serial: valid as long as that snapshot is served.
    Snapshot(u64),
    /// Live state: shared only by requests that arrived before the render started.
    Live,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("rendering the debug view failed: {0}")]
    Failed(String),
}

struct Rendered {
    view: View,
    freshness: Freshness,
    started: Instant,
    body: Bytes,
}

impl Rendered {
    fn serves(&self, view: View, freshness: Freshness, arrived: Instant) -> bool {
        self.view == view
            && match (self.freshness, freshness) {
                (Freshness::Snapshot(a), Freshness::Snapshot(b)) => a == b,
                (Freshness::Live, Freshness::Live) => self.started >= arrived,
                _ => false,
            }
    }

    /// Kept when `view` at `freshness` is rendered: other views of the same snapshot and other live
    /// views; never an older snapshot's views or the previous render of the same view.
    fn kept_beside(&self, view: View, freshness: Freshness) -> bool {
        if self.view == view {
            return false;
        }
        match (self.freshness, freshness) {
            (Freshness::Snapshot(a), Freshness::Snapshot(b)) => a == b,
            _ => true,
        }
    }
}

/// `cloudmap_mcp_debug_view_renders_total{view}` and `cloudmap_mcp_debug_view_shared_total{view}`.
#[derive(Clone, Default)]
pub struct ViewMetrics {
    renders: Family<Vec<(&'static str, &'static str)>, Counter>,
    shared: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl ViewMetrics {
    pub fn register(r: &mut Registry) -> ViewMetrics {
        let m = ViewMetrics::default();
        r.register(
            "cloudmap_mcp_debug_view_renders",
            "Debug views rendered (ServiceEntry views: one streamed render per request; others at most one at a time, per-snapshot views once per snapshot)",
            m.renders.clone(),
        );
        r.register(
            "cloudmap_mcp_debug_view_shared",
            "Debug view requests answered with an already rendered view",
            m.shared.clone(),
        );
        m
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread for every render. Renders never overlap (the cache's lock), and running them all on
/// the same thread keeps them in one malloc arena: a render reuses the memory the previous one
/// freed instead of growing another arena (on the blocking pool, each render could leave its
/// working set behind in a different thread's arena).
fn render_thread() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("debug-views".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .expect("spawning the debug-view thread");
    tx
}

/// See the module documentation.
pub struct ViewCache {
    slots: Arc<Mutex<Vec<Rendered>>>,
    metrics: ViewMetrics,
    thread: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    /// Streamed views in progress.
    streams: AtomicUsize,
}

/// Held by a streamed view for as long as it is read; see [`ViewCache::stream_started`].
pub struct StreamGuard(Arc<ViewCache>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last reader left: give the pieces' memory back (freed on other threads than the
            // one that made them, it stays in the allocator's arenas otherwise). On the render
            // thread: a trim holds each arena's lock while it walks it.
            drop(self.0.run(crate::util::return_freed_memory));
        }
    }
}

impl ViewCache {
    pub fn new(metrics: ViewMetrics) -> ViewCache {
        ViewCache {
            slots: Arc::new(Mutex::new(Vec::new())),
            metrics,
            thread: std::sync::Mutex::new(render_thread()),
            streams: AtomicUsize::new(0),
        }
    }

    /// A streamed view starts; when the last one in progress ends (its guard dropped: read to the
    /// end, or the reader gone), the memory freed meanwhile is returned to the kernel.
    pub fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Runs `render` on the render thread; a panic is an error.
    fn run<T, F>(&self, render: F) -> tokio::sync::oneshot::Receiver<std::thread::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(render)));
        });
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(std::sync::mpsc::SendError(job)) = thread.send(job) {
            // The thread is gone (only if a render aborted it): start another.
            *thread = render_thread();
            let _ = thread.send(job);
        }
        rx
    }

    /// Runs `work` on the render thread, after the work queued before it (without the cache's
    /// lock: for views streamed piece by piece, see [`super::stream`]).
    pub async fn on_render_thread<T, F>(&self, work: F) -> Result<T, RenderError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        outcome(self.run(work).await, "a streamed debug view")
    }

    /// Counts a render of `view` that does not go through [`Self::get`] (a streamed view).
    pub fn count_render(&self, view: View) {
        self.metrics.renders.get_or_create(&vec![("view", view.label())]).inc();
    }

    /// The body of `view`: shared if a render valid for this request exists, else rendered by
    /// `render` (on the render thread) once the renders ahead of it are done.
    pub async fn get<F>(
        &self,
        view: View,
        freshness: Freshness,
        render: F,
    ) -> Result<Bytes, RenderError>
    where
        F: FnOnce() -> Bytes + Send + 'static,
    {
        let arrived = Instant::now();
        let labels = vec![("view", view.label())];
        let mut slots = self.slots.clone().lock_owned().await;
        if let Some(r) = slots.iter().find(|r| r.serves(view, freshness, arrived)) {
            self.metrics.shared.get_or_create(&labels).inc();
            return Ok(r.body.clone());
        }
        // Evict first, so the old body is freed before the new one is built.
        slots.retain(|r| r.kept_beside(view, freshness));
        self.metrics.renders.get_or_create(&labels).inc();
        // Detached: a requester that disconnects does not cancel the render; the lock is released
        // only once the result is stored, so the next in line finds it.
        let started = Instant::now();
        let rendered = self.run(render);
        let task = tokio::spawn(async move {
            let body = outcome(rendered.await, view.label())?;
            slots.push(Rendered { view, freshness, started, body: body.clone() });
            Ok(body)
        });
        task.await.map_err(|e| RenderError::Failed(e.to_string()))?
    }
}

/// The result of work sent to the render thread: a panic (`what` names the work) or a lost thread
/// is an error.
fn outcome<T>(r: Result<std::thread::Result<T>, tokio::sync::oneshot::error::RecvError>, what: &str) -> Result<T, RenderError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(RenderError::Failed(format!("rendering {what} panicked"))),
        Err(_) => Err(RenderError::Failed("the render thread is gone".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn cache() -> Arc<ViewCache> {
        Arc::new(ViewCache::new(ViewMetrics::default()))
    }

    /// A render that takes 100 ms, counts how many run at once and how many ran.
    fn slow(
        running: &Arc<AtomicUsize>,
        peak: &Arc<AtomicUsize>,
        count: &Arc<AtomicUsize>,
        body: &str,
    ) -> impl FnOnce() -> Bytes {
        let (running, peak, count, body) = (
            running.clone(),
            peak.clone(),
            count.clone(),
            body.to_string(),
        );
        move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            running.fetch_sub(1, Ordering::SeqCst);
            Bytes::from(body)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_for_one_snapshot_share_one_render() {
        let c = cache();
        let (running, peak, count) = Default::default();
        let (running, peak, count): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (running, peak, count);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let f = slow(&running, &peak, &count, "v1");
            tasks.push(tokio::spawn(async move {
                c.get(View::ServiceEntriesYaml, Freshness::Snapshot(1), f)
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Bytes::from("v1"));
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "one render for 20 requests"
        );
        // A new snapshot renders again; different views render one at a time.
        let mut tasks = Vec::new();
        for (i, view) in [
            View::ServiceEntriesYaml,
            View::ServiceEntriesJson,
            View::Rejected,
        ]
        .into_iter()
        .enumerate()
        {
            for _ in 0..3 {
                let c = c.clone();
                let f = slow(&running, &peak, &count, &format!("v2-{i}"));
                tasks.push(tokio::spawn(async move {
                    (i, c.get(view, Freshness::Snapshot(2), f).await)
                }));
            }
        }
        for t in tasks {
            let (i, body) = t.await.unwrap();
            assert_eq!(body.unwrap(), Bytes::from(format!("v2-{i}")));
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            4,
            "one render per view of the new snapshot"
        );
        assert_eq!(peak.load(Ordering::SeqCst), 1, "never two renders at once");
        // The old snapshot's body was evicted: asking for it renders again.
        let f = slow(&running, &peak, &count, "v1 again");
        assert_eq!(
            c.get(View::ServiceEntriesYaml, Freshness::Snapshot(1), f)
                .await
                .unwrap(),
            Bytes::from("v1 again")
        );
        assert_eq!(
            c.slots.lock().await.len(),
            1,
            "only the views of the newest snapshot asked for are kept"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_live_view_is_never_older_than_its_request() {
        let c = cache();
        let (running, peak, count): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let f = slow(&running, &peak, &count, "first");
        assert_eq!(
            c.get(View::Clients, Freshness::Live, f).await.unwrap(),
            Bytes::from("first")
        );
        // Asked after the first render: rendered again.
        let f = slow(&running, &peak, &count, "second");
        assert_eq!(
            c.get(View::Clients, Freshness::Live, f).await.unwrap(),
            Bytes::from("second")
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // 10 requests that arrive while a render is waiting for the lock share one render.
        let guard = c.slots.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let c = c.clone();
            let f = slow(&running, &peak, &count, "third");
            tasks.push(tokio::spawn(async move {
                c.get(View::Clients, Freshness::Live, f).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Bytes::from("third"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_requester_that_goes_away_does_not_waste_the_render() {
        let c = cache();
        let (running, peak, count): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let f = slow(&running, &peak, &count, "kept");
        let gone = tokio::time::timeout(
            Duration::from_millis(10),
            c.get(View::Rejected, Freshness::Snapshot(7), f),
        )
        .await;
        assert!(gone.is_err(), "the first requester gave up");
        let f = slow(&running, &peak, &count, "not used");
        assert_eq!(
            c.get(View::Rejected, Freshness::Snapshot(7), f)
                .await
                .unwrap(),
            Bytes::from("kept")
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn streams_in_progress_are_counted_until_their_guards_drop() {
        let c = cache();
        let (a, b) = (c.stream_started(), c.stream_started());
        assert_eq!(c.streams.load(Ordering::SeqCst), 2);
        drop(a);
        assert_eq!(c.streams.load(Ordering::SeqCst), 1);
        drop(b);
        assert_eq!(c.streams.load(Ordering::SeqCst), 0);
        // The trim queued by the last one runs on the render thread, before later work.
        assert_eq!(c.on_render_thread(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_render_is_an_error_and_releases_the_lock() {
        let c = cache();
        let err = c
            .get(View::CloudMap, Freshness::Live, || panic!("boom"))
            .await;
        assert!(matches!(err, Err(RenderError::Failed(_))));
        assert_eq!(
            c.get(View::CloudMap, Freshness::Live, || Bytes::from("ok"))
                .await
                .unwrap(),
            Bytes::from("ok")
        );
    }
}
