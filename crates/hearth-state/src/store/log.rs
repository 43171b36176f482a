//! The Raft log and vote in redb: openraft's `RaftLogStorage` and `RaftLogReader`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable};

use super::db::{
    COMMITTED, LAST_PURGED, LOG, LOG_META, StoreError, VOTE, begin_read, begin_write, decode,
    encode, read_value, with_db, write_value,
};
use crate::types::TypeConfig;

type NodeId = u64;

/// The Raft log, the vote and the committed pointer. Cloning is cheap and a clone is also the
/// log reader openraft hands to replication tasks: all clones share the one database, which
/// serialises writers and gives readers consistent snapshots.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn read_logs_failed(error: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&error).into()
}

fn write_logs_failed(error: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&error).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        with_db(&self.db, move |db| read_entries(db, range))
            .await
            .map_err(read_logs_failed)
    }
}

fn read_entries(
    db: &Database,
    range: (Bound<u64>, Bound<u64>),
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let txn = begin_read(db)?;
    let log = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for row in log.range::<u64>(range)? {
        let (_, bytes) = row?;
        entries.push(decode("log entry", bytes.value())?);
    }
    Ok(entries)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        with_db(&self.db, read_log_state)
            .await
            .map_err(read_logs_failed)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        with_db(&self.db, move |db| write_meta(db, VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        with_db(&self.db, |db| read_meta(db, VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Stored so that a restarted node re-applies what it knows is committed before it hears
    /// from a leader, and its state never appears to go back in time. Durably (fsync): a
    /// leader that restarts resumes its leadership in openraft 0.9 and serves linearizable
    /// reads at `max(committed, its first entry)` before it hears from anyone, so a committed
    /// index that lagged an acknowledged write would let such a read miss that write.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        with_db(&self.db, move |db| write_meta(db, COMMITTED, &committed))
            .await
            .map_err(write_logs_failed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        // `save_committed(None)` stores a null, read back as "nothing committed" too.
        with_db(&self.db, |db| {
            Ok(read_meta::<Option<LogId<NodeId>>>(db, COMMITTED)?.flatten())
        })
        .await
        .map_err(read_logs_failed)
    }

    /// Writes and fsyncs the entries in one transaction, then reports them flushed: the
    /// callback runs before this returns, never before the data is on disk.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode("log entry", &entry)?)))
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(write_logs_failed)?;
        if !rows.is_empty() {
            with_db(&self.db, move |db| write_entries(db, &rows))
                .await
                .map_err(write_logs_failed)?;
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Deletes `[log_id.index, ∞)`: entries a new leader overrode. They were never committed.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        with_db(&self.db, move |db| {
            delete_entries(db, (Bound::Included(log_id.index), Bound::Unbounded))
        })
        .await
        .map_err(write_logs_failed)
    }

    /// Deletes `[0, log_id.index]`, already in a snapshot, and remembers `log_id` so the log's
    /// state stays known once every entry is gone.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        with_db(&self.db, move |db| purge_entries(db, log_id))
            .await
            .map_err(write_logs_failed)
    }
}

fn read_log_state(db: &Database) -> Result<LogState<TypeConfig>, StoreError> {
    let txn = begin_read(db)?;
    let last_purged_log_id: Option<LogId<NodeId>> =
        read_value(&txn.open_table(LOG_META)?, LAST_PURGED)?;
    let last_entry = match txn.open_table(LOG)?.last()? {
        Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>("log entry", bytes.value())?),
        None => None,
    };
    Ok(LogState {
        last_purged_log_id,
        last_log_id: last_entry.map(|entry| entry.log_id).or(last_purged_log_id),
    })
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    let txn = begin_read(db)?;
    read_value(&txn.open_table(LOG_META)?, key)
}

fn write_meta<T: serde::Serialize>(
    db: &Database,
    key: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    write_value(&mut txn.open_table(LOG_META)?, key, value)?;
    txn.commit()?;
    Ok(())
}

fn write_entries(db: &Database, rows: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    {
        let mut log = txn.open_table(LOG)?;
        for (index, bytes) in rows {
            log.insert(*index, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn delete_entries(db: &Database, range: (Bound<u64>, Bound<u64>)) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    txn.open_table(LOG)?
        .retain_in::<u64, _>(range, |_, _| false)?;
    txn.commit()?;
    Ok(())
}

fn purge_entries(db: &Database, log_id: LogId<NodeId>) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    write_value(&mut txn.open_table(LOG_META)?, LAST_PURGED, &log_id)?;
    txn.open_table(LOG)?
        .retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
    txn.commit()?;
    Ok(())
}
