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
