//! Push pacing: bounds how often a new snapshot reaches the clients.
//!
//! Every snapshot we publish is a full ServiceEntry response to every istiod, which decodes all of
//! it (and istiod's config-source client keeps its first 100 responses, see docs/operations.md).
//! A source that changes many times a second (a rolling deployment touching a service after
//! another) would otherwise make each istiod decode the whole registry many times a second.
//!
//! The rule: the first change after a quiet period goes through at once; changes that follow
//! within `min_interval` of the last one passed on are held and coalesced into a single snapshot
//! passed on when the window ends (the newest one: snapshots are complete states, so nothing is
//! lost by skipping the ones in between).
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::time::Instant;

/// Passes the values of `rx` on to `tx`, at most one per `min_interval` (see the module doc). A
/// zero interval passes every change on at once. `held` counts the windows in which a change was
/// held back. Returns when `rx`'s sender or every receiver of `tx` is gone (after passing on the
/// last value).
pub async fn pace<T: Clone>(mut rx: watch::Receiver<Option<T>>, tx: watch::Sender<Option<T>>, min_interval: Duration, held: Counter) {
    let mut last_sent: Option<Instant> = None;
    loop {
        let value = rx.borrow_and_update().clone();
        if value.is_some() {
            tx.send_replace(value);
            last_sent = Some(Instant::now());
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() {
                // The source is gone; its last value is passed on below if it was never seen.
                if rx.has_changed().unwrap_or(false) {
                    tx.send_replace(rx.borrow_and_update().clone());
                }
                return;
            },
            _ = tx.closed() => return,
        }
        let Some(due) = last_sent.map(|t| t + min_interval) else { continue };
        if Instant::now() >= due {
            continue;
        }
        // Inside the window: everything that arrives until it ends is folded into one value.
        held.inc();
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Starts [`pace`] on a new channel and returns its receiving end; with a zero interval, `rx`
/// itself.
pub fn paced<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<Option<T>>,
    min_interval: Duration,
    held: Counter,
) -> watch::Receiver<Option<T>> {
    if min_interval.is_zero() {
        return rx;
    }
    let (tx, out) = watch::channel(None);
    tokio::spawn(pace(rx, tx, min_interval, held));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const WINDOW: Duration = Duration::from_millis(1000);

    /// Sends `changes` (milliseconds from the start, value) through a paced channel and returns
    /// when (milliseconds from the start) each value came out.
    async fn run(changes: &[(u64, u32)], window: Duration) -> (Vec<(u64, u32)>, u64) {
        let start = Instant::now();
        let (src_tx, src_rx) = watch::channel(None);
        let held = Counter::default();
        let mut out = paced(src_rx, window, held.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let observer = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while out.changed().await.is_ok() {
                    let v = *out.borrow_and_update();
                    seen.lock().unwrap().push((start.elapsed().as_millis() as u64, v.unwrap()));
                }
            })
        };
        for &(at, v) in changes {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            src_tx.send_replace(Some(v));
        }
        // Let the last window end, then close the source.
        tokio::time::sleep(window * 3).await;
        drop(src_tx);
        observer.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, held.get())
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_passes_at_once() {
        let (seen, held) = run(&[(0, 1), (5_000, 2), (9_000, 3)], WINDOW).await;
        assert_eq!(seen, [(0, 1), (5_000, 2), (9_000, 3)]);
        assert_eq!(held, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_inside_the_window_are_coalesced_into_one_at_its_end() {
        // 1 goes at once; 2, 3, 4 arrive within the window and only the newest (4) goes, at 1000 ms;
        // 5 arrives inside the next window (which began at 1000 ms) and goes at 2000 ms; 6 comes
        // after a quiet period and goes at once.
        let (seen, held) = run(&[(0, 1), (10, 2), (20, 3), (900, 4), (1_500, 5), (4_000, 6)], WINDOW).await;
        assert_eq!(seen, [(0, 1), (1_000, 4), (2_000, 5), (4_000, 6)]);
        assert_eq!(held, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_goes_out_once_per_window() {
        // A change every 7 ms for 5 s (143 per second, a rolling deployment): one value per window,
        // always the newest one at the end of that window.
        let changes: Vec<(u64, u32)> = (0..715).map(|i| (i * 7, i as u32)).collect();
        let (seen, held) = run(&changes, WINDOW).await;
        let expected: Vec<(u64, u32)> = (0..=5).map(|k| (k * 1_000, (k * 1_000 / 7) as u32)).collect();
        assert_eq!(seen, expected, "one value per window, the newest of it");
        assert_eq!(held, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_passes_every_change() {
        let (seen, held) = run(&[(0, 1), (1, 2), (2, 3)], Duration::ZERO).await;
        assert_eq!(seen, [(0, 1), (1, 2), (2, 3)]);
        assert_eq!(held, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_value_is_passed_on_when_the_source_goes() {
        let (src_tx, src_rx) = watch::channel(None);
        let (tx, out) = watch::channel(None);
        let task = tokio::spawn(pace(src_rx, tx, WINDOW, Counter::default()));
        src_tx.send_replace(Some(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        src_tx.send_replace(Some(2));
        drop(src_tx);
        task.await.unwrap();
        assert_eq!(*out.borrow(), Some(2));
    }
}
