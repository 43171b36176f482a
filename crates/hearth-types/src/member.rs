//! Nodes as members of the cluster: roles, liveness, the check status of service instances,
//! what a node announces by gossip, and a member as this node sees it (with its API row).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a node is for. A node may hold several roles.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds desired state (a Raft voter or learner) and is a name server of the zone.
    Server,
    /// Votes in Raft to keep quorum but never runs workloads.
    Witness,
    /// Runs members' virtual machines.
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Server, Role::Witness, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Witness => "witness",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How this node sees another node's liveness.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; still treated as alive until the suspicion times out or is refuted.
    Suspect,
    /// Declared failed by the cluster.
    Dead,
    /// Said goodbye before going away.
    Left,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Alive and suspect members serve traffic; dead and left ones do not.
    pub fn is_up(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The debounced result of a service instance's health check.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Not yet checked often enough to pass the rise threshold. Not served.
    Unknown,
    /// Passed `rise` checks in a row.
    Passing,
    /// Failed `fall` checks in a row.
    Failing,
}

impl CheckStatus {
    pub const ALL: [CheckStatus; 3] = [
        CheckStatus::Unknown,
        CheckStatus::Passing,
        CheckStatus::Failing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Unknown => "unknown",
            CheckStatus::Passing => "passing",
            CheckStatus::Failing => "failing",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a node is and how to reach it; set from its config and carried by gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeMeta {
    pub name: String,
    /// The UDP address other agents gossip with.
    pub gossip_addr: SocketAddr,
    /// The address `<node>.<zone>` answers with.
    pub address: IpAddr,
    pub roles: Vec<Role>,
    pub tags: BTreeMap<String, String>,
    /// Where this node's Raft RPC listens, if it takes part in the replicated state.
    pub rpc_addr: Option<SocketAddr>,
    /// Whether this node belongs to a formed Raft group (so nobody forms a second one).
    pub in_group: bool,
}

/// One instance of a service, on one node, with its current check status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceInstance {
    pub service: String,
    /// What DNS hands out for this instance.
    pub address: IpAddr,
    pub status: CheckStatus,
}

/// What a node announces about itself by gossip. A higher `version` replaces a lower one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAnnouncement {
    pub meta: NodeMeta,
    /// Strictly increases across the node's restarts (it starts from the wall clock).
    pub version: u64,
    pub services: Vec<ServiceInstance>,
    /// Set when the node is leaving gracefully, so peers record `left`, not `dead`.
    pub leaving: bool,
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub meta: NodeMeta,
    pub state: MemberState,
    pub services: Vec<ServiceInstance>,
}

/// A row of `hearth members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MemberRow {
    pub name: String,
    pub address: IpAddr,
    pub gossip_addr: SocketAddr,
    pub state: MemberState,
    pub roles: Vec<Role>,
    pub tags: BTreeMap<String, String>,
    /// Where it takes Raft RPC, for the nodes that do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_addr: Option<SocketAddr>,
}

impl Member {
    pub fn row(&self) -> MemberRow {
        MemberRow {
            name: self.meta.name.clone(),
            address: self.meta.address,
            gossip_addr: self.meta.gossip_addr,
            state: self.state,
            roles: self.meta.roles.clone(),
            tags: self.meta.tags.clone(),
            rpc_addr: self.meta.rpc_addr,
        }
    }
}
