//! The files of a VM's directory that both drivers read and remove: the check of a VM id
//! (which names the directory), a read that tells an absent file from a failed read, and the
//! listing and removal of VM directories under a root, and a write that is whole or absent.

use std::path::{Path, PathBuf};

use crate::error::{IoAt, io_error};

/// Writes `bytes` to `path` through a file beside it and a rename: a reader finds the old
/// content or the new, never half of it.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// A VM id names a directory: letters, digits and dashes only.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A file's bytes, or `None` when it is not there (for a process's files: the process is
/// gone, or not ours to read). Any other failure (no file descriptors left, say) is an
/// error: the caller must not take it for an absence.
pub(crate) fn read_present(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) || e.raw_os_error() == Some(3) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Removes a VM's directory, disk included; one already gone is removed.
pub(crate) fn remove_vm_dir(dir: &Path) -> Result<(), IoAt> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(dir)(e)),
    }
}

/// The VM directories under `root` (valid ids only), by id; none when `root` is not there
/// yet. Failing to list them is an error, not an empty host.
pub(crate) fn vm_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, IoAt> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_error(root)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(root))?;
        if let Some(id) = entry.file_name().to_str()
            && valid_id(id)
            && entry.path().is_dir()
        {
            dirs.push((id.to_owned(), entry.path()));
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ids_are_refused() {
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
        assert!(valid_id("vm-12"));
    }
}
