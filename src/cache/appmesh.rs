//! The App Mesh layer of a resource snapshot: the Istio routing translated from the
//! `--appmesh-file` model against the ServiceEntries being served, encoded per kind; and the
//! served ServiceEntries' ports given the virtual nodes' listener protocols.
//!
//! Without an App Mesh model nothing here runs and the ServiceEntries are exactly the build's.
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::{encode_entry, EncodedType, ResourceSnapshot};
use crate::appmesh::istio::{Kind, Outcome, ReportEntry};
use crate::appmesh::model::AppMesh;
use crate::appmesh::{encode, translate as am};

/// The App Mesh model, replaced when an `--appmesh-file` changes.
pub type AppMeshRx = watch::Receiver<Arc<AppMesh>>;

/// What a snapshot serves from App Mesh.
#[derive(Debug, Default)]
pub struct AppMeshServed {
    /// Encoded objects per kind (kinds with no object are absent: served empty).
    pub types: BTreeMap<Kind, Arc<EncodedType>>,
    /// The migration report.
    pub report: Vec<ReportEntry>,
    /// The translated objects, for `/debug/appmesh`.
    pub objects: Vec<crate::appmesh::istio::Object>,
    /// Port protocols the virtual nodes give the served hosts (applied to the ServiceEntries).
    pub port_protocols: BTreeMap<String, BTreeMap<u32, crate::appmesh::model::Protocol>>,
}

impl AppMeshServed {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.report.iter().filter(|r| r.outcome == outcome).count()
    }
}

/// Framed resources and their (name, version), sorted by name.
type Encoded = (Vec<Bytes>, Vec<(Arc<str>, Arc<str>)>);

/// Adds the App Mesh layer for `mesh` to `snap`.
pub(super) fn apply(mesh: &AppMesh, snap: &mut ResourceSnapshot) {
    let mut entries = snap.translation().entries;
    let t = am::translate(mesh, &entries, &snap.options.istio_namespace);
    let mut by_kind: BTreeMap<Kind, Encoded> = BTreeMap::new();
    let mut objects = t.objects.clone();
    objects.sort_by_key(|o| (o.kind, o.resource_name()));
    for o in &objects {
        let (framed, version) = encode::encode(o);
        let e = by_kind.entry(o.kind).or_default();
        e.0.push(framed);
        e.1.push((o.resource_name().into(), version.into()));
    }
    let types = by_kind.into_iter().map(|(k, (r, n))| (k, Arc::new(EncodedType::new(r, n)))).collect();
    if !t.port_protocols.is_empty() {
        let before = entries.clone();
        am::apply_port_protocols(&mut entries, &t.port_protocols);
        let served = &snap.service_entries;
        let mut resources = served.resources.clone();
        let mut names = served.names.clone();
        for (old, new) in before.iter().zip(&entries) {
            if old == new {
                continue;
            }
            let name = new.resource_name();
            if let Ok(i) = names.binary_search_by(|(n, _)| (**n).cmp(name.as_str())) {
                let (framed, version) = encode_entry(new);
                resources[i] = framed;
                names[i] = (names[i].0.clone(), version.into());
            }
        }
        snap.service_entries = Arc::new(EncodedType::new(resources, names));
    }
    snap.appmesh = Arc::new(AppMeshServed { types, report: t.report, objects, port_protocols: t.port_protocols });
}
