//! The address rule (docs/reaching-services.md): which entries get a VIP, and that a service made
//! of tasks or pods keeps one address whatever its instances.
use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::model::{HealthStatus, Instance, Namespace, NamespaceType, Service};

fn instance(id: &str, ip: &str, extra: &[(&str, &str)]) -> Instance {
    let mut attributes: BTreeMap<String, String> = BTreeMap::from([("AWS_INSTANCE_IPV4".into(), ip.into())]);
    attributes.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Instance { id: id.into(), attributes, health: HealthStatus::Healthy }
}

fn ecs_task(n: u32) -> Instance {
    let id = format!("{n:032x}");
    let ip = format!("10.0.{}.{}", n / 250, n % 250 + 1);
    instance(&id, &ip, &[("ECS_CLUSTER_NAME", "prod"), ("ECS_SERVICE_NAME", "web"), ("AVAILABILITY_ZONE", "us-east-1a")])
}

fn service(name: &str, created: i64, attributes: &[(&str, &str)], instances: Vec<Instance>) -> Arc<Service> {
    Arc::new(Service {
        name: name.into(),
        id: Some(format!("srv-{name}")),
        arn: None,
        create_date: Some(Timestamp { seconds: created, nanos: 0 }),
        attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        instances: instances.into(),
    })
}

fn snapshot(services: Vec<Arc<Service>>) -> model::Snapshot {
    let mut services = services;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    model::Snapshot {
        namespaces: vec![Namespace {
            name: "team".into(),
            id: Some("ns-team".into()),
            arn: None,
            kind: NamespaceType::Http,
            http_name: "team".into(),
            services,
        }],
    }
}

fn addresses(t: &Translation, service: &str) -> Vec<String> {
    let host = format!("{service}.team");
    t.entries.iter().find(|e| e.spec.hosts[0] == host).unwrap_or_else(|| panic!("{host} served")).spec.addresses.clone()
}

fn in_range(opts: &Options, a: &[String]) -> bool {
    a.len() == 1 && opts.vips.cidrs[0].contains(&a[0].parse().unwrap())
}

#[test]
fn tasks_and_pods_get_a_vip_with_one_instance_and_a_hand_registered_ip_is_its_address() {
    let opts = Options::default();
    let pod = instance("192.168.59.249", "192.168.59.249", &[("k8s.io/pod", "front-1"), ("k8s.io/namespace", "mesh")]);
    let mesh_only = instance("i-1", "192.168.1.1", &[("appmesh.k8s.aws/virtualNode", "front")]);
    let set = ("ECS_TASK_SET_EXTERNAL_ID", "blue");
    let t = translate(
        &snapshot(vec![
            service("ecs", 1, &[], vec![ecs_task(1)]),
            service("pod", 1, &[], vec![pod.clone()]),
            service("mesh", 1, &[], vec![mesh_only]),
            service("taskset", 1, &[], vec![instance("t", "10.0.9.9", &[set])]),
            service("empty", 1, &[], vec![]),
            service("external", 1, &[], vec![instance("ext-1", "52.192.72.89", &[("version", "v1")])]),
            service("forced", 1, &[("cloudmap-mcp/vip", "always")], vec![instance("x", "52.1.1.1", &[])]),
            service("pinned", 1, &[("cloudmap-mcp/vip", "never")], vec![pod]),
        ]),
        &opts,
    );
    for s in ["ecs", "pod", "mesh", "taskset", "empty", "forced"] {
        assert!(in_range(&opts, &addresses(&t, s)), "{s}: {:?}", addresses(&t, s));
    }
    assert_eq!(addresses(&t, "external"), ["52.192.72.89"]);
    assert_eq!(addresses(&t, "pinned"), ["192.168.59.249"], "cloudmap-mcp/vip=never");
    // The mapping forces either way too; the attribute wins over it.
    let mapping = mapping::parse(
        "rules:\n  - match: {service: external}\n    vip: always\n  - match: {service: 'ecs'}\n    vip: never\n  - match: {service: forced}\n    vip: never\n",
    )
    .unwrap();
    let opts = Options { mapping: Arc::new(mapping), ..Options::default() };
    let t = translate(
        &snapshot(vec![
            service("ecs", 1, &[], vec![ecs_task(1)]),
            service("external", 1, &[], vec![instance("ext-1", "52.192.72.89", &[])]),
            service("forced", 1, &[("cloudmap-mcp/vip", "always")], vec![instance("x", "52.1.1.1", &[])]),
        ]),
        &opts,
    );
    assert!(in_range(&opts, &addresses(&t, "external")));
    assert_eq!(addresses(&t, "ecs"), ["10.0.0.2"]);
    assert!(in_range(&opts, &addresses(&t, "forced")));
}

#[test]
fn an_ecs_rolling_deployment_keeps_its_address() {
    // 1 task (10.0.1.5) → old + new → new task (10.0.1.9), as `render` showed [10.0.1.5] → [VIP] → [10.0.1.9].
    let task = |ip: &str| instance(ip, ip, &[("ECS_CLUSTER_NAME", "prod"), ("ECS_SERVICE_NAME", "web")]);
    let opts = Options::default();
    let states = [vec![task("10.0.1.5")], vec![task("10.0.1.5"), task("10.0.1.9")], vec![task("10.0.1.9")], vec![]];
    let served: Vec<Vec<String>> =
        states.iter().map(|s| addresses(&translate(&snapshot(vec![service("web", 1, &[], s.clone())]), &opts), "web")).collect();
    assert!(in_range(&opts, &served[0]), "{served:?}");
    assert!(served.iter().all(|a| *a == served[0]), "{served:?}");
}

proptest! {
    /// For any sequence of instance sets of a service made of tasks, next to other services that
    /// stay, the served address is the same in every state.
    #[test]
    fn a_task_service_keeps_one_address_through_any_instance_sets(
        sets in proptest::collection::vec(proptest::collection::btree_set(0u32..40, 0..5), 1..8),
        others in 0usize..12,
    ) {
        let opts = Options { vips: VipSettings::new(true, vec!["241.9.0.0/28".parse().unwrap()]).unwrap(), ..Options::default() };
        let mut first: Option<Vec<String>> = None;
        for set in &sets {
            let mut services: Vec<Arc<Service>> = (0..others)
                .map(|i| service(&format!("s{i}"), i as i64, &[], vec![instance("a", "10.1.0.1", &[]), instance("b", "10.1.0.2", &[])]))
                .collect();
            services.push(service("web", 5, &[], set.iter().map(|n| ecs_task(*n)).collect()));
            let got = addresses(&translate(&snapshot(services), &opts), "web");
            prop_assert!(in_range(&opts, &got), "{:?}", got);
            match &first {
                None => first = Some(got),
                Some(f) => prop_assert_eq!(f, &got),
            }
        }
    }
}
