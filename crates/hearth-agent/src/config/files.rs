//! What the files the config names hold (the cluster secret, the TSIG key, the SMTP password),
//! read in a step of their own so that the checks run on data alone and tests give them the
//! files' text. Knows nothing of the config: `Config::named_files` says which to read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `Ok` unless other users of the machine may read or write `path` (a missing file is left
/// for the read to report).
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o006 == 0 {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "it holds a secret, and every user may read it (mode {mode:04o}); run `chmod 600 {}`",
            path.display()
        ),
    ))
}

/// What is wrong with the secret file at `path` now, if anything: the agent cannot open it,
/// or every user of the machine may read it. Read at each scrape of `/metrics`.
pub fn secret_file_problem(path: &Path) -> Option<String> {
    if let Err(problem) = private(path) {
        return Some(problem.to_string());
    }
    std::fs::File::open(path).err().map(|e| e.to_string())
}

/// Why a file has no text when it was never read (only a caller that skipped reading sees it).
const NOT_READ: &str = "not read";

/// The text of each file the config names, or why it could not be read, by path. Secrets
/// among them stay here: `Debug` shows only the paths.
#[derive(Clone, Default)]
pub struct ConfigFiles {
    texts: BTreeMap<PathBuf, Result<String, String>>,
}

impl std::fmt::Debug for ConfigFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.texts.keys()).finish()
    }
}

impl ConfigFiles {
    /// Reads each of `paths`. One that cannot be read is kept with the reason, for the check
    /// of its key to report; so is one that every user of the machine may read, since each
    /// holds a secret.
    pub fn read<'p>(paths: impl IntoIterator<Item = &'p Path>) -> ConfigFiles {
        let mut files = ConfigFiles::default();
        for path in paths {
            let read = match private(path) {
                Ok(()) => std::fs::read_to_string(path),
                Err(problem) => Err(problem),
            };
            files.insert(path, read);
        }
        files
    }

    /// Records what reading `path` gave.
    pub fn insert(&mut self, path: impl Into<PathBuf>, read: std::io::Result<String>) {
        let read = read.map_err(|error| error.to_string());
        self.texts.insert(path.into(), read);
    }

    /// What `path` holds, or why it could not be read.
    pub(crate) fn text(&self, path: &Path) -> Result<&str, &str> {
        match self.texts.get(path) {
            Some(Ok(text)) => Ok(text),
            Some(Err(error)) => Err(error),
            None => Err(NOT_READ),
        }
    }
}
