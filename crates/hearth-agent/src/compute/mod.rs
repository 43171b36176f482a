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

/// Every ten minutes, removes image files that nothing refers to any more (after `hearth
/// image rm`, or a new version of an image whose old one no VM uses), on every node that keeps
/// them. A blob stays while an image or any VM's base refers to it, or any disk on this host
/// (the archive's included) names it as its backing file.
pub async fn collect_image_garbage(
    state: hearth_state::node::StateNode,
    blobs: blobs::BlobStore,
    vms_root: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(600);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let desired = state.reader().current();
        let store = blobs.clone();
        let root = vms_root.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let referenced = referenced_blobs(&desired.compute, &root);
            store.collect_garbage(&referenced, EVERY)
        })
        .await
        .unwrap_or_default();
        for sha256 in removed {
            tracing::info!(%sha256, "removed an image file no image refers to");
        }
    }
}

/// The blobs no node may remove: those of every image, of every VM's own base (an older
/// version of an image, say), and every backing file of a disk under `vms_root` or its
/// archive.
pub fn referenced_blobs(
    compute: &hearth_types::compute::Compute,
    vms_root: &std::path::Path,
) -> std::collections::BTreeSet<String> {
    let images = compute.images.values().map(|image| &image.value);
    let bases = compute.vms.values().filter_map(|vm| vm.value.base.as_ref());
    let mut referenced: std::collections::BTreeSet<String> = images
        .chain(bases)
        .flat_map(|image| image.blobs().map(|b| b.sha256.clone()))
        .collect();
    // By file name alone: a disk made when the data dir had another path still counts.
    for backing in hearth_compute::disk::backing_files(vms_root) {
        if let Some(name) = backing.file_name() {
            referenced.insert(name.to_string_lossy().into_owned());
        }
    }
    referenced
}
