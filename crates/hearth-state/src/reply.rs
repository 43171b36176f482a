//! What the state layer answers: a committed write's index and outcome, why a write or a
//! linearizable read failed (both cross the wire from the leader to the node that forwarded
//! the request), and a node's own status for `hearth state`.

use std::collections::HashMap;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::model::Outcome;
use crate::types::RaftNode;

/// What a committed write returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub index: u64,
    pub outcome: Outcome,
}

/// Why a write or a linearizable read could not be done. Serializable: it crosses the wire
/// from the leader back to the node that forwarded the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<RaftNode> },
    #[error("the replicated state is not formed yet: {0}")]
    NotFormed(String),
    #[error("cannot reach the leader: {0}")]
    Unreachable(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// A live node runs a release that could not read the command: it waits for the upgrade.
    #[error("not yet: {0}")]
    Unsupported(String),
    /// Asked over a worker key for what only a holder of the cluster secret may do.
    #[error("refused: {0}")]
    Forbidden(String),
}

/// Turns openraft's write error into ours.
pub fn write_error(error: RaftError<u64, ClientWriteError<u64, RaftNode>>) -> StateError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => StateError::NotLeader {
            leader: forward.leader_node,
        },
        RaftError::APIError(other) => StateError::NoQuorum(other.to_string()),
        RaftError::Fatal(fatal) => StateError::Fatal(fatal.to_string()),
    }
}

/// `hearth state`: what this node knows about the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateStatus {
    pub node: String,
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub applied_index: u64,
    /// The last log index in this node's latest snapshot of the state (0: none yet).
    #[serde(default)]
    pub snapshot_index: u64,
    /// The last log index removed from this node's log (0: none): a node that needs an
    /// entry at or before it can only be sent the snapshot.
    #[serde(default)]
    pub purged_index: u64,
    /// Per node, the last log index known to be replicated to it (leader only).
    pub replicated: HashMap<String, u64>,
    /// The node's clock when it answered, milliseconds since the Unix epoch (0 from an agent
    /// too old to say).
    #[serde(default)]
    pub unix_ms: u64,
}

/// This machine's clock, milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
