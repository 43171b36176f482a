//! A VM's disk moving to another host (cold migration, `docs/migration.md`), on disk: the
//! source reads its disk only while nothing runs on it and it is the generation asked for;
//! the target builds the copy under `ID.incoming/` (a `.` is not valid in a VM id, so no host
//! ever observes it as a VM), points it at its own copy of the base image, writes its new
//! generation, and only then gives it the VM's directory name, in one rename.

use std::path::{Path, PathBuf};

use crate::disk::{check_own, write_generation};
use crate::error::{DiskError, io_error};
use crate::files::{remove_vm_dir, valid_id};

/// Where the copy of VM `id` is built on the target.
pub fn incoming_dir(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    if !valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    Ok(root.join(format!("{id}.incoming")))
}

/// An empty incoming directory for VM `id`. What an earlier attempt left there is removed:
/// it was never the VM's disk, whose home is still the source while a copy is built.
pub fn fresh_incoming(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    let dir = incoming_dir(root, id)?;
    remove_vm_dir(&dir)?;
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    Ok(dir)
}

/// Removes an incoming copy that will not be adopted (the move failed or was given up).
pub fn drop_incoming(root: &Path, id: &str) -> Result<(), DiskError> {
    Ok(remove_vm_dir(&incoming_dir(root, id)?)?)
}

/// The path of VM `id`'s disk file `disk` under `root`, if it is its own disk of
/// `generation`; the caller has made sure nothing runs on it.
pub fn disk_of(root: &Path, id: &str, disk: &str, generation: u64) -> Result<PathBuf, DiskError> {
    if !valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    let dir = root.join(id);
    check_own(id, &dir, disk, generation)?;
    Ok(dir.join(disk))
}

/// Makes the whole copy in the incoming directory VM `id`'s disk of `generation` on this
/// host: for a qcow2 overlay, its backing file becomes `base` (this host's copy of the same
/// verified image, whose path may differ from the source's); then the generation file, the
/// fsyncs, and the rename to `root/id`. A VM directory already there is an error, never
/// overwritten: the caller archives it first.
pub async fn adopt(
    root: &Path,
    id: &str,
    disk: &str,
    generation: u64,
    base: Option<(&Path, &str)>,
) -> Result<PathBuf, DiskError> {
    adopt_from(root, &incoming_dir(root, id)?, id, disk, generation, base).await
}

/// Where a disk restored from a backup is made ready for VM `id` (a `.` is not valid in a
/// VM id, so no host observes it as a VM, and the sweep of moves' copies leaves it).
pub fn restored_dir(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    if !valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    Ok(root.join(format!("{id}.restored")))
}

/// [`adopt`], of the copy in directory `incoming`.
pub async fn adopt_from(
    root: &Path,
    incoming: &Path,
    id: &str,
    disk: &str,
    generation: u64,
    base: Option<(&Path, &str)>,
) -> Result<PathBuf, DiskError> {
    let file = incoming.join(disk);
    if !file.is_file() {
        return Err(DiskError::NoDisk(id.to_owned()));
    }
    if let Some((base, format)) = base {
        rebase(&file, base, format).await?;
    }
    std::fs::File::open(&file)
        .and_then(|f| f.sync_all())
        .map_err(io_error(&file))?;
    write_generation(incoming, generation)?;
    let target = root.join(id);
    if target.exists() {
        return Err(DiskError::Exists(id.to_owned()));
    }
    std::fs::rename(incoming, &target).map_err(io_error(&target))?;
    std::fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io_error(root))?;
    Ok(target)
}

/// Points a qcow2 overlay at another path of the same backing data (`qemu-img rebase -u`:
/// the header only, no data is read or written).
async fn rebase(file: &Path, base: &Path, format: &str) -> Result<(), DiskError> {
    let args: [&std::ffi::OsStr; 9] = [
        "rebase".as_ref(),
        "-u".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format.as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        file.as_os_str(),
    ];
    crate::disk::qemu_img("rebase", &args).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{backing_file, read_generation};

    /// A copy is adopted whole: rebased onto this host's base, with its new generation, under
    /// the VM's name; never over a directory already there; an incoming directory is never a
    /// VM id.
    #[tokio::test]
    async fn an_incoming_copy_becomes_the_vms_disk_in_one_rename() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vms");
        std::fs::create_dir_all(&root).unwrap();
        let (old_base, new_base) = (top.path().join("old-base"), top.path().join("new-base"));
        for base in [&old_base, &new_base] {
            std::fs::write(base, vec![0u8; 65536]).unwrap();
        }
        assert!(incoming_dir(&root, "../x").is_err());
        let incoming = fresh_incoming(&root, "vm-1").unwrap();
        assert!(!valid_id(&incoming.file_name().unwrap().to_string_lossy()));
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&old_base)
            .arg(incoming.join("disk.qcow2"))
            .status()
            .expect("qemu-img (apt-get install qemu-utils)");
        assert!(status.success());
        let adopted = adopt(&root, "vm-1", "disk.qcow2", 4, Some((&new_base, "raw")))
            .await
            .unwrap();
        assert_eq!(adopted, root.join("vm-1"));
        assert!(!incoming.exists());
        assert_eq!(read_generation(&adopted).unwrap(), 4);
        assert_eq!(
            backing_file(&adopted.join("disk.qcow2")).unwrap(),
            Some(new_base.clone())
        );
        assert_eq!(
            disk_of(&root, "vm-1", "disk.qcow2", 4).unwrap(),
            adopted.join("disk.qcow2")
        );
        assert!(disk_of(&root, "vm-1", "disk.qcow2", 3).is_err());

        // A second copy never replaces the directory now there.
        let again = fresh_incoming(&root, "vm-1").unwrap();
        std::fs::write(again.join("disk.img"), b"other").unwrap();
        let refused = adopt(&root, "vm-1", "disk.img", 5, None).await;
        assert!(matches!(refused, Err(DiskError::Exists(_))), "{refused:?}");
        assert_eq!(read_generation(&root.join("vm-1")).unwrap(), 4);
        drop_incoming(&root, "vm-1").unwrap();
        assert!(!again.exists());
    }
}
