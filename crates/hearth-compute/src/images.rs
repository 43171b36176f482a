//! The image files on this node: fetching one from a member that has it, the servers' copies
//! of every referenced image file, and the collection of files nothing refers to.

use crate::blobs;

/// Why an image file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The local store could not take it.
    #[error("{0}")]
    Store(#[from] blobs::BlobError),
    /// No member served it whole.
    #[error("{0}")]
    Peer(#[from] hearth_state::files::PeerError),
}

/// Fetches blob `sha256` from a group member that has it into the local store, verified by
/// hash before it gets its name. Returns its size.
pub async fn fetch_blob(
    state: &hearth_state::node::StateNode,
    store: &blobs::BlobStore,
    sha256: &str,
) -> Result<u64, FetchError> {
    let mut writer = store.writer(sha256)?;
    match state
        .fetch_blob(sha256, |chunk| {
            writer.write(chunk).map_err(|e| e.to_string())
        })
        .await
    {
        Ok(size) => {
            writer.finish()?;
            Ok(size)
        }
        Err(error) => {
            writer.abort();
            Err(error.into())
        }
    }
}

/// On servers: every few seconds, fetches every image file the desired state refers to that
/// this node lacks, so that an image stays available when the node it was uploaded to is
/// gone (a worker fetches from any member that has a copy).
pub async fn replicate_images(
    state: hearth_state::node::StateNode,
    store: blobs::BlobStore,
    shutdown: tokio_util::sync::CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let desired = state.reader().current();
        let images = desired.compute.images.values().map(|image| &image.value);
        let bases = desired
            .compute
            .vms
            .values()
            .filter_map(|vm| vm.value.base.as_ref());
        let missing: std::collections::BTreeSet<String> = images
            .chain(bases)
            .flat_map(|image| image.blobs())
            .filter(|blob| !store.has(&blob.sha256))
            .map(|blob| blob.sha256.clone())
            .collect();
        for sha256 in missing {
            match fetch_blob(&state, &store, &sha256).await {
                Ok(size) => tracing::info!(%sha256, size, "image file copied to this server"),
                Err(error) => tracing::debug!(%sha256, %error, "image file not copied yet"),
            }
        }
    }
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
            match referenced_blobs(&desired.compute, &root) {
                Ok(referenced) => store.collect_garbage(&referenced, EVERY),
                Err(error) => {
                    // Not "nothing refers to them": collect nothing this round.
                    tracing::warn!(%error, "cannot read this host's disks; no image file removed");
                    Vec::new()
                }
            }
        })
        .await
        .unwrap_or_default();
        for sha256 in removed {
            tracing::info!(%sha256, "removed an image file no image refers to");
        }
    }
}

/// The image files the state refers to: those of its images and of its VMs' own bases.
pub fn image_files(compute: &hearth_types::compute::Compute) -> std::collections::BTreeSet<String> {
    let images = compute.images.values().map(|image| &image.value);
    let bases = compute.vms.values().filter_map(|vm| vm.value.base.as_ref());
    images
        .chain(bases)
        .flat_map(|image| image.blobs().map(|b| b.sha256.clone()))
        .collect()
}

/// The blobs no node may remove: those of every image, of every VM's own base (an older
/// version of an image, say), and every backing file of a disk under `vms_root` or its
/// archive.
pub fn referenced_blobs(
    compute: &hearth_types::compute::Compute,
    vms_root: &std::path::Path,
) -> std::io::Result<std::collections::BTreeSet<String>> {
    let mut referenced = image_files(compute);
    // By file name alone: a disk made when the data dir had another path still counts.
    for backing in hearth_qemu::disk::backing_files(vms_root)? {
        if let Some(name) = backing.file_name() {
            referenced.insert(name.to_string_lossy().into_owned());
        }
    }
    Ok(referenced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::{Arch, Blob, Image};

    fn image(sha: char) -> Image {
        Image {
            name: "tiny".into(),
            format: "raw".into(),
            arch: Arch::X86_64,
            disk: Blob {
                sha256: sha.to_string().repeat(64),
                size_bytes: 1,
            },
            kernel: None,
            initrd: None,
            append: None,
        }
    }

    /// No blob that backs a disk is collected: not the old version of an image a VM was made
    /// from, nor a backing file named by a disk on this host that no VM in the state claims
    /// (an archived stale copy, say), read from a qcow2 made by the real `qemu-img`.
    #[test]
    fn blobs_backing_vms_or_local_disks_are_never_collected() {
        let top = tempfile::tempdir().unwrap();
        let store = blobs::BlobStore::new(top.path().join("images"));
        let mut compute = hearth_types::compute::Compute::default();
        compute.images.insert(
            "tiny".into(),
            hearth_types::desired::Versioned {
                version: 2,
                value: image('b'),
            },
        );
        let mut vm = crate::reconcile::tests::vm(
            "vm-1",
            "w1",
            hearth_types::compute::Phase::Running,
            hearth_types::compute::Power::Running,
        );
        vm.value.base = Some(image('a'));
        compute.vms.insert("vm-1".into(), vm);
        // A stale copy in the archive, an overlay on blob `c...`.
        let base = store.path(&"c".repeat(64));
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        std::fs::write(&base, vec![0u8; 65536]).unwrap();
        let archived = top.path().join("vms-archive").join("vm-7-gen1-1");
        std::fs::create_dir_all(&archived).unwrap();
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(archived.join("disk.qcow2"))
            .status()
            .expect("qemu-img (apt-get install qemu-utils)");
        assert!(status.success());
        let referenced = referenced_blobs(&compute, &top.path().join("vms")).unwrap();
        for sha in ['a', 'b', 'c'] {
            assert!(
                referenced.contains(&sha.to_string().repeat(64)),
                "{sha}: {referenced:?}"
            );
        }
        std::fs::write(store.path(&"d".repeat(64)), b"").unwrap();
        let removed = store.collect_garbage(&referenced, std::time::Duration::ZERO);
        assert_eq!(removed, ["d".repeat(64)]);
        assert!(base.is_file());
    }
}
