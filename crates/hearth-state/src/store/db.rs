//! The one redb file's layout and the helpers every store part shares: the tables and
//! keys, `StoreError` and `OpenStoreError`, transactions, and postcard encoding of values.

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Log entries by index, each an `openraft::Entry<TypeConfig>` as JSON.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");

/// The log store's pointers: [`VOTE`], [`COMMITTED`], [`LAST_PURGED`].
pub(super) const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");

/// The state machine: [`LAST_APPLIED`], [`MEMBERSHIP`], [`DESIRED_STATE`].
pub(super) const STATE_MACHINE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("state_machine");

/// The latest snapshot: [`SNAPSHOT_META`] and [`SNAPSHOT_DATA`].
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(super) const VOTE: &str = "vote";

pub(super) const COMMITTED: &str = "committed";

pub(super) const LAST_PURGED: &str = "last_purged";

pub(super) const LAST_APPLIED: &str = "last_applied";

pub(super) const MEMBERSHIP: &str = "membership";

pub(super) const DESIRED_STATE: &str = "desired_state";

pub(super) const SNAPSHOT_META: &str = "meta";

pub(super) const SNAPSHOT_DATA: &str = "data";

/// Why the state file could not be opened. Each message says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// The state file's directory is missing; `open` does not create directories.
    #[error(
        "{}: the directory does not exist; create it (it holds this node's Raft log and \
         desired state) or point the agent at another state directory",
        .dir.display()
    )]
    MissingDirectory { dir: PathBuf },
    /// Another process (normally another agent) holds the file's lock.
    #[error(
        "{}: the state file is in use by another hearth agent on this host; stop that agent, \
         or give this one its own state directory",
        .path.display()
    )]
    Locked { path: PathBuf },
    /// The file is not a redb database, or redb's integrity check failed.
    #[error(
        "{}: the state file is damaged ({source}); restore it from a backup, or move it aside, \
         remove this node from the Raft membership on a healthy server and add it again so it \
         copies the state from its peers",
        .path.display()
    )]
    Corrupt { path: PathBuf, source: redb::Error },
    /// redb read the file, but a stored vote, log pointer or state did not decode.
    #[error(
        "{}: the stored {what} cannot be decoded ({source}); the file was written by an \
         incompatible hearth version or is damaged: run the hearth version that wrote it, or \
         move it aside, remove this node from the Raft membership and add it again",
        .path.display()
    )]
    Undecodable {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    /// The file is in a redb format this build cannot open.
    #[error(
        "{}: the state file uses redb file format {format}, which this hearth cannot read; \
         run the hearth version that wrote it",
        .path.display()
    )]
    UnsupportedFormat { path: PathBuf, format: u8 },
    /// The operating system refused a read or write (permissions, full disk, I/O error).
    #[error(
        "{}: cannot read or write the state file ({source}); check that the agent's user owns \
         it and that the disk is not full",
        .path.display()
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Any other failure of redb while opening.
    #[error("{}: the state database failed ({source}); check the disk and the system log", .path.display())]
    Database { path: PathBuf, source: redb::Error },
}

impl OpenStoreError {
    pub(super) fn from_database(path: &Path, error: DatabaseError) -> Self {
        let path = path.to_path_buf();
        match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                OpenStoreError::Locked { path }
            }
            DatabaseError::UpgradeRequired(format) => {
                OpenStoreError::UnsupportedFormat { path, format }
            }
            // redb reports a file that is not a redb database as invalid data.
            DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                OpenStoreError::Corrupt {
                    path,
                    source: redb::Error::Io(source),
                }
            }
            DatabaseError::Storage(redb::StorageError::Io(source)) => {
                OpenStoreError::Io { path, source }
            }
            error @ (DatabaseError::RepairAborted
            | DatabaseError::Storage(redb::StorageError::Corrupted(_))) => {
                OpenStoreError::Corrupt {
                    path,
                    source: error.into(),
                }
            }
            error => OpenStoreError::Database {
                path,
                source: error.into(),
            },
        }
    }

    pub(super) fn from_store(path: &Path, error: StoreError) -> Self {
        let path = path.to_path_buf();
        match error {
            StoreError::Database(redb::Error::Io(source)) => OpenStoreError::Io { path, source },
            StoreError::Database(source @ redb::Error::Corrupted(_)) => {
                OpenStoreError::Corrupt { path, source }
            }
            StoreError::Database(source) => OpenStoreError::Database { path, source },
            StoreError::Decode { what, source } => {
                OpenStoreError::Undecodable { path, what, source }
            }
            // Opening neither encodes, installs snapshots nor spawns tasks, so these do not
            // happen here (an offline rewrite encodes, but only values that always encode);
            // should one ever, it is reported whole rather than by a panic.
            error @ (StoreError::Encode { .. }
            | StoreError::SnapshotMismatch { .. }
            | StoreError::Task(_)
            | StoreError::Thread(_)) => OpenStoreError::Database {
                path,
                source: redb::Error::Io(std::io::Error::other(error)),
            },
        }
    }
}

/// Creates every table, so that read transactions can open them on a fresh file.
pub(super) fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    txn.open_table(LOG)?;
    txn.open_table(LOG_META)?;
    txn.open_table(STATE_MACHINE)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// What can go wrong inside one storage operation; mapped to openraft's `StorageError` (with
/// the subject openraft wants) at each trait method.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    #[error(transparent)]
    Database(#[from] redb::Error),
    #[error("cannot encode the {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot decode the stored {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the snapshot's data is for log id {data:?} but its metadata says {meta:?}")]
    SnapshotMismatch {
        meta: Option<openraft::LogId<u64>>,
        data: Option<openraft::LogId<u64>>,
    },
    #[error("the storage task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start the thread that writes the applied state: {0}")]
    Thread(std::io::Error),
}

/// redb has one error type per operation; all of them fit in `redb::Error`.
macro_rules! store_error_from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Database(error.into())
            }
        }
    )*};
}

store_error_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Runs one storage operation on `db` on tokio's blocking pool.
pub(super) async fn with_db<T, F>(db: &Arc<Database>, operation: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || operation(&db)).await?
}

/// A write transaction whose commit returns only once the data is on disk.
pub(super) fn begin_write(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    // Immediate is redb's default; it is set anyway because Raft's safety rests on it.
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// A write transaction that reaches the disk with the next durable commit (the next log
/// append), not by itself. For data that the log can rebuild after a crash: the applied state
/// machine and the committed index. A crash loses at most some applying, which the log replays
/// on start; redb's transactions stay atomic, so what is read back is always a consistent
/// earlier state.
pub(super) fn begin_write_lazy(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    Ok(txn)
}

pub(super) fn begin_read(db: &Database) -> Result<redb::ReadTransaction, StoreError> {
    Ok(db.begin_read()?)
}

pub(super) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

pub(super) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// Reads and decodes the value at `key`; `None` if it was never written.
pub(super) fn read_value<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(bytes) => decode(key, bytes.value()).map(Some),
        None => Ok(None),
    }
}

pub(super) fn write_value<T: Serialize>(
    table: &mut Table<'_, &'static str, &'static [u8]>,
    key: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = encode(key, value)?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}
