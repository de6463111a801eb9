//! `/debug/shards`: per shard (`--shards`), its gRPC address, how many ServiceEntries it serves,
//! their encoded size and version, and the ADS streams open on it.
use std::net::SocketAddr;

use bytes::Bytes;

use crate::cache::ResourceSnapshot;
use crate::xds::Clients;

#[derive(serde::Serialize)]
struct Shard {
    shard: usize,
    address: String,
    serviceentries: usize,
    bytes: usize,
    version: String,
    streams: usize,
}

/// The view's JSON body; `snap` is `None` before the first snapshot (entries then count 0).
pub fn render(snap: Option<&ResourceSnapshot>, addrs: &[SocketAddr], clients: &Clients) -> Bytes {
    let mut streams = vec![0usize; addrs.len()];
    for c in clients.iter() {
        if let Some(n) = streams.get_mut(c.value().shard) {
            *n += 1;
        }
    }
    let shards: Vec<Shard> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let body = snap.filter(|s| i < s.shard_count()).map(|s| s.shard(i));
            Shard {
                shard: i,
                address: a.to_string(),
                serviceentries: body.map_or(0, |b| b.names.len()),
                bytes: body.map_or(0, |b| b.resources_len),
                version: body.map(|b| b.version.clone()).unwrap_or_default(),
                streams: streams[i],
            }
        })
        .collect();
    super::json_bytes(&serde_json::json!({
        "count": addrs.len(),
        "serial": snap.map(|s| s.serial),
        "serviceentries": snap.map_or(0, |s| s.service_entries.names.len()),
        "shards": shards,
    }))
}
