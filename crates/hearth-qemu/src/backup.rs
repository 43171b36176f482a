//! A point-in-time copy of a VM's disk, for a backup, kept beside it as of its last backup
//! (`last_backup`). While QEMU runs, `blockdev-backup` copies the disk, its image beneath
//! included, as it was when the job began: QEMU saves each block the guest is about to
//! overwrite first, so the guest never stops and the copy is crash-consistent; after the
//! first run, only the blocks written since the last are read. Without QEMU, `qemu-img
//! convert` reads the whole disk file into the copy. The VM's own disk is never written.
//! A restore's disk is made from a dumped copy by `prepare_restore`.

use serde_json::Value;
use std::path::Path;

pub use crate::last_backup::Copied;

use crate::driver::Driver;
use crate::error::{ControlError, DiskError, io_error};

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the copy of {id}'s disk failed: {message}")]
    Job { id: String, message: String },
}

/// A restored disk made ready beside VM `id`'s directory, never in it: the raw copy at
/// `raw` (a backup dumped back) written as a qcow2 overlay on `base` (the image the VM's
/// disk is an overlay on, of `format`; `qemu-img convert -B` keeps only what differs from
/// it) into a fresh `ID.restored/` (`moving::restored_dir`), which `moving::adopt_from`
/// makes the VM's disk once the cluster has recorded the restore. Returns its path.
pub async fn prepare_restore(
    root: &Path,
    id: &str,
    disk: &str,
    raw: &Path,
    base: &Path,
    format: &str,
) -> Result<std::path::PathBuf, DiskError> {
    let dir = crate::moving::restored_dir(root, id)?;
    crate::files::remove_vm_dir(&dir)?;
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let target = dir.join(disk);
    let args: [&std::ffi::OsStr; 12] = [
        "convert".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format.as_ref(),
        "-B".as_ref(),
        base.as_os_str(),
        raw.as_os_str(),
        target.as_os_str(),
    ];
    if let Err(error) = crate::disk::qemu_img("convert", &args).await {
        let _ = crate::files::remove_vm_dir(&dir);
        return Err(error);
    }
    // On disk before the cluster records it as the VM's: a power cut after that record
    // must not leave a disk with a good header and missing data.
    for path in [&target, &dir] {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_error(path))?;
    }
    Ok(target)
}

impl Driver {
    /// Brings VM `id`'s copy in `dir` (`last_backup::dir`) up to date with its disk as it is
    /// now. A running guest runs on through the copy.
    pub async fn copy_disk(&self, id: &str, dir: &Path) -> Result<Copied, CopyError> {
        match self.pid(id) {
            Some(_) => self.copy_running(id, dir).await,
            None => self.copy_stopped(id, dir).await,
        }
    }

    async fn copy_running(&self, id: &str, dir: &Path) -> Result<Copied, CopyError> {
        let mut qmp = self.qmp(id).await?;
        let jobs = (qmp.execute("query-jobs", None).await).map_err(ControlError::from)?;
        let mirroring = jobs
            .as_array()
            .into_iter()
            .flatten()
            .any(|j| j["id"] == crate::replica::JOB);
        if mirroring {
            // QEMU lets no second job read a disk its mirror holds.
            return Err(CopyError::Job {
                id: id.to_owned(),
                message: "its disk is in use by the mirror into its second copy, which QEMU lets no backup read; once that copy is in sync the replica's host takes the backup from it".into(),
            });
        }
        let node = crate::live::disk_node(&mut qmp).await?;
        crate::last_backup::copy_node(&mut qmp, id, &node, dir).await
    }

    /// Brings the copy in `dir` up to date with the replica this host keeps of VM `id`
    /// (`ID.replica/`, exported by its `qemu-storage-daemon`) as it is now: the same job as
    /// a running VM's copy, run by the daemon, so writes mirrored into the replica meanwhile
    /// land after the copy's point in time. For a VM whose QEMU mirrors its disk, which QEMU
    /// lets no second job read. Returns what the copy did and the replica's `since` and disk
    /// generation as written beside it.
    pub async fn copy_replica(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<(Copied, (u64, u64)), CopyError> {
        let replica = crate::replica::replica_dir(self.root(), id)?;
        let Some(written) = crate::replica::live_replica(&replica)
            .map_err(io_error(&replica))
            .map_err(ControlError::from)?
        else {
            return Err(CopyError::Job {
                id: id.to_owned(),
                message: "this host keeps no live replica of it".into(),
            });
        };
        let socket = replica.join("qmp.sock");
        let node = crate::replica::DAEMON_NODE;
        let copied = crate::last_backup::copy(&socket, id, node, dir).await?;
        Ok((copied, written))
    }

    /// `qemu-img convert` of the disk at rest (the qcow2 file, or a fresh snapshot of the
    /// image on RBD its handle names, dropped after) into the copy, whole; the next copy
    /// while QEMU runs is whole too.
    async fn copy_stopped(&self, id: &str, dir: &Path) -> Result<Copied, CopyError> {
        let vm = self.dir(id);
        let Some((pool, image)) = crate::rbd::read_handle(&vm) else {
            if !vm.join("disk.qcow2").is_file() {
                return Err(DiskError::NoDisk(id.to_owned()).into());
            }
            let disk = vm.join("disk.qcow2").display().to_string();
            return self.copy_at_rest(id, dir, (&disk, "qcow2")).await;
        };
        // A VM on RBD may be started meanwhile, here or elsewhere, and nothing would stop
        // it writing while the copy reads: the copy reads a snapshot instead.
        let ceph = self.ceph()?;
        let snap = ceph.backup_snapshot(&pool, &image).await?;
        let disk = ceph.qemu_file(&pool, &format!("{image}@{snap}"));
        let copied = self.copy_at_rest(id, dir, (&disk, "raw")).await;
        if let Err(error) = ceph.drop_backup_snapshots(&pool, &image).await {
            // The next backup, or the image's removal, drops it.
            tracing::warn!(vm = id, %error, "dropping a backup's RBD snapshot");
        }
        copied
    }

    /// `qemu-img convert` of `disk` (of `format`), which nothing writes meanwhile, into the
    /// copy in `dir`, whole.
    async fn copy_at_rest(
        &self,
        id: &str,
        dir: &Path,
        (disk, format): (&str, &str),
    ) -> Result<Copied, CopyError> {
        let info = crate::disk::qemu_img(
            "info",
            &[
                "info".as_ref(),
                "--output=json".as_ref(),
                "-U".as_ref(),
                "-f".as_ref(),
                format.as_ref(),
                disk.as_ref(),
            ],
        )
        .await?;
        let size = serde_json::from_str::<Value>(&info)
            .ok()
            .and_then(|v| v["virtual-size"].as_u64())
            .ok_or_else(|| {
                DiskError::QemuImg(format!("qemu-img info of {id}'s disk gave no size"))
            })?;
        // A whole copy into empty parts, writing only what is not zero: a disk at rest may
        // not be the one the copy's bitmap was on (a disk put back from the archive), so
        // what the copy was made with is forgotten.
        crate::last_backup::room_for(dir, size)?;
        crate::last_backup::make_empty(dir, size)?;
        let descriptor = dir.join(crate::last_backup::DESCRIPTOR);
        crate::disk::qemu_img(
            "convert",
            &[
                "convert".as_ref(),
                "-n".as_ref(),
                "--target-is-zero".as_ref(),
                "-f".as_ref(),
                format.as_ref(),
                "-O".as_ref(),
                "vmdk".as_ref(),
                disk.as_ref(),
                descriptor.as_os_str(),
            ],
        )
        .await?;
        Ok(Copied {
            size,
            read: size,
            incremental: false,
        })
    }
}
