//! The poll loop: revision polls and refresh reads per service, on an adaptive schedule, and
//! their answers applied to the state (see the parent module).
use super::*;

impl Poller {
    /// Applies a DiscoverInstances answer (or failure). Returns whether the served data changed.
    pub(super) fn apply_discovered(&self, key: &SvcKey, seq: u64, r: Result<Discovered, ApiError>, read: Read) -> bool {
        self.metrics.instance_read(read.label());
        let mut st = self.lock();
        let now = Instant::now();
        let Some(e) = st.services.get_mut(key) else { return false };
        let polled_revision = match read {
            Read::Revision(r) => Some(r),
            _ => None,
        };
        if polled_revision.is_some() || read == Read::Event {
            // A moved revision (or an event) is a change, whether or not this read succeeds; after
            // an event, the polls that follow also catch what the read was too early to see.
            e.note_change(&self.settings, now);
        }
        let changed = match r {
            Ok(d) => {
                if seq < e.loaded_seq {
                    return false;
                }
                e.clear_error(key);
                e.revision_seen = polled_revision.or(e.revision_seen).or(d.revision);
                e.loaded_seq = seq;
                e.refreshed_at = Some(SystemTime::now());
                e.loaded_at = Some(now);
                e.next_health = now + jittered(self.settings.health_refresh_interval, 0.1);
                let changed = log_instance_changes(key, e.data.as_ref(), &d, read);
                if d.at_cap && !e.data.as_ref().is_some_and(|old| old.at_cap) {
                    if let Some(held) = self.cap_log.allow() {
                        tracing::warn!(
                            namespace = %key.0,
                            service = %key.1,
                            instances = d.instances.len(),
                            cap = DISCOVER_MAX_RESULTS,
                            held_back = held,
                            "DiscoverInstances returned its maximum number of instances: the service is served with these, but Cloud Map may hold more that are not served (the API has no paging); split the service or filter by health"
                        );
                    }
                }
                let mut d = d;
                match &e.data {
                    Some(old) if !changed => {
                        // The same instances read again (a refresh): keep the allocation the
                        // snapshots share, not a second copy of every refreshed service.
                        d.instances = old.instances.clone();
                    }
                    _ => e.note_change(&self.settings, now),
                }
                e.data = Some(d);
                changed
            }
            Err(err) => {
                e.record_error(key, err);
                false
            }
        };
        if changed {
            st.dirty = true;
        }
        changed
    }

    /// Applies a DiscoverInstancesRevision answer that needs no read: the revision seen before (a
    /// quiet poll: the next one comes later, and a previous error is over), or a failure (kept; the
    /// poll interval stays as it is).
    pub(super) fn apply_revision(&self, key: &SvcKey, r: Result<(), ApiError>) {
        let mut st = self.lock();
        let Some(e) = st.services.get_mut(key) else { return };
        match r {
            Ok(()) => {
                e.clear_error(key);
                e.note_quiet(&self.cadence(), Instant::now());
            }
            Err(err) => e.record_error(key, err),
        }
    }

    /// Polls revisions of the services that are due, in batches, forever.
    pub(super) async fn poll_loop(self: Arc<Self>) {
        let interval = self.settings.revision_poll_interval;
        let tick = (interval / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut paused = false;
        let mut pace = Pace::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.tx.closed() => return,
            }
            // While Cloud Map does not answer at all, polling every service only piles up
            // timeouts: the resyncs keep probing, and polls resume with the first answer.
            if self.api.unreachable() != paused {
                paused = !paused;
                if paused {
                    tracing::warn!("Cloud Map is unreachable: revision polls paused; resyncs keep trying; serving the last good data");
                } else {
                    tracing::info!("Cloud Map answers again: revision polls resumed");
                }
            }
            if paused {
                continue;
            }
            let jobs = self.due_jobs();
            if jobs.is_empty() {
                continue;
            }
            let (started, polls, waits) = (Instant::now(), jobs.len(), self.metrics.budget_waits.get());
            stream::iter(jobs)
                .map(|job| self.run_job(job))
                .buffer_unordered(self.concurrency())
                .for_each(|changed| {
                    if changed {
                        self.publish.notify_one();
                    }
                    async {}
                })
                .await;
            let took = started.elapsed();
            self.metrics.poll_batch_seconds.set(took.as_secs_f64());
            let ceiling = self.cadence().max;
            let took_s = (took.as_secs_f64() * 10.0).round() / 10.0;
            // Only calls that waited for the budget make it the budget's fault; otherwise Cloud Map
            // answered slowly or calls were retried (throttling, timeouts).
            let budget_bound = self.metrics.budget_waits.get() > waits;
            match pace.on_batch(took, ceiling, Instant::now()) {
                Some(PaceChange::Behind) if !budget_bound => tracing::warn!(
                    polls,
                    took_s,
                    ceiling = ?ceiling,
                    "revision polls fall behind: the polls due at once took longer than the longest poll interval \
                     without waiting for the API budget; Cloud Map answered slowly or calls were retried \
                     (see cloudmap_mcp_aws_call_duration_seconds and cloudmap_mcp_aws_throttles_total)"
                ),
                Some(PaceChange::Behind) => tracing::warn!(
                    polls,
                    took_s,
                    ceiling = ?ceiling,
                    aws_api_rate = self.settings.budget.rate,
                    "revision polls fall behind the API budget: the polls due at once took longer than the longest poll \
                     interval, so quiet services are polled about every took_s and changes take that long to show; \
                     raise --aws-api-rate (DiscoverInstancesRevision allows 3,000 calls/s) or add an events queue \
                     (docs/cloudmap.md, \"The API budget\")"
                ),
                Some(PaceChange::CaughtUp) => {
                    tracing::info!(polls, took_s, ceiling = ?ceiling, "revision polls keep their schedule again")
                }
                None => {}
            }
        }
    }

    pub(super) fn due_jobs(&self) -> Vec<Job> {
        let mut st = self.lock();
        let now = Instant::now();
        let settings = &self.settings;
        let cadence = self.cadence();
        let mut jobs = Vec::new();
        let State { services, namespaces, .. } = &mut *st;
        for (key, e) in services.iter_mut() {
            let health_due = e.health_checked && e.next_health <= now;
            if e.next_poll > now && !health_due {
                continue;
            }
            let interval = e.poll_interval(&cadence);
            // Instances read less than an interval ago (by a resync or a refresh) are as fresh as a poll.
            if let Some(t) = e.loaded_at.filter(|t| !health_due && now.duration_since(*t) < interval.mul_f64(0.8)) {
                e.next_poll = t + jittered(interval, 0.1);
                continue;
            }
            // Also when this poll is retried if it fails.
            e.next_poll = now + jittered(interval, 0.1);
            if health_due {
                e.next_health = now + jittered(settings.health_refresh_interval, 0.1);
            }
            let Some(ns) = namespaces.get(&key.0) else { continue };
            let stale = e.loaded_at.is_none_or(|t| now.duration_since(t) >= cadence.refresh);
            let read = match (&e.data, &e.last_error) {
                // Never read: retry transient failures; permanent ones wait for the next resync.
                (None, Some(err)) if !err.error.kind.is_transient() => continue,
                (None, _) => Some(Read::New),
                (Some(_), _) if health_due => Some(Read::Health),
                (Some(_), _) if stale => Some(Read::Refresh),
                (Some(_), _) => None,
            };
            jobs.push(Job {
                key: key.clone(),
                http_name: ns.info.http_name.clone(),
                owner: ns.info.owner.clone(),
                read,
                revision_seen: e.revision_seen,
            });
        }
        jobs
    }

    pub(super) async fn run_job(&self, job: Job) -> bool {
        let read = match job.read {
            Some(read) => read,
            None => match self.api.discover_revision(&job.http_name, &job.key.1, job.owner.as_deref()).await {
                Ok(r) if Some(r) == job.revision_seen => {
                    self.apply_revision(&job.key, Ok(()));
                    return false;
                }
                Ok(r) => {
                    tracing::debug!(namespace = %job.key.0, service = %job.key.1, old = ?job.revision_seen, new = r, "instances revision moved");
                    Read::Revision(r)
                }
                Err(e) => {
                    self.apply_revision(&job.key, Err(e));
                    return false;
                }
            },
        };
        let seq = self.lock().next_seq();
        let r = self.api.discover_instances(&job.http_name, &job.key.1, job.owner.as_deref()).await;
        self.apply_discovered(&job.key, seq, r, read)
    }
}

/// How often a poller that stays behind repeats its warning.
const BEHIND_WARN_EVERY: Duration = Duration::from_secs(600);

/// Whether the revision polls keep their schedule. Every due poll of a batch must finish before the
/// next batch starts, so a batch that takes longer than the longest poll interval (the ceiling)
/// means quiet services wait that long between polls, whatever the intervals say: the API budget
/// is too small for the services. Behind from a batch over the ceiling; on schedule again from one
/// under half of it (no flapping at the edge).
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Since when it is behind, and when it last said so.
    behind: Option<Instant>,
}

#[derive(Debug, PartialEq)]
pub(super) enum PaceChange {
    /// Fell behind, or is still behind and last said so [`BEHIND_WARN_EVERY`] ago.
    Behind,
    CaughtUp,
}

impl Pace {
    pub(super) fn on_batch(&mut self, took: Duration, ceiling: Duration, now: Instant) -> Option<PaceChange> {
        match self.behind {
            None if took > ceiling => {
                self.behind = Some(now);
                Some(PaceChange::Behind)
            }
            Some(_) if took < ceiling / 2 => {
                self.behind = None;
                Some(PaceChange::CaughtUp)
            }
            Some(said) if took > ceiling && now.duration_since(said) >= BEHIND_WARN_EVERY => {
                self.behind = Some(now);
                Some(PaceChange::Behind)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod pace_tests {
    use super::*;

    #[test]
    fn behind_over_the_ceiling_on_schedule_under_half_of_it_and_reminded_every_ten_minutes() {
        let ceiling = Duration::from_secs(15);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Pace::default();
        assert_eq!(p.on_batch(Duration::from_millis(50), ceiling, at(0)), None, "small batches: on schedule");
        assert_eq!(p.on_batch(ceiling, ceiling, at(1)), None, "at the ceiling: still on schedule");
        assert_eq!(p.on_batch(Duration::from_secs(50), ceiling, at(60)), Some(PaceChange::Behind));
        assert_eq!(p.on_batch(Duration::from_secs(50), ceiling, at(110)), None, "said once");
        assert_eq!(p.on_batch(Duration::from_secs(10), ceiling, at(120)), None, "between half and the ceiling: no change");
        assert_eq!(p.on_batch(Duration::from_secs(50), ceiling, at(660)), Some(PaceChange::Behind), "reminded");
        assert_eq!(p.on_batch(Duration::from_secs(7), ceiling, at(700)), Some(PaceChange::CaughtUp));
        assert_eq!(p.on_batch(Duration::from_secs(7), ceiling, at(701)), None);
        assert_eq!(p.on_batch(Duration::from_secs(16), ceiling, at(702)), Some(PaceChange::Behind), "again at once");
    }
}
