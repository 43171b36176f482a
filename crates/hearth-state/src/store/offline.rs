//! Reading and replacing everything the store holds in one write transaction, for offline
//! tools (quorum-loss recovery) that run while the agent is stopped.
//!
//! The layout of the file stays this module's business: a tool gets the stored Raft state as
//! plain values, decides, and hands back a [`Replacement`] that is written in the same
//! transaction it was read in, so a crash leaves either the old store or the new one.

use std::path::Path;
use std::sync::Arc;

use hearth_types::desired::DesiredState;
use openraft::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use redb::{Database, ReadableTable, WriteTransaction};

use super::db::{
    COMMITTED, DESIRED_STATE, LAST_APPLIED, LAST_PURGED, LOG, LOG_META, MEMBERSHIP, OpenStoreError,
    SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META, STATE_MACHINE, StoreError, VOTE, begin_write, decode,
    encode, read_value, write_value,
};
use super::state_machine::{SnapshotPayload, apply_entries, new_snapshot_id, read_applied};
use crate::types::{RaftNode, TypeConfig};

type NodeId = u64;
type Membership = StoredMembership<NodeId, RaftNode>;

/// Everything Raft stored, as of one transaction.
pub(crate) struct StoredRaft {
    pub(crate) vote: Option<Vote<NodeId>>,
    pub(crate) committed: Option<LogId<NodeId>>,
    pub(crate) last_purged: Option<LogId<NodeId>>,
    /// Every entry still in the log, in index order.
    pub(crate) entries: Vec<Entry<TypeConfig>>,
    pub(crate) last_applied: Option<LogId<NodeId>>,
    /// The membership as of `last_applied`.
    pub(crate) membership: Membership,
    /// The desired state as of `last_applied`.
    pub(crate) state: Arc<DesiredState>,
}

/// The log is missing an entry that should be there.
#[derive(Debug)]
pub(crate) struct GapInLog {
    pub(crate) expected: u64,
    pub(crate) found: Option<u64>,
}

impl StoredRaft {
    /// The last log id this node knows of: its last entry's, else the last purged one's, else
    /// the last applied one's (a snapshot installed before the log was cleaned up).
    pub(crate) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let in_log = self.entries.last().map(|e| e.log_id).or(self.last_purged);
        in_log.max(self.last_applied)
    }

    /// Applies every entry after `last_applied` with the state machine's own function, so the
    /// result is what the agent would have computed had it applied them itself. Afterwards
    /// `last_applied` is [`Self::last_log_id`].
    pub(crate) fn apply_log(&mut self) -> Result<(), GapInLog> {
        let first_unapplied = self.last_applied.map_or(0, |id| id.index + 1);
        let mut expected = first_unapplied;
        let mut unapplied = Vec::new();
        for entry in self
            .entries
            .iter()
            .filter(|e| e.log_id.index >= first_unapplied)
        {
            if entry.log_id.index != expected {
                let found = Some(entry.log_id.index);
                return Err(GapInLog { expected, found });
            }
            unapplied.push(entry.clone());
            expected += 1;
        }
        // A log purged beyond what was applied has lost entries too.
        if self.last_log_id().is_some_and(|end| end.index >= expected) {
            return Err(GapInLog {
                expected,
                found: None,
            });
        }
        let (batch, _outcomes) = apply_entries(&self.state, self.last_applied, unapplied);
        self.last_applied = batch.last_applied;
        if let Some(membership) = batch.membership {
            self.membership = membership;
        }
        if let Some(state) = batch.state {
            self.state = state;
        }
        Ok(())
    }
}

/// What a store becomes: a snapshot at `last_log_id` holding `state` and `membership`, an
/// empty log purged up to it (committed and applied up to it too), and `vote`.
pub(crate) struct Replacement {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) last_log_id: LogId<NodeId>,
    pub(crate) membership: Membership,
    pub(crate) state: Arc<DesiredState>,
}

/// Opens the existing state file at `path` (never creating one), reads it, lets `decide`
/// compute its replacement and writes that in the same transaction. When `decide` fails or
/// anything before the commit does, the stored content is unchanged.
pub(crate) fn replace_offline<T, E>(
    path: &Path,
    decide: impl FnOnce(StoredRaft) -> Result<(Replacement, T), E>,
) -> Result<T, E>
where
    E: From<OpenStoreError>,
{
    // Same integrity check as the agent's open: damage becomes an error, not a panic.
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        .open(path)
        .map_err(|e| OpenStoreError::from_database(path, e))?;
    let store_error = |e: StoreError| E::from(OpenStoreError::from_store(path, e));
    let txn = begin_write(&db).map_err(store_error)?;
    let stored = read_stored(&txn).map_err(store_error)?;
    // Returning early drops `txn`, which aborts it.
    let (replacement, answer) = decide(stored)?;
    write_replacement(&txn, &replacement).map_err(store_error)?;
    txn.commit().map_err(|e| store_error(StoreError::from(e)))?;
    Ok(answer)
}

fn read_stored(txn: &WriteTransaction) -> Result<StoredRaft, StoreError> {
    let log_meta = txn.open_table(LOG_META)?;
    let vote = read_value(&log_meta, VOTE)?;
    let committed = read_value::<Option<_>>(&log_meta, COMMITTED)?.flatten();
    let last_purged = read_value(&log_meta, LAST_PURGED)?;
    let mut entries = Vec::new();
    for row in txn.open_table(LOG)?.iter()? {
        let (_, bytes) = row?;
        entries.push(decode("log entry", bytes.value())?);
    }
    let applied = read_applied(&txn.open_table(STATE_MACHINE)?, &txn.open_table(SNAPSHOT)?)?;
    Ok(StoredRaft {
        vote,
        committed,
        last_purged,
        entries,
        last_applied: applied.last_applied,
        membership: applied.membership,
        state: applied.state,
    })
}

/// Writes every key the log store and the state machine read at startup, so nothing of the
/// old content can mix with the new.
fn write_replacement(txn: &WriteTransaction, new: &Replacement) -> Result<(), StoreError> {
    let last_log_id = Some(new.last_log_id);
    let mut log_meta = txn.open_table(LOG_META)?;
    write_value(&mut log_meta, VOTE, &new.vote)?;
    write_value(&mut log_meta, COMMITTED, &last_log_id)?;
    write_value(&mut log_meta, LAST_PURGED, &new.last_log_id)?;
    txn.open_table(LOG)?.retain_in::<u64, _>(.., |_, _| false)?;
    let mut state_machine = txn.open_table(STATE_MACHINE)?;
    write_value(&mut state_machine, LAST_APPLIED, &last_log_id)?;
    write_value(&mut state_machine, MEMBERSHIP, &new.membership)?;
    write_value(&mut state_machine, DESIRED_STATE, new.state.as_ref())?;
    // The log is gone, so the snapshot is the only way a peer that joins later gets the state.
    let meta = SnapshotMeta {
        last_log_id,
        last_membership: new.membership.clone(),
        snapshot_id: new_snapshot_id(last_log_id),
    };
    let payload = SnapshotPayload {
        meta: &meta,
        state: new.state.as_ref(),
    };
    let data = encode("snapshot", &payload)?;
    let mut snapshot = txn.open_table(SNAPSHOT)?;
    write_value(&mut snapshot, SNAPSHOT_META, &meta)?;
    snapshot.insert(SNAPSHOT_DATA, data.as_slice())?;
    Ok(())
}
