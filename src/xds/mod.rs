//! The ADS server: a sans-IO state machine per stream ([`stream`]) inside a thin tonic layer
//! ([`service`]), writing pre-encoded responses ([`codec`]).
pub mod codec;
pub mod service;
pub mod stream;

pub use service::{AdsConfig, AdsServer, ClientInfo, Clients};
