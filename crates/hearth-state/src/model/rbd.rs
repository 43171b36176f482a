//! The commands of VMs whose disks are on Ceph RBD (`docs/rbd.md`): the disk's home records
//! the Ceph client addresses its QEMU runs with, and another worker takes the disk over once
//! the home stopped renewing its lease and Ceph has fenced those clients. The disk never
//! moves: the same image, at the same generation, gets a new home.

use hearth_types::compute::{Compute, Phase, RBD_CLIENTS_KEPT, Vm};
use hearth_types::desired::Versioned;

use super::cas::Outcome;
use super::compute::ComputeCommand;

/// The RBD commands of [`super::compute::apply`].
pub(super) fn apply(compute: &mut Compute, command: &ComputeCommand, index: u64) -> Outcome {
    match command {
        ComputeCommand::RbdClients { vm, host, clients } => {
            record_clients(compute, vm, host, clients)
        }
        ComputeCommand::TakeOver {
            vm,
            from,
            to,
            lease,
            fenced,
            ..
        } => take_over(compute, vm, (from, to), *lease, fenced, index),
        _ => Outcome::Nothing,
    }
}

fn conflict(entry: &Versioned<Vm>) -> Outcome {
    Outcome::Conflict {
        current: Some(entry.version),
    }
}

/// The disk's home (only) adds the client addresses its QEMU runs with; the oldest beyond
/// [`RBD_CLIENTS_KEPT`] are let go.
fn record_clients(compute: &mut Compute, key: &str, host: &str, clients: &[String]) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &entry.value;
    if vm.storage.rbd_pool().is_none() || vm.disk.host.as_deref() != Some(host) {
        return conflict(entry);
    }
    let new: Vec<&String> = clients
        .iter()
        .filter(|c| !vm.rbd_clients.contains(c))
        .collect();
    if new.is_empty() {
        return Outcome::Nothing;
    }
    if clients.iter().any(|c| c.is_empty() || c.len() > 128) {
        return Outcome::Invalid {
            message: "clients: give Ceph client addresses (IP:PORT/NONCE)".into(),
        };
    }
    let mut kept = vm.rbd_clients.clone();
    kept.extend(new.into_iter().cloned());
    let excess = kept.len().saturating_sub(RBD_CLIENTS_KEPT);
    kept.drain(..excess);
    entry.value.rbd_clients = kept;
    Outcome::Applied {
        version: entry.version,
    }
}

/// Worker `to` takes over the RBD disk of a VM whose home `from` has not renewed its lease
/// since `lease` (or is fenced), having put `fenced` (every client recorded for it, and more)
/// on Ceph's blocklist: the VM and its disk's home move to `to` in one step, at the same
/// generation, and the recorded clients are forgotten (they can write no more). A move of
/// the VM under way is given up in the same step.
fn take_over(
    compute: &mut Compute,
    key: &str,
    (from, to): (&str, &str),
    lease: u64,
    fenced: &[String],
    index: u64,
) -> Outcome {
    let old = compute.hosts.get(from);
    let gone = old.is_some_and(|h| h.lease == lease || h.fenced);
    let to_ok = compute
        .hosts
        .get(to)
        .is_some_and(|h| !h.fenced && h.capacity.rbd);
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    let home = vm.host.as_deref() == Some(from) && vm.disk.host.as_deref() == Some(from);
    let all_fenced = vm.rbd_clients.iter().all(|c| fenced.contains(c));
    if vm.storage.rbd_pool().is_none()
        || !gone
        || !to_ok
        || !home
        || from == to
        || !all_fenced
        || vm.deleting
    {
        return conflict(entry);
    }
    // A move under way ends here: its source is silent and fenced, and the target's copy
    // of the RAM, if any, is never switched to (its handle is swept).
    vm.migration = None;
    vm.host = Some(to.to_owned());
    vm.disk.host = Some(to.to_owned());
    vm.rbd_clients.clear();
    let message = format!(
        "restarted on {to}: {from} stopped renewing its lease, and Ceph fenced its clients"
    );
    vm.set_phase(Phase::Placed, Some(message), index);
    entry.version = index;
    Outcome::Applied { version: index }
}

#[cfg(test)]
mod tests;
