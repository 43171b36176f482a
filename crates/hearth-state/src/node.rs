//! The state node: starts openraft on this server, keeps the voter set in step with gossip,
//! and serves writes (forwarded to the leader, failing fast without a quorum) and reads
//! (local, or linearizable through the leader's read index).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_types::{Role, View};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::files::{ConsoleAttach, ConsoleChunk, ConsoleSession, PeerError, PeerFiles};
use crate::model::Command;
use crate::network::{Application, Network, PeerClient, RpcRequest, RpcResponse, SharedKeyring};
use crate::plan::{Candidate, Change, formation, plan};
use crate::reply::{StateError, WriteResult};
use crate::store::{self, StateReader};
use crate::types::{Raft, RaftNode, node_id};

/// The state level of the first release whose servers open server-key connections: once
/// every live node has it, worker-key connections are held to a worker's part.
const WORKER_KEYS_LEVEL: u32 = 3;

/// How long after its start a node takes a group member its gossip has not heard from yet
/// for one of the oldest release (see `model::group_level`): time enough for gossip to
/// bring every live member's announcement.
const LEVEL_WARMUP: Duration = Duration::from_secs(60);

pub use crate::reply::StateStatus;

/// Settings of the state node (the `[state]` config section).
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// The address peers reach this node's Raft RPC at.
    pub rpc_advertise: SocketAddr,
    /// Form the group once this many servers and witnesses are alive.
    pub bootstrap_expect: usize,
    /// A voter dead this long is replaced by a live learner.
    pub replace_voter_after: Duration,
    /// A write that is not committed within this long fails.
    pub write_timeout: Duration,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Log entries between two snapshots of the state; a fifth of them (at most 1 000) stay
    /// in the log after each, for followers a little behind.
    pub snapshot_every: u64,
    /// The files this node serves its peers: image files, and a worker's VM consoles.
    pub files: Option<Arc<dyn PeerFiles>>,
}

/// Why the state node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartStateError {
    #[error("data_dir: {0}")]
    Store(#[from] store::OpenStoreError),
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// One group member's own report, for `hearth state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub role: Option<String>,
    pub term: Option<u64>,
    pub applied_index: Option<u64>,
    pub error: Option<String>,
    /// How far the node's clock is ahead of this one's (negative: behind), in milliseconds,
    /// give or take half the round trip of the question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

impl NodeReport {
    /// The report of `status`, which came back between `asked` and `answered` (this node's
    /// clock, Unix milliseconds).
    fn of(status: &StateStatus, asked: u64, answered: u64) -> Self {
        let midpoint = (asked / 2 + answered / 2) as i64;
        NodeReport {
            role: Some(status.role.clone()),
            term: Some(status.term),
            applied_index: Some(status.applied_index),
            error: None,
            clock_offset_ms: (status.unix_ms != 0).then(|| status.unix_ms as i64 - midpoint),
        }
    }

    fn failed(error: String) -> Self {
        NodeReport {
            role: None,
            term: None,
            applied_index: None,
            error: Some(error),
            clock_offset_ms: None,
        }
    }
}

/// `hearth state`: this node's view plus each member's own report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    #[serde(flatten)]
    pub local: StateStatus,
    pub nodes: std::collections::BTreeMap<String, NodeReport>,
}

/// A handle on the running state node; clone freely.
#[derive(Clone)]
pub struct StateNode {
    inner: Arc<Inner>,
}

struct Inner {
    config: StateConfig,
    raft: Raft,
    reader: StateReader,
    views: watch::Receiver<Arc<View>>,
    keyring: SharedKeyring,
    leader_client: Mutex<Option<(String, PeerClient)>>,
    /// Writes on their way into a batch (see `batch`).
    batcher: tokio::sync::mpsc::Sender<crate::batch::Pending>,
    /// The caps on RPC connections to this node.
    rpc_limits: crate::network::RpcLimits,
    started: std::time::Instant,
}

impl StateNode {
    /// RPC connections closed at once for being over a cap.
    pub fn rpc_refused(&self) -> u64 {
        self.inner.rpc_limits.refused()
    }

    pub async fn start(
        config: StateConfig,
        listener: TcpListener,
        keyring: SharedKeyring,
        views: watch::Receiver<Arc<View>>,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Result<StateNode, StartStateError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartStateError::Config(format!("{}: {e}", config.data_dir.display())))?;
        let (log_store, state_machine, reader) = store::open(&config.data_dir.join("state.redb"))?;
        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "hearth".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: (config.snapshot_every / 5).min(1_000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartStateError::Config(e.to_string()))?;
        let network = Network {
            keyring: keyring.clone(),
        };
        let raft = Raft::new(
            node_id(&config.node_name),
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartStateError::Raft(e.to_string()))?;
        let (batcher, batches) = tokio::sync::mpsc::channel(4 * crate::batch::MAX_BATCH);
        tasks.spawn(crate::batch::run(raft.clone(), batches, shutdown.clone()));
        let node = StateNode {
            inner: Arc::new(Inner {
                batcher,
                config,
                raft: raft.clone(),
                reader,
                views,
                keyring: keyring.clone(),
                leader_client: Mutex::new(None),
                rpc_limits: Default::default(),
                started: Instant::now(),
            }),
        };
        tasks.spawn(crate::network::serve(
            listener,
            raft.clone(),
            node.clone(),
            keyring,
            node.inner.rpc_limits.clone(),
            shutdown.clone(),
        ));
        let manager = node.clone();
        tasks.spawn(async move { manager.manage_membership(shutdown).await });
        Ok(node)
    }

    /// Whether this node is the Raft leader now.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id)
    }

    /// Whether this node belongs to a formed group.
    pub fn in_group(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        membership.voter_ids().next().is_some()
    }

    /// The highest state level every node that must read the log reads (see
    /// `model::group_level`).
    pub fn cluster_level(&self) -> u32 {
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let group = membership
            .membership()
            .nodes()
            .map(|(_, node)| node.name.as_str());
        let warming = self.inner.started.elapsed() < LEVEL_WARMUP;
        crate::model::group_level(&self.inner.views.borrow(), group, warming)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.config.node_name
    }

    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    /// Commits `command` through the leader. Fails fast, with the reason, when there is no
    /// quorum; never waits longer than the write timeout.
    pub async fn submit(&self, command: Command) -> Result<WriteResult, StateError> {
        let timeout = self.inner.config.write_timeout;
        match tokio::time::timeout(timeout, self.submit_inner(command)).await {
            Ok(result) => result,
            Err(_) => Err(StateError::NoQuorum(format!(
                "the write was not committed within {timeout:?}; {}",
                self.quorum_hint()
            ))),
        }
    }

    async fn submit_inner(&self, command: Command) -> Result<WriteResult, StateError> {
        let servers_key = crate::network::current_keyring(&self.inner.keyring).holds_servers_key();
        if !servers_key && !command.is_a_workers() {
            return Err(StateError::Forbidden(format!(
                "this worker holds only a worker key, which may not write {}; send it to a server's API",
                command.object_key()
            )));
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(metrics.id) {
            return self.write(command).await;
        }
        let request = RpcRequest::Write(Box::new(command));
        match self.call_leader(&request).await? {
            RpcResponse::Write(result) => result,
            _ => Err(StateError::Unreachable(
                "the leader answered another RPC".into(),
            )),
        }
    }

    /// The index at which a linearizable read may be served here: confirmed by the leader
    /// with a quorum, and applied locally.
    pub async fn linearizable_index(&self) -> Result<u64, StateError> {
        let timeout = self.inner.config.write_timeout;
        let index = tokio::time::timeout(timeout, async {
            let metrics = self.inner.raft.metrics().borrow().clone();
            if metrics.current_leader == Some(metrics.id) {
                return self.read_index().await;
            }
            match self.call_leader(&RpcRequest::ReadIndex).await? {
                RpcResponse::ReadIndex(result) => result,
                _ => Err(StateError::Unreachable(
                    "the leader answered another RPC".into(),
                )),
            }
        })
        .await
        .map_err(|_| StateError::NoQuorum(format!("no read index within {timeout:?}")))??;
        // Raft's metrics advance after the state machine has published the applied state,
        // so once they reach `index` the local reader shows every write up to it.
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| {
                StateError::NoQuorum("this node is not catching up with the leader".into())
            })?;
        Ok(index)
    }

    /// Waits, at most the write timeout, until this node has applied the log up to `index`,
    /// so that what a client wrote through it reads back here (a write forwarded to the
    /// leader commits before this follower hears of it). False when it did not catch up.
    pub async fn caught_up_to(&self, index: u64) -> bool {
        self.inner
            .raft
            .wait(Some(self.inner.config.write_timeout))
            .applied_index_at_least(Some(index), "the client's own write")
            .await
            .is_ok()
    }

    async fn call_leader(&self, request: &RpcRequest) -> Result<RpcResponse, StateError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        });
        let Some(leader) = leader else {
            return Err(
                if metrics.membership_config.membership().voter_ids().count() == 0 {
                    StateError::NotFormed(format!(
                        "waiting for {} servers to form the group",
                        self.inner.config.bootstrap_expect
                    ))
                } else {
                    StateError::NoQuorum(format!("no leader is elected; {}", self.quorum_hint()))
                },
            );
        };
        let mut slot = self.inner.leader_client.lock().await;
        if slot
            .as_ref()
            .is_none_or(|(addr, _)| *addr != leader.rpc_addr)
        {
            let client = PeerClient::new(leader.rpc_addr.clone(), self.inner.keyring.clone());
            *slot = Some((leader.rpc_addr.clone(), client));
        }
        let Some((_, client)) = slot.as_mut() else {
            return Err(StateError::Unreachable("no connection".into()));
        };
        client
            .call(request, self.inner.config.write_timeout)
            .await
            .map_err(|e| {
                StateError::Unreachable(format!("{} ({}): {e}", leader.name, leader.rpc_addr))
            })
    }

    /// Voters this node's gossip sees up, out of all voters.
    fn voters_up(&self) -> (usize, usize) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let view = self.inner.views.borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let up = voters
            .iter()
            .filter(|id| {
                membership
                    .get_node(id)
                    .and_then(|node| view.members.get(&node.name))
                    .is_some_and(|m| m.state.is_up())
            })
            .count();
        (up, voters.len())
    }

    fn quorum_hint(&self) -> String {
        let (up, total) = self.voters_up();
        let mut hint = format!(
            "{up} of {total} voters are reachable, {} needed",
            total / 2 + 1
        );
        if total == 2 && up < 2 {
            hint.push_str(
                "; a two-server co-op needs a witness to keep writing while one server is down: \
                 run a third agent with roles = [\"witness\"]",
            );
        }
        hint
    }

    /// A client for group member `host` (learners included).
    fn client_for(&self, host: &str) -> Result<PeerClient, PeerError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let node = membership
            .nodes()
            .map(|(_, node)| node)
            .find(|node| node.name == host)
            .ok_or_else(|| PeerError::NotMember(host.to_owned()))?;
        Ok(PeerClient::new(
            node.rpc_addr.clone(),
            self.inner.keyring.clone(),
        ))
    }

    /// Copies VM `vm`'s stopped disk of `generation` from `host`, chunk by chunk, into `sink`
    /// (each chunk's bytes, and the file's size). Returns the size and the sha256 `host`
    /// reported for the whole file, which the caller checks its copy against. Any failure
    /// fails the whole copy.
    pub async fn fetch_disk(
        &self,
        host: &str,
        vm: &str,
        generation: u64,
        mut sink: impl FnMut(&[u8], u64) -> Result<(), String>,
    ) -> Result<(u64, String), PeerError> {
        use base64::Engine;
        let mut client = self.client_for(host)?;
        let protocol = |message: &str| PeerError::Protocol {
            host: host.to_owned(),
            message: message.to_owned(),
        };
        let (mut offset, mut size) = (0u64, None);
        loop {
            let request = RpcRequest::Disk {
                vm: vm.to_owned(),
                generation,
                offset,
            };
            let chunk = match client.call(&request, Duration::from_secs(30)).await {
                Ok(RpcResponse::Disk(Ok(chunk))) => chunk,
                Ok(RpcResponse::Disk(Err(error))) => {
                    let host = host.to_owned();
                    return Err(PeerError::Refused { host, error });
                }
                Ok(_) => return Err(protocol("answered another RPC")),
                Err(error) => {
                    let (host, error) = (host.to_owned(), error.to_string());
                    return Err(PeerError::Unreachable { host, error });
                }
            };
            if *size.get_or_insert(chunk.total) != chunk.total {
                return Err(protocol("the disk changed size during the copy"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(chunk.data.as_bytes())
                .map_err(|e| protocol(&e.to_string()))?;
            if bytes.is_empty() && offset < chunk.total {
                return Err(protocol("the disk ended early"));
            }
            sink(&bytes, chunk.total).map_err(PeerError::Sink)?;
            offset += bytes.len() as u64;
            if offset >= chunk.total {
                let sha256 = chunk
                    .sha256
                    .ok_or_else(|| protocol("no checksum came with the end of the disk"))?;
                return Ok((offset, sha256));
            }
        }
    }

    /// Part of VM `vm`'s console log, read by `host` (a group member, learners included).
    pub async fn console(
        &self,
        host: &str,
        vm: &str,
        offset: Option<u64>,
    ) -> Result<ConsoleChunk, PeerError> {
        let request = RpcRequest::Console {
            vm: vm.to_owned(),
            offset,
        };
        self.ask_host(host, &request, |response| match response {
            RpcResponse::Console(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    /// Attaches to the serial console of a VM that runs on `host`: here through this
    /// node's own files, elsewhere over the encrypted RPC.
    pub async fn attach_console(
        &self,
        host: &str,
        here: bool,
        attach: ConsoleAttach,
    ) -> Result<ConsoleSession, PeerError> {
        let refused = |error| PeerError::Refused {
            host: host.to_owned(),
            error,
        };
        if here {
            let files = self.inner.config.files.as_deref().ok_or_else(|| {
                refused(crate::files::FileError::NotServed(
                    "this node runs no VMs".into(),
                ))
            })?;
            return files.console_attach(attach).await.map_err(refused);
        }
        let addr = self.client_for(host)?.addr().to_owned();
        crate::network::open_console(addr, self.inner.keyring.clone(), attach)
            .await
            .map_err(|failure| match failure {
                Ok(error) => refused(error),
                Err(error) => PeerError::Unreachable {
                    host: host.to_owned(),
                    error: error.to_string(),
                },
            })
    }

    /// VM `vm`'s recent load, as `host` recorded it.
    pub async fn vm_stats(
        &self,
        host: &str,
        vm: &str,
    ) -> Result<hearth_types::vmstats::VmHistory, PeerError> {
        let request = RpcRequest::VmStats { vm: vm.to_owned() };
        self.ask_host(host, &request, |response| match response {
            RpcResponse::VmStats(answer) => Some(*answer),
            _ => None,
        })
        .await
    }

    /// Sends `request` to `host` and takes its answer out with `answer` (`None`: the host
    /// answered another RPC).
    async fn ask_host<T>(
        &self,
        host: &str,
        request: &RpcRequest,
        answer: impl FnOnce(RpcResponse) -> Option<Result<T, crate::files::FileError>>,
    ) -> Result<T, PeerError> {
        let mut client = self.client_for(host)?;
        let host = host.to_owned();
        match client.call(request, Duration::from_secs(5)).await {
            Ok(response) => match answer(response) {
                Some(result) => result.map_err(|error| PeerError::Refused { host, error }),
                None => Err(PeerError::Protocol {
                    host,
                    message: "answered another RPC".into(),
                }),
            },
            Err(error) => Err(PeerError::Unreachable {
                host,
                error: error.to_string(),
            }),
        }
    }

    /// Fetches the verified image file `sha256` from the first group member that has it,
    /// handing each chunk to `sink` in order; returns the size. A member that fails mid-way
    /// fails the whole fetch (the caller starts again with an empty sink).
    pub async fn fetch_blob(
        &self,
        sha256: &str,
        mut sink: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, PeerError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let mut tried = Vec::new();
        for (id, node) in membership.nodes() {
            if *id == metrics.id {
                continue;
            }
            let mut client = PeerClient::new(node.rpc_addr.clone(), self.inner.keyring.clone());
            match fetch_from(&mut client, &node.name, sha256, &mut sink).await {
                Ok(size) => return Ok(size),
                Err(Fetch::Elsewhere(why)) => tried.push(format!("{}: {why}", node.name)),
                Err(Fetch::Failed(error)) => return Err(error),
            }
        }
        Err(PeerError::NoCopy(tried))
    }

    /// This node's status, plus every group member's own applied index, asked over RPC
    /// (a member that does not answer within a second is reported with its error).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let local = self.status();
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let mut nodes = std::collections::BTreeMap::new();
        for (id, node) in membership.nodes() {
            let report = if *id == metrics.id {
                NodeReport::of(&local, local.unix_ms, local.unix_ms)
            } else {
                let mut client = PeerClient::new(node.rpc_addr.clone(), self.inner.keyring.clone());
                let asked = crate::reply::unix_ms();
                match client
                    .call(&RpcRequest::Status, Duration::from_secs(1))
                    .await
                {
                    Ok(RpcResponse::Status(status)) => {
                        NodeReport::of(&status, asked, crate::reply::unix_ms())
                    }
                    Ok(_) => NodeReport::failed("answered another RPC".into()),
                    Err(error) => NodeReport::failed(error.to_string()),
                }
            };
            nodes.insert(node.name.clone(), report);
        }
        ClusterStatus { local, nodes }
    }

    pub fn status(&self) -> StateStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let name_of = |id: &u64| {
            membership
                .get_node(id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: Vec<String> = membership.learner_ids().map(|id| name_of(&id)).collect();
        let replicated = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log_id)| (name_of(id), log_id.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        StateStatus {
            node: self.inner.config.node_name.clone(),
            role: format!("{:?}", metrics.state).to_lowercase(),
            leader: metrics.current_leader.map(|id| name_of(&id)),
            term: metrics.current_term,
            voters: voters.iter().map(name_of).collect(),
            learners,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
            replicated,
            unix_ms: crate::reply::unix_ms(),
        }
    }

    /// Forms the group when it does not exist yet, and, on the leader, keeps the voter set in
    /// step with gossip. Runs until `shutdown`.
    async fn manage_membership(self, shutdown: CancellationToken) {
        let mut down_since: HashMap<String, Instant> = HashMap::new();
        // Let gossip find the other servers before deciding this node is the lowest-named.
        let settle = self.inner.config.election_timeout * 4;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settle) => {}
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let view = self.inner.views.borrow().clone();
            let candidates = candidates(&view, &mut down_since);
            if let Err(error) = self.step_membership(&candidates).await {
                tracing::debug!(%error, "membership step");
            }
        }
        let _ = self.inner.raft.shutdown().await;
    }

    async fn step_membership(&self, candidates: &[Candidate]) -> Result<(), String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.is_empty() {
            return self.maybe_bootstrap(candidates).await;
        }
        if metrics.state != ServerState::Leader {
            return Ok(());
        }
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let replace_after = self.inner.config.replace_voter_after;
        let Some(change) = plan(&voters, &learners, candidates, replace_after)
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        tracing::info!(?change, "changing the raft group");
        let raft = &self.inner.raft;
        let result = match change {
            Change::AddLearner { id, node } => raft.add_learner(id, node, true).await.map(|_| ()),
            Change::SetVoters(ids) => raft
                .change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
                .await
                .map(|_| ()),
        };
        result.map_err(|e| e.to_string())
    }

    /// Forms the group when `plan::formation` says this node is the one to.
    async fn maybe_bootstrap(&self, candidates: &[Candidate]) -> Result<(), String> {
        let config = &self.inner.config;
        let Some(members) = formation(candidates, &config.node_name, config.bootstrap_expect)
        else {
            return Ok(());
        };
        tracing::info!(voters = ?members.values().map(|n| &n.name).collect::<Vec<_>>(), "forming the raft group");
        // An error means another node's log already reached us: the group exists.
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|error| error.to_string())
    }
}

/// Nodes with a Raft address, from the gossip view: servers and witnesses (who may vote)
/// and workers (who follow as learners).
fn candidates(view: &View, down_since: &mut HashMap<String, Instant>) -> Vec<Candidate> {
    let now = Instant::now();
    view.members
        .values()
        .filter_map(|m| {
            let rpc_addr = m.meta.rpc_addr?;
            let up = m.state.is_up();
            let down_for = if up {
                down_since.remove(&m.meta.name);
                Duration::ZERO
            } else {
                let since = *down_since.entry(m.meta.name.clone()).or_insert(now);
                now - since
            };
            Some(Candidate {
                id: node_id(&m.meta.name),
                node: RaftNode::new(&m.meta.name, rpc_addr),
                up,
                down_for,
                in_group: m.meta.in_group,
                can_vote: m
                    .meta
                    .roles
                    .iter()
                    .any(|r| matches!(r, Role::Server | Role::Witness)),
            })
        })
        .collect()
}

/// How one member's fetch ended, when it did not end well.
enum Fetch {
    /// Nothing was read from it: try the next member.
    Elsewhere(String),
    /// It failed mid-way, or the sink refused: the whole fetch fails.
    Failed(PeerError),
}

/// Reads the whole file `sha256` from one member, chunk by chunk, into `sink`.
async fn fetch_from(
    client: &mut PeerClient,
    host: &str,
    sha256: &str,
    sink: &mut impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, Fetch> {
    use base64::Engine;
    let protocol = |message: String| {
        Fetch::Failed(PeerError::Protocol {
            host: host.to_owned(),
            message,
        })
    };
    let mut offset = 0u64;
    loop {
        let request = RpcRequest::FetchBlob {
            sha256: sha256.to_owned(),
            offset,
        };
        let chunk = match client.call(&request, Duration::from_secs(30)).await {
            Ok(RpcResponse::Blob(Ok(chunk))) => chunk,
            Ok(RpcResponse::Blob(Err(error))) if offset == 0 => {
                return Err(Fetch::Elsewhere(error.to_string()));
            }
            Ok(RpcResponse::Blob(Err(error))) => {
                return Err(Fetch::Failed(PeerError::Refused {
                    host: host.to_owned(),
                    error,
                }));
            }
            Ok(_) => return Err(protocol("answered another RPC".into())),
            Err(error) if offset == 0 => return Err(Fetch::Elsewhere(error.to_string())),
            Err(error) => {
                return Err(Fetch::Failed(PeerError::Unreachable {
                    host: host.to_owned(),
                    error: error.to_string(),
                }));
            }
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(chunk.data.as_bytes())
            .map_err(|e| protocol(e.to_string()))?;
        if bytes.is_empty() && offset < chunk.total {
            return Err(protocol("the file ended early".into()));
        }
        sink(&bytes).map_err(|e| Fetch::Failed(PeerError::Sink(e)))?;
        offset += bytes.len() as u64;
        if offset >= chunk.total {
            return Ok(offset);
        }
    }
}

impl Application for StateNode {
    /// On the leader: checks that a quorum answered recently, then commits.
    async fn write(&self, command: Command) -> Result<WriteResult, StateError> {
        let level = self.cluster_level();
        if command.level() > level {
            return Err(StateError::Unsupported(format!(
                "a live node runs an older release (state level {level}) that cannot read this \
                 change (level {}); upgrade every node first",
                command.level()
            )));
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        let heartbeat = self.inner.config.election_timeout;
        if metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| ms > heartbeat.as_millis() as u64)
        {
            return Err(StateError::NoQuorum(self.quorum_hint()));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = crate::batch::Pending { command, reply };
        if self.inner.batcher.send(pending).await.is_err() {
            return Err(StateError::Fatal("the state node is shutting down".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StateError::Fatal("the state node is shutting down".into())))
    }

    fn status(&self) -> StateStatus {
        StateNode::status(self)
    }

    fn files(&self) -> Option<&dyn PeerFiles> {
        self.inner.config.files.as_deref()
    }

    fn holds_workers_to_their_part(&self) -> bool {
        self.cluster_level() >= WORKER_KEYS_LEVEL
    }

    fn worker_names(&self) -> Vec<String> {
        let view = self.inner.views.borrow();
        view.members
            .values()
            .filter(|m| m.meta.roles.contains(&Role::Worker))
            .map(|m| m.meta.name.clone())
            .collect()
    }

    fn vm_is_at(&self, vm: &str, name: &str) -> bool {
        let desired = self.inner.reader.current();
        desired.compute.vms.get(vm).is_some_and(|vm| {
            vm.value.host.as_deref() == Some(name)
                || vm.value.migration.as_ref().is_some_and(|m| m.to == name)
        })
    }

    async fn read_index(&self) -> Result<u64, StateError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
            Err(error) => Err(StateError::NoQuorum(format!(
                "{error}; {}",
                self.quorum_hint()
            ))),
        }
    }
}
