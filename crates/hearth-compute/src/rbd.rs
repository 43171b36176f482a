//! VMs whose disks are on Ceph RBD (`docs/rbd.md`): the pure choice of the worker that
//! takes over the disk of a VM whose home went silent, and the two steps a worker carries
//! out: recording the Ceph clients its QEMU runs with, and the take-over itself, which puts
//! every client that may still write the disk on Ceph's blocklist before the cluster
//! records the new home. The disk itself never moves and is never copied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hearth_state::model::{Command, ComputeCommand, Outcome};
use hearth_types::compute::Vm;
use hearth_types::desired::DesiredState;

use crate::moves::Host;
use crate::reconcile::Action;
use crate::replica_plan::LeaseWatch;

/// Whether `host` has gone silent: fenced by an operator, or no lease renewal seen for
/// `wait` (by `watch`, which `replica_plan::failovers` keeps up to date each pass).
fn silent(
    desired: &DesiredState,
    watch: &LeaseWatch,
    now: Instant,
    wait: Duration,
    host: &str,
) -> bool {
    let Some(h) = desired.compute.hosts.get(host) else {
        return false;
    };
    h.fenced
        || watch
            .get(host)
            .is_some_and(|(_, seen)| now.duration_since(*seen) >= wait)
}

/// The take-overs this host `me` carries out: each VM on RBD whose home (where it is placed
/// and its disk's home) went silent goes to the worker with Ceph, not silent, fenced or
/// drained, with the most free memory that fits it (ties by name), VM after VM in id order,
/// so every worker picks the same one from the same state. A worker that picks wrongly on
/// a state a moment old only fences clients that are fenced anyway: the cluster records one
/// take-over.
pub fn takeovers(
    me: &str,
    desired: &DesiredState,
    watch: &LeaseWatch,
    now: Instant,
    wait: Duration,
) -> Vec<Action> {
    let compute = &desired.compute;
    let mut room: BTreeMap<&str, (u32, u64)> = compute
        .hosts
        .iter()
        .filter(|(name, h)| {
            h.capacity.rbd && !desired.is_drained(name) && !silent(desired, watch, now, wait, name)
        })
        .map(|(name, h)| (name.as_str(), (h.capacity.vcpus, h.capacity.memory_mib)))
        .collect();
    for vm in compute.vms.values().map(|v| &v.value) {
        if let Some((vcpus, memory)) = vm.host.as_deref().and_then(|h| room.get_mut(h)) {
            *vcpus = vcpus.saturating_sub(vm.request.vcpus);
            *memory = memory.saturating_sub(vm.request.memory_mib);
        }
    }
    let mut actions = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(home) = vm.disk.host.as_deref() else {
            continue;
        };
        let due = vm.storage.rbd_pool().is_some()
            && vm.host.as_deref() == Some(home)
            && !vm.deleting
            && silent(desired, watch, now, wait, home);
        if !due {
            continue;
        }
        let best = room
            .iter_mut()
            .filter(|(name, (vcpus, memory))| {
                **name != home && *vcpus >= vm.request.vcpus && *memory >= vm.request.memory_mib
            })
            .max_by(|(a_name, a), (b_name, b)| a.1.cmp(&b.1).then(b_name.cmp(a_name)));
        let Some((to, (vcpus, memory))) = best else {
            continue;
        };
        *vcpus -= vm.request.vcpus;
        *memory -= vm.request.memory_mib;
        if *to == me {
            let lease = match watch.get(home) {
                Some((lease, _)) => *lease,
                None => compute.hosts.get(home).map_or(0, |h| h.lease),
            };
            actions.push(Action::TakeOver {
                vm: vm.id.clone(),
                from: home.to_owned(),
                lease,
            });
        }
    }
    actions
}

/// The VM's pool and the image of its disk.
fn image_of(vm: &Vm) -> Option<(&str, String)> {
    let pool = vm.storage.rbd_pool()?;
    Some((
        pool,
        hearth_qemu::rbd::disk_image(&vm.id, vm.disk.generation),
    ))
}

async fn submit(host: &Host<'_>, command: ComputeCommand) -> Option<Outcome> {
    match host.state.submit(Command::Compute { command }).await {
        Ok(written) => Some(written.outcome),
        Err(error) => {
            tracing::debug!(%error, "RBD write not committed; the next pass retries");
            None
        }
    }
}

/// Takes over the disk of `vm` from its silent home `from` (last lease `lease`): every
/// client recorded for it and every client that has the image open now goes on Ceph's
/// blocklist, and only once all are there does this host ask the cluster to record itself
/// as the VM's home. The normal start follows.
pub async fn take_over(host: &Host<'_>, vm: &Vm, from: &str, lease: u64) {
    let (Some((pool, image)), Some(driver)) = (image_of(vm), host.driver.qemu()) else {
        return;
    };
    let fenced = async {
        let ceph = driver.ceph()?;
        let mut clients = vm.rbd_clients.clone();
        clients.extend(ceph.clients(pool, &image).await?);
        clients.sort();
        clients.dedup();
        for client in &clients {
            ceph.blocklist(client).await?;
            tracing::warn!(vm = %vm.id, %from, %client, "fenced: put the Ceph client on the blocklist");
        }
        Ok::<_, hearth_qemu::driver::DiskError>(clients)
    }
    .await;
    let fenced = match fenced {
        Ok(fenced) => fenced,
        Err(error) => {
            tracing::warn!(vm = %vm.id, %from, %error, "cannot fence the silent home's Ceph clients; not taking the disk over");
            return;
        }
    };
    let command = ComputeCommand::TakeOver {
        vm: vm.id.clone(),
        from: from.to_owned(),
        to: host.name.to_owned(),
        lease,
        fenced,
        at_ms: crate::unix_ms(),
    };
    match submit(host, command).await {
        Some(Outcome::Applied { .. }) => {
            tracing::warn!(vm = %vm.id, %from, "took the VM's disk on RBD over: its home stopped renewing its lease")
        }
        other => tracing::info!(vm = %vm.id, ?other, "take-over not recorded"),
    }
}

/// Records the Ceph clients that have the VM's disk open (its QEMU here) with the cluster;
/// true once recorded.
pub async fn record_clients(host: &Host<'_>, vm: &Vm) -> bool {
    let (Some((pool, image)), Some(driver)) = (image_of(vm), host.driver.qemu()) else {
        return false;
    };
    let clients = match driver.ceph() {
        Ok(ceph) => ceph.clients(pool, &image).await,
        Err(error) => Err(error),
    };
    let clients = match clients {
        Ok(clients) if !clients.is_empty() => clients,
        Ok(_) => return false,
        Err(error) => {
            tracing::warn!(vm = %vm.id, %error, "listing the Ceph clients of the VM's disk");
            return false;
        }
    };
    let command = ComputeCommand::RbdClients {
        vm: vm.id.clone(),
        host: host.name.to_owned(),
        clients: clients.clone(),
    };
    let recorded = matches!(
        submit(host, command).await,
        Some(Outcome::Applied { .. } | Outcome::Nothing)
    );
    if recorded {
        tracing::info!(vm = %vm.id, ?clients, "recorded the Ceph clients of the VM's disk");
    }
    recorded
}

#[cfg(test)]
mod tests;
