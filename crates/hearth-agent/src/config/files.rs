//! What the files the config names hold (the cluster secret, the TSIG key, the SMTP password),
//! read in a step of their own so that the checks run on data alone and tests give them the
//! files' text. Knows nothing of the config: `Config::named_files` says which to read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// of its key to report.
    pub fn read<'p>(paths: impl IntoIterator<Item = &'p Path>) -> ConfigFiles {
        let mut files = ConfigFiles::default();
        for path in paths {
            files.insert(path, std::fs::read_to_string(path));
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
