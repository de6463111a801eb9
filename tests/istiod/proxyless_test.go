package istiod

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
)

// Real RPCs through istiod: grpc-go's xDS client is Istio's proxyless gRPC data plane (node metadata
// GENERATOR=grpc, istiod's `grpc` generator). It dials xds:///<host>:<port>, gets LDS/RDS/CDS/EDS from the real
// istiod that cloudmap-mcp feeds, and sends each RPC to the backend istiod routed it to. The backends are gRPC
// servers (the standard health service) on loopback addresses 127.0.0.x, registered as ECS tasks in the registry
// file; which backend answered is the RPC's peer address.

// A Cloud Map HTTP namespace `shop` with two gRPC services made GRPC by their service attribute:
// greeter (blue and green tasks, split 80/20 by a VirtualService over DestinationRule subsets) and orders (an ECS
// service going through a rolling deployment). ledger is a TCP service that goes through the same deployment:
// its sidecar listener is named after its address.
const proxylessRegistry = `namespaces:
  - name: shop
    type: HTTP
    id: ns-shop000000000001
    services:
      - name: greeter
        id: srv-greeter00000001
        createDate: "2025-01-01T00:00:00Z"
        attributes:
          cloudmap-mcp/protocol: GRPC
        instances:
%s
      - name: orders
        id: srv-orders000000001
        createDate: "2025-01-02T00:00:00Z"
        attributes:
          cloudmap-mcp/protocol: GRPC
        instances:
%s
      - name: ledger
        id: srv-ledger000000001
        createDate: "2025-01-03T00:00:00Z"
        instances:
%s
`

// The routing a team would write: subsets on the version attribute and an 80/20 split (fs:// config source).
const proxylessRouting = `apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: greeter
  namespace: istio-system
spec:
  host: greeter.shop
  subsets:
    - name: blue
      labels: {version: blue}
    - name: green
      labels: {version: green}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: greeter
  namespace: istio-system
spec:
  hosts: [greeter.shop]
  http:
    - route:
        - destination: {host: greeter.shop, subset: blue}
          weight: 80
        - destination: {host: greeter.shop, subset: green}
          weight: 20
`

// task is one ECS task: its address and its version attribute.
type task struct{ ip, version string }

func taskInstances(tasks []task, port int) string {
	var b strings.Builder
	for i, tk := range tasks {
		fmt.Fprintf(&b, `          - id: task-%s
            attributes:
              AWS_INSTANCE_IPV4: %s
              AWS_INSTANCE_PORT: "%d"
              AWS_INIT_HEALTH_STATUS: HEALTHY
              AVAILABILITY_ZONE: us-east-1a
              REGION: us-east-1
              ECS_CLUSTER_NAME: prod
              ECS_SERVICE_NAME: svc-%d
              ECS_TASK_DEFINITION_FAMILY: family
              version: %s
`, strings.ReplaceAll(tk.ip, ".", "-"), tk.ip, port, i, tk.version)
	}
	return strings.TrimRight(b.String(), "\n")
}

// backend is a gRPC server on one loopback address.
type backend struct {
	srv  *grpc.Server
	addr string
}

func startBackend(t *testing.T, ip string, port int) *backend {
	lis, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
	if err != nil {
		t.Fatalf("backend %s:%d: %v", ip, port, err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	b := &backend{srv: srv, addr: lis.Addr().String()}
	t.Cleanup(b.srv.Stop)
	return b
}

// commonPort is a port free on every given loopback address (the tasks of a service share their port).
func commonPort(t *testing.T, ips ...string) int {
	for try := 0; try < 50; try++ {
		port := freePort(t)
		ok := true
		for _, ip := range ips {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

// proxylessClient is a gRPC channel through grpc-go's xDS resolver, bootstrapped at istiod's plaintext xDS port
// the way Istio's proxyless bootstrap does (GENERATOR=grpc).
func proxylessClient(t *testing.T, istiodAddr, target string) *grpc.ClientConn {
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {
    "id": "sidecar~127.0.0.1~grpc-client-0.default~default.svc.cluster.local",
    "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "127.0.0.1"}
  }
}`, istiodAddr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatalf("xDS resolver: %v", err)
	}
	cc, err := grpc.NewClient(target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", target, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// call sends one RPC and returns the address of the backend that answered.
func call(cc *grpc.ClientConn, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	if p.Addr == nil {
		return "", fmt.Errorf("no peer address")
	}
	return p.Addr.String(), nil
}

// rpcLoop sends RPCs back to back until stopped, recording when each backend last answered and every failure.
type rpcLoop struct {
	mu       sync.Mutex
	last     map[string]time.Time
	count    map[string]int
	failures []string
	total    atomic.Int64
	stop     chan struct{}
	done     chan struct{}
}

func startRPCLoop(cc *grpc.ClientConn) *rpcLoop {
	l := &rpcLoop{last: map[string]time.Time{}, count: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			addr, err := call(cc, 5*time.Second)
			now := time.Now()
			l.mu.Lock()
			if err != nil {
				l.failures = append(l.failures, fmt.Sprintf("%s: %v", now.Format("15:04:05.000"), err))
			} else {
				l.last[addr] = now
				l.count[addr]++
			}
			l.mu.Unlock()
			l.total.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return l
}

func (l *rpcLoop) halt() {
	close(l.stop)
	<-l.done
}

func (l *rpcLoop) lastOn(addr string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[addr]
}

func (l *rpcLoop) counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for k, v := range l.count {
		out[k] = v
	}
	return out
}

// deregistration is the time from each removal to the last RPC the removed instance answered.
type deregistration []time.Duration

// measureDeregistration runs 5 rounds of add (until the instance at target gets RPCs), then remove (until it
// has had none for quiet), with loop sending RPCs throughout.
func measureDeregistration(t *testing.T, loop *rpcLoop, target string, quiet time.Duration, add, remove func()) deregistration {
	var samples deregistration
	for round := 0; round < 5; round++ {
		add()
		added := time.Now()
		if err := eventually(60*time.Second, func() error {
			if !loop.lastOn(target).After(added) {
				return fmt.Errorf("the registered instance gets no RPC")
			}
			return nil
		}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		time.Sleep(200 * time.Millisecond)
		remove()
		removed := time.Now()
		if err := eventually(60*time.Second, func() error {
			if time.Since(loop.lastOn(target)) < quiet {
				return fmt.Errorf("the removed instance still gets RPCs")
			}
			return nil
		}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		samples = append(samples, loop.lastOn(target).Sub(removed))
	}
	return samples
}

// report prints the DEREG line (BENCHMARKS.md quotes it) and fails the test for any failed RPC.
func (d deregistration) report(t *testing.T, what string, loop *rpcLoop) {
	sorted := append(deregistration(nil), d...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	loop.mu.Lock()
	failures := append([]string(nil), loop.failures...)
	loop.mu.Unlock()
	t.Logf("DEREG %s -> last RPC on the removed instance: p50 %v, max %v, samples %v; RPCs failed: %d",
		what, sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond), []time.Duration(d), len(failures))
	if len(failures) > 0 {
		t.Errorf("%d RPCs failed while an instance was removed and added again, e.g. %s", len(failures), failures[0])
	}
}

// TestIstiodProxyless sends real RPCs through istiod with the proxyless gRPC data plane.
func TestIstiodProxyless(t *testing.T) {
	forEachIstiod(t, runProxyless)
}

func runProxyless(t *testing.T, rel istioRelease, bin string) {
	logs := logDir(t)
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.yaml")

	greeter := []task{{"127.0.0.2", "blue"}, {"127.0.0.3", "green"}}
	oldTask, newTask := task{"127.0.0.4", "r1"}, task{"127.0.0.5", "r2"}
	ledgerOld, ledgerNew := task{"127.0.0.6", "r1"}, task{"127.0.0.7", "r2"}
	port := commonPort(t, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")
	write := func(orders, ledger []task) {
		reg := fmt.Sprintf(proxylessRegistry, taskInstances(greeter, port), taskInstances(orders, port), taskInstances(ledger, port))
		tmp := regPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(reg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, regPath); err != nil {
			t.Fatal(err)
		}
	}
	write([]task{oldTask}, []task{ledgerOld})
	backends := map[string]*backend{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		backends[ip] = startBackend(t, ip, port)
	}

	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	step(t, "start cloudmap-mcp (registry file)", srv.start)
	cfgDir := filepath.Join(dir, "istio-config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "greeter.yaml"), []byte(proxylessRouting), 0o644); err != nil {
		t.Fatal(err)
	}
	var d *istiod
	step(t, "start istiod (config sources: cloudmap-mcp and a file with the VirtualService and DestinationRule)", func() {
		mesh := fmt.Sprintf("configSources:\n- address: xds://%s\n- address: fs://%s\n", srv.grpcAddr, cfgDir)
		d = startIstiodMesh(t, rel, bin, mesh, filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
	})

	// The weighted split, measured over real RPCs.
	step(t, "check: 600 RPCs to xds:///greeter.shop follow the 80/20 VirtualService over Cloud Map subsets", func() {
		cc := proxylessClient(t, d.grpcAddr, fmt.Sprintf("xds:///greeter.shop:%d", port))
		// Until istiod's routes reached the client (first RPCs may wait for LDS/RDS/CDS/EDS).
		if err := eventually(60*time.Second, func() error { _, err := call(cc, 5*time.Second); return err }); err != nil {
			t.Fatalf("no RPC got through: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 40))
		}
		const n = 600
		hits := map[string]int{}
		var failed []string
		for i := 0; i < n; i++ {
			addr, err := call(cc, 5*time.Second)
			if err != nil {
				failed = append(failed, err.Error())
				continue
			}
			hits[addr]++
		}
		blue := float64(hits[backends["127.0.0.2"].addr]) / n
		t.Logf("SPLIT istiod %s: %d RPCs, blue %d (%.3f), green %d, other %v, failed %d", rel.Version, n,
			hits[backends["127.0.0.2"].addr], blue, hits[backends["127.0.0.3"].addr], hits, len(failed))
		if len(failed) > 0 {
			t.Errorf("%d RPCs failed, e.g. %s", len(failed), failed[0])
		}
		if blue < 0.72 || blue > 0.88 {
			t.Errorf("blue share %.3f, want 0.80 +- 0.08 (hits: %v)", blue, hits)
		}
		if hits[backends["127.0.0.2"].addr]+hits[backends["127.0.0.3"].addr] != n-len(failed) {
			t.Errorf("RPCs reached a backend outside the greeter subsets: %v", hits)
		}
	})

	// An ECS rolling deployment of a one-task service under continuous RPCs: the new task is registered, the old
	// one deregistered, and (as ECS does: deregister, then stop after the stop timeout) stopped only afterwards.
	px := connectSidecar(t, d.grpcAddr)
	addressOf := func(host string) (string, error) {
		got, _, err := d.configz()
		if err != nil {
			return "", err
		}
		se := got[istioNamespace+"/cloudmap-"+host]
		if se == nil {
			return "", fmt.Errorf("istiod holds no ServiceEntry for %s", host)
		}
		return strings.Join(se.Spec.Addresses, ","), nil
	}
	// waitState waits until istiod holds the orders endpoints and returns orders' and ledger's addresses and
	// ledger's TCP listener on the sidecar.
	waitState := func(what string, orders []task) (string, string, string) {
		var ordersAddr, ledgerAddr, listener string
		err := eventually(30*time.Second, func() error {
			eps, ok := px.endpoints(fmt.Sprintf("outbound|%d||orders.shop", port))
			if !ok || len(eps) != len(orders) {
				return fmt.Errorf("orders endpoints %v, want %d", sortedKeys(eps), len(orders))
			}
			for _, tk := range orders {
				if _, ok := eps[fmt.Sprintf("%s:%d", tk.ip, port)]; !ok {
					return fmt.Errorf("orders endpoints %v lack %s", sortedKeys(eps), tk.ip)
				}
			}
			var err error
			if ordersAddr, err = addressOf("orders.shop"); err != nil {
				return err
			}
			if ledgerAddr, err = addressOf("ledger.shop"); err != nil {
				return err
			}
			var tcp []string
			for name := range px.c.GetTCPListeners() {
				if strings.HasSuffix(name, fmt.Sprintf("_%d", port)) && !strings.HasPrefix(name, "0.0.0.0") {
					tcp = append(tcp, name)
				}
			}
			sort.Strings(tcp)
			if len(tcp) != 1 {
				return fmt.Errorf("sidecar TCP listeners on port %d: %v, want ledger's one", port, tcp)
			}
			listener = tcp[0]
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v\n--- cloudmap-mcp /debug/serviceentries:\n%s", what, err, srv.debugServiceEntries())
		}
		t.Logf("%s: orders.shop addresses [%s], ledger.shop addresses [%s], sidecar listener %s", what, ordersAddr, ledgerAddr, listener)
		return ordersAddr, ledgerAddr, listener
	}

	step(t, "check: an ECS rolling deployment (1 -> 2 -> 1 tasks, new IP) under continuous RPCs loses none and moves no address", func() {
		cc := proxylessClient(t, d.grpcAddr, fmt.Sprintf("xds:///orders.shop:%d", port))
		if err := eventually(60*time.Second, func() error { _, err := call(cc, 5*time.Second); return err }); err != nil {
			t.Fatalf("no RPC to orders got through: %v", err)
		}
		o1, l1, li1 := waitState("1 task (old)", []task{oldTask})
		loop := startRPCLoop(cc)
		time.Sleep(300 * time.Millisecond)
		write([]task{oldTask, newTask}, []task{ledgerOld, ledgerNew})
		o2, l2, li2 := waitState("2 tasks (old + new)", []task{oldTask, newTask})
		if err := eventually(20*time.Second, func() error {
			if loop.lastOn(backends[newTask.ip].addr).IsZero() {
				return fmt.Errorf("no RPC reached the new task yet")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		write([]task{newTask}, []task{ledgerNew})
		removed := time.Now()
		o3, l3, li3 := waitState("1 task (new)", []task{newTask})
		// ECS stops the old task after its stop timeout; here once no RPC has gone to it for a second.
		if err := eventually(30*time.Second, func() error {
			if since := time.Since(loop.lastOn(backends[oldTask.ip].addr)); since < time.Second {
				return fmt.Errorf("the old task still got an RPC %v ago", since)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		backends[oldTask.ip].srv.GracefulStop()
		time.Sleep(500 * time.Millisecond)
		loop.halt()
		lastOld := loop.lastOn(backends[oldTask.ip].addr)
		t.Logf("DEPLOY istiod %s: %d RPCs, per backend %v, failed %d; last RPC on the old task %v after its deregistration",
			rel.Version, loop.total.Load(), loop.counts(), len(loop.failures), lastOld.Sub(removed).Round(time.Millisecond))
		if len(loop.failures) > 0 {
			t.Errorf("%d RPCs failed during the deployment, e.g. %s", len(loop.failures), loop.failures[0])
		}
		if o1 != o2 || o2 != o3 {
			t.Errorf("orders.shop addresses moved during the deployment: [%s] -> [%s] -> [%s]", o1, o2, o3)
		}
		if l1 != l2 || l2 != l3 || li1 != li2 || li2 != li3 {
			t.Errorf("ledger.shop addresses / sidecar listener moved: [%s] %s -> [%s] %s -> [%s] %s", l1, li1, l2, li2, l3, li3)
		}
	})

	// Deregistration: how long after the registry edit the last RPC lands on the removed instance (the server,
	// istiod's debounce and the client's xDS update together). Printed, not asserted: BENCHMARKS.md has the figures.
	step(t, "measure: registry edit -> last RPC on the deregistered instance (5 rounds)", func() {
		extra := task{"127.0.0.4", "r1"}
		backends[extra.ip] = startBackend(t, extra.ip, port)
		cc := proxylessClient(t, d.grpcAddr, fmt.Sprintf("xds:///orders.shop:%d", port))
		loop := startRPCLoop(cc)
		defer loop.halt()
		dereg := measureDeregistration(t, loop, backends[extra.ip].addr, 2*time.Second,
			func() { write([]task{newTask, extra}, []task{ledgerNew}) },
			func() { write([]task{newTask}, []task{ledgerNew}) })
		dereg.report(t, fmt.Sprintf("istiod %s (registry file): edit", rel.Version), loop)
	})
}
