module istiodbuild

go 1.26.0

// istio.io/istio 1.31.1 pins istio.io/api and istio.io/client-go at pseudo-versions of the same commits as their
// v1.31.1 tags, and go-control-plane at a July 2026 commit; the Go module proxy here does not serve those
// pseudo-versions, so use the tags (identical content) and the nearest served go-control-plane commit.
replace (
	github.com/envoyproxy/go-control-plane/contrib => github.com/envoyproxy/go-control-plane/contrib v1.36.1-0.20260729145720-a2d8c7492908
	github.com/envoyproxy/go-control-plane/envoy => github.com/envoyproxy/go-control-plane/envoy v1.37.1-0.20260729145720-a2d8c7492908
	istio.io/api => istio.io/api v1.31.1
	istio.io/client-go => istio.io/client-go v1.31.1
)

require istio.io/istio v0.0.0-20260916195427-190ae921b848 // indirect
