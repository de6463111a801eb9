package istiod

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mcp "istio.io/api/mcp/v1alpha1"
)

// consecutivePorts returns the first of n consecutive ports free on 127.0.0.1 (the sharded server listens on
// --grpc-addr's port + 0..n-1).
func consecutivePorts(t *testing.T, n int) int {
	for try := 0; try < 50; try++ {
		base := freePort(t)
		if base+n > 65535 {
			continue
		}
		ok := true
		for i := 0; i < n && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// servedVersions asks a server for its ServiceEntries the way istiod does and returns name -> metadata.version.
func servedVersions(t *testing.T, grpcAddr, typeURL string) map[string]string {
	t.Helper()
	r := firstResponse(t, grpcAddr, typeURL)
	out := map[string]string{}
	for _, a := range r.Resources {
		res := &mcp.Resource{}
		if err := a.UnmarshalTo(res); err != nil {
			t.Fatalf("unmarshal mcp.Resource: %v", err)
		}
		out[res.GetMetadata().GetName()] = res.GetMetadata().GetVersion()
	}
	return out
}

// shardRegistry: 48 services of one ECS task each in an HTTP namespace.
func shardRegistry(n int, extra string) *Registry {
	ns := &Namespace{Name: "fleet", Type: "HTTP", ID: "ns-fleet00000000001"}
	for i := 0; i < n; i++ {
		svc := &Service{Name: fmt.Sprintf("svc-%02d", i), ID: fmt.Sprintf("srv-fleet%010d", i), CreateDate: "2025-01-01T00:00:00Z"}
		svc.Instances = []*Instance{{ID: "task-1", Attributes: scalarMap{"AWS_INSTANCE_IPV4": fmt.Sprintf("10.9.%d.1", i), "AWS_INSTANCE_PORT": "8080"}}}
		if i == 7 && extra != "" {
			svc.Instances = append(svc.Instances, &Instance{ID: "task-2", Attributes: scalarMap{"AWS_INSTANCE_IPV4": extra, "AWS_INSTANCE_PORT": "8080"}})
		}
		ns.Services = append(ns.Services, svc)
	}
	return &Registry{Namespaces: []*Namespace{ns}}
}

// TestIstiodShards runs istiod with the four shards of one server as four config sources: istiod must hold
// exactly what the unsharded server serves, and an edit of one service must reach istiod on one source only.
func TestIstiodShards(t *testing.T) {
	forEachIstiod(t, runShards)
}

func runShards(t *testing.T, rel istioRelease, bin string) {
	const shards, services = 4, 48
	logs := logDir(t)
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.yaml")
	shardRegistry(services, "").write(t, regPath)

	var want map[string]string
	step(t, "the unsharded server's ServiceEntries (names and versions)", func() {
		plain := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp-unsharded.log"))
		plain.start()
		want = servedVersions(t, plain.grpcAddr, rel.SEType)
		plain.stop()
		if len(want) != services {
			t.Fatalf("unsharded server serves %d ServiceEntries, want %d", len(want), services)
		}
	})

	base := consecutivePorts(t, shards)
	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	srv.grpcAddr = fmt.Sprintf("127.0.0.1:%d", base)
	srv.extraArgs = []string{"--shards", fmt.Sprint(shards)}
	step(t, "start cloudmap-mcp --shards 4", srv.start)
	step(t, "check: the four shards are disjoint and together serve the unsharded set", func() {
		union := map[string]string{}
		for i := 0; i < shards; i++ {
			got := servedVersions(t, fmt.Sprintf("127.0.0.1:%d", base+i), rel.SEType)
			if len(got) == 0 || len(got) == services {
				t.Errorf("shard %d serves %d of %d ServiceEntries", i, len(got), services)
			}
			for k, v := range got {
				if _, dup := union[k]; dup {
					t.Errorf("%s is served by two shards", k)
				}
				union[k] = v
			}
		}
		if diff := diffVersions(want, union); diff != "" {
			t.Errorf("union of the shards differs from the unsharded server: %s", diff)
		}
	})

	var d *istiod
	step(t, "start istiod with the four shards as four xds:// config sources", func() {
		var mesh strings.Builder
		mesh.WriteString("configSources:\n")
		for i := 0; i < shards; i++ {
			fmt.Fprintf(&mesh, "- address: xds://127.0.0.1:%d\n", base+i)
		}
		d = startIstiodMesh(t, rel, bin, mesh.String(), filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
	})
	// holds: istiod's configz has exactly these ServiceEntries ("namespace/name" -> version).
	holds := func(want map[string]string) error {
		got, _, err := d.configz()
		if err != nil {
			return err
		}
		have := map[string]string{}
		for k, se := range got {
			have[k] = se.Version
		}
		if diff := diffVersions(want, have); diff != "" {
			return fmt.Errorf("istiod holds a different set: %s", diff)
		}
		return nil
	}
	step(t, "check: istiod holds exactly the unsharded set", func() {
		if err := eventually(30*time.Second, func() error { return holds(want) }); err != nil {
			t.Fatal(err)
		}
	})
	step(t, "check: an edit of one service reaches istiod on exactly one source", func() {
		seLines := func() int {
			n := 0
			for _, m := range receivedLine.FindAllStringSubmatch(d.proc.log(), -1) {
				if m[1] == rel.SEType {
					n++
				}
			}
			return n
		}
		before := seLines()
		if before < shards {
			t.Fatalf("istiod logged %d ServiceEntry responses, want at least one per source (%d)", before, shards)
		}
		shardRegistry(services, "10.9.7.2").write(t, regPath)
		plain := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp-unsharded-after.log"))
		plain.start()
		after := servedVersions(t, plain.grpcAddr, rel.SEType)
		plain.stop()
		if err := eventually(30*time.Second, func() error { return holds(after) }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // any push on another source would have arrived by now
		if got := seLines() - before; got != 1 {
			t.Errorf("istiod received %d ServiceEntry responses after one service changed, want 1 (one source)", got)
		}
	})
}

// diffVersions describes how two name -> version maps differ ("" when equal).
func diffVersions(want, got map[string]string) string {
	var out []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			out = append(out, "missing "+k)
		case g != v:
			out = append(out, fmt.Sprintf("%s version %s, want %s", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	if len(out) > 8 {
		out = append(out[:8], fmt.Sprintf("... %d differences", len(out)))
	}
	return strings.Join(out, "; ")
}
