//! `hearth restore`: a new, empty cluster takes a backup of another's desired state
//! (`Command::RestoreState`). Each VM that had a disk gets it back from its newest backup:
//! its disk is to be made anew (the next generation, no home yet) from that snapshot, which
//! the host it is placed on dumps before anything runs (`VmBackups::recover`, then
//! `BackupCommand::Recovered`); a VM with no backup keeps its lost home and is `lost`, never
//! given a blank disk. What was under way (moves, replicas, backup runs, restores) is
//! dropped, and this cluster's own hosts replace the old ones. Log indexes count on from
//! the old cluster's (`DesiredState::index_base`), so no version or VM id is used twice.

use hearth_types::backup::{BackupSnapshot, Recover, Restored, StateRestore, VmBackups};
use hearth_types::compute::{DiskHome, Phase, Vm};
use hearth_types::desired::DesiredState;

use super::Outcome;
use super::cas::refused;

/// What this cluster already holds that a restore would overwrite: empty when it may take
/// one.
pub fn occupied(state: &DesiredState) -> Vec<String> {
    let count = |n: usize, what: &str| (n > 0).then(|| format!("{n} {what}"));
    [
        count(state.accounts.len(), "account(s)"),
        count(state.compute.vms.len(), "VM(s)"),
        count(state.compute.images.len(), "image(s)"),
        count(state.compute.pools.len(), "IP pool(s)"),
        count(state.records.len(), "record set(s)"),
        count(state.zones.len(), "member zone(s)"),
        count(state.plans.len(), "plan(s)"),
        count(state.backups.targets.len(), "backup target(s)"),
        count(state.services.len(), "cluster service(s)"),
        count(state.notices.len(), "notice(s)"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The highest log index `state` shows it has used: its versions, VM ids and phase
/// changes. A restore counts on from above it even when the file's own index is missing.
pub fn highest_index(state: &DesiredState) -> u64 {
    fn versions<T>(
        map: &hearth_types::shared_map::OrdMap<String, hearth_types::desired::Versioned<T>>,
    ) -> u64 {
        map.values().map(|v| v.version).max().unwrap_or(0)
    }
    let vms = state.compute.vms.values().map(|v| {
        let id = (v.value.id.strip_prefix("vm-")).and_then(|n| n.parse::<u64>().ok());
        v.version.max(v.value.phase_since).max(id.unwrap_or(0))
    });
    [
        versions(&state.services),
        versions(&state.records),
        versions(&state.drained),
        versions(&state.notices),
        versions(&state.accounts),
        versions(&state.tokens),
        versions(&state.plans),
        versions(&state.zones),
        versions(&state.compute.images),
        versions(&state.compute.pools),
        versions(&state.backups.targets),
        vms.max().unwrap_or(0),
        state.events.keys().copied().max().unwrap_or(0),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

pub(super) fn apply(state: &mut DesiredState, restore: &StateRestore, index: u64) -> Outcome {
    let here = occupied(state);
    if !here.is_empty() {
        return refused(format!(
            "this cluster already holds {}: `hearth restore` fills only a new, empty cluster (servers installed afresh, with empty data directories)",
            here.join(", ")
        ));
    }
    let mut next = restore.file.state.clone();
    let taken = restore.file.index.max(highest_index(&next));
    // What this cluster's own members observe and report stays theirs.
    next.observed = std::mem::take(&mut state.observed);
    next.compute.hosts = std::mem::take(&mut state.compute.hosts);
    next.compute.drift = std::mem::take(&mut state.compute.drift);
    next.compute.fixes.clear();
    next.compute.destroy.clear();
    bring_back_vms(&mut next, restore, index);
    next.index_base = taken.saturating_add(1).max(state.index_base);
    *state = next;
    Outcome::Applied { version: index }
}

/// Each VM of the restored state made ready for this cluster: to be recovered from its
/// newest backup, lost for want of one, or placed afresh if it never had a disk.
fn bring_back_vms(next: &mut DesiredState, restore: &StateRestore, index: u64) {
    let ids: Vec<String> = next.compute.vms.keys().cloned().collect();
    for id in ids {
        if next.compute.vms[&id].value.deleting {
            // Its disk was being removed: nothing to bring back.
            next.compute.vms.remove(&id);
            next.backups.vms.remove(&id);
            continue;
        }
        let targets = &next.backups.targets;
        let backups = next.backups.vms.entry(id.clone()).or_default();
        settle(backups);
        let Some(entry) = next.compute.vms.get_mut(&id) else {
            continue;
        };
        let vm = &mut entry.value;
        vm.migration = None;
        vm.moved_from = None;
        vm.move_given_up = None;
        vm.replica = None;
        vm.adopt_replica = None;
        let newest = newest_backup(vm, backups, restore.snapshots.get(&id))
            .filter(|r| targets.contains_key(&r.snapshot.target));
        let had_disk = vm.disk.host.is_some()
            || backups.recover.is_some()
            || (vm.disk.generation == 0 && ran_before(vm));
        match (had_disk, newest) {
            (false, _) => {
                vm.host = None;
                vm.set_phase(Phase::Pending, None, index);
            }
            (true, Some(recover)) => {
                vm.host = None;
                // A copy of the old disk somewhere is stale: the recovered one is newer.
                vm.disk = DiskHome {
                    host: None,
                    generation: vm.disk.generation + 1,
                };
                let message = format!(
                    "its disk is to be recovered from backup {} in {}",
                    recover.snapshot.id, recover.snapshot.target
                );
                vm.set_phase(Phase::Pending, Some(message), index);
                // A snapshot only the repository knew is listed with the others.
                let snapshot = &recover.snapshot;
                if recover.of.is_none() && !backups.snapshots.iter().any(|s| s.id == snapshot.id) {
                    backups.snapshots.push(snapshot.clone());
                    backups.snapshots.sort_by_key(|s| s.time_ms);
                }
                backups.recover = Some(recover);
            }
            (true, None) => {
                vm.host = vm.disk.host.clone().or(vm.host.take());
                let message = "no backup of its disk to recover it from".to_owned();
                vm.set_phase(Phase::Lost, Some(message), index);
                backups.recover = None;
            }
        }
    }
}

/// A VM's backups with nothing under way: no run due, no restore.
fn settle(backups: &mut VmBackups) {
    backups.asked = backups.done;
    backups.failures = 0;
    backups.last_error = None;
    backups.restore = None;
    backups.restore_error = None;
}

/// The newest snapshot a VM's disk may be recovered from: one the state recorded of its
/// current disk (not of one an admin gave up), one the repository holds that the state
/// backup could not record yet, or the one an earlier recovery was still to make.
fn newest_backup(vm: &Vm, backups: &VmBackups, newer: Option<&BackupSnapshot>) -> Option<Recover> {
    let recorded = (backups.snapshots.iter()).filter(|s| s.generation == vm.disk.generation);
    let own = recorded.chain(newer).cloned().map(Recover::own);
    own.chain(backups.recover.clone())
        .max_by_key(|r| r.snapshot.time_ms)
}

/// For states written before disks had homes: the phase says the VM ran.
fn ran_before(vm: &Vm) -> bool {
    matches!(
        vm.phase,
        Phase::Running | Phase::Stopped | Phase::Stopping | Phase::Crashed | Phase::Lost
    )
}

/// The host `host` made VM `vm`'s disk of `generation` from backup `snapshot`: it becomes
/// the disk's home. Refused unless the VM is placed there and still waits for that snapshot.
pub(super) fn recovered(
    state: &mut DesiredState,
    vm: &str,
    host: &str,
    generation: u64,
    snapshot: &str,
) -> Outcome {
    let Some(entry) = state.compute.vms.get_mut(vm) else {
        return Outcome::NotFound;
    };
    let conflict = Outcome::Conflict {
        current: Some(entry.version),
    };
    let value = &mut entry.value;
    let Some(backups) = state.backups.vms.get_mut(vm) else {
        return conflict;
    };
    if value.disk.host.as_deref() == Some(host)
        && value.disk.generation == generation
        && backups.recover.is_none()
    {
        return Outcome::Nothing; // Recorded already; the answer was lost.
    }
    let fenced = state.compute.hosts.get(host).is_some_and(|h| h.fenced);
    let waiting = (backups.recover.as_ref().map(|r| &r.snapshot)).filter(|s| s.id == snapshot);
    let Some(from) = waiting else {
        return conflict;
    };
    if value.host.as_deref() != Some(host)
        || fenced
        || value.deleting
        || value.disk.host.is_some()
        || value.disk.generation != generation
    {
        return conflict;
    }
    backups.restored = Some(Restored {
        snapshot: from.id.clone(),
        snapshot_time_ms: from.time_ms,
        generation,
        by: None,
    });
    backups.recover = None;
    value.disk.host = Some(host.to_owned());
    Outcome::Applied {
        version: entry.version,
    }
}

#[cfg(test)]
mod tests;
