use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::model::{HealthStatus, Instance, Namespace, NamespaceType, Service, Timestamp};
use crate::translate::Options;

fn instance(id: &str, ip: &str) -> Instance {
    Instance {
        id: id.into(),
        attributes: BTreeMap::from([("AWS_INSTANCE_IPV4".into(), ip.into()), ("AWS_INSTANCE_PORT".into(), "8080".into())]),
        health: HealthStatus::Unknown,
    }
}

fn service(name: &str, created: i64, ips: &[&str]) -> Service {
    Service {
        name: name.into(),
        id: Some(format!("srv-{name}")),
        arn: None,
        create_date: Some(Timestamp { seconds: created, nanos: 0 }),
        attributes: Default::default(),
        instances: ips.iter().enumerate().map(|(i, ip)| instance(&format!("i-{i}"), ip)).collect::<Vec<_>>().into(),
    }
}

fn namespace(name: &str, services: Vec<Service>) -> Namespace {
    Namespace {
        name: name.into(),
        id: Some(format!("ns-{name}")),
        arn: None,
        kind: NamespaceType::Http,
        http_name: name.into(),
        services: services.into_iter().map(Arc::new).collect(),
    }
}

type Names = Vec<(Arc<str>, Arc<str>)>;

/// What a from-scratch translation and encoding of `model` serves.
fn fresh(model: &model::Snapshot, opts: &Options) -> (Vec<Bytes>, Names, Translation) {
    let t = translate::translate(model, opts);
    let (resources, versions): (Vec<Bytes>, Vec<String>) = t.entries.iter().map(encode_entry).unzip();
    let names = t.entries.iter().map(|e| e.resource_name().into()).zip(versions.into_iter().map(Into::into)).collect();
    (resources, names, t)
}

/// Builds `model` incrementally and checks it against a fresh translation; returns how many
/// entries the build encoded.
fn check(cache: &mut ResourceCache, model: &model::Snapshot) -> usize {
    let (snap, encoded) = cache.build(&Arc::new(model.clone()));
    let (resources, names, t) = fresh(model, cache.options());
    assert_eq!(*snap.vips, t.vips);
    assert_eq!(snap.service_entries.names, names);
    assert_eq!(snap.service_entries.resources, resources, "incremental bytes equal a fresh encoding");
    assert_eq!(*snap.rejected, t.rejected);
    assert_eq!(*snap.notes, t.notes);
    assert_eq!(snap.translation(), t);
    // A new cache (another replica, a restart) builds the same bytes, whatever came before.
    let mut other = ResourceCache::new(cache.options().clone());
    let again = other.build(&Arc::new(model.clone())).0;
    assert_eq!(snap.service_entries.resources, again.service_entries.resources);
    assert_eq!(snap.service_entries.version, again.service_entries.version, "version is content-only");
    encoded
}

#[test]
fn incremental_builds_equal_fresh_ones_through_a_history_of_changes() {
    let seed = crate::source::file::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml")).unwrap();
    let mut m = seed.clone();
    m.namespaces.push(namespace(
        "team",
        vec![service("api", 100, &["10.0.0.1", "10.0.0.2"]), service("web", 200, &["10.0.1.1"]), service("db", 50, &[])],
    ));
    m.normalize();
    let mut cache = ResourceCache::new(Options::default());
    let total = translate::translate(&m, &Options::default()).entries.len();
    assert_eq!(check(&mut cache, &m), total, "first build encodes everything");
    assert_eq!(check(&mut cache, &m), 0, "an unchanged model encodes nothing");

    // One instance changes: one entry is encoded again.
    let team = m.namespaces.iter().position(|n| n.name == "team").unwrap();
    Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
        v[1].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.0.9".into());
    });
    let vips = cache.vips.clone();
    assert_eq!(check(&mut cache, &m), 1);
    assert!(!vips.is_empty() && Arc::ptr_eq(&vips, &cache.vips), "no host came or went: the VIP allocation is kept, not rebuilt");

    // A newer service colliding on a host (names differing in case) is rejected; when the older
    // one goes, the newer one is served, without being translated again.
    m.namespaces[team].services.push(Arc::new(service("API", 300, &["10.0.2.1"])));
    m.normalize();
    assert_eq!(check(&mut cache, &m), 1);
    let (snap, _) = cache.build(&Arc::new(m.clone()));
    assert!(snap.rejected.iter().any(|r| r.source.service == "API"), "{:?}", snap.rejected);
    m.namespaces[team].services.retain(|s| s.name != "api");
    assert_eq!(check(&mut cache, &m), 0, "the survivor's outcome is reused");

    // Namespace metadata is an input of every service in it.
    m.namespaces[team].id = Some("ns-team-recreated".into());
    let in_team = translate::translate(&m, &Options::default()).entries.iter().filter(|e| e.source.namespace == "team").count();
    assert!(in_team >= 2);
    assert_eq!(check(&mut cache, &m), in_team, "every entry of the namespace carries its id annotation");

    // A service that cannot be translated, then fixed.
    Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
        v[0].attributes.insert("AWS_INSTANCE_PORT".into(), "not-a-port".into());
    });
    check(&mut cache, &m);
    Service::edit_instances(&mut m.namespaces[team].services[0], |v| {
        v[0].attributes.insert("AWS_INSTANCE_PORT".into(), "80".into());
    });
    assert_eq!(check(&mut cache, &m), 1);

    // Two namespaces of one name (the key is ambiguous): never reused, always correct.
    let mut twin = namespace("team", vec![service("web", 10, &["10.9.9.9"])]);
    twin.id = Some("ns-team-2".into());
    m.namespaces.push(twin);
    m.normalize();
    check(&mut cache, &m);
    check(&mut cache, &m);
    m.namespaces.retain(|n| n.id.as_deref() != Some("ns-team-2"));
    check(&mut cache, &m);

    // A cache whose memo does not match its previous model (as after a build that panicked
    // half-way) builds from scratch, correctly.
    cache.memo.clear();
    assert_eq!(check(&mut cache, &m), translate::translate(&m, &Options::default()).entries.len());
    cache.prev_model = None;
    check(&mut cache, &m);

    // Everything removed, then back.
    check(&mut cache, &model::Snapshot::default());
    assert_eq!(check(&mut cache, &seed), translate::translate(&seed, &Options::default()).entries.len());
}

#[test]
fn vips_follow_the_age_order_and_only_moved_ones_are_encoded_again() {
    // Six usable addresses: collisions are common, and every rule of the allocator shows.
    let vips = translate::VipSettings::new(true, vec!["241.9.0.0/29".parse().unwrap()]).unwrap();
    let opts = Options { vips, ..Options::default() };
    let mut cache = ResourceCache::new(opts.clone());
    let two = ["10.0.0.1", "10.0.0.2"];
    let mut m = model::Snapshot {
        namespaces: vec![namespace(
            "team",
            vec![service("a", 1, &two), service("b", 2, &two), service("c", 3, &two)],
        )],
    };
    assert_eq!(check(&mut cache, &m), 3);
    let first = cache.vips.clone();
    assert_eq!(first.len(), 3);

    // Two younger services: only they are encoded; the older ones keep their VIPs.
    m.namespaces[0].services.push(Arc::new(service("d", 4, &two)));
    m.namespaces[0].services.push(Arc::new(service("e", 5, &two)));
    m.normalize();
    assert_eq!(check(&mut cache, &m), 2);
    for h in ["a.team", "b.team", "c.team"] {
        assert_eq!(cache.vips[h], first[h], "{h} kept its VIP");
    }

    // b goes: a keeps its VIP; a younger host may move (to b's address or back to its hash
    // address), and exactly the entries that moved are encoded again.
    let before = cache.vips.clone();
    m.namespaces[0].services.retain(|s| s.name != "b");
    let moved = |before: &translate::Allocation, after: &translate::Allocation| {
        after.iter().filter(|(h, a)| before.get(h.as_str()) != Some(a)).count()
    };
    let encoded = check(&mut cache, &m);
    assert_eq!(cache.vips["a.team"], before["a.team"]);
    assert_eq!(encoded, moved(&before, &cache.vips));
    assert_eq!(check(&mut cache, &m), 0);

    // New options (a mapping edit turning VIPs off for the youngest): everything is translated
    // again, the older ones keep their VIPs.
    let before = cache.vips.clone();
    let mapping = translate::mapping::parse("rules:\n  - match: {service: e}\n    vip: never\n").unwrap();
    cache.set_options(Arc::new(Options { mapping: Arc::new(mapping), ..opts.clone() }));
    check(&mut cache, &m);
    assert!(!cache.vips.contains_key("e.team"));
    for h in ["a.team", "c.team", "d.team"] {
        assert_eq!(cache.vips[h], before[h], "{h} kept its VIP across the options change");
    }
    // Same options again: nothing to do.
    cache.set_options(cache.opts.clone());
    assert_eq!(check(&mut cache, &m), 0);
}

/// Builds `model` like [`check`] and says whether the build took the patch path.
fn check_patched(cache: &mut ResourceCache, model: &model::Snapshot) -> (usize, bool) {
    let before = cache.patched;
    let encoded = check(cache, model);
    (encoded, cache.patched > before)
}

#[test]
fn changes_that_move_nothing_across_services_are_patched_in_and_the_others_build_in_full() {
    let vips = translate::VipSettings::new(true, vec!["241.9.0.0/29".parse().unwrap()]).unwrap();
    let opts = Options { vips, ..Options::default() };
    let mut cache = ResourceCache::new(opts);
    // `API` and `api` share a host: the older `api` is served, `API` is rejected. Two instances
    // each: a service with one address is served at it, not at a VIP.
    let mut m = model::Snapshot {
        namespaces: vec![
            namespace(
                "team",
                vec![
                    service("api", 1, &["10.0.0.1", "10.0.0.2"]),
                    service("API", 9, &["10.0.0.9", "10.0.0.10"]),
                    service("web", 2, &["10.0.1.1", "10.0.1.2"]),
                ],
            ),
            namespace("other", vec![service("db", 3, &["10.0.2.1", "10.0.2.2", "10.0.2.3"])]),
        ],
    };
    m.normalize();
    let at = |m: &model::Snapshot, ns: &str, svc: &str| {
        let n = m.namespaces.iter().position(|n| n.name == ns).unwrap();
        (n, m.namespaces[n].services.iter().position(|s| s.name == svc).unwrap())
    };
    let edit = |m: &mut model::Snapshot, (n, s): (usize, usize), f: &dyn Fn(&mut Vec<Instance>)| {
        Service::edit_instances(&mut m.namespaces[n].services[s], f);
    };
    assert!(!check_patched(&mut cache, &m).1, "the first build is a full one");
    assert_eq!(check_patched(&mut cache, &m), (0, true), "nothing changed");

    // An address moves (a task replaced): patched, re-encoded with the VIP its host holds.
    let web = at(&m, "team", "web");
    let vip = cache.vips["web.team"].clone();
    edit(&mut m, web, &|v| {
        v[0].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.1.5".into());
    });
    assert_eq!(check_patched(&mut cache, &m), (1, true));
    assert_eq!(cache.vips["web.team"], vip);
    // A task added and one taken away, in two namespaces at once.
    edit(&mut m, web, &|v| v.push(instance("i-9", "10.0.1.3")));
    let db = at(&m, "other", "db");
    edit(&mut m, db, &|v| {
        v.pop();
    });
    assert_eq!(check_patched(&mut cache, &m), (2, true));
    // Down to one instance: served at its address instead of a VIP, a host leaves the VIP pass.
    edit(&mut m, db, &|v| v.truncate(1));
    assert!(!check_patched(&mut cache, &m).1, "the VIP hosts changed");
    edit(&mut m, db, &|v| v.push(instance("i-8", "10.0.2.8")));
    assert!(!check_patched(&mut cache, &m).1, "the VIP hosts changed");

    // The service that lost the host collision changes: patched, still not served; once the
    // winner goes (a full build), it is served with its new data.
    let upper = at(&m, "team", "API");
    edit(&mut m, upper, &|v| {
        v[0].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.0.8".into());
    });
    assert_eq!(check_patched(&mut cache, &m), (1, true));
    let api = at(&m, "team", "api");
    let removed = m.namespaces[api.0].services.remove(api.1);
    assert!(!check_patched(&mut cache, &m).1, "a service went");
    let (snap, _) = cache.build(&Arc::new(m.clone()));
    assert!(snap.service_entries.resources.iter().any(|r| r.windows(8).any(|w| w == b"10.0.0.8")));

    // A change that makes the service unservable, and the fix: the served set moves, full builds.
    m.namespaces[api.0].services.push(removed);
    m.normalize();
    check(&mut cache, &m);
    let web = at(&m, "team", "web");
    let ports = |p: &'static str| move |v: &mut Vec<Instance>| {
        for i in v.iter_mut() {
            i.attributes.insert("AWS_INSTANCE_PORT".into(), p.into());
        }
    };
    edit(&mut m, web, &ports("not-a-port"));
    assert!(!check_patched(&mut cache, &m).1, "an entry is no longer served");
    edit(&mut m, web, &ports("8081"));
    assert!(!check_patched(&mut cache, &m).1, "an entry is served again");
    edit(&mut m, web, &ports("8082"));
    assert_eq!(check_patched(&mut cache, &m), (1, true));

    // One bad instance among good ones: a note comes (full), the same note stays (patched).
    edit(&mut m, web, &|v| {
        v[0].attributes.insert("AWS_INSTANCE_PORT".into(), "not-a-port".into());
    });
    let (_, patched) = check_patched(&mut cache, &m);
    assert!(!patched, "a new note");
    edit(&mut m, web, &|v| {
        v[1].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.1.7".into());
    });
    assert_eq!(check_patched(&mut cache, &m), (1, true), "the same note");

    // Namespace metadata changes: every service in it, full.
    m.namespaces[web.0].id = Some("ns-team-recreated".into());
    assert!(!check_patched(&mut cache, &m).1);
    assert_eq!(check_patched(&mut cache, &m), (0, true));
}

/// One step of a random history: which service (of a small set, with names that collide on their
/// host) becomes what.
#[derive(Clone, Debug)]
struct Step {
    namespace: usize,
    service: usize,
    /// `None`: the service goes away. Else its instances: (address, port) choices.
    instances: Option<Vec<(u8, u8)>>,
    /// Its `cloudmap-mcp/hosts` attribute (an index into `EXTRAS`): extra hosts that collide with
    /// other services' own and extra hosts.
    extras: u8,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    (0..2usize, 0..5usize, proptest::option::weighted(0.85, proptest::collection::vec((0..6u8, 0..4u8), 0..4)), 0..6u8)
        .prop_map(|(namespace, service, instances, extras)| Step { namespace, service, instances, extras })
}

fn apply(m: &mut model::Snapshot, s: &Step) {
    const NAMES: [&str; 5] = ["api", "API", "web", "db", "cache"];
    const ADDRESSES: [&str; 6] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "not-an-ip", "10.0.0.6"];
    const PORTS: [&str; 4] = ["8080", "80", "not-a-port", "9090"];
    let ns = &mut m.namespaces[s.namespace];
    let name = NAMES[s.service];
    let at = ns.services.iter().position(|x| x.name == name);
    let Some(instances) = &s.instances else {
        if let Some(i) = at {
            ns.services.remove(i);
        }
        return;
    };
    let instances: Vec<Instance> = instances
        .iter()
        .enumerate()
        .map(|(i, &(a, p))| {
            let mut inst = instance(&format!("i-{i}"), ADDRESSES[a as usize]);
            inst.attributes.insert("AWS_INSTANCE_PORT".into(), PORTS[p as usize].into());
            if name == "cache" {
                // A service made of ECS tasks: a VIP even with one instance.
                inst.attributes.insert("ECS_SERVICE_NAME".into(), "cache".into());
            }
            inst
        })
        .collect();
    const EXTRAS: [&str; 6] = ["", "shared.team", "web.team,shared.team", "x.team,api.team", "shared.other,x.team", "web.other"];
    let attributes: BTreeMap<String, String> = match EXTRAS[s.extras as usize] {
        "" => BTreeMap::new(),
        hosts => BTreeMap::from([
            ("cloudmap-mcp/hosts".to_string(), hosts.to_string()),
            ("cloudmap-mcp/protocol".to_string(), "HTTP".to_string()),
        ]),
    };
    match at {
        // An edit of the same service (same creation time): what a poll brings.
        Some(i) => {
            Service::edit_instances(&mut ns.services[i], |v| *v = instances);
            if ns.services[i].attributes != attributes {
                Arc::make_mut(&mut ns.services[i]).attributes = attributes;
            }
        }
        None => {
            let mut svc = service(name, 10 + s.service as i64, &[]);
            svc.instances = instances.into();
            svc.attributes = attributes;
            ns.services.push(Arc::new(svc));
            m.normalize();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever path each build takes, it serves exactly what a fresh translation does (bytes,
    /// versions, VIPs, rejections, notes), through random histories of edits, additions and removals,
    /// with host collisions (own and extra hosts), unservable services and a VIP range small enough
    /// to fill up.
    #[test]
    fn every_build_of_a_random_history_equals_a_fresh_one(steps in proptest::collection::vec(step(), 1..25)) {
        let vips = translate::VipSettings::new(true, vec!["241.9.0.0/30".parse().unwrap()]).unwrap();
        let mut cache = ResourceCache::new(Options { vips, ..Options::default() });
        let mut m = model::Snapshot { namespaces: vec![namespace("team", vec![]), namespace("other", vec![])] };
        check(&mut cache, &m);
        for s in &steps {
            apply(&mut m, s);
            check(&mut cache, &m);
        }
    }

    /// The same final snapshot reached through two different histories (two replicas, or one
    /// before and after a restart) gives the same VIPs and the same bytes as a fresh cache.
    #[test]
    fn the_same_snapshot_gives_the_same_vips_and_bytes_whatever_the_history(
        one in proptest::collection::vec(step(), 0..15),
        two in proptest::collection::vec(step(), 0..15),
        last in proptest::collection::vec(step(), 1..15),
    ) {
        let vips = translate::VipSettings::new(true, vec!["241.9.0.0/29".parse().unwrap()]).unwrap();
        let opts = Options { vips, ..Options::default() };
        let empty = || model::Snapshot { namespaces: vec![namespace("team", vec![]), namespace("other", vec![])] };
        let mut fin = empty();
        for s in &last {
            apply(&mut fin, s);
        }
        let fin = Arc::new(fin);
        let mut served = Vec::new();
        for history in [&one, &two, &Vec::new()] {
            let mut cache = ResourceCache::new(opts.clone());
            let mut m = empty();
            for s in history.iter() {
                apply(&mut m, s);
                cache.build(&Arc::new(m.clone()));
            }
            let (snap, _) = cache.build(&fin);
            served.push((snap.vips.clone(), snap.service_entries.resources.clone(), snap.service_entries.version.clone()));
        }
        proptest::prop_assert_eq!(&served[0], &served[2]);
        proptest::prop_assert_eq!(&served[1], &served[2]);
    }
}

#[test]
fn an_address_a_departed_host_held_is_handed_out_in_the_same_build() {
    // Two usable addresses. `a` and `b` hold them; `a` goes and `c` comes in the same build: `c`
    // gets the free address at once (no hold-back: the allocation depends on the snapshot alone),
    // and the debug views (translated again from the snapshot) show the same.
    let vips = translate::VipSettings::new(true, vec!["241.9.0.0/30".parse().unwrap()]).unwrap();
    let mut cache = ResourceCache::new(Options { vips, ..Options::default() });
    let two = ["10.0.0.1", "10.0.0.2"];
    let mut m = model::Snapshot { namespaces: vec![namespace("team", vec![service("a", 1, &two), service("b", 2, &two)])] };
    check(&mut cache, &m);
    let a_addr = cache.vips["a.team"].clone();
    let b_addr = cache.vips["b.team"].clone();
    m.namespaces[0].services.retain(|s| s.name != "a");
    m.namespaces[0].services.push(Arc::new(service("c", 3, &two)));
    m.normalize();
    let (snap, _) = cache.build(&Arc::new(m.clone()));
    let mut now: Vec<_> = [&snap.vips["b.team"], &snap.vips["c.team"]].into_iter().cloned().collect();
    now.sort();
    let mut then = vec![a_addr, b_addr];
    then.sort();
    assert_eq!(now, then, "the newcomer takes the address a held (or b moves to it, when it is b's hash address)");
    let shown = snap.translation();
    assert_eq!(shown.vips, *snap.vips);
    assert!(shown.notes.iter().all(|n| n.kind != NoteKind::Vip));
    assert!(check_patched(&mut cache, &m).1, "settled");
}

#[test]
fn a_change_of_extra_hosts_takes_the_full_build_and_the_loser_of_an_extra_host_patches_correctly() {
    let mut cache = ResourceCache::new(Options::default());
    let with_hosts = |name: &str, created: i64, hosts: &str| {
        let mut s = service(name, created, &["10.0.0.1", "10.0.0.2"]);
        s.attributes = BTreeMap::from([
            ("cloudmap-mcp/hosts".to_string(), hosts.to_string()),
            ("cloudmap-mcp/protocol".to_string(), "HTTP".to_string()),
        ]);
        s
    };
    // `a` is older: it keeps `shared.team`; `b` loses it and keeps `b2.team`.
    let mut m = model::Snapshot {
        namespaces: vec![namespace("team", vec![with_hosts("a", 1, "shared.team"), with_hosts("b", 2, "shared.team,b2.team")])],
    };
    check(&mut cache, &m);
    let (snap, _) = cache.build(&Arc::new(m.clone()));
    assert!(snap.notes.iter().any(|n| n.kind == NoteKind::Host && n.source.service == "b"), "{:?}", snap.notes);
    // An instance of the loser changes: patched, still without the lost host.
    Service::edit_instances(&mut m.namespaces[0].services[1], |v| {
        v[0].attributes.insert("AWS_INSTANCE_IPV4".into(), "10.0.0.9".into());
    });
    assert_eq!(check_patched(&mut cache, &m), (1, true));
    // The winner gives the host up: the loser's entry changes without any change of its own.
    Arc::make_mut(&mut m.namespaces[0].services[0]).attributes.remove("cloudmap-mcp/hosts");
    let (encoded, patched) = check_patched(&mut cache, &m);
    assert!(!patched, "extra hosts changed: a full build");
    assert_eq!(encoded, 2, "a changed, and b serves shared.team now");
    let (snap, _) = cache.build(&Arc::new(m.clone()));
    assert!(!snap.notes.iter().any(|n| n.kind == NoteKind::Host), "{:?}", snap.notes);
}
