//! What the poller records for its debug view: failures with their time, and the last resync.
//! A leaf: the poller writes these, `debug` shows them.
use std::time::SystemTime;

use super::client::ApiError;
use crate::model::Timestamp;

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

/// What the last resync found (`/debug/cloudmap`).
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
