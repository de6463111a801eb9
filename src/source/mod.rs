//! Sources of model snapshots. Each publishes complete [`Snapshot`]s on a `watch` channel; `None`
//! means "not loaded yet" and holds the xDS server back (it answers nothing until the first snapshot).
use std::sync::Arc;

use tokio::sync::watch;

use crate::model::Snapshot;

pub mod cloudmap;
pub mod file;

pub type SnapshotTx = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

pub fn channel() -> (SnapshotTx, SnapshotRx) {
    watch::channel(None)
}
