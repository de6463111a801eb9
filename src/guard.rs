//! The edit guard: a mapping file or registry file edit that would stop serving more than
//! `max_removal_ratio` of the served Cloud Map services is held, like a Cloud Map mass removal
//! (`source::cloudmap`'s removal guard): the last good version stays in use, the hold is logged,
//! counted (`cloudmap_mcp_edit_guard_holds_total{source}`, `cloudmap_mcp_edits_held{source}`),
//! shown in `/debug/held-edits` and in the `/readyz` text, and the edit is applied once
//! `confirmations` consecutive checks, `interval` apart, still propose it (a reverted edit, or one
//! that no longer removes that much, ends the hold).
//!
//! A version in force from startup has no earlier version to keep. The mapping file's is judged
//! against the same snapshot translated without a mapping file ([`EditGuards::hold_at_startup`]):
//! when it stops serving more than the ratio, the server is **not ready** (`/readyz` 503) until the
//! same consecutive checks confirm it or an edit fixes it. A rollout of a broken mapping (the Helm
//! chart restarts the pods when the mapping changes) then waits, and the replicas already running
//! keep serving, instead of the new pods emptying istiod's registry.
//!
//! A guard sits between a watch channel of proposals (each good version of the file) and the one
//! the rest of the server reads; what counts as "services no longer served" is the caller's
//! [`Evaluate`] function.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::model;
use crate::translate::{self, ServiceRef};

/// When an edit is held, and when it is applied anyway.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    /// Share of the served services an edit may stop serving without confirmation.
    pub max_removal_ratio: f64,
    /// Consecutive checks (the edit's arrival counts as the first) that apply a held edit.
    pub confirmations: u32,
    /// Time between checks of a held edit.
    pub interval: Duration,
}

/// What applying a proposal would cost: services served now that it would no longer serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    pub lost: usize,
    pub served: usize,
    /// The first few services lost (`namespace/service`).
    pub examples: Vec<String>,
}

impl Loss {
    /// Counts the services of `before` that are not in `after` (both sorted).
    pub fn between<'a>(before: impl IntoIterator<Item = &'a ServiceRef>, after: &[&ServiceRef]) -> Loss {
        let mut loss = Loss::default();
        for s in before {
            loss.served += 1;
            if after.binary_search(&s).is_err() {
                loss.lost += 1;
                if loss.examples.len() < 5 {
                    loss.examples.push(s.to_string());
                }
            }
        }
        loss
    }

    fn is_mass(&self, ratio: f64) -> bool {
        self.lost > 0 && self.lost as f64 / self.served.max(1) as f64 > ratio
    }
}

/// A held edit, as the debug view and readiness show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeldEdit {
    /// "mapping file", "registry file".
    pub source: &'static str,
    /// Served services the edit would no longer serve, of how many.
    pub would_stop_serving: usize,
    pub served: usize,
    pub examples: Vec<String>,
    pub max_removal_ratio: f64,
    pub consecutive: u32,
    pub confirmations_required: u32,
    pub check_interval_seconds: f64,
    /// RFC 3339.
    pub held_since: String,
    /// Set for a version in force since startup, judged against this baseline instead of an
    /// earlier version (the server is not ready meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_startup_compared_with: Option<&'static str>,
}

impl HeldEdit {
    fn new(
        source: &'static str,
        loss: Loss,
        settings: &GuardSettings,
        consecutive: u32,
        held_since: String,
        at_startup_compared_with: Option<&'static str>,
    ) -> HeldEdit {
        HeldEdit {
            source,
            would_stop_serving: loss.lost,
            served: loss.served,
            examples: loss.examples,
            max_removal_ratio: settings.max_removal_ratio,
            consecutive,
            confirmations_required: settings.confirmations,
            check_interval_seconds: settings.interval.as_secs_f64(),
            held_since,
            at_startup_compared_with,
        }
    }
}

/// The edits held now, by source, and the guards' metrics.
#[derive(Clone, Default)]
pub struct EditGuards {
    held: Arc<Mutex<BTreeMap<&'static str, HeldEdit>>>,
    /// Versions in force since startup that stop serving most services (see the module doc).
    startup: Arc<Mutex<BTreeMap<&'static str, HeldEdit>>>,
    /// Versions in force since startup not judged yet, with their baseline: not ready either, so
    /// no readiness probe lands between the first snapshot and its judgment.
    judging: Arc<Mutex<BTreeMap<&'static str, &'static str>>>,
    holds: Family<Vec<(&'static str, &'static str)>, Counter>,
    held_gauge: Family<Vec<(&'static str, &'static str)>, Gauge>,
}

/// Whether a proposal would stop serving services, given what is applied now (run off the async
/// runtime: it may translate the whole registry).
pub type Evaluate<T> = Arc<dyn Fn(&T, &T) -> Loss + Send + Sync>;

/// What the version in force costs against a baseline; `None` while it cannot be judged yet (no
/// snapshot served). Run off the async runtime.
pub type StartupEvaluate = Arc<dyn Fn() -> Option<Loss> + Send + Sync>;

impl EditGuards {
    pub fn register(r: &mut Registry) -> EditGuards {
        let g = EditGuards::default();
        r.register(
            "cloudmap_mcp_edit_guard_holds",
            "Mapping or registry file edits held because they would stop serving more than --max-removal-ratio of the services",
            g.holds.clone(),
        );
        r.register("cloudmap_mcp_edits_held", "1 while an edit of this source is held (see /debug/held-edits)", g.held_gauge.clone());
        g
    }

    /// The held edits, then the versions held at startup.
    pub fn held(&self) -> Vec<HeldEdit> {
        let mut v: Vec<HeldEdit> = self.held.lock().expect("guard state").values().cloned().collect();
        v.extend(self.startup.lock().expect("guard state").values().cloned());
        v
    }

    /// Why the server is not ready, while a version in force since startup is held.
    pub fn not_ready(&self) -> Option<String> {
        let held: Vec<HeldEdit> = self.startup.lock().expect("guard state").values().cloned().collect();
        let judging: Vec<String> = self
            .judging
            .lock()
            .expect("guard state")
            .iter()
            .map(|(source, baseline)| format!("judging the {source} in force since startup against {baseline}"))
            .collect();
        (!held.is_empty() || !judging.is_empty()).then(|| {
            held.iter()
                .map(|h| {
                    format!(
                        "the {} in force since startup would stop serving {} of the {} services served with {} (over {:.0}%, e.g. {}); not ready, so a rollout waits and the replicas already running keep serving, until {} consecutive checks {:?} apart confirm it ({} so far) or an edit fixes it (see /debug/held-edits)",
                        h.source,
                        h.would_stop_serving,
                        h.served,
                        h.at_startup_compared_with.unwrap_or("the baseline"),
                        h.max_removal_ratio * 100.0,
                        h.examples.join(", "),
                        h.confirmations_required,
                        Duration::from_secs_f64(h.check_interval_seconds),
                        h.consecutive
                    )
                })
                .chain(judging)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// A line for `/readyz`, while an edit is held.
    pub fn readiness(&self) -> Option<String> {
        let held: Vec<HeldEdit> = self.held.lock().expect("guard state").values().cloned().collect();
        (!held.is_empty()).then(|| {
            held.iter()
                .map(|h| {
                    format!(
                        "a {} edit is held: it would stop serving {} of {} services (over {:.0}%); applied if still proposed at {} consecutive checks {:?} apart ({} so far), or revert it (see /debug/held-edits)",
                        h.source,
                        h.would_stop_serving,
                        h.served,
                        h.max_removal_ratio * 100.0,
                        h.confirmations_required,
                        Duration::from_secs_f64(h.check_interval_seconds),
                        h.consecutive
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn set(&self, source: &'static str, h: Option<HeldEdit>) {
        Self::put(&self.held, source, h);
        self.update_gauge(source);
    }

    fn set_startup(&self, source: &'static str, h: Option<HeldEdit>) {
        Self::put(&self.startup, source, h);
        self.update_gauge(source);
    }

    fn put(map: &Mutex<BTreeMap<&'static str, HeldEdit>>, source: &'static str, h: Option<HeldEdit>) {
        let mut map = map.lock().expect("guard state");
        match h {
            Some(h) => map.insert(source, h),
            None => map.remove(source),
        };
    }

    /// 1 while either kind of hold is on for `source`.
    fn update_gauge(&self, source: &'static str) {
        let on = self.held.lock().expect("guard state").contains_key(source)
            || self.startup.lock().expect("guard state").contains_key(source);
        self.held_gauge.get_or_create(&vec![("source", metric_label(source))]).set(i64::from(on));
    }

    /// Judges the version of `source` in force since startup against `baseline` (what
    /// `evaluate` compares it with, e.g. "no mapping file") once `served` completes (the first
    /// snapshot is served; until the judgment the server is not ready either): over the
    /// ratio, the server is not ready ([`Self::not_ready`]) until `confirmations` consecutive
    /// checks `interval` apart still find it so (the first judgment counts as the first check),
    /// or one finds it fixed. A new version in force (`in_force` changed: a live edit) is judged at
    /// once and counts from its own first check.
    pub fn hold_at_startup<T: Send + Sync + 'static>(
        &self,
        source: &'static str,
        baseline: &'static str,
        mut in_force: watch::Receiver<T>,
        served: impl std::future::Future<Output = ()> + Send + 'static,
        evaluate: StartupEvaluate,
        settings: GuardSettings,
    ) {
        let this = self.clone();
        self.judging.lock().expect("guard state").insert(source, baseline);
        tokio::spawn(async move {
            served.await;
            let mut consecutive = 0u32;
            let mut since = None;
            loop {
                let eval = evaluate.clone();
                let loss = match tokio::task::spawn_blocking(move || eval()).await {
                    Ok(Some(loss)) => loss,
                    Ok(None) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        tracing::error!(source, "judging the version in force at startup panicked (a bug); not holding it");
                        this.judging.lock().expect("guard state").remove(source);
                        this.set_startup(source, None);
                        return;
                    }
                };
                consecutive += 1;
                this.judging.lock().expect("guard state").remove(source);
                let ratio = settings.max_removal_ratio;
                if !loss.is_mass(ratio) {
                    if this.startup.lock().expect("guard state").contains_key(source) {
                        tracing::info!(source, "the {source} in force no longer stops serving most services; ready");
                    }
                    this.set_startup(source, None);
                    return;
                }
                if consecutive >= settings.confirmations {
                    tracing::warn!(
                        source,
                        would_stop_serving = loss.lost,
                        served = loss.served,
                        consecutive,
                        "the {source} in force since startup was confirmed by consecutive checks although it stops serving most services; ready"
                    );
                    this.set_startup(source, None);
                    return;
                }
                if consecutive == 1 {
                    this.holds.get_or_create(&vec![("source", metric_label(source))]).inc();
                }
                let held_since = since.get_or_insert_with(now_rfc3339).clone();
                tracing::error!(
                    source,
                    would_stop_serving = loss.lost,
                    served = loss.served,
                    compared_with = baseline,
                    limit = format!("{:.0}%", ratio * 100.0),
                    examples = %loss.examples.join(", "),
                    consecutive,
                    required = settings.confirmations,
                    "the {source} in force since startup stops serving most services (compared with {baseline}): not ready until consecutive checks confirm it or an edit fixes it"
                );
                this.set_startup(source, Some(HeldEdit::new(source, loss, &settings, consecutive, held_since, Some(baseline))));
                tokio::select! {
                    _ = tokio::time::sleep(settings.interval) => {}
                    r = in_force.changed() => {
                        if r.is_err() {
                            return;
                        }
                        in_force.borrow_and_update();
                        consecutive = 0;
                        since = None;
                    }
                }
            }
        });
    }

    /// Puts a guard between `proposals` and the returned receiver (see the module doc).
    pub fn guard<T: Clone + Send + Sync + 'static>(
        &self,
        source: &'static str,
        mut proposals: watch::Receiver<T>,
        evaluate: Evaluate<T>,
        settings: GuardSettings,
    ) -> watch::Receiver<T> {
        let (tx, rx) = watch::channel(proposals.borrow_and_update().clone());
        let this = self.clone();
        this.set(source, None);
        tokio::spawn(async move {
            // The held proposal and its consecutive checks.
            let mut pending: Option<(T, u32, String)> = None;
            let mut tick = tokio::time::interval(settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let (proposed, consecutive, since) = tokio::select! {
                    r = proposals.changed() => {
                        if r.is_err() {
                            return;
                        }
                        tick.reset();
                        pending = None;
                        (proposals.borrow_and_update().clone(), 1, now_rfc3339())
                    }
                    _ = tick.tick(), if pending.is_some() => {
                        let (p, c, since) = pending.take().expect("checked");
                        (p, c + 1, since)
                    }
                };
                let applied = tx.borrow().clone();
                let eval = evaluate.clone();
                let p = proposed.clone();
                let Ok(loss) = tokio::task::spawn_blocking(move || eval(&applied, &p)).await else {
                    tracing::error!(source, "evaluating an edit panicked (a bug); the edit is not applied");
                    continue;
                };
                let was_held = this.held.lock().expect("guard state").contains_key(source);
                let ratio = settings.max_removal_ratio;
                if !loss.is_mass(ratio) || consecutive >= settings.confirmations {
                    if loss.is_mass(ratio) {
                        tracing::warn!(
                            source,
                            would_stop_serving = loss.lost,
                            served = loss.served,
                            consecutive,
                            "held edit confirmed by consecutive checks: applying it"
                        );
                    } else if was_held {
                        tracing::info!(source, "the held edit is no longer proposed; applying the current version");
                    }
                    this.set(source, None);
                    tx.send_replace(proposed);
                    continue;
                }
                if consecutive == 1 {
                    this.holds.get_or_create(&vec![("source", metric_label(source))]).inc();
                }
                tracing::error!(
                    source,
                    would_stop_serving = loss.lost,
                    served = loss.served,
                    ratio = format!("{:.0}%", loss.lost as f64 * 100.0 / loss.served.max(1) as f64),
                    limit = format!("{:.0}%", ratio * 100.0),
                    examples = %loss.examples.join(", "),
                    consecutive,
                    required = settings.confirmations,
                    "{source} edit held: it would stop serving most services; the last version stays in use until consecutive checks confirm it (revert the edit to end the hold)"
                );
                this.set(source, Some(HeldEdit::new(source, loss, &settings, consecutive, since.clone(), None)));
                pending = Some((proposed, consecutive, since));
            }
        });
        rx
    }
}

fn metric_label(source: &str) -> &'static str {
    match source {
        "mapping file" => "mapping",
        _ => "file",
    }
}

fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    model::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }.to_rfc3339()
}

/// The services a translation serves, sorted.
fn served(t: &translate::Translation) -> Vec<&ServiceRef> {
    let mut v: Vec<&ServiceRef> = t.entries.iter().map(|e| &e.source).collect();
    v.sort();
    v.dedup();
    v
}

/// For the mapping file's guard: the services the served snapshot's model serves with the applied
/// options and no longer serves with the proposed ones.
pub fn options_loss(model: &model::Snapshot, applied: &translate::Options, proposed: &translate::Options) -> Loss {
    let before = translate::translate(model, applied);
    let after = translate::translate(model, proposed);
    Loss::between(served(&before), &served(&after))
}

/// For the registry file's guard: the services of `applied` that `proposed` no longer lists (on
/// borrowed names: this runs on every registry edit).
pub fn model_loss(applied: &model::Snapshot, proposed: &model::Snapshot) -> Loss {
    fn names(m: &model::Snapshot) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> =
            m.namespaces.iter().flat_map(|ns| ns.services.iter().map(move |s| (ns.name.as_str(), s.name.as_str()))).collect();
        v.sort_unstable();
        v
    }
    let after = names(proposed);
    let mut loss = Loss::default();
    for (ns, svc) in names(applied) {
        loss.served += 1;
        if after.binary_search(&(ns, svc)).is_err() {
            loss.lost += 1;
            if loss.examples.len() < 5 {
                loss.examples.push(format!("{ns}/{svc}"));
            }
        }
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<ServiceRef> {
        let mut v: Vec<ServiceRef> =
            names.iter().map(|n| ServiceRef { namespace: "ns".into(), service: n.to_string() }).collect();
        v.sort();
        v
    }

    #[test]
    fn a_loss_counts_the_services_no_longer_served() {
        let (before, after) = (refs(&["a", "b", "c", "d"]), refs(&["a", "e"]));
        let loss = Loss::between(&before, &after.iter().collect::<Vec<_>>());
        assert_eq!((loss.lost, loss.served), (3, 4));
        assert_eq!(loss.examples, ["ns/b", "ns/c", "ns/d"]);
        assert!(loss.is_mass(0.5) && !loss.is_mass(0.75));
        // Removing the only service is a mass removal; removing nothing never is.
        assert!(Loss { lost: 1, served: 1, examples: vec![] }.is_mass(0.5));
        assert!(!Loss { lost: 0, served: 0, examples: vec![] }.is_mass(0.0));
    }

    #[test]
    fn a_registry_edit_loses_the_services_it_no_longer_lists() {
        let registry = |services: &[&str]| {
            let list: Vec<String> = services.iter().map(|s| format!("{{name: {s}}}")).collect();
            let text = format!("namespaces: [{{name: ns, type: HTTP, services: [{}]}}]\n", list.join(", "));
            crate::source::file::parse(std::path::Path::new("r.yaml"), &text).unwrap()
        };
        let loss = model_loss(&registry(&["a", "b", "c"]), &registry(&["c", "d"]));
        assert_eq!((loss.lost, loss.served, loss.examples), (2, 3, vec!["ns/a".to_string(), "ns/b".to_string()]));
        assert_eq!(model_loss(&registry(&[]), &registry(&["a"])), Loss::default());
    }

    /// The guard task on a paused clock: proposals are numbers, the loss is how much smaller a
    /// proposal is than what is applied (out of 10 services).
    #[tokio::test(start_paused = true)]
    async fn a_mass_removal_is_held_until_consecutive_checks_and_a_revert_ends_the_hold() {
        let guards = EditGuards::default();
        let (tx, rx) = watch::channel(10usize);
        let evaluate: Evaluate<usize> = Arc::new(|applied: &usize, proposed: &usize| Loss {
            lost: applied.saturating_sub(*proposed),
            served: *applied,
            examples: Vec::new(),
        });
        let settings = GuardSettings { max_removal_ratio: 0.5, confirmations: 3, interval: Duration::from_secs(60) };
        let mut applied = guards.guard("mapping file", rx, evaluate, settings);
        let settle = || tokio::time::sleep(Duration::from_millis(10));

        tx.send_replace(8); // a small removal: applied at once
        applied.changed().await.unwrap();
        assert_eq!(*applied.borrow_and_update(), 8);
        tx.send_replace(1); // 7 of 8: held
        settle().await;
        assert_eq!(*applied.borrow(), 8);
        let held = guards.held();
        assert_eq!((held[0].would_stop_serving, held[0].consecutive), (7, 1));
        assert!(guards.readiness().unwrap().contains("a mapping file edit is held: it would stop serving 7 of 8 services"));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(guards.held()[0].consecutive, 2);
        assert_eq!(*applied.borrow(), 8, "still held after the second check");
        // Reverted before the third check: the hold ends, and the old proposal never comes back.
        tx.send_replace(8);
        settle().await;
        assert!(guards.held().is_empty() && guards.readiness().is_none());
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(*applied.borrow_and_update(), 8);

        // Left in place: applied at the third check.
        tx.send_replace(0);
        settle().await;
        assert_eq!(*applied.borrow(), 8);
        tokio::time::sleep(Duration::from_secs(121)).await;
        assert_eq!(*applied.borrow(), 0);
        assert!(guards.held().is_empty());
    }
}
