//! A VM's recent load, for the member panel's charts: its host samples the QEMU's counters
//! (CPU time, disk bytes, network bytes when it has a tap) and `record` turns each pair of
//! samples into usage added to two rolling series, the last day in 5-minute buckets and the
//! last week in 30-minute ones. Plain data and pure functions; the host keeps it in the VM's
//! directory.

use std::collections::VecDeque;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Buckets of the day series: 288 × 5 minutes.
pub const DAY: (u64, usize) = (5 * 60 * 1000, 288);
/// Buckets of the week series: 336 × 30 minutes.
pub const WEEK: (u64, usize) = (30 * 60 * 1000, 336);
/// Two samples further apart than this (the agent was down) add nothing: the gap stays
/// blank rather than spread over time the host did not watch.
pub const MAX_GAP_MS: u64 = 10 * 60 * 1000;

/// A VM's counters at one moment, as its QEMU reports them since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    /// CPU time of the QEMU process (all vCPUs and its own threads), milliseconds.
    pub cpu_ms: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Bytes through the VM's tap, from the host's side; `None` without one (user-mode
    /// network).
    pub net: Option<Net>,
}

/// Network bytes, as the guest sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Net {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What a VM used during one bucket, and how much of the bucket was watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Bucket {
    /// Unix milliseconds, a multiple of the series' width.
    pub start_ms: u64,
    /// Of the bucket, how long samples covered.
    pub covered_ms: u64,
    pub cpu_ms: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// `None` while no sample in the bucket had network counters.
    pub net: Option<Net>,
}

/// Buckets of one width, oldest first, at most `len` of them, none older than `len` widths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Series {
    pub width_ms: u64,
    pub len: usize,
    pub buckets: VecDeque<Bucket>,
}

impl Series {
    fn new((width_ms, len): (u64, usize)) -> Series {
        Series {
            width_ms,
            len,
            buckets: VecDeque::new(),
        }
    }

    /// Adds `usage` over the `covered` milliseconds ending at `at_ms`, to `at_ms`'s bucket.
    fn add(&mut self, at_ms: u64, covered: u64, usage: &Bucket) {
        let start = at_ms - at_ms % self.width_ms;
        if self.buckets.back().is_none_or(|b| b.start_ms < start) {
            self.buckets.push_back(Bucket {
                start_ms: start,
                ..Bucket::default()
            });
        }
        let Some(bucket) = self.buckets.back_mut() else {
            return;
        };
        bucket.covered_ms = (bucket.covered_ms + covered).min(self.width_ms);
        bucket.cpu_ms += usage.cpu_ms;
        bucket.read_bytes += usage.read_bytes;
        bucket.written_bytes += usage.written_bytes;
        if let Some(net) = usage.net {
            let sum = bucket.net.get_or_insert_default();
            sum.rx_bytes += net.rx_bytes;
            sum.tx_bytes += net.tx_bytes;
        }
        let oldest = (start + self.width_ms).saturating_sub(self.width_ms * self.len as u64);
        while self.buckets.len() > self.len
            || self.buckets.front().is_some_and(|b| b.start_ms < oldest)
        {
            self.buckets.pop_front();
        }
    }
}

impl Series {
    /// The series laid out on its `len` time slots, ending with the one holding `now_ms`:
    /// each slot's bucket, or `None` where nothing was recorded.
    pub fn slots(&self, now_ms: u64) -> Vec<Option<Bucket>> {
        let last = now_ms - now_ms % self.width_ms;
        let first = last.saturating_sub(self.width_ms * (self.len as u64 - 1));
        let mut slots = vec![None; self.len];
        for bucket in &self.buckets {
            if bucket.start_ms >= first && bucket.start_ms <= last {
                let at = ((bucket.start_ms - first) / self.width_ms) as usize;
                if let Some(slot) = slots.get_mut(at) {
                    *slot = Some(*bucket);
                }
            }
        }
        slots
    }
}

/// A VM's history: the last sample, and the two series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmHistory {
    /// The last sample: Unix milliseconds and the counters then.
    pub last: Option<(u64, Counters)>,
    pub day: Series,
    pub week: Series,
}

impl Default for VmHistory {
    fn default() -> VmHistory {
        VmHistory {
            last: None,
            day: Series::new(DAY),
            week: Series::new(WEEK),
        }
    }
}

/// Accounts a sample taken at `at_ms`: what the counters grew by since the previous sample
/// is added to the series. A sample not after the previous one changes nothing; one after a
/// gap over [`MAX_GAP_MS`], or with a counter that went down (QEMU restarted), only becomes
/// the new starting point.
pub fn record(history: &mut VmHistory, at_ms: u64, now: Counters) -> bool {
    if let Some((last_ms, _)) = history.last
        && at_ms <= last_ms
    {
        return false;
    }
    if let Some((last_ms, before)) = history.last
        && at_ms - last_ms <= MAX_GAP_MS
        && let Some(usage) = growth(&before, &now)
    {
        history.day.add(at_ms, at_ms - last_ms, &usage);
        history.week.add(at_ms, at_ms - last_ms, &usage);
    }
    history.last = Some((at_ms, now));
    true
}

/// How much each counter grew, or `None` if one went down.
fn growth(before: &Counters, now: &Counters) -> Option<Bucket> {
    let net = match (before.net, now.net) {
        (Some(b), Some(n)) => Some(Net {
            rx_bytes: n.rx_bytes.checked_sub(b.rx_bytes)?,
            tx_bytes: n.tx_bytes.checked_sub(b.tx_bytes)?,
        }),
        _ => None,
    };
    Some(Bucket {
        start_ms: 0,
        covered_ms: 0,
        cpu_ms: now.cpu_ms.checked_sub(before.cpu_ms)?,
        read_bytes: now.read_bytes.checked_sub(before.read_bytes)?,
        written_bytes: now.written_bytes.checked_sub(before.written_bytes)?,
        net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cpu_ms: u64, written: u64) -> Counters {
        Counters {
            cpu_ms,
            written_bytes: written,
            ..Counters::default()
        }
    }

    #[test]
    fn growth_between_samples_lands_in_the_later_samples_bucket() {
        let mut h = VmHistory::default();
        let t = 1_000 * DAY.0;
        assert!(record(&mut h, t, counters(1_000, 0)));
        assert!(h.day.buckets.is_empty(), "the first sample only starts");
        record(&mut h, t + 60_000, counters(31_000, 4096));
        record(&mut h, t + 120_000, counters(61_000, 8192));
        let b = h.day.buckets[0];
        assert_eq!((b.start_ms, b.covered_ms), (t, 120_000));
        assert_eq!((b.cpu_ms, b.written_bytes), (60_000, 8192));
        assert_eq!(b.net, None);
        assert_eq!(h.week.buckets[0].cpu_ms, 60_000);
        // A sample at or before the last one is ignored.
        assert!(!record(&mut h, t + 120_000, counters(99_000, 0)));
        assert_eq!(h.day.buckets[0], b);
    }

    #[test]
    fn restarts_and_gaps_add_nothing() {
        let mut h = VmHistory::default();
        let t = 1_000 * DAY.0;
        record(&mut h, t, counters(50_000, 100));
        // QEMU restarted: its counters start over.
        record(&mut h, t + 60_000, counters(2_000, 0));
        assert!(h.day.buckets.is_empty());
        // The agent was down for an hour.
        record(&mut h, t + 60_000 + 3_600_000, counters(9_000, 0));
        assert!(h.day.buckets.is_empty());
        record(&mut h, t + 120_000 + 3_600_000, counters(10_000, 0));
        assert_eq!(h.day.buckets.len(), 1);
        assert_eq!(h.day.buckets[0].cpu_ms, 1_000);
    }

    #[test]
    fn network_counts_only_between_two_samples_that_have_it() {
        let mut h = VmHistory::default();
        let t = 1_000 * DAY.0;
        let with_net = |rx, tx| Counters {
            net: Some(Net {
                rx_bytes: rx,
                tx_bytes: tx,
            }),
            ..Counters::default()
        };
        record(&mut h, t, Counters::default());
        record(&mut h, t + 1_000, with_net(10, 20));
        assert_eq!(h.day.buckets[0].net, None);
        record(&mut h, t + 2_000, with_net(110, 220));
        assert_eq!(
            h.day.buckets[0].net,
            Some(Net {
                rx_bytes: 100,
                tx_bytes: 200
            })
        );
    }

    #[test]
    fn slots_place_buckets_by_time_and_leave_gaps_empty() {
        let mut h = VmHistory::default();
        let t = 1_000 * DAY.0;
        record(&mut h, t, counters(0, 0));
        record(&mut h, t + 60_000, counters(100, 0));
        // 15 minutes later (a gap: the agent was down), two more samples.
        record(&mut h, t + DAY.0 * 3 + 1_000, counters(200, 0));
        record(&mut h, t + DAY.0 * 3 + 61_000, counters(300, 0));
        let slots = h.day.slots(t + DAY.0 * 4 + 5);
        assert_eq!(slots.len(), DAY.1);
        assert_eq!(slots[DAY.1 - 1], None, "nothing yet in the current slot");
        assert_eq!(slots[DAY.1 - 2].map(|b| b.cpu_ms), Some(100));
        assert_eq!(slots[DAY.1 - 5].map(|b| b.cpu_ms), Some(100));
        assert_eq!(slots.iter().flatten().count(), 2);
        // Buckets newer than `now` (a clock that went back) are left out.
        assert_eq!(h.day.slots(t - DAY.0).iter().flatten().count(), 0);
    }

    #[test]
    fn a_day_and_a_week_are_kept() {
        let mut h = VmHistory::default();
        let t = 1_000 * DAY.0;
        let mut cpu = 0;
        for minute in 0..(8 * 24 * 60) {
            cpu += 100;
            record(&mut h, t + minute * 60_000, counters(cpu, 0));
        }
        assert_eq!(h.day.buckets.len(), DAY.1);
        assert_eq!(h.week.buckets.len(), WEEK.1);
        let last = h.day.buckets.back().unwrap();
        assert_eq!(last.covered_ms, 5 * 60_000, "{last:?}");
        assert_eq!(last.cpu_ms, 500);
        let span = h.day.buckets.back().unwrap().start_ms - h.day.buckets[0].start_ms;
        assert_eq!(span, DAY.0 * (DAY.1 as u64 - 1));
        assert!(h.day.buckets.iter().all(|b| b.start_ms % DAY.0 == 0));
    }
}
