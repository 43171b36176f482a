//! The zone's settings, as the agent's config sets them: the origin, the TTL, and what a
//! service answers when none of its instances passes its check. The index and the snapshot are
//! both built for a `Zone`, so it sits below them.

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

/// What to answer for a service when none of its instances passes its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NoneHealthy {
    /// Fail open: answer every instance on an up (alive or suspect) node that is not drained,
    /// whatever its check says, on the theory that a check failing everywhere is more likely
    /// the check's fault. A drained node is out on purpose, so it never comes back this way.
    #[default]
    AllUp,
    /// Answer NODATA, so that clients fail fast instead of reaching a broken instance.
    Empty,
}

/// The co-op's zone as this agent serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The apex, fully qualified and lowercase (`Zone::new` makes it so).
    pub origin: Name,
    /// The TTL of every record served, and the SOA minimum (the negative-caching TTL).
    pub ttl: u32,
    /// What a service answers when none of its instances passes its check.
    pub none_healthy: NoneHealthy,
}

impl Zone {
    /// A zone at `origin`, made fully qualified and lowercase.
    pub fn new(origin: Name, ttl: u32, none_healthy: NoneHealthy) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        Self {
            origin,
            ttl,
            none_healthy,
        }
    }
}
