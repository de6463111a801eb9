package istiod

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// moto is the Cloud Map emulator (moto_server from the suite's venv), spoken to with the AWS JSON protocol the
// way the SDK does (moto checks no signature; the credential scope names the service).
type moto struct {
	endpoint string
	proc     *process
}

// startMoto runs moto_server ($MOTO_SERVER, else <repo>/.venv/bin/moto_server) on a free loopback port. Without
// it the test is skipped, unless CLOUDMAP_MCP_REQUIRE_TOOLS=1 (the suite) makes that a failure.
func startMoto(t *testing.T, logPath string) *moto {
	bin := os.Getenv("MOTO_SERVER")
	if bin == "" {
		bin = filepath.Join(repoRoot(), ".venv", "bin", "moto_server")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CLOUDMAP_MCP_REQUIRE_TOOLS") == "1" {
			t.Fatalf("moto_server not found at %s (scripts/test-all.sh installs it in .venv)", bin)
		}
		t.Skipf("moto_server not found at %s", bin)
	}
	port := freePort(t)
	m := &moto{endpoint: fmt.Sprintf("http://127.0.0.1:%d", port)}
	m.proc = startProcess(t, "moto", logPath, filepath.Dir(logPath), nil, bin, "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	t.Cleanup(func() { m.proc.stop(5 * time.Second) })
	if err := eventually(30*time.Second, func() error {
		if m.proc.exited() {
			return stopRetrying(fmt.Errorf("moto_server exited: %v", m.proc.err))
		}
		if !tcpOpen(fmt.Sprintf("127.0.0.1:%d", port)) {
			return fmt.Errorf("moto not listening yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, tail(logPath, 20))
	}
	return m
}

// call runs one Cloud Map operation and decodes its JSON answer.
func (m *moto) call(t *testing.T, op string, in map[string]any) map[string]any {
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest(http.MethodPost, m.endpoint+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "Route53AutoNaming_v20170314."+op)
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/servicediscovery/aws4_request, SignedHeaders=host, Signature=0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("moto %s: %v", op, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("moto %s: %d %s", op, resp.StatusCode, out)
	}
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("moto %s: %v: %s", op, err, out)
	}
	return v
}

func (m *moto) registerTask(t *testing.T, serviceID string, tk task, port int) {
	m.call(t, "RegisterInstance", map[string]any{
		"ServiceId":  serviceID,
		"InstanceId": "task-" + tk.version,
		"Attributes": map[string]string{
			"AWS_INSTANCE_IPV4":          tk.ip,
			"AWS_INSTANCE_PORT":          fmt.Sprint(port),
			"AWS_INIT_HEALTH_STATUS":     "HEALTHY",
			"AVAILABILITY_ZONE":          "us-east-1a",
			"REGION":                     "us-east-1",
			"ECS_CLUSTER_NAME":           "prod",
			"ECS_SERVICE_NAME":           "orders",
			"ECS_TASK_DEFINITION_FAMILY": "orders",
		},
	})
}

// TestIstiodDeregistrationCloudMap measures, on the Cloud Map path (the poller against moto), the time from
// DeregisterInstance to the last RPC a proxyless gRPC client sends to that instance, with istiod in between.
func TestIstiodDeregistrationCloudMap(t *testing.T) {
	forEachIstiod(t, runDeregistrationCloudMap)
}

// The poller's revision poll interval in this test (the default is 5s; it bounds how soon a change is seen).
const motoRevisionPoll = "500ms"

func runDeregistrationCloudMap(t *testing.T, rel istioRelease, bin string) {
	logs := logDir(t)
	m := startMoto(t, filepath.Join(logs, "moto.log"))
	var serviceID string
	keep, gone := task{"127.0.0.8", "keep"}, task{"127.0.0.9", "gone"}
	port := commonPort(t, keep.ip, gone.ip)
	step(t, "set up Cloud Map in moto: HTTP namespace shop, service orders (GRPC by service attribute), two ECS tasks", func() {
		m.call(t, "CreateHttpNamespace", map[string]any{"Name": "shop"})
		var nsID string
		for _, ns := range m.call(t, "ListNamespaces", map[string]any{})["Namespaces"].([]any) {
			if n := ns.(map[string]any); n["Name"] == "shop" {
				nsID = n["Id"].(string)
			}
		}
		if nsID == "" {
			t.Fatal("moto lists no namespace shop")
		}
		svc := m.call(t, "CreateService", map[string]any{"Name": "orders", "NamespaceId": nsID})
		serviceID = svc["Service"].(map[string]any)["Id"].(string)
		m.call(t, "UpdateServiceAttributes", map[string]any{"ServiceId": serviceID,
			"Attributes": map[string]string{"cloudmap-mcp/protocol": "GRPC"}})
		m.registerTask(t, serviceID, keep, port)
		m.registerTask(t, serviceID, gone, port)
	})
	backends := map[string]*backend{keep.ip: startBackend(t, keep.ip, port), gone.ip: startBackend(t, gone.ip, port)}

	srv := newServer(t, "", filepath.Join(logs, "cloudmap-mcp.log"))
	srv.sourceArgs = []string{"--cloudmap", "--aws-region", "us-east-1", "--aws-endpoint-url", m.endpoint,
		"--revision-poll-interval", motoRevisionPoll}
	step(t, "start cloudmap-mcp (Cloud Map poller against moto)", srv.start)
	var d *istiod
	step(t, "start istiod (config source: cloudmap-mcp)", func() {
		d = startIstiod(t, rel, bin, srv.grpcAddr, filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
	})
	step(t, "measure: DeregisterInstance -> last RPC on that instance (5 rounds)", func() {
		cc := proxylessClient(t, d.grpcAddr, fmt.Sprintf("xds:///orders.shop:%d", port))
		if err := eventually(60*time.Second, func() error { _, err := call(cc, 5*time.Second); return err }); err != nil {
			t.Fatalf("no RPC to orders got through: %v\n--- cloudmap-mcp /debug/serviceentries:\n%s", err, srv.debugServiceEntries())
		}
		loop := startRPCLoop(cc)
		defer loop.halt()
		first := true
		dereg := measureDeregistration(t, loop, backends[gone.ip].addr, 3*time.Second,
			func() {
				if !first {
					m.registerTask(t, serviceID, gone, port)
				}
				first = false
			},
			func() {
				m.call(t, "DeregisterInstance", map[string]any{"ServiceId": serviceID, "InstanceId": "task-" + gone.version})
			})
		dereg.report(t, fmt.Sprintf("istiod %s (Cloud Map poller, moto, --revision-poll-interval %s): DeregisterInstance", rel.Version, motoRevisionPoll), loop)
	})
}
