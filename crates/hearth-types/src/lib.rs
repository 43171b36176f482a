//! Plain data shared by every hearth layer: node metadata, member and check states,
//! the node-local view of the cluster, and the JSON rows the API serves. No I/O here.
//!
//! The crate root only declares modules and re-exports the node-level types, so every
//! `hearth_types::Name` path stays short. Modules import one way: `names`, `versioned` and
//! `member`, `limits` (connection caps), `uptime` (services' daily availability) and `vmstats` (a VM's recent load), `metering` (a worker's meter and the usage rows it sends) and `money` (exact amounts, a plan's prices) and `shared_map` (the state's `imbl` collections) import nothing of the crate; `view` and `event` import `member`; `account` and
//! `notice` import `names`, `quota` imports `names`, `money`, `compute` and `versioned`, `compute` imports `names` and `versioned`; `invoice` imports `metering` and `money`; `desired` sits on top,
//! and `api` (the API's request bodies and answer rows) above it.

pub mod account;
pub mod api;
pub mod backup;
pub mod compute;
pub mod desired;
mod event;
pub mod invoice;
pub mod limits;
mod member;
pub mod metering;
pub mod money;
pub mod names;
pub mod notice;
pub mod quota;
pub mod record_text;
pub mod shared_map;
pub mod signup;
pub mod status;
pub mod uptime;
mod versioned;
mod view;
pub mod vmstats;
pub mod zones;

pub use event::{ClusterEvent, EventKind, VmEvent};
pub use member::{
    CheckStatus, Member, MemberRow, MemberState, NodeAnnouncement, NodeMeta, Role, ServiceInstance,
};
pub use view::{ServiceRow, View};
