//! Members' VMs on the agent side: the leader's placement, the per-host reconciler (pure),
//! the host loop that drives QEMU through `hearth-compute`, and the local image store.

pub mod blobs;
pub mod host;
pub mod leader;
pub mod placement;
pub mod reconcile;

use std::sync::atomic::AtomicU64;

/// Counters of this node's host loop, served in `/metrics`.
#[derive(Debug, Default)]
pub struct ComputeMetrics {
    /// Reconciliation passes completed.
    pub passes: AtomicU64,
    /// QEMU processes started.
    pub starts: AtomicU64,
    /// QEMU processes that exited without being asked to.
    pub crashes: AtomicU64,
}
