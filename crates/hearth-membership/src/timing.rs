//! Failure-detector timing and the foca configuration built from it, shared by the
//! membership core, the stale-suspicion tracker and the simulation.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::seal::OVERHEAD;

/// The largest datagram hearth sends: safely below a 1500-byte MTU.
pub const MAX_DATAGRAM: usize = 1400;

/// Failure-detector timing. See the README's `[gossip]` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipTiming {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_timeout: Duration,
}

impl Default for GossipTiming {
    fn default() -> Self {
        GossipTiming {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            suspicion_timeout: Duration::from_millis(1500),
        }
    }
}

/// foca's configuration for `timing`, before local health stretches the suspicion timeout.
pub(crate) fn swim_config(timing: &GossipTiming) -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("16 is not zero"));
    config.probe_period = timing.probe_interval;
    config.probe_rtt = timing.probe_timeout;
    config.suspect_to_down_after = timing.suspicion_timeout;
    config.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD - 1).expect("datagram is larger than overhead");
    config.remove_down_after = Some(Duration::from_secs(24 * 3600));
    // Knock on members believed dead often, so the two sides of a healed partition find
    // each other again within seconds rather than a minute.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(2).expect("2 is not zero"),
    });
    config
}
