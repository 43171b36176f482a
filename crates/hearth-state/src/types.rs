//! openraft's type configuration for hearth: what a log entry carries and how nodes are
//! named and reached.

use std::io::Cursor;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Command, Outcome};

/// A Raft node: its name and the address of its Raft RPC listener.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RaftNode {
    pub name: String,
    pub rpc_addr: String,
}

impl std::fmt::Display for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.rpc_addr)
    }
}

impl RaftNode {
    pub fn new(name: &str, rpc_addr: SocketAddr) -> Self {
        RaftNode {
            name: name.to_owned(),
            rpc_addr: rpc_addr.to_string(),
        }
    }
}

/// Raft node ids are derived from node names, so no one has to hand them out: the first
/// 8 bytes of SHA-256 of the name (a collision among a co-op's few servers is out of reach).
pub fn node_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

openraft::declare_raft_types!(
    /// hearth's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
