module istiodbuild

go 1.22.0

require istio.io/istio v0.0.0-20240601204907-a1a76b8e75f8 // indirect

// istio.io/istio's own replace directive (a dependency's replaces are not applied), repeated by scripts/istiod-pin.sh.
replace github.com/imdario/mergo => github.com/imdario/mergo v0.3.5
