//! Changes in this node's view of the cluster, as node-local event handlers see them.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::member::{MemberRow, ServiceInstance};

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
    /// A VM's second disk copy stopped taking writes; the VM runs on one copy.
    ReplicaDegraded,
    /// A VM's second disk copy caught up and now takes every write.
    ReplicaInSync,
    /// A VM was restarted on its replica's host after its own host stopped renewing its lease.
    VmFailover,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::MemberJoin,
        EventKind::MemberLeave,
        EventKind::MemberFailed,
        EventKind::MemberUpdate,
        EventKind::CheckPassing,
        EventKind::CheckFailing,
        EventKind::ReplicaDegraded,
        EventKind::ReplicaInSync,
        EventKind::VmFailover,
    ];

    /// Whether only the Raft state records this kind, so only `scope = "cluster"` handlers
    /// see it (node-local handlers see changes in the node's own view of the members).
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            EventKind::ReplicaDegraded | EventKind::ReplicaInSync | EventKind::VmFailover
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberJoin => "member-join",
            EventKind::MemberLeave => "member-leave",
            EventKind::MemberFailed => "member-failed",
            EventKind::MemberUpdate => "member-update",
            EventKind::CheckPassing => "check-passing",
            EventKind::CheckFailing => "check-failing",
            EventKind::ReplicaDegraded => "replica-degraded",
            EventKind::ReplicaInSync => "replica-in-sync",
            EventKind::VmFailover => "vm-failover",
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
    /// For VM events: the VM and its disk copies; `member` is the host the VM's disk lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmEvent>,
}

impl ClusterEvent {
    /// What the event is about besides its member: `service NAME`, `vm NAME`, or "".
    pub fn subject(&self) -> String {
        match (&self.instance, &self.vm) {
            (Some(i), _) => format!("service {}", i.service),
            (None, Some(vm)) => format!("vm {}", vm.name),
            (None, None) => String::new(),
        }
    }
}

/// The VM a replica or failover event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmEvent {
    /// The VM's id, `vm-N`.
    pub id: String,
    pub name: String,
    pub owner: String,
    /// The host of the second copy, for replica events.
    #[serde(default)]
    pub replica_host: Option<String>,
    /// For failovers: the host the VM ran on before.
    #[serde(default)]
    pub from: Option<String>,
    /// Why the copy degraded, as its host reported it.
    #[serde(default)]
    pub message: Option<String>,
}
