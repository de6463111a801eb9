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
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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

/// A certificate chain, key or CA bundle larger than this is refused (public CA bundles are
/// a few hundred KB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads one of the TLS files: a regular file only (a FIFO in its place would block the reload
/// check for good), at most [`MAX_FILE_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::util::fs::read_regular(path, MAX_FILE_BYTES).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
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
        h.update(&crate::util::fs::read_regular(p, MAX_FILE_BYTES).unwrap_or_default());
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

/// The TLS handshake of the gRPC listener (a [`crate::net::Handshake`]), with the certificate files
/// checked every `reload_interval`: a changed, valid set replaces the configuration for new
/// connections, an invalid one is logged and the old one kept. The reload task ends when `stop`
/// turns true. Failed handshakes are counted in `handshake_errors` (the listener logs them at debug).
#[derive(Clone)]
pub struct TlsHandshake {
    acceptor: Arc<RwLock<TlsAcceptor>>,
    handshake_errors: Counter,
}

impl TlsHandshake {
    pub fn reloading(
        files: TlsFiles,
        initial: Arc<ServerConfig>,
        reload_interval: Duration,
        handshake_errors: Counter,
        mut stop: watch::Receiver<bool>,
    ) -> TlsHandshake {
        let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(initial)));
        let shared = acceptor.clone();
        tokio::spawn(async move {
            let mut seen = fingerprint(&files);
            let mut tick = tokio::time::interval(reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = crate::util::until_true(&mut stop) => return,
                    _ = tick.tick() => {}
                }
                let now = fingerprint(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&files) {
                    Ok(cfg) => {
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(cfg);
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the previous certificate")
                    }
                }
            }
        });
        TlsHandshake { acceptor, handshake_errors }
    }
}

impl crate::net::Handshake for TlsHandshake {
    type Io = TlsStream<TcpStream>;

    fn handshake(&self, tcp: TcpStream, _peer: std::net::SocketAddr) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send {
        let acceptor = self.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone();
        let errors = self.handshake_errors.clone();
        async move {
            let r = acceptor.accept(tcp).await;
            if r.is_err() {
                errors.inc();
            }
            r
        }
    }
}
