//! Several Cloud Map sources in one server: one [`Poller`] per source (own credentials, Region,
//! selection and API budget), polled independently, their snapshots merged into one.
//!
//! - **Independence**: a source that fails keeps its last good snapshot in the merge (its poller
//!   never publishes a partial view), and never delays the others: each poller publishes on its
//!   own channel and the merge only reads the latest value of each.
//! - **First-sync hold**: nothing is served until every source has synced, or its first-sync
//!   timeout (counted from start) has passed; then the synced sources are served and each late one
//!   joins when it syncs. With no source synced, nothing is served.
//! - **Collisions**: sources are merged in name order and a namespace of one name keeps that order,
//!   so when two sources serve the same host the translation's rule applies: the older CreateDate
//!   wins, then the smaller `namespace/service`, then the source whose name sorts first.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Poller;
use crate::model::Snapshot;
use crate::source::{SnapshotRx, SnapshotTx};

/// One source as the merge sees it.
pub struct Member {
    pub name: String,
    pub snapshots: SnapshotRx,
    pub first_sync_timeout: Duration,
}

/// Merges the latest snapshot of each source (sorted by source name) into one, in canonical order.
/// `None` entries (sources not synced) are left out.
pub fn merge<'a>(parts: impl IntoIterator<Item = (&'a str, Option<&'a Snapshot>)>) -> Snapshot {
    let mut parts: Vec<(&str, &Snapshot)> = parts.into_iter().filter_map(|(n, s)| Some((n, s?))).collect();
    parts.sort_by(|a, b| a.0.cmp(b.0));
    let mut namespaces: Vec<_> = parts.iter().flat_map(|(_, s)| s.namespaces.iter().cloned()).collect();
    // Stable: namespaces of one name stay in source-name order (each source's own are unique by name).
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot { namespaces }
}

/// What the first-sync hold decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// Keep waiting, at most until this deadline (for the sources still within their timeout).
    Wait(Option<Instant>),
    /// Serve; these sources have not synced and are past their timeout.
    Serve { late: Vec<String> },
}

/// The hold rule: serve once every source has synced or is past its timeout, and one has synced.
pub fn hold(started: Instant, now: Instant, members: &[(&str, bool, Duration)]) -> Hold {
    let waiting: Vec<Instant> =
        members.iter().filter(|(_, synced, t)| !synced && now < started + *t).map(|(_, _, t)| started + *t).collect();
    if !waiting.is_empty() {
        return Hold::Wait(waiting.into_iter().min());
    }
    if !members.iter().any(|(_, synced, _)| *synced) {
        return Hold::Wait(None);
    }
    Hold::Serve { late: members.iter().filter(|(_, synced, _)| !synced).map(|(n, _, _)| n.to_string()).collect() }
}

/// Runs the merge until the output's receivers are gone: publishes the merged snapshot on `tx`
/// whenever a source publishes, once the first-sync hold is over.
pub async fn run(members: Vec<Member>, tx: SnapshotTx) {
    let started = Instant::now();
    let changed = Arc::new(Notify::new());
    for m in &members {
        let mut rx = m.snapshots.clone();
        let changed = changed.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                changed.notify_one();
            }
        });
    }
    let mut serving = false;
    let mut reported_none = false;
    loop {
        let current: Vec<Option<Arc<Snapshot>>> = members.iter().map(|m| m.snapshots.borrow().clone()).collect();
        let mut deadline = None;
        if !serving {
            let state: Vec<(&str, bool, Duration)> = members
                .iter()
                .zip(&current)
                .map(|(m, c)| (m.name.as_str(), c.is_some(), m.first_sync_timeout))
                .collect();
            match hold(started, Instant::now(), &state) {
                Hold::Wait(d) => {
                    deadline = d;
                    if d.is_none() && !reported_none {
                        reported_none = true;
                        tracing::error!(
                            sources = %names(&members),
                            "no Cloud Map source has completed its first sync within its first-sync timeout: nothing is served until one does"
                        );
                    }
                }
                Hold::Serve { late } => {
                    serving = true;
                    if late.is_empty() {
                        tracing::info!(sources = members.len(), "every Cloud Map source has synced: serving");
                    } else {
                        tracing::error!(
                            late = %late.join(","),
                            "Cloud Map sources not synced within their first-sync timeout: serving the other sources without them; each joins when it syncs (see /readyz and /debug/cloudmap)"
                        );
                    }
                }
            }
        }
        if serving {
            let merged = merge(members.iter().zip(&current).map(|(m, c)| (m.name.as_str(), c.as_deref())));
            tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&merged) {
                    false
                } else {
                    *cur = Some(Arc::new(merged));
                    true
                }
            });
        }
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed.notified() => {}
            _ = until => {}
            _ = tx.closed() => return,
        }
    }
}

fn names(members: &[Member]) -> String {
    members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(",")
}

/// Readiness detail: the sources that have not completed their first sync, or `None`.
pub fn not_synced(pollers: &[Arc<Poller>]) -> Option<String> {
    let late: Vec<String> = pollers.iter().filter(|p| !p.synced()).map(|p| p.name().to_string()).collect();
    if late.is_empty() {
        None
    } else {
        Some(format!("Cloud Map source(s) not synced yet: {}", late.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{self, NamespaceType, Timestamp};

    /// `(namespace, namespace id, [(service, CreateDate seconds)])`.
    type Spec<'a> = (&'a str, &'a str, &'a [(&'a str, i64)]);

    fn snap(ns: &[Spec]) -> Snapshot {
        Snapshot {
            namespaces: ns
                .iter()
                .map(|(name, id, svcs)| model::Namespace {
                    name: name.to_string(),
                    id: Some(id.to_string()),
                    arn: None,
                    kind: NamespaceType::Http,
                    http_name: name.to_string(),
                    services: svcs
                        .iter()
                        .map(|(s, created)| {
                            Arc::new(model::Service {
                                name: s.to_string(),
                                id: Some(format!("srv-{id}-{s}")),
                                arn: None,
                                create_date: Some(Timestamp { seconds: *created, nanos: 0 }),
                                attributes: BTreeMap::new(),
                                instances: vec![model::Instance {
                                    id: "i-1".into(),
                                    attributes: BTreeMap::from([(
                                        model::attr::IPV4.to_string(),
                                        format!("10.0.0.{}", id.len()),
                                    )]),
                                    health: model::HealthStatus::Healthy,
                                }]
                                .into(),
                            })
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn merge_orders_by_namespace_then_source_name() {
        // "zz" has the namespace id that sorts first: the source name decides, not the id.
        let a = snap(&[("prod", "ns-b", &[("api", 100)]), ("zeta", "ns-z", &[])]);
        let z = snap(&[("prod", "ns-a", &[("api", 100)]), ("alpha", "ns-y", &[])]);
        for order in [[("zz", Some(&z)), ("aa", Some(&a))], [("aa", Some(&a)), ("zz", Some(&z))]] {
            let m = merge(order);
            let got: Vec<(&str, &str)> =
                m.namespaces.iter().map(|n| (n.name.as_str(), n.id.as_deref().unwrap())).collect();
            assert_eq!(got, [("alpha", "ns-y"), ("prod", "ns-b"), ("prod", "ns-a"), ("zeta", "ns-z")]);
        }
        let m = merge([("aa", None), ("zz", Some(&z))]);
        assert_eq!(m.namespaces.len(), 2, "a source without a snapshot is left out");
    }

    #[test]
    fn colliding_hosts_older_wins_then_source_name() {
        let opts = crate::translate::Options::default();
        let host_owner = |m: &Snapshot| {
            let t = crate::translate::translate(m, &opts);
            assert_eq!(t.entries.len(), 1, "one ServiceEntry for the shared host");
            assert_eq!(t.rejected.len(), 1, "{:?}", t.rejected);
            t.entries[0].annotations.values().find(|v| v.starts_with("srv-")).cloned().unwrap()
        };
        // Equal CreateDate: the source whose name sorts first ("aa", namespace id ns-b).
        let a = snap(&[("prod", "ns-b", &[("api", 100)])]);
        let z = snap(&[("prod", "ns-a", &[("api", 100)])]);
        assert_eq!(host_owner(&merge([("zz", Some(&z)), ("aa", Some(&a))])), "srv-ns-b-api");
        // Older CreateDate wins whatever the names.
        let z_older = snap(&[("prod", "ns-a", &[("api", 50)])]);
        assert_eq!(host_owner(&merge([("zz", Some(&z_older)), ("aa", Some(&a))])), "srv-ns-a-api");
    }

    #[test]
    fn hold_waits_for_every_source_or_its_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Both within their timeout, one synced: wait until the other's deadline.
        assert_eq!(hold(t0, t0 + s(1), &[("a", true, s(10)), ("b", false, s(30))]), Hold::Wait(Some(t0 + s(30))));
        // All synced: serve.
        assert_eq!(hold(t0, t0 + s(1), &[("a", true, s(10)), ("b", true, s(30))]), Hold::Serve { late: vec![] });
        // b past its timeout: serve without it.
        assert_eq!(
            hold(t0, t0 + s(31), &[("a", true, s(10)), ("b", false, s(30))]),
            Hold::Serve { late: vec!["b".into()] }
        );
        // Nobody synced and every timeout over: nothing to serve, wait for any source.
        assert_eq!(hold(t0, t0 + s(31), &[("a", false, s(10)), ("b", false, s(30))]), Hold::Wait(None));
    }
}
