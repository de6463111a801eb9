//! Compiles the hand-written protos in `proto/` with protox (no system protoc) and generates
//! prost messages plus a tonic ADS client. The server side of ADS is written by hand in
//! `src/xds/service.rs` so responses can carry pre-encoded resource bytes.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/ads.proto",
    "istio/mcp/v1alpha1/resource.proto",
    "istio/networking/v1alpha3/service_entry.proto",
    "istio/networking/v1alpha3/virtual_service.proto",
    "istio/networking/v1alpha3/destination_rule.proto",
    "istio/networking/v1alpha3/gateway.proto",
    "istio/networking/v1alpha3/sidecar.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set feeds gRPC reflection.
    std::fs::write(out.join("descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Maps must encode in a fixed order: resource bytes and versions are content hashes.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
