//! Generated protobuf types (see `build.rs` and `proto/`).
#![allow(clippy::all, missing_docs)]

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

pub mod istio {
    pub mod mcp {
        pub mod v1alpha1 {
            tonic::include_proto!("istio.mcp.v1alpha1");
        }
    }
    pub mod networking {
        pub mod v1alpha3 {
            tonic::include_proto!("istio.networking.v1alpha3");
        }
    }
}

/// Encoded `FileDescriptorSet` of every proto this server speaks, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// Type URL of the MCP envelope in `DiscoveryResponse.resources`.
pub const MCP_RESOURCE_TYPE_URL: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
/// Type URL of the ServiceEntry body inside the envelope (always v1alpha3, whatever kind was asked).
pub const SERVICE_ENTRY_BODY_TYPE_URL: &str = "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry";

/// `DiscoveryResponse.resources`' field number: a response is assembled from pre-framed resources.
pub const RESOURCES_FIELD: u32 = 2;

/// One resource as a complete, framed `DiscoveryResponse.resources` field (tag + length + Any),
/// encoded once and shared by every response that carries it.
pub fn frame_resource(any: &prost_types::Any) -> bytes::Bytes {
    use prost::Message;
    let len = any.encoded_len();
    let mut buf = bytes::BytesMut::with_capacity(len + 8);
    prost::encoding::encode_key(RESOURCES_FIELD, prost::encoding::WireType::LengthDelimited, &mut buf);
    prost::encoding::encode_varint(len as u64, &mut buf);
    any.encode(&mut buf).expect("buffer has capacity");
    buf.freeze()
}
