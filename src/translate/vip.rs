//! Virtual IPs for ServiceEntries that would otherwise have no address, so that Istio's DNS proxy
//! answers their hosts and sidecars get a listener per VIP and port, on every istiod version.
//!
//! [`allocate`] is a pure function of the hosts, the ranges and the previous allocation:
//! - a host that held an address keeps it while it stays in the range (adding or removing other
//!   hosts never moves it);
//! - a new host gets the address its hash points at; when that address is taken, the next free
//!   one (probing upwards, wrapping), hosts taken in sorted order: the same on every replica, on
//!   every restart and whatever the input order;
//! - an address another host held in the previous allocation is never handed out in the same
//!   build (a client may still be connected to it).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One VIP range (`--vip-cidr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Istio's own allocator ranges; VIP ranges must not overlap them.
pub const ISTIO_RANGES: &[&str] = &["240.240.0.0/16", "2001:2::/48"];
/// The default `--vip-cidr`: inside 240.0.0.0/4 (reserved, never routed) and clear of Istio's
/// 240.240.0.0/16.
pub const DEFAULT_CIDR: &str = "241.0.0.0/8";

impl Cidr {
    fn bits(&self) -> u32 {
        if self.net.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn base(&self) -> u128 {
        match self.net {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Number of addresses used: the whole range, capped at 2^64.
    fn span(&self) -> u128 {
        1u128 << (self.bits() - self.prefix as u32).min(64)
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let v = self.base() + offset;
        match self.net {
            IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(v.into()),
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let v = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(a)) => u32::from(*a) as u128,
            (IpAddr::V6(_), IpAddr::V6(a)) => u128::from(*a),
            _ => return false,
        };
        v >= self.base() && v - self.base() < self.span()
    }

    /// Offset of `ip` in the range, when it is a usable address of it.
    fn offset(&self, ip: &IpAddr) -> Option<u128> {
        if !self.contains(ip) {
            return None;
        }
        let v = match ip {
            IpAddr::V4(a) => u32::from(*a) as u128,
            IpAddr::V6(a) => u128::from(*a),
        };
        let off = v - self.base();
        (off >= 1 && off < self.span() - 1).then_some(off)
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        if self.net.is_ipv4() != other.net.is_ipv4() {
            return false;
        }
        let p = self.prefix.min(other.prefix) as u32;
        let mask = |v: u128| if p == 0 { 0 } else { v >> (self.bits() - p) };
        mask(self.base()) == mask(other.base())
    }

    pub fn is_ipv4(&self) -> bool {
        self.net.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// A network in CIDR form with at least 4 addresses (the first and last are never used), not
    /// overlapping Istio's own ranges.
    fn from_str(s: &str) -> Result<Self, String> {
        let c = parse_plain(s)?;
        let max = if c.net.is_ipv4() { 30 } else { 126 };
        if c.prefix > max {
            return Err(format!("{s:?}: the range is too small (at most /{max})"));
        }
        for r in ISTIO_RANGES {
            if c.overlaps(&parse_plain(r).expect("valid")) {
                return Err(format!("{s:?} overlaps {r}, which istiod allocates from"));
            }
        }
        Ok(c)
    }
}

fn parse_plain(s: &str) -> Result<Cidr, String> {
    let (ip, bits) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as {DEFAULT_CIDR}"))?;
    let net: IpAddr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    let prefix: u8 = bits.parse().map_err(|_| format!("{s:?}: {bits:?} is not a prefix length"))?;
    let c = Cidr { net, prefix };
    if prefix as u32 > c.bits() {
        return Err(format!("{s:?}: prefix /{prefix} is longer than the address"));
    }
    let host_bits = c.bits() - prefix as u32;
    let host_part = if host_bits >= 128 { c.base() } else { c.base() & ((1u128 << host_bits) - 1) };
    if host_part != 0 {
        return Err(format!("{s:?} has host bits set (the network is {}/{prefix})", c.addr(0)));
    }
    Ok(c)
}

/// VIP settings: whether entries get one unless a rule or override says otherwise, and the
/// ranges (at most one per address family; each host gets one address from each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSettings {
    pub enabled: bool,
    pub cidrs: Vec<Cidr>,
}

impl Default for VipSettings {
    fn default() -> Self {
        VipSettings { enabled: true, cidrs: vec![DEFAULT_CIDR.parse().expect("valid default")] }
    }
}

impl VipSettings {
    /// Checks the ranges: at most one IPv4 and one IPv6, no overlap.
    pub fn new(enabled: bool, cidrs: Vec<Cidr>) -> Result<Self, String> {
        if cidrs.iter().filter(|c| c.is_ipv4()).count() > 1 || cidrs.iter().filter(|c| !c.is_ipv4()).count() > 1 {
            return Err("--vip-cidr: give at most one IPv4 and one IPv6 range".into());
        }
        Ok(VipSettings { enabled, cidrs })
    }
}

/// Host → its addresses (one per range, in range order).
pub type Allocation = BTreeMap<String, Vec<IpAddr>>;

/// The result of [`allocate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    pub addresses: Allocation,
    /// Hosts (per range) whose address is not their hash's address (it was taken when they came).
    pub collisions: usize,
    /// Hosts that got no address from some range because it is full.
    pub exhausted: Vec<String>,
}

fn home(host: &str, cidr: &Cidr) -> u128 {
    let h = xxhash_rust::xxh3::xxh3_128(host.as_bytes());
    let usable = cidr.span() - 2;
    1 + h % usable
}

/// Allocates an address from each range to each of `hosts` (see the module docs). `hosts` may be
/// in any order and contain duplicates.
pub fn allocate<'a>(hosts: impl IntoIterator<Item = &'a str>, cidrs: &[Cidr], previous: &Allocation) -> Allocated {
    let mut hosts: Vec<&str> = hosts.into_iter().collect();
    hosts.sort_unstable();
    hosts.dedup();
    let mut out = Allocated::default();
    let mut per_host: Vec<Vec<IpAddr>> = vec![Vec::new(); hosts.len()];
    for cidr in cidrs {
        // Who held what in this range before.
        let mut held: HashMap<u128, &str> = HashMap::new();
        for (h, addrs) in previous {
            for a in addrs {
                if let Some(off) = cidr.offset(a) {
                    held.insert(off, h.as_str());
                }
            }
        }
        let mut used: HashSet<u128> = HashSet::with_capacity(hosts.len());
        let mut slot: Vec<Option<u128>> = vec![None; hosts.len()];
        // Hosts keep what they held.
        for (i, h) in hosts.iter().enumerate() {
            let kept = previous.get(*h).and_then(|addrs| addrs.iter().find_map(|a| cidr.offset(a)));
            if let Some(off) = kept.filter(|o| used.insert(*o)) {
                slot[i] = Some(off);
            }
        }
        // New hosts, in sorted order: hash, then probe upwards.
        let usable = cidr.span() - 2;
        for (i, h) in hosts.iter().enumerate() {
            if slot[i].is_some() {
                continue;
            }
            let start = home(h, cidr);
            let mut off = start;
            let mut tries: u128 = 0;
            let free =
                |o: u128, used: &HashSet<u128>| !used.contains(&o) && held.get(&o).is_none_or(|owner| owner == h);
            while !free(off, &used) {
                tries += 1;
                if tries >= usable {
                    break;
                }
                off = if off == usable { 1 } else { off + 1 };
            }
            if tries >= usable {
                out.exhausted.push(h.to_string());
                continue;
            }
            used.insert(off);
            slot[i] = Some(off);
        }
        for (i, s) in slot.iter().enumerate() {
            if let Some(off) = s {
                per_host[i].push(cidr.addr(*off));
                if *off != home(hosts[i], cidr) {
                    out.collisions += 1;
                }
            }
        }
    }
    out.exhausted.sort();
    out.exhausted.dedup();
    for (h, addrs) in hosts.into_iter().zip(per_host) {
        if !addrs.is_empty() {
            out.addresses.insert(h.to_string(), addrs);
        }
    }
    out
}

/// What [`allocate`] returns when no host came or went: when `hosts` (sorted, without
/// duplicates) are exactly the hosts of `previous`, each holding one usable address of every
/// range (in range order) that no other host holds, every host keeps what it held and `allocate`
/// would return `previous` itself. Returns its collision count then, having allocated nothing:
/// a build after a change to one service's instances does not rebuild (and free) an allocation
/// of every host. `None`: call [`allocate`]. Without ranges `allocate` gives nothing to anyone,
/// so an empty `previous` is unchanged then.
pub fn unchanged(hosts: &[&str], cidrs: &[Cidr], previous: &Allocation) -> Option<usize> {
    if cidrs.is_empty() {
        return previous.is_empty().then_some(0);
    }
    if hosts.len() != previous.len() {
        return None;
    }
    let mut used: Vec<HashSet<u128>> = cidrs.iter().map(|_| HashSet::with_capacity(hosts.len())).collect();
    let mut collisions = 0;
    for (h, (held_by, addrs)) in hosts.iter().zip(previous) {
        if *h != held_by.as_str() || addrs.len() != cidrs.len() {
            return None;
        }
        for ((cidr, addr), used) in cidrs.iter().zip(addrs).zip(&mut used) {
            // The address `allocate` keeps for this range: the first one of the host's in it.
            let off = addrs.iter().find_map(|a| cidr.offset(a))?;
            if cidr.addr(off) != *addr || !used.insert(off) {
                return None;
            }
            if off != home(h, cidr) {
                collisions += 1;
            }
        }
    }
    Some(collisions)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
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
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(VipSettings::new(true, vec![cidr("241.0.0.0/8"), cidr("242.0.0.0/8")]).is_err());
        assert!(VipSettings::new(true, vec![cidr("241.0.0.0/8"), cidr("fd00:cafe::/64")]).is_ok());
    }

    #[test]
    fn a_full_range_says_who_got_nothing_and_never_uses_network_or_broadcast() {
        let c = cidr("241.0.0.0/30"); // two usable: .1 and .2
        let a = allocate(["a", "b", "c"], &[c], &Allocation::new());
        assert_eq!(a.addresses.len(), 2);
        assert_eq!(a.exhausted.len(), 1);
        for addrs in a.addresses.values() {
            assert!(["241.0.0.1", "241.0.0.2"].contains(&addrs[0].to_string().as_str()), "{addrs:?}");
        }
    }

    #[test]
    fn an_address_held_by_a_removed_host_is_not_reused_in_the_next_build() {
        // A tiny range forces collisions: the freed address of `a` must not go to the newcomer.
        let c = cidr("241.0.0.0/29"); // six usable
        let first = allocate(["a", "b"], &[c], &Allocation::new());
        let second = allocate(["b", "n1", "n2", "n3", "n4"], &[c], &first.addresses);
        let a_addr = first.addresses["a"][0];
        assert!(second.addresses.values().all(|v| v[0] != a_addr), "{second:?}");
        assert_eq!(second.addresses["b"], first.addresses["b"]);
        // One build later it is free again.
        let third = allocate(["b", "n1", "n2", "n3", "n4", "n5"], &[c], &second.addresses);
        assert_eq!(third.addresses.len(), 6);
    }

    #[test]
    fn dual_stack_gives_one_address_per_family() {
        let a = allocate(["x.ns"], &[cidr("241.0.0.0/8"), cidr("fd00:cafe::/64")], &Allocation::new());
        let v = &a.addresses["x.ns"];
        assert_eq!(v.len(), 2);
        assert!(v[0].is_ipv4() && v[1].is_ipv6());
    }

    #[test]
    fn unchanged_hosts_keep_the_previous_allocation_without_a_new_one() {
        let cs = [cidr("241.0.0.0/29"), cidr("fd00:cafe::/64")]; // six usable IPv4: collisions
        let first = allocate(["a", "b", "c", "d"], &cs, &Allocation::new());
        let hosts = ["a", "b", "c", "d"];
        assert_eq!(unchanged(&hosts, &cs, &first.addresses), Some(first.collisions));
        assert_eq!(allocate(hosts, &cs, &first.addresses), first);
        // A host more or less, another name, or other ranges: allocate again.
        assert_eq!(unchanged(&["a", "b", "c"], &cs, &first.addresses), None);
        assert_eq!(unchanged(&["a", "b", "c", "d", "e"], &cs, &first.addresses), None);
        assert_eq!(unchanged(&["a", "b", "c", "x"], &cs, &first.addresses), None);
        assert_eq!(unchanged(&hosts, &cs[..1], &first.addresses), None);
        assert_eq!(unchanged(&hosts, &[cidr("242.0.0.0/8"), cs[1]], &first.addresses), None);
        assert_eq!(unchanged(&hosts, &[], &first.addresses), None);
        // Without ranges nobody gets an address: an empty allocation is what `allocate` gives.
        assert_eq!(allocate(hosts.iter().copied(), &[], &first.addresses), Allocated::default());
        assert_eq!(unchanged(&hosts, &[], &Allocation::new()), Some(0));
        // Two hosts on one address (not an allocation `allocate` makes): allocate again.
        let mut shared = first.addresses.clone();
        let a = shared["a"].clone();
        shared.insert("b".into(), a);
        assert_eq!(unchanged(&hosts, &cs, &shared), None);
        assert_ne!(allocate(hosts, &cs, &shared).addresses, shared);
    }

    fn host_set() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set("[a-z]{1,6}\\.[a-z]{1,4}", 0..60).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        /// Unique, inside the range, independent of input order, and stable for existing hosts
        /// when others are added or removed. A /26 (62 usable addresses) makes collisions common.
        #[test]
        fn vips_are_unique_stable_and_order_independent(
            hosts in host_set(),
            extra in host_set(),
            remove_every in 2usize..5,
            seed in any::<u64>(),
        ) {
            let c = cidr("241.7.0.0/26");
            let fresh = allocate(hosts.iter().map(String::as_str), &[c], &Allocation::new());
            // Unique and in range.
            let mut seen = HashSet::new();
            for addrs in fresh.addresses.values() {
                prop_assert!(c.offset(&addrs[0]).is_some());
                prop_assert!(seen.insert(addrs[0]));
            }
            prop_assert_eq!(fresh.addresses.len() + fresh.exhausted.len(), hosts.len());
            // Input order does not matter.
            let mut shuffled = hosts.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left(seed as usize % n);
            shuffled.reverse();
            prop_assert_eq!(&allocate(shuffled.iter().map(String::as_str), &[c], &Allocation::new()), &fresh);
            // Others added and removed: every surviving host keeps its address.
            let survivors: Vec<&String> = hosts.iter().enumerate().filter(|(i, _)| i % remove_every != 0).map(|(_, h)| h).collect();
            let next_hosts: Vec<&str> = survivors.iter().map(|h| h.as_str()).chain(extra.iter().map(String::as_str)).collect();
            let next = allocate(next_hosts.iter().copied(), &[c], &fresh.addresses);
            for h in &survivors {
                if let Some(a) = fresh.addresses.get(*h) {
                    prop_assert_eq!(next.addresses.get(*h), Some(a));
                }
            }
            // Still unique, and no newcomer got an address a removed host held.
            let mut seen = HashSet::new();
            for (h, addrs) in &next.addresses {
                prop_assert!(seen.insert(addrs[0]));
                if let Some((owner, _)) = fresh.addresses.iter().find(|(_, v)| v[0] == addrs[0]) {
                    prop_assert_eq!(owner, h);
                }
            }
            // Replaying the same history on another replica gives the same result.
            let replica = allocate(next_hosts.iter().rev().copied(), &[c], &allocate(shuffled.iter().map(String::as_str), &[c], &Allocation::new()).addresses);
            prop_assert_eq!(replica, next);
        }

        /// `unchanged` answers only when `allocate` would return the previous allocation, and
        /// then with its collision count; it answers for every host set `allocate` served whole.
        #[test]
        fn unchanged_agrees_with_allocate(hosts in host_set(), extra in host_set(), drop_every in 2usize..5) {
            let c = cidr("241.7.0.0/27"); // 30 usable: some sets exhaust it
            let first = allocate(hosts.iter().map(String::as_str), &[c], &Allocation::new());
            let next: BTreeSet<&str> = hosts.iter().enumerate().filter(|(i, _)| i % drop_every != 0).map(|(_, h)| h.as_str()).chain(extra.iter().map(String::as_str)).collect();
            for (set, previous) in [(hosts.iter().map(String::as_str).collect::<BTreeSet<_>>(), &first.addresses), (next, &first.addresses)] {
                let set: Vec<&str> = set.into_iter().collect();
                let full = allocate(set.iter().copied(), &[c], previous);
                match unchanged(&set, &[c], previous) {
                    Some(collisions) => prop_assert_eq!(&full, &Allocated { addresses: previous.clone(), collisions, exhausted: Vec::new() }),
                    None => prop_assert!(full.addresses != *previous || set.is_empty() || !full.exhausted.is_empty() || set.len() != previous.len()),
                }
            }
            if first.exhausted.is_empty() && !hosts.is_empty() {
                let set: Vec<&str> = hosts.iter().map(String::as_str).collect();
                prop_assert_eq!(unchanged(&set, &[c], &first.addresses), Some(first.collisions));
            }
        }

        /// Without collisions the address depends on the host alone.
        #[test]
        fn in_a_large_range_a_host_gets_its_hash_address(hosts in host_set()) {
            let c = cidr(DEFAULT_CIDR);
            let a = allocate(hosts.iter().map(String::as_str), &[c], &Allocation::new());
            for h in &hosts {
                let alone = allocate([h.as_str()], &[c], &Allocation::new());
                if a.collisions == 0 {
                    prop_assert_eq!(&a.addresses[h], &alone.addresses[h]);
                }
            }
        }
    }
}
