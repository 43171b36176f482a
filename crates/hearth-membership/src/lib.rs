//! Encrypted SWIM membership for hearth: foca over UDP, with every datagram sealed, node
//! announcements (metadata and check states) spread by gossip, Lifeguard-style local
//! health, and the node-local [`hearth_types::View`] that DNS and the API read.

#[doc(hidden)]
pub mod fuzzing;
mod health;
mod identity;
mod node;
mod seal;
pub mod sim;
pub mod stream;
mod suspicion;
mod view;

pub use health::LocalHealth;
pub use identity::NodeId;
pub use node::{GossipMetrics, GossipTiming, Membership, MembershipConfig, StartError};
pub use seal::{Keyring, OVERHEAD, OpenError, SECRET_LEN, Secret};
pub use view::{build_view, diff_events};
