//! The registry file: YAML that mirrors Cloud Map (namespaces → services → instances).
//!
//! ```yaml
//! namespaces:
//!   - name: my-namespace
//!     type: HTTP                 # HTTP | DNS_PRIVATE | DNS_PUBLIC
//!     services:
//!       - name: getmesh-external-service
//!         createDate: "2021-06-01T00:00:00Z"
//!         instances:
//!           - id: getmesh-1
//!             attributes: {AWS_INSTANCE_IPV4: 52.192.72.89}
//! ```
//!
//! [`watch`] re-reads the file on an interval; a broken edit is logged with its position and the last
//! good snapshot stays in place.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::SnapshotTx;
use crate::metrics::Metrics;
use crate::model::{self, HealthStatus, NamespaceType, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read registry file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("registry file {path}: {at}: {message}")]
    Invalid { path: PathBuf, at: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    #[serde(default)]
    namespaces: Vec<FileNamespace>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileNamespace {
    name: String,
    #[serde(rename = "type")]
    kind: NamespaceType,
    id: Option<String>,
    arn: Option<String>,
    http_name: Option<String>,
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileService {
    name: String,
    id: Option<String>,
    arn: Option<String>,
    create_date: Option<String>,
    #[serde(default)]
    instances: Vec<FileInstance>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileInstance {
    id: String,
    #[serde(default, deserialize_with = "scalar_map")]
    attributes: BTreeMap<String, String>,
    health_status: Option<HealthStatus>,
}

/// Attribute values are strings in Cloud Map; accept YAML numbers and booleans too (`AWS_INSTANCE_PORT: 8080`).
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Parses registry file contents. `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<model::Snapshot, RegistryFileError> {
    let path_buf = || path.to_path_buf();
    let file: FileRegistry = if text.trim().is_empty() {
        FileRegistry { namespaces: Vec::new() }
    } else {
        serde_yaml::from_str(text).map_err(|e| RegistryFileError::Parse { path: path_buf(), message: e.to_string() })?
    };
    let invalid = |at: String, message: String| RegistryFileError::Invalid { path: path_buf(), at, message };

    let mut seen_ns = HashSet::new();
    let mut namespaces = Vec::with_capacity(file.namespaces.len());
    for (ni, ns) in file.namespaces.into_iter().enumerate() {
        let at = format!("namespaces[{ni}] ({:?})", ns.name);
        if ns.name.trim().is_empty() {
            return Err(invalid(at, "namespace name is empty".into()));
        }
        if !seen_ns.insert(ns.name.clone()) {
            return Err(invalid(at, "namespace name appears twice".into()));
        }
        let mut seen_svc = HashSet::new();
        let mut services = Vec::with_capacity(ns.services.len());
        for (si, svc) in ns.services.into_iter().enumerate() {
            let at = format!("{at}.services[{si}] ({:?})", svc.name);
            if svc.name.trim().is_empty() {
                return Err(invalid(at, "service name is empty".into()));
            }
            if !seen_svc.insert(svc.name.clone()) {
                return Err(invalid(at, "service name appears twice in this namespace".into()));
            }
            let create_date = match &svc.create_date {
                None => None,
                Some(d) => Some(
                    Timestamp::parse_rfc3339(d)
                        .map_err(|e| invalid(at.clone(), format!("createDate {d:?} is not an RFC 3339 date-time: {e}")))?,
                ),
            };
            let mut seen_inst = HashSet::new();
            let mut instances = Vec::with_capacity(svc.instances.len());
            for (ii, inst) in svc.instances.into_iter().enumerate() {
                if inst.id.trim().is_empty() {
                    return Err(invalid(format!("{at}.instances[{ii}]"), "instance id is empty".into()));
                }
                if !seen_inst.insert(inst.id.clone()) {
                    return Err(invalid(
                        format!("{at}.instances[{ii}] ({:?})", inst.id),
                        "instance id appears twice in this service".into(),
                    ));
                }
                instances.push(model::Instance {
                    id: inst.id,
                    attributes: inst.attributes,
                    health: inst.health_status.unwrap_or_default(),
                });
            }
            services.push(model::Service { name: svc.name, id: svc.id, arn: svc.arn, create_date, instances });
        }
        namespaces.push(model::Namespace {
            http_name: ns.http_name.unwrap_or_else(|| ns.name.clone()),
            name: ns.name,
            id: ns.id,
            arn: ns.arn,
            kind: ns.kind,
            services,
        });
    }
    let mut snap = model::Snapshot { namespaces };
    snap.normalize();
    Ok(snap)
}

/// Reads and parses the file.
pub fn load(path: &Path) -> Result<model::Snapshot, RegistryFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| RegistryFileError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Publishes `initial`, then polls the file every `interval` and publishes each new good version.
/// Errors keep the last good snapshot. Returns when every receiver is gone.
pub async fn watch(path: PathBuf, interval: Duration, initial: model::Snapshot, tx: SnapshotTx, metrics: Arc<Metrics>) {
    let mut last_bytes = std::fs::read(&path).ok();
    let _ = tx.send(Some(Arc::new(initial)));
    metrics.source_loaded("file");
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tx.closed() => return,
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if !failing {
                    tracing::error!(path = %path.display(), error = %e, "cannot read registry file; still serving the last good version");
                    metrics.source_error("file");
                    failing = true;
                }
                continue;
            }
        };
        if last_bytes.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last_bytes = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match parse(&path, &text) {
            Ok(snap) => {
                failing = false;
                tracing::info!(
                    path = %path.display(),
                    namespaces = snap.namespaces.len(),
                    services = snap.service_count(),
                    instances = snap.instance_count(),
                    "registry file reloaded"
                );
                metrics.source_loaded("file");
                tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&snap) {
                        false
                    } else {
                        *cur = Some(Arc::new(snap));
                        true
                    }
                });
            }
            Err(e) => {
                failing = true;
                metrics.source_error("file");
                tracing::error!(error = %e, "registry file edit rejected; still serving the last good version");
            }
        }
    }
}
