//! A point-in-time copy of a VM's disk, for a backup. While QEMU runs, `blockdev-backup`
//! (sync=full) copies the whole disk, its image beneath included, as it was when the job
//! began into a new raw file: QEMU saves each block the guest is about to overwrite first,
//! so the guest never stops and the copy is crash-consistent. Without QEMU, `qemu-img
//! convert` reads the disk file. The VM's own disk is never written, and a copy that fails
//! is removed.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::driver::Driver;
use crate::error::{ControlError, DiskError, io_error};
use crate::qmp::Qmp;

/// QEMU ids of the copy's job and its target node.
const JOB: &str = "hearth-backup";
const NODE: &str = "hearth-backup-target";
/// How often the job's state is asked for.
const POLL: Duration = Duration::from_millis(100);

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

/// The root disk's size as the guest sees it, from `query-block`.
async fn virtual_size(qmp: &mut Qmp) -> Result<u64, ControlError> {
    let blocks = qmp.execute("query-block", None).await?;
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["device"] == "disk0")
        .and_then(|b| b["inserted"]["image"]["virtual-size"].as_u64())
        .ok_or_else(|| ControlError::Unexpected(format!("query-block: no disk0 size in {blocks}")))
}

/// The copy job's status and error, if QEMU has the job.
async fn job(qmp: &mut Qmp) -> Result<Option<(String, Option<String>)>, ControlError> {
    let jobs = qmp.execute("query-jobs", None).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["id"] == JOB)
        .map(|j: &Value| {
            (
                j["status"].as_str().unwrap_or("").to_owned(),
                j["error"].as_str().map(str::to_owned),
            )
        }))
}

/// Runs a clean-up command whose failure only means there is nothing to clean.
async fn quietly(qmp: &mut Qmp, command: &str, args: Value) {
    if let Err(error) = qmp.execute(command, Some(args)).await {
        tracing::debug!(command, %error, "nothing to clean up");
    }
}

/// Ends the copy's job, if there is one (cancelled if it still runs), and removes its
/// target node: after a copy, and before one in case an interrupted one left them.
async fn clear(qmp: &mut Qmp) {
    if let Ok(Some((status, _))) = job(qmp).await
        && status != "concluded"
    {
        quietly(qmp, "job-cancel", json!({ "id": JOB })).await;
        for _ in 0..100 {
            match job(qmp).await {
                Ok(Some((status, _))) if status != "concluded" => {
                    tokio::time::sleep(POLL).await;
                }
                _ => break,
            }
        }
    }
    quietly(qmp, "job-dismiss", json!({ "id": JOB })).await;
    quietly(qmp, "blockdev-del", json!({ "node-name": NODE })).await;
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
    /// Copies VM `id`'s disk as it is now into a new raw file `target` (replaced if there),
    /// and returns its size in bytes. A running guest runs on through the copy.
    pub async fn copy_disk(&self, id: &str, target: &Path) -> Result<u64, CopyError> {
        let copied = match self.pid(id) {
            Some(_) => self.copy_running(id, target).await,
            None => self.copy_stopped(id, target).await,
        };
        if copied.is_err() {
            let _ = std::fs::remove_file(target);
        }
        copied
    }

    async fn copy_running(&self, id: &str, target: &Path) -> Result<u64, CopyError> {
        let mut qmp = self.qmp(id).await?;
        clear(&mut qmp).await;
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
        let size = virtual_size(&mut qmp).await?;
        let node = crate::live::disk_node(&mut qmp).await?;
        backup_job(&mut qmp, id, &node, size, target).await
    }

    /// Copies the replica this host keeps of VM `id` (`ID.replica/`, exported by its
    /// `qemu-storage-daemon`) as it is now into a new raw file `target` (removed if the copy
    /// fails): the same job as a running VM's copy, run by the daemon, so writes mirrored
    /// into the replica meanwhile land after the copy's point in time. For a VM whose QEMU
    /// mirrors its disk, which QEMU lets no second job read. Returns the size in bytes and
    /// the replica's `since` and disk generation as written beside it.
    pub async fn copy_replica(
        &self,
        id: &str,
        target: &Path,
    ) -> Result<(u64, (u64, u64)), CopyError> {
        let dir = crate::replica::replica_dir(self.root(), id)?;
        let Some(written) = crate::replica::live_replica(&dir)
            .map_err(io_error(&dir))
            .map_err(ControlError::from)?
        else {
            return Err(CopyError::Job {
                id: id.to_owned(),
                message: "this host keeps no live replica of it".into(),
            });
        };
        let copied = async {
            let mut qmp = Qmp::connect(&dir.join("qmp.sock"))
                .await
                .map_err(ControlError::from)?;
            clear(&mut qmp).await;
            let node = crate::replica::DAEMON_NODE;
            let size = node_size(&mut qmp, node).await?;
            backup_job(&mut qmp, id, node, size, target).await
        }
        .await;
        if copied.is_err() {
            let _ = std::fs::remove_file(target);
        }
        Ok((copied?, written))
    }

    /// `qemu-img convert` of the disk at rest: the qcow2 file, or the image on RBD its
    /// handle names.
    async fn copy_stopped(&self, id: &str, target: &Path) -> Result<u64, CopyError> {
        let dir = self.dir(id);
        let (disk, format) = match crate::rbd::read_handle(&dir) {
            Some((pool, image)) => (self.ceph()?.qemu_file(&pool, &image), "raw"),
            None => (dir.join("disk.qcow2").display().to_string(), "qcow2"),
        };
        if format == "qcow2" && !dir.join("disk.qcow2").is_file() {
            return Err(DiskError::NoDisk(id.to_owned()).into());
        }
        crate::disk::qemu_img(
            "convert",
            &[
                "convert".as_ref(),
                "-f".as_ref(),
                format.as_ref(),
                "-O".as_ref(),
                "raw".as_ref(),
                disk.as_ref(),
                target.as_os_str(),
            ],
        )
        .await?;
        let size = std::fs::metadata(target)
            .map_err(io_error(target))
            .map_err(DiskError::from)?
            .len();
        Ok(size)
    }
}

/// Runs QEMU's `blockdev-backup` of node `node` (of `size` bytes: VM `id`'s disk, or its
/// replica) into a new raw file `target`, and waits for it to end. Returns the size.
async fn backup_job(
    qmp: &mut Qmp,
    id: &str,
    node: &str,
    size: u64,
    target: &Path,
) -> Result<u64, CopyError> {
    let file = std::fs::File::create(target)
        .map_err(io_error(target))
        .map_err(ControlError::from)?;
    file.set_len(size)
        .map_err(io_error(target))
        .map_err(ControlError::from)?;
    drop(file);
    let filename = target.display().to_string();
    qmp.execute(
        "blockdev-add",
        Some(json!({
            "driver": "raw", "node-name": NODE,
            "file": { "driver": "file", "filename": filename },
        })),
    )
    .await
    .map_err(ControlError::from)?;
    let started = qmp
        .execute(
            "blockdev-backup",
            Some(json!({
                "job-id": JOB, "device": node, "target": NODE, "sync": "full",
                "auto-dismiss": false,
            })),
        )
        .await;
    if let Err(error) = started {
        clear(qmp).await;
        return Err(ControlError::from(error).into());
    }
    let outcome = loop {
        match job(qmp).await {
            Ok(Some((status, error))) if status == "concluded" => break error,
            Ok(Some(_)) => tokio::time::sleep(POLL).await,
            Ok(None) => break Some("QEMU dropped the job".to_owned()),
            Err(error) => {
                clear(qmp).await;
                return Err(error.into());
            }
        }
    };
    clear(qmp).await;
    match outcome {
        None => Ok(size),
        Some(message) => Err(CopyError::Job {
            id: id.to_owned(),
            message,
        }),
    }
}

/// The size in bytes of block node `node`, from `query-named-block-nodes`.
async fn node_size(qmp: &mut Qmp, node: &str) -> Result<u64, ControlError> {
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node-name"] == node)
        .and_then(|n| n["image"]["virtual-size"].as_u64())
        .ok_or_else(|| ControlError::Unexpected(format!("no size of node {node} in {nodes}")))
}
