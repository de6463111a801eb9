package istiod

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/model"
)

// A former App Mesh user's routing, kept as Kubernetes CRs (appmesh.k8s.aws/v1beta2): two virtual nodes found in
// Cloud Map by the `version` attribute, a virtual router with a gRPC route splitting 80/20 with retries and a
// timeout, and a virtual service named after the Cloud Map host. cloudmap-mcp serves the translation to istiod
// next to the ServiceEntries; nothing else configures istiod.
const appMeshGreeter = `apiVersion: appmesh.k8s.aws/v1beta2
kind: Mesh
metadata: {name: shop}
spec:
  namespaceSelector:
    matchLabels: {mesh: shop}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: greeter-blue, namespace: shop}
spec:
  awsName: greeter-blue
  meshRef: {name: shop}
  listeners:
    - portMapping: {port: %[1]d, protocol: grpc}
  serviceDiscovery:
    awsCloudMap:
      namespaceName: shop
      serviceName: greeter
      attributes:
        - {key: version, value: blue}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: greeter-green, namespace: shop}
spec:
  awsName: greeter-green
  meshRef: {name: shop}
  listeners:
    - portMapping: {port: %[1]d, protocol: grpc}
  serviceDiscovery:
    awsCloudMap:
      namespaceName: shop
      serviceName: greeter
      attributes:
        - {key: version, value: green}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: {name: greeter-router, namespace: shop}
spec:
  awsName: greeter-router
  meshRef: {name: shop}
  listeners:
    - portMapping: {port: %[1]d, protocol: grpc}
  routes:
    - name: canary
      grpcRoute:
        match: {serviceName: grpc.health.v1.Health}
        action:
          weightedTargets:
            - virtualNodeRef: {name: greeter-blue}
              weight: 80
            - virtualNodeRef: {name: greeter-green}
              weight: 20
        retryPolicy:
          grpcRetryEvents: [unavailable]
          maxRetries: 2
          perRetryTimeout: {unit: ms, value: 1000}
        timeout:
          perRequest: {unit: s, value: 3}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: front, namespace: shop}
spec:
  awsName: front
  meshRef: {name: shop}
  podSelector:
    matchLabels: {app: front}
  listeners:
    - portMapping: {port: 8080, protocol: http}
  backends:
    - virtualService:
        virtualServiceRef: {name: greeter}
  serviceDiscovery:
    dns: {hostname: front.shop.svc.cluster.local}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: {name: greeter, namespace: shop}
spec:
  awsName: greeter.shop
  meshRef: {name: shop}
  provider:
    virtualRouter:
      virtualRouterRef: {name: greeter-router}
`

// The Cloud Map side: ECS tasks without any protocol attribute (ECS registers none); the App Mesh listener's
// protocol is what makes the port GRPC. `ledger` is no virtual node's backend: a pod that App Mesh's `front`
// stands for does not get its configuration.
const appMeshRegistry = `namespaces:
  - name: shop
    type: HTTP
    id: ns-shop000000000001
    services:
      - name: greeter
        id: srv-greeter00000001
        createDate: "2025-01-01T00:00:00Z"
        instances:
%s
      - name: ledger
        id: srv-ledger000000001
        createDate: "2025-01-01T00:00:00Z"
        instances:
          - id: ledger-1
            attributes: {AWS_INSTANCE_IPV4: 127.0.0.12, AWS_INSTANCE_PORT: "%d"}
`

// TestIstiodAppMesh proves the App Mesh translation with real istiod: the VirtualService and DestinationRule are
// accepted, a sidecar's RDS has the weighted route to the subsets with App Mesh's retries and timeout, and
// proxyless gRPC RPCs follow the route's weights.
func TestIstiodAppMesh(t *testing.T) {
	forEachIstiod(t, runAppMesh)
}

func runAppMesh(t *testing.T, rel istioRelease, bin string) {
	logs := logDir(t)
	dir := t.TempDir()
	blue, green := task{"127.0.0.10", "blue"}, task{"127.0.0.11", "green"}
	port := commonPort(t, blue.ip, green.ip)
	regPath := filepath.Join(dir, "registry.yaml")
	if err := os.WriteFile(regPath, []byte(fmt.Sprintf(appMeshRegistry, taskInstances([]task{blue, green}, port), port)), 0o644); err != nil {
		t.Fatal(err)
	}
	meshPath := filepath.Join(dir, "appmesh.yaml")
	if err := os.WriteFile(meshPath, []byte(fmt.Sprintf(appMeshGreeter, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	backends := map[string]*backend{blue.ip: startBackend(t, blue.ip, port), green.ip: startBackend(t, green.ip, port)}

	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	srv.extraArgs = []string{"--appmesh-file", meshPath}
	step(t, "start cloudmap-mcp (registry file + App Mesh CRs)", srv.start)
	var d *istiod
	step(t, "start istiod (config source: cloudmap-mcp only)", func() {
		d = startIstiod(t, rel, bin, srv.grpcAddr, filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
	})
	step(t, "check: istiod holds the ServiceEntry (port GRPC), the VirtualService, the DestinationRule and front's Sidecar, and rejects nothing", func() {
		err := eventually(30*time.Second, func() error {
			got, other, err := d.configz()
			if err != nil {
				return err
			}
			se := got[istioNamespace+"/cloudmap-greeter.shop"]
			if se == nil {
				return fmt.Errorf("no ServiceEntry for greeter.shop: %v", sortedKeys(got))
			}
			if p := se.Spec.Ports; len(p) != 1 || p[0].Protocol != "GRPC" {
				return stopRetrying(fmt.Errorf("greeter.shop ports %v, want one GRPC port (from the App Mesh listener)", p))
			}
			var vs, dr, sc int
			for _, o := range other {
				vs += strings.Count(o, "/VirtualService ")
				dr += strings.Count(o, "/DestinationRule ")
				sc += strings.Count(o, "/Sidecar shop/appmesh-front")
			}
			if vs != 1 || dr != 1 || sc != 1 {
				return fmt.Errorf("istiod holds %d VirtualServices, %d DestinationRules and %d Sidecars shop/appmesh-front, want 1 of each: %v", vs, dr, sc, other)
			}
			t.Logf("istiod holds: %v", other)
			return nil
		})
		if err != nil {
			t.Fatalf("%v\n--- cloudmap-mcp /debug/appmesh:\n%s", err, debugView(srv, "/debug/appmesh"))
		}
		if r := d.rejections(); len(r) > 0 {
			t.Errorf("istiod rejected resources:\n%s", strings.Join(r, "\n"))
		}
	})
	step(t, "check: a sidecar's RDS routes greeter.shop to the two subsets 80/20 with App Mesh's retries and timeout", func() {
		px := connectSidecar(t, d.grpcAddr)
		err := eventually(30*time.Second, func() error {
			rc := px.c.GetRoutes()[fmt.Sprint(port)]
			if rc == nil {
				return fmt.Errorf("no route configuration %d (routes: %v)", port, sortedKeys(px.c.GetRoutes()))
			}
			for _, vh := range rc.VirtualHosts {
				if !strings.HasPrefix(vh.Name, "greeter.shop:") {
					continue
				}
				for _, r := range vh.Routes {
					wc := r.GetRoute().GetWeightedClusters()
					if wc == nil {
						continue
					}
					weights := map[string]uint32{}
					for _, c := range wc.Clusters {
						weights[c.Name] = c.GetWeight().GetValue()
					}
					want := map[string]uint32{
						fmt.Sprintf("outbound|%d|greeter-blue|greeter.shop", port):  80,
						fmt.Sprintf("outbound|%d|greeter-green|greeter.shop", port): 20,
					}
					if fmt.Sprint(weights) != fmt.Sprint(want) {
						return stopRetrying(fmt.Errorf("weighted clusters %v, want %v", weights, want))
					}
					rp := r.GetRoute().GetRetryPolicy()
					if rp.GetNumRetries().GetValue() != 2 || !strings.Contains(rp.GetRetryOn(), "unavailable") || rp.GetPerTryTimeout().AsDuration() != time.Second {
						return stopRetrying(fmt.Errorf("retry policy %v, want 2 retries on unavailable, 1s per try", rp))
					}
					if to := r.GetRoute().GetTimeout().AsDuration(); to != 3*time.Second {
						return stopRetrying(fmt.Errorf("route timeout %v, want 3s", to))
					}
					t.Logf("RDS %s: %v, retries %d on %q per try %v, timeout %v", vh.Name, weights, rp.GetNumRetries().GetValue(),
						rp.GetRetryOn(), rp.GetPerTryTimeout().AsDuration(), r.GetRoute().GetTimeout().AsDuration())
					return nil
				}
			}
			var names []string
			for _, vh := range rc.VirtualHosts {
				names = append(names, vh.Name)
			}
			return fmt.Errorf("route %d has no weighted route for greeter.shop (virtual hosts %v)", port, names)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	step(t, "check: front's backends scope its pods' sidecars: greeter.shop's clusters, not ledger.shop's", func() {
		clusters := func(px *sidecar) map[string]bool {
			out := map[string]bool{}
			for name := range px.c.GetClusters() {
				out[name] = true
			}
			for name := range px.c.GetEdsClusters() {
				out[name] = true
			}
			return out
		}
		greeter := fmt.Sprintf("outbound|%d||greeter.shop", port)
		ledger := fmt.Sprintf("outbound|%d||ledger.shop", port)
		// A pod of another workload in the namespace is not selected: it sees both services.
		other := connectSidecarWith(t, d.grpcAddr, model.NodeMetadata{ClusterID: "Kubernetes", Namespace: "shop", Labels: map[string]string{"app": "cart"}})
		if err := eventually(30*time.Second, func() error {
			if c := clusters(other); !c[greeter] || !c[ledger] {
				return fmt.Errorf("unselected pod: clusters %v, want %s and %s", sortedKeys(c), greeter, ledger)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		front := connectSidecarWith(t, d.grpcAddr, model.NodeMetadata{ClusterID: "Kubernetes", Namespace: "shop", Labels: map[string]string{"app": "front"}})
		if err := eventually(30*time.Second, func() error {
			c := clusters(front)
			if !c[greeter] {
				return fmt.Errorf("front: no %s in %v", greeter, sortedKeys(c))
			}
			if c[ledger] {
				return stopRetrying(fmt.Errorf("front: %s is outside its backends but configured: %v", ledger, sortedKeys(c)))
			}
			t.Logf("front's sidecar clusters: %v", sortedKeys(c))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
	step(t, "check: 600 proxyless gRPC RPCs follow the App Mesh route's 80/20 weights", func() {
		cc := proxylessClient(t, d.grpcAddr, fmt.Sprintf("xds:///greeter.shop:%d", port))
		if err := eventually(60*time.Second, func() error { _, err := call(cc, 5*time.Second); return err }); err != nil {
			t.Fatalf("no RPC got through: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 40))
		}
		const n = 600
		hits := map[string]int{}
		failed := 0
		for i := 0; i < n; i++ {
			addr, err := call(cc, 5*time.Second)
			if err != nil {
				failed++
				continue
			}
			hits[addr]++
		}
		share := float64(hits[backends[blue.ip].addr]) / n
		keys := sortedKeys(hits)
		sort.Strings(keys)
		t.Logf("SPLIT istiod %s (App Mesh grpcRoute 80/20): blue %.3f, hits %v, failed %d", rel.Version, share, hits, failed)
		if failed > 0 {
			t.Errorf("%d RPCs failed", failed)
		}
		if share < 0.72 || share > 0.88 {
			t.Errorf("blue share %.3f, want 0.80 +- 0.08 (hits %v)", share, hits)
		}
	})
}

// debugView returns one of the server's debug views, for failure messages.
func debugView(s *server, path string) string {
	_, body, err := httpGet("http://" + s.adminAddr + path)
	if err != nil {
		return err.Error()
	}
	return string(body)
}
