//! A node's identity in the SWIM protocol, and the custom broadcast that carries its
//! announcement (metadata and check states) through the gossip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hearth_types::NodeAnnouncement;
use serde::{Deserialize, Serialize};

/// Who a SWIM message is from or to. Two identities with the same gossip address are the
/// same node; the one with the larger `bump` is the newer incarnation of it (a restart takes
/// a fresh `bump` from the clock, so it replaces its previous self cleanly).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    pub bump: u64,
}

impl NodeId {
    /// An identity used only to address the first message to a seed, whose name we do not
    /// know yet. foca accepts an announce sent to any identity with the right address.
    pub fn seed(addr: SocketAddr) -> NodeId {
        NodeId {
            name: String::new(),
            addr,
            bump: 0,
        }
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.bump)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// When the cluster wrongly declares us dead, we rejoin as a newer incarnation.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// Identifies one announcement in foca's dissemination backlog.
pub struct AnnouncementKey {
    name: String,
    version: u64,
}

impl foca::Invalidates for AnnouncementKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name && self.version >= other.version
    }
}

/// Error for an announcement that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed announcement: {0}")]
pub struct BadAnnouncement(#[from] postcard::Error);

/// Received announcements that are newer than anything seen before, waiting for the
/// membership task to fold them into the view. foca owns the handler, so it hands them over
/// through this shared inbox.
pub type Inbox = Arc<Mutex<Vec<NodeAnnouncement>>>;

/// Decides which announcements are new (and so worth spreading further).
pub struct AnnouncementHandler {
    latest: HashMap<String, u64>,
    inbox: Inbox,
}

impl AnnouncementHandler {
    pub fn new(inbox: Inbox) -> Self {
        AnnouncementHandler {
            latest: HashMap::new(),
            inbox,
        }
    }
}

impl foca::BroadcastHandler<NodeId> for AnnouncementHandler {
    type Key = AnnouncementKey;
    type Error = BadAnnouncement;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<AnnouncementKey>, BadAnnouncement> {
        let announcement: NodeAnnouncement = postcard::from_bytes(data)?;
        let name = &announcement.meta.name;
        if self
            .latest
            .get(name)
            .is_some_and(|&seen| seen >= announcement.version)
        {
            return Ok(None);
        }
        self.latest.insert(name.clone(), announcement.version);
        let key = AnnouncementKey {
            name: name.clone(),
            version: announcement.version,
        };
        // A poisoned lock only means another thread panicked mid-push; the Vec is still valid.
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.push(announcement);
        Ok(Some(key))
    }
}
