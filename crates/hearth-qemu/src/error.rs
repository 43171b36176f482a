//! The drivers' errors, one enum per operation family, so a caller matches only on what the
//! operation it called can do: `DiskError` for a VM's files and disk (make, check, archive,
//! remove), `StartError` for starting QEMU, `ControlError` for operations on a running VM,
//! `ObserveError` for looking at the host. Each can hold an `IoAt`: an I/O failure with its path.

use std::path::Path;

use crate::qmp::QmpError;

/// An I/O failure on a path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoAt {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Making, checking, archiving or removing a VM's files and disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("`{0}` is not a valid VM id")]
    BadId(String),
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
    #[error("{0} is running (pid {1}); refusing to move its files")]
    Running(String, u32),
    /// A directory of the VM is here already; a copy never replaces it.
    #[error("a copy of {0} is here already; refusing to replace it")]
    Exists(String),
    /// `qemu-img` could not run or failed.
    #[error("{0}")]
    QemuImg(String),
    /// Ceph's `rbd` or `ceph` could not run or failed, or no `[ceph]` is configured.
    #[error("{0}")]
    Ceph(String),
    /// Stopping the VM before removing its files failed.
    #[error("stopping it first: {0}")]
    Stop(#[from] ControlError),
}

/// Starting a VM's QEMU.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("`{0}` is not a valid VM id")]
    BadId(String),
    #[error("{0} is already running (pid {1}); refusing to start a second copy")]
    AlreadyRunning(String, u32),
    #[error("{0} is already being started")]
    AlreadyStarting(String),
    /// The VM's own disk is not here: the start is refused, never made on anything else.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// QEMU (or its seed) could not be set up, could not run, exited or did not come up.
    #[error("{0}")]
    Launch(String),
}

/// Operations on a running VM: QMP commands, shutdown, reset, kill, IO limits.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// QEMU answered something that does not fit.
    #[error("{0}")]
    Unexpected(String),
    #[error("QEMU pid {pid} of {id} survives SIGKILL")]
    Survives { id: String, pid: u32 },
}

/// Looking at the host's VMs. Any error means the host could not look, never "nothing runs".
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Io(#[from] IoAt),
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// Maps an I/O failure on `path` to an `IoAt`, which `?` turns into any family's error.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IoAt + '_ {
    move |source| IoAt {
        path: path.display().to_string(),
        source,
    }
}
