module istiodbuild

go 1.22.0

// From istio.io/istio@1.22.1 go.mod: replace directives of a dependency are not applied, so repeat them.
replace github.com/imdario/mergo => github.com/imdario/mergo v0.3.5

require istio.io/istio v0.0.0-20240601204907-a1a76b8e75f8 // indirect
