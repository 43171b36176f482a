//! The error both drivers and the disk bookkeeping return, and the mapping of an I/O failure
//! on a path to it.

use std::path::Path;

use crate::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is already running (pid {1}); refusing to start a second copy")]
    AlreadyRunning(String, u32),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("{0} has no disk on this host; refusing to start it on anything else")]
    NoDisk(String),
    #[error(
        "the disk of {id} here is generation {found}, not its generation {expected}; refusing to use it"
    )]
    WrongGeneration {
        id: String,
        found: u64,
        expected: u64,
    },
    #[error("`{0}` is not a valid VM id")]
    BadId(String),
    #[error("{0}")]
    Qemu(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DriverError + '_ {
    move |source| DriverError::Io {
        path: path.display().to_string(),
        source,
    }
}
