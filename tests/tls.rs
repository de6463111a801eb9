//! TLS on the gRPC listener: a tonic client and grpcurl verify the server as istiod's
//! `tlsSettings: {mode: SIMPLE, caCertificates, subjectAltNames}` does; certificates rotate without a
//! restart; optional and required client certificates.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const SAN: &str = "cloudmap-mcp.istio-system.svc";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `sans`.
    fn leaf(&self, sans: &[&str]) -> (String, String) {
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    write_atomic(&p, text);
    p
}

async fn channel(addr: std::net::SocketAddr, ca: &str, client: Option<(&str, &str)>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(SAN);
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

/// Whether a full istiod handshake works over a fresh TLS connection.
async fn handshake_ok(addr: std::net::SocketAddr, ca: &str, client: Option<(&str, &str)>) -> bool {
    let Ok(ch) = channel(addr, ca, client).await else { return false };
    let mut client = cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(cloudmap_mcp::proto::DiscoveryRequest {
        type_url: "networking.istio.io/v1/ServiceEntry".into(),
        node: Some(istiod_node()),
        response_nonce: timestamp_nonce(),
        ..Default::default()
    })
    .await
    .unwrap();
    let Ok(resp) = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
        return false;
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), resp.into_inner().message()).await, Ok(Ok(Some(r))) if r.resources.len() == 3)
}

/// The server on `reg` with TLS from `cert` and `key`, plus `extra` flags.
fn start_tls(reg: &Path, cert: &Path, key: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--registry-file", reg.to_str().unwrap(), "--tls-cert-file", cert.to_str().unwrap()];
    args.extend(["--tls-key-file", key.to_str().unwrap()]);
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn registry(dir: &Path) -> PathBuf {
    write(dir, "registry.yaml", &example_registry())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tls_like_istiod_and_rotation_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("ca one");
    let (cert, key) = ca1.leaf(&[SAN]);
    let cert_path = write(dir.path(), "tls.crt", &cert);
    let key_path = write(dir.path(), "tls.key", &key);
    let reg = registry(dir.path());
    let server = start_tls(&reg, &cert_path, &key_path, &["--tls-reload-interval", "200ms"]);

    // istiod's script over TLS, verifying the server against the CA and the SAN.
    let mut ads = AdsStream::open(channel(server.grpc, &ca1.pem(), None).await.unwrap()).await;
    let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
    assert_eq!(service_entries(&got["networking.istio.io/v1/ServiceEntry"]).len(), 3);

    // Plaintext clients get nothing.
    let plain = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await;
    if let Ok(ch) = plain {
        let mut c = cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(ch);
        assert!(c.stream_aggregated_resources(tokio_stream::empty()).await.is_err());
    }
    // A client trusting another CA fails the handshake.
    let other = Ca::new("other");
    assert!(!handshake_ok(server.grpc, &other.pem(), None).await);

    // Rotate to a certificate from a new CA, as cert-manager would: new connections use it, the open stream lives on.
    let ca2 = Ca::new("ca two");
    let (cert2, key2) = ca2.leaf(&[SAN]);
    write(dir.path(), "tls.key", &key2);
    write(dir.path(), "tls.crt", &cert2);
    assert!(server.wait_log("TLS certificate reloaded", Duration::from_secs(10)), "{}", server.logs());
    let mut ok = false;
    for _ in 0..50 {
        if handshake_ok(server.grpc, &ca2.pem(), None).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "new certificate in use");
    assert!(!handshake_ok(server.grpc, &ca1.pem(), None).await, "old certificate retired");
    // The stream opened before the rotation is still served.
    write_atomic(&reg, &example_registry().replace("52.192.72.89", "52.192.72.99"));
    let r = ads.recv(Duration::from_secs(10)).await.expect("old stream still gets pushes");
    assert_eq!(r.type_url, "networking.istio.io/v1/ServiceEntry");

    // A broken rotation keeps the current certificate.
    write(dir.path(), "tls.crt", "not a certificate");
    assert!(server.wait_log("keeping the previous certificate", Duration::from_secs(10)), "{}", server.logs());
    assert!(handshake_ok(server.grpc, &ca2.pem(), None).await);

    // grpcurl over TLS, as a person debugging would.
    if let Some(grpcurl) = grpcurl_bin() {
        let ca_path = write(dir.path(), "ca.pem", &ca2.pem());
        let out = std::process::Command::new(grpcurl)
            .args(["-cacert", ca_path.to_str().unwrap(), "-servername", SAN, &server.grpc.to_string(), "grpc.health.v1.Health/Check"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("SERVING"), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_optional_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let (cert, key) = server_ca.leaf(&[SAN]);
    let (ccert, ckey) = client_ca.leaf(&["debug-client"]);
    let (bad_cert, bad_key) = Ca::new("rogue").leaf(&["rogue"]);
    let files = [
        write(dir.path(), "tls.crt", &cert),
        write(dir.path(), "tls.key", &key),
        write(dir.path(), "client-ca.pem", &client_ca.pem()),
    ];
    let reg = registry(dir.path());
    let start = |mode: &str| {
        ServerProcess::start(&[
            "--registry-file",
            reg.to_str().unwrap(),
            "--tls-cert-file",
            files[0].to_str().unwrap(),
            "--tls-key-file",
            files[1].to_str().unwrap(),
            "--tls-client-ca-file",
            files[2].to_str().unwrap(),
            "--tls-client-auth",
            mode,
        ])
    };
    let optional = start("optional");
    assert!(handshake_ok(optional.grpc, &server_ca.pem(), None).await, "istiod sends no client certificate");
    assert!(handshake_ok(optional.grpc, &server_ca.pem(), Some((&ccert, &ckey))).await);
    assert!(!handshake_ok(optional.grpc, &server_ca.pem(), Some((&bad_cert, &bad_key))).await, "a presented certificate must verify");
    drop(optional);

    let required = start("required");
    assert!(!handshake_ok(required.grpc, &server_ca.pem(), None).await);
    assert!(handshake_ok(required.grpc, &server_ca.pem(), Some((&ccert, &ckey))).await);
    let (code, metrics) = http_get(required.admin, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("cloudmap_mcp_tls_handshake_errors_total"), "{metrics}");
}

#[test]
fn bad_tls_files_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path());
    let junk = write(dir.path(), "junk.pem", "junk");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--registry-file", reg.to_str().unwrap(), "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--tls-cert-file", junk.to_str().unwrap(), "--tls-key-file", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.pem: no PEM certificate found"), "{err}");
    // A key without a certificate is a usage error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudmap-mcp"))
        .args(["serve", "--registry-file", reg.to_str().unwrap(), "--tls-key-file", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert-file"));
}

/// `--shards 3` with TLS: every shard port speaks TLS with the same certificate, answers istiod's
/// script, and refuses plaintext; together they serve the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_port_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.leaf(&[SAN]);
    let (cert_path, key_path) = (write(dir.path(), "tls.crt", &cert), write(dir.path(), "tls.key", &key));
    let reg = registry(dir.path());
    let server = start_tls(&reg, &cert_path, &key_path, &["--shards", "3"]);
    assert_eq!(server.grpc_shards.len(), 3, "{}", server.logs());
    let mut served = 0;
    for addr in &server.grpc_shards {
        let mut ads = AdsStream::open(channel(*addr, &ca.pem(), None).await.unwrap()).await;
        let got = ads.istiod_handshake(ISTIOD_130_KINDS).await;
        served += service_entries(&got["networking.istio.io/v1/ServiceEntry"]).len();
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
        if let Ok(ch) = plain {
            let mut c = cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(ch);
            assert!(c.stream_aggregated_resources(tokio_stream::empty()).await.is_err(), "plaintext accepted on {addr}");
        }
    }
    assert_eq!(served, 3, "the three services, each on one port");
}
