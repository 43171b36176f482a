//! Quorum loss, for real: a three-node openraft group on the crate's store and sealed RPC
//! loses two nodes for good, `recover_alone` rewrites the survivor's stopped store, and the
//! survivor leads alone with every acknowledged write; a wiped former member then rejoins.
//! Also, on a real one-node group, the leader's group commit under a burst of audited writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hearth_membership::{Keyring, Secret};
use hearth_state::model::{Command, Expect};
use hearth_state::network::{
    self, Application, Network, SharedKeyring, StateError, WriteResult, write_error,
};
use hearth_state::node::StateStatus;
use hearth_state::recover::recover_alone;
use hearth_state::store::{self, OpenStoreError, StateReader};
use hearth_state::types::{Raft, RaftNode, node_id};
use hearth_types::desired::{RecordData, RecordSet};
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// A private directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "hearth-recover-{label}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The application RPCs, served straight by the local Raft: the test writes on the leader.
#[derive(Clone)]
struct Direct(Raft);

impl Application for Direct {
    async fn write(&self, command: Command) -> Result<WriteResult, StateError> {
        let response = self.0.client_write(command).await.map_err(write_error)?;
        Ok(WriteResult {
            index: response.log_id.index,
            outcome: response.data,
        })
    }

    async fn read_index(&self) -> Result<u64, StateError> {
        match self.0.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |id| id.index)),
            Err(error) => Err(StateError::NoQuorum(error.to_string())),
        }
    }

    fn files(&self) -> Option<&dyn hearth_state::files::PeerFiles> {
        None
    }

    fn holds_workers_to_their_part(&self) -> bool {
        true
    }

    fn worker_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn vm_is_at(&self, _vm: &str, _name: &str) -> bool {
        false
    }

    /// Not asked for by this test; enough for a peer that does.
    fn status(&self) -> StateStatus {
        let metrics = self.0.metrics().borrow().clone();
        StateStatus {
            node: metrics.id.to_string(),
            role: format!("{:?}", metrics.state).to_lowercase(),
            leader: metrics.current_leader.map(|id| id.to_string()),
            term: metrics.current_term,
            voters: metrics
                .membership_config
                .voter_ids()
                .map(|id| id.to_string())
                .collect(),
            learners: Vec::new(),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            replicated: HashMap::new(),
            unix_ms: 0,
            ..StateStatus::default()
        }
    }
}

/// One node as the agent runs it: the store in `<data_dir>/state/state.redb`, openraft, and
/// the sealed RPC server.
struct TestNode {
    name: &'static str,
    raft: Raft,
    reader: StateReader,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("state.redb")
}

fn keyring() -> SharedKeyring {
    let keyring = Keyring::new("recover-test", &Secret::new([7; 32]), &[]);
    Arc::new(RwLock::new(Arc::new(keyring)))
}

async fn start(
    name: &'static str,
    data_dir: &Path,
    listener: TcpListener,
    keyring: &SharedKeyring,
) -> TestNode {
    std::fs::create_dir_all(data_dir.join("state")).unwrap();
    let (log, state_machine, reader) = store::open(&state_file(data_dir)).unwrap();
    let config = openraft::Config {
        cluster_name: "hearth".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let network = Network {
        keyring: keyring.clone(),
    };
    let raft = Raft::new(node_id(name), Arc::new(config), network, log, state_machine)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(network::serve(
        listener,
        raft.clone(),
        Direct(raft.clone()),
        keyring.clone(),
        Default::default(),
        shutdown.clone(),
    ));
    TestNode {
        name,
        raft,
        reader,
        shutdown,
        server,
    }
}

/// Stops the node for good: Raft, then its RPC server.
async fn stop(node: TestNode) {
    node.raft.shutdown().await.unwrap();
    node.shutdown.cancel();
    node.server.await.unwrap();
}

/// openraft's state machine task drops the store shortly after `shutdown` returns; the file
/// stays locked until then.
async fn wait_until_released(path: &Path) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match store::open(path) {
            Ok(_) => return,
            Err(OpenStoreError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("{}: not released: {error}", path.display()),
        }
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn put_a(name: &str, octet: u8) -> Command {
    Command::PutRecords {
        records: RecordSet {
            name: name.into(),
            ttl: None,
            values: vec![RecordData::A {
                address: [192, 0, 2, octet].into(),
            }],
        },
        expect: Expect::Absent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_survivor_leads_with_every_acknowledged_write() {
    let root = TempDir::new("cluster");
    let keyring = keyring();
    let names = ["n1", "n2", "n3"];
    let mut members = BTreeMap::new();
    let mut nodes = Vec::new();
    for name in names {
        let (listener, addr) = listen().await;
        members.insert(node_id(name), RaftNode::new(name, addr));
        nodes.push(start(name, &root.0.join(name), listener, &keyring).await);
    }
    nodes[0].raft.initialize(members).await.unwrap();
    let metrics = nodes[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.current_leader.is_some() && m.membership_config.voter_ids().count() == 3,
            "a leader of the three",
        )
        .await
        .unwrap();
    let leader_id = metrics.current_leader.unwrap();
    let leader = nodes.iter().find(|n| node_id(n.name) == leader_id).unwrap();

    // Every write the leader acknowledges, with the version (log index) it got.
    let mut acknowledged = Vec::new();
    for (i, name) in ["mail", "www", "git", "wiki"].into_iter().enumerate() {
        let response = leader.raft.client_write(put_a(name, i as u8 + 1)).await;
        acknowledged.push((format!("{name}/A"), response.unwrap().log_id.index));
    }
    let last_acknowledged = acknowledged.last().unwrap().1;

    // The survivor is a follower that has every acknowledged entry in its log, maybe not yet
    // known committed or applied; the other two go away for good, then it stops too.
    let survivor_idx = nodes
        .iter()
        .position(|n| node_id(n.name) != leader_id)
        .unwrap();
    let survivor = nodes.remove(survivor_idx);
    survivor
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.last_log_index >= Some(last_acknowledged),
            "the survivor has every acknowledged entry",
        )
        .await
        .unwrap();
    for node in nodes {
        stop(node).await;
    }
    let survivor_name = survivor.name;
    let survivor_dir = root.0.join(survivor_name);
    stop(survivor).await;
    wait_until_released(&state_file(&survivor_dir)).await;

    let (listener, addr) = listen().await;
    let report = recover_alone(&state_file(&survivor_dir), survivor_name, addr).unwrap();
    assert_eq!(report.voter, survivor_name);
    assert_eq!(report.previous_voters, names);
    assert!(report.applied_index >= last_acknowledged, "{report:?}");

    let node = start(survivor_name, &survivor_dir, listener, &keyring).await;
    let me = node_id(survivor_name);
    let metrics = node
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.state == ServerState::Leader && m.current_leader == Some(me),
            "the survivor leads alone",
        )
        .await
        .unwrap();
    let voters: BTreeSet<u64> = metrics.membership_config.voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([me]));
    assert!(metrics.current_term > report.term, "{metrics:?}");
    let state = node.reader.current();
    for (key, version) in &acknowledged {
        assert_eq!(state.records.get(key).map(|r| r.version), Some(*version));
    }

    let response = node.raft.client_write(put_a("new", 99)).await.unwrap();
    assert!(response.log_id.index > report.applied_index);
    node.raft
        .wait(Some(DEADLINE))
        .applied_index_at_least(Some(response.log_id.index), "the new write applied")
        .await
        .unwrap();
    let state = node.reader.current();
    assert_eq!(
        state.records.get("new/A").map(|r| r.version),
        Some(response.log_id.index)
    );
    assert_eq!(state.records.len(), acknowledged.len() + 1);

    // A former member whose state directory was wiped rejoins as a learner and gets the
    // state from the recovered node's snapshot.
    let former = *names.iter().find(|name| **name != survivor_name).unwrap();
    let (listener, addr) = listen().await;
    let rejoined = start(former, &root.0.join("wiped"), listener, &keyring).await;
    node.raft
        .add_learner(node_id(former), RaftNode::new(former, addr), true)
        .await
        .unwrap();
    rejoined
        .raft
        .wait(Some(DEADLINE))
        .applied_index_at_least(Some(response.log_id.index), "the learner caught up")
        .await
        .unwrap();
    assert_eq!(rejoined.reader.current(), state);
    stop(rejoined).await;
    stop(node).await;
}

/// A burst of writes, each with its audit entry, as the API sends them: the group commit
/// puts them in a few log entries. Audit entries used to go one per entry (they shared one
/// object key), so a burst left them queued behind the writes, holding memory, until their
/// writers timed out and they were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_audited_writes_takes_a_few_log_entries_and_keeps_every_audit_entry() {
    use hearth_state::batch::{self, Pending};
    use hearth_types::account::AuditEntry;

    let root = TempDir::new("burst");
    let keyring = keyring();
    let (listener, addr) = listen().await;
    let node = start("n1", &root.0.join("n1"), listener, &keyring).await;
    node.raft
        .initialize(BTreeMap::from([(node_id("n1"), RaftNode::new("n1", addr))]))
        .await
        .unwrap();
    node.raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let before = node.reader.applied_index();

    const WRITES: usize = 600;
    let (queue, batches) = tokio::sync::mpsc::channel(4 * WRITES);
    let mut replies = Vec::new();
    for n in 0..WRITES {
        let audit = Command::Audit {
            entry: AuditEntry {
                at: n as u64,
                who: "root".into(),
                method: "PUT".into(),
                path: "/v1/records".into(),
                status: 200,
                ..Default::default()
            },
        };
        for command in [put_a(&format!("host{n}"), (n % 250) as u8 + 1), audit] {
            let (reply, answer) = tokio::sync::oneshot::channel();
            queue.send(Pending { command, reply }).await.unwrap();
            replies.push(answer);
        }
    }
    let stop_batches = CancellationToken::new();
    let batcher = tokio::spawn(batch::run(node.raft.clone(), batches, stop_batches.clone()));
    for answer in replies {
        let result = tokio::time::timeout(DEADLINE, answer).await;
        result.expect("every write answered").unwrap().unwrap();
    }
    let entries = node.reader.applied_index() - before;
    let audit = &node.reader.current().audit;
    assert_eq!(audit.len(), WRITES, "every audit entry is recorded");
    assert!(
        entries <= 10,
        "{entries} log entries for {WRITES} writes and their audit entries (256 per entry)"
    );
    stop_batches.cancel();
    batcher.await.unwrap();
    stop(node).await;
}
