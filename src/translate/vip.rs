//! Virtual IPs for ServiceEntries, so that Istio's DNS proxy answers their hosts and sidecars get
//! a listener per VIP and port, on every istiod version (docs/reaching-services.md, "The address
//! rule").
//!
//! Which entries get one ([`VipMode`], decided per service by `translate`): in `auto`, every entry
//! except a single STATIC endpoint of a service that is not made of tasks or pods ([`dynamic`]),
//! which is served at its own address.
//!
//! Which address ([`allocate`]): a pure function of the hosts that want one, each with its
//! service's creation date, and the ranges; nothing else (no previous allocation), so the same
//! snapshot gives the same addresses on every replica and after every restart:
//! - hosts are taken in a fixed order, the oldest service first (then by host name);
//! - each takes the address its hash points at or, when an older host has it, the next free one
//!   upwards (wrapping); a range that is full leaves the youngest hosts without an address.
//!
//! So a host's address moves only when an older host whose probe landed on the address it holds
//! (or on the run of taken addresses it probed past) comes or goes. Filling a range costs
//! O(n log n): the taken addresses are a set of intervals, so a probe jumps over a run of taken
//! addresses in one step instead of walking it.
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::model::{Instance, Timestamp};

/// One VIP range (`--vip-cidr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Istio's own allocator ranges; VIP ranges must not overlap them.
pub const ISTIO_RANGES: &[&str] = &["240.240.0.0/16", "2001:2::/48"];
/// Ranges a VIP range must not overlap: addresses that mean something else on every host.
pub const REFUSED_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network, holds the unspecified address"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, holds the instance metadata address 169.254.169.254"),
    ("224.0.0.0/4", "multicast"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("fd00:ec2::254/128", "the instance metadata address"),
];
/// Ranges reserved for no real use, where VIP ranges belong (others get a warning).
pub const RESERVED_RANGES: &[&str] = &["240.0.0.0/4", "fc00::/7"];
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
    #[cfg(test)]
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

    /// A warning when the range is not inside the reserved ranges meant for VIPs (240.0.0.0/4,
    /// fc00::/7): its addresses may be real ones somewhere (in the VPC, a peered network, the
    /// internet), which apps in the mesh could then not reach.
    pub fn warning(&self) -> Option<String> {
        let inside = RESERVED_RANGES.iter().any(|r| {
            let r = parse_plain(r).expect("valid");
            r.overlaps(self) && r.prefix <= self.prefix
        });
        (!inside).then(|| {
            format!(
                "--vip-cidr {self} is outside {} and {}: a real address in it (in the VPC, a peered network or the internet) cannot be reached by apps in the mesh once a host is given it",
                RESERVED_RANGES[0], RESERVED_RANGES[1]
            )
        })
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
        for (r, what) in REFUSED_RANGES {
            if c.overlaps(&parse_plain(r).expect("valid")) {
                return Err(format!(
                    "{s:?} overlaps {r} ({what}): an app resolving a host to such an address would not reach its sidecar's listener; use a range in {} or {}",
                    RESERVED_RANGES[0], RESERVED_RANGES[1]
                ));
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

/// VIP settings: the mode of services no rule or override sets (`--allocate-vips`: `auto`, or
/// `never` when false), and the ranges (at most one per address family; each host gets one
/// address from each).
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

    /// The mode of a service no rule or override sets.
    pub fn default_mode(&self) -> VipMode {
        if self.enabled {
            VipMode::Auto
        } else {
            VipMode::Never
        }
    }
}

/// Whether a service's entry gets a VIP (mapping rule field `vip`, service attribute
/// `cloudmap-mcp/vip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VipMode {
    /// A VIP unless the entry is one STATIC endpoint of a service that is not made of tasks or
    /// pods ([`dynamic`]): that one is served at its own address. `true` means this too.
    #[default]
    Auto,
    /// A VIP whatever the endpoints.
    Always,
    /// Never a VIP: a single STATIC endpoint is served at its address, anything else without
    /// one. `false` means this too.
    Never,
}

impl FromStr for VipMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "true" => Ok(VipMode::Auto),
            "always" => Ok(VipMode::Always),
            "never" | "false" => Ok(VipMode::Never),
            _ => Err(format!("{s:?} is not one of auto, always, never (true: auto, false: never)")),
        }
    }
}

impl<'de> Deserialize<'de> for VipMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VipMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("auto, always or never (true: auto, false: never)")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<VipMode, E> {
                Ok(if b { VipMode::Auto } else { VipMode::Never })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<VipMode, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Instance attributes that mark an instance as an ECS task or a Kubernetes pod: what ECS service
/// discovery registers for every task (SPEC 3; users cannot add or remove them) and what the App
/// Mesh controller adds to every pod it registers (APPMESH.md).
pub const TASK_OR_POD_ATTRIBUTES: &[&str] = &[
    "ECS_CLUSTER_NAME",
    "ECS_SERVICE_NAME",
    "ECS_TASK_DEFINITION_FAMILY",
    "ECS_TASK_SET_EXTERNAL_ID",
    "k8s.io/pod",
    "k8s.io/namespace",
];
/// Attribute key prefix the App Mesh controller adds (`appmesh.k8s.aws/mesh`, `.../virtualNode`).
pub const TASK_OR_POD_PREFIX: &str = "appmesh.k8s.aws/";

/// Whether a service is made of tasks or pods: one of its instances (whatever its health) carries
/// one of [`TASK_OR_POD_ATTRIBUTES`] or a key under [`TASK_OR_POD_PREFIX`]. Instance ids are not
/// used: ECS uses the task id and the App Mesh controller the pod's IP, neither of which tells a
/// task from a hand-registered instance.
pub fn dynamic(instances: &[Instance]) -> bool {
    instances.iter().any(|i| {
        TASK_OR_POD_ATTRIBUTES.iter().any(|k| i.attributes.contains_key(*k))
            || i.attributes.range(TASK_OR_POD_PREFIX.to_string()..).next().is_some_and(|(k, _)| k.starts_with(TASK_OR_POD_PREFIX))
    })
}

/// Host → its addresses (one per range, in range order).
pub type Allocation = BTreeMap<String, Vec<IpAddr>>;

/// The result of [`allocate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocated {
    pub addresses: Allocation,
    /// Hosts (per range) whose address is not their hash's address (an older host had it).
    pub collisions: usize,
    /// Hosts that got no address from some range because it is full (the youngest).
    pub exhausted: Vec<String>,
}

fn home(host: &str, cidr: &Cidr) -> u128 {
    let h = xxhash_rust::xxh3::xxh3_128(host.as_bytes());
    let usable = cidr.span() - 2;
    1 + h % usable
}

/// The taken offsets of one range (usable offsets are `1..=usable`), as disjoint, non-adjacent
/// intervals: start → end (inclusive).
struct Taken {
    usable: u128,
    count: u128,
    runs: BTreeMap<u128, u128>,
}

impl Taken {
    fn new(usable: u128) -> Self {
        Taken { usable, count: 0, runs: BTreeMap::new() }
    }

    /// The first free offset at or after `from`, wrapping; `None` when the range is full.
    /// At most two interval look-ups: the end of a run is followed by a free offset (runs do not
    /// touch), unless the run ends the range, and then the run holding offset 1 does not also end
    /// it (the range would be full).
    fn first_free(&self, from: u128) -> Option<u128> {
        if self.count >= self.usable {
            return None;
        }
        let mut off = from;
        loop {
            match self.runs.range(..=off).next_back() {
                Some((_, &end)) if end >= off => {
                    if end >= self.usable {
                        off = 1;
                    } else {
                        return Some(end + 1);
                    }
                }
                _ => return Some(off),
            }
        }
    }

    fn take(&mut self, off: u128) {
        let before = self.runs.range(..off).next_back().filter(|(_, &e)| e + 1 == off).map(|(&s, _)| s);
        let after = off.checked_add(1).and_then(|n| self.runs.remove(&n));
        let start = before.unwrap_or(off);
        self.runs.insert(start, after.unwrap_or(off));
        self.count += 1;
    }
}

/// Allocates an address from each range to each host (see the module docs). `hosts` are the hosts
/// that want a VIP, each with its service's creation date, in any order; a host given twice takes
/// its oldest date.
pub fn allocate<'a>(hosts: impl IntoIterator<Item = (Timestamp, &'a str)>, cidrs: &[Cidr]) -> Allocated {
    let mut hosts: Vec<(Timestamp, &str)> = hosts.into_iter().collect();
    hosts.sort_unstable();
    let mut seen = HashSet::with_capacity(hosts.len());
    hosts.retain(|(_, h)| seen.insert(*h));
    drop(seen);
    let mut out = Allocated::default();
    let mut per_host: Vec<Vec<IpAddr>> = vec![Vec::new(); hosts.len()];
    let mut exhausted = Vec::new();
    for cidr in cidrs {
        let mut taken = Taken::new(cidr.span() - 2);
        for (i, (_, h)) in hosts.iter().enumerate() {
            let start = home(h, cidr);
            match taken.first_free(start) {
                Some(off) => {
                    taken.take(off);
                    per_host[i].push(cidr.addr(off));
                    if off != start {
                        out.collisions += 1;
                    }
                }
                None => exhausted.push(*h),
            }
        }
    }
    exhausted.sort_unstable();
    exhausted.dedup();
    out.exhausted = exhausted.into_iter().map(str::to_string).collect();
    for ((_, h), addrs) in hosts.into_iter().zip(per_host) {
        if !addrs.is_empty() {
            out.addresses.insert(h.to_string(), addrs);
        }
    }
    out
}

#[cfg(test)]
#[path = "vip_tests.rs"]
mod tests;
