//! Small async helpers shared by the servers.
use tokio::sync::watch;

/// Completes when the flag turns true, or when its sender is gone.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Completes with true when the value becomes `Some`, false if the sender is gone first.
pub async fn until_some<T>(rx: &mut watch::Receiver<Option<T>>) -> bool {
    rx.wait_for(|v| v.is_some()).await.map(|_| ()).is_ok()
}

/// Lets a repeated log line through at most once per interval, counting the ones held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: std::time::Duration) -> Self {
        LogLimiter {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back since the last one),
    /// `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(std::time::Duration::from_millis(200));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(l.allow(), Some(2));
        assert_eq!(l.allow(), None);
    }
}
