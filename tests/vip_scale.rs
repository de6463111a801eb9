//! What one edit costs when the VIP range is nearly or entirely full: 40,000 services (two
//! instances each, so each wants a VIP) in a /17 (32,766 addresses: full) and in a /8. A
//! measurement, not a test of speed (nothing here asserts a time):
//!
//! `cargo test --release --test vip_scale -- --ignored --nocapture`
//!
//! Prints, per range, the first build and the median of 3 builds after each kind of edit: one
//! instance of one service changed, and one service added (a new host to place).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmap_mcp::cache::ResourceCache;
use cloudmap_mcp::model::{HealthStatus, Instance, Namespace, NamespaceType, Service, Snapshot, Timestamp};
use cloudmap_mcp::translate::{Options, VipSettings};

const SERVICES: usize = 40_000;

fn service(i: usize) -> Arc<Service> {
    let instance = |n: usize| Instance {
        id: format!("i-{n}"),
        attributes: BTreeMap::from([
            ("AWS_INSTANCE_IPV4".to_string(), format!("10.{}.{}.{}", i / 250 % 250, i % 250, n + 1)),
            ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
        ]),
        health: HealthStatus::Healthy,
    };
    Arc::new(Service {
        name: format!("svc-{i:05}"),
        id: Some(format!("srv-{i}")),
        arn: None,
        create_date: Some(Timestamp { seconds: 1_700_000_000 + i as i64, nanos: 0 }),
        attributes: BTreeMap::new(),
        instances: vec![instance(0), instance(1)].into(),
    })
}

fn model(services: usize) -> Snapshot {
    let mut m = Snapshot {
        namespaces: vec![Namespace {
            name: "scale".into(),
            id: Some("ns-scale".into()),
            arn: None,
            kind: NamespaceType::Http,
            http_name: "scale".into(),
            services: (0..services).map(service).collect(),
        }],
    };
    m.normalize();
    m
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture (release build)"]
fn one_edit_in_a_full_range_and_in_a_large_one() {
    for range in ["241.0.0.0/17", "241.0.0.0/8"] {
        let vips = VipSettings::new(true, vec![range.parse().unwrap()]).unwrap();
        let mut cache = ResourceCache::new(Options { vips, ..Options::default() });
        let mut m = model(SERVICES);
        let t = Instant::now();
        let (snap, _) = cache.build(&Arc::new(m.clone()));
        let first = t.elapsed();
        let served = snap.vips.len();
        let mut instance_edit = Vec::new();
        let mut added = Vec::new();
        for round in 0..3 {
            // One instance of one service moves (an ECS task replaced).
            let svc = &mut m.namespaces[0].services[round * 7];
            let mut s = (**svc).clone();
            let mut inst: Vec<Instance> = s.instances.to_vec();
            inst[0].attributes.insert("AWS_INSTANCE_IPV4".into(), format!("10.255.{round}.1"));
            s.instances = inst.into();
            *svc = Arc::new(s);
            let t = Instant::now();
            cache.build(&Arc::new(m.clone()));
            instance_edit.push(t.elapsed());
            // One service added.
            m.namespaces[0].services.push(service(SERVICES + round));
            m.normalize();
            let t = Instant::now();
            cache.build(&Arc::new(m.clone()));
            added.push(t.elapsed());
        }
        println!(
            "{SERVICES} services in {range}: first build {first:.2?} ({served} with a VIP); one instance edited {:.2?}; one service added {:.2?} (medians of 3)",
            median(instance_edit),
            median(added)
        );
    }
}
