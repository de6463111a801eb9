package istiod

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tlsSAN is the name istiod is told to expect in cloudmap-mcp's certificate (its in-cluster Service name).
const tlsSAN = "cloudmap-mcp." + istioNamespace + ".svc"

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"cloudmap-mcp conformance"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issueServer returns PEM certificate and key for a server with the given DNS and IP SANs.
func (ca *testCA) issueServer(t *testing.T, dns []string, ips []net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano() + 1),
		Subject:      pkix.Name{CommonName: dns[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     dns,
		IPAddresses:  ips,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// tlsMesh is a mesh config whose only config source is cloudmap-mcp over TLS (SIMPLE), verified with caPEM.
func tlsMesh(xdsAddr string, caPEM []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "configSources:\n- address: xds://%s\n  tlsSettings:\n    mode: SIMPLE\n    caCertificates: |\n", xdsAddr)
	for _, l := range strings.Split(strings.TrimRight(string(caPEM), "\n"), "\n") {
		fmt.Fprintf(&b, "      %s\n", l)
	}
	fmt.Fprintf(&b, "    subjectAltNames:\n    - %s\n    sni: %s\n", tlsSAN, tlsSAN)
	return b.String()
}

// tlsFailureLine is istiod's log line of a failed TLS handshake with the config source, e.g. (1.31, exiting):
// `failed to create discovery service: error initializing config controller: MCP: failed running rpc error:
// code = Unavailable desc = connection error: desc = "transport: authentication handshake failed: tls: failed to
// verify certificate: x509: certificate signed by unknown authority"`.
var tlsFailureLine = regexp.MustCompile(`(?m)^.*(authentication handshake failed|x509: ).*$`)

// TestIstiodTLS runs istiod (>= 1.26: configSources[].tlsSettings) against cloudmap-mcp serving gRPC over TLS:
// with the right CA istiod syncs our ServiceEntries; with another CA it must not get any.
func TestIstiodTLS(t *testing.T) {
	var rel istioRelease
	for _, r := range selectedReleases(t) {
		if r.Version == "1.31" {
			rel = r
		}
	}
	if rel.Version == "" {
		t.Skip("needs istiod 1.31 (ISTIOD_VERSIONS does not select it)")
	}
	if os.Getenv("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY") == "1" {
		t.Skip("build only")
	}
	var bin string
	step(t, "build pilot-discovery (cached after the first run)", func() { bin = pilotDiscovery(t, rel) })

	logs := logDir(t)
	dir := t.TempDir()
	ca := newTestCA(t, "cloudmap-mcp test CA")
	certPEM, keyPEM := ca.issueServer(t, []string{tlsSAN}, []net.IP{net.IPv4(127, 0, 0, 1)})
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	reg := exampleRegistry(t)
	regPath := filepath.Join(dir, "registry.yaml")
	reg.write(t, regPath)
	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	srv.extraArgs = []string{"--tls-cert-file", certPath, "--tls-key-file", keyPath}
	step(t, "start cloudmap-mcp with --tls-cert-file/--tls-key-file", func() {
		srv.start()
		// The gRPC port really speaks TLS with our certificate.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.certPEM)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", srv.grpcAddr,
			&tls.Config{RootCAs: pool, ServerName: tlsSAN, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("TLS handshake with cloudmap-mcp: %v", err)
		}
		st := c.ConnectionState()
		_ = c.Close()
		t.Logf("cloudmap-mcp TLS: version %x, ALPN %q, leaf SANs %v", st.Version, st.NegotiatedProtocol, st.PeerCertificates[0].DNSNames)
	})

	step(t, "istiod with the right CA: starts, synced, configz holds our ServiceEntries", func() {
		d := startIstiodMesh(t, rel, bin, tlsMesh(srv.grpcAddr, ca.certPEM), filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
		if m := receivedLine.FindAllStringSubmatch(d.proc.log(), -1); len(m) == 0 {
			t.Errorf("istiod logged no adsc 'Received' line")
		}
		got := d.waitConfigz(t, reg, 20*time.Second, "over TLS")
		t.Logf("istiod %s over TLS holds %d ServiceEntries: %s", rel.Version, len(got), strings.Join(sortedKeys(got), ", "))
		if r := d.rejections(); len(r) > 0 {
			t.Errorf("istiod rejected resources:\n%s", strings.Join(r, "\n"))
		}
		d.proc.stop(5 * time.Second)
	})

	step(t, "istiod with a wrong CA: fails the TLS handshake, gets no ServiceEntry", func() {
		wrong := newTestCA(t, "unrelated CA")
		d := startIstiodMesh(t, rel, bin, tlsMesh(srv.grpcAddr, wrong.certPEM), filepath.Join(logs, "istiod-wrong-ca.log"))
		const bound = 20 * time.Second
		deadline := time.Now().Add(bound)
		var failure string
		for time.Now().Before(deadline) {
			if got, _, err := d.configz(); err == nil && len(got) > 0 {
				t.Fatalf("istiod with a wrong CA got %d ServiceEntries: %v", len(got), sortedKeys(got))
			}
			if failure == "" {
				failure = tlsFailureLine.FindString(d.proc.log())
			}
			if d.proc.exited() {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		log := d.proc.log()
		if failure == "" {
			failure = tlsFailureLine.FindString(log)
		}
		if failure == "" {
			t.Errorf("istiod log shows no TLS failure within %v\n--- istiod log tail:\n%s", bound, tail(d.proc.logPath, 40))
		} else {
			t.Logf("istiod TLS failure: %s", strings.TrimSpace(failure))
			if !strings.Contains(failure, "certificate signed by unknown authority") {
				t.Errorf("istiod's TLS failure is not an unknown-authority one: %s", failure)
			}
		}
		ready := syncLine.MatchString(log) && tcpOpen(d.grpcAddr)
		switch {
		case d.proc.exited():
			t.Logf("istiod exited (%v): never became ready", d.proc.err)
		case ready:
			t.Errorf("istiod with a wrong CA finished starting (it never got the config source)")
		default:
			t.Logf("istiod still running, not ready after %v", bound)
		}
		if got, _, err := d.configz(); err == nil && len(got) > 0 {
			t.Errorf("istiod with a wrong CA holds ServiceEntries: %v", sortedKeys(got))
		}
	})
}
