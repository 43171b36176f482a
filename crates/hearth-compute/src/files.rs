//! What a node serves its peers over the state group's RPC (`hearth_state::files::PeerFiles`):
//! chunks of verified image files, of its VMs' console logs, their recent load, and of a stopped VM's disk for
//! the host it moves to. The paths are known here and in `hearth-qemu`, never in the
//! consensus crate.

use std::path::Path;
use std::sync::Arc;

use hearth_qemu::fake::VmDriver;
use hearth_state::files::{
    BLOB_CHUNK, BlobChunk, CONSOLE_CHUNK, ConsoleAttach, ConsoleChunk, ConsoleSession, DiskChunk,
    FileError, FileFuture, PeerFiles,
};
use hearth_types::vmstats::VmHistory;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::blobs::BlobStore;
use crate::console::Consoles;

/// This node's image store, and its VM driver when it is a worker.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub blobs: BlobStore,
    pub driver: Option<Arc<VmDriver>>,
    /// The interactive consoles of the VMs running here.
    pub consoles: Arc<Consoles>,
}

impl HostFiles {
    fn driver(&self) -> Result<&VmDriver, FileError> {
        self.driver
            .as_deref()
            .ok_or_else(|| FileError::NotServed("this node runs no VMs".into()))
    }
}

impl PeerFiles for HostFiles {
    fn blob_chunk<'a>(&'a self, sha256: &'a str, offset: u64) -> FileFuture<'a, BlobChunk> {
        Box::pin(read_blob_chunk(&self.blobs, sha256, offset))
    }

    fn console_chunk<'a>(
        &'a self,
        vm: &'a str,
        offset: Option<u64>,
    ) -> FileFuture<'a, ConsoleChunk> {
        Box::pin(async move { read_console(self.driver()?.root(), vm, offset).await })
    }

    fn disk_chunk<'a>(
        &'a self,
        vm: &'a str,
        generation: u64,
        offset: u64,
    ) -> FileFuture<'a, DiskChunk> {
        Box::pin(read_disk_chunk(self, vm, generation, offset))
    }

    fn vm_stats<'a>(&'a self, vm: &'a str) -> FileFuture<'a, VmHistory> {
        Box::pin(async move { read_vm_stats(self.driver()?.root(), vm).await })
    }

    fn console_attach(&self, attach: ConsoleAttach) -> FileFuture<'_, ConsoleSession> {
        Box::pin(async move {
            let root = self.driver()?.root();
            self.consoles.attach(root, attach).await
        })
    }
}

/// VM `vm`'s recent load as this host recorded it under `vms_dir`; empty when it has none.
pub async fn read_vm_stats(vms_dir: &Path, vm: &str) -> Result<VmHistory, FileError> {
    let path = hearth_qemu::driver::stats_file(vms_dir, vm)
        .ok_or_else(|| FileError::BadName(format!("`{vm}` is not a VM id")))?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| FileError::Io(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VmHistory::default()),
        Err(e) => Err(FileError::Io(format!("{}: {e}", path.display()))),
    }
}

/// Reads one chunk of VM `vm`'s disk while nothing runs on it; with the chunk that ends it,
/// the whole file's sha256.
async fn read_disk_chunk(
    files: &HostFiles,
    vm: &str,
    generation: u64,
    offset: u64,
) -> Result<DiskChunk, FileError> {
    use base64::Engine;
    use hearth_qemu::driver::DiskError;
    let path = files
        .driver()?
        .disk_at_rest(vm, generation)
        .map_err(|error| match error {
            DiskError::BadId(_) => FileError::BadName(error.to_string()),
            DiskError::Running(..) | DiskError::NoDisk(_) | DiskError::WrongGeneration { .. } => {
                FileError::NotAtRest(error.to_string())
            }
            other => FileError::Io(other.to_string()),
        })?;
    let (total, bytes) = read_chunk(&path, offset).await?;
    let sha256 = if offset + bytes.len() as u64 >= total {
        let path = path.clone();
        let digest = tokio::task::spawn_blocking(move || {
            crate::blobs::sha256_file(&path).map(|(sha, _)| sha)
        })
        .await
        .map_err(|e| FileError::Io(e.to_string()))?
        .map_err(io)?;
        Some(digest)
    } else {
        None
    };
    Ok(DiskChunk {
        total,
        data: base64::engine::general_purpose::STANDARD.encode(&bytes),
        sha256,
    })
}

/// Up to [`BLOB_CHUNK`] bytes of the file at `path` from `offset`, and the file's size.
async fn read_chunk(path: &Path, offset: u64) -> Result<(u64, Vec<u8>), FileError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|_| FileError::NotFound(format!("no copy of {} here", path.display())))?;
    let total = file.metadata().await.map_err(io)?.len();
    file.seek(std::io::SeekFrom::Start(offset.min(total)))
        .await
        .map_err(io)?;
    let mut buf = vec![0u8; BLOB_CHUNK.min((total.saturating_sub(offset)) as usize)];
    file.read_exact(&mut buf).await.map_err(io)?;
    Ok((total, buf))
}

fn io(error: std::io::Error) -> FileError {
    FileError::Io(error.to_string())
}

/// Reads one chunk of the verified file `sha256`. The name is checked to be a hash, so a
/// request can never reach outside the store.
async fn read_blob_chunk(
    blobs: &BlobStore,
    sha256: &str,
    offset: u64,
) -> Result<BlobChunk, FileError> {
    use base64::Engine;
    let valid = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !valid {
        return Err(FileError::BadName("not a sha256".into()));
    }
    let (total, buf) =
        read_chunk(&blobs.path(sha256), offset)
            .await
            .map_err(|error| match error {
                FileError::NotFound(_) => FileError::NotFound(format!("no copy of {sha256} here")),
                other => other,
            })?;
    Ok(BlobChunk {
        total,
        data: base64::engine::general_purpose::STANDARD.encode(&buf),
    })
}

/// Reads part of the console log of `vm` under `vms_dir`: from `offset`, or the last
/// [`CONSOLE_CHUNK`] bytes. A VM with no log yet has an empty one.
pub async fn read_console(
    vms_dir: &std::path::Path,
    vm: &str,
    offset: Option<u64>,
) -> Result<ConsoleChunk, FileError> {
    let path = hearth_qemu::driver::console_log(vms_dir, vm)
        .ok_or_else(|| FileError::BadName(format!("`{vm}` is not a VM id")))?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleChunk {
                offset: 0,
                next: 0,
                total: 0,
                text: String::new(),
            });
        }
        Err(e) => return Err(FileError::Io(format!("{}: {e}", path.display()))),
    };
    let total = file.metadata().await.map_err(io)?.len();
    let from = offset
        .unwrap_or(total.saturating_sub(CONSOLE_CHUNK))
        .min(total);
    file.seek(std::io::SeekFrom::Start(from))
        .await
        .map_err(io)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(CONSOLE_CHUNK)
        .read_to_end(&mut bytes)
        .await
        .map_err(io)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    // The tail of a log that was just rotated continues in `console.log.1`.
    if offset.is_none() && total < CONSOLE_CHUNK {
        let mut older = path.as_os_str().to_owned();
        older.push(".1");
        if let Ok(old) = tokio::fs::read(&older).await {
            let keep = CONSOLE_CHUNK.saturating_sub(total) as usize;
            let tail = &old[old.len().saturating_sub(keep)..];
            text = format!("{}{text}", String::from_utf8_lossy(tail));
        }
    }
    Ok(ConsoleChunk {
        offset: from,
        next: from + bytes.len() as u64,
        total,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a rotation, the tail read shows the end of `console.log.1` before the new log.
    #[tokio::test]
    async fn the_console_tail_reaches_into_the_rotated_log() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("vm-1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console.log.1"), "old line\n").unwrap();
        std::fs::write(dir.join("console.log"), "new line\n").unwrap();
        let tail = read_console(top.path(), "vm-1", None).await.unwrap();
        assert_eq!(tail.text, "old line\nnew line\n");
        assert_eq!((tail.offset, tail.next), (0, 9));
        // Following from an offset reads the current log only.
        let follow = read_console(top.path(), "vm-1", Some(0)).await.unwrap();
        assert_eq!(follow.text, "new line\n");
    }

    #[tokio::test]
    async fn names_that_could_leave_the_directories_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let driver = VmDriver::Fake(hearth_qemu::fake::FakeDriver::new(top.path().join("vms")));
        let files = HostFiles {
            blobs: BlobStore::new(top.path().join("images")),
            driver: Some(Arc::new(driver)),
            consoles: Default::default(),
        };
        for vm in ["../etc", "", "a/b", "vm.1"] {
            let answer = files.console_chunk(vm, None).await;
            assert!(
                matches!(answer, Err(FileError::BadName(_))),
                "{vm}: {answer:?}"
            );
        }
        for sha in ["../../etc/passwd", &"A".repeat(64), "abc"] {
            let answer = files.blob_chunk(sha, 0).await;
            assert!(
                matches!(answer, Err(FileError::BadName(_))),
                "{sha}: {answer:?}"
            );
        }
        let missing = files.blob_chunk(&"a".repeat(64), 0).await;
        assert!(
            matches!(missing, Err(FileError::NotFound(_))),
            "{missing:?}"
        );
        let server = HostFiles {
            driver: None,
            ..files
        };
        let answer = server.console_chunk("vm-1", None).await;
        assert!(matches!(answer, Err(FileError::NotServed(_))), "{answer:?}");
    }

    #[tokio::test]
    async fn a_console_is_read_in_chunks_and_a_missing_one_is_empty() {
        let top = tempfile::tempdir().unwrap();
        let empty = read_console(top.path(), "vm-1", None).await.unwrap();
        assert_eq!((empty.total, empty.text.as_str()), (0, ""));
        std::fs::create_dir_all(top.path().join("vm-1")).unwrap();
        let log = "x".repeat(CONSOLE_CHUNK as usize) + "tail";
        std::fs::write(top.path().join("vm-1/console.log"), &log).unwrap();
        let last = read_console(top.path(), "vm-1", None).await.unwrap();
        assert_eq!(
            (last.offset, last.next, last.total),
            (4, log.len() as u64, log.len() as u64)
        );
        assert!(last.text.ends_with("tail"));
        let first = read_console(top.path(), "vm-1", Some(0)).await.unwrap();
        assert_eq!(first.next, CONSOLE_CHUNK);
        let rest = read_console(top.path(), "vm-1", Some(first.next))
            .await
            .unwrap();
        assert_eq!(rest.text, "tail");
    }
}
