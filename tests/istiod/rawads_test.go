package istiod

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	mcp "istio.io/api/mcp/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
)

// rawStream opens a plaintext ADS stream to addr (closed with the test, or after timeout).
func rawStream(t testing.TB, addr string, timeout time.Duration) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// TestRawADS speaks the wire protocol directly, as istiod 1.13-1.23 would (v1alpha3 type URL), and checks the
// SPEC section 1 rules pkg/adsc does not exercise: unknown type URLs are answered (empty) with the type URL
// echoed, the initial request's non-empty nonce is not taken for an ACK, an ACK and a stale nonce get no
// response, and the resource wrapping is Any(mcp.Resource{metadata, body: Any(ServiceEntry)}).
func TestRawADS(t *testing.T) {
	if os.Getenv("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY") == "1" {
		t.Skip("CLOUDMAP_MCP_ISTIOD_BUILD_ONLY=1")
	}
	logs := logDir(t)
	reg := exampleRegistry(t)
	regPath := filepath.Join(t.TempDir(), "registry.yaml")
	reg.write(t, regPath)
	srv := newServer(t, regPath, filepath.Join(logs, "cloudmap-mcp.log"))
	step(t, "start cloudmap-mcp", srv.start)

	stream := rawStream(t, srv.grpcAddr, 60*time.Second)
	responses := make(chan *discovery.DiscoveryResponse, 100)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- r
		}
	}()
	node := &core.Node{
		Id: "sidecar~10.1.1.1~istiod-0.istio-system~istio-system.svc.cluster.local",
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"GENERATOR":     structpb.NewStringValue("api"),
			"ISTIO_VERSION": structpb.NewStringValue("65536.65536.65536"),
		}},
	}
	send := func(r *discovery.DiscoveryRequest) {
		t.Helper()
		if err := stream.Send(r); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	recv := func(what string) *discovery.DiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-responses:
			if !ok {
				t.Fatalf("%s: stream closed", what)
			}
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no response in 10s", what)
		}
		return nil
	}
	silence := func(what string, d time.Duration) {
		t.Helper()
		select {
		case r := <-responses:
			t.Errorf("%s: unexpected response type=%s nonce=%s version=%s", what, r.TypeUrl, r.Nonce, r.VersionInfo)
		case <-time.After(d):
		}
	}
	const seV1alpha3 = "networking.istio.io/v1alpha3/ServiceEntry"
	const unknown = "example.com/v9/NoSuchKind"

	var se *discovery.DiscoveryResponse
	step(t, "initial requests with istiod's non-empty nonce are answered, type URLs echoed", func() {
		send(&discovery.DiscoveryRequest{Node: node, TypeUrl: "core/v1alpha1/MeshConfig", ResponseNonce: time.Now().String()})
		if r := recv("MeshConfig"); r.TypeUrl != "core/v1alpha1/MeshConfig" {
			t.Errorf("MeshConfig answered with type %q", r.TypeUrl)
		}
		send(&discovery.DiscoveryRequest{TypeUrl: seV1alpha3, ResponseNonce: time.Now().String()})
		se = recv("ServiceEntry")
		if se.TypeUrl != seV1alpha3 {
			t.Fatalf("ServiceEntry answered with type %q", se.TypeUrl)
		}
		send(&discovery.DiscoveryRequest{TypeUrl: unknown, ResponseNonce: time.Now().String()})
		r := recv("unknown kind")
		if r.TypeUrl != unknown || len(r.Resources) != 0 {
			t.Errorf("unknown kind answered with type %q and %d resources", r.TypeUrl, len(r.Resources))
		}
	})

	step(t, "resource shape: Any(mcp.Resource{metadata, body: Any(ServiceEntry)})", func() {
		want := reg.expected()
		if len(se.Resources) != len(want) {
			t.Errorf("%d resources, want %d", len(se.Resources), len(want))
		}
		for _, a := range se.Resources {
			if a.TypeUrl != "type.googleapis.com/istio.mcp.v1alpha1.Resource" {
				t.Errorf("resource type URL %q", a.TypeUrl)
				continue
			}
			res := &mcp.Resource{}
			if err := a.UnmarshalTo(res); err != nil {
				t.Errorf("unmarshal mcp.Resource: %v", err)
				continue
			}
			md := res.GetMetadata()
			if strings.Count(md.GetName(), "/") != 1 || want[md.GetName()] == nil {
				t.Errorf("metadata.name %q is not one of the expected namespace/name", md.GetName())
			}
			if md.GetVersion() == "" || md.GetCreateTime() == nil {
				t.Errorf("%s: version %q, create_time %v", md.GetName(), md.GetVersion(), md.GetCreateTime())
			}
			if res.GetBody().GetTypeUrl() != "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry" {
				t.Errorf("%s: body type URL %q", md.GetName(), res.GetBody().GetTypeUrl())
			}
			spec := &networking.ServiceEntry{}
			if err := res.GetBody().UnmarshalTo(spec); err != nil {
				t.Errorf("%s: body: %v", md.GetName(), err)
			}
		}
	})

	step(t, "an ACK and a stale nonce get no response; an empty nonce does", func() {
		send(&discovery.DiscoveryRequest{TypeUrl: seV1alpha3, VersionInfo: se.VersionInfo, ResponseNonce: se.Nonce})
		silence("after ACK", time.Second)
		send(&discovery.DiscoveryRequest{TypeUrl: seV1alpha3, VersionInfo: se.VersionInfo, ResponseNonce: "stale-" + se.Nonce})
		silence("after a stale nonce", time.Second)
		send(&discovery.DiscoveryRequest{TypeUrl: seV1alpha3})
		r := recv("request with empty nonce")
		if r.TypeUrl != seV1alpha3 || len(r.Resources) != len(se.Resources) {
			t.Errorf("re-request answered with type %q and %d resources", r.TypeUrl, len(r.Resources))
		}
	})
}
