//! Failure-detector timing and the foca configuration built from it, shared by the
//! membership core, the stale-suspicion tracker and the simulation.

use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
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

/// How many times each membership update (a member suspect, down, or back) is piggybacked
/// onto outgoing messages, for a cluster of `members` nodes: 6 × ⌈log10(members + 1)⌉, so 6
/// up to 9 nodes, 12 up to 99 and 18 up to 999.
///
/// foca's LAN default is 4 × log10(size + 1) rounded down, 4 for ten nodes, where memberlist
/// rounds the logarithm up and gets 8. With 4, in the simulation of the failover benchmark
/// (`examples/failover_sim.rs`), one trial in ten at 10 nodes had a survivor that heard of
/// the suspicion but of no `Down` (foca starts the timer that turns a suspect down only on
/// the member whose own probe failed), so it kept the dead node until its own probe, up to
/// 6 s later; at 50 nodes most trials did. Updates are a few dozen bytes, and only new ones
/// are sent.
pub fn max_transmissions(members: usize) -> NonZeroU8 {
    let mut digits = 0u32;
    let mut rest = members.saturating_add(1);
    while rest > 1 {
        digits += 1;
        rest = rest.div_ceil(10);
    }
    let tx = (6 * digits.max(1)).min(u32::from(u8::MAX));
    NonZeroU8::new(u8::try_from(tx).unwrap_or(u8::MAX)).unwrap_or(NonZeroU8::MAX)
}

/// foca's configuration for `timing` in a cluster of `members` nodes, before local health
/// stretches the suspicion timeout.
pub(crate) fn swim_config(timing: &GossipTiming, members: usize) -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("16 is not zero"));
    config.max_transmissions = max_transmissions(members);
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

#[cfg(test)]
mod tests {
    use super::max_transmissions;

    #[test]
    fn updates_go_out_six_times_per_decimal_digit_of_the_cluster_size() {
        let tx = |n| max_transmissions(n).get();
        assert_eq!(tx(0), 6);
        assert_eq!(tx(1), 6);
        assert_eq!(tx(3), 6);
        assert_eq!(tx(9), 6);
        assert_eq!(tx(10), 12);
        assert_eq!(tx(50), 12);
        assert_eq!(tx(99), 12);
        assert_eq!(tx(100), 18);
        assert_eq!(tx(200), 18);
        assert_eq!(tx(usize::MAX), 120);
    }
}
