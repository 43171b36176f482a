//! A VM disk's on-host bookkeeping, shared by both drivers: the generation file written beside
//! each disk a host creates, the check that a start uses the VM's own disk, the archive that
//! stale copies move to (never deleted unasked), the backing file named in a qcow2 header,
//! and the runner of `qemu-img` both drivers' disk work uses.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DiskError, io_error};
use crate::files::read_present;
pub use crate::files::valid_id;

/// The file beside a VM's disk holding the disk's generation, in decimal.
pub const GENERATION_FILE: &str = "disk.gen";

/// The generation of the disk in `dir`; 0 when no generation file is there (disks created
/// before hosts wrote one, whose VMs are generation 0 too).
pub fn read_generation(dir: &Path) -> Result<u64, DiskError> {
    let path = dir.join(GENERATION_FILE);
    let Some(bytes) = read_present(&path).map_err(io_error(&path))? else {
        return Ok(0);
    };
    // A garbled file is this disk's problem, not the host's: it reads as a generation no VM
    // has, so the disk is never used and its VM shows why.
    Ok(String::from_utf8_lossy(&bytes)
        .trim()
        .parse()
        .unwrap_or(UNREADABLE_GENERATION))
}

/// The generation a garbled generation file reads as.
pub const UNREADABLE_GENERATION: u64 = u64::MAX;

/// Writes the generation file through a temporary file, fsynced, so it is whole or absent.
pub fn write_generation(dir: &Path, generation: u64) -> Result<(), DiskError> {
    let path = dir.join(GENERATION_FILE);
    let tmp = dir.join(format!("{GENERATION_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, format!("{generation}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    Ok(write().map_err(io_error(&path))?)
}

/// Checks that `dir` holds the VM's own disk: present, of the generation asked. A driver
/// starts QEMU on nothing else, so no start can ever make or use a blank or stale disk.
pub fn check_own(id: &str, dir: &Path, disk: &str, generation: u64) -> Result<(), DiskError> {
    if !dir.join(disk).is_file() {
        return Err(DiskError::NoDisk(id.to_owned()));
    }
    let found = read_generation(dir)?;
    if found != generation {
        return Err(DiskError::WrongGeneration {
            id: id.to_owned(),
            found,
            expected: generation,
        });
    }
    Ok(())
}

/// Where stale copies go: `vms-archive/` beside the VM root, outside it, so an archived copy
/// is never observed as a VM.
pub fn archive_root(root: &Path) -> PathBuf {
    root.with_file_name(format!(
        "{}-archive",
        root.file_name()
            .map_or("vms".into(), |n| n.to_string_lossy())
    ))
}

/// Moves the VM's directory, disk included, to `ARCHIVE/ID-genG-UNIXSECONDS` and returns that
/// path. The caller makes sure nothing runs on it.
pub fn archive(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    if !valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    let dir = root.join(id);
    let generation = read_generation(&dir)?;
    archive_dir(root, &dir, &format!("{id}-gen{generation}"))
}

/// Moves `dir` to `ARCHIVE/NAME-UNIXSECONDS` (`.N` added while taken) and returns that path.
pub fn archive_dir(root: &Path, dir: &Path, name: &str) -> Result<PathBuf, DiskError> {
    let archive = archive_root(root);
    std::fs::create_dir_all(&archive).map_err(io_error(&archive))?;
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut target = archive.join(format!("{name}-{seconds}"));
    let mut n = 1;
    while target.exists() {
        target = archive.join(format!("{name}-{seconds}.{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target).map_err(io_error(dir))?;
    Ok(target)
}

/// Runs `qemu-img ARGS`; an error says what failed (`what`) with qemu-img's own words.
pub(crate) async fn qemu_img(what: &str, args: &[&std::ffi::OsStr]) -> Result<String, DiskError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| {
            DiskError::QemuImg(format!(
                "cannot run qemu-img (apt-get install qemu-utils): {e}"
            ))
        })?;
    if !output.status.success() {
        return Err(DiskError::QemuImg(format!(
            "qemu-img {what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The backing file a qcow2 image names in its header: `None` when the file is not there or
/// is not a qcow2 image with one. A failed read is an error, never "no backing file".
pub fn backing_file(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut header = [0u8; 20];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &header[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let size = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return Ok(None);
    }
    let mut name = vec![0u8; size];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    file.read_exact(&mut name)?;
    Ok(Some(PathBuf::from(
        String::from_utf8_lossy(&name).into_owned(),
    )))
}

/// Every backing file named by a disk under the VM root or its archive: blobs that must never
/// be collected, whatever the desired state says. Any failure to look is an error, so that
/// the caller collects nothing rather than a blob a disk it could not read still needs.
pub fn backing_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [root.to_path_buf(), archive_root(root)] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            if let Some(backing) = backing_file(&entry?.path().join("disk.qcow2"))? {
                files.push(backing);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_written_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_generation(dir.path()).unwrap(), 0, "none yet");
        assert!(matches!(
            check_own("vm-1", dir.path(), "disk.img", 0),
            Err(DiskError::NoDisk(_))
        ));
        std::fs::write(dir.path().join("disk.img"), b"").unwrap();
        write_generation(dir.path(), 3).unwrap();
        assert_eq!(read_generation(dir.path()).unwrap(), 3);
        check_own("vm-1", dir.path(), "disk.img", 3).unwrap();
        assert!(matches!(
            check_own("vm-1", dir.path(), "disk.img", 4),
            Err(DiskError::WrongGeneration {
                found: 3,
                expected: 4,
                ..
            })
        ));
    }

    #[test]
    fn archiving_moves_a_copy_out_of_the_root_whole() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vms");
        std::fs::create_dir_all(root.join("vm-2")).unwrap();
        std::fs::write(root.join("vm-2/disk.img"), b"data").unwrap();
        write_generation(&root.join("vm-2"), 2).unwrap();
        let first = archive(&root, "vm-2").unwrap();
        assert!(!root.join("vm-2").exists());
        assert_eq!(first.parent().unwrap(), top.path().join("vms-archive"));
        assert!(
            first
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vm-2-gen2-")
        );
        assert_eq!(std::fs::read(first.join("disk.img")).unwrap(), b"data");
        // A second copy archived in the same second gets its own name.
        std::fs::create_dir_all(root.join("vm-2")).unwrap();
        write_generation(&root.join("vm-2"), 2).unwrap();
        let second = archive(&root, "vm-2").unwrap();
        assert_ne!(first, second);
        assert!(first.exists() && second.exists());
    }

    #[test]
    fn the_backing_file_is_read_from_a_qcow2_header() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.qcow2");
        let name = b"/var/lib/hearth/images/abc";
        let mut header = vec![0u8; 200];
        header[..4].copy_from_slice(b"QFI\xfb");
        header[8..16].copy_from_slice(&100u64.to_be_bytes());
        header[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        header[100..100 + name.len()].copy_from_slice(name);
        std::fs::write(&disk, &header).unwrap();
        assert_eq!(
            backing_file(&disk).unwrap(),
            Some(PathBuf::from("/var/lib/hearth/images/abc"))
        );
        std::fs::write(&disk, b"not a qcow2 image at all").unwrap();
        assert_eq!(backing_file(&disk).unwrap(), None);
        // A directory where the disk should be cannot be read: an error, not "no backing".
        std::fs::remove_file(&disk).unwrap();
        std::fs::create_dir(&disk).unwrap();
        assert!(backing_file(&disk).is_err());
    }
}
