//! The shared API budget: a token bucket (GCRA: calls are given start times, first come first
//! served) with jitter, a concurrency limit, and the backoff used when Cloud Map throttles.
//!
//! Every Cloud Map call of the process goes through one [`Budget`], so over any window of `W`
//! seconds at most `burst + rate × W` calls start, whatever the number of services.
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::metrics::CloudMapMetrics;

/// How fast calls may start and how many may run at once.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct BudgetConfig {
    /// Calls per second.
    pub rate: f64,
    /// Calls that may start at once after a quiet period.
    pub burst: u32,
    /// Calls in flight at once.
    pub concurrency: u32,
}

pub struct Budget {
    /// Time between two calls at the steady rate.
    interval: Duration,
    /// How far ahead of the steady schedule a call may start (`(burst - 1) × interval`).
    tolerance: Duration,
    /// Theoretical arrival time of the next call.
    tat: Mutex<Instant>,
    in_flight: Semaphore,
    config: BudgetConfig,
}

/// Held while a call is in flight.
pub struct Permit<'a> {
    _permit: SemaphorePermit<'a>,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Self {
        let rate = if config.rate.is_finite() && config.rate > 0.0 { config.rate } else { 1.0 };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let burst = config.burst.max(1);
        Budget {
            interval,
            tolerance: interval * (burst - 1),
            tat: Mutex::new(Instant::now()),
            in_flight: Semaphore::new(config.concurrency.max(1) as usize),
            config,
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Waits for this call's turn (plus a little jitter when it had to wait at all), then for a
    /// free slot. Records the wait in `metrics`.
    pub async fn acquire(&self, metrics: &CloudMapMetrics) -> Permit<'_> {
        let now = Instant::now();
        let start_at = {
            let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
            let t = (*tat).max(now);
            *tat = t + self.interval;
            t.checked_sub(self.tolerance).unwrap_or(now).max(now)
        };
        if start_at > now {
            // Spread calls that were queued together instead of releasing them in lockstep.
            let jitter = self.interval.mul_f64(rand::rng().random_range(0.0..0.5));
            let until = start_at + jitter;
            metrics.budget_waits.inc();
            metrics.budget_wait_seconds.inc_by((until - now).as_secs_f64());
            tokio::time::sleep_until(until).await;
        }
        let permit = self.in_flight.acquire().await.expect("the budget semaphore is never closed");
        Permit { _permit: permit }
    }
}

/// Exponential backoff with "equal jitter": attempt `n` (0-based) waits between half and all of
/// `min(cap, base × 2^n)`, so waits grow even with the randomness.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let full = doubled(base, attempt, cap);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// `min(cap, base × 2^n)`.
pub fn doubled(base: Duration, n: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX)).min(cap)
}

/// Multiplies `d` by a random factor in `[1 - spread, 1 + spread]`.
pub fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + rand::rng().random_range(-spread..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..8 {
            let full = (base * 2u32.pow(attempt)).min(cap);
            for _ in 0..50 {
                let d = backoff(attempt, base, cap);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} not in [{:?}, {full:?}]", full / 2);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_rate() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = CloudMapMetrics::register(&mut registry);
        let budget = Budget::new(BudgetConfig { rate: 10.0, burst: 5, concurrency: 100 });
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..25 {
            let _p = budget.acquire(&metrics).await;
            starts.push(start.elapsed());
        }
        // 5 at once, then 10/s: the 25th call cannot start before 2 s.
        assert!(starts[4] < Duration::from_millis(1), "{starts:?}");
        assert!(starts[24] >= Duration::from_secs(2), "{starts:?}");
        // Never more than burst + rate × window in any window starting at 0.
        for (i, s) in starts.iter().enumerate() {
            assert!((i as f64) < 5.0 + 10.0 * s.as_secs_f64() + 1e-9, "call {i} at {s:?}");
        }
        assert!(metrics.budget_waits.get() >= 20);
    }
}
