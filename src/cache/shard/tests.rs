use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::model::{self, HealthStatus, Instance, Namespace, NamespaceType, Service};
use crate::translate::Options;

/// An encoded set with one entry per `(name, version)` (sorted by name, as builds give it); each
/// entry's bytes are its name and version.
fn encoded(entries: &BTreeMap<String, u8>) -> EncodedType {
    let names: Vec<(Arc<str>, Arc<str>)> = entries.iter().map(|(n, v)| (n.as_str().into(), v.to_string().into())).collect();
    let resources = names.iter().map(|(n, v)| Bytes::from(format!("{n}@{v}"))).collect();
    EncodedType::new(resources, names)
}

/// Shard index of every entry of `shards`, checking that the shards are disjoint.
fn where_is(shards: &[Arc<EncodedType>]) -> BTreeMap<String, usize> {
    let mut at = BTreeMap::new();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s.resources.len(), s.names.len());
        for ((n, v), r) in s.names.iter().zip(&s.resources) {
            assert_eq!(&r[..], format!("{n}@{v}").as_bytes(), "bytes travel with their name");
            assert!(at.insert(n.to_string(), i).is_none(), "{n} is in two shards");
        }
        assert!(s.names.windows(2).all(|w| w[0].0 < w[1].0), "a shard stays sorted by name");
    }
    at
}

fn registry() -> impl Strategy<Value = BTreeMap<String, u8>> {
    proptest::collection::btree_map("[a-z]{1,3}/[a-z0-9.-]{1,12}", 0..4u8, 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Sharding is a partition: every entry is in exactly one shard, the one its name hashes to,
    /// with its own bytes; and an entry's shard does not move when other entries come or go.
    #[test]
    fn sharding_is_a_stable_partition(a in registry(), b in registry(), n in 1..20usize) {
        let all_a = encoded(&a);
        let split_a = split(&all_a, n, None);
        prop_assert_eq!(split_a.len(), n);
        let at_a = where_is(&split_a);
        prop_assert_eq!(at_a.keys().cloned().collect::<BTreeSet<_>>(), a.keys().cloned().collect::<BTreeSet<_>>(), "complete");
        prop_assert_eq!(split_a.iter().map(|s| s.resources_len).sum::<usize>(), all_a.resources_len);
        for (name, shard) in &at_a {
            prop_assert_eq!(*shard, shard_of(name, n));
        }
        // `b` shares some of `a`'s entries and adds and removes others (a registry edited over time).
        let mut c = a.clone();
        for (i, (k, v)) in b.iter().enumerate() {
            if i % 3 == 0 {
                c.remove(a.keys().nth(i % a.len().max(1)).map(String::as_str).unwrap_or(""));
            }
            c.insert(k.clone(), *v);
        }
        let at_c = where_is(&split(&encoded(&c), n, Some(&split_a)));
        for (name, shard) in &at_a {
            if let Some(s) = at_c.get(name) {
                prop_assert_eq!(s, shard, "{} moved", name);
            }
        }
    }

    /// A change to one entry gives a new version to its shard only; the others keep their `Arc`.
    #[test]
    fn only_the_changed_shard_changes(a in registry(), n in 2..20usize, pick in 0..60usize) {
        prop_assume!(!a.is_empty());
        let before = split(&encoded(&a), n, None);
        let mut b = a.clone();
        let name = a.keys().nth(pick % a.len()).unwrap().clone();
        *b.get_mut(&name).unwrap() += 1;
        let after = split(&encoded(&b), n, Some(&before));
        for i in 0..n {
            if i == shard_of(&name, n) {
                prop_assert_ne!(&after[i].version, &before[i].version);
            } else {
                prop_assert!(Arc::ptr_eq(&after[i], &before[i]), "shard {} changed", i);
            }
        }
    }
}

#[test]
fn the_hash_is_fixed() {
    // Part of the protocol: a different assignment moves services between istiod's sources.
    let got: Vec<usize> = ["istio-system/a", "istio-system/b", "team/cloudmap-web.team", "x/y"].iter().map(|n| shard_of(n, 16)).collect();
    assert_eq!(got, [15, 2, 12, 8], "the shard hash (seed or function) changed");
    assert_eq!(shard_of("anything", 1), 0);
}

fn service(name: &str, ip: &str) -> Arc<Service> {
    Arc::new(Service {
        name: name.into(),
        id: Some(format!("srv-{name}")),
        arn: None,
        create_date: Some(model::Timestamp { seconds: 1, nanos: 0 }),
        attributes: Default::default(),
        instances: vec![Instance {
            id: "i-1".into(),
            attributes: BTreeMap::from([("AWS_INSTANCE_IPV4".into(), ip.into()), ("AWS_INSTANCE_PORT".into(), "8080".into())]),
            health: HealthStatus::Unknown,
        }]
        .into(),
    })
}

fn model_of(services: usize, ip_of: impl Fn(usize) -> String) -> model::Snapshot {
    let mut m = model::Snapshot {
        namespaces: vec![Namespace {
            name: "team".into(),
            id: Some("ns-team".into()),
            arn: None,
            kind: NamespaceType::Http,
            http_name: "team".into(),
            services: (0..services).map(|i| service(&format!("svc{i:03}"), &ip_of(i))).collect(),
        }],
    };
    m.normalize();
    m
}

/// Through the cache: the shards of a build are exactly its entries (same bytes), an unsharded
/// cache serves no shards, and a change to one service makes a new version for its shard only.
#[test]
fn builds_split_their_entries_and_keep_unchanged_shards() {
    let m = model_of(40, |i| format!("10.0.0.{i}"));
    let mut plain = ResourceCache::new(Options::default());
    let (whole, _) = plain.build(&Arc::new(m.clone()));
    assert!(whole.shards.is_empty());
    assert_eq!(whole.shard_count(), 1);
    assert!(Arc::ptr_eq(whole.shard(0), &whole.service_entries));

    let mut cache = ResourceCache::new(Options::default()).with_shards(4);
    let (a, _) = cache.build(&Arc::new(m.clone()));
    assert_eq!(a.service_entries.version, whole.service_entries.version, "sharding changes nothing of the whole set");
    assert_eq!(a.shard_count(), 4);
    let mut union: Vec<(Arc<str>, Bytes)> =
        a.shards.iter().flat_map(|s| s.names.iter().map(|n| n.0.clone()).zip(s.resources.iter().cloned())).collect();
    union.sort();
    let all: Vec<(Arc<str>, Bytes)> = a.service_entries.names.iter().map(|n| n.0.clone()).zip(a.service_entries.resources.iter().cloned()).collect();
    assert_eq!(union, all);
    assert!(a.shards.iter().all(|s| !s.names.is_empty()), "40 services fill 4 shards");

    // Nothing changed: the same shards.
    let (same, _) = cache.build(&Arc::new(m.clone()));
    assert!(same.shards.iter().zip(&a.shards).all(|(x, y)| Arc::ptr_eq(x, y)));
    assert!(changed(Some(&a), &same).is_empty());

    // One service's instance moves (the patch path), then a service is added (a full build).
    let edited = model_of(40, |i| if i == 7 { "10.9.9.9".into() } else { format!("10.0.0.{i}") });
    let (b, _) = cache.build(&Arc::new(edited.clone()));
    let home = shard_of("istio-system/cloudmap-svc007.team", 4);
    assert!(a.shards[home].names.iter().any(|n| &*n.0 == "istio-system/cloudmap-svc007.team"), "{:?}", a.shards[home].names);
    assert_eq!(changed(Some(&a), &b), [home]);
    let mut grown = edited.clone();
    grown.namespaces[0].services.push(service("svc999", "10.1.1.1"));
    grown.normalize();
    let (c, _) = cache.build(&Arc::new(grown));
    assert_eq!(changed(Some(&b), &c), [shard_of("istio-system/cloudmap-svc999.team", 4)]);
    for i in 0..4 {
        assert_eq!(Arc::ptr_eq(c.shard(i), b.shard(i)), i != shard_of("istio-system/cloudmap-svc999.team", 4));
    }
}
