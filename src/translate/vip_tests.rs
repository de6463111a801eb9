use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn at(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// Hosts all created at the same time: taken by name.
fn same_age<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Vec<(Timestamp, &'a str)> {
    hosts.into_iter().map(|h| (Timestamp::default(), h)).collect()
}

#[test]
fn ranges_are_checked() {
    assert!(cidr("241.0.0.0/8").contains(&"241.1.2.3".parse().unwrap()));
    for (bad, why) in [
        ("240.240.0.0/16", "overlaps 240.240.0.0/16"),
        ("240.0.0.0/4", "overlaps 240.240.0.0/16"),
        ("240.240.7.0/24", "overlaps"),
        ("2001:2::/64", "overlaps 2001:2::/48"),
        ("241.0.0.1/8", "host bits set"),
        ("241.0.0.0/31", "too small"),
        ("241.0.0.0", "not a CIDR"),
        ("241.0.0.0/33", "longer than the address"),
        ("nope/8", "not an IP address"),
        // Addresses that mean something else on every host.
        ("127.0.0.0/8", "loopback"),
        ("127.1.0.0/16", "loopback"),
        ("169.254.0.0/16", "169.254.169.254"),
        ("169.254.169.0/24", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("239.1.0.0/16", "multicast"),
        ("0.0.0.0/1", "unspecified"),
        ("0.0.0.0/8", "unspecified"),
        ("::/64", "unspecified"),
        ("::/120", "unspecified"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::ffff:f100:0/104", "IPv4-mapped"),
        ("fe80::/10", "link-local"),
        ("fe80::/64", "link-local"),
        ("ff00::/8", "multicast"),
        ("ff02::/16", "multicast"),
        ("fd00:ec2::/64", "instance metadata"),
        ("fc00::/7", "instance metadata"),
    ] {
        let e = bad.parse::<Cidr>().unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert!(VipSettings::new(true, vec![cidr("241.0.0.0/8"), cidr("242.0.0.0/8")]).is_err());
    assert!(VipSettings::new(true, vec![cidr("241.0.0.0/8"), cidr("fd00:cafe::/64")]).is_ok());
    // Accepted, with a warning outside the reserved ranges.
    for quiet in [DEFAULT_CIDR, "241.9.0.0/28", "248.0.0.0/5", "fd00:cafe::/64", "fc00::/8"] {
        assert_eq!(cidr(quiet).warning(), None, "{quiet}");
    }
    for loud in ["10.0.0.0/8", "100.64.0.0/10", "192.168.0.0/16", "198.18.0.0/15", "2001:db8::/32", "fe00::/9"] {
        let w = cidr(loud).warning();
        assert!(w.as_deref().is_some_and(|w| w.contains("outside 240.0.0.0/4 and fc00::/7")), "{loud}: {w:?}");
    }
}

#[test]
fn vip_modes_parse_words_and_booleans() {
    for (s, m) in [
        ("auto", VipMode::Auto),
        ("true", VipMode::Auto),
        ("always", VipMode::Always),
        ("never", VipMode::Never),
        ("false", VipMode::Never),
    ] {
        assert_eq!(s.parse::<VipMode>(), Ok(m));
    }
    assert!("yes".parse::<VipMode>().unwrap_err().contains("auto, always, never"));
}

#[test]
fn a_full_range_leaves_the_youngest_out_and_never_uses_network_or_broadcast() {
    let c = cidr("241.0.0.0/30"); // two usable: .1 and .2
    let a = allocate([(at(3), "a"), (at(1), "b"), (at(2), "c")], &[c]);
    assert_eq!(a.addresses.len(), 2);
    assert_eq!(a.exhausted, ["a"], "the youngest service gets nothing");
    for addrs in a.addresses.values() {
        assert!(["241.0.0.1", "241.0.0.2"].contains(&addrs[0].to_string().as_str()), "{addrs:?}");
    }
}

#[test]
fn the_older_host_keeps_its_hash_address_and_a_younger_one_moves_back_when_it_leaves() {
    // Find two hosts with the same home address in a /29 (six usable).
    let c = cidr("241.0.0.0/29");
    let names: Vec<String> = (0..100).map(|i| format!("h{i}.ns")).collect();
    let (old, young) = names
        .iter()
        .enumerate()
        .find_map(|(i, a)| names[i + 1..].iter().find(|b| home(a, &c) == home(b, &c)).map(|b| (a.as_str(), b.as_str())))
        .expect("six addresses, 100 names");
    let both = allocate([(at(2), young), (at(1), old)], &[c]);
    assert_eq!(both.addresses[old], vec![c.addr(home(old, &c))]);
    assert_ne!(both.addresses[young], both.addresses[old]);
    assert_eq!(both.collisions, 1);
    // The other way round when `young` is older.
    let swapped = allocate([(at(1), young), (at(2), old)], &[c]);
    assert_eq!(swapped.addresses[young], vec![c.addr(home(young, &c))]);
    // The older one leaves: the younger one takes its hash address (what may move an address).
    let alone = allocate([(at(2), young)], &[c]);
    assert_eq!(alone.addresses[young], both.addresses[old]);
}

#[test]
fn a_host_given_twice_takes_its_oldest_date() {
    let c = cidr("241.0.0.0/30");
    let a = allocate([(at(5), "x"), (at(2), "y"), (at(1), "x")], &[c]);
    assert_eq!(a.addresses.len(), 2);
    let b = allocate([(at(1), "x"), (at(2), "y")], &[c]);
    assert_eq!(a, b);
}

#[test]
fn dual_stack_gives_one_address_per_family() {
    let a = allocate(same_age(["x.ns"]), &[cidr("241.0.0.0/8"), cidr("fd00:cafe::/64")]);
    let v = &a.addresses["x.ns"];
    assert_eq!(v.len(), 2);
    assert!(v[0].is_ipv4() && v[1].is_ipv6());
}

#[test]
fn runs_of_taken_addresses_merge_and_wrap() {
    let mut t = Taken::new(6);
    for off in [2, 4, 3, 6] {
        assert_eq!(t.first_free(off), Some(off));
        t.take(off);
    }
    assert_eq!(t.runs, BTreeMap::from([(2, 4), (6, 6)]));
    assert_eq!(t.first_free(2), Some(5));
    assert_eq!(t.first_free(6), Some(1), "wraps past the end");
    t.take(1);
    assert_eq!(t.runs, BTreeMap::from([(1, 4), (6, 6)]));
    assert_eq!(t.first_free(6), Some(5));
    t.take(5);
    assert_eq!(t.runs, BTreeMap::from([(1, 6)]));
    assert_eq!(t.first_free(3), None);
}

/// The plain reference: one offset at a time.
fn linear_probe(hosts: &[(Timestamp, &str)], c: &Cidr) -> Allocation {
    let mut hosts = hosts.to_vec();
    hosts.sort();
    let mut seen = HashSet::new();
    hosts.retain(|(_, h)| seen.insert(*h));
    let usable = c.span() - 2;
    let mut used = HashSet::new();
    let mut out = Allocation::new();
    for (_, h) in hosts {
        let mut off = home(h, c);
        for _ in 0..usable {
            if used.insert(off) {
                out.insert(h.to_string(), vec![c.addr(off)]);
                break;
            }
            off = if off == usable { 1 } else { off + 1 };
        }
    }
    out
}

fn aged_hosts(max: usize) -> impl Strategy<Value = Vec<(i64, String)>> {
    proptest::collection::btree_map("[a-z]{1,6}\\.[a-z]{1,4}", 0i64..8, 0..max)
        .prop_map(|m| m.into_iter().map(|(h, t)| (t, h)).collect())
}

fn as_input(hosts: &[(i64, String)]) -> Vec<(Timestamp, &str)> {
    hosts.iter().map(|(t, h)| (at(*t), h.as_str())).collect()
}

proptest! {
    /// Unique, inside the range, independent of input order, and what probing one offset at a
    /// time gives. A /27 (30 usable addresses) makes collisions common and fills up.
    #[test]
    fn vips_are_unique_order_independent_and_equal_to_linear_probing(hosts in aged_hosts(45), seed in any::<u64>()) {
        let c = cidr("241.7.0.0/27");
        let input = as_input(&hosts);
        let a = allocate(input.iter().copied(), &[c]);
        let mut seen = HashSet::new();
        for addrs in a.addresses.values() {
            prop_assert!(c.offset(&addrs[0]).is_some());
            prop_assert!(seen.insert(addrs[0]));
        }
        prop_assert_eq!(a.addresses.len() + a.exhausted.len(), hosts.len());
        prop_assert_eq!(&a.addresses, &linear_probe(&input, &c));
        let mut shuffled = input.clone();
        let n = shuffled.len().max(1);
        shuffled.rotate_left(seed as usize % n);
        shuffled.reverse();
        prop_assert_eq!(&allocate(shuffled, &[c]), &a);
    }

    /// A host coming or going moves only hosts younger than it (or as old and later by name).
    #[test]
    fn a_host_moves_only_younger_hosts(hosts in aged_hosts(40), pick in any::<prop::sample::Index>()) {
        prop_assume!(!hosts.is_empty());
        let c = cidr("241.7.0.0/27");
        let input = as_input(&hosts);
        let all = allocate(input.iter().copied(), &[c]);
        let gone = pick.get(&input);
        let without = allocate(input.iter().copied().filter(|x| x != gone), &[c]);
        for (t, h) in &input {
            if (*t, *h) < *gone {
                prop_assert_eq!(all.addresses.get(*h), without.addresses.get(*h), "{} is older than {:?}", h, gone);
            }
        }
    }

    /// Without collisions the address depends on the host alone.
    #[test]
    fn in_a_large_range_a_host_gets_its_hash_address(hosts in aged_hosts(60)) {
        let c = cidr(DEFAULT_CIDR);
        let a = allocate(as_input(&hosts), &[c]);
        for (_, h) in &hosts {
            let alone = allocate(same_age([h.as_str()]), &[c]);
            if a.collisions == 0 {
                prop_assert_eq!(&a.addresses[h], &alone.addresses[h]);
            }
        }
    }
}
