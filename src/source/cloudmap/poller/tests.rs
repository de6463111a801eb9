use std::collections::BTreeMap;

use super::*;
use crate::source::cloudmap::budget::Budget;
use crate::source::cloudmap::client::Op;

fn poller(ratio: f64, confirmations: u32) -> Poller {
    poller_with(|s| {
        s.max_removal_ratio = ratio;
        s.removal_confirmations = confirmations;
    })
}

/// The default settings, changed by `f`.
pub(in crate::source::cloudmap) fn poller_with(f: impl FnOnce(&mut Settings)) -> Poller {
    let mut settings = super::super::test_settings();
    f(&mut settings);
    // Never called: these tests drive the state directly.
    let conf = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(aws_sdk_servicediscovery::config::BehaviorVersion::latest())
        .region(aws_sdk_servicediscovery::config::Region::new("us-east-1"))
        .build();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CloudMapMetrics::register(&mut registry);
    let api = Api::new(
        aws_sdk_servicediscovery::Client::from_conf(conf),
        Arc::new(Budget::new(settings.budget)),
        metrics.clone(),
        3,
        settings.health,
    );
    let (tx, _rx) = crate::source::channel();
    Poller::new(api, settings, tx, metrics, None)
}

fn instance(id: &str, ip: &str) -> model::Instance {
    model::Instance {
        id: id.into(),
        attributes: BTreeMap::from([("AWS_INSTANCE_IPV4".to_string(), ip.to_string())]),
        health: model::HealthStatus::Healthy,
    }
}

fn served(id: &str, instances: Vec<model::Instance>) -> SvcEntry {
    let now = Instant::now();
    SvcEntry {
        id: id.into(),
        arn: None,
        create_date: None,
        health_checked: false,
        data: Some(Discovered { instances: instances.into(), revision: Some(1), duplicates: Vec::new(), at_cap: false }),
        loaded_seq: 1,
        refreshed_at: None,
        loaded_at: None,
        last_error: None,
        revision_seen: Some(1),
        unchanged_polls: 0,
        removal_held: false,
        next_poll: now,
        next_health: now,
        published: None,
        attributes: Default::default(),
    }
}

pub(in crate::source::cloudmap) fn state_with(n: usize) -> State {
    let mut st = State::default();
    st.namespaces.insert(
        "ns".into(),
        NsEntry {
            info: NamespaceInfo {
                id: "ns-1".into(),
                name: "ns".into(),
                arn: None,
                kind: model::NamespaceType::Http,
                http_name: "ns".into(),
                owner: None,
                create_date: None,
            },
            listed_at: None,
            last_error: None,
        },
    );
    for i in 0..n {
        st.services
            .insert(("ns".into(), format!("s{i}")), served(&format!("srv-{i}"), vec![instance("a", "10.0.0.1")]));
    }
    st
}

pub(in crate::source::cloudmap) fn keys(v: &[usize]) -> Vec<SvcKey> {
    v.iter().map(|i| ("ns".to_string(), format!("s{i}"))).collect()
}

#[test]
fn small_removals_apply_at_once() {
    let p = poller(0.5, 3);
    let mut st = state_with(4);
    let mut report = ResyncReport::default();
    p.apply_removals(&mut st, keys(&[0]), &mut report);
    assert_eq!(st.services.len(), 3);
    assert_eq!(report.removed, 1);
    assert_eq!(st.guard.consecutive, 0);
}

#[test]
fn mass_removal_is_held_until_confirmed() {
    let p = poller(0.5, 3);
    let mut st = state_with(4);
    for round in 1..=2 {
        let mut report = ResyncReport::default();
        p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut report);
        assert_eq!(st.services.len(), 4, "round {round}: held");
        assert_eq!(report.held_back_removals, 3);
        assert_eq!(st.guard.consecutive, round);
        assert!(st.services[&keys(&[1])[0]].removal_held);
    }
    let mut report = ResyncReport::default();
    p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut report);
    assert_eq!(st.services.len(), 1, "third consecutive resync applies it");
    assert_eq!(report.removed, 3);
    assert_eq!(st.guard.consecutive, 0);
}

#[test]
fn a_resync_without_the_mass_removal_resets_the_guard() {
    let p = poller(0.5, 2);
    let mut st = state_with(4);
    p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut ResyncReport::default());
    assert_eq!(st.guard.consecutive, 1);
    p.apply_removals(&mut st, Vec::new(), &mut ResyncReport::default());
    assert_eq!(st.guard.consecutive, 0);
    p.apply_removals(&mut st, keys(&[0, 1, 2]), &mut ResyncReport::default());
    assert_eq!(st.services.len(), 4, "counting starts again");
}

#[test]
fn answers_at_the_instance_cap_are_served_counted_and_noted_until_they_shrink() {
    let p = poller(0.5, 3);
    *p.lock() = state_with(2);
    let key = keys(&[0]).remove(0);
    let at = |n: usize, at_cap: bool| Discovered {
        instances: (0..n).map(|i| instance(&format!("i{i:04}"), &format!("10.0.{}.{}", i / 256, i % 256))).collect::<Vec<_>>().into(),
        revision: Some(n as i64),
        duplicates: vec![],
        at_cap,
    };
    let gauge = |p: &Poller| {
        p.publish_locked(&mut p.lock());
        p.metrics.at_instance_cap.get()
    };
    let note = |p: &Poller| p.debug_view().namespaces.iter().flat_map(|n| &n.services).find(|s| s.name == key.1).and_then(|s| s.note.clone());
    assert_eq!(gauge(&p), 0);
    assert!(p.apply_discovered(&key, 1, Ok(at(1000, true)), Read::Refresh));
    assert_eq!(p.lock().services[&key].data.as_ref().unwrap().instances.len(), 1000, "served as returned");
    assert_eq!(gauge(&p), 1);
    assert!(note(&p).is_some_and(|n| n.contains("1000")), "{:?}", note(&p));
    assert!(p.apply_discovered(&key, 2, Ok(at(999, false)), Read::Refresh));
    assert_eq!(gauge(&p), 0);
    assert_eq!(note(&p), None);
}

#[test]
fn failures_keep_data_and_older_answers_never_win() {
    let p = poller(0.5, 3);
    *p.lock() = state_with(1);
    let key = keys(&[0]).remove(0);
    let err = ApiError {
        operation: Op::DiscoverInstances,
        kind: ErrorKind::Unavailable,
        code: None,
        message: "down".into(),
    };
    assert!(!p.apply_discovered(&key, 5, Err(err), Read::New));
    {
        let st = p.lock();
        let e = &st.services[&key];
        assert_eq!(e.data.as_ref().unwrap().instances.len(), 1, "never shrink on error");
        assert!(e.last_error.is_some());
    }
    let newer = Discovered {
        instances: vec![instance("a", "10.0.0.1"), instance("b", "10.0.0.2")].into(),
        revision: Some(2),
        duplicates: vec![],
        at_cap: false,
    };
    assert!(p.apply_discovered(&key, 7, Ok(newer), Read::Revision(2)));
    let older = Discovered { instances: Vec::new().into(), revision: Some(0), duplicates: vec![], at_cap: false };
    assert!(!p.apply_discovered(&key, 6, Ok(older), Read::New), "an answer to an older request is dropped");
    let st = p.lock();
    let e = &st.services[&key];
    assert_eq!(e.data.as_ref().unwrap().instances.len(), 2);
    assert!(e.last_error.is_none());
    assert_eq!(e.revision_seen, Some(2));
}

#[test]
fn snapshot_serves_only_services_with_data_in_canonical_order() {
    let mut st = state_with(2);
    st.services.get_mut(&keys(&[1])[0]).unwrap().data = None;
    st.services.insert(
        ("ns".into(), "a-first".into()),
        served("srv-x", vec![instance("z", "10.0.0.9"), instance("b", "10.0.0.8")]),
    );
    let snap = st.snapshot();
    assert_eq!(snap.namespaces.len(), 1);
    let names: Vec<_> = snap.namespaces[0].services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["a-first", "s0"]);
    let ids: Vec<_> = snap.namespaces[0].services[0].instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, vec!["b", "z"]);
    // Canonical as it comes (the snapshot is not normalized after it is made), also when it
    // reuses the services of the previous one.
    for snap in [snap, st.snapshot()] {
        let mut normalized = snap.clone();
        normalized.normalize();
        assert_eq!(normalized, snap);
    }
}

#[test]
fn snapshots_share_the_services_that_did_not_change() {
    let mut st = state_with(3);
    let a = st.snapshot();
    let b = st.snapshot();
    for (x, y) in a.namespaces[0].services.iter().zip(&b.namespaces[0].services) {
        assert!(Arc::ptr_eq(x, y), "{} is shared", x.name);
    }
    let data = st.services.get_mut(&keys(&[1])[0]).unwrap().data.as_mut().unwrap();
    let mut instances = data.instances.to_vec();
    instances[0].attributes.insert(model::attr::IPV4.into(), "10.9.9.9".into());
    data.instances = instances.into();
    let c = st.snapshot();
    let shared: Vec<bool> = b.namespaces[0].services.iter().zip(&c.namespaces[0].services).map(|(x, y)| Arc::ptr_eq(x, y)).collect();
    assert_eq!(shared, [true, false, true]);
    assert_eq!(c.namespaces[0].services[1].instances[0].attributes[model::attr::IPV4], "10.9.9.9");
}

#[test]
fn a_refresh_that_reads_the_same_instances_keeps_the_shared_allocation() {
    let p = poller(0.5, 3);
    *p.lock() = state_with(1);
    let key = keys(&[0]).remove(0);
    let published = p.lock().snapshot();
    let served = published.namespaces[0].services[0].instances.clone();
    let read = |ip: &str, revision: i64| Discovered {
        instances: vec![instance("a", ip)].into(),
        revision: Some(revision),
        duplicates: vec![],
        at_cap: false,
    };
    assert!(!p.apply_discovered(&key, 2, Ok(read("10.0.0.1", 2)), Read::Refresh));
    {
        let mut st = p.lock();
        let data = st.services[&key].data.as_ref().unwrap();
        assert!(Arc::ptr_eq(&data.instances, &served), "one copy of unchanged instances, not two");
        assert_eq!(data.revision, Some(2), "the rest of the answer is taken");
        let again = st.snapshot();
        assert!(Arc::ptr_eq(&again.namespaces[0].services[0], &published.namespaces[0].services[0]));
    }
    assert!(p.apply_discovered(&key, 3, Ok(read("10.0.0.2", 3)), Read::Refresh));
    let st = p.lock();
    let data = st.services[&key].data.as_ref().unwrap();
    assert!(!Arc::ptr_eq(&data.instances, &served));
    assert_eq!(data.instances[0].attributes[model::attr::IPV4], "10.0.0.2");
}

fn unavailable(op: Op) -> ApiError {
    ApiError { operation: op, kind: ErrorKind::Unavailable, code: None, message: "down".into() }
}

/// Whether `t` is `d` from `from`, give or take the ±10 % jitter (and the test's own time).
fn about(t: Instant, from: Instant, d: Duration) -> bool {
    t >= from + d.mul_f64(0.89) && t <= from + d.mul_f64(1.11) + Duration::from_millis(100)
}

#[test]
fn the_poll_interval_doubles_with_each_quiet_poll_up_to_the_max() {
    let p = poller_with(|_| {});
    let mut e = served("srv-1", vec![]);
    let secs: Vec<u64> = (0..7)
        .map(|n| {
            e.unchanged_polls = n;
            e.poll_interval(&p.cadence()).as_secs()
        })
        .collect();
    assert_eq!(secs, vec![5, 10, 20, 40, 60, 60, 60]);
    e.unchanged_polls = u32::MAX;
    assert_eq!(e.poll_interval(&p.cadence()), Duration::from_secs(60), "no overflow");

    // max = base: constant polling.
    let p = poller_with(|s| s.revision_poll_max_interval = s.revision_poll_interval);
    e.unchanged_polls = 3;
    assert_eq!(e.poll_interval(&p.cadence()), Duration::from_secs(5));
}

#[test]
fn quiet_polls_back_off_and_a_change_resets_at_once() {
    let p = poller_with(|_| {});
    let mut e = served("srv-1", vec![]);
    let now = Instant::now();
    e.note_quiet(&p.cadence(), now);
    assert_eq!(e.unchanged_polls, 1);
    assert!(about(e.next_poll, now, Duration::from_secs(10)));
    for _ in 0..5 {
        e.note_quiet(&p.cadence(), now);
    }
    assert_eq!(e.unchanged_polls, 6);
    assert!(about(e.next_poll, now, Duration::from_secs(60)), "capped");

    // A change pulls the next poll in to the base interval...
    e.note_change(&p.settings, now);
    assert_eq!(e.unchanged_polls, 0);
    assert!(about(e.next_poll, now, Duration::from_secs(5)));
    // ...and never pushes an earlier one back.
    e.next_poll = now + Duration::from_secs(1);
    e.note_change(&p.settings, now);
    assert_eq!(e.next_poll, now + Duration::from_secs(1));
}

#[test]
fn revision_answers_drive_the_backoff_and_clear_old_errors() {
    let p = poller_with(|_| {});
    *p.lock() = state_with(1);
    let key = keys(&[0]).remove(0);
    let level = |p: &Poller| p.lock().services[&key].unchanged_polls;

    p.apply_revision(&key, Ok(()));
    p.apply_revision(&key, Ok(()));
    assert_eq!(level(&p), 2);
    // An error is kept, and leaves the level as it is.
    p.apply_revision(&key, Err(unavailable(Op::DiscoverInstancesRevision)));
    assert_eq!(level(&p), 2);
    assert!(p.lock().services[&key].last_error.is_some());
    // The next good answer (same revision) clears it.
    p.apply_revision(&key, Ok(()));
    assert_eq!(level(&p), 3);
    assert!(p.lock().services[&key].last_error.is_none(), "an OK revision answer clears the error");

    // A read that finds the same instances changes nothing; one that finds others resets.
    let same = Discovered { instances: vec![instance("a", "10.0.0.1")].into(), revision: Some(1), duplicates: vec![], at_cap: false };
    assert!(!p.apply_discovered(&key, 2, Ok(same), Read::Refresh));
    assert_eq!(level(&p), 3);
    let other = Discovered { instances: vec![instance("a", "10.0.0.9")].into(), revision: Some(1), duplicates: vec![], at_cap: false };
    assert!(p.apply_discovered(&key, 3, Ok(other), Read::Refresh));
    assert_eq!(level(&p), 0);
    let now = Instant::now();
    assert!(p.lock().services[&key].next_poll <= now + Duration::from_secs(6));

    // A moved revision resets, even when the read that follows fails.
    p.apply_revision(&key, Ok(()));
    p.lock().services.get_mut(&key).unwrap().next_poll = now + Duration::from_secs(3600);
    assert!(!p.apply_discovered(&key, 4, Err(unavailable(Op::DiscoverInstances)), Read::Revision(2)));
    let st = p.lock();
    let e = &st.services[&key];
    assert_eq!(e.unchanged_polls, 0);
    assert!(e.next_poll <= Instant::now() + Duration::from_secs(6), "pulled in to the base interval");
    assert_eq!(e.revision_seen, Some(1), "not read yet: the next poll sees the move again");
}

#[test]
fn due_polls_read_instances_when_the_refresh_or_health_interval_is_up() {
    let p = poller_with(|s| {
        s.revision_poll_interval = Duration::from_millis(200);
        s.revision_poll_max_interval = Duration::from_millis(200);
        s.instances_refresh_interval = Duration::from_secs(1);
    });
    let mut st = state_with(6);
    let now = Instant::now();
    let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).expect("a monotonic clock past 2 s");
    for e in st.services.values_mut() {
        e.next_poll = now;
        e.next_health = now + Duration::from_secs(3600);
    }
    let mut set = |i: usize, f: &dyn Fn(&mut SvcEntry)| f(st.services.get_mut(&keys(&[i])[0]).unwrap());
    set(0, &|e| e.loaded_at = Some(ago(1500))); // not read for longer than the refresh interval
    set(1, &|e| e.data = None); // never read
    set(2, &|e| {
        // health-checked, due, and read recently
        e.loaded_at = Some(now);
        e.health_checked = true;
        e.next_health = now;
    });
    set(3, &|e| e.loaded_at = Some(ago(500))); // read a while ago, within the refresh interval
    set(4, &|e| e.loaded_at = Some(now)); // read just now: as fresh as a poll
    set(5, &|e| e.next_poll = now + Duration::from_secs(3600)); // not due
    *p.lock() = st;
    let reads = |p: &Poller| p.due_jobs().into_iter().map(|j| (j.key.1, j.read)).collect::<Vec<_>>();
    assert_eq!(
        reads(&p),
        vec![
            ("s0".into(), Some(Read::Refresh)),
            ("s1".into(), Some(Read::New)),
            ("s2".into(), Some(Read::Health)),
            ("s3".into(), None),
        ]
    );
    assert!(reads(&p).is_empty(), "nothing due right after: every poll is scheduled");
    let st = p.lock();
    assert!(
        about(st.services[&keys(&[4])[0]].next_poll, now, Duration::from_millis(200)),
        "skipped to a poll after the read"
    );
    assert!(st.services[&keys(&[2])[0]].next_health > now, "the next health refresh is scheduled");
}
