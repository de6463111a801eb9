//! TLS for the gRPC listener, with certificates reloaded from disk when they change (as cert-manager
//! rotates them) and optional verification of client certificates.
//!
//! istiod (1.26+, `tlsSettings: {mode: SIMPLE}`) verifies the server and never presents a client
//! certificate, so client certificates are `optional` by default: a client without one is accepted, a
//! client with one must chain to `--tls-client-ca-file`. `required` refuses clients without one
//! (istiod then cannot connect: use it only for listeners other clients use).
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Whether clients must present a certificate (only with a client CA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Accept clients without a certificate (istiod); verify any certificate presented.
    #[default]
    Optional,
    /// Refuse clients without a valid certificate.
    Required,
}

/// The PEM files of a TLS listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found: {message}")]
    NoKey { path: PathBuf, message: String },
    #[error("{path}: bad CA certificate: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// What the files hold now, for change detection.
fn fingerprint(files: &TlsFiles) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()].into_iter().flatten() {
        h.update(&std::fs::read(p).unwrap_or_default());
        h.update(&[0xff]);
    }
    h.digest()
}

/// Builds a rustls server config (ALPN h2) from the files.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert, &read(&files.cert)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| TlsError::NoKey { path: files.key.clone(), message: e.to_string() })?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, &read(ca)?)? {
                roots.add(c).map_err(|e| TlsError::ClientCa { path: ca.clone(), message: e.to_string() })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match files.client_auth {
                ClientAuth::Optional => v.allow_unauthenticated(),
                ClientAuth::Required => v,
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::ClientCa { path: ca.clone(), message: e.to_string() })?)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections on `listener`, completes TLS handshakes (at most `handshake_timeout` each)
/// and yields the TLS streams. The files are checked every `reload_interval`; a changed, valid set
/// replaces the configuration for new connections, an invalid one is logged and the old one kept.
/// Ends when `stop` turns true.
pub fn incoming(
    listener: TcpListener,
    files: TlsFiles,
    initial: Arc<ServerConfig>,
    reload_interval: Duration,
    handshake_errors: Counter,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(initial)));
    tokio::spawn(async move {
        let mut seen = fingerprint(&files);
        let mut tick = tokio::time::interval(reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = crate::util::until_true(&mut stop) => return,
                _ = tick.tick() => {
                    let now = fingerprint(&files);
                    if now != seen {
                        seen = now;
                        match load(&files) {
                            Ok(cfg) => {
                                *acceptor.write().expect("acceptor lock") = TlsAcceptor::from(cfg);
                                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                            }
                            Err(e) => tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the previous certificate"),
                        }
                    }
                }
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.read().expect("acceptor lock").clone();
                    let tx = tx.clone();
                    let errors = handshake_errors.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => { let _ = tx.send(Ok(tls)).await; }
                            Ok(Err(e)) => {
                                errors.inc();
                                tracing::info!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                errors.inc();
                                tracing::info!(%peer, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
