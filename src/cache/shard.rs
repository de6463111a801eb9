//! Shards (`--shards N`): the served ServiceEntries split into N disjoint sets, one per gRPC port.
//!
//! istiod keeps one store per config source, and every response replaces the whole store of its
//! type (SPEC section 1): served as N sources, a change re-sends and makes istiod decode only the
//! shard that holds it. A ServiceEntry's shard is a stable hash of its resource name
//! (`namespace/name`) modulo N, and depends on nothing else: it is the same on every replica and
//! after every restart, and adding or removing other services moves nothing. VIPs, host collisions
//! and validation are decided on the whole snapshot first; the split only partitions its result.
//!
//! A shard whose entries (names and versions) did not change keeps its [`EncodedType`] (the same
//! `Arc`, so the same version): the streams of that shard send nothing.
use std::sync::Arc;

use bytes::Bytes;

use super::{EncodedType, ResourceCache, ResourceSnapshot};

/// Seed of the shard hash. Changing it would move services between shards, which istiod sees as
/// a delete and an add: it is part of the protocol, never change it.
const SEED: u64 = 0x636c_6f75_646d_6170;

/// The shard (0..`shards`) of the ServiceEntry named `resource_name` (`namespace/name`).
pub fn shard_of(resource_name: &str, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(resource_name.as_bytes(), SEED) % shards.max(1) as u64) as usize
}

/// Splits every build's ServiceEntries into shards, reusing the shards that did not change.
#[derive(Debug)]
pub(super) struct Sharding {
    count: usize,
    /// The last input and its split: the same input (a build that changed nothing) gets the same shards.
    last: Option<(Arc<EncodedType>, Vec<Arc<EncodedType>>)>,
}

impl Sharding {
    pub(super) fn new(count: usize) -> Self {
        Sharding { count: count.max(1), last: None }
    }

    /// The shards of `all`; empty with one shard (the whole set is then the only shard).
    pub(super) fn split(&mut self, all: &Arc<EncodedType>) -> Vec<Arc<EncodedType>> {
        if self.count == 1 {
            return Vec::new();
        }
        if let Some((input, out)) = &self.last {
            if Arc::ptr_eq(input, all) {
                return out.clone();
            }
        }
        let prev = self.last.take().map(|(_, out)| out);
        let out = split(all, self.count, prev.as_deref());
        self.last = Some((all.clone(), out.clone()));
        out
    }
}

impl ResourceCache {
    /// Serves the ServiceEntries as `shards` disjoint shards (see the module doc); 1: one set, as
    /// without sharding.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.sharding = Sharding::new(shards);
        self
    }
}

/// Splits `all` into `count` shards by [`shard_of`]; a shard equal to the same shard of `prev`
/// is that one (same `Arc`, same version).
pub fn split(all: &EncodedType, count: usize, prev: Option<&[Arc<EncodedType>]>) -> Vec<Arc<EncodedType>> {
    type Part = (Vec<Bytes>, Vec<(Arc<str>, Arc<str>)>);
    let mut parts: Vec<Part> = (0..count).map(|_| Default::default()).collect();
    for (resource, nv) in all.resources.iter().zip(&all.names) {
        let (resources, names) = &mut parts[shard_of(&nv.0, count)];
        resources.push(resource.clone());
        names.push(nv.clone());
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, (resources, names))| match prev.and_then(|p| p.get(i)) {
            Some(old) if same_entries(&old.names, &names) => old.clone(),
            _ => Arc::new(EncodedType::new(resources, names)),
        })
        .collect()
}

/// Same names with the same versions (the version is a hash of the encoded entry).
fn same_entries(a: &[(Arc<str>, Arc<str>)], b: &[(Arc<str>, Arc<str>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (Arc::ptr_eq(&x.0, &y.0) || x.0 == y.0) && (Arc::ptr_eq(&x.1, &y.1) || x.1 == y.1)
        })
}

/// The shards whose ServiceEntries differ between `prev` and `next` (all of them without `prev`
/// or when the shard count differs).
pub fn changed(prev: Option<&ResourceSnapshot>, next: &ResourceSnapshot) -> Vec<usize> {
    (0..next.shard_count())
        .filter(|&i| match prev {
            Some(p) if p.shard_count() == next.shard_count() => p.shard(i).version != next.shard(i).version,
            _ => true,
        })
        .collect()
}

/// A `--server-address` that is not `HOST:PORT`, or whose shard ports go past 65535.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not HOST:PORT")]
    NotHostPort(String),
    #[error("{shards} ports from {port} go past port 65535")]
    PastLastPort { port: u16, shards: usize },
}

/// istiod's `meshConfig` with one `xds://` config source per shard of the server at `address`
/// (`HOST:PORT` of shard 0), and `k8s://` (without it istiod drops its Kubernetes config).
pub fn istiod_config_sources(address: &str, shards: usize) -> Result<String, AddressError> {
    let bad = || AddressError::NotHostPort(address.to_string());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let shards = shards.max(1);
    if usize::from(port) + shards - 1 > usize::from(u16::MAX) {
        return Err(AddressError::PastLastPort { port, shards });
    }
    let mut out = format!(
        "# istiod meshConfig for cloudmap-mcp with --shards {shards}: one config source per shard port, and k8s://.\n\
         # With TLS, give every xds:// entry the same tlsSettings.\n\
         meshConfig:\n  configSources:\n"
    );
    for i in 0..shards {
        out.push_str(&format!("    - address: xds://{host}:{}\n", usize::from(port) + i));
    }
    out.push_str("    - address: k8s://\n");
    Ok(out)
}

#[cfg(test)]
mod tests;
