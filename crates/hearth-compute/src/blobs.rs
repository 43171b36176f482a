//! The local store of image files, by content: `data_dir/images/<sha256>`, written through a
//! temporary file and renamed only once the hash matches, so a file under its final name is
//! always complete and verified.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the content's sha256 is {actual}, not {expected}")]
    Mismatch { expected: String, actual: String },
    #[error("the content is {actual} bytes, more than the {limit} announced")]
    TooLong { limit: u64, actual: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Streams content into the store, hashing as it goes.
pub struct BlobWriter {
    expected: String,
    tmp: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    written: u64,
    final_path: PathBuf,
}

impl BlobStore {
    pub fn new(dir: PathBuf) -> Self {
        BlobStore { dir }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Whether a verified copy is here.
    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Removes verified files no image refers to, and abandoned temporary files, once they
    /// are older than `min_age` (an upload is stored before its image is declared). Returns
    /// the names removed.
    pub fn collect_garbage(
        &self,
        referenced: &std::collections::BTreeSet<String>,
        min_age: std::time::Duration,
    ) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let is_partial = name.starts_with('.') && name.ends_with(".part");
            if !(is_blob || is_partial) || referenced.contains(&name) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed.sort();
        removed
    }

    /// Starts writing the blob `sha256`. Several writers of one blob do not disturb each
    /// other: each has its own temporary file, and the renames are atomic.
    pub fn writer(&self, sha256: &str) -> Result<BlobWriter, BlobError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(
            ".{sha256}.{}.{}.part",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter {
            expected: sha256.to_owned(),
            tmp,
            file,
            hasher: Sha256::new(),
            written: 0,
            final_path: self.path(sha256),
        })
    }
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        self.file.write_all(chunk).map_err(|source| BlobError::Io {
            path: self.tmp.clone(),
            source,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the hash, fsyncs and moves the file to its final name; on any failure the
    /// temporary file is removed and nothing appears under the final name.
    pub fn finish(self) -> Result<PathBuf, BlobError> {
        let actual = hex(&self.hasher.clone().finalize());
        let result = if actual != self.expected {
            Err(BlobError::Mismatch {
                expected: self.expected.clone(),
                actual,
            })
        } else {
            self.file
                .sync_all()
                .and_then(|()| std::fs::rename(&self.tmp, &self.final_path))
                .map_err(|source| BlobError::Io {
                    path: self.final_path.clone(),
                    source,
                })
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result.map(|()| self.final_path)
    }

    /// Gives up: removes the temporary file.
    pub fn abort(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, reading it in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_what_no_image_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path().to_path_buf());
        let (kept, dropped) = ("a".repeat(64), "b".repeat(64));
        for name in [
            &kept,
            &dropped,
            &".x.1.2.part".to_string(),
            &"notes".to_string(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let referenced = std::collections::BTreeSet::from([kept.clone()]);
        // Too young: an upload whose image is not declared yet.
        assert!(
            store
                .collect_garbage(&referenced, std::time::Duration::from_secs(3600))
                .is_empty()
        );
        let removed = store.collect_garbage(&referenced, std::time::Duration::ZERO);
        assert_eq!(removed, [".x.1.2.part".to_string(), dropped]);
        assert!(store.has(&kept));
        assert!(dir.path().join("notes").exists());
    }

    #[test]
    fn only_verified_content_gets_its_name() {
        let dir = std::env::temp_dir().join(format!("hearth-blobs-{}", rand::random::<u64>()));
        let store = BlobStore::new(dir.clone());
        let good = hex(&Sha256::digest(b"hello"));
        let mut writer = store.writer(&good).unwrap();
        writer.write(b"hel").unwrap();
        writer.write(b"lo").unwrap();
        writer.finish().unwrap();
        assert!(store.has(&good));
        let wrong = hex(&Sha256::digest(b"other"));
        let mut writer = store.writer(&wrong).unwrap();
        writer.write(b"not other").unwrap();
        assert!(matches!(writer.finish(), Err(BlobError::Mismatch { .. })));
        assert!(!store.has(&wrong));
        // No temporary files stay behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
