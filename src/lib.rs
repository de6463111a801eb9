//! cloudmap-mcp: serves AWS Cloud Map services to istiod as Istio ServiceEntries over MCP-over-xDS.
//!
//! Data flows one way: source (registry file | Cloud Map) → [`model`] snapshot → [`translate`] (pure)
//! → [`cache`] (pre-encoded, versioned) → [`xds`] streams (one per istiod).
pub mod admin;
pub mod app;
pub mod appmesh;
pub mod cache;
pub mod config;
pub mod fuzzing;
pub mod guard;
pub mod metrics;
pub mod model;
pub mod net;
pub mod pacing;
pub mod proto;
pub mod source;
pub mod tls;
pub mod translate;
pub mod util;
pub mod xds;
