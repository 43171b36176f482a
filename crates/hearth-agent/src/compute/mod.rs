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

/// Every ten minutes, removes image files that no image refers to any more (after
/// `hearth image rm`), on every node that keeps them.
pub async fn collect_image_garbage(
    state: hearth_state::node::StateNode,
    blobs: blobs::BlobStore,
    shutdown: tokio_util::sync::CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(600);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let desired = state.reader().current();
        let referenced = desired
            .compute
            .images
            .values()
            .flat_map(|image| {
                image
                    .value
                    .blobs()
                    .map(|b| b.sha256.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let store = blobs.clone();
        let removed =
            tokio::task::spawn_blocking(move || store.collect_garbage(&referenced, EVERY))
                .await
                .unwrap_or_default();
        for sha256 in removed {
            tracing::info!(%sha256, "removed an image file no image refers to");
        }
    }
}
