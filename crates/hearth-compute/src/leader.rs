//! The leader's compute loop: whenever the desired state or the gossip view changes (and every
//! few seconds), it runs the pure placement plan and writes its commands through Raft.

use std::sync::Arc;
use std::time::Duration;

use hearth_state::model::{Command, ComputeCommand, Outcome};
use hearth_state::node::StateNode;
use hearth_types::View;
use hearth_types::compute::Evacuation;
use hearth_types::desired::DesiredState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::placement;

/// For a `Migrate` of an evacuation: the command that stops that evacuation with a reason.
fn refused_move(
    desired: &DesiredState,
    command: &ComputeCommand,
) -> Option<impl FnOnce(String) -> ComputeCommand + use<>> {
    let ComputeCommand::Migrate { vm, .. } = command else {
        return None;
    };
    let vm = &desired.compute.vms.get(vm)?.value;
    let host = vm.host.clone()?;
    let name = vm.request.name.clone();
    Some(move |why: String| ComputeCommand::SetEvacuation {
        host,
        evacuation: Some(Evacuation::Stopped {
            why: format!("{name}: {why}"),
        }),
    })
}

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
        let replicas = crate::replica_plan::plan(&current, &view);
        for command in placement::plan(&current, &view).into_iter().chain(replicas) {
            tracing::info!(?command, "placement");
            let refused = refused_move(&current, &command);
            match state.submit(Command::Compute { command }).await {
                Ok(written) => {
                    // A move the state refuses would be asked again every pass: the
                    // evacuation that asked for it stops instead, saying why.
                    if let (Outcome::Invalid { message }, Some(stop)) = (written.outcome, refused) {
                        let command = stop(message);
                        let _ = state.submit(Command::Compute { command }).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "placement write failed");
                    break;
                }
            }
        }
    }
}
