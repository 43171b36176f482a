//! Raft's durable storage: one redb file holding the log, the vote, the state machine and its
//! latest snapshot, opened once and shared by the log store and the state machine store.
//!
//! Every write is one redb write transaction committed with immediate durability (fsync)
//! before it is reported done, so a crash never loses something Raft was told is stored.
//! redb does blocking file I/O, so every transaction runs on tokio's blocking pool and the
//! async runtime's workers (which also answer DNS) never wait on a disk.

mod db;
mod log;
mod offline;
mod state_machine;
#[cfg(test)]
pub(crate) mod tests;

pub use self::log::LogStore;
pub(crate) use self::offline::{GapInLog, Replacement, StoredRaft, replace_offline};
pub use self::state_machine::{StateMachineStore, StateReader, StateSnapshotBuilder};
use redb::Database;
use std::path::Path;
use std::sync::Arc;

pub use self::db::OpenStoreError;
use self::db::create_tables;

/// redb's page cache (reads and the write buffer together). Its default is 1 GiB, which a
/// long-running agent could fill with pages it never reads again; the pages Raft reads back
/// (recent log entries) and the whole state written every few seconds fit in far less.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens (creating if missing) the state file at `path`, whose directory must exist, and
/// returns the two halves openraft drives plus a handle for local reads. The file stays
/// locked against other processes until both stores and what openraft derived from them (log
/// readers, snapshot builders) are dropped; a `StateReader` does not hold it.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore, StateReader), OpenStoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(OpenStoreError::MissingDirectory {
            dir: dir.to_path_buf(),
        });
    }
    // A plain open trusts the file and may panic on one damaged outside redb; the check reads
    // the whole file, which is cheap for hearth's small state and turns damage into an error.
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| OpenStoreError::from_database(path, e))?;
    // The state holds account and token hashes: only the agent's user reads it.
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        if let Err(error) = std::fs::set_permissions(path, private) {
            tracing::warn!(path = %path.display(), %error, "cannot make the state file private");
        }
    }
    let db = Arc::new(db);
    create_tables(&db).map_err(|e| OpenStoreError::from_store(path, e))?;
    let (state_machine, reader) =
        StateMachineStore::load(db.clone()).map_err(|e| OpenStoreError::from_store(path, e))?;
    Ok((LogStore::new(db), state_machine, reader))
}
