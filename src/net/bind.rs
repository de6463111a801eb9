//! Listening on consecutive ports: the gRPC ports of `--shards N` are `--grpc-addr`'s port + 0..N-1.
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// How many first ports are tried when the system picks it (port 0) and a following one is taken.
const ATTEMPTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{count} consecutive ports from {addr} go past port 65535: lower the port or the shard count")]
    PastLastPort { addr: SocketAddr, count: usize },
    #[error("found no {count} consecutive free ports on {ip} in {ATTEMPTS} attempts (port 0 picks the first one): give a port")]
    NoFreeRange { ip: std::net::IpAddr, count: usize },
}

/// Binds `count` listeners on `addr`'s port and the `count - 1` ports after it, in order. With
/// port 0 the system picks the first port and the next ones must be free too; if one is taken,
/// all are released and another first port is tried.
pub async fn consecutive(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, BindError> {
    let count = count.max(1);
    if addr.port() != 0 {
        if usize::from(addr.port()) + count - 1 > usize::from(u16::MAX) {
            return Err(BindError::PastLastPort { addr, count });
        }
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let a = SocketAddr::new(addr.ip(), addr.port() + i as u16);
            out.push(TcpListener::bind(a).await.map_err(|source| BindError::Io { addr: a, source })?);
        }
        return Ok(out);
    }
    for _ in 0..ATTEMPTS {
        let first = TcpListener::bind(addr).await.map_err(|source| BindError::Io { addr, source })?;
        let port = first.local_addr().map_err(|source| BindError::Io { addr, source })?.port();
        if usize::from(port) + count - 1 > usize::from(u16::MAX) {
            continue;
        }
        let mut out = vec![first];
        for i in 1..count {
            match TcpListener::bind(SocketAddr::new(addr.ip(), port + i as u16)).await {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        if out.len() == count {
            return Ok(out);
        }
    }
    Err(BindError::NoFreeRange { ip: addr.ip(), count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_gives_consecutive_ports() {
        let ls = consecutive("127.0.0.1:0".parse().unwrap(), 4).await.unwrap();
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 4);
        for (i, p) in ports.iter().enumerate() {
            assert_eq!(*p, ports[0] + i as u16, "{ports:?}");
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = consecutive(SocketAddr::from(([127, 0, 0, 1], port)), 2).await.unwrap_err();
        assert!(err.to_string().contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
        let err = consecutive(SocketAddr::from(([127, 0, 0, 1], 65534)), 3).await.unwrap_err();
        assert!(matches!(err, BindError::PastLastPort { .. }), "{err}");
    }
}
