//! App Mesh configuration → Istio routing: a second pure input to the translation.
//!
//! [`load`] reads the four forms App Mesh configuration survives in (Kubernetes CRs,
//! CloudFormation, `terraform show -json`, CLI JSON) into one [`model::AppMesh`].
pub mod encode;
pub mod istio;
pub mod load;
mod load_cfn;
mod load_cli;
mod load_k8s;
mod load_tf;
pub mod model;
pub mod node;
pub mod reader;
mod routes;
mod scope;
mod spec;
pub mod translate;
pub mod watch;

pub use load::{load, DEFAULT_MAX_BYTES};
pub use reader::LoadError;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod translate_tests;
