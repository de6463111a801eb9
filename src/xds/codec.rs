//! gRPC codec for ADS: decodes `DiscoveryRequest`s with prost and writes `DiscoveryResponse`s from
//! pre-encoded resource bytes (no per-stream protobuf encoding of resources).
use bytes::{Bytes, BytesMut};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

use super::stream::Outgoing;
use crate::cache;
use crate::proto::envoy::config::core::v3::ControlPlane;
use crate::proto::DiscoveryRequest;

/// `DiscoveryResponse.control_plane` identifying this server, encoded once.
pub fn control_plane_field() -> Bytes {
    let cp = ControlPlane { identifier: format!("cloudmap-mcp/{}", env!("CARGO_PKG_VERSION")) };
    let mut buf = BytesMut::new();
    prost::encoding::message::encode(6, &cp, &mut buf);
    buf.freeze()
}

#[derive(Clone)]
pub struct AdsCodec {
    control_plane: Bytes,
}

impl AdsCodec {
    pub fn new(control_plane: Bytes) -> Self {
        AdsCodec { control_plane }
    }
}

impl Codec for AdsCodec {
    type Encode = Outgoing;
    type Decode = DiscoveryRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder { control_plane: self.control_plane.clone() }
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

pub struct OutgoingEncoder {
    control_plane: Bytes,
}

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = encoded_len(&item, &self.control_plane);
        buf.reserve(len);
        cache::encode_response(&item.body, &item.type_url, &item.nonce, &self.control_plane, buf);
        Ok(())
    }
}

/// Encoded size of the response `item` becomes.
pub fn encoded_len(item: &Outgoing, control_plane: &[u8]) -> usize {
    cache::encoded_response_len(&item.body, &item.type_url, &item.nonce, control_plane)
}

/// Decodes what [`OutgoingEncoder`] writes, for tests.
pub fn encode_to_vec(item: &Outgoing, control_plane: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(encoded_len(item, control_plane));
    cache::encode_response(&item.body, &item.type_url, &item.nonce, control_plane, &mut v);
    debug_assert!(crate::proto::DiscoveryResponse::decode(v.as_slice()).is_ok());
    v
}
