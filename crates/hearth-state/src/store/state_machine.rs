//! The state machine in redb (the desired state, the last applied log id and membership, the
//! latest snapshot) and `StateReader`, the handle for local reads that never go through Raft.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_types::desired::DesiredState;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::db::{
    DESIRED_STATE, LAST_APPLIED, MEMBERSHIP, SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META, STATE_MACHINE,
    StoreError, begin_read, begin_write, begin_write_lazy, decode, encode, read_value, with_db,
    write_value,
};
use crate::model::{self, Outcome};
use crate::types::{RaftNode, TypeConfig};

type NodeId = u64;
type Membership = StoredMembership<NodeId, RaftNode>;
type Meta = SnapshotMeta<NodeId, RaftNode>;

/// The applied desired state. It is written to disk, with the last applied log id in the same
/// transaction, at most every [`persist_gap`] (and at every membership change), without an
/// fsync of its own: the log is the durable record, and a restart replays the entries after
/// whatever state machine or snapshot it finds (see [`read_applied`]). Writing the whole state
/// after every batch would cost more than the batch itself under load, so the periodic write
/// runs on a thread of its own (one at a time) while applying goes on, and never replaces a
/// newer one on disk.
pub struct StateMachineStore {
    pub(super) db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    published: Arc<Published>,
    /// When the state machine was last written; `None`: not since start.
    last_persisted: Option<std::time::Instant>,
    /// How long the last background write took, in microseconds (it sets the next gap).
    last_write_micros: Arc<AtomicU64>,
    /// The periodic write running in the background, if any: its thread (joined on drop, so
    /// the file is closed when the store is) and a receiver that sees its end.
    persisting: Option<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
}

impl Drop for StateMachineStore {
    fn drop(&mut self) {
        if let Some((thread, _)) = self.persisting.take() {
            let _ = thread.join();
        }
    }
}

/// How often, at most, a busy state machine writes its whole state. Each write of a large
/// state is paid by the log appends beside it (they wait for its transaction and flush its
/// pages), so it must stay rare; a restart replays the entries since, at microseconds each.
pub const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A write of the whole state waits at least this many times as long as the last one took, so
/// that however large the state grows, writing it takes at most a twentieth of the time.
const PERSIST_GAP_FACTOR: u32 = 20;

/// The time to wait after a whole-state write that took `took` before the next.
pub(crate) fn persist_gap(took: std::time::Duration) -> std::time::Duration {
    PERSIST_EVERY.max(took * PERSIST_GAP_FACTOR)
}

/// The applied state as stored: the state machine's own rows, or the snapshot when that is
/// newer (the state machine is written lazily, the snapshot eagerly before the log is purged).
pub(super) struct Applied {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: Membership,
    pub(super) state: Arc<DesiredState>,
}

/// Reads the newer of the state machine's rows and the stored snapshot.
pub(super) fn read_applied(
    state_machine: &impl ReadableTable<&'static str, &'static [u8]>,
    snapshot: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Applied, StoreError> {
    let last_applied: Option<LogId<NodeId>> =
        read_value::<Option<_>>(state_machine, LAST_APPLIED)?.flatten();
    if let Some(meta) = read_value::<Meta>(snapshot, SNAPSHOT_META)?
        && meta.last_log_id > last_applied
        && let Some(data) = snapshot.get(SNAPSHOT_DATA)?
    {
        let payload: SnapshotPayload<Meta, DesiredState> = decode("snapshot", data.value())?;
        return Ok(Applied {
            last_applied: payload.meta.last_log_id,
            membership: payload.meta.last_membership,
            state: Arc::new(payload.state),
        });
    }
    Ok(Applied {
        last_applied,
        membership: read_value(state_machine, MEMBERSHIP)?.unwrap_or_default(),
        state: Arc::new(read_value(state_machine, DESIRED_STATE)?.unwrap_or_default()),
    })
}

/// What the state machine shows local readers. Only the state machine writes it.
struct Published {
    state: watch::Sender<Arc<DesiredState>>,
    /// Stored after `state` is replaced, so a reader that sees index `i` then reads a state
    /// that includes every write up to `i`.
    applied_index: AtomicU64,
}

/// Cheap to clone; reads the latest applied desired state without going through Raft, so it
/// never waits on another node.
#[derive(Clone)]
pub struct StateReader {
    published: Arc<Published>,
}

impl StateReader {
    /// The desired state as of the last applied entry.
    pub fn current(&self) -> Arc<DesiredState> {
        self.published.state.borrow().clone()
    }

    /// The index of the last applied log entry (0 before anything is applied). Once it reaches
    /// the index a write was committed at, [`Self::current`] includes that write.
    pub fn applied_index(&self) -> u64 {
        self.published.applied_index.load(Ordering::Acquire)
    }

    /// A receiver that sees a new state after every apply batch that changed it and every
    /// installed snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DesiredState>> {
        self.published.state.subscribe()
    }
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("last_applied", &self.last_applied)
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StateReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateReader")
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

/// A snapshot's bytes: its metadata and the whole desired state, as JSON.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotPayload<M, S> {
    pub(super) meta: M,
    pub(super) state: S,
}

/// What one `apply` batch changed, written in one transaction.
pub(super) struct AppliedBatch {
    pub(super) last_applied: Option<LogId<NodeId>>,
    /// `None`: no membership entry in the batch.
    pub(super) membership: Option<Membership>,
    /// `None`: no command in the batch changed the state.
    pub(super) state: Option<Arc<DesiredState>>,
}

impl StateMachineStore {
    /// Reads the state machine back from `db`, whose tables exist.
    pub(super) fn load(db: Arc<Database>) -> Result<(Self, StateReader), StoreError> {
        let txn = begin_read(&db)?;
        let applied = read_applied(&txn.open_table(STATE_MACHINE)?, &txn.open_table(SNAPSHOT)?)?;
        let published = Arc::new(Published {
            state: watch::Sender::new(applied.state),
            applied_index: AtomicU64::new(applied.last_applied.map_or(0, |id| id.index)),
        });
        let reader = StateReader {
            published: published.clone(),
        };
        let store = StateMachineStore {
            db,
            last_applied: applied.last_applied,
            membership: applied.membership,
            published,
            last_persisted: None,
            last_write_micros: Arc::default(),
            persisting: None,
        };
        Ok((store, reader))
    }

    /// Waits for the background write, if one runs (on a finished thread, `join` returns at
    /// once).
    async fn settle(&mut self) {
        if let Some((thread, done)) = self.persisting.take() {
            let _ = done.await;
            let _ = thread.join();
        }
    }

    /// Writes `row` now (a membership change must be on disk when `apply` returns), or in the
    /// background when `wait` is false and no other background write still runs.
    async fn persist(&mut self, row: PersistedRow, wait: bool) -> Result<(), StoreError> {
        if wait {
            self.settle().await;
            with_db(&self.db, move |db| persist_row(db, &row)).await?;
        } else if self
            .persisting
            .as_ref()
            .is_none_or(|(thread, _)| thread.is_finished())
        {
            self.settle().await;
            let db = self.db.clone();
            let (done, finished) = tokio::sync::oneshot::channel();
            let took_micros = self.last_write_micros.clone();
            let thread = std::thread::Builder::new()
                .name("hearth-persist".into())
                .spawn(move || {
                    let started = std::time::Instant::now();
                    // The log holds every entry this would have saved replaying; a failure
                    // only means a longer replay after a restart.
                    if let Err(error) = persist_row(&db, &row) {
                        tracing::warn!(%error, "could not write the applied state; the log still has it");
                    }
                    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    took_micros.store(took, Ordering::Relaxed);
                    let _ = done.send(());
                })
                .map_err(StoreError::Thread)?;
            self.persisting = Some((thread, finished));
        } else {
            return Ok(());
        }
        self.last_persisted = Some(std::time::Instant::now());
        Ok(())
    }

    /// Shows readers the new state (if it changed), then the new applied index.
    fn publish(&self, state: Option<Arc<DesiredState>>) {
        if let Some(state) = state {
            self.published.state.send_replace(state);
        }
        let index = self.last_applied.map_or(0, |id| id.index);
        self.published.applied_index.store(index, Ordering::Release);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    /// Applies the batch to a copy of the state, persists the copy, and only then makes it
    /// current: a failed write leaves memory matching the disk.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let current = self.published.state.borrow().clone();
        let (batch, outcomes) = apply_entries(&current, self.last_applied, entries);
        if outcomes.is_empty() {
            return Ok(outcomes);
        }
        let took = self.last_write_micros.load(Ordering::Relaxed);
        let gap = persist_gap(std::time::Duration::from_micros(took));
        let due =
            batch.membership.is_some() || self.last_persisted.is_none_or(|at| at.elapsed() >= gap);
        if due {
            let row = PersistedRow {
                last_applied: batch.last_applied,
                membership: batch
                    .membership
                    .clone()
                    .unwrap_or_else(|| self.membership.clone()),
                state: batch.state.clone().unwrap_or(current),
            };
            let wait = batch.membership.is_some();
            self.persist(row, wait)
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        self.last_applied = batch.last_applied;
        if let Some(membership) = batch.membership {
            self.membership = membership;
        }
        self.publish(batch.state);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateSnapshotBuilder {
            db: self.db.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.published.state.borrow().clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the state machine and the stored snapshot in one transaction.
    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = meta.signature();
        let data = snapshot.into_inner();
        let payload: SnapshotPayload<Meta, DesiredState> = decode("snapshot", &data)
            .map_err(|e| StorageIOError::read_snapshot(Some(signature.clone()), &e))?;
        if payload.meta.last_log_id != meta.last_log_id {
            let error = StoreError::SnapshotMismatch {
                meta: meta.last_log_id,
                data: payload.meta.last_log_id,
            };
            return Err(StorageIOError::read_snapshot(Some(signature), &error).into());
        }
        let state = Arc::new(payload.state);
        self.settle().await;
        let (meta, written) = (meta.clone(), state.clone());
        let meta = with_db(&self.db, move |db| {
            persist_installed(db, &meta, &written, &data)?;
            Ok(meta)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership;
        self.publish(Some(state));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        with_db(&self.db, read_snapshot)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Runs `entries` against `current` without touching it or the disk; every replica computes
/// the same batch and outcomes from the same entries.
pub(super) fn apply_entries(
    current: &DesiredState,
    last_applied: Option<LogId<NodeId>>,
    entries: impl IntoIterator<Item = Entry<TypeConfig>>,
) -> (AppliedBatch, Vec<Outcome>) {
    let mut next_state: Option<DesiredState> = None;
    let mut changed = false;
    let mut batch = AppliedBatch {
        last_applied,
        membership: None,
        state: None,
    };
    let mut outcomes = Vec::new();
    for entry in entries {
        batch.last_applied = Some(entry.log_id);
        let outcome = match entry.payload {
            EntryPayload::Blank => Outcome::Nothing,
            EntryPayload::Normal(command) => {
                let state = next_state.get_or_insert_with(|| current.clone());
                // A cluster restored from another's backup counts on from its index.
                let index = entry.log_id.index + state.index_base;
                let outcome = model::apply(state, &command, index);
                changed |= outcome.changed();
                outcome
            }
            EntryPayload::Membership(membership) => {
                batch.membership = Some(StoredMembership::new(Some(entry.log_id), membership));
                Outcome::Nothing
            }
        };
        outcomes.push(outcome);
    }
    batch.state = next_state.filter(|_| changed).map(Arc::new);
    (batch, outcomes)
}

/// The whole applied state, as the state machine writes it.
pub(super) struct PersistedRow {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: Membership,
    pub(super) state: Arc<DesiredState>,
}

/// Writes `row` unless the state machine on disk is already newer. The state is encoded
/// before the write transaction starts, so the log's appends wait only for the copy.
pub(super) fn persist_row(db: &Database, row: &PersistedRow) -> Result<(), StoreError> {
    let state = encode(DESIRED_STATE, row.state.as_ref())?;
    let txn = begin_write_lazy(db)?;
    {
        let mut table = txn.open_table(STATE_MACHINE)?;
        let stored: Option<LogId<NodeId>> =
            read_value::<Option<_>>(&table, LAST_APPLIED)?.flatten();
        if stored > row.last_applied {
            return Ok(());
        }
        write_value(&mut table, LAST_APPLIED, &row.last_applied)?;
        write_value(&mut table, MEMBERSHIP, &row.membership)?;
        table.insert(DESIRED_STATE, state.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn persist_installed(
    db: &Database,
    meta: &Meta,
    state: &DesiredState,
    data: &[u8],
) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    {
        let mut table = txn.open_table(STATE_MACHINE)?;
        write_value(&mut table, LAST_APPLIED, &meta.last_log_id)?;
        write_value(&mut table, MEMBERSHIP, &meta.last_membership)?;
        write_value(&mut table, DESIRED_STATE, state)?;
        let mut snapshot = txn.open_table(SNAPSHOT)?;
        write_value(&mut snapshot, SNAPSHOT_META, meta)?;
        snapshot.insert(SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(())
}

fn read_snapshot(db: &Database) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let txn = begin_read(db)?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = read_value::<Meta>(&table, SNAPSHOT_META)? else {
        return Ok(None);
    };
    let data = match table.get(SNAPSHOT_DATA)? {
        Some(data) => data.value().to_vec(),
        None => Vec::new(),
    };
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// A copy of the state machine taken by `get_snapshot_builder`; building runs on it while the
/// state machine goes on applying.
pub struct StateSnapshotBuilder {
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: Arc<DesiredState>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: new_snapshot_id(self.last_applied),
        };
        let signature = meta.signature();
        let payload = SnapshotPayload {
            meta: &meta,
            state: self.state.as_ref(),
        };
        let data = encode("snapshot", &payload)
            .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
        let stored_meta = meta.clone();
        let data = with_db(&self.db, move |db| {
            store_snapshot_unless_older(db, &stored_meta, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Snapshot ids must differ even for equal log ids (openraft compares them to tell transfers
/// apart), and a counter would restart from zero with the process: a random suffix does not.
pub(super) fn new_snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    let suffix: u64 = rand::random();
    match last_applied {
        Some(log_id) => format!("{log_id}-{suffix:016x}"),
        None => format!("empty-{suffix:016x}"),
    }
}

/// Stores a freshly built snapshot, unless one installed from the leader while it was being
/// built already covers more of the log.
fn store_snapshot_unless_older(db: &Database, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
    let txn = begin_write(db)?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        let stored: Option<Meta> = read_value(&table, SNAPSHOT_META)?;
        if stored.is_none_or(|stored| stored.last_log_id <= meta.last_log_id) {
            write_value(&mut table, SNAPSHOT_META, meta)?;
            table.insert(SNAPSHOT_DATA, data)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod gap_tests {
    use std::time::Duration;

    use super::{PERSIST_EVERY, persist_gap};

    #[test]
    fn a_slow_whole_state_write_waits_twenty_times_as_long_before_the_next() {
        assert_eq!(persist_gap(Duration::ZERO), PERSIST_EVERY);
        assert_eq!(persist_gap(Duration::from_millis(50)), PERSIST_EVERY);
        assert_eq!(
            persist_gap(Duration::from_millis(300)),
            Duration::from_secs(6)
        );
    }
}
