//! The gossip counters the agent renders at `/metrics`: datagrams received and sent,
//! datagrams dropped by reason, and events a lagging consumer missed.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::seal::OpenError;

/// Counters the agent renders at `/metrics`.
#[derive(Debug, Default)]
pub struct GossipMetrics {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Events not delivered to handlers because their queue was full.
    pub events_dropped: AtomicU64,
    dropped: [AtomicU64; 5],
}

impl GossipMetrics {
    const MALFORMED: usize = 4;

    fn drop_index(reason: OpenError) -> usize {
        OpenError::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(Self::MALFORMED)
    }

    /// Counts a dropped datagram: `reason` when it did not open, `None` when it opened but
    /// was not understood ("malformed").
    pub(crate) fn count_drop(&self, reason: Option<OpenError>) {
        let idx = reason.map_or(Self::MALFORMED, Self::drop_index);
        self.dropped[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// Dropped datagrams by reason label.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        OpenError::ALL
            .iter()
            .map(|r| r.label())
            .chain(["malformed"])
            .zip(self.dropped.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }
}
