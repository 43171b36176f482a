//! A steady tick for the agent's periodic tasks: an interval that waits out a missed tick
//! rather than bursting, and ends with the agent's shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub struct Ticks {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    /// Ticks every `every` (the first at once) until `shutdown`.
    pub fn new(every: Duration, shutdown: CancellationToken) -> Ticks {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval, shutdown }
    }

    /// Waits for the next tick: `false` once the agent shuts down.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}
