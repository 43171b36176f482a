//! Tests of `recover_alone` on hand-made stores: what it keeps, what openraft loads from the
//! result at startup, and the refusals that leave the file as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use hearth_types::desired::{RecordData, RecordSet};
use openraft::storage::{
    RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper,
};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, LogId, Membership, Vote};

use super::{RecoverError, RecoveryReport, recover_alone};
use crate::model::{Command, Expect};
use crate::store::tests::TempDir;
use crate::store::{LogStore, StateMachineStore, open};
use crate::types::{RaftNode, TypeConfig, node_id};

const NAMES: [&str; 3] = ["n1", "n2", "n3"];

fn addr(name: &str) -> SocketAddr {
    let host = NAMES.iter().position(|n| *n == name).unwrap_or(9) + 1;
    format!("192.0.2.{host}:7947").parse().unwrap()
}

/// A log id written by `n1` as leader of `term`.
fn by_n1(term: u64, index: u64) -> LogId<u64> {
    log_id(term, node_id("n1"), index)
}

fn put_a(name: &str, index: u64) -> Entry<TypeConfig> {
    let records = RecordSet {
        name: name.into(),
        ttl: None,
        values: vec![RecordData::A {
            address: "192.0.2.10".parse().unwrap(),
        }],
    };
    Entry {
        log_id: by_n1(1, index),
        payload: EntryPayload::Normal(Command::PutRecords {
            records,
            expect: Expect::Any,
        }),
    }
}

/// The log of a three-voter group: its membership at index 0, then four writes.
fn group_log() -> Vec<Entry<TypeConfig>> {
    let nodes: BTreeMap<u64, RaftNode> = NAMES
        .iter()
        .map(|name| (node_id(name), RaftNode::new(name, addr(name))))
        .collect();
    let voters: BTreeSet<u64> = nodes.keys().copied().collect();
    let membership = Entry {
        log_id: by_n1(1, 0),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    };
    let mut log = vec![membership];
    log.extend((1..=4).map(|index| put_a(&format!("r{index}"), index)));
    log
}

/// A follower's store: the whole log, entries up to 1 applied, up to 2 known committed, and
/// a vote for n1 at term 2.
async fn follower_store(dir: &TempDir) {
    let (mut log, mut state_machine, _reader) = open(&dir.state_file()).unwrap();
    log.blocking_append(group_log()).await.unwrap();
    state_machine
        .apply(group_log().into_iter().take(2))
        .await
        .unwrap();
    log.save_committed(Some(by_n1(1, 2))).await.unwrap();
    log.save_vote(&Vote::new_committed(2, node_id("n1")))
        .await
        .unwrap();
}

/// What a restarted agent would see: the state openraft computes at startup, and the stores.
async fn startup_state(
    path: &Path,
) -> (
    openraft::RaftState<u64, RaftNode, tokio::time::Instant>,
    LogStore,
    StateMachineStore,
    crate::store::StateReader,
) {
    let (mut log, mut state_machine, reader) = open(path).unwrap();
    let state = StorageHelper::new(&mut log, &mut state_machine)
        .get_initial_state()
        .await
        .unwrap();
    (state, log, state_machine, reader)
}

#[tokio::test]
async fn keeps_every_entry_and_leaves_this_node_the_only_voter() {
    let dir = TempDir::new("recover-follower");
    follower_store(&dir).await;

    let report = recover_alone(&dir.state_file(), "n3", addr("n3")).unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            voter: "n3".into(),
            rpc_addr: addr("n3").to_string(),
            previous_voters: vec!["n1".into(), "n2".into(), "n3".into()],
            previous_learners: vec![],
            applied_index: 4,
            previously_applied_index: 1,
            committed_index: 2,
            n_entries_past_committed: 2,
            term: 3,
        }
    );
    let text = report.to_string();
    assert!(text.contains("Before starting n1, n2 again"), "{text}");

    let (state, mut log, mut state_machine, reader) = startup_state(&dir.state_file()).await;
    let me = node_id("n3");
    let effective = state.membership_state.effective();
    assert_eq!(effective.voter_ids().collect::<Vec<_>>(), [me]);
    assert_eq!(
        effective.get_node(&me),
        Some(&RaftNode::new("n3", addr("n3")))
    );
    assert_eq!(state.committed, Some(by_n1(1, 4)));
    assert_eq!(*state.vote_ref(), Vote::new(3, me));
    assert!(!state.vote_ref().is_committed());
    assert_eq!(state.snapshot_meta.last_log_id, Some(by_n1(1, 4)));

    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, Some(by_n1(1, 4)));
    assert_eq!(log_state.last_log_id, Some(by_n1(1, 4)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    assert_eq!(reader.applied_index(), 4);
    let records: Vec<String> = reader.current().records.keys().cloned().collect();
    assert_eq!(records, ["r1/A", "r2/A", "r3/A", "r4/A"]);

    // A learner that joins later gets the state from the stored snapshot.
    let snapshot = state_machine.get_current_snapshot().await.unwrap().unwrap();
    let joiner = TempDir::new("recover-joiner");
    let (_log, mut learner, learner_reader) = open(&joiner.state_file()).unwrap();
    learner
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(learner_reader.current(), reader.current());
}

#[tokio::test]
async fn a_node_that_applied_everything_keeps_its_state() {
    let dir = TempDir::new("recover-leader");
    {
        let (mut log, mut state_machine, _reader) = open(&dir.state_file()).unwrap();
        log.blocking_append(group_log()).await.unwrap();
        log.save_committed(Some(by_n1(1, 4))).await.unwrap();
        state_machine.apply(group_log()).await.unwrap();
        log.purge(by_n1(1, 2)).await.unwrap();
        log.save_vote(&Vote::new_committed(1, node_id("n1")))
            .await
            .unwrap();
    }
    let before = open(&dir.state_file()).unwrap().2.current();

    let report = recover_alone(&dir.state_file(), "n1", addr("n1")).unwrap();
    assert_eq!(
        (report.applied_index, report.n_entries_past_committed),
        (4, 0)
    );
    assert_eq!(report.term, 2);
    assert!(!report.to_string().contains("were kept"), "{report}");
    let (state, _log, _state_machine, reader) = startup_state(&dir.state_file()).await;
    assert_eq!(reader.current(), before);
    let voters: Vec<u64> = state.membership_state.effective().voter_ids().collect();
    assert_eq!(voters, [node_id("n1")]);
}

/// The state file's bytes.
fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// What `open` reads from the state file: the log, the vote and the applied index.
async fn stored_log(path: &Path) -> (Vec<Entry<TypeConfig>>, Option<Vote<u64>>, u64) {
    let (mut log, _state_machine, reader) = open(path).unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    (
        entries,
        log.read_vote().await.unwrap(),
        reader.applied_index(),
    )
}

#[tokio::test]
async fn a_running_agent_is_told_to_stop_and_nothing_changes() {
    let dir = TempDir::new("recover-locked");
    follower_store(&dir).await;
    let agent = open(&dir.state_file()).unwrap();
    let before = contents(&dir.state_file());

    let error = recover_alone(&dir.state_file(), "n3", addr("n3")).unwrap_err();
    assert!(matches!(error, RecoverError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("stop it"), "{error}");
    assert!(
        contents(&dir.state_file()) == before,
        "the refused recovery changed the file"
    );
    drop(agent);
}

#[tokio::test]
async fn refusals_leave_the_store_as_it_was() {
    let dir = TempDir::new("recover-refused");
    follower_store(&dir).await;
    let before = stored_log(&dir.state_file()).await;

    let error = recover_alone(&dir.state_file(), "n9", addr("n9")).unwrap_err();
    let RecoverError::NotAMember { name, members, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!((name.as_str(), members.as_str()), ("n9", "n1, n2, n3"));
    assert_eq!(stored_log(&dir.state_file()).await, before);

    // A hole in the log, between what was applied and the end, is damage.
    {
        let (mut log, _state_machine, _reader) = open(&dir.state_file()).unwrap();
        log.purge(by_n1(1, 2)).await.unwrap();
    }
    let before = stored_log(&dir.state_file()).await;
    let error = recover_alone(&dir.state_file(), "n3", addr("n3")).unwrap_err();
    assert!(
        matches!(
            error,
            RecoverError::MissingEntries {
                expected: 2,
                found: Some(3),
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(stored_log(&dir.state_file()).await, before);
}

#[tokio::test]
async fn an_empty_or_missing_store_has_nothing_to_recover() {
    let dir = TempDir::new("recover-empty");
    let missing = dir.state_file();
    let error = recover_alone(&missing, "n1", addr("n1")).unwrap_err();
    assert!(matches!(error, RecoverError::Missing { .. }), "{error}");
    assert!(!missing.exists(), "the recovery created a state file");

    drop(open(&dir.state_file()).unwrap());
    let error = recover_alone(&dir.state_file(), "n1", addr("n1")).unwrap_err();
    assert!(matches!(error, RecoverError::NotFormed { .. }), "{error}");
}
