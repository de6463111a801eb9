package istiod

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// ---------------------------------------------------------------------------------------------
// The registry file (the server's offline Cloud Map stand-in), as src/source/file.rs reads it.

type Registry struct {
	Namespaces []*Namespace `json:"namespaces"`
}

type Namespace struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	ID       string     `json:"id,omitempty"`
	Arn      string     `json:"arn,omitempty"`
	HTTPName string     `json:"httpName,omitempty"`
	Services []*Service `json:"services,omitempty"`
}

type Service struct {
	Name       string      `json:"name"`
	ID         string      `json:"id,omitempty"`
	Arn        string      `json:"arn,omitempty"`
	CreateDate string      `json:"createDate,omitempty"`
	Instances  []*Instance `json:"instances,omitempty"`
}

type Instance struct {
	ID           string    `json:"id"`
	Attributes   scalarMap `json:"attributes,omitempty"`
	HealthStatus string    `json:"healthStatus,omitempty"`
}

// scalarMap accepts YAML numbers and booleans as attribute values, like the server does.
type scalarMap map[string]string

func (m *scalarMap) UnmarshalJSON(b []byte) error {
	raw := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := scalarMap{}
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err == nil {
			out[k] = s
			continue
		}
		out[k] = strings.TrimSpace(string(v))
	}
	*m = out
	return nil
}

// The seed example, used when the repository has no examples/registry.yaml.
const fallbackRegistry = `
namespaces:
  - name: my-namespace
    type: HTTP
    services:
      - name: getmesh-external-service
        createDate: "2021-06-01T00:00:00Z"
        instances:
          - id: getmesh-1
            attributes:
              AWS_INSTANCE_IPV4: 52.192.72.89
  - name: howto-k8s-cloudmap.pvt.aws.local
    type: DNS_PRIVATE
    services:
      - name: colorapp
        instances:
          - id: blue-1
            attributes: {AWS_INSTANCE_IPV4: 192.168.10.38, AWS_INSTANCE_PORT: "8080", version: blue, app: colorapp}
          - id: red-1
            attributes: {AWS_INSTANCE_IPV4: 192.168.34.225, AWS_INSTANCE_PORT: "8080", version: red, app: colorapp}
      - name: front
        instances:
          - id: front-1
            attributes: {AWS_INSTANCE_IPV4: 192.168.59.249, AWS_INSTANCE_PORT: "8080"}
`

// exampleRegistry loads the bundled example registry (examples/registry.yaml), else the seed example.
func exampleRegistry(t testing.TB) *Registry {
	t.Helper()
	data := []byte(fallbackRegistry)
	src := "built-in seed example"
	p := filepath.Join(repoRoot(), "examples", "registry.yaml")
	if b, err := os.ReadFile(p); err == nil {
		data, src = b, p
	}
	r := &Registry{}
	if err := yaml.UnmarshalStrict(data, r); err != nil {
		t.Fatalf("parse %s: %v", src, err)
	}
	t.Logf("registry: %s", src)
	// The harness relies on these two services of the seed documents.
	if r.service("my-namespace", "getmesh-external-service") == nil ||
		r.service("howto-k8s-cloudmap.pvt.aws.local", "colorapp") == nil {
		t.Fatalf("%s lacks getmesh-external-service.my-namespace or colorapp.howto-k8s-cloudmap.pvt.aws.local", src)
	}
	return r
}

func (r *Registry) clone() *Registry {
	b, _ := json.Marshal(r)
	out := &Registry{}
	_ = json.Unmarshal(b, out)
	return out
}

func (r *Registry) namespace(name string) *Namespace {
	for _, ns := range r.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	return nil
}

func (r *Registry) service(ns, name string) *Service {
	if n := r.namespace(ns); n != nil {
		for _, s := range n.Services {
			if s.Name == name {
				return s
			}
		}
	}
	return nil
}

func (r *Registry) removeService(ns, name string) {
	n := r.namespace(ns)
	if n == nil {
		return
	}
	out := n.Services[:0]
	for _, s := range n.Services {
		if s.Name != name {
			out = append(out, s)
		}
	}
	n.Services = out
}

// write replaces path atomically (temp file + rename), so the server never reads half a file.
func (r *Registry) write(t testing.TB, path string) {
	t.Helper()
	b, err := yaml.Marshal(r)
	if err != nil {
		t.Fatalf("marshal registry: %v", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatalf("write registry: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("rename registry: %v", err)
	}
}

// ---------------------------------------------------------------------------------------------
// What istiod must end up holding for a registry (SPEC section 2), computed independently of the server.

// expectedSE is what the SPEC fixes about one ServiceEntry; fields the SPEC leaves open are not checked.
type expectedSE struct {
	Namespace  string
	Name       string
	Host       string
	CreateTime time.Time                    // zero: not checked
	Endpoints  map[string]map[string]string // address -> labels
	// Ports: the service ports as "name/number/PROTOCOL"; endpoint ports map the same names.
	Ports         []string
	EndpointPorts map[string]map[string]uint32 // address -> port name -> number
	// TaskOrPod: an instance carries an attribute ECS or the App Mesh controller registers for every
	// task or pod, so the service has a VIP even with one endpoint (docs/reaching-services.md).
	TaskOrPod bool
}

// taskOrPod reports whether an instance's attributes mark it as an ECS task or a Kubernetes pod.
func taskOrPod(attrs scalarMap) bool {
	for k := range attrs {
		switch {
		case k == "ECS_CLUSTER_NAME", k == "ECS_SERVICE_NAME", k == "ECS_TASK_DEFINITION_FAMILY",
			k == "ECS_TASK_SET_EXTERNAL_ID", k == "k8s.io/pod", k == "k8s.io/namespace",
			strings.HasPrefix(k, "appmesh.k8s.aws/"):
			return true
		}
	}
	return false
}

func (r *Registry) expected() map[string]*expectedSE {
	out := map[string]*expectedSE{}
	for _, ns := range r.Namespaces {
		for _, svc := range ns.Services {
			host := strings.ToLower(svc.Name + "." + ns.Name)
			e := &expectedSE{
				Namespace:     istioNamespace,
				Name:          "cloudmap-" + host,
				Host:          host,
				Endpoints:     map[string]map[string]string{},
				EndpointPorts: map[string]map[string]uint32{},
			}
			if svc.CreateDate != "" {
				if ts, err := time.Parse(time.RFC3339, svc.CreateDate); err == nil {
					e.CreateTime = ts.UTC()
				}
			}
			// Health: HEALTHY_OR_ELSE_ALL, UNKNOWN counts as healthy.
			var healthy, all []*Instance
			for _, in := range svc.Instances {
				if taskOrPod(in.Attributes) {
					e.TaskOrPod = true
				}
				if in.Attributes["AWS_INSTANCE_IPV4"] == "" && in.Attributes["AWS_INSTANCE_IPV6"] == "" {
					continue // the harness only uses IP instances
				}
				all = append(all, in)
				if in.HealthStatus != "UNHEALTHY" {
					healthy = append(healthy, in)
				}
			}
			if len(healthy) == 0 {
				healthy = all
			}
			if len(healthy) == 0 {
				continue
			}
			// One service port: from AWS_INSTANCE_PORT (first instance that has one), else http 80 + https 443.
			portNum := 0
			for _, in := range healthy {
				if p, err := strconv.Atoi(in.Attributes["AWS_INSTANCE_PORT"]); err == nil {
					portNum = p
					break
				}
			}
			var ports []string
			switch portNum {
			case 0:
				ports = []string{"http/80/HTTP", "https/443/HTTPS"}
			case 80:
				ports = []string{"http/80/HTTP"}
			case 443:
				ports = []string{"https/443/HTTPS"}
			default:
				ports = []string{fmt.Sprintf("tcp-%d/%d/TCP", portNum, portNum)}
			}
			e.Ports = ports
			for _, in := range healthy {
				addr := in.Attributes["AWS_INSTANCE_IPV4"]
				if addr == "" {
					addr = in.Attributes["AWS_INSTANCE_IPV6"]
				}
				labels := map[string]string{}
				for k, v := range in.Attributes {
					if strings.HasPrefix(k, "AWS_") || k == "REGION" || k == "AVAILABILITY_ZONE" {
						continue
					}
					if len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0 {
						labels[k] = v
					}
				}
				e.Endpoints[addr] = labels
				eps := map[string]uint32{}
				if portNum == 0 {
					eps["http"], eps["https"] = 80, 443
				} else {
					p := portNum
					if ip, err := strconv.Atoi(in.Attributes["AWS_INSTANCE_PORT"]); err == nil {
						p = ip
					}
					name := strings.SplitN(ports[0], "/", 2)[0]
					eps[name] = uint32(p)
				}
				e.EndpointPorts[addr] = eps
			}
			out[e.Namespace+"/"+e.Name] = e
		}
	}
	return out
}

// gotSE is one ServiceEntry as istiod (its store, or its /debug/configz) holds it.
type gotSE struct {
	Namespace, Name string
	Version         string
	CreateTime      time.Time
	Labels          map[string]string
	Spec            *networking.ServiceEntry
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// compareServiceEntries checks that got holds exactly the expected ServiceEntries with the expected specs.
func compareServiceEntries(want map[string]*expectedSE, got map[string]*gotSE) []string {
	var errs []string
	for _, k := range sortedKeys(want) {
		if got[k] == nil {
			errs = append(errs, fmt.Sprintf("missing ServiceEntry %s", k))
		}
	}
	for _, k := range sortedKeys(got) {
		if want[k] == nil {
			errs = append(errs, fmt.Sprintf("unexpected ServiceEntry %s", k))
		}
	}
	for _, k := range sortedKeys(want) {
		w, g := want[k], got[k]
		if g == nil {
			continue
		}
		for _, e := range compareOne(w, g) {
			errs = append(errs, k+": "+e)
		}
	}
	return errs
}

func compareOne(w *expectedSE, g *gotSE) []string {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	s := g.Spec
	if s == nil {
		return []string{"no spec"}
	}
	if g.Version == "" {
		bad("empty resource version (istiod re-applies such a resource on every push)")
	}
	if !w.CreateTime.IsZero() && !g.CreateTime.Equal(w.CreateTime) {
		bad("creation time %v, want %v (Cloud Map CreateDate)", g.CreateTime.UTC(), w.CreateTime)
	}
	if g.CreateTime.IsZero() || g.CreateTime.Unix() <= 0 {
		bad("no creation time")
	}
	if v, ok := g.Labels["istio.io/rev"]; ok {
		bad("label istio.io/rev=%q set", v)
	}
	if len(s.Hosts) != 1 || s.Hosts[0] != w.Host {
		bad("hosts %v, want [%s]", s.Hosts, w.Host)
	}
	if s.Resolution != networking.ServiceEntry_STATIC {
		bad("resolution %v, want STATIC", s.Resolution)
	}
	var ports []string
	for _, p := range s.Ports {
		ports = append(ports, fmt.Sprintf("%s/%d/%s", p.Name, p.Number, p.Protocol))
	}
	sort.Strings(ports)
	if strings.Join(ports, ",") != strings.Join(w.Ports, ",") {
		bad("ports %v, want %v", ports, w.Ports)
	}
	switch {
	case w.TaskOrPod:
		// A VIP from the default --vip-cidr, whatever the number of endpoints.
		if len(s.Addresses) != 1 || !strings.HasPrefix(s.Addresses[0], "241.") {
			bad("addresses %v, want one VIP in 241.0.0.0/8 (a service of tasks or pods)", s.Addresses)
		}
	case len(w.Endpoints) == 1:
		addr := sortedKeys(w.Endpoints)[0]
		if len(s.Addresses) != 1 || s.Addresses[0] != addr {
			bad("addresses %v, want [%s] (single-endpoint STATIC service)", s.Addresses, addr)
		}
	}
	for _, a := range s.Addresses {
		if net.ParseIP(a) == nil {
			if _, _, err := net.ParseCIDR(a); err != nil {
				bad("address %q is neither IP nor CIDR", a)
			}
		}
	}
	gotEps := map[string]*networking.WorkloadEntry{}
	for _, ep := range s.Endpoints {
		if gotEps[ep.Address] != nil {
			bad("endpoint %s listed twice", ep.Address)
		}
		gotEps[ep.Address] = ep
	}
	if a, b := strings.Join(sortedKeys(gotEps), ","), strings.Join(sortedKeys(w.Endpoints), ","); a != b {
		bad("endpoints [%s], want [%s]", a, b)
	}
	for addr, labels := range w.Endpoints {
		ep := gotEps[addr]
		if ep == nil {
			continue
		}
		if fmt.Sprint(ep.Labels) != fmt.Sprint(labels) {
			bad("endpoint %s labels %v, want %v", addr, ep.Labels, labels)
		}
		if fmt.Sprint(ep.Ports) != fmt.Sprint(w.EndpointPorts[addr]) {
			bad("endpoint %s ports %v, want %v", addr, ep.Ports, w.EndpointPorts[addr])
		}
	}
	return errs
}

// describe renders got for failure messages.
func describe(got map[string]*gotSE) string {
	var b bytes.Buffer
	for _, k := range sortedKeys(got) {
		g := got[k]
		js, _ := json.Marshal(g.Spec)
		fmt.Fprintf(&b, "  %s version=%q created=%s labels=%v spec=%s\n", k, g.Version, g.CreateTime.UTC().Format(time.RFC3339), g.Labels, js)
	}
	return b.String()
}
