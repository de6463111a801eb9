//! The served entries read back: one encoded `resources` entry (see [`super::encode_entry`])
//! decoded into the metadata and spec it was made from. The debug views show what is served this
//! way, entry by entry, instead of translating the whole model again.
use std::collections::BTreeMap;

use prost::Message;

use crate::proto::RESOURCES_FIELD;
use crate::proto::istio::mcp::v1alpha1 as mcp;
use crate::proto::istio::networking::v1alpha3 as net;
use crate::proto::{MCP_RESOURCE_TYPE_URL, SERVICE_ENTRY_BODY_TYPE_URL};
use crate::translate::render::Shown;
use crate::translate::{Endpoint, Location, Port, Resolution, ServiceEntrySpec};

/// An encoded entry that does not read back as one of ours (a bug: the entry was encoded here).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a framed DiscoveryResponse.resources field")]
    Frame,
    #[error("malformed protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("unexpected type URL {0:?}")]
    TypeUrl(String),
    #[error("resource {name:?}: {what}")]
    Content { name: String, what: &'static str },
}

/// One served ServiceEntry: what the debug view shows of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedEntry {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: ServiceEntrySpec,
}

impl ServedEntry {
    pub fn shown(&self) -> Shown<'_> {
        Shown {
            name: &self.name,
            namespace: &self.namespace,
            labels: &self.labels,
            annotations: &self.annotations,
            spec: &self.spec,
        }
    }
}

/// Reads back one framed `resources` entry.
pub fn decode_entry(mut framed: &[u8]) -> Result<ServedEntry, DecodeError> {
    let (field, wire) = prost::encoding::decode_key(&mut framed)?;
    if field != RESOURCES_FIELD || wire != prost::encoding::WireType::LengthDelimited {
        return Err(DecodeError::Frame);
    }
    if prost::encoding::decode_varint(&mut framed)? != framed.len() as u64 {
        return Err(DecodeError::Frame);
    }
    let any = prost_types::Any::decode(framed)?;
    if any.type_url != MCP_RESOURCE_TYPE_URL {
        return Err(DecodeError::TypeUrl(any.type_url));
    }
    let resource = mcp::Resource::decode(any.value.as_slice())?;
    let meta = resource.metadata.unwrap_or_default();
    let content = |what| DecodeError::Content { name: meta.name.clone(), what };
    let (namespace, name) = meta.name.split_once('/').ok_or_else(|| content("no namespace/ in the name"))?;
    let body = resource.body.ok_or_else(|| content("no body"))?;
    if body.type_url != SERVICE_ENTRY_BODY_TYPE_URL {
        return Err(DecodeError::TypeUrl(body.type_url));
    }
    let spec = from_proto(net::ServiceEntry::decode(body.value.as_slice())?).map_err(content)?;
    Ok(ServedEntry {
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels: meta.labels,
        annotations: meta.annotations,
        spec,
    })
}

/// The inverse of [`super::to_proto`].
pub fn from_proto(se: net::ServiceEntry) -> Result<ServiceEntrySpec, &'static str> {
    use net::service_entry::{Location as L, Resolution as R};
    Ok(ServiceEntrySpec {
        location: match L::try_from(se.location) {
            Ok(L::MeshExternal) => Location::MeshExternal,
            Ok(L::MeshInternal) => Location::MeshInternal,
            Err(_) => return Err("unknown location"),
        },
        resolution: match R::try_from(se.resolution) {
            Ok(R::Static) => Resolution::Static,
            Ok(R::Dns) => Resolution::Dns,
            _ => return Err("a resolution this server does not emit"),
        },
        hosts: se.hosts,
        addresses: se.addresses,
        ports: se.ports.into_iter().map(|p| Port { number: p.number, name: p.name, protocol: p.protocol }).collect(),
        endpoints: se
            .endpoints
            .into_iter()
            .map(|e| Endpoint { address: e.address, ports: e.ports, labels: e.labels, locality: e.locality })
            .collect(),
        export_to: se.export_to,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::source::file;
    use crate::translate::{self, Options};

    /// Every entry of the example registry and the translation test registries reads back as the
    /// entry it was encoded from.
    #[test]
    fn encoded_entries_read_back_as_translated() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut inputs = vec![root.join("examples/registry.yaml")];
        for name in ["ports", "mapping", "overrides", "invalid"] {
            inputs.push(root.join(format!("src/translate/testdata/{name}.registry.yaml")));
        }
        let mut checked = 0;
        for input in inputs {
            let mut opts = Options::default();
            let mapping = input.with_file_name(input.file_name().unwrap().to_str().unwrap().replace(".registry.yaml", ".mapping.yaml"));
            if mapping != input && mapping.exists() {
                opts.mapping = Arc::new(translate::mapping::parse(&std::fs::read_to_string(&mapping).unwrap()).unwrap());
            }
            let t = translate::translate(&file::load(&input).unwrap(), &opts);
            for se in &t.entries {
                let got = decode_entry(&super::super::encode_entry(se).0).unwrap();
                let want = ServedEntry {
                    name: se.name.clone(),
                    namespace: se.namespace.clone(),
                    labels: se.labels.clone(),
                    annotations: se.annotations.clone(),
                    spec: se.spec.clone(),
                };
                assert_eq!(got, want, "{}", input.display());
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} entries");
    }

    #[test]
    fn what_is_not_an_entry_is_an_error() {
        assert!(matches!(decode_entry(b""), Err(DecodeError::Proto(_))));
        assert!(matches!(decode_entry(&[0x12, 0x05, 0x0a]), Err(DecodeError::Frame)), "length past the end");
        assert!(matches!(decode_entry(&[0x0a, 0x00]), Err(DecodeError::Frame)), "another field");
        let any = prost_types::Any { type_url: "type.googleapis.com/other".into(), value: vec![] };
        let mut framed = vec![0x12, any.encoded_len() as u8];
        any.encode(&mut framed).unwrap();
        assert!(matches!(decode_entry(&framed), Err(DecodeError::TypeUrl(_))));
    }
}
