package istiod

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	networking "istio.io/api/networking/v1alpha3"

	"istio.io/istio/pilot/pkg/config/memory"
	"istio.io/istio/pkg/adsc"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/gvk"
	"istio.io/istio/pkg/keepalive"
	"istio.io/istio/pkg/model"
)

// responseLog records every DiscoveryResponse the adsc client gets.
type responseLog struct {
	mu        sync.Mutex
	byType    map[string]int
	responses []*discovery.DiscoveryResponse
}

func (r *responseLog) HandleResponse(_ *adsc.ADSC, resp *discovery.DiscoveryResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byType == nil {
		r.byType = map[string]int{}
	}
	r.byType[resp.TypeUrl]++
	r.responses = append(r.responses, resp)
}

func (r *responseLog) count(typeURL string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byType[typeURL]
}

func (r *responseLog) types() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.byType {
		out[k] = v
	}
	return out
}

// storeServiceEntries reads the ServiceEntries out of istiod's in-memory config store.
func storeServiceEntries(store *memory.Controller) map[string]*gotSE {
	out := map[string]*gotSE{}
	for _, c := range store.List(gvk.ServiceEntry, "") {
		spec, _ := c.Spec.(*networking.ServiceEntry)
		out[c.Namespace+"/"+c.Name] = &gotSE{
			Namespace:  c.Namespace,
			Name:       c.Name,
			Version:    c.ResourceVersion,
			CreateTime: c.CreationTimestamp,
			Labels:     c.Labels,
			Spec:       spec,
		}
	}
	return out
}

// TestADSC runs Istio's own config-source client (pkg/adsc), configured exactly as istiod configures it for an
// xds:// config source (pilot/pkg/bootstrap/configcontroller.go), against cloudmap-mcp.
func TestADSC(t *testing.T) {
	if os.Getenv("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY") == "1" {
		t.Skip("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY=1")
	}
	logs := logDir(t)
	dir := t.TempDir()
	reg := exampleRegistry(t)
	regPath := filepath.Join(dir, "registry.yaml")
	reg.write(t, regPath)

	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	step(t, "start cloudmap-mcp (until /readyz 200)", srv.start)

	var (
		store  *memory.Controller
		client *adsc.ADSC
		rec    = &responseLog{}
		stop   = make(chan struct{})
	)
	t.Cleanup(func() {
		close(stop)
		if client != nil {
			client.Close()
		}
	})
	initial := adsc.ConfigInitialRequests()

	step(t, "adsc connect and sync (all kinds answered)", func() {
		var err error
		client, err = adsc.New(srv.grpcAddr, &adsc.ADSConfig{
			InitialDiscoveryRequests: initial,
			ResponseHandler:          rec,
			Config: adsc.Config{
				Namespace: istioNamespace,
				Workload:  "istiod-conformance-0",
				Meta:      model.NodeMetadata{Generator: "api"}.ToStruct(),
				GrpcOpts: []grpc.DialOption{
					keepalive.DefaultOption().ConvertToClientOption(),
					grpc.WithTransportCredentials(insecure.NewCredentials()),
				},
			},
		})
		if err != nil {
			t.Fatalf("adsc.New: %v", err)
		}
		store = memory.NewController(memory.Make(collections.Pilot))
		store.RegisterHasSyncedHandler(client.HasSynced)
		client.Store = store
		go store.Run(stop)
		if err := client.Run(); err != nil {
			t.Fatalf("adsc.Run: %v", err)
		}
		if err := eventually(20*time.Second, func() error {
			if !store.HasSynced() {
				return fmt.Errorf("store not synced; responses so far by type: %v", rec.types())
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\n--- server log tail:\n%s", err, tail(srv.logPath, 30))
		}
	})

	step(t, "check: every requested kind answered with its own type URL", func() {
		var kinds []string
		for _, r := range initial {
			kinds = append(kinds, r.TypeUrl)
		}
		t.Logf("adsc requested %d type URLs (MeshConfig + %d kinds): %s", len(kinds), len(kinds)-1, strings.Join(kinds, ", "))
		if len(kinds)-1 != len(collections.Pilot.All()) {
			t.Errorf("expected %d kinds", len(collections.Pilot.All()))
		}
		if err := eventually(5*time.Second, func() error {
			got := rec.types()
			var missing []string
			for _, k := range kinds {
				if got[k] == 0 {
					missing = append(missing, k)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("no response for %v", missing)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		want := map[string]bool{}
		for _, k := range kinds {
			want[k] = true
		}
		for typ := range rec.types() {
			if !want[typ] {
				t.Errorf("response with type URL %q, which was never requested", typ)
			}
		}
		// Every response other than ServiceEntry is empty.
		rec.mu.Lock()
		for _, r := range rec.responses {
			if r.TypeUrl != gvk.ServiceEntry.String() && len(r.Resources) > 0 {
				t.Errorf("%d resources for %s, want none", len(r.Resources), r.TypeUrl)
			}
		}
		rec.mu.Unlock()
	})

	want := reg.expected()
	var firstVersions map[string]string
	step(t, "check: store holds exactly the expected ServiceEntries", func() {
		got := storeServiceEntries(store)
		if errs := compareServiceEntries(want, got); len(errs) > 0 {
			t.Fatalf("store content:\n  %s\n--- store:\n%s--- server /debug/serviceentries:\n%s",
				strings.Join(errs, "\n  "), describe(got), srv.debugServiceEntries())
		}
		firstVersions = map[string]string{}
		for k, g := range got {
			firstVersions[k] = g.Version
		}
		t.Logf("store holds %d ServiceEntries: %s", len(got), strings.Join(sortedKeys(got), ", "))
		// Spot checks of the seed scenario, spelled out.
		gm := got[istioNamespace+"/cloudmap-getmesh-external-service.my-namespace"].Spec
		if gm.Endpoints[0].Address != "52.192.72.89" || gm.Addresses[0] != "52.192.72.89" {
			t.Errorf("getmesh: %v", gm)
		}
		ca := got[istioNamespace+"/cloudmap-colorapp.howto-k8s-cloudmap.pvt.aws.local"].Spec
		versions := map[string]string{}
		for _, ep := range ca.Endpoints {
			versions[ep.Address] = ep.Labels["version"]
		}
		if versions["192.168.10.38"] != "blue" || versions["192.168.34.225"] != "red" {
			t.Errorf("colorapp endpoint versions %v, want 192.168.10.38=blue 192.168.34.225=red", versions)
		}
	})

	seCount := func() int { return rec.count(gvk.ServiceEntry.String()) }

	// waitStore waits for the store to match reg.
	waitStore := func(reg *Registry, what string) map[string]*gotSE {
		t.Helper()
		want := reg.expected()
		var got map[string]*gotSE
		err := eventually(20*time.Second, func() error {
			got = storeServiceEntries(store)
			if errs := compareServiceEntries(want, got); len(errs) > 0 {
				return fmt.Errorf("%s", strings.Join(errs, "; "))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: store does not match: %v\n--- store:\n%s--- server /debug/serviceentries:\n%s\n--- server log tail:\n%s",
				what, err, describe(got), srv.debugServiceEntries(), tail(srv.logPath, 30))
		}
		return got
	}

	step(t, "check: a resend of unchanged state keeps versions (no spurious update)", func() {
		// Touch the file without changing content: the versions must not change.
		before := seCount()
		reg.write(t, regPath)
		time.Sleep(1500 * time.Millisecond)
		got := storeServiceEntries(store)
		for k, g := range got {
			if g.Version != firstVersions[k] {
				t.Errorf("%s: version changed from %q to %q though nothing changed", k, firstVersions[k], g.Version)
			}
		}
		t.Logf("ServiceEntry responses after rewriting the same file: %d (before %d)", seCount(), before)
	})

	cur := reg.clone()
	step(t, "edit: add an instance (registry file -> store)", func() {
		ca := cur.service("howto-k8s-cloudmap.pvt.aws.local", "colorapp")
		tmpl := ca.Instances[0]
		attrs := scalarMap{}
		for k, v := range tmpl.Attributes {
			attrs[k] = v
		}
		attrs["AWS_INSTANCE_IPV4"] = "192.168.20.7"
		attrs["version"] = "green"
		delete(attrs, "k8s.io/pod")
		delete(attrs, "pod-template-hash")
		ca.Instances = append(ca.Instances, &Instance{ID: "192.168.20.7", Attributes: attrs})
		cur.write(t, regPath)
		got := waitStore(cur, "after adding colorapp green")
		for k, g := range got {
			changed := g.Version != firstVersions[k]
			isColor := strings.Contains(k, "cloudmap-colorapp.")
			if isColor && !changed {
				t.Errorf("%s: content changed but version %q did not", k, g.Version)
			}
			if !isColor && changed {
				t.Errorf("%s: version changed (%q -> %q) though its content did not", k, firstVersions[k], g.Version)
			}
		}
	})

	step(t, "edit: remove a service (deleted from store)", func() {
		cur.removeService("howto-k8s-cloudmap.pvt.aws.local", "front")
		cur.write(t, regPath)
		got := waitStore(cur, "after removing front")
		if got[istioNamespace+"/cloudmap-front.howto-k8s-cloudmap.pvt.aws.local"] != nil {
			t.Errorf("front still in the store")
		}
	})

	step(t, "edit: add a service", func() {
		ns := cur.namespace("my-namespace")
		ns.Services = append(ns.Services, &Service{
			Name:       "added-service",
			CreateDate: "2022-01-02T03:04:05Z",
			Instances: []*Instance{{ID: "added-1", Attributes: scalarMap{
				"AWS_INSTANCE_IPV4": "52.192.72.90", "AWS_INSTANCE_PORT": "9000", "app": "added",
			}}},
		})
		cur.write(t, regPath)
		waitStore(cur, "after adding added-service")
	})

	step(t, "restart cloudmap-mcp: adsc reconnects, store kept meanwhile, versions stable", func() {
		before := storeServiceEntries(store)
		n := seCount()
		srv.stop()
		time.Sleep(1 * time.Second)
		during := storeServiceEntries(store)
		if errs := compareServiceEntries(cur.expected(), during); len(errs) > 0 {
			t.Errorf("store changed while the server was down: %v", errs)
		}
		srv.start()
		if err := eventually(60*time.Second, func() error {
			if seCount() <= n {
				return fmt.Errorf("no ServiceEntry response since the restart")
			}
			return nil
		}); err != nil {
			t.Fatalf("adsc did not reconnect: %v", err)
		}
		after := waitStore(cur, "after restart")
		for k, g := range after {
			if before[k] != nil && before[k].Version != g.Version {
				t.Errorf("%s: version %q before restart, %q after: versions must be deterministic", k, before[k].Version, g.Version)
			}
		}
		if !client.HasSynced() {
			t.Errorf("adsc not synced after reconnect")
		}
	})

	step(t, "check: response and resource shape", func() {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, r := range rec.responses {
			if r.Nonce == "" {
				t.Errorf("response for %s without nonce", r.TypeUrl)
			}
			if r.TypeUrl != gvk.ServiceEntry.String() {
				continue
			}
			for _, a := range r.Resources {
				if a.TypeUrl != "type.googleapis.com/istio.mcp.v1alpha1.Resource" {
					t.Errorf("resource type URL %q", a.TypeUrl)
				}
			}
		}
		counts := map[string]int{}
		for _, r := range rec.responses {
			counts[r.TypeUrl]++
		}
		var lines []string
		for _, k := range sortedKeys(counts) {
			lines = append(lines, fmt.Sprintf("%s=%d", k, counts[k]))
		}
		sort.Strings(lines)
		t.Logf("responses received per type: %s", strings.Join(lines, " "))
	})
}
