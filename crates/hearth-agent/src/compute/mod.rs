//! Members' VMs on the agent side: the leader's placement, the per-host reconciler (pure),
//! the host loop that drives QEMU through `hearth-compute`, and the local image store.

pub mod blobs;
pub mod placement;
pub mod reconcile;
