// Package istiod is the conformance harness of cloudmap-mcp against Istio's own code.
//
// It holds only tests (see *_test.go):
//
//   - adsc_test.go runs istio.io/istio/pkg/adsc, the client istiod uses for `xds://` config sources,
//     with the same in-memory config store istiod uses, against a cloudmap-mcp server.
//   - pilot_test.go builds istio.io/istio/pilot/cmd/pilot-discovery (istiod) for each selected Istio
//     release (cached), runs it without Kubernetes against a cloudmap-mcp server and checks what istiod
//     received and what it serves to a sidecar.
//
// Run it with scripts/istiod-harness.sh from the repository root. Environment:
//
//	CLOUDMAP_MCP_BIN            cloudmap-mcp binary (default <repo>/target/debug/cloudmap-mcp)
//	ISTIOD_VERSIONS             comma-separated Istio releases to run istiod for (default: all known)
//	CLOUDMAP_MCP_ISTIOD_CACHE   where built pilot-discovery binaries and logs go (default <repo>/target/istiod)
package istiod
