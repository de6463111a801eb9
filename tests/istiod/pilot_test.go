package istiod

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	networking "istio.io/api/networking/v1alpha3"

	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/adsc"
	"istio.io/istio/pkg/model"
)

// istioRelease is one istiod release series the harness builds and runs. Its build module (go.mod + go.sum
// pinning istio.io/istio at a commit of that series the Go module proxy serves, and PIN, written by
// scripts/istiod-pin.sh, naming it) lives in pilot/<Version>/ beside this file.
type istioRelease struct {
	// Version is the release series ("1.31"): the build module's directory and what ISTIOD_VERSIONS names.
	Version string
	// SEType is the type URL this istiod requests ServiceEntries with.
	SEType string
	// Kinds is how many config kinds this istiod requests (besides MeshConfig).
	Kinds int
	// FakeKube: this istiod cannot start without a Kubernetes client. Its build module then holds a main
	// package (pilot/<Version>/main.go) that runs upstream's pilot-discovery command with Istio's in-memory
	// fake Kubernetes client when ISTIOD_CONFORMANCE_FAKE_KUBE=1; see that file for why.
	FakeKube bool
}

// releases, newest first. Only releases whose istio.io/istio module (and dependencies) the Go module proxy
// serves can be listed; see README.md.
var releases = []istioRelease{
	{Version: "1.31", SEType: "networking.istio.io/v1/ServiceEntry", Kinds: 15, FakeKube: true},
	{Version: "1.22", SEType: "networking.istio.io/v1alpha3/ServiceEntry", Kinds: 14},
}

// pin reads pilot/<Version>/PIN: the label of what is built ("release-1.31 @ eed52eb (VERSION 1.31)") and the
// short commit, which becomes istiod's build version ("1.31-eed52eb").
func (r istioRelease) pin(t *testing.T) (label, buildVersion string) {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "tests", "istiod", "pilot", r.Version, "PIN"))
	if err != nil {
		t.Fatalf("build module for %s has no PIN file (run scripts/istiod-pin.sh %s): %v", r.Version, r.Version, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "label: "); ok {
			label = strings.TrimSpace(v)
		}
	}
	m := regexp.MustCompile(` @ ([0-9a-f]{7}) `).FindStringSubmatch(label)
	if m == nil {
		t.Fatalf("pilot/%s/PIN has no 'label: <branch> @ <commit> (VERSION x)' line: %q", r.Version, b)
	}
	return label, r.Version + "-" + m[1]
}

func selectedReleases(t *testing.T) []istioRelease {
	env, set := os.LookupEnv("ISTIOD_VERSIONS")
	env = strings.TrimSpace(env)
	if !set || env == "" || env == "all" {
		return releases
	}
	if env == "none" {
		return nil
	}
	var out []istioRelease
	for _, v := range strings.Split(env, ",") {
		v = strings.TrimSpace(v)
		found := false
		for _, r := range releases {
			if r.Version == v || strings.HasPrefix(r.Version, v+".") {
				out = append(out, r)
				found = true
			}
		}
		if !found {
			var known []string
			for _, r := range releases {
				known = append(known, r.Version)
			}
			t.Fatalf("ISTIOD_VERSIONS: unknown version %q (known: %s)", v, strings.Join(known, ", "))
		}
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// Building pilot-discovery (cached)

var buildMu sync.Mutex

// pilotDiscovery returns the path of pilot-discovery for rel, building it unless a build of the same
// pinned module set is cached.
func pilotDiscovery(t *testing.T, rel istioRelease) string {
	buildMu.Lock()
	defer buildMu.Unlock()
	modDir := filepath.Join(repoRoot(), "tests", "istiod", "pilot", rel.Version)
	gomod, err1 := os.ReadFile(filepath.Join(modDir, "go.mod"))
	gosum, err2 := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err1 != nil || err2 != nil {
		t.Fatalf("build module for %s missing in %s: %v %v", rel.Version, modDir, err1, err2)
	}
	key := append(append(gomod, 0), gosum...)
	pkg := "istio.io/istio/pilot/cmd/pilot-discovery"
	if rel.FakeKube {
		mainGo, err := os.ReadFile(filepath.Join(modDir, "main.go"))
		if err != nil {
			t.Fatalf("build module for %s lacks main.go: %v", rel.Version, err)
		}
		key = append(append(key, 0), mainGo...)
		pkg = "."
	}
	h := sha256.Sum256(key)
	stamp := hex.EncodeToString(h[:8])
	outDir := filepath.Join(cacheDir(), rel.Version)
	bin := filepath.Join(outDir, "pilot-discovery")
	stampPath := filepath.Join(outDir, "pilot-discovery.stamp")
	if b, err := os.ReadFile(stampPath); err == nil && strings.TrimSpace(string(b)) == stamp {
		if _, err := os.Stat(bin); err == nil {
			t.Logf("pilot-discovery %s: cached at %s", rel.Version, bin)
			return bin
		}
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := bin + ".tmp"
	goBin := "go"
	if gr := os.Getenv("GOROOT"); gr != "" {
		if _, err := os.Stat(filepath.Join(gr, "bin", "go")); err == nil {
			goBin = filepath.Join(gr, "bin", "go")
		}
	}
	label, buildVersion := rel.pin(t)
	args := []string{"build", "-mod=readonly", "-buildvcs=false",
		"-ldflags=-X istio.io/istio/pkg/version.buildVersion=" + buildVersion,
		"-o", tmp, pkg}
	t.Logf("building pilot-discovery %s, %s: (cd %s && %s %s)", rel.Version, label, modDir, goBin, strings.Join(args, " "))
	cmd := exec.Command(goBin, args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		t.Fatalf("building pilot-discovery %s failed after %v: %v\n%s", rel.Version, d.Round(time.Second), err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stampPath, []byte(stamp+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("built pilot-discovery %s in %v -> %s", rel.Version, d.Round(time.Second), bin)
	return bin
}

// ---------------------------------------------------------------------------------------------
// Running istiod without Kubernetes

type istiod struct {
	rel                                istioRelease
	proc                               *process
	grpcAddr, httpAddr, monitoringAddr string
	httpsAddr, ctrlzPort               string
	dir                                string
}

func startIstiod(t *testing.T, rel istioRelease, bin, xdsAddr, logPath string) *istiod {
	// configSources lists only cloudmap-mcp: istiod runs without Kubernetes.
	return startIstiodMesh(t, rel, bin, fmt.Sprintf("configSources:\n- address: xds://%s\n", xdsAddr), logPath)
}

// startIstiodMesh starts istiod with the given mesh config (YAML).
func startIstiodMesh(t *testing.T, rel istioRelease, bin, mesh, logPath string) *istiod {
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(mesh), 0o644); err != nil {
		t.Fatal(err)
	}
	networksPath := filepath.Join(dir, "meshNetworks.yaml")
	if err := os.WriteFile(networksPath, []byte("networks: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &istiod{
		rel:            rel,
		grpcAddr:       fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		httpAddr:       fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		monitoringAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		httpsAddr:      fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		ctrlzPort:      fmt.Sprint(freePort(t)),
		dir:            dir,
	}
	env := []string{
		"POD_NAMESPACE=" + istioNamespace,
		"POD_NAME=istiod-conformance-0",
		"ENABLE_CA_SERVER=false",
		"PILOT_ENABLE_ANALYSIS=false",
		"KUBECONFIG=" + filepath.Join(dir, "no-kubeconfig"),
	}
	if rel.FakeKube {
		env = append(env, "ISTIOD_CONFORMANCE_FAKE_KUBE=1")
	}
	d.proc = startProcess(t, "istiod", logPath, dir, env, bin, "discovery",
		"--registries=",
		"--meshConfig="+meshPath,
		"--networksConfig="+networksPath,
		"--secureGRPCAddr=",
		"--grpcAddr="+d.grpcAddr,
		"--httpAddr="+d.httpAddr,
		"--httpsAddr="+d.httpsAddr,
		"--monitoringAddr="+d.monitoringAddr,
		"--ctrlz_address=127.0.0.1",
		"--ctrlz_port="+d.ctrlzPort,
		"--domain=cluster.local",
		"--shutdownDuration=1s",
		"--log_output_level=default:info,adsc:info",
	)
	t.Cleanup(func() { d.proc.stop(5 * time.Second) })
	return d
}

var (
	syncLine     = regexp.MustCompile(`All controller caches have been synced up in (\S+)`)
	receivedLine = regexp.MustCompile(`\tadsc\tReceived\ttype=(\S+) count=(\d+)`)
)

// waitReady waits for the sync log line and for the plaintext xDS port to open.
func (d *istiod) waitReady(t *testing.T, timeout time.Duration) {
	err := eventually(timeout, func() error {
		if d.proc.exited() {
			return stopRetrying(fmt.Errorf("istiod exited: %v", d.proc.err))
		}
		if !syncLine.MatchString(d.proc.log()) {
			return fmt.Errorf("no sync log line yet")
		}
		if !tcpOpen(d.grpcAddr) {
			return fmt.Errorf("xDS port %s not open", d.grpcAddr)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("istiod %s did not finish starting: %v\n--- istiod log tail:\n%s", d.rel.Version, err, tail(d.proc.logPath, 60))
	}
	if m := syncLine.FindStringSubmatch(d.proc.log()); m != nil {
		t.Logf("istiod %s: %q", d.rel.Version, m[0])
	}
}

// configz reads istiod's /debug/configz: every config it holds, as Kubernetes objects.
func (d *istiod) configz() (map[string]*gotSE, []string, error) {
	code, body, err := httpGet("http://" + d.monitoringAddr + "/debug/configz")
	if err != nil {
		return nil, nil, err
	}
	if code != 200 {
		return nil, nil, fmt.Errorf("/debug/configz: HTTP %d: %s", code, body)
	}
	var items []struct {
		Kind       string `json:"kind"`
		APIVersion string `json:"apiVersion"`
		Metadata   struct {
			Name              string            `json:"name"`
			Namespace         string            `json:"namespace"`
			ResourceVersion   string            `json:"resourceVersion"`
			CreationTimestamp time.Time         `json:"creationTimestamp"`
			Labels            map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		return nil, nil, fmt.Errorf("parse /debug/configz: %v: %.300s", err, body)
	}
	out := map[string]*gotSE{}
	var other []string
	for _, it := range items {
		if it.Kind != "ServiceEntry" {
			other = append(other, it.APIVersion+"/"+it.Kind+" "+it.Metadata.Namespace+"/"+it.Metadata.Name)
			continue
		}
		spec := &networking.ServiceEntry{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(it.Spec, spec); err != nil {
			return nil, nil, fmt.Errorf("parse spec of %s: %v", it.Metadata.Name, err)
		}
		out[it.Metadata.Namespace+"/"+it.Metadata.Name] = &gotSE{
			Namespace:  it.Metadata.Namespace,
			Name:       it.Metadata.Name,
			Version:    it.Metadata.ResourceVersion,
			CreateTime: it.Metadata.CreationTimestamp,
			Labels:     it.Metadata.Labels,
			Spec:       spec,
		}
	}
	return out, other, nil
}

// waitConfigz waits until istiod's configz holds exactly what reg should give.
func (d *istiod) waitConfigz(t *testing.T, reg *Registry, timeout time.Duration, what string) map[string]*gotSE {
	want := reg.expected()
	var got map[string]*gotSE
	err := eventually(timeout, func() error {
		var other []string
		var err error
		got, other, err = d.configz()
		if err != nil {
			return err
		}
		var errs []string
		if len(other) > 0 {
			errs = append(errs, fmt.Sprintf("configs that are not ServiceEntries: %v", other))
		}
		errs = append(errs, compareServiceEntries(want, got)...)
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: istiod /debug/configz does not match the registry: %v\n--- configz:\n%s--- istiod log tail:\n%s",
			what, err, describe(got), tail(d.proc.logPath, 40))
	}
	return got
}

// rejected lists istiod log lines where its config-source client dropped a resource.
var rejectedPatterns = []string{
	"Error unmarshalling received MCP config",
	"Invalid data:",
	"Error adding a new resource to the store",
	"Error updating an existing resource in the store",
	"Error deleting an outdated resource from the store",
}

func (d *istiod) rejections() []string {
	var out []string
	for _, line := range strings.Split(d.proc.log(), "\n") {
		for _, p := range rejectedPatterns {
			if strings.Contains(line, p) {
				out = append(out, line)
			}
		}
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// A sidecar's view: an Envoy-like ADS client on istiod's plaintext xDS port.

type sidecar struct {
	c *adsc.ADSC
}

func connectSidecar(t *testing.T, istiodAddr string) *sidecar {
	return connectSidecarWith(t, istiodAddr, model.NodeMetadata{ClusterID: "Kubernetes", Namespace: "default"})
}

// connectSidecarWith connects a sidecar with the given node metadata that asks for CDS (then EDS, LDS and RDS,
// as Envoy does) and for the extra type URLs.
func connectSidecarWith(t *testing.T, istiodAddr string, meta model.NodeMetadata, extraTypes ...string) *sidecar {
	initial := []*discovery.DiscoveryRequest{{TypeUrl: v3.ClusterType}}
	for _, typeURL := range extraTypes {
		initial = append(initial, &discovery.DiscoveryRequest{TypeUrl: typeURL})
	}
	ns := meta.Namespace
	if ns == "" {
		ns = "default"
	}
	c, err := adsc.New(istiodAddr, &adsc.ADSConfig{
		Config: adsc.Config{
			Namespace: ns,
			Workload:  "sleep-0",
			IP:        "127.0.0.1",
			Meta:      meta.ToStruct(),
			GrpcOpts:  []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		},
		InitialDiscoveryRequests: initial,
	})
	if err != nil {
		t.Fatalf("sidecar adsc.New: %v", err)
	}
	if err := c.Run(); err != nil {
		t.Fatalf("sidecar adsc.Run: %v", err)
	}
	t.Cleanup(c.Close)
	return &sidecar{c: c}
}

// endpoints returns the addresses and istio workload metadata of the EDS endpoints of cluster.
func (s *sidecar) endpoints(cluster string) (map[string]string, bool) {
	if _, ok := s.c.GetEdsClusters()[cluster]; !ok {
		return nil, false
	}
	cla := s.c.GetEndpoints()[cluster]
	if cla == nil {
		return nil, false
	}
	out := map[string]string{}
	for _, loc := range cla.Endpoints {
		for _, lb := range loc.LbEndpoints {
			addr := lbAddress(lb)
			wl := ""
			if md := lb.GetMetadata().GetFilterMetadata()["istio"]; md != nil {
				wl = md.Fields["workload"].GetStringValue()
			}
			out[addr] = wl
		}
	}
	return out, true
}

func lbAddress(lb *endpoint.LbEndpoint) string {
	sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
	return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
}

func (s *sidecar) clusterNames() []string {
	var out []string
	for k := range s.c.GetEdsClusters() {
		out = append(out, k)
	}
	return out
}

// ---------------------------------------------------------------------------------------------

// forEachIstiod runs f as a subtest per selected istiod release, with its (cached) pilot-discovery binary.
func forEachIstiod(t *testing.T, f func(t *testing.T, rel istioRelease, bin string)) {
	rels := selectedReleases(t)
	if len(rels) == 0 || os.Getenv("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY") == "1" {
		t.Skip("no istiod to run")
	}
	for _, rel := range rels {
		t.Run(rel.Version, func(t *testing.T) {
			var bin string
			step(t, "build pilot-discovery (cached after the first run)", func() { bin = pilotDiscovery(t, rel) })
			f(t, rel, bin)
		})
	}
}

// TestIstiod builds and runs real istiod releases against cloudmap-mcp.
func TestIstiod(t *testing.T) {
	rels := selectedReleases(t)
	if len(rels) == 0 {
		t.Skip("ISTIOD_VERSIONS=none")
	}
	if os.Getenv("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY") == "1" {
		for _, rel := range rels {
			t.Run(rel.Version, func(t *testing.T) {
				step(t, "build pilot-discovery (cached after the first run)", func() { pilotDiscovery(t, rel) })
			})
		}
		return
	}
	if _, err := os.Stat(serverBinary()); err != nil {
		t.Fatalf("cloudmap-mcp binary %s not found (set CLOUDMAP_MCP_BIN): %v", serverBinary(), err)
	}
	for _, rel := range rels {
		t.Run(rel.Version, func(t *testing.T) { runIstiod(t, rel) })
	}
}

func runIstiod(t *testing.T, rel istioRelease) {
	var bin string
	step(t, "build pilot-discovery (cached after the first run)", func() {
		bin = pilotDiscovery(t, rel)
	})

	logs := logDir(t)
	dir := t.TempDir()
	reg := exampleRegistry(t)
	regPath := filepath.Join(dir, "registry.yaml")
	reg.write(t, regPath)
	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	step(t, "start cloudmap-mcp", srv.start)

	var d *istiod
	step(t, "start istiod until synced and its xDS port opens (every kind answered)", func() {
		d = startIstiod(t, rel, bin, srv.grpcAddr, filepath.Join(logs, "istiod.log"))
		d.waitReady(t, 180*time.Second)
		// istiod's config-source client logs each response it gets ("Received type=... count=..."):
		// it must have got one for MeshConfig and each kind, with the ServiceEntry type URL of its version.
		types := map[string]int{}
		for _, m := range receivedLine.FindAllStringSubmatch(d.proc.log(), -1) {
			n, _ := strconv.Atoi(m[2])
			types[m[1]] += n
		}
		if len(types) != rel.Kinds+1 {
			t.Errorf("istiod %s got responses for %d type URLs, want %d (MeshConfig + %d kinds): %v", rel.Version, len(types), rel.Kinds+1, rel.Kinds, types)
		}
		if types[rel.SEType] == 0 {
			t.Errorf("istiod %s got no ServiceEntry under %s: %v", rel.Version, rel.SEType, types)
		}
		t.Logf("istiod %s requested and got %d type URLs; resources per type: %v", rel.Version, len(types), types)
	})

	step(t, "check: /debug/configz lists exactly our ServiceEntries", func() {
		got := d.waitConfigz(t, reg, 10*time.Second, "initial")
		t.Logf("istiod %s holds %d ServiceEntries: %s", rel.Version, len(got), strings.Join(sortedKeys(got), ", "))
		// The apiVersion istiod reports is the kind it requested.
		_, body, _ := httpGet("http://" + d.monitoringAddr + "/debug/configz")
		wantAPI := strings.TrimSuffix(rel.SEType, "/ServiceEntry")
		if !strings.Contains(string(body), `"apiVersion":"`+wantAPI+`"`) {
			t.Errorf("configz does not show apiVersion %s: %.400s", wantAPI, body)
		}
	})

	want := reg.expected()
	colorKey := istioNamespace + "/cloudmap-colorapp.howto-k8s-cloudmap.pvt.aws.local"
	colorPort := strings.Split(want[colorKey].Ports[0], "/")[1]
	colorCluster := "outbound|" + colorPort + "||colorapp.howto-k8s-cloudmap.pvt.aws.local"
	getmeshCluster := "outbound|80||getmesh-external-service.my-namespace"

	var px *sidecar
	step(t, "check: a sidecar gets the clusters and endpoints (CDS+EDS)", func() {
		px = connectSidecar(t, d.grpcAddr)
		err := eventually(30*time.Second, func() error {
			eps, ok := px.endpoints(getmeshCluster)
			if !ok {
				return fmt.Errorf("no EDS cluster %s (clusters: %v)", getmeshCluster, px.clusterNames())
			}
			if _, ok := eps["52.192.72.89:80"]; !ok {
				return fmt.Errorf("%s endpoints %v lack 52.192.72.89:80", getmeshCluster, eps)
			}
			if _, ok := px.c.GetEdsClusters()["outbound|443||getmesh-external-service.my-namespace"]; !ok {
				return fmt.Errorf("no cluster for port 443")
			}
			ceps, ok := px.endpoints(colorCluster)
			if !ok {
				return fmt.Errorf("no EDS cluster %s (clusters: %v)", colorCluster, px.clusterNames())
			}
			// Istio's endpoint metadata "workload" is name;namespace;canonical-service;canonical-revision;cluster,
			// where the canonical revision comes from the endpoint's `version` label (the label subsets select on).
			for ip, v := range map[string]string{"192.168.10.38": "blue", "192.168.34.225": "red"} {
				addr := ip + ":" + colorPort
				wl, ok := ceps[addr]
				if !ok {
					return fmt.Errorf("%s endpoints %v lack %s", colorCluster, ceps, addr)
				}
				parts := strings.Split(wl, ";")
				app := want[colorKey].Endpoints[ip]["app"]
				if len(parts) != 5 || parts[3] != v || (app != "" && parts[2] != app) {
					return fmt.Errorf("%s endpoint %s workload metadata %q, want canonical service %q revision %q", colorCluster, addr, wl, app, v)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("sidecar view: %v\n--- istiod log tail:\n%s", err, tail(d.proc.logPath, 30))
		}
		eps, _ := px.endpoints(colorCluster)
		t.Logf("sidecar: %d EDS clusters; %s -> %v", len(px.clusterNames()), colorCluster, eps)
	})

	step(t, "check: istiod's endpoint registry carries the version labels", func() {
		code, body, err := httpGet("http://" + d.monitoringAddr + "/debug/endpointShardz")
		if err != nil || code != 200 {
			t.Logf("/debug/endpointShardz unavailable (%v, %d): skipped", err, code)
			return
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Errorf("parse endpointShardz: %v", err)
			return
		}
		found := map[string]string{}
		walkEndpoints(v, func(addr string, labels map[string]any) {
			if s, ok := labels["version"].(string); ok {
				found[addr] = s
			}
		})
		if found["192.168.10.38"] != "blue" || found["192.168.34.225"] != "red" {
			t.Errorf("endpointShardz version labels %v, want 192.168.10.38=blue 192.168.34.225=red", found)
		}
	})

	cur := reg.clone()
	step(t, "edit registry: add an instance -> configz", func() {
		ca := cur.service("howto-k8s-cloudmap.pvt.aws.local", "colorapp")
		attrs := scalarMap{}
		for k, v := range ca.Instances[0].Attributes {
			attrs[k] = v
		}
		attrs["AWS_INSTANCE_IPV4"] = "192.168.20.7"
		attrs["version"] = "green"
		delete(attrs, "k8s.io/pod")
		delete(attrs, "pod-template-hash")
		ca.Instances = append(ca.Instances, &Instance{ID: "192.168.20.7", Attributes: attrs})
		cur.write(t, regPath)
		d.waitConfigz(t, cur, 20*time.Second, "after adding an instance")
	})

	step(t, "edit registry: remove a service -> gone from configz", func() {
		cur.removeService("howto-k8s-cloudmap.pvt.aws.local", "front")
		cur.write(t, regPath)
		got := d.waitConfigz(t, cur, 20*time.Second, "after removing front")
		if got[istioNamespace+"/cloudmap-front.howto-k8s-cloudmap.pvt.aws.local"] != nil {
			t.Errorf("front still listed")
		}
	})

	step(t, "restart cloudmap-mcp: istiod keeps its config, reconnects, gets the new state", func() {
		before, _, err := d.configz()
		if err != nil {
			t.Fatal(err)
		}
		srv.stop()
		down := time.Now()
		time.Sleep(2 * time.Second)
		during, _, err := d.configz()
		if err != nil {
			t.Fatalf("istiod stopped answering while cloudmap-mcp was down: %v\n%s", err, tail(d.proc.logPath, 30))
		}
		if errs := compareServiceEntries(cur.expected(), during); len(errs) > 0 {
			t.Errorf("istiod lost config while cloudmap-mcp was down: %v", errs)
		}
		if d.proc.exited() {
			t.Fatalf("istiod exited when cloudmap-mcp went away")
		}
		// Change the registry while the server is down, so the reconnect is visible in configz.
		ns := cur.namespace("my-namespace")
		ns.Services = append(ns.Services, &Service{
			Name:       "added-service",
			CreateDate: "2022-01-02T03:04:05Z",
			Instances: []*Instance{{ID: "added-1", Attributes: scalarMap{
				"AWS_INSTANCE_IPV4": "52.192.72.90", "AWS_INSTANCE_PORT": "9000", "app": "added",
			}}},
		})
		cur.write(t, regPath)
		srv.start()
		got := d.waitConfigz(t, cur, 90*time.Second, "after restarting cloudmap-mcp")
		t.Logf("istiod got the post-restart state %v after the server went down", time.Since(down).Round(100*time.Millisecond))
		for k, g := range got {
			if b := before[k]; b != nil && b.Version != g.Version {
				t.Errorf("%s: resource version %q before restart, %q after", k, b.Version, g.Version)
			}
		}
	})

	step(t, "check: the sidecar gets the service added after the restart", func() {
		cl := "outbound|9000||added-service.my-namespace"
		err := eventually(30*time.Second, func() error {
			eps, ok := px.endpoints(cl)
			if !ok {
				return fmt.Errorf("no EDS cluster %s", cl)
			}
			if _, ok := eps["52.192.72.90:9000"]; !ok {
				return fmt.Errorf("%s endpoints %v", cl, eps)
			}
			if _, ok := px.c.GetEdsClusters()["outbound|80||front.howto-k8s-cloudmap.pvt.aws.local"]; ok {
				return fmt.Errorf("removed service front still has a cluster")
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	step(t, "check: istiod's log shows no rejected ServiceEntry", func() {
		if r := d.rejections(); len(r) > 0 {
			t.Errorf("istiod rejected resources:\n%s", strings.Join(r, "\n"))
		}
		n := strings.Count(d.proc.log(), "Received")
		t.Logf("istiod log: %d adsc 'Received' lines; logs in %s", n, logs)
	})
}

// walkEndpoints finds, in a decoded JSON tree, objects that look like Istio endpoints (an address and labels).
func walkEndpoints(v any, f func(addr string, labels map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		var labels map[string]any
		for _, k := range []string{"Labels", "labels"} {
			if l, ok := x[k].(map[string]any); ok {
				labels = l
			}
		}
		if labels != nil {
			for _, k := range []string{"Address", "address"} {
				if a, ok := x[k].(string); ok {
					f(a, labels)
				}
			}
			for _, k := range []string{"Addresses", "addresses"} {
				if as, ok := x[k].([]any); ok {
					for _, a := range as {
						if s, ok := a.(string); ok {
							f(s, labels)
						}
					}
				}
			}
		}
		for _, c := range x {
			walkEndpoints(c, f)
		}
	case []any:
		for _, c := range x {
			walkEndpoints(c, f)
		}
	}
}
