//! On the Raft leader: samples every service's availability each `[state] uptime_interval`
//! and records it through the log, so every node's status page draws the same 90-day bars.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::View;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`. A follower only waits; a sample that fails to commit is dropped
/// (the next one accounts for the gap, or leaves it unknown if it grew too long).
pub async fn sample(
    state: StateNode,
    views: watch::Receiver<Arc<View>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::ticks::Ticks::new(every, shutdown);
    while ticks.next().await {
        if !state.is_leader() {
            continue;
        }
        let up = crate::web::status::availability(&views.borrow().clone());
        if up.is_empty() {
            continue;
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(error) = state.submit(Command::RecordUptime { at_ms, up }).await {
            tracing::debug!(%error, "recording an uptime sample");
        }
    }
}
