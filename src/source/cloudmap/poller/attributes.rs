//! Cloud Map service attributes (GetServiceAttributes): per-service key/values that a service's
//! owners set with `aws servicediscovery update-service-attributes`. They become
//! [`model::Service::attributes`](crate::model::Service); keys under `cloudmap-mcp/` override the
//! mapping for that service (docs/mapping.md).
//!
//! When they are read:
//! - **New service**: with the first read of its instances (a new or re-created service, by a
//!   resync), before it is first served, so a service never starts with its defaults and flips to
//!   its overrides a moment later.
//! - **Refresh**: then every `attributes_refresh_interval` (`--service-attributes-refresh-interval`,
//!   5 min by default, ±10 % jitter; the first refresh of each service falls at a random point of
//!   the interval so that the reads of many services spread out). UpdateServiceAttributes does not
//!   move the instances revision, so the revision polls cannot see it: the worst-case delay of an
//!   update is 1.1 × the interval, plus any wait for the API budget.
//! - **Event**: at once when [`Poller::refresh_service_attributes`] is called (the event source
//!   calls it on an UpdateServiceAttributes or DeleteServiceAttributes event).
//!
//! Every read goes through the shared API budget. A failed read keeps the last good attributes.
//! Access denied (an IAM policy without `servicediscovery:GetServiceAttributes`) is logged once,
//! shown by the `cloudmap_mcp_cloudmap_service_attributes_denied` gauge and in `/debug/cloudmap`,
//! and the services are served without attributes; reads go on at the refresh cadence, so a fixed
//! policy is picked up without a restart.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use rand::Rng;
use tokio::time::Instant;

use super::{Poller, SvcKey};
use crate::source::cloudmap::budget::jittered;
use crate::source::cloudmap::client::{ApiError, ErrorKind};
use crate::source::cloudmap::record::ErrorRecord;

/// What GetServiceAttributes last said about one service.
#[derive(Debug)]
pub(in crate::source::cloudmap) struct ServiceAttributes {
    /// The last good answer; empty until one.
    pub values: BTreeMap<String, String>,
    /// The service id the last good answer is about (a re-created service is read again).
    pub read_for: Option<String>,
    pub read_at: Option<SystemTime>,
    /// When the refresh loop reads them next.
    pub next_read: Instant,
    /// Sequence number of the request behind `values` (an older answer never overwrites a newer one).
    pub seq: u64,
    pub last_error: Option<ErrorRecord>,
}

impl Default for ServiceAttributes {
    fn default() -> Self {
        ServiceAttributes {
            values: BTreeMap::new(),
            read_for: None,
            read_at: None,
            next_read: Instant::now(),
            seq: 0,
            last_error: None,
        }
    }
}

/// Why a service's attributes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::source::cloudmap) enum Reason {
    New,
    Refresh,
    Event,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Refresh => "refresh",
            Reason::Event => "event",
        }
    }
}

/// Process-wide: whether GetServiceAttributes is denied.
#[derive(Debug, Default)]
pub(in crate::source::cloudmap) struct Access {
    /// The denial, while the IAM policy does not allow the call.
    pub denied: Option<ErrorRecord>,
}

/// The answer of an IAM policy without the permission.
fn is_denied(e: &ApiError) -> bool {
    e.kind == ErrorKind::Rejected
        && e.code
            .as_deref()
            .is_some_and(|c| matches!(c, "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation"))
}

impl Poller {
    /// Reads the attributes of a service that has never been read under its current id (a new or
    /// re-created service); part of a resync, before the service is first served.
    pub(super) async fn read_attributes_if_new(&self, key: &SvcKey) {
        let id = {
            let st = self.lock();
            let Some(e) = st.services.get(key) else {
                return;
            };
            if e.attributes.read_for.as_deref() == Some(e.id.as_str()) {
                return;
            }
            e.id.clone()
        };
        self.read_attributes(key, id, Reason::New).await;
    }

    /// Re-reads one service's attributes now and publishes when they changed (for the event source:
    /// UpdateServiceAttributes and DeleteServiceAttributes do not move the instances revision).
    /// `service` is the Cloud Map service id or ARN. Returns whether the served attributes
    /// changed, or `None` when no selected, listed service has that id (a service not listed yet is
    /// read with its instances by the next resync).
    pub async fn refresh_service_attributes(&self, service: &str) -> Option<bool> {
        let (key, id) = {
            let st = self.lock();
            st.services
                .iter()
                .find(|(_, e)| e.id == service || e.arn.as_deref() == Some(service))
                .map(|(k, e)| (k.clone(), e.id.clone()))?
        };
        let changed = self.read_attributes(&key, id, Reason::Event).await;
        if changed {
            self.notify_changed();
        }
        Some(changed)
    }

    async fn read_attributes(&self, key: &SvcKey, id: String, reason: Reason) -> bool {
        let seq = self.lock().next_seq();
        self.metrics.attribute_read(reason.label());
        let r = self.api.get_service_attributes(&id).await;
        self.apply_attributes(key, &id, seq, r, reason)
    }

    /// Applies a GetServiceAttributes answer (or failure). Returns whether the served attributes changed.
    pub(super) fn apply_attributes(
        &self,
        key: &SvcKey,
        id: &str,
        seq: u64,
        r: Result<BTreeMap<String, String>, ApiError>,
        reason: Reason,
    ) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        let interval = self.attributes_interval();
        match &r {
            Err(err) if is_denied(err) => {
                if st.attributes.denied.is_none() {
                    tracing::error!(
                        error = %err,
                        "GetServiceAttributes is denied: add servicediscovery:GetServiceAttributes to the IAM policy \
                         (deploy/iam-policy.json). Serving every service without its Cloud Map service attributes \
                         (no cloudmap-mcp/* overrides); retrying every --service-attributes-refresh-interval"
                    );
                    self.metrics.attributes_denied.set(1);
                }
                st.attributes.denied = Some(ErrorRecord::new(err.clone()));
            }
            Ok(_) => {
                if st.attributes.denied.take().is_some() {
                    tracing::info!("GetServiceAttributes is allowed again: service attributes are read");
                    self.metrics.attributes_denied.set(0);
                }
            }
            Err(_) => {}
        }
        let Some(e) = st.services.get_mut(key) else {
            return false;
        };
        if e.id != id {
            return false; // re-created meanwhile: the new id is read on its own
        }
        let served = e.data.is_some();
        let a = &mut e.attributes;
        let now = Instant::now();
        match r {
            Ok(values) => {
                if seq < a.seq {
                    return false;
                }
                a.seq = seq;
                a.read_for = Some(id.to_string());
                a.read_at = Some(SystemTime::now());
                a.next_read = now
                    + match reason {
                        Reason::New => interval.mul_f64(rand::rng().random_range(0.1..1.0)),
                        Reason::Refresh | Reason::Event => jittered(interval, 0.1),
                    };
                if let Some(err) = a.last_error.take() {
                    tracing::info!(namespace = %key.0, service = %key.1, previous_error = %err.error, "Cloud Map service attributes readable again");
                }
                if a.values == values {
                    return false;
                }
                if reason != Reason::New || !values.is_empty() {
                    // Whoever may update the service's attributes writes these values (up to
                    // 1,024 bytes each, 30 of them): at info only keys and lengths.
                    tracing::info!(
                        namespace = %key.0,
                        service = %key.1,
                        read = reason.label(),
                        attributes = %key_lengths(&values),
                        "Cloud Map service attributes changed"
                    );
                    tracing::debug!(namespace = %key.0, service = %key.1, attributes = %shortened(&values), "Cloud Map service attribute values");
                }
                a.values = values;
                if served {
                    st.dirty = true;
                }
                served
            }
            Err(err) => {
                // Transient failures are retried sooner; denial and other refusals at the cadence.
                let retry =
                    if err.kind.is_transient() { interval.min(self.settings.resync_interval) } else { interval };
                a.next_read = now + jittered(retry, 0.1);
                let first = a.last_error.as_ref().is_none_or(|p| p.error.kind != err.kind);
                if is_denied(&err) {
                    // Logged once for the process above.
                } else if first {
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %err, "cannot read Cloud Map service attributes; keeping the last good ones");
                } else {
                    tracing::debug!(namespace = %key.0, service = %key.1, error = %err, "cannot read Cloud Map service attributes");
                }
                a.last_error = Some(ErrorRecord::new(err));
                false
            }
        }
    }

    /// The services whose attribute refresh is due (only served ones: a service not served yet
    /// gets its attributes with its first instances).
    pub(super) fn due_attributes(&self) -> Vec<(SvcKey, String)> {
        let st = self.lock();
        let now = Instant::now();
        st.services
            .iter()
            .filter(|(_, e)| e.data.is_some() && e.attributes.next_read <= now)
            .map(|(k, e)| (k.clone(), e.id.clone()))
            .collect()
    }

    /// Refreshes due attributes, forever (until every snapshot receiver is gone).
    pub(super) async fn attributes_loop(self: Arc<Self>) {
        let tick =
            (self.settings.attributes_refresh_interval / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.tx.closed() => return,
            }
            // While Cloud Map does not answer at all, the resyncs probe; reads resume after.
            if self.api.unreachable() {
                continue;
            }
            let due = self.due_attributes();
            if due.is_empty() {
                continue;
            }
            let this = &self;
            let changed = stream::iter(due)
                .map(|(key, id)| async move { this.read_attributes(&key, id, Reason::Refresh).await })
                .buffer_unordered(self.concurrency())
                .fold(false, |acc, c| async move { acc | c })
                .await;
            if changed {
                self.notify_changed();
            }
        }
    }
}

/// Longest value shown by [`shortened`], in characters.
const SHOWN_VALUE_CHARS: usize = 64;

/// `key (N bytes), ...`: what the info line shows of a service's attributes.
fn key_lengths(values: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = values.iter().map(|(k, v)| format!("{k} ({} bytes)", v.len())).collect();
    parts.join(", ")
}

/// `key=value, ...` with each value cut to [`SHOWN_VALUE_CHARS`] characters: the debug line.
fn shortened(values: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|(k, v)| match v.char_indices().nth(SHOWN_VALUE_CHARS) {
            Some((cut, _)) => format!("{k}={:?}… ({} bytes)", &v[..cut], v.len()),
            None => format!("{k}={v:?}"),
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cloudmap::client::Op;
    use crate::source::cloudmap::poller::tests::{keys, poller_with, state_with};

    fn denied() -> ApiError {
        ApiError {
            operation: Op::GetServiceAttributes,
            kind: ErrorKind::Rejected,
            code: Some("AccessDeniedException".into()),
            message: "not authorized".into(),
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn answers_reach_the_snapshot_and_older_answers_never_win() {
        let p = poller_with(|_| {});
        *p.lock() = state_with(1);
        let key = keys(&[0]).remove(0);
        let before = p.lock().snapshot();
        assert!(before.namespaces[0].services[0].attributes.is_empty());

        let a = attrs(&[("cloudmap-mcp/protocol", "HTTP")]);
        assert!(p.apply_attributes(&key, "srv-0", 5, Ok(a.clone()), Reason::New));
        assert!(!p.apply_attributes(&key, "srv-0", 6, Ok(a.clone()), Reason::Refresh), "same answer: no change");
        assert!(!p.apply_attributes(&key, "srv-0", 4, Ok(BTreeMap::new()), Reason::Refresh), "older request dropped");
        assert!(!p.apply_attributes(&key, "srv-other", 9, Ok(BTreeMap::new()), Reason::Event), "another id");
        let after = p.lock().snapshot();
        assert_eq!(after.namespaces[0].services[0].attributes, a);
        assert!(!Arc::ptr_eq(&before.namespaces[0].services[0], &after.namespaces[0].services[0]));
        // Unchanged attributes keep sharing the published service.
        let again = p.lock().snapshot();
        assert!(Arc::ptr_eq(&after.namespaces[0].services[0], &again.namespaces[0].services[0]));
        let st = p.lock();
        let e = &st.services[&key].attributes;
        assert_eq!(e.read_for.as_deref(), Some("srv-0"));
        let interval = p.settings.attributes_refresh_interval;
        assert!(e.next_read <= Instant::now() + interval.mul_f64(1.11) && e.next_read > Instant::now());
    }

    #[test]
    fn failures_keep_the_last_good_attributes_and_denial_is_tracked_once() {
        let p = poller_with(|_| {});
        *p.lock() = state_with(2);
        let k0 = keys(&[0]).remove(0);
        let k1 = keys(&[1]).remove(0);
        let a = attrs(&[("cloudmap-mcp/vip", "false")]);
        assert!(p.apply_attributes(&k0, "srv-0", 1, Ok(a.clone()), Reason::New));
        assert!(!p.apply_attributes(&k0, "srv-0", 2, Err(denied()), Reason::Refresh));
        assert!(!p.apply_attributes(&k1, "srv-1", 3, Err(denied()), Reason::Refresh));
        assert_eq!(p.metrics.attributes_denied.get(), 1);
        {
            let st = p.lock();
            assert!(st.attributes.denied.is_some());
            assert_eq!(st.services[&k0].attributes.values, a, "kept");
            assert!(st.services[&k0].attributes.last_error.is_some());
        }
        let snap = p.lock().snapshot();
        assert_eq!(snap.namespaces[0].services[0].attributes, a);
        assert!(snap.namespaces[0].services[1].attributes.is_empty(), "served without attributes");

        // Allowed again: the gauge drops and the error is over.
        assert!(!p.apply_attributes(&k1, "srv-1", 4, Ok(BTreeMap::new()), Reason::Refresh));
        assert_eq!(p.metrics.attributes_denied.get(), 0);
        let st = p.lock();
        assert!(st.attributes.denied.is_none());
        assert!(st.services[&k1].attributes.last_error.is_none());
    }

    #[test]
    fn only_served_services_whose_refresh_is_due_are_read() {
        let p = poller_with(|_| {});
        let mut st = state_with(3);
        let now = Instant::now();
        for (i, e) in st.services.values_mut().enumerate() {
            e.attributes.next_read = if i == 1 { now + Duration::from_secs(60) } else { now };
        }
        st.services.get_mut(&keys(&[2])[0]).unwrap().data = None;
        *p.lock() = st;
        let due: Vec<String> = p.due_attributes().into_iter().map(|(k, _)| k.1).collect();
        assert_eq!(due, vec!["s0"]);
    }
}
