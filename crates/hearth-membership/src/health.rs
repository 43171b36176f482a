//! Local health, after Lifeguard: a node that notices it is itself slow (its timers fire
//! late because it was paused or starved of CPU) gives suspected peers more time before
//! declaring them dead, since its own probes are the likely culprit.

use std::time::Duration;

/// The local health score and what it does to the suspicion timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHealth {
    score: u32,
    max_score: u32,
    /// A timer firing later than this counts against local health.
    late_after: Duration,
    /// A stall this long or longer means the node was paused: jump to the worst score.
    stall_after: Duration,
}

impl LocalHealth {
    pub fn new(probe_interval: Duration, probe_timeout: Duration, max_score: u32) -> Self {
        LocalHealth {
            score: 0,
            max_score,
            late_after: probe_timeout / 2,
            stall_after: probe_interval,
        }
    }

    pub fn score(&self) -> u32 {
        self.score
    }

    /// Records how late a timer fired. Returns whether the score changed.
    pub fn observe_lateness(&mut self, lateness: Duration) -> bool {
        let before = self.score;
        if lateness >= self.stall_after {
            self.score = self.max_score;
        } else if lateness >= self.late_after {
            self.score = (self.score + 1).min(self.max_score);
        }
        self.score != before
    }

    /// Called once per probe interval in which no timer fired late. Returns whether the
    /// score changed.
    pub fn decay(&mut self) -> bool {
        let before = self.score;
        self.score = self.score.saturating_sub(1);
        self.score != before
    }

    /// The suspicion timeout to use now: the base, times one plus the score.
    pub fn suspicion_timeout(&self, base: Duration) -> Duration {
        base * (1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> LocalHealth {
        LocalHealth::new(Duration::from_millis(500), Duration::from_millis(200), 4)
    }

    #[test]
    fn punctual_timers_keep_full_speed() {
        let mut h = health();
        assert!(!h.observe_lateness(Duration::from_millis(5)));
        let base = Duration::from_millis(1500);
        assert_eq!(h.suspicion_timeout(base), base);
    }

    #[test]
    fn late_timers_stretch_suspicion_then_decay() {
        let mut h = health();
        assert!(h.observe_lateness(Duration::from_millis(150)));
        assert!(h.observe_lateness(Duration::from_millis(150)));
        assert_eq!(h.score(), 2);
        assert_eq!(
            h.suspicion_timeout(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert!(h.decay());
        assert!(h.decay());
        assert!(!h.decay());
        assert_eq!(h.score(), 0);
    }

    #[test]
    fn a_pause_jumps_to_the_worst_score() {
        let mut h = health();
        assert!(h.observe_lateness(Duration::from_secs(1)));
        assert_eq!(h.score(), 4);
        assert!(!h.observe_lateness(Duration::from_millis(150)));
        assert_eq!(h.score(), 4);
    }
}
