//! Plain data shared by every hearth layer: node metadata, member and check states,
//! the node-local view of the cluster, and the JSON rows the API serves. No I/O here.

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

/// This node's whole local view of the cluster. DNS, the API and metrics read it;
/// only the membership task writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct View {
    pub self_name: String,
    pub members: BTreeMap<String, Member>,
}

impl View {
    /// Addresses of instances of `service` that pass their check on nodes that are up.
    pub fn healthy_instances<'a>(&'a self, service: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.instances_on_up_nodes(service)
            .filter(|instance| instance.status == CheckStatus::Passing)
            .map(|instance| instance.address)
    }

    /// Every instance of `service` on a node that is up, whatever its check says.
    pub fn instances_on_up_nodes<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = &'a ServiceInstance> + 'a {
        self.members
            .values()
            .filter(|member| member.state.is_up())
            .flat_map(|member| member.services.iter())
            .filter(move |instance| instance.service.eq_ignore_ascii_case(service))
    }
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
}

/// A row of `hearth services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRow {
    pub service: String,
    pub node: String,
    pub address: IpAddr,
    pub status: CheckStatus,
    pub node_state: MemberState,
}

impl View {
    pub fn member_rows(&self) -> Vec<MemberRow> {
        self.members.values().map(Member::row).collect()
    }

    pub fn service_rows(&self) -> Vec<ServiceRow> {
        let mut rows: Vec<ServiceRow> = self
            .members
            .values()
            .flat_map(|member| {
                member.services.iter().map(move |instance| ServiceRow {
                    service: instance.service.clone(),
                    node: member.meta.name.clone(),
                    address: instance.address,
                    status: instance.status,
                    node_state: member.state,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.service, &a.node).cmp(&(&b.service, &b.node)));
        rows
    }
}

/// What happened, as node-local event handlers see it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    MemberJoin,
    MemberLeave,
    MemberFailed,
    MemberUpdate,
    CheckPassing,
    CheckFailing,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::MemberJoin,
        EventKind::MemberLeave,
        EventKind::MemberFailed,
        EventKind::MemberUpdate,
        EventKind::CheckPassing,
        EventKind::CheckFailing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberJoin => "member-join",
            EventKind::MemberLeave => "member-leave",
            EventKind::MemberFailed => "member-failed",
            EventKind::MemberUpdate => "member-update",
            EventKind::CheckPassing => "check-passing",
            EventKind::CheckFailing => "check-failing",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change in this node's view, in the order it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterEvent {
    pub kind: EventKind,
    /// The member the event is about.
    pub member: MemberRow,
    /// For check events: the instance whose status changed.
    pub instance: Option<ServiceInstance>,
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
        }
    }
}

pub mod account;
pub mod compute;
pub mod desired;
pub mod notice;
