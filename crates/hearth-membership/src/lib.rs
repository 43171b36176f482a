//! Encrypted SWIM membership for hearth: foca over UDP, with every datagram sealed, node
//! announcements (metadata and check states) spread by gossip, Lifeguard-style local
//! health, and the node-local [`hearth_types::View`] that DNS and the API read.

mod core;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod identity;
mod metrics;
mod node;
mod seal;
pub mod sim;
pub mod stream;
mod suspicion;
mod timing;
mod view;

pub use crate::core::{MembershipConfig, StartError};
pub use health::LocalHealth;
pub use identity::NodeId;
pub use metrics::GossipMetrics;
pub use node::Membership;
pub use seal::{
    Keyring, OVERHEAD, OpenError, SECRET_LEN, Secret, WORKER_IDENTITY_PREFIX, WORKER_KEY_PREFIX,
};
pub use timing::GossipTiming;
pub use view::{build_view, diff_events};
