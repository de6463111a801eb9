package istiod

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pilot/pkg/model"
	nds "istio.io/istio/pkg/dns/proto"
)

// The traffic scenario of the README walkthrough: ECS-style services on 8080 in an HTTP namespace.
// cart: two tasks on 8080, made HTTP by its Cloud Map service attribute; inventory: a TCP service
// on 9000 with two tasks. ECS's bookkeeping attributes are on every instance.
const trafficRegistry = `namespaces:
  - name: shop
    type: HTTP
    id: ns-shop000000000001
    services:
      - name: cart
        id: srv-cart00000000001
        createDate: "2025-01-01T00:00:00Z"
        attributes:
          cloudmap-mcp/protocol: HTTP
        instances:
%s
      - name: inventory
        id: srv-inventory000001
        createDate: "2025-01-01T00:00:00Z"
        instances:
%s
`

func ecsInstances(ips map[string]string, port string) string {
	var b strings.Builder
	keys := sortedKeys(ips)
	for i, ip := range keys {
		fmt.Fprintf(&b, `          - id: task-%d
            attributes:
              AWS_INSTANCE_IPV4: %s
              AWS_INSTANCE_PORT: "%s"
              AWS_INIT_HEALTH_STATUS: HEALTHY
              AVAILABILITY_ZONE: us-east-1a
              REGION: us-east-1
              ECS_CLUSTER_NAME: prod-cluster-with-a-long-name
              ECS_SERVICE_NAME: svc-%d
              ECS_TASK_DEFINITION_FAMILY: family-with-a-long-name-%d
              ECS_TASK_SET_EXTERNAL_ID: external-id-%d
              version: %s
`, i, ip, port, i, i, i, ips[ip])
	}
	return strings.TrimRight(b.String(), "\n")
}

var (
	cartTasks      = map[string]string{"10.1.0.10": "v1", "10.1.0.11": "v2"}
	inventoryTasks = map[string]string{"10.1.1.20": "v1", "10.1.1.21": "v1"}
)

// A DestinationRule with subsets on `version`, from istiod's file config source (fs://).
const cartDestinationRule = `apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: cart
  namespace: istio-system
spec:
  host: cart.shop
  subsets:
    - name: v1
      labels: {version: v1}
    - name: v2
      labels: {version: v2}
`

// The mapping file of the walkthrough: only the `version` label reaches istiod.
const labelAllowlist = `rules:
  - name: labels
    endpointLabels: {allow: [version]}
`

const ndsType = "type.googleapis.com/istio.networking.nds.v1.NameTable"

// firstResponse opens a stream to a server and returns its answer to one request for typeURL, sent as istiod's
// config client sends it.
func firstResponse(t *testing.T, grpcAddr, typeURL string) *discovery.DiscoveryResponse {
	t.Helper()
	stream := rawStream(t, grpcAddr, 30*time.Second)
	node := &core.Node{Id: "sidecar~10.1.1.1~istiod-0.istio-system~istio-system.svc.cluster.local",
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"GENERATOR": structpb.NewStringValue("api")}}}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serviceEntryBytes is the size of cloudmap-mcp's ServiceEntry response, as istiod receives it.
func serviceEntryBytes(t *testing.T, grpcAddr, typeURL string) int {
	t.Helper()
	r := firstResponse(t, grpcAddr, typeURL)
	if len(r.Resources) != 2 {
		t.Fatalf("%d ServiceEntries, want 2", len(r.Resources))
	}
	return proto.Size(r)
}

// nameTable is the last NDS name table the sidecar received.
func (s *sidecar) nameTable() (*nds.NameTable, error) {
	r := s.c.Received[ndsType]
	if r == nil {
		return nil, fmt.Errorf("no NDS response (received: %v)", sortedKeys(s.c.Received))
	}
	if len(r.Resources) != 1 {
		return nil, fmt.Errorf("NDS response with %d resources", len(r.Resources))
	}
	nt := &nds.NameTable{}
	if err := proto.Unmarshal(r.Resources[0].Value, nt); err != nil {
		return nil, err
	}
	return nt, nil
}

// TestIstiodTraffic proves, with real istiod, what the README walkthrough promises a sidecar with DNS capture:
// the HTTP-namespace name resolves (NDS) to the VIP cloudmap-mcp allocated, port 8080 overridden to HTTP by the
// service attribute is an HTTP route for the host (LDS/RDS), a TCP service has its own VIP:port listener, a
// DestinationRule subset on `version` selects the right endpoints (CDS/EDS), and the endpoint-label allowlist of
// the mapping file shrinks what istiod has to decode.
func TestIstiodTraffic(t *testing.T) {
	forEachIstiod(t, runTraffic)
}

func runTraffic(t *testing.T, rel istioRelease, bin string) {
	logs := logDir(t)
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.yaml")
	reg := fmt.Sprintf(trafficRegistry, ecsInstances(cartTasks, "8080"), ecsInstances(inventoryTasks, "9000"))
	if err := os.WriteFile(regPath, []byte(reg), 0o644); err != nil {
		t.Fatal(err)
	}
	mappingPath := filepath.Join(dir, "mapping.yaml")
	if err := os.WriteFile(mappingPath, []byte(labelAllowlist), 0o644); err != nil {
		t.Fatal(err)
	}

	// The bytes istiod decodes per push, with every ECS attribute as a label and with the allowlist.
	var full, allowed int
	step(t, "measure: ServiceEntry response bytes without and with the endpoint-label allowlist", func() {
		plain := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp-no-mapping.log"))
		plain.start()
		full = serviceEntryBytes(t, plain.grpcAddr, rel.SEType)
		plain.stop()
		srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp-allowlist.log"))
		srv.extraArgs = []string{"--mapping-file", mappingPath}
		srv.start()
		allowed = serviceEntryBytes(t, srv.grpcAddr, rel.SEType)
		srv.stop()
		t.Logf("BYTES istiod %s ServiceEntry response (2 services x 2 ECS tasks): %d bytes with every attribute as a label, %d with allow: [version] (%.0f%%)",
			rel.Version, full, allowed, 100*float64(allowed)/float64(full))
		if allowed >= full {
			t.Errorf("the allowlist did not shrink the response: %d >= %d bytes", allowed, full)
		}
	})

	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	srv.extraArgs = []string{"--mapping-file", mappingPath}
	step(t, "start cloudmap-mcp (registry + mapping file)", srv.start)

	drDir := filepath.Join(dir, "istio-config")
	if err := os.MkdirAll(drDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(drDir, "cart-dr.yaml"), []byte(cartDestinationRule), 0o644); err != nil {
		t.Fatal(err)
	}
	var d *istiod
	step(t, "start istiod (config sources: cloudmap-mcp and a file with the DestinationRule)", func() {
		mesh := fmt.Sprintf("configSources:\n- address: xds://%s\n- address: fs://%s\n", srv.grpcAddr, drDir)
		d = startIstiodMesh(t, rel, bin, mesh, filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
	})

	// The VIPs cloudmap-mcp gave the two services, as istiod holds them.
	vips := map[string]string{}
	step(t, "check: istiod holds both ServiceEntries with a VIP each", func() {
		err := eventually(20*time.Second, func() error {
			got, _, err := d.configz()
			if err != nil {
				return err
			}
			for _, host := range []string{"cart.shop", "inventory.shop"} {
				se := got[istioNamespace+"/cloudmap-"+host]
				if se == nil {
					return fmt.Errorf("no ServiceEntry for %s: %v", host, sortedKeys(got))
				}
				if len(se.Spec.Addresses) != 1 {
					return stopRetrying(fmt.Errorf("%s addresses %v, want one VIP", host, se.Spec.Addresses))
				}
				ip, err := netip.ParseAddr(se.Spec.Addresses[0])
				if err != nil || !netip.MustParsePrefix("240.0.0.0/4").Contains(ip) || netip.MustParsePrefix("240.240.0.0/16").Contains(ip) {
					return stopRetrying(fmt.Errorf("%s address %q is not a VIP in 240.0.0.0/4 outside 240.240.0.0/16", host, se.Spec.Addresses[0]))
				}
				vips[host] = ip.String()
			}
			if p := got[istioNamespace+"/cloudmap-cart.shop"].Spec.Ports; len(p) != 1 || p[0].Protocol != "HTTP" || p[0].Number != 8080 {
				return stopRetrying(fmt.Errorf("cart.shop ports %v, want 8080/HTTP from its service attribute", p))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%v\n--- cloudmap-mcp /debug/serviceentries:\n%s", err, srv.debugServiceEntries())
		}
		t.Logf("VIPs: %v", vips)
	})

	var px *sidecar
	step(t, "check: a DNS-capture sidecar's NDS name table resolves the HTTP-namespace hosts to their VIPs", func() {
		// DNS capture on, as the proxy metadata of deploy/istio's snippets sets it; istio-agent asks for NDS.
		px = connectSidecarWith(t, d.grpcAddr, model.NodeMetadata{ClusterID: "Kubernetes", Namespace: "default", DNSCapture: true}, ndsType)
		err := eventually(30*time.Second, func() error {
			nt, err := px.nameTable()
			if err != nil {
				return err
			}
			for host, vip := range vips {
				info := nt.Table[host]
				if info == nil {
					return fmt.Errorf("name table has no %s (%d names)", host, len(nt.Table))
				}
				if len(info.Ips) != 1 || info.Ips[0] != vip {
					return stopRetrying(fmt.Errorf("%s resolves to %v, want [%s]", host, info.Ips, vip))
				}
			}
			t.Logf("NDS: cart.shop -> %v, inventory.shop -> %v (%d names, %d bytes)", nt.Table["cart.shop"].Ips,
				nt.Table["inventory.shop"].Ips, len(nt.Table), proto.Size(nt))
			return nil
		})
		if err != nil {
			t.Fatalf("NDS: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 30))
		}
	})

	step(t, "check: LDS/RDS route cart.shop:8080 as HTTP; inventory has its own VIP:9000 TCP listener", func() {
		err := eventually(30*time.Second, func() error {
			if _, ok := px.c.GetHTTPListeners()["0.0.0.0_8080"]; !ok {
				return fmt.Errorf("no HTTP listener 0.0.0.0_8080 (HTTP: %v, TCP: %v)", sortedKeys(px.c.GetHTTPListeners()), sortedKeys(px.c.GetTCPListeners()))
			}
			rc := px.c.GetRoutes()["8080"]
			if rc == nil {
				return fmt.Errorf("no route configuration 8080 (routes: %v)", sortedKeys(px.c.GetRoutes()))
			}
			found := false
			for _, vh := range rc.VirtualHosts {
				if vh.Name != "cart.shop:8080" {
					continue
				}
				for _, dom := range vh.Domains {
					found = found || dom == "cart.shop"
				}
				cluster := vh.Routes[0].GetRoute().GetCluster()
				if cluster != "outbound|8080||cart.shop" {
					return stopRetrying(fmt.Errorf("virtual host cart.shop:8080 routes to %q", cluster))
				}
			}
			if !found {
				var names []string
				for _, vh := range rc.VirtualHosts {
					names = append(names, vh.Name)
				}
				return fmt.Errorf("route 8080 has no virtual host for cart.shop: %v", names)
			}
			tcp := vips["inventory.shop"] + "_9000"
			if _, ok := px.c.GetTCPListeners()[tcp]; !ok {
				return fmt.Errorf("no TCP listener %s (TCP: %v)", tcp, sortedKeys(px.c.GetTCPListeners()))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("LDS/RDS: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 30))
		}
	})

	step(t, "check: DestinationRule subsets on version select the right endpoints (CDS/EDS)", func() {
		err := eventually(30*time.Second, func() error {
			for subset, want := range map[string]string{"v1": "10.1.0.10:8080", "v2": "10.1.0.11:8080"} {
				cluster := "outbound|8080|" + subset + "|cart.shop"
				eps, ok := px.endpoints(cluster)
				if !ok {
					return fmt.Errorf("no EDS cluster %s (clusters: %v)", cluster, px.clusterNames())
				}
				got := sortedKeys(eps)
				if len(got) != 1 || got[0] != want {
					return stopRetrying(fmt.Errorf("%s endpoints %v, want [%s]", cluster, got, want))
				}
			}
			all, ok := px.endpoints("outbound|8080||cart.shop")
			if !ok || len(all) != 2 {
				return fmt.Errorf("outbound|8080||cart.shop endpoints %v, want both tasks", all)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("subsets: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 30))
		}
		names := px.clusterNames()
		sort.Strings(names)
		t.Logf("sidecar EDS clusters: %v", names)
	})
}
