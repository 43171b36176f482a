//! hearth's replicated desired state: openraft with its log and state machine in redb,
//! the pure `apply` function, and encrypted RPC between servers.

pub mod batch;
pub mod files;
pub mod model;
pub mod network;
pub mod node;
pub mod plan;
pub mod recover;
mod reply;
pub mod store;
pub mod types;
