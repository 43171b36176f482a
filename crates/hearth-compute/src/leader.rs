//! The leader's compute loop: whenever the desired state or the gossip view changes (and every
//! few seconds), it runs the pure placement plan and writes its commands through Raft.

use std::sync::Arc;
use std::time::Duration;

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::View;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::placement;

pub async fn run(
    state: StateNode,
    mut views: watch::Receiver<Arc<View>>,
    shutdown: CancellationToken,
) {
    let mut desired = state.reader().subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = desired.changed() => if changed.is_err() { return },
            changed = views.changed() => if changed.is_err() { return },
        }
        if !state.is_leader() {
            continue;
        }
        let current = state.reader().current();
        let view = views.borrow_and_update().clone();
        for command in placement::plan(&current, &view) {
            tracing::info!(?command, "placement");
            if let Err(error) = state.submit(Command::Compute { command }).await {
                tracing::warn!(%error, "placement write failed");
                break;
            }
        }
    }
}
