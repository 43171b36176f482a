//! The backup commands' `apply`: an admin's backup targets, a backup of a VM asked for (by
//! its owner or an admin; one at a time), and the run's result as the VM's disk home
//! records it, stored as a snapshot or failed (and retried by the worker until it gives up).

use hearth_types::account::AccountRole;
use hearth_types::backup::{
    BackupSnapshot, BackupTarget, MAX_SNAPSHOTS, Recover, RestoreRun, RestoreStage, Restored,
    ScheduleChoice, StateSnapshot, VmBackups, policy_of, short_error,
};
use hearth_types::compute::{Power, Vm};
use hearth_types::desired::{DesiredState, Versioned};

use super::ComputeCommand;

use super::Outcome;
use super::cas::{Expect, invalid, put, refused, remove};

/// What one run came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RunResult {
    /// Stored; and the snapshots the schedule's retention forgot after it.
    Stored {
        snapshot: BackupSnapshot,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forgot: Vec<String>,
    },
    /// An attempt failed; with `give_up`, the run is over.
    Failed { error: String, give_up: bool },
}

/// The backup commands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupCommand {
    PutTarget {
        target: BackupTarget,
        expect: Expect,
    },
    RemoveTarget {
        name: String,
        expect: Expect,
    },
    /// A backup of `vm` into `target` now; refused while one is due, and for a member
    /// over their plan's `backups_per_day` (`at_ms`: when, by the API node's clock).
    Ask {
        vm: String,
        target: String,
        by: Option<String>,
        #[serde(default)]
        at_ms: u64,
    },
    /// An admin gives `vm` a schedule of its own, none, or its plan's.
    SetSchedule {
        vm: String,
        schedule: ScheduleChoice,
    },
    /// The leader's scheduler: the schedule of `vm` is due at `slot_ms` (its time of day,
    /// Unix ms). A run is asked for unless one is under way; either way the slot is taken.
    Scheduled {
        vm: String,
        slot_ms: u64,
    },
    /// The leader `host` backed the desired state up into `target` at `at_ms`, or failed.
    StateBackup {
        target: String,
        host: String,
        at_ms: u64,
        result: StateResult,
    },
    /// The VM's disk home, or the host of its replica, reports on run `run` (the `asked`
    /// count it started for).
    Record {
        vm: String,
        host: String,
        run: u64,
        result: RunResult,
    },
    /// Replace the VM's disk with snapshot `snapshot` (its owner or an admin, who confirmed
    /// it): the VM stops, and runs again as it was asked to once the disk is replaced.
    Restore {
        vm: String,
        snapshot: String,
        by: Option<String>,
    },
    /// The disk home prepared the snapshot's disk beside the VM's of `generation`: it
    /// becomes the VM's disk of `generation + 1` (a compare-and-set, like a move's switch).
    RestoreSwapped {
        vm: String,
        host: String,
        generation: u64,
        /// The snapshot it prepared: refused unless the restore under way is of it (an
        /// aborted restore's late report must not swap in for a later one). Empty from
        /// workers older than this check.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        snapshot: String,
    },
    /// The disk home put the restored disk in place (`Ok`), or failed before the swap (the
    /// VM keeps its disk; with `give_up`, the restore is over).
    RestoreDone {
        vm: String,
        host: String,
        /// The stage the host saw: a report from a stage that is over is refused.
        stage: RestoreStage,
        result: RestoreResult,
        /// The snapshot of the restore it reports on, as for `RestoreSwapped`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        snapshot: String,
    },
    /// Its owner or an admin ends `vm`'s restore before its disk was swapped (its worker
    /// is gone, or the snapshot cannot be fetched): the VM keeps the disk it had and gets
    /// its power back. Refused once the disk is the snapshot's: that only its worker ends.
    AbortRestore {
        vm: String,
        by: Option<String>,
    },
    /// A new VM named `name`, like `vm` (size, image, pools, owner) with addresses of its
    /// own, whose disk is made from `vm`'s snapshot `snapshot` before it first runs; `vm` is
    /// left as it is. A member's counts against their plan, as a creation does.
    RestoreInto {
        vm: String,
        snapshot: String,
        name: String,
    },
    /// After `hearth restore`: `host` made the VM's disk of `generation` from backup
    /// `snapshot` (its `recover`), which becomes the disk's home (`model::restore`).
    Recovered {
        vm: String,
        host: String,
        generation: u64,
        snapshot: String,
    },
}

/// How a backup of the desired state ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StateResult {
    Stored { snapshot: StateSnapshot },
    Failed { error: String },
}

/// How a restore ended on the disk home.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RestoreResult {
    Ok,
    Failed { error: String, give_up: bool },
}

impl BackupCommand {
    /// The object the command changes.
    pub fn object_key(&self) -> String {
        match self {
            BackupCommand::PutTarget { target, .. } => format!("backup-target/{}", target.name),
            BackupCommand::RemoveTarget { name, .. } => format!("backup-target/{name}"),
            BackupCommand::StateBackup { target, .. } => format!("state-backup/{target}"),
            // A creation: never two in one batch, so plans count them one after the other.
            BackupCommand::RestoreInto { .. } => "vm-create".into(),
            // A restore changes the VM itself (its power, its disk's generation).
            BackupCommand::Ask { vm, .. }
            | BackupCommand::SetSchedule { vm, .. }
            | BackupCommand::Scheduled { vm, .. }
            | BackupCommand::Record { vm, .. }
            | BackupCommand::Restore { vm, .. }
            | BackupCommand::RestoreSwapped { vm, .. }
            | BackupCommand::RestoreDone { vm, .. }
            | BackupCommand::AbortRestore { vm, .. }
            | BackupCommand::Recovered { vm, .. } => format!("vm/{vm}"),
        }
    }
}

pub(super) fn apply(state: &mut DesiredState, command: &BackupCommand, index: u64) -> Outcome {
    match command {
        BackupCommand::PutTarget { target, expect } => match target.validate() {
            Err(message) => invalid(message),
            Ok(()) => put(
                &mut state.backups.targets,
                target.name.clone(),
                target.clone(),
                *expect,
                index,
            ),
        },
        BackupCommand::RemoveTarget { name, expect } => remove_target(state, name, *expect),
        BackupCommand::StateBackup {
            target,
            host: _,
            at_ms,
            result,
        } => state_backup(state, target, *at_ms, result, index),
        BackupCommand::Ask {
            vm,
            target,
            by,
            at_ms,
        } => ask(state, vm, target, by.as_deref(), *at_ms, index),
        BackupCommand::SetSchedule { vm, schedule } => set_schedule(state, vm, schedule, index),
        BackupCommand::Scheduled { vm, slot_ms } => scheduled(state, vm, *slot_ms, index),
        BackupCommand::Record {
            vm,
            host,
            run,
            result,
        } => record(state, vm, host, *run, result, index),
        BackupCommand::Restore { vm, snapshot, by } => {
            restore(state, vm, snapshot, by.as_deref(), index)
        }
        BackupCommand::RestoreSwapped {
            vm,
            host,
            generation,
            snapshot,
        } => restore_swapped(state, (vm, host, snapshot), *generation, index),
        BackupCommand::RestoreDone {
            vm,
            host,
            stage,
            result,
            snapshot,
        } => restore_done(state, (vm, host, snapshot), *stage, result, index),
        BackupCommand::AbortRestore { vm, by } => abort_restore(state, vm, by.as_deref(), index),
        BackupCommand::Recovered {
            vm,
            host,
            generation,
            snapshot,
        } => super::restore::recovered(state, vm, host, *generation, snapshot),
        BackupCommand::RestoreInto { vm, snapshot, name } => {
            restore_into(state, vm, snapshot, name, index)
        }
    }
}

fn restore_into(
    state: &mut DesiredState,
    source: &str,
    snapshot: &str,
    name: &str,
    index: u64,
) -> Outcome {
    let Some(entry) = state.compute.vms.get(source) else {
        return invalid(format!("vm: no VM {source}"));
    };
    let from = entry.value.request.name.clone();
    let found = (state.backups.vms.get(source))
        .and_then(|b| b.snapshots.iter().find(|s| s.id == snapshot))
        .cloned();
    let Some(found) = found else {
        return invalid(format!(
            "snapshot: {from} has no snapshot {snapshot} (hearth backups {from})"
        ));
    };
    if !state.backups.targets.contains_key(&found.target) {
        return refused(format!(
            "snapshot: its backup target {} was removed",
            found.target
        ));
    }
    let mut request = entry.value.request.clone();
    request.name = name.to_owned();
    request.power = Power::Running;
    let base = entry.value.base.clone();
    let create = ComputeCommand::CreateVm { request };
    let outcome = super::apply_compute(state, &create, index);
    if let Outcome::Created { id, .. } = &outcome {
        if let Some(vm) = state.compute.vms.get_mut(id) {
            // The same image beneath it as the VM it comes from.
            vm.value.base = base.or(vm.value.base.take());
            vm.value.message = Some(format!(
                "its disk is to be made from backup {snapshot} of {from}"
            ));
        }
        let backups = state.backups.vms.entry(id.clone()).or_default();
        backups.recover = Some(Recover {
            snapshot: found,
            of: Some(source.to_owned()),
        });
    }
    outcome
}

/// Removes target `name`, unless a run, a restore or a schedule uses it.
fn remove_target(state: &mut DesiredState, name: &str, expect: Expect) -> Outcome {
    let users: Vec<&str> = (state.backups.vms.iter())
        .filter(|(_, b)| {
            (b.pending() && b.target == name)
                || (b.restore.as_ref()).is_some_and(|r| r.snapshot.target == name)
                || (b.recover.as_ref()).is_some_and(|r| r.snapshot.target == name)
        })
        .map(|(vm, _)| vm.as_str())
        .collect();
    if !users.is_empty() {
        return refused(format!(
            "name: a backup, restore or recovery of {} uses {name}; remove it when they are done",
            users.join(", ")
        ));
    }
    if let Some(schedule) = schedule_using(state, name) {
        return refused(format!(
            "name: the backup schedule of {schedule} uses {name}; change it first"
        ));
    }
    let outcome = remove(&mut state.backups.targets, name, expect);
    if outcome.changed() {
        state.backups.state.remove(name);
    }
    outcome
}

/// A plan or VM whose schedule backs up into target `name`.
fn schedule_using(state: &DesiredState, name: &str) -> Option<String> {
    let plan = (state.plans.values())
        .find(|p| p.value.backup.as_ref().is_some_and(|b| b.target == name))
        .map(|p| format!("plan {}", p.value.name));
    plan.or_else(|| {
        state
            .backups
            .vms
            .iter()
            .find_map(|(vm, b)| match &b.schedule {
                ScheduleChoice::Own { policy } if policy.target == name => Some(format!("VM {vm}")),
                _ => None,
            })
    })
}

/// Why a compute command must wait for a restore of its VM: the VM stays stopped where its
/// disk is until the restore is over.
pub(super) fn blocks(state: &DesiredState, command: &ComputeCommand) -> Option<String> {
    // A disk to be recovered from a backup: no other may be claimed for the VM.
    if let ComputeCommand::ClaimDisk { vm, .. } = command
        && let Some(recover) = (state.backups.vms.get(vm)).and_then(|b| b.recover.as_ref())
    {
        return Some(format!(
            "vm: the disk of {vm} is to be recovered from backup {}",
            recover.snapshot.id
        ));
    }
    let vm = match command {
        ComputeCommand::SetPower { vm, .. }
        | ComputeCommand::Reboot { vm, .. }
        | ComputeCommand::Migrate { vm, .. }
        | ComputeCommand::Recreate { vm, .. } => vm,
        _ => return None,
    };
    let restoring = state.backups.vms.get(vm).is_some_and(VmBackups::restoring);
    restoring.then(|| format!("a restore of {vm} from a backup is under way; wait for it"))
}

fn restore(
    state: &mut DesiredState,
    id: &str,
    snapshot: &str,
    by: Option<&str>,
    index: u64,
) -> Outcome {
    let Some(entry) = state.compute.vms.get_mut(id) else {
        return invalid(format!("vm: no VM {id}"));
    };
    // Looked at first and changed only once admitted: a refusal changes nothing.
    let none = VmBackups::default();
    let backups = state.backups.vms.get(id).unwrap_or(&none);
    let Some(found) = backups.snapshots.iter().find(|s| s.id == snapshot) else {
        return invalid(format!(
            "snapshot: {id} has no snapshot {snapshot} (hearth backups {})",
            entry.value.request.name
        ));
    };
    let vm = &entry.value;
    let why = match () {
        _ if vm.deleting => Some("it is being deleted"),
        _ if vm.migration.is_some() => Some("it is moving to another host"),
        _ if vm.disk.host.is_none() => Some("it has no disk"),
        _ if vm.adopt_replica.is_some() => {
            Some("it is taking its copy on another worker as its disk")
        }
        _ if backups.restoring() => Some("a restore is under way"),
        _ if backups.pending() => Some("a backup of it is under way"),
        _ => None,
    };
    if let Some(why) = why {
        return refused(format!("{id} cannot be restored now: {why}"));
    }
    let found = found.clone();
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    backups.restore = Some(RestoreRun {
        snapshot: found.clone(),
        stage: RestoreStage::Asked,
        power_after: vm.request.power,
        by: by.map(str::to_owned),
        failures: 0,
        last_error: None,
    });
    backups.restore_error = None;
    entry.value.request.power = Power::Stopped;
    // A second copy of the disk goes: it holds the disk being replaced. Once the VM runs
    // again on the restored disk, the leader places a fresh one (`docs/replicas.md`).
    entry.value.replica = None;
    entry.version = index;
    Outcome::Applied { version: index }
}

/// A worker's report on a restore: the VM, the worker, and the snapshot it restores
/// (empty from workers that did not say).
type Report<'a> = (&'a str, &'a str, &'a str);

/// The VM and its restore under way, if `host` is its disk home and the restore is of
/// `snapshot` (when given).
fn restoring<'a>(
    state: &'a mut DesiredState,
    (id, host, snapshot): Report<'_>,
) -> Result<(&'a mut Versioned<Vm>, &'a mut RestoreRun), Outcome> {
    let entry = state
        .compute
        .vms
        .get_mut(id)
        .filter(|v| v.value.disk.host.as_deref() == Some(host))
        .ok_or_else(|| refused(format!("{host} is not the home of {id}'s disk")))?;
    let run = state
        .backups
        .vms
        .get_mut(id)
        .and_then(|b| b.restore.as_mut())
        .ok_or_else(|| refused(format!("no restore of {id} is under way")))?;
    if !snapshot.is_empty() && run.snapshot.id != snapshot {
        return Err(refused(format!(
            "{id}: the restore under way is of snapshot {}, not {snapshot}",
            run.snapshot.id
        )));
    }
    Ok((entry, run))
}

fn restore_swapped(
    state: &mut DesiredState,
    report: Report<'_>,
    generation: u64,
    index: u64,
) -> Outcome {
    let id = report.0;
    let (entry, run) = match restoring(state, report) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    let vm = &mut entry.value;
    let steady = vm.request.power == Power::Stopped && !vm.deleting && vm.migration.is_none();
    if run.stage != RestoreStage::Asked || vm.disk.generation != generation || !steady {
        return refused(format!(
            "{id}: the restore's swap at generation {generation} is not due"
        ));
    }
    run.stage = RestoreStage::Swapped;
    vm.disk.generation = generation + 1;
    entry.version = index;
    Outcome::Applied { version: index }
}

fn abort_restore(state: &mut DesiredState, id: &str, by: Option<&str>, index: u64) -> Outcome {
    let Some(run) = state.backups.vms.get(id).and_then(|b| b.restore.as_ref()) else {
        return refused(format!("no restore of {id} is under way"));
    };
    if run.stage != RestoreStage::Asked {
        return refused(format!(
            "{id}'s disk is already the snapshot's: its worker finishes the restore, which can no longer be aborted"
        ));
    }
    let power = run.power_after;
    if let Some(entry) = state.compute.vms.get_mut(id) {
        entry.value.request.power = power;
        entry.version = index;
    }
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    backups.restore = None;
    backups.restore_error = Some(match by {
        Some(name) => format!("aborted by {name}; the VM kept its disk"),
        None => "aborted; the VM kept its disk".to_owned(),
    });
    Outcome::Applied { version: index }
}

fn restore_done(
    state: &mut DesiredState,
    report: Report<'_>,
    stage: RestoreStage,
    result: &RestoreResult,
    index: u64,
) -> Outcome {
    let id = report.0;
    let (entry, run) = match restoring(state, report) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    if run.stage != stage {
        return refused(format!("{id}: the restore is past that stage"));
    }
    let over = match (result, run.stage) {
        (RestoreResult::Ok, RestoreStage::Swapped) => Ok(Restored {
            snapshot: run.snapshot.id.clone(),
            snapshot_time_ms: run.snapshot.time_ms,
            generation: entry.value.disk.generation,
            by: run.by.clone(),
        }),
        (RestoreResult::Failed { error, give_up }, _) => {
            run.failures = run.failures.saturating_add(1);
            run.last_error = Some(short_error(error));
            if !give_up {
                return Outcome::Applied { version: index };
            }
            Err(short_error(error))
        }
        (RestoreResult::Ok, RestoreStage::Asked) => {
            return refused(format!("{id}: the restore was not swapped yet"));
        }
    };
    entry.value.request.power = run.power_after;
    entry.version = index;
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    backups.restore = None;
    match over {
        Ok(restored) => backups.restored = Some(restored),
        Err(error) => backups.restore_error = Some(error),
    }
    Outcome::Applied { version: index }
}

fn state_backup(
    state: &mut DesiredState,
    target: &str,
    at_ms: u64,
    result: &StateResult,
    index: u64,
) -> Outcome {
    if !state.backups.targets.contains_key(target) {
        return refused(format!("target: no backup target {target:?}"));
    }
    let backups = state.backups.state.entry(target.to_owned()).or_default();
    backups.attempted_ms = backups.attempted_ms.max(at_ms);
    match result {
        StateResult::Stored { snapshot } => {
            backups.last = Some(snapshot.clone());
            backups.failures = 0;
            backups.last_error = None;
        }
        StateResult::Failed { error } => {
            backups.failures = backups.failures.saturating_add(1);
            backups.last_error = Some(short_error(error));
        }
    }
    Outcome::Applied { version: index }
}

/// A day, in ms: the window of a plan's `backups_per_day`.
const DAY_MS: u64 = 24 * 3600 * 1000;

fn set_schedule(
    state: &mut DesiredState,
    id: &str,
    schedule: &ScheduleChoice,
    index: u64,
) -> Outcome {
    if !state.compute.vms.contains_key(id) {
        return invalid(format!("vm: no VM {id}"));
    }
    if let ScheduleChoice::Own { policy } = schedule {
        if let Err(why) = policy.validate() {
            return invalid(format!("policy.{why}"));
        }
        if !state.backups.targets.contains_key(&policy.target) {
            return refused(format!(
                "policy.target: no backup target {:?} (hearth backup target list)",
                policy.target
            ));
        }
    }
    state.backups.vms.entry(id.to_owned()).or_default().schedule = schedule.clone();
    Outcome::Applied { version: index }
}

fn scheduled(state: &mut DesiredState, id: &str, slot_ms: u64, index: u64) -> Outcome {
    let Some(policy) = policy_of(state, id) else {
        return refused(format!("{id} has no backup schedule"));
    };
    let target = policy.target.clone();
    let taken = state.backups.vms.get(id).map_or(0, |b| b.scheduled_ms);
    if slot_ms <= taken {
        return refused(format!(
            "{id}'s scheduled backup of that time was asked for"
        ));
    }
    let steady = state.compute.vms.get(id).is_some_and(|v| {
        !v.value.deleting
            && v.value.disk.host.is_some()
            && state.backups.targets.contains_key(&target)
    });
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    backups.scheduled_ms = slot_ms;
    if steady && !backups.pending() && !backups.restoring() {
        backups.asked += 1;
        backups.target = target;
        backups.asked_by = None;
        backups.failures = 0;
    }
    Outcome::Applied { version: index }
}

/// The backups a day member `by` may ask for of a VM, if `by` is a member with a limit.
fn daily_limit(state: &DesiredState, by: Option<&str>) -> Option<u64> {
    let account = &state.accounts.get(by?)?.value;
    if account.role == AccountRole::Admin {
        return None;
    }
    let plans = &state.plans;
    hearth_types::quota::quota_of(plans, account.plan.as_deref(), &account.quota).backups_per_day
}

/// Why a member over their plan's backups a day may not ask for one at `at_ms`.
fn over_daily_limit(backups: &VmBackups, limit: u64, at_ms: u64) -> Option<String> {
    let recent: Vec<u64> = (backups.on_demand_ms.iter())
        .copied()
        .filter(|t| t.saturating_add(DAY_MS) > at_ms)
        .collect();
    if (recent.len() as u64) < limit {
        return None;
    }
    let wait_min = recent
        .first()
        .map_or(0, |t| (t + DAY_MS).saturating_sub(at_ms).div_ceil(60_000));
    Some(format!(
        "quota: your plan allows {limit} backups of a VM a day; the next can be asked for in {} h {} min",
        wait_min / 60,
        wait_min % 60
    ))
}

fn ask(
    state: &mut DesiredState,
    id: &str,
    target: &str,
    by: Option<&str>,
    at_ms: u64,
    index: u64,
) -> Outcome {
    let Some(vm) = state.compute.vms.get(id).map(|v| &v.value) else {
        return invalid(format!("vm: no VM {id}"));
    };
    if !state.backups.targets.contains_key(target) {
        return invalid(format!(
            "target: no backup target {target:?} (hearth backup-target list)"
        ));
    }
    if vm.deleting {
        return refused(format!("{id} is being deleted"));
    }
    if vm.disk.host.is_none() {
        return refused(format!("{id} has no disk yet: it never started"));
    }
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    if backups.pending() || backups.restoring() {
        return refused(format!(
            "a backup or a restore of {id} is under way; ask again when it is done"
        ));
    }
    let limit = daily_limit(state, by);
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    if let Some(limit) = limit {
        if let Some(why) = over_daily_limit(backups, limit, at_ms) {
            return refused(why);
        }
        (backups.on_demand_ms).retain(|t| t.saturating_add(DAY_MS) > at_ms);
        backups.on_demand_ms.push(at_ms);
    }
    backups.asked += 1;
    backups.target = target.to_owned();
    backups.asked_by = by.map(str::to_owned);
    backups.failures = 0;
    Outcome::Applied { version: index }
}

fn record(
    state: &mut DesiredState,
    id: &str,
    host: &str,
    run: u64,
    result: &RunResult,
    index: u64,
) -> Outcome {
    // The disk's home, or the host of its replica, which copies a VM whose replica is in
    // sync (that replica may have fallen behind since it checked, after its copy).
    let copier = state.compute.vms.get(id).is_some_and(|v| {
        let vm = &v.value;
        vm.disk.host.as_deref() == Some(host) || vm.replica.as_ref().is_some_and(|r| r.host == host)
    });
    if !copier {
        return refused(format!(
            "{host} is not the home of {id}'s disk nor of its replica"
        ));
    }
    let Some(backups) = state.backups.vms.get_mut(id) else {
        return refused(format!("no backup of {id} was asked for"));
    };
    if run != backups.asked || !backups.pending() {
        return refused(format!("run {run} of {id} is not the one due"));
    }
    match result {
        RunResult::Stored { snapshot, forgot } => {
            backups.done = run;
            backups.failures = 0;
            backups.last_error = None;
            // restic names a snapshot by its id or any prefix of 8 or more of it.
            let same = |a: &str, b: &str| {
                a.len().min(b.len()) >= 8 && (a.starts_with(b) || b.starts_with(a))
            };
            (backups.snapshots).retain(|s| !forgot.iter().any(|f| same(f, &s.id)));
            backups.snapshots.push(snapshot.clone());
            let extra = backups.snapshots.len().saturating_sub(MAX_SNAPSHOTS);
            backups.snapshots.drain(..extra);
        }
        RunResult::Failed { error, give_up } => {
            backups.failures = backups.failures.saturating_add(1);
            backups.last_error = Some(short_error(error));
            if *give_up {
                backups.done = run;
            }
        }
    }
    Outcome::Applied { version: index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::{Phase, Power};
    use hearth_types::desired::Versioned;

    fn state() -> DesiredState {
        let mut state = DesiredState::default();
        let mut vm = hearth_types::compute::Vm::example("vm-1", "web", "ana");
        vm.host = Some("w1".into());
        vm.phase = Phase::Running;
        vm.phase_since = 1;
        vm.disk.host = Some("w1".into());
        let vm = Versioned {
            version: 1,
            value: vm,
        };
        state.compute.vms.insert("vm-1".into(), vm);
        let target = BackupTarget {
            name: "local".into(),
            location: "/srv/backups".into(),
            password_file: "/etc/hearth/restic.pass".into(),
            env_file: None,
        };
        state.backups.targets.insert(
            "local".into(),
            Versioned {
                version: 1,
                value: target,
            },
        );
        state
    }

    fn snapshot() -> BackupSnapshot {
        BackupSnapshot {
            id: "abc".into(),
            target: "local".into(),
            time_ms: 5,
            host: "w1".into(),
            generation: 1,
            size_bytes: 10,
            added_bytes: 10,
            read_bytes: 10,
            by: None,
        }
    }

    /// VM `vm-1` gets snapshot `abc` to restore from.
    fn add_snapshot(state: &mut DesiredState) {
        let backups = state.backups.vms.entry("vm-1".into()).or_default();
        backups.snapshots.push(snapshot());
    }

    fn ask_of(vm: &str, target: &str) -> BackupCommand {
        ask_at(vm, target, 1_000)
    }

    fn ask_at(vm: &str, target: &str, at_ms: u64) -> BackupCommand {
        BackupCommand::Ask {
            vm: vm.into(),
            target: target.into(),
            by: Some("ana".into()),
            at_ms,
        }
    }

    fn record_of(host: &str, run: u64, result: RunResult) -> BackupCommand {
        BackupCommand::Record {
            vm: "vm-1".into(),
            host: host.into(),
            run,
            result,
        }
    }

    #[test]
    fn one_backup_at_a_time_recorded_only_by_the_disks_home() {
        let mut state = state();
        assert!(matches!(
            apply(&mut state, &ask_of("vm-9", "local"), 2),
            Outcome::Invalid { .. }
        ));
        assert!(matches!(
            apply(&mut state, &ask_of("vm-1", "nowhere"), 2),
            Outcome::Invalid { .. }
        ));
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 2).changed());
        assert!(matches!(
            apply(&mut state, &ask_of("vm-1", "local"), 3),
            Outcome::Refused { .. }
        ));
        let stored = RunResult::Stored {
            snapshot: snapshot(),
            forgot: vec![],
        };
        assert!(!apply(&mut state, &record_of("w2", 1, stored.clone()), 4).changed());
        assert!(!apply(&mut state, &record_of("w1", 7, stored.clone()), 4).changed());
        let failed = RunResult::Failed {
            error: "restic: repository is locked".into(),
            give_up: false,
        };
        assert!(apply(&mut state, &record_of("w1", 1, failed), 5).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(backups.pending() && backups.failures == 1);
        assert!(apply(&mut state, &record_of("w1", 1, stored.clone()), 6).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.pending() && backups.last_error.is_none());
        assert_eq!(backups.snapshots, vec![snapshot()]);
        // The same report again changes nothing.
        assert!(!apply(&mut state, &record_of("w1", 1, stored), 7).changed());
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 8).changed());
    }

    #[test]
    fn the_host_of_a_vms_replica_may_record_its_backup() {
        let mut state = state();
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 2).changed());
        let stored = RunResult::Stored {
            snapshot: snapshot(),
            forgot: vec![],
        };
        assert!(!apply(&mut state, &record_of("w2", 1, stored.clone()), 3).changed());
        let vm = &mut state.compute.vms.get_mut("vm-1").unwrap().value;
        vm.replica = Some(hearth_types::compute::Replica {
            host: "w2".into(),
            since: 2,
            // Recorded degraded after its host checked it and copied it: still its record.
            state: hearth_types::compute::ReplicaState::Degraded,
            nbd: None,
            done_bytes: 0,
            total_bytes: 0,
            message: None,
        });
        assert!(!apply(&mut state, &record_of("w3", 1, stored.clone()), 4).changed());
        assert!(apply(&mut state, &record_of("w2", 1, stored), 5).changed());
        assert!(!state.backups.vms["vm-1"].pending());
    }

    fn member(state: &mut DesiredState, name: &str, backups_per_day: Option<u64>) {
        let mut account = hearth_types::account::Account::example(name, AccountRole::Member);
        account.quota.backups_per_day = backups_per_day;
        let account = Versioned {
            version: 1,
            value: account,
        };
        state.accounts.insert(name.into(), account);
    }

    /// Runs the backup due to its end, stored as snapshot `id` (forgetting `forgot`).
    fn store(state: &mut DesiredState, id: &str, forgot: &[&str], index: u64) {
        let run = state.backups.vms["vm-1"].asked;
        let mut snapshot = snapshot();
        snapshot.id = id.into();
        let stored = RunResult::Stored {
            snapshot,
            forgot: forgot.iter().map(|f| f.to_string()).collect(),
        };
        assert!(apply(state, &record_of("w1", run, stored), index).changed());
    }

    #[test]
    fn a_member_asks_for_as_many_backups_a_day_as_the_plan_allows() {
        let mut state = state();
        member(&mut state, "ana", Some(2));
        let hour = 3_600_000;
        for (n, at) in [hour, 2 * hour].into_iter().enumerate() {
            assert!(apply(&mut state, &ask_at("vm-1", "local", at), 2).changed());
            store(&mut state, &format!("snap000{n}"), &[], 3);
        }
        let third = apply(&mut state, &ask_at("vm-1", "local", 3 * hour), 4);
        let Outcome::Refused { message } = third else {
            panic!("{third:?}")
        };
        // The first ask leaves the window a day after it: 22 hours later.
        assert!(
            message.contains("allows 2") && message.contains("in 22 h 0 min"),
            "{message}"
        );
        assert_eq!(state.backups.vms["vm-1"].on_demand_ms.len(), 2);
        // A day after the first, one more.
        assert!(apply(&mut state, &ask_at("vm-1", "local", 25 * hour), 5).changed());
        assert_eq!(
            state.backups.vms["vm-1"].on_demand_ms,
            [2 * hour, 25 * hour]
        );
        // An admin is never counted.
        store(&mut state, "snap0002", &[], 6);
        let mut admin = state.accounts["ana"].clone();
        admin.value.role = AccountRole::Admin;
        state.accounts.insert("ana".into(), admin);
        assert!(apply(&mut state, &ask_at("vm-1", "local", 25 * hour), 7).changed());
        assert_eq!(state.backups.vms["vm-1"].on_demand_ms.len(), 2);
    }

    #[test]
    fn a_schedule_asks_once_per_slot_and_retention_forgets_snapshots() {
        let mut state = state();
        let policy = hearth_types::backup::BackupPolicy {
            target: "local".into(),
            at: "03:00".into(),
            time_zone: "UTC".into(),
            keep: Default::default(),
        };
        let scheduled = |slot_ms| BackupCommand::Scheduled {
            vm: "vm-1".into(),
            slot_ms,
        };
        // No schedule: nothing to ask for.
        assert!(!apply(&mut state, &scheduled(10), 2).changed());
        let mut bad = policy.clone();
        bad.target = "nowhere".into();
        let set = |policy| BackupCommand::SetSchedule {
            vm: "vm-1".into(),
            schedule: ScheduleChoice::Own { policy },
        };
        assert!(matches!(
            apply(&mut state, &set(bad), 3),
            Outcome::Refused { .. }
        ));
        assert!(apply(&mut state, &set(policy.clone()), 3).changed());
        assert!(apply(&mut state, &scheduled(10), 4).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(backups.pending() && backups.asked_by.is_none() && backups.scheduled_ms == 10);
        // The same slot again, or an older one: refused.
        assert!(!apply(&mut state, &scheduled(10), 5).changed());
        store(&mut state, "aaaaaaaa", &[], 6);
        // A slot due while a run is under way is taken, and no second run is asked for.
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 7).changed());
        let asked = state.backups.vms["vm-1"].asked;
        assert!(apply(&mut state, &scheduled(20), 8).changed());
        assert_eq!(state.backups.vms["vm-1"].asked, asked);
        // Retention names snapshots by a prefix of their ids.
        store(&mut state, "bbbbbbbb", &["aaaaaaaa1234"], 9);
        let ids: Vec<&str> = (state.backups.vms["vm-1"].snapshots.iter())
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["bbbbbbbb"]);
        // The target cannot go while the schedule uses it; "off" ends the schedule.
        let remove = BackupCommand::RemoveTarget {
            name: "local".into(),
            expect: Expect::Any,
        };
        assert!(matches!(
            apply(&mut state, &remove, 10),
            Outcome::Refused { .. }
        ));
        let off = BackupCommand::SetSchedule {
            vm: "vm-1".into(),
            schedule: ScheduleChoice::Off,
        };
        assert!(apply(&mut state, &off, 11).changed());
        assert!(!apply(&mut state, &scheduled(30), 12).changed());
        assert!(apply(&mut state, &remove, 13).changed());
    }

    fn restore_of(snapshot: &str) -> BackupCommand {
        BackupCommand::Restore {
            vm: "vm-1".into(),
            snapshot: snapshot.into(),
            by: Some("ana".into()),
        }
    }

    fn done(stage: RestoreStage, result: RestoreResult) -> BackupCommand {
        BackupCommand::RestoreDone {
            vm: "vm-1".into(),
            host: "w1".into(),
            stage,
            result,
            snapshot: "abc".into(),
        }
    }

    fn done_of(stage: RestoreStage, snapshot: &str) -> BackupCommand {
        BackupCommand::RestoreDone {
            vm: "vm-1".into(),
            host: "w1".into(),
            stage,
            result: RestoreResult::Ok,
            snapshot: snapshot.into(),
        }
    }

    fn swapped(host: &str, generation: u64) -> BackupCommand {
        swapped_of(host, generation, "abc")
    }

    fn swapped_of(host: &str, generation: u64, snapshot: &str) -> BackupCommand {
        BackupCommand::RestoreSwapped {
            vm: "vm-1".into(),
            host: host.into(),
            generation,
            snapshot: snapshot.into(),
        }
    }

    #[test]
    fn a_restore_stops_the_vm_swaps_its_generation_once_and_gives_its_power_back() {
        let mut state = state();
        assert!(matches!(
            apply(&mut state, &restore_of("abc"), 2),
            Outcome::Invalid { .. }
        ));
        add_snapshot(&mut state);
        assert!(apply(&mut state, &restore_of("abc"), 3).changed());
        let vm = &state.compute.vms["vm-1"].value;
        assert_eq!(vm.request.power, Power::Stopped);
        // Nothing may start, move or back it up meanwhile.
        let start = ComputeCommand::SetPower {
            vm: "vm-1".into(),
            power: Power::Running,
            expect: Expect::Any,
        };
        let started = crate::model::apply(
            &mut state,
            &crate::model::Command::Compute { command: start },
            4,
        );
        assert!(matches!(started, Outcome::Refused { .. }), "{started:?}");
        assert!(!apply(&mut state, &ask_of("vm-1", "local"), 4).changed());
        assert!(!apply(&mut state, &restore_of("abc"), 4).changed());
        // Done before the swap: refused; the swap only by the home, at its generation.
        assert!(!apply(&mut state, &done(RestoreStage::Asked, RestoreResult::Ok), 5).changed());
        assert!(!apply(&mut state, &swapped("w2", 1), 5).changed());
        assert!(!apply(&mut state, &swapped("w1", 7), 5).changed());
        assert!(apply(&mut state, &swapped("w1", 1), 5).changed());
        assert_eq!(state.compute.vms["vm-1"].value.disk.generation, 2);
        assert!(!apply(&mut state, &swapped("w1", 1), 6).changed(), "once");
        // A stale failure from before the swap is refused.
        let stale = RestoreResult::Failed {
            error: "dump failed".into(),
            give_up: true,
        };
        assert!(!apply(&mut state, &done(RestoreStage::Asked, stale), 6).changed());
        assert!(
            apply(
                &mut state,
                &done(RestoreStage::Swapped, RestoreResult::Ok),
                7
            )
            .changed()
        );
        let vm = &state.compute.vms["vm-1"].value;
        assert_eq!((vm.request.power, vm.disk.generation), (Power::Running, 2));
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.restoring());
        assert_eq!(backups.restored.as_ref().unwrap().snapshot, "abc");
    }

    /// A VM with a second copy of its disk gives the copy up when its restore starts (the
    /// copy holds the disk being replaced); one taking its copy as its disk is refused.
    #[test]
    fn a_restore_of_a_vm_with_a_second_copy_drops_the_copy() {
        let mut state = state();
        let backups = state.backups.vms.entry("vm-1".into()).or_default();
        backups.snapshots.push(snapshot());
        let vm = &mut state.compute.vms.get_mut("vm-1").unwrap().value;
        vm.request.replicas = 2;
        vm.adopt_replica = Some(4);
        let before = state.clone();
        assert!(matches!(
            apply(&mut state, &restore_of("abc"), 5),
            Outcome::Refused { .. }
        ));
        assert_eq!(state, before);
        let vm = &mut state.compute.vms.get_mut("vm-1").unwrap().value;
        vm.adopt_replica = None;
        vm.replica = Some(hearth_types::compute::Replica {
            host: "w2".into(),
            since: 4,
            state: hearth_types::compute::ReplicaState::InSync,
            nbd: None,
            done_bytes: 0,
            total_bytes: 0,
            message: None,
        });
        assert!(apply(&mut state, &restore_of("abc"), 6).changed());
        let vm = &state.compute.vms["vm-1"].value;
        assert_eq!(vm.replica, None);
        assert_eq!(vm.request.replicas, 2, "it asks for a fresh copy later");
    }

    fn tiny_image(state: &mut DesiredState) {
        state.compute.images.insert(
            "tiny".into(),
            Versioned {
                version: 1,
                value: hearth_types::compute::Image {
                    name: "tiny".into(),
                    format: "qcow2".into(),
                    arch: hearth_types::compute::Arch::X86_64,
                    disk: hearth_types::compute::Blob {
                        sha256: "a".repeat(64),
                        size_bytes: 1,
                    },
                    kernel: None,
                    initrd: None,
                    append: None,
                },
            },
        );
    }

    #[test]
    fn a_plans_rbd_storage_goes_to_its_members_new_vms_and_their_restores_into_new_vms() {
        use hearth_types::compute::Storage;
        let mut state = state();
        tiny_image(&mut state);
        member(&mut state, "ana", None);
        let rbd = Storage::Rbd { pool: "rbd".into() };
        let plan = hearth_types::quota::Plan {
            name: hearth_types::quota::DEFAULT_PLAN.into(),
            quota: Default::default(),
            prices: None,
            backup: None,
            storage: Some(rbd.clone()),
        };
        (state.plans).insert(
            plan.name.clone(),
            Versioned {
                version: 1,
                value: plan,
            },
        );
        let mut request = state.compute.vms["vm-1"].value.request.clone();
        request.name = "db".into();
        request.replicas = 2;
        let create = ComputeCommand::CreateVm { request };
        let Outcome::Created { id, .. } = super::super::apply_compute(&mut state, &create, 2)
        else {
            panic!("not created");
        };
        let vm = &state.compute.vms[&id].value;
        assert_eq!(vm.storage, rbd);
        assert_eq!(vm.request.replicas, 1, "Ceph keeps the copies");
        // A restore into a new VM lands on RBD too: its disk is made there from the backup.
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 3).changed());
        store(&mut state, "abc", &[], 3);
        let into = BackupCommand::RestoreInto {
            vm: "vm-1".into(),
            snapshot: "abc".into(),
            name: "web2".into(),
        };
        assert!(apply(&mut state, &into, 4).changed());
        let (id, made) = (state.compute.vms.iter())
            .find(|(_, v)| v.value.request.name == "web2")
            .expect("web2 made");
        assert_eq!(made.value.storage, rbd);
        let recover = state.backups.vms[id].recover.as_ref().expect("to recover");
        assert_eq!(recover.snapshot.id, "abc");
        assert_eq!(recover.of.as_deref(), Some("vm-1"));
    }

    #[test]
    fn a_restore_into_a_new_vm_creates_it_waiting_for_the_snapshot_and_counts_on_the_plan() {
        let mut state = state();
        tiny_image(&mut state);
        member(&mut state, "ana", None);
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 2).changed());
        store(&mut state, "abc", &[], 3);
        let into = |snapshot: &str, name: &str| BackupCommand::RestoreInto {
            vm: "vm-1".into(),
            snapshot: snapshot.into(),
            name: name.into(),
        };
        // No such snapshot, or a taken name: nothing changes.
        for (bad, why) in [
            (into("nope", "web2"), "no snapshot"),
            (into("abc", "web"), "exists"),
        ] {
            let before = state.clone();
            let Outcome::Invalid { message } = apply(&mut state, &bad, 4) else {
                panic!("{bad:?} was taken");
            };
            assert!(message.contains(why), "{message}");
            assert_eq!(state, before);
        }
        let Outcome::Created { id, .. } = apply(&mut state, &into("abc", "web2"), 5) else {
            panic!("not created");
        };
        let vm = &state.compute.vms[&id].value;
        assert_eq!(
            (vm.request.name.as_str(), vm.request.owner.as_str()),
            ("web2", "ana")
        );
        assert_eq!((vm.disk.host.as_deref(), vm.host.as_deref()), (None, None));
        let recover = state.backups.vms[&id].recover.as_ref().unwrap();
        assert_eq!(
            (recover.snapshot.id.as_str(), recover.of.as_deref()),
            ("abc", Some("vm-1"))
        );
        // The VM it came from is left as it was.
        assert_eq!(
            state.compute.vms["vm-1"].value.disk.host.as_deref(),
            Some("w1")
        );
        // A member's plan counts it: with room for one VM, a second is refused.
        state.accounts.get_mut("ana").unwrap().value.quota.vms = Some(2);
        let before = state.clone();
        assert!(matches!(
            apply(&mut state, &into("abc", "web3"), 6),
            Outcome::Refused { .. }
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn a_restore_given_up_before_the_swap_keeps_the_disk() {
        let mut state = state();
        add_snapshot(&mut state);
        apply(&mut state, &restore_of("abc"), 2);
        let failed = |give_up| {
            done(
                RestoreStage::Asked,
                RestoreResult::Failed {
                    error: "restic dump failed".into(),
                    give_up,
                },
            )
        };
        assert!(apply(&mut state, &failed(false), 3).changed());
        assert!(state.backups.vms["vm-1"].restoring());
        assert!(apply(&mut state, &failed(true), 4).changed());
        let vm = &state.compute.vms["vm-1"].value;
        assert_eq!((vm.request.power, vm.disk.generation), (Power::Running, 1));
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.restoring() && backups.restored.is_none());
        assert!(backups.restore_error.is_some());
    }

    #[test]
    fn a_restore_aborted_before_its_swap_keeps_the_disk_and_after_it_is_refused() {
        let abort = BackupCommand::AbortRestore {
            vm: "vm-1".into(),
            by: Some("root-admin".into()),
        };
        let mut state = state();
        assert!(
            !apply(&mut state, &abort, 2).changed(),
            "no restore under way"
        );
        add_snapshot(&mut state);
        assert!(apply(&mut state, &restore_of("abc"), 3).changed());
        assert_eq!(
            state.compute.vms["vm-1"].value.request.power,
            Power::Stopped
        );
        assert!(apply(&mut state, &abort, 4).changed());
        let vm = &state.compute.vms["vm-1"].value;
        assert_eq!((vm.request.power, vm.disk.generation), (Power::Running, 1));
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.restoring() && backups.restored.is_none());
        assert!(
            backups
                .restore_error
                .as_ref()
                .unwrap()
                .contains("root-admin")
        );
        // The worker's late swap is refused: the VM keeps its disk.
        assert!(!apply(&mut state, &swapped("w1", 1), 5).changed());
        assert_eq!(state.compute.vms["vm-1"].value.disk.generation, 1);
        // Nor may it swap in for a later restore of another snapshot.
        let mut other = snapshot();
        other.id = "def".into();
        let backups = state.backups.vms.get_mut("vm-1").unwrap();
        backups.snapshots.push(other);
        assert!(apply(&mut state, &restore_of("def"), 5).changed());
        assert!(!apply(&mut state, &swapped("w1", 1), 5).changed());
        assert!(
            !apply(
                &mut state,
                &done(
                    RestoreStage::Asked,
                    RestoreResult::Failed {
                        error: "late".into(),
                        give_up: true
                    }
                ),
                5
            )
            .changed()
        );
        assert!(apply(&mut state, &swapped_of("w1", 1, "def"), 5).changed());
        assert_eq!(state.compute.vms["vm-1"].value.disk.generation, 2);
        assert!(apply(&mut state, &done_of(RestoreStage::Swapped, "def"), 5).changed());

        // Once swapped, the disk is the snapshot's: no abort.
        assert!(apply(&mut state, &restore_of("abc"), 6).changed());
        assert!(apply(&mut state, &swapped("w1", 2), 7).changed());
        assert!(!apply(&mut state, &abort, 8).changed());
        assert!(state.backups.vms["vm-1"].restoring());
        assert_eq!(state.compute.vms["vm-1"].value.disk.generation, 3);
    }

    #[test]
    fn a_run_given_up_ends_and_targets_are_checked() {
        let mut state = state();
        apply(&mut state, &ask_of("vm-1", "local"), 2);
        let gave_up = RunResult::Failed {
            error: "x".repeat(10_000),
            give_up: true,
        };
        assert!(apply(&mut state, &record_of("w1", 1, gave_up), 3).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.pending());
        assert!(backups.last_error.as_ref().unwrap().len() <= 500);
        let bad = BackupCommand::PutTarget {
            target: BackupTarget {
                name: "x".into(),
                location: "nowhere".into(),
                password_file: "/p".into(),
                env_file: None,
            },
            expect: Expect::Any,
        };
        assert!(matches!(
            apply(&mut state, &bad, 4),
            Outcome::Invalid { .. }
        ));
    }
}
