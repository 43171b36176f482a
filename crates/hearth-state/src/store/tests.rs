//! Tests of the redb store: openraft's storage conformance suite, restarts, snapshot transfer
//! and the errors an operator sees when the file cannot be opened.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_types::desired::{DesiredState, RecordData, RecordSet};
use openraft::storage::{
    RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper,
};
use openraft::testing::{StoreBuilder, Suite, blank_ent, log_id};
use openraft::{
    Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};

use super::{LogStore, OpenStoreError, StateMachineStore, open};
use crate::model::{Command, Expect, Outcome};
use crate::types::{RaftNode, TypeConfig};

/// A private directory under the system's temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "hearth-state-{label}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn state_file(&self) -> PathBuf {
        self.0.join("state.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens a fresh store in its own temp dir for each of the suite's cases.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new("suite");
        let (log, state_machine, _reader) =
            open(&dir.state_file()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(TempStores).unwrap();
}

const DEADLINE: Duration = Duration::from_secs(10);

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    let node = RaftNode {
        name: "n1".into(),
        rpc_addr: "192.0.2.1:7946".into(),
    };
    let membership = Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, node)]));
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(membership),
    }
}

fn command_entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn put_mail(address: &str) -> Command {
    Command::PutRecords {
        records: RecordSet {
            name: "mail".into(),
            ttl: None,
            values: vec![RecordData::A {
                address: address.parse().unwrap(),
            }],
        },
        expect: Expect::Any,
    }
}

fn drain_n2() -> Command {
    Command::SetDrain {
        node: "n2".into(),
        drained: true,
        expect: Expect::Any,
    }
}

/// A log as a new cluster starts it: the initial membership at index 0, then two commands.
fn some_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        membership_entry(0),
        command_entry(1, put_mail("192.0.2.10")),
        command_entry(2, drain_n2()),
    ]
}

#[tokio::test]
async fn log_vote_and_committed_survive_a_restart() {
    let dir = TempDir::new("log-restart");
    let vote = Vote::new_committed(1, 1);
    {
        let (mut log, _state_machine, _reader) = open(&dir.state_file()).unwrap();
        log.blocking_append(some_entries()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 1))).await.unwrap();
    }

    let (mut log, _state_machine, _reader) = open(&dir.state_file()).unwrap();
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, None);
    assert_eq!(log_state.last_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 1)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap(), some_entries());
}

#[tokio::test]
async fn applied_state_survives_a_restart() {
    let dir = TempDir::new("sm-restart");
    let expected = {
        let (_log, mut state_machine, reader) = open(&dir.state_file()).unwrap();
        let mut changes = reader.subscribe();
        let outcomes = state_machine.apply(some_entries()).await.unwrap();
        assert_eq!(
            outcomes,
            [
                Outcome::Nothing,
                Outcome::Applied { version: 1 },
                Outcome::Applied { version: 2 }
            ]
        );
        tokio::time::timeout(DEADLINE, changes.changed())
            .await
            .expect("no new state published")
            .unwrap();
        assert_eq!(reader.applied_index(), 2);
        let state = reader.current();
        assert_eq!(state.records["mail/A"].version, 1);
        assert!(state.is_drained("n2"));
        DesiredState::clone(&state)
    };

    let (_log, mut state_machine, reader) = open(&dir.state_file()).unwrap();
    assert_eq!(reader.applied_index(), 2);
    assert_eq!(*reader.current(), expected);
    let (last_applied, membership) = state_machine.applied_state().await.unwrap();
    assert_eq!(last_applied, Some(log_id(1, 1, 2)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 0)));
}

#[tokio::test]
async fn the_background_write_is_done_when_the_store_closes_and_never_goes_back() {
    let dir = TempDir::new("sm-background");
    {
        let (_log, mut state_machine, _reader) = open(&dir.state_file()).unwrap();
        // No membership in the batch: the first write since the start runs in the background.
        state_machine
            .apply([command_entry(1, put_mail("192.0.2.10"))])
            .await
            .unwrap();
        // Closing waits for it: the file opens again at once, with the state written.
    }
    {
        let (_log, state_machine, reader) = open(&dir.state_file()).unwrap();
        assert_eq!(reader.applied_index(), 1);
        assert_eq!(reader.current().records["mail/A"].version, 1);
        // An older write that finishes late leaves the newer one on disk.
        let older = super::state_machine::PersistedRow {
            last_applied: None,
            membership: Default::default(),
            state: Default::default(),
        };
        super::state_machine::persist_row(&state_machine.db, &older).unwrap();
    }
    let (_log, _state_machine, reader) = open(&dir.state_file()).unwrap();
    assert_eq!(reader.applied_index(), 1);
    assert_eq!(reader.current().records["mail/A"].version, 1);
}

#[tokio::test]
async fn a_batch_that_changes_nothing_advances_the_index_without_publishing() {
    let dir = TempDir::new("no-change");
    let (_log, mut state_machine, reader) = open(&dir.state_file()).unwrap();
    state_machine.apply(some_entries()).await.unwrap();
    let changes = reader.subscribe();
    let remove_missing = Command::RemoveRecords {
        key: "nope/A".into(),
        expect: Expect::Any,
    };
    let outcomes = state_machine
        .apply([command_entry(3, remove_missing), blank_ent(1, 1, 4)])
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::NotFound, Outcome::Nothing]);
    assert_eq!(reader.applied_index(), 4);
    assert!(!changes.has_changed().unwrap());
}

#[tokio::test]
async fn a_restarted_node_reapplies_committed_entries() {
    let dir = TempDir::new("reapply");
    {
        let (mut log, mut state_machine, _reader) = open(&dir.state_file()).unwrap();
        log.blocking_append(some_entries()).await.unwrap();
        state_machine
            .apply(some_entries().into_iter().take(1))
            .await
            .unwrap();
        log.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
    }

    let (mut log, mut state_machine, reader) = open(&dir.state_file()).unwrap();
    assert_eq!(reader.applied_index(), 0);
    assert!(reader.current().records.is_empty());
    StorageHelper::new(&mut log, &mut state_machine)
        .get_initial_state()
        .await
        .unwrap();
    assert_eq!(reader.applied_index(), 2);
    assert!(reader.current().is_drained("n2"));
}

#[tokio::test]
async fn a_snapshot_moves_the_state_to_another_store() {
    let (leader_dir, follower_dir) = (TempDir::new("snap-leader"), TempDir::new("snap-follower"));
    let (_leader_log, mut leader, leader_reader) = open(&leader_dir.state_file()).unwrap();
    leader.apply(some_entries()).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 2)));
    let again = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_ne!(again.meta.snapshot_id, snapshot.meta.snapshot_id);

    {
        let (_log, mut follower, reader) = open(&follower_dir.state_file()).unwrap();
        let mut changes = reader.subscribe();
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        *receiving = *snapshot.snapshot.clone();
        follower
            .install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, changes.changed())
            .await
            .expect("no new state published")
            .unwrap();
        assert_eq!(reader.current(), leader_reader.current());
        assert_eq!(reader.applied_index(), 2);
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());
    }

    // The installed snapshot is the follower's state machine from now on, restarts included.
    let (_log, mut follower, reader) = open(&follower_dir.state_file()).unwrap();
    assert_eq!(reader.current(), leader_reader.current());
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
}

#[tokio::test]
async fn a_snapshot_whose_data_does_not_match_its_meta_is_refused() {
    let dir = TempDir::new("snap-mismatch");
    let (_log, mut state_machine, reader) = open(&dir.state_file()).unwrap();
    state_machine.apply(some_entries()).await.unwrap();
    let mut snapshot = state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    snapshot.meta.last_log_id = Some(log_id(1, 1, 9));
    let result = state_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(reader.applied_index(), 2);
}

#[test]
fn a_file_in_use_is_reported_as_locked() {
    let dir = TempDir::new("locked");
    let _open = open(&dir.state_file()).unwrap();
    let error = open(&dir.state_file()).unwrap_err();
    assert!(matches!(error, OpenStoreError::Locked { .. }), "{error}");
    assert!(
        error.to_string().contains("another hearth agent"),
        "{error}"
    );
}

#[test]
fn a_damaged_file_is_an_error_not_a_panic() {
    let dir = TempDir::new("damaged");
    std::fs::write(dir.state_file(), vec![0xa5; 64 * 1024]).unwrap();
    let error = open(&dir.state_file()).unwrap_err();
    assert!(matches!(error, OpenStoreError::Corrupt { .. }), "{error}");
}

#[test]
fn a_missing_directory_is_named() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nope").join("state.redb");
    let error = open(&path).unwrap_err();
    assert!(
        matches!(&error, OpenStoreError::MissingDirectory { dir } if dir == Path::new(&path).parent().unwrap()),
        "{error}"
    );
}

#[tokio::test]
async fn purge_and_truncate_leave_no_hole() {
    let dir = TempDir::new("purge");
    let (mut log, _state_machine, _reader) = open(&dir.state_file()).unwrap();
    log.blocking_append(some_entries()).await.unwrap();
    log.purge(log_id(1, 1, 0)).await.unwrap();
    log.truncate(log_id(1, 1, 2)).await.unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    let ids: Vec<LogId<u64>> = entries.iter().map(|entry| entry.log_id).collect();
    assert_eq!(ids, [log_id(1, 1, 1)]);
    let inverted = (Bound::Included(5), Bound::Excluded(3));
    assert!(log.try_get_log_entries(inverted).await.unwrap().is_empty());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 0)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 1)));
}
