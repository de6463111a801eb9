//! Resyncs: the listing of namespaces and services, new services read, removals applied under
//! the safety rules (see the parent module).
use super::*;

impl Poller {
    /// One full resync. Returns whether it was complete. Publishes nothing before the first
    /// complete one; publishes at once when that one is done.
    pub(in crate::source::cloudmap) async fn resync(&self) -> bool {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let mut report = ResyncReport { started_at: rfc3339(started_wall), ..Default::default() };
        let complete = self.resync_inner(&mut report).await;
        report.complete = complete;
        report.took_ms = started.elapsed().as_millis() as u64;
        self.metrics.resync(complete);

        let mut st = self.lock();
        let first = complete && !st.synced;
        if complete {
            st.last_complete_sync = Some(SystemTime::now());
            self.metrics.mark_synced();
            if let Some(core) = &self.core {
                core.source_loaded("cloudmap");
            }
        }
        if first {
            st.synced = true;
            let snap = st.snapshot();
            tracing::info!(
                namespaces = snap.namespaces.len(),
                services = snap.service_count(),
                instances = snap.instance_count(),
                took_ms = report.took_ms,
                "first complete Cloud Map sync: serving"
            );
        } else if complete {
            tracing::debug!(took_ms = report.took_ms, services = report.services_listed, "Cloud Map resync complete");
        } else if st.synced {
            tracing::warn!(
                took_ms = report.took_ms,
                errors = %describe(&report.errors),
                "Cloud Map resync incomplete: keeping the last good data of what could not be read"
            );
            if let Some(core) = &self.core {
                core.source_error("cloudmap");
            }
        }
        const KEPT_ERRORS: usize = 50;
        if report.errors.len() > KEPT_ERRORS {
            let more = report.errors.len() - KEPT_ERRORS;
            report.errors.truncate(KEPT_ERRORS);
            report.errors.push(format!("... and {more} more"));
        }
        st.last_resync = Some(report);
        if st.synced {
            st.dirty = true;
            self.publish_locked(&mut st);
        }
        complete
    }

    pub(super) async fn resync_inner(&self, report: &mut ResyncReport) -> bool {
        let mut complete = true;
        // 1. Namespaces.
        let all = match self.api.list_namespaces().await {
            Ok(v) => v,
            Err(e) => {
                report.errors.push(e.to_string());
                return false;
            }
        };
        let selected = self.select_namespaces(all);
        report.namespaces = selected.len();
        let by_id: HashMap<&str, &NamespaceInfo> = selected.values().map(|n| (n.id.as_str(), n)).collect();

        // 2. Services of each selected namespace, every page.
        let lists: Vec<(String, Result<Vec<ServiceSummary>, ApiError>)> =
            stream::iter(selected.values().map(|n| (n.name.clone(), n.id.clone())).collect::<Vec<_>>())
                .map(|(name, id)| async move { (name, self.api.list_services(&id).await) })
                .buffer_unordered(self.concurrency())
                .collect()
                .await;
        let mut complete_ns: HashSet<String> = HashSet::new();
        let mut summaries: BTreeMap<String, ServiceSummary> = BTreeMap::new();
        let mut ns_errors: HashMap<String, ApiError> = HashMap::new();
        for (ns, r) in lists {
            match r {
                Ok(list) => {
                    complete_ns.insert(ns);
                    for s in list {
                        summaries.entry(s.id.clone()).or_insert(s);
                    }
                }
                Err(e) => {
                    complete = false;
                    report.errors.push(format!("namespace {ns}: {e}"));
                    ns_errors.insert(ns, e);
                }
            }
        }
        let all_lists_complete = ns_errors.is_empty();

        // 3. Learn the namespace of services seen for the first time (GetService, once per id).
        let unknown: Vec<String> = {
            let st = self.lock();
            summaries
                .values()
                .filter(|s| self.settings.selection.service_name_may_match(&s.name) && !st.meta.contains_key(&s.id))
                .map(|s| s.id.clone())
                .collect()
        };
        let metas: Vec<(String, Result<ServiceMeta, ApiError>)> = stream::iter(unknown)
            .map(|id| async move {
                let r = self.api.get_service(&id).await;
                (id, r)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut placement_uncertain = false;
        {
            let mut st = self.lock();
            for (id, r) in metas {
                match r {
                    Ok(m) => {
                        st.meta.insert(id, m);
                    }
                    // Deleted between the listing and GetService: as if not listed.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        tracing::debug!(service_id = %id, "service vanished between ListServices and GetService");
                    }
                    Err(e) => {
                        if e.kind.is_transient() {
                            // Its namespace is unknown: a removal could be a service that moved here.
                            placement_uncertain = true;
                            complete = false;
                        }
                        report.errors.push(format!("service {id}: {e}"));
                    }
                }
            }
        }

        // 4. Place every listed service under its namespace and apply the selection.
        let mut listed: BTreeMap<SvcKey, Listed> = BTreeMap::new();
        {
            let st = self.lock();
            for s in summaries.values() {
                let Some(meta) = st.meta.get(&s.id) else { continue };
                let Some(ns) = by_id.get(meta.namespace_id.as_str()) else { continue };
                if !self.settings.selection.service(&ns.name, &s.name) {
                    continue;
                }
                listed.insert(
                    (ns.name.clone(), s.name.clone()),
                    Listed {
                        id: s.id.clone(),
                        arn: s.arn.clone().or_else(|| meta.arn.clone()),
                        create_date: s.create_date.or(meta.create_date),
                        health_checked: s.health_checked || meta.health_checked,
                    },
                );
            }
        }
        report.services_listed = listed.len();

        // 5. Apply the topology (additions and updates; removals come last).
        let to_discover: Vec<(SvcKey, String, Option<String>, u64)> = {
            let mut st = self.lock();
            let now_wall = SystemTime::now();
            for (name, info) in &selected {
                let e = st.namespaces.entry(name.clone()).or_insert_with(|| {
                    tracing::info!(namespace = %name, id = %info.id, kind = %info.kind, http_name = %info.http_name, "Cloud Map namespace added");
                    NsEntry { info: info.clone(), listed_at: None, last_error: None }
                });
                if e.info.id != info.id {
                    tracing::info!(namespace = %name, old_id = %e.info.id, new_id = %info.id, "Cloud Map namespace re-created");
                }
                e.info = info.clone();
                match ns_errors.get(name) {
                    Some(err) => e.last_error = Some(ErrorRecord::new(err.clone())),
                    None => {
                        e.listed_at = Some(now_wall);
                        e.last_error = None;
                    }
                }
            }
            let now = Instant::now();
            let mut jobs = Vec::new();
            for (key, l) in &listed {
                let ns = &selected[&key.0];
                let entry = st.services.entry(key.clone()).or_insert_with(|| {
                    report.added += 1;
                    SvcEntry {
                        id: l.id.clone(),
                        arn: None,
                        create_date: None,
                        health_checked: false,
                        data: None,
                        loaded_seq: 0,
                        refreshed_at: None,
                        loaded_at: None,
                        last_error: None,
                        revision_seen: None,
                        unchanged_polls: 0,
                        removal_held: false,
                        // A random place in the interval, so the polls of many services spread out.
                        next_poll: now + self.settings.revision_poll_interval.mul_f64(rand::random::<f64>()),
                        next_health: now,
                        published: None,
                        attributes: Default::default(),
                    }
                });
                let id_changed = entry.id != l.id;
                if id_changed {
                    tracing::info!(namespace = %key.0, service = %key.1, old_id = %entry.id, new_id = %l.id, "Cloud Map service re-created");
                    entry.id = l.id.clone();
                    entry.revision_seen = None;
                    entry.note_change(&self.settings, now);
                }
                entry.arn = l.arn.clone();
                entry.create_date = l.create_date;
                entry.health_checked = l.health_checked;
                if entry.removal_held {
                    tracing::info!(namespace = %key.0, service = %key.1, "service listed again: its held removal is cancelled");
                    entry.removal_held = false;
                }
                // Only what is missing, re-created, or failed last time (so that completeness below
                // reflects fresh answers); the poll loop keeps the others fresh.
                if entry.data.is_none() || id_changed || entry.last_error.is_some() {
                    jobs.push((key.clone(), ns.http_name.clone(), ns.owner.clone()));
                }
            }
            jobs.into_iter()
                .map(|(k, h, o)| {
                    let seq = st.next_seq();
                    (k, h, o, seq)
                })
                .collect()
        };

        // 6. Instances of those services. One bad service never blocks the others.
        stream::iter(to_discover)
            .map(|(key, http_name, owner, seq)| async move {
                // Attributes first, so that a new service is never published without them.
                let ((), r) = tokio::join!(
                    self.read_attributes_if_new(&key),
                    self.api.discover_instances(&http_name, &key.1, owner.as_deref())
                );
                self.apply_discovered(&key, seq, r, Read::New);
            })
            .buffer_unordered(self.concurrency())
            .for_each(|()| async {})
            .await;
        {
            let st = self.lock();
            for key in listed.keys() {
                let Some(e) = st.services.get(key) else { continue };
                if let Some(err) = &e.last_error {
                    report.errors.push(format!("service {}/{}: {}", key.0, key.1, err.error));
                    // A transient failure means "try again" (and, before the first sync, hold);
                    // a permanent one (deleted, access denied) is about that service only.
                    if err.error.kind.is_transient() {
                        complete = false;
                    }
                }
            }
        }

        // 7. Removals, only where the listing was complete, through the mass-removal guard.
        let selected_names: HashSet<&String> = selected.keys().collect();
        let mut st = self.lock();
        if placement_uncertain {
            report.errors.push("removals skipped: some new services could not be placed in a namespace".into());
        } else {
            let candidates: Vec<SvcKey> = st
                .services
                .keys()
                .filter(|k| !listed.contains_key(*k) && (complete_ns.contains(&k.0) || !selected_names.contains(&k.0)))
                .cloned()
                .collect();
            let (served, unserved): (Vec<SvcKey>, Vec<SvcKey>) =
                candidates.into_iter().partition(|k| st.services.get(k).is_some_and(|e| e.served()));
            for k in unserved {
                st.services.remove(&k);
            }
            self.apply_removals(&mut st, served, report);
        }
        // Namespaces that are gone and hold nothing any more.
        let keep: BTreeSet<String> = st.services.keys().map(|(ns, _)| ns.clone()).collect();
        st.namespaces.retain(|name, ns| {
            let kept = selected_names.contains(name) || keep.contains(name);
            if !kept {
                tracing::info!(namespace = %name, id = %ns.info.id, "Cloud Map namespace removed");
            }
            kept
        });
        if all_lists_complete && !placement_uncertain {
            st.meta.retain(|id, _| summaries.contains_key(id));
        }
        complete
    }

    /// Selected namespaces by name. Two selected namespaces of the same name (DNS namespaces in
    /// different VPCs) would serve the same hosts: the oldest is kept and the other reported.
    pub(super) fn select_namespaces(&self, all: Vec<NamespaceInfo>) -> BTreeMap<String, NamespaceInfo> {
        let mut out: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
        let mut collisions = Vec::new();
        for ns in all.into_iter().filter(|n| self.settings.selection.namespace(n)) {
            match out.get(&ns.name) {
                None => {
                    out.insert(ns.name.clone(), ns);
                }
                Some(cur) => {
                    let older = |n: &NamespaceInfo| {
                        (n.create_date.unwrap_or(Timestamp { seconds: i64::MAX, nanos: 0 }), n.id.clone())
                    };
                    let (keep, drop) = if older(&ns) < older(cur) { (ns, cur.clone()) } else { (cur.clone(), ns) };
                    collisions.push((keep.name.clone(), keep.id.clone(), drop.id.clone()));
                    out.insert(keep.name.clone(), keep);
                }
            }
        }
        collisions.sort();
        let mut st = self.lock();
        for c in &collisions {
            if !st.collisions.contains(c) {
                tracing::warn!(
                    namespace = %c.0, kept_id = %c.1, ignored_id = %c.2,
                    "two selected Cloud Map namespaces have the same name; the older is served (exclude one by id with --exclude-namespace)"
                );
            }
        }
        st.collisions = collisions;
        out
    }

    pub(super) fn apply_removals(&self, st: &mut State, removals: Vec<SvcKey>, report: &mut ResyncReport) {
        if removals.is_empty() {
            if st.guard.consecutive > 0 {
                tracing::info!("the held mass removal is no longer proposed; nothing removed");
            }
            st.guard = Guard::default();
            return;
        }
        let served = st.served_count().max(1);
        let ratio = removals.len() as f64 / served as f64;
        if ratio > self.settings.max_removal_ratio {
            st.guard.consecutive += 1;
            if st.guard.consecutive < self.settings.removal_confirmations {
                for k in &removals {
                    if let Some(e) = st.services.get_mut(k) {
                        e.removal_held = true;
                    }
                }
                tracing::error!(
                    removals = removals.len(),
                    served,
                    ratio = format!("{:.0}%", ratio * 100.0),
                    limit = format!("{:.0}%", self.settings.max_removal_ratio * 100.0),
                    consecutive = st.guard.consecutive,
                    required = self.settings.removal_confirmations,
                    "mass removal held back: Cloud Map no longer lists these services; they stay served until consecutive resyncs confirm it"
                );
                self.metrics.removal_guard_holds.inc();
                report.held_back_removals = removals.len();
                st.guard.pending = removals;
                return;
            }
            tracing::warn!(
                removals = removals.len(),
                consecutive = st.guard.consecutive,
                "mass removal confirmed by consecutive resyncs: removing"
            );
        }
        st.guard = Guard::default();
        for k in removals {
            if let Some(e) = st.services.remove(&k) {
                let n = e.data.as_ref().map(|d| d.instances.len()).unwrap_or(0);
                tracing::info!(namespace = %k.0, service = %k.1, instances = n, "Cloud Map service removed");
                report.removed += 1;
                st.dirty = true;
            }
        }
    }
}
