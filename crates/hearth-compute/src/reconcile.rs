//! The per-host reconciler as a pure function: from the VMs placed on this host and what runs
//! here, the actions that make them match, the phases to report, and the drift that must not
//! or cannot be fixed alone. A VM starts only on its own disk (the generation its home
//! records), or on a new one when it never had one; a copy that is not the VM's disk is kept.

use std::collections::{BTreeMap, BTreeSet};

use hearth_types::compute::{
    Compute, DiskHome, Drift, DriftKind, IoLimits, MigrationStage, ObservedVm, Phase, Power, Vm,
};

/// What the reconciler remembers between passes, kept by the host loop.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Deaths of a running VM, not asked for, within the crash window.
    pub recent_crashes: BTreeMap<String, usize>,
    /// The IO limits last applied to each running VM.
    pub applied_io: BTreeMap<String, IoLimits>,
    /// Reboot requests this host carried out (the count done), kept until the cluster has
    /// recorded them, so a pass on a copy of the state that does not show it yet never
    /// reboots the VM a second time.
    pub reboots_done: BTreeMap<String, u64>,
    /// Times this host put a bridged VM's tap rules or shaper back, until an operator
    /// acknowledges the drift entry that lists them.
    pub guard_repairs: BTreeMap<String, u64>,
    /// The QEMU (by pid) of each VM on RBD whose Ceph clients the cluster has recorded.
    pub rbd_recorded: BTreeMap<String, u32>,
}

/// Restarts within the crash window before the host gives up on a VM.
pub const CRASH_LIMIT: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch the image's files; if the VM has no disk home yet, create its disk (or find the
    /// one of its generation already here) and record this host as its home; then start QEMU.
    Start {
        vm: String,
    },
    /// Shut the VM down if it runs here, then move its files, disk included, to the
    /// archive, where an admin finds them: a stale copy is never deleted unasked.
    Archive {
        vm: String,
    },
    /// ACPI shutdown with a grace period, then stop.
    Shutdown {
        vm: String,
    },
    /// Stop QEMU and remove the VM's disk and files.
    Delete {
        vm: String,
    },
    /// The disk is gone: tell the cluster to forget the VM.
    Forget {
        vm: String,
    },
    SetIo {
        vm: String,
        io: IoLimits,
    },
    /// Put a running bridged VM's tap, anti-spoofing rules and shaper back as they should be.
    Guard {
        vm: String,
    },
    /// Forget the repairs of a VM's tap rules (an operator acknowledged them).
    AckGuard {
        vm: String,
    },
    Report {
        vm: String,
        phase: Phase,
        message: Option<String>,
    },
    /// Shut the VM down and start it again, then record reboot request `done` as done.
    Reboot {
        vm: String,
        done: u64,
    },
    /// Record this host as the home of the VM's disk, which is here at the VM's generation
    /// (made before the home was recorded, or by a version of hearth that kept no homes).
    ClaimDisk {
        vm: String,
    },
    /// Record reboot request `done` as done without rebooting (the VM is not running).
    AckReboot {
        vm: String,
        done: u64,
    },
    /// Stop a QEMU process hearth did not start (SIGTERM, then SIGKILL).
    KillForeign {
        vm: String,
        pid: u32,
    },
    /// Forget the crash count, so the VM is started again.
    ResetCrashes {
        vm: String,
    },
    /// Tell the cluster the fix of drift entry `id` was carried out.
    FixDone {
        id: String,
    },
    /// Tell the cluster the VM is stopped here, its disk of `generation` at rest, so that the
    /// target of its move may copy it.
    MoveStopped {
        vm: String,
        generation: u64,
    },
    /// Copy the VM's disk of `generation` from `from`, its home, make it this host's disk
    /// of `generation + 1`, and switch the VM here (see `crate::moves`).
    Receive {
        vm: String,
        from: String,
        generation: u64,
    },
    /// Live move here: start a paused QEMU that waits for the VM, and say where it listens
    /// (see `crate::live_moves`).
    PrepareLive {
        vm: String,
    },
    /// Live move away: mirror the disk and move the RAM to the target, then wait, paused,
    /// for the switch or the give-up.
    SendLive {
        vm: String,
    },
    /// Live move here, complete: take the copy as the VM's disk of `generation + 1`, switch
    /// the VM here from `from`, then let it run.
    SwitchLive {
        vm: String,
        from: String,
        generation: u64,
    },
    /// Undo what a live move left on the VM's QEMU (mirror, export, pause): the move is over
    /// and the VM is to run here.
    Release {
        vm: String,
    },
    /// Replica host: make an empty copy for the VM's replica, export it, and say where
    /// (see `crate::replicas`).
    ExportReplica {
        vm: String,
    },
    /// Replica host: stop exporting the VM's replica copy and remove it, or archive it.
    DropReplicaCopy {
        vm: String,
        archive: bool,
    },
    /// The disk's home: mirror the running VM's disk into its replica.
    MirrorReplica {
        vm: String,
    },
    /// The disk's home: look at the mirror into the replica and report its state.
    TendReplica {
        vm: String,
    },
    /// The disk's home: end a mirror no replica wants.
    UnmirrorReplica {
        vm: String,
    },
    /// Replica host: the VM's home `from` has not renewed its lease (last at `lease`) for
    /// longer than it may run without it: restart the VM here from its replica, unless the
    /// home's QEMU still writes to it.
    FailOver {
        vm: String,
        from: String,
        lease: u64,
    },
    /// The VM was restarted here from its replica: take that copy as its disk.
    AdoptReplica {
        vm: String,
    },
    /// The VM's disk is on RBD and its home `from` has not renewed its lease (last at
    /// `lease`) for longer than it may run without it: put every Ceph client that may still
    /// write the disk on the blocklist, then record this host as its home (`crate::rbd`).
    TakeOver {
        vm: String,
        from: String,
        lease: u64,
    },
    /// Record with the cluster the Ceph clients of the VM's disk on RBD, which its QEMU
    /// (`pid`) runs with here, so that a worker taking the disk over can fence them.
    RecordRbdClients {
        vm: String,
        pid: u32,
    },
}

impl Action {
    /// The VM the action is about, if any.
    pub fn vm(&self) -> Option<&str> {
        match self {
            Action::Start { vm }
            | Action::Archive { vm }
            | Action::Shutdown { vm }
            | Action::Delete { vm }
            | Action::Forget { vm }
            | Action::SetIo { vm, .. }
            | Action::Report { vm, .. }
            | Action::Reboot { vm, .. }
            | Action::AckReboot { vm, .. }
            | Action::ClaimDisk { vm }
            | Action::KillForeign { vm, .. }
            | Action::ResetCrashes { vm }
            | Action::Guard { vm }
            | Action::AckGuard { vm }
            | Action::MoveStopped { vm, .. }
            | Action::Receive { vm, .. }
            | Action::PrepareLive { vm }
            | Action::SendLive { vm }
            | Action::SwitchLive { vm, .. }
            | Action::Release { vm }
            | Action::ExportReplica { vm }
            | Action::DropReplicaCopy { vm, .. }
            | Action::MirrorReplica { vm }
            | Action::TendReplica { vm }
            | Action::UnmirrorReplica { vm }
            | Action::FailOver { vm, .. }
            | Action::AdoptReplica { vm }
            | Action::TakeOver { vm, .. }
            | Action::RecordRbdClients { vm, .. } => Some(vm),
            Action::FixDone { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Sorted by id.
    pub drift: Vec<Drift>,
}

/// What this host has of the disk of a VM placed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DiskHere {
    /// The VM's own disk: its home is here and the generation matches.
    Own,
    /// The VM never had a disk, or has one of its generation here that was never recorded
    /// (the host stopped between creating and recording it, before any start): a start
    /// creates or records it.
    New,
    /// A copy of an older generation, from before an admin recreated the VM: archived
    /// before the new disk is made.
    Stale,
    /// Restarted here from its replica, whose copy is not taken as its disk yet
    /// (`crate::replica_plan`): nothing starts until it is.
    Adopting,
    /// The VM's disk is not here: it must not start on anything else.
    Missing(String),
}

fn disk_here(me: &str, vm: &Vm, found: Option<&ObservedVm>) -> DiskHere {
    let present = found.filter(|s| s.disk_present);
    let generation = vm.disk.generation;
    match (&vm.disk.host, present) {
        (Some(home), _) if home != me => {
            DiskHere::Missing(format!("its disk is on {home}, not on this host"))
        }
        (Some(_), None) if vm.adopt_replica.is_some() => DiskHere::Adopting,
        // On RBD the disk is in Ceph: its home writes the handle here when it starts it.
        (Some(_), None) if !vm.storage.is_local() => DiskHere::Own,
        (Some(_), None) => DiskHere::Missing("its disk is gone from this host".into()),
        (Some(_), Some(s)) if s.generation == generation => DiskHere::Own,
        (_, Some(s)) if s.generation == hearth_qemu::disk::UNREADABLE_GENERATION => {
            DiskHere::Missing("the generation file beside its disk here is unreadable".into())
        }
        (Some(_), Some(s)) => DiskHere::Missing(format!(
            "the disk here is generation {}, not its own generation {generation}",
            s.generation
        )),
        // A state written before disks had homes: a VM that ran had a disk.
        (None, None) if generation == 0 && ran_before(vm) => {
            DiskHere::Missing("it ran here, but its disk is gone".into())
        }
        (None, None) => DiskHere::New,
        (None, Some(s)) if s.generation == generation => DiskHere::New,
        (None, Some(s)) if s.generation < generation => DiskHere::Stale,
        (None, Some(s)) => DiskHere::Missing(format!(
            "the disk here is generation {}, newer than its own generation {generation}",
            s.generation
        )),
    }
}

/// For states written before disks had homes: the phase says the VM ran or was stopped here.
fn ran_before(vm: &Vm) -> bool {
    matches!(
        vm.phase,
        Phase::Running | Phase::Stopped | Phase::Stopping | Phase::Crashed
    )
}

fn missing_disk(me: &str, vm: &Vm, why: &str) -> Drift {
    Drift {
        id: format!("{me}/{}/{}", DriftKind::MissingDisk.as_str(), vm.id),
        host: me.into(),
        vm: vm.id.clone(),
        kind: DriftKind::MissingDisk,
        detail: format!("{}: {why}", vm.request.name),
        fix: format!(
            "none keeps the data: put the disk back, or give it up with `hearth vm recreate {} --empty-disk`",
            vm.request.name
        ),
    }
}

fn report(actions: &mut Vec<Action>, vm: &Vm, phase: Phase, message: Option<String>) {
    if vm.phase != phase || vm.message != message {
        actions.push(Action::Report {
            vm: vm.id.clone(),
            phase,
            message,
        });
    }
}

/// One reconciliation pass for host `me`: address conflicts, then each VM placed here, then
/// what is here but not placed here, then the fixes an operator asked for.
pub fn reconcile(me: &str, compute: &Compute, seen: &[ObservedVm], memory: &Memory) -> Plan {
    let mut plan = Plan::default();
    let seen_by_id: BTreeMap<&str, &ObservedVm> = seen
        .iter()
        .filter(|s| !s.foreign)
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mine: Vec<&Vm> = compute
        .vms
        .values()
        .map(|v| &v.value)
        .filter(|vm| vm.host.as_deref() == Some(me))
        .collect();
    let mut drift = conflicts(me, &mine);
    for vm in &mine {
        let found = seen_by_id.get(vm.id.as_str()).copied();
        one_vm(me, vm, found, memory, &mut plan.actions, &mut drift);
        guard(me, vm, found, memory, &mut plan.actions, &mut drift);
    }
    let mine_ids: BTreeSet<&str> = mine.iter().map(|vm| vm.id.as_str()).collect();
    receive(me, compute, &mut plan.actions);
    strays(me, compute, seen, &mine_ids, &mut plan.actions, &mut drift);
    drift.sort();
    drift.dedup_by(|a, b| a.id == b.id);
    fixes(me, compute, seen, &drift, &mut plan.actions);
    plan.drift = drift;
    plan
}

/// An `ip-conflict` entry for each address two running VMs here hold, naming the newer.
fn conflicts(me: &str, mine: &[&Vm]) -> Vec<Drift> {
    let mut addresses: BTreeMap<_, Vec<&Vm>> = BTreeMap::new();
    for vm in mine
        .iter()
        .filter(|vm| vm.request.power == Power::Running && !vm.deleting)
    {
        for assigned in &vm.ips {
            addresses.entry(assigned.address).or_default().push(vm);
        }
    }
    let mut drift = Vec::new();
    for (address, holders) in &addresses {
        if holders.len() > 1 {
            let newest = holders
                .iter()
                .max_by_key(|vm| vm.id.trim_start_matches("vm-").parse::<u64>().unwrap_or(0))
                .expect("two holders");
            let names: Vec<&str> = holders.iter().map(|vm| vm.request.name.as_str()).collect();
            drift.push(Drift {
                id: format!("{me}/{}/{}", DriftKind::IpConflict.as_str(), newest.id),
                host: me.into(),
                vm: newest.id.clone(),
                kind: DriftKind::IpConflict,
                detail: format!("{address} is held by {}", names.join(" and ")),
                fix: format!("stop {}, the newer VM", newest.request.name),
            });
        }
    }
    drift
}

/// A running bridged VM whose tap rules or shaper were found missing or altered gets them
/// back at once; each repair is remembered and listed as drift until an operator
/// acknowledges it, since something on the host changed them.
fn guard(
    me: &str,
    vm: &Vm,
    found: Option<&ObservedVm>,
    memory: &Memory,
    actions: &mut Vec<Action>,
    drift: &mut Vec<Drift>,
) {
    if found.is_some_and(|s| s.pid.is_some() && s.guard_altered) && !vm.deleting {
        actions.push(Action::Guard { vm: vm.id.clone() });
    }
    if let Some(times) = memory.guard_repairs.get(&vm.id) {
        drift.push(Drift {
            id: format!("{me}/{}/{}", DriftKind::GuardAltered.as_str(), vm.id),
            host: me.into(),
            vm: vm.id.clone(),
            kind: DriftKind::GuardAltered,
            detail: format!(
                "the anti-spoofing rules or bandwidth limits on {}'s tap were missing or altered; put back {times} time(s)",
                vm.request.name
            ),
            fix: "acknowledge (they are back; find out what on the host changed them)".into(),
        });
    }
}

/// The actions and drift for one VM placed on this host.
fn one_vm(
    me: &str,
    vm: &Vm,
    found: Option<&ObservedVm>,
    memory: &Memory,
    actions: &mut Vec<Action>,
    drift: &mut Vec<Drift>,
) {
    let running = found.and_then(|s| s.pid).is_some();
    let disk = disk_here(me, vm, found);
    if vm.deleting {
        // A disk on RBD is in Ceph: its home removes the image even with no handle here.
        let image_here = !vm.storage.is_local() && vm.disk.host.as_deref() == Some(me);
        actions.push(match found {
            Some(_) => Action::Delete { vm: vm.id.clone() },
            None if image_here => Action::Delete { vm: vm.id.clone() },
            None => Action::Forget { vm: vm.id.clone() },
        });
        return;
    }
    if !live_source(vm, found, &disk, actions) {
        return;
    }
    // A disk of the VM's generation here with no home recorded: record it now, whatever the
    // VM does, so that no fence can ever move it to a blank disk elsewhere.
    if vm.disk.host.is_none()
        && found.is_some_and(|s| s.disk_present && s.generation == vm.disk.generation)
    {
        actions.push(Action::ClaimDisk { vm: vm.id.clone() });
    }
    let done_here = memory.reboots_done.get(&vm.id).copied().unwrap_or(0);
    let reboots_done = vm.reboots_done.max(done_here);
    if done_here > vm.reboots_done {
        // Done here, not recorded yet: say so again, do not do it again.
        actions.push(Action::AckReboot {
            vm: vm.id.clone(),
            done: done_here,
        });
    }
    match (wanted_power(vm), running) {
        // Runs on an old generation's disk (recreated while it ran): stop it; the next passes
        // archive that disk and start the VM on its new one.
        (_, true) if disk == DiskHere::Stale => {
            report(actions, vm, Phase::Stopping, None);
            actions.push(Action::Shutdown { vm: vm.id.clone() });
        }
        (Power::Running, true) if vm.reboots_asked > reboots_done => {
            actions.push(Action::Reboot {
                vm: vm.id.clone(),
                done: vm.reboots_asked,
            });
        }
        (Power::Running, true) => {
            report(actions, vm, Phase::Running, None);
            record_rbd_clients(me, vm, found, memory, actions);
            if memory.applied_io.get(&vm.id) != Some(&vm.request.io) {
                actions.push(Action::SetIo {
                    vm: vm.id.clone(),
                    io: vm.request.io,
                });
            }
        }
        (_, false) if vm.reboots_asked > reboots_done => {
            // Nothing runs to reboot; the start (if any) follows on the next pass.
            actions.push(Action::AckReboot {
                vm: vm.id.clone(),
                done: vm.reboots_asked,
            });
        }
        (Power::Running, false) => not_running(me, vm, &disk, memory, actions, drift),
        (Power::Stopped, true) => {
            report(actions, vm, Phase::Stopping, None);
            actions.push(Action::Shutdown { vm: vm.id.clone() });
        }
        (Power::Stopped, false) => not_running_as_wanted(me, vm, &disk, actions, drift),
    }
}

/// A running VM on RBD whose QEMU's Ceph clients the cluster has not recorded yet.
fn record_rbd_clients(
    me: &str,
    vm: &Vm,
    found: Option<&ObservedVm>,
    memory: &Memory,
    actions: &mut Vec<Action>,
) {
    let pid = found.and_then(|s| s.pid);
    if let Some(pid) = pid
        && !vm.storage.is_local()
        && vm.disk.host.as_deref() == Some(me)
        && memory.rbd_recorded.get(&vm.id) != Some(&pid)
    {
        actions.push(Action::RecordRbdClients {
            vm: vm.id.clone(),
            pid,
        });
    }
}

/// This host's part as the source of a live move of `vm`: send it while it mirrors, and undo
/// what a move that is over (or not begun) left on its QEMU. False at the switch: the source's
/// QEMU is paused with the whole VM on its way, and nothing may start or stop it until the
/// switch or the give-up is recorded.
fn live_source(
    vm: &Vm,
    found: Option<&ObservedVm>,
    disk: &DiskHere,
    actions: &mut Vec<Action>,
) -> bool {
    let live = vm.migration.as_ref().filter(|m| m.live).map(|m| m.stage);
    if live == Some(MigrationStage::Switching) {
        return false;
    }
    let Some(seen) = found.filter(|s| s.pid.is_some() && *disk == DiskHere::Own) else {
        return true;
    };
    match live {
        // A mirror into a replica ends first (the leader dropped the replica for the move).
        Some(MigrationStage::Mirroring) if seen.mirroring.is_none() => {
            actions.push(Action::SendLive { vm: vm.id.clone() })
        }
        Some(MigrationStage::Mirroring) => {}
        _ if seen.held => actions.push(Action::Release { vm: vm.id.clone() }),
        _ => {}
    }
    true
}

/// A VM that should not run, and does not: stopped, or lost when its disk is missing. One
/// being moved says its disk is at rest, for the target to copy.
fn not_running_as_wanted(
    me: &str,
    vm: &Vm,
    disk: &DiskHere,
    actions: &mut Vec<Action>,
    drift: &mut Vec<Drift>,
) {
    match (disk, &vm.migration) {
        (DiskHere::Missing(why), _) => {
            report(actions, vm, Phase::Lost, Some(why.clone()));
            drift.push(missing_disk(me, vm, why));
        }
        (DiskHere::Own, Some(moving)) => {
            let message = format!("stopped to move to {}", moving.to);
            report(actions, vm, Phase::Stopped, Some(message));
            if moving.stage == MigrationStage::Stopping {
                actions.push(Action::MoveStopped {
                    vm: vm.id.clone(),
                    generation: vm.disk.generation,
                });
            }
        }
        _ => report(actions, vm, Phase::Stopped, None),
    }
}

/// Whether the VM should run here now: as its owner asked, except that a VM moved cold is
/// stopped where it is and started nowhere until the move switches its home or is given up
/// (docs/migration.md). A VM moved live runs on until the switch.
fn wanted_power(vm: &Vm) -> Power {
    match &vm.migration {
        Some(m) if !m.live => Power::Stopped,
        _ => vm.request.power,
    }
}

/// A VM that should run and does not: started, unless it crash-loops, its disk is missing,
/// or an old generation's disk must be archived first.
fn not_running(
    me: &str,
    vm: &Vm,
    disk: &DiskHere,
    memory: &Memory,
    actions: &mut Vec<Action>,
    drift: &mut Vec<Drift>,
) {
    let crashes = memory.recent_crashes.get(&vm.id).copied().unwrap_or(0);
    if crashes >= CRASH_LIMIT {
        let message = format!("QEMU died {crashes} times in a row; not restarting");
        report(actions, vm, Phase::Crashed, Some(message));
        drift.push(Drift {
            id: format!("{me}/{}/{}", DriftKind::CrashLoop.as_str(), vm.id),
            host: me.into(),
            vm: vm.id.clone(),
            kind: DriftKind::CrashLoop,
            detail: format!(
                "{} died {crashes} times after starting; see its console log",
                vm.request.name
            ),
            fix: "reset the crash count and start it again".into(),
        });
        return;
    }
    match disk {
        DiskHere::Missing(why) => {
            report(actions, vm, Phase::Lost, Some(why.clone()));
            drift.push(missing_disk(me, vm, why));
        }
        DiskHere::Adopting => {
            let message = "taking its replica as its disk".to_owned();
            report(actions, vm, Phase::Creating, Some(message));
        }
        DiskHere::Stale => {
            let message = "archiving the disk of before the recreate".to_owned();
            report(actions, vm, Phase::Creating, Some(message));
            actions.push(Action::Archive { vm: vm.id.clone() });
        }
        DiskHere::Own | DiskHere::New => {
            // The phase says so at once, so nobody reads `running` while QEMU is gone.
            let message = match vm.phase {
                Phase::Placed | Phase::Pending => None,
                Phase::Stopped | Phase::Stopping => Some("starting".to_owned()),
                Phase::Creating => vm.message.clone(),
                _ => Some("QEMU was not running; starting it again".to_owned()),
            };
            report(actions, vm, Phase::Creating, message);
            actions.push(Action::Start { vm: vm.id.clone() });
        }
    }
}

/// This host's part in moves to it, each from the VM's disk's home, which is where it is
/// placed: the cold copy, and the live move's preparation and switch.
fn receive(me: &str, compute: &Compute, actions: &mut Vec<Action>) {
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(moving) = &vm.migration else {
            continue;
        };
        if moving.to != me || vm.deleting {
            continue;
        }
        let (Some(from), Some(home)) = (&vm.host, &vm.disk.host) else {
            continue;
        };
        if from != home || from == me {
            continue;
        }
        let (id, generation) = (vm.id.clone(), vm.disk.generation);
        actions.push(match (moving.live, moving.stage) {
            (false, MigrationStage::Copying) => Action::Receive {
                vm: id,
                from: from.clone(),
                generation,
            },
            (true, MigrationStage::Preparing) => Action::PrepareLive { vm: id },
            (true, MigrationStage::Switching) => Action::SwitchLive {
                vm: id,
                from: from.clone(),
                generation,
            },
            _ => continue,
        });
    }
}

/// What a copy here of a VM not placed here is, beside a stray.
#[derive(Debug, PartialEq, Eq)]
enum Copy {
    /// The copy this host is making of a disk moving here, adopted before the switch is
    /// committed: the VM's disk once it is.
    Incoming,
    /// The copy a move left behind here: superseded by the one at the VM's new home.
    LeftBehind,
    /// Anything else.
    Stray,
}

fn which_copy(me: &str, s: &ObservedVm, compute: &Compute) -> Copy {
    let Some(vm) = compute
        .vms
        .get(&s.id)
        .map(|v| &v.value)
        .filter(|_| !s.foreign)
    else {
        return Copy::Stray;
    };
    let here = DiskHome {
        host: Some(me.to_owned()),
        generation: s.generation,
    };
    match &vm.migration {
        Some(m)
            if m.to == me && s.generation == vm.storage.moved_generation(vm.disk.generation) =>
        {
            Copy::Incoming
        }
        _ if vm.moved_from.as_ref() == Some(&here) && vm.disk.host.as_deref() != Some(me) => {
            Copy::LeftBehind
        }
        _ => Copy::Stray,
    }
}

/// Drift for what is here but not placed here (stale copies, foreign processes); a running
/// copy of a VM placed elsewhere is shut down. A copy a move left behind is archived, and
/// the copy being made of a disk moving here is left alone.
fn strays(
    me: &str,
    compute: &Compute,
    seen: &[ObservedVm],
    mine: &BTreeSet<&str>,
    actions: &mut Vec<Action>,
    drift: &mut Vec<Drift>,
) {
    for s in seen {
        if !s.foreign && mine.contains(s.id.as_str()) {
            continue;
        }
        match which_copy(me, s, compute) {
            Copy::Incoming => continue,
            // A live move's source QEMU (held, paused) is stopped first: the archive does.
            Copy::LeftBehind if s.pid.is_none() || s.held => {
                actions.push(Action::Archive { vm: s.id.clone() });
                continue;
            }
            _ => {}
        }
        // The handle of a disk on RBD that another worker took over holds no data (the
        // disk is in Ceph): once its QEMU is gone it is archived unasked.
        let rbd_elsewhere = compute.vms.get(&s.id).is_some_and(|vm| {
            !vm.value.storage.is_local() && vm.value.disk.host.as_deref() != Some(me)
        });
        if rbd_elsewhere && !s.foreign && s.pid.is_none() {
            actions.push(Action::Archive { vm: s.id.clone() });
            continue;
        }
        let (kind, detail, fix) = stale_copy(s, compute);
        // A copy of a VM the cluster runs elsewhere (fenced and recreated while this host was
        // cut off, say) must not run on: it is shut down at once. Its disk stays here, for an
        // admin to archive; the VM's own copy is the one placed elsewhere.
        if kind == DriftKind::WrongHost && s.pid.is_some() {
            actions.push(Action::Shutdown { vm: s.id.clone() });
        }
        drift.push(Drift {
            id: format!("{me}/{}/{}", kind.as_str(), s.id),
            host: me.into(),
            vm: s.id.clone(),
            kind,
            detail,
            fix,
        });
    }
}

/// What a copy on this host of a VM not placed here is, and its fix. No fix removes data: a
/// stale copy is archived (shut down first if it runs); only an admin's explicit `--destroy`
/// of the files of a VM that no longer exists removes them.
fn stale_copy(s: &ObservedVm, compute: &Compute) -> (DriftKind, String, String) {
    const ARCHIVE: &str = "shut it down if it runs and move its files, disk included, to the archive (nothing is deleted)";
    let runs = if s.pid.is_some() {
        "runs here"
    } else {
        "has files here"
    };
    let vm = compute.vms.get(&s.id).map(|v| &v.value);
    match (s.foreign, vm) {
        (true, _) => (
            DriftKind::UnknownVm,
            format!(
                "a QEMU process hearth did not start uses the files of {}",
                s.id
            ),
            "stop that process (its files stay)".to_string(),
        ),
        (false, Some(vm)) => (
            DriftKind::WrongHost,
            format!(
                "{} ({}) {runs} with a disk of generation {}, but it is placed on {}{}: a stale copy",
                vm.request.name,
                s.id,
                s.generation,
                vm.host.as_deref().unwrap_or("no host"),
                match &vm.disk.host {
                    Some(home) => format!(
                        " with its disk on {home} (generation {})",
                        vm.disk.generation
                    ),
                    None => String::new(),
                }
            ),
            ARCHIVE.to_string(),
        ),
        (false, None) => (
            DriftKind::UnknownVm,
            format!("{} {runs}, but no VM by that id exists", s.id),
            format!("{ARCHIVE}; or, with --destroy, remove them"),
        ),
    }
}

/// The actions for the fixes an operator asked for on this host's drift entries. A fix whose
/// entry is gone is done already.
fn fixes(
    me: &str,
    compute: &Compute,
    seen: &[ObservedVm],
    drift: &[Drift],
    actions: &mut Vec<Action>,
) {
    let prefix = format!("{me}/");
    for id in compute.fixes.keys().filter(|id| id.starts_with(&prefix)) {
        let Some(entry) = drift.iter().find(|d| &d.id == id) else {
            actions.push(Action::FixDone { id: id.clone() });
            continue;
        };
        let vm = entry.vm.clone();
        match entry.kind {
            DriftKind::CrashLoop => actions.push(Action::ResetCrashes { vm }),
            DriftKind::GuardAltered => actions.push(Action::AckGuard { vm }),
            DriftKind::WrongHost | DriftKind::UnknownVm => {
                let destroy = compute.destroy.contains(id) && !compute.vms.contains_key(&vm);
                let intruder = seen.iter().any(|s| s.id == vm && s.foreign);
                for s in seen.iter().filter(|s| s.id == vm) {
                    match (s.foreign, s.pid) {
                        (true, Some(pid)) => actions.push(Action::KillForeign {
                            vm: vm.clone(),
                            pid,
                        }),
                        // Files a process hearth did not start still uses stay where they
                        // are until that process is stopped.
                        (false, _) if intruder => {}
                        (false, _) if destroy => actions.push(Action::Delete { vm: vm.clone() }),
                        (false, _) => actions.push(Action::Archive { vm: vm.clone() }),
                        (true, None) => {}
                    }
                }
            }
            // Fixed in the desired state when asked; nothing to do here.
            DriftKind::IpConflict | DriftKind::MissingDisk => {}
        }
        actions.push(Action::FixDone { id: id.clone() });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hearth_types::compute::{Arch, Assigned, VmRequest};
    use hearth_types::desired::Versioned;

    pub(crate) fn vm(id: &str, host: &str, phase: Phase, power: Power) -> Versioned<Vm> {
        Versioned {
            version: 1,
            value: Vm {
                id: id.into(),
                request: VmRequest {
                    name: format!("name-{id}"),
                    owner: "alice".into(),
                    arch: Arch::X86_64,
                    vcpus: 1,
                    memory_mib: 256,
                    disk_gib: 1,
                    image: "tiny".into(),
                    ssh_keys: vec![],
                    pools: vec![],
                    io: IoLimits::default(),
                    power,
                    replicas: 1,
                },
                ips: vec![],
                host: Some(host.into()),
                deleting: false,
                phase,
                message: None,
                phase_since: 1,
                reboots_asked: 0,
                reboots_done: 0,
                disk: hearth_types::compute::DiskHome {
                    host: matches!(phase, Phase::Running | Phase::Stopped | Phase::Crashed)
                        .then(|| host.to_owned()),
                    generation: 1,
                },
                base: None,
                migration: None,
                moved_from: None,
                move_given_up: None,
                replica: None,
                adopt_replica: None,
                storage: Default::default(),
                rbd_clients: vec![],
            },
        }
    }

    fn seen(id: &str, pid: Option<u32>, disk: bool) -> ObservedVm {
        ObservedVm {
            guard_altered: false,
            id: id.into(),
            pid,
            disk_present: disk,
            generation: 1,
            foreign: false,
            held: false,
            mirroring: None,
        }
    }

    fn compute(vms: Vec<Versioned<Vm>>) -> Compute {
        let mut c = Compute::default();
        for v in vms {
            c.vms.insert(v.value.id.clone(), v);
        }
        c
    }

    #[test]
    fn a_placed_vm_is_created_and_started() {
        let c = compute(vec![vm("vm-1", "w1", Phase::Placed, Power::Running)]);
        let plan = reconcile("w1", &c, &[], &Memory::default());
        assert_eq!(
            plan.actions,
            [
                Action::Report {
                    vm: "vm-1".into(),
                    phase: Phase::Creating,
                    message: None
                },
                Action::Start { vm: "vm-1".into() }
            ]
        );
        assert!(plan.drift.is_empty());
        // Another host's VMs are not this host's business.
        assert!(
            reconcile("w2", &c, &[], &Memory::default())
                .actions
                .is_empty()
        );
    }

    #[test]
    fn a_vm_being_moved_is_stopped_and_never_started() {
        let mut moving = vm("vm-1", "w1", Phase::Running, Power::Running);
        moving.value.migration = Some(hearth_types::compute::Migration {
            to: "w2".into(),
            stage: hearth_types::compute::MigrationStage::Stopping,
            since: 9,
            done_bytes: 0,
            total_bytes: 0,
            live: false,
            listen: None,
        });
        let c = compute(vec![moving]);
        let running = [seen("vm-1", Some(42), true)];
        let plan = reconcile("w1", &c, &running, &Memory::default());
        assert!(
            plan.actions
                .contains(&Action::Shutdown { vm: "vm-1".into() }),
            "{:?}",
            plan.actions
        );
        let stopped = [seen("vm-1", None, true)];
        let plan = reconcile("w1", &c, &stopped, &Memory::default());
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::Start { .. })),
            "{:?}",
            plan.actions
        );
        // Stopped on its own disk: the source says so, and nothing else moves yet.
        let stop = Action::MoveStopped {
            vm: "vm-1".into(),
            generation: 1,
        };
        assert!(plan.actions.contains(&stop), "{:?}", plan.actions);
        let target = reconcile("w2", &c, &[], &Memory::default());
        assert_eq!(target, Plan::default(), "the target waits for the stop");
    }

    /// The target copies once the source's disk is at rest; its copy, adopted before the
    /// switch, is no stray; after the switch the source archives the copy left behind, and
    /// only that one.
    #[test]
    fn a_moved_disk_is_copied_by_the_target_and_archived_at_the_source() {
        let mut moving = vm("vm-1", "w1", Phase::Stopped, Power::Running);
        moving.value.migration = Some(hearth_types::compute::Migration {
            to: "w2".into(),
            stage: MigrationStage::Copying,
            since: 9,
            done_bytes: 0,
            total_bytes: 0,
            live: false,
            listen: None,
        });
        let c = compute(vec![moving.clone()]);
        let receive = Action::Receive {
            vm: "vm-1".into(),
            from: "w1".into(),
            generation: 1,
        };
        let plan = reconcile("w2", &c, &[], &Memory::default());
        assert_eq!(plan.actions, std::slice::from_ref(&receive));
        let mut adopted = seen("vm-1", None, true);
        adopted.generation = 2;
        let plan = reconcile("w2", &c, &[adopted.clone()], &Memory::default());
        assert_eq!(plan.actions, [receive]);
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
        let source = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert!(
            !source
                .actions
                .iter()
                .any(|a| matches!(a, Action::MoveStopped { .. } | Action::Start { .. })),
            "{:?}",
            source.actions
        );

        // Switched: placed on w2 at generation 2, moved from w1 at 1.
        let mut moved = moving;
        moved.value.migration = None;
        moved.value.host = Some("w2".into());
        moved.value.disk = DiskHome {
            host: Some("w2".into()),
            generation: 2,
        };
        moved.value.moved_from = Some(DiskHome {
            host: Some("w1".into()),
            generation: 1,
        });
        let c = compute(vec![moved]);
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert_eq!(plan.actions, [Action::Archive { vm: "vm-1".into() }]);
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
        // Another generation, or a copy that runs, is a stray as before.
        let mut older = seen("vm-1", Some(7), true);
        let plan = reconcile("w1", &c, &[older.clone()], &Memory::default());
        assert_eq!(plan.actions, [Action::Shutdown { vm: "vm-1".into() }]);
        // The paused QEMU a live move left behind is archived (stopped first), no drift.
        let paused = ObservedVm {
            guard_altered: false,
            held: true,
            ..older.clone()
        };
        let plan = reconcile("w1", &c, &[paused], &Memory::default());
        assert_eq!(plan.actions, [Action::Archive { vm: "vm-1".into() }]);
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
        older.pid = None;
        older.generation = 0;
        let plan = reconcile("w1", &c, &[older], &Memory::default());
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.drift[0].kind, DriftKind::WrongHost);
        let plan = reconcile("w2", &c, &[adopted], &Memory::default());
        assert!(starts(&plan), "{:?}", plan.actions);
    }

    /// A live move: the VM runs on at its source while the target prepares and the source
    /// sends; at the switch nothing starts or stops it anywhere; a QEMU a move left its mark
    /// on is released once the move is over.
    #[test]
    fn a_live_move_keeps_the_vm_running_until_the_switch() {
        let mut moving = vm("vm-1", "w1", Phase::Running, Power::Running);
        let migration = |stage| hearth_types::compute::Migration {
            to: "w2".into(),
            stage,
            since: 9,
            done_bytes: 0,
            total_bytes: 0,
            live: true,
            listen: None,
        };
        let running = [seen("vm-1", Some(7), true)];
        let memory = Memory::default();
        moving.value.migration = Some(migration(MigrationStage::Preparing));
        let c = compute(vec![moving.clone()]);
        let source = reconcile("w1", &c, &running, &memory);
        assert!(
            source
                .actions
                .iter()
                .all(|a| !matches!(a, Action::Shutdown { .. } | Action::SendLive { .. })),
            "{:?}",
            source.actions
        );
        assert_eq!(
            reconcile("w2", &c, &[], &memory).actions,
            [Action::PrepareLive { vm: "vm-1".into() }]
        );

        moving.value.migration = Some(migration(MigrationStage::Mirroring));
        let c = compute(vec![moving.clone()]);
        let source = reconcile("w1", &c, &running, &memory);
        assert!(
            source
                .actions
                .contains(&Action::SendLive { vm: "vm-1".into() })
        );
        assert!(reconcile("w2", &c, &[], &memory).actions.is_empty());

        // At the switch the source's QEMU is paused: nothing touches it, nothing starts it
        // (even if it died), and the target switches.
        moving.value.migration = Some(migration(MigrationStage::Switching));
        let c = compute(vec![moving.clone()]);
        assert!(reconcile("w1", &c, &running, &memory).actions.is_empty());
        let dead = [seen("vm-1", None, true)];
        assert!(reconcile("w1", &c, &dead, &memory).actions.is_empty());
        assert_eq!(
            reconcile("w2", &c, &[], &memory).actions,
            [Action::SwitchLive {
                vm: "vm-1".into(),
                from: "w1".into(),
                generation: 1
            }]
        );

        // Given up: the held QEMU at the source is released; one not held is left alone.
        moving.value.migration = None;
        let c = compute(vec![moving]);
        let held = [ObservedVm {
            guard_altered: false,
            held: true,
            ..running[0].clone()
        }];
        let plan = reconcile("w1", &c, &held, &memory);
        assert!(
            plan.actions
                .contains(&Action::Release { vm: "vm-1".into() })
        );
        let plan = reconcile("w1", &c, &running, &memory);
        assert!(
            !plan
                .actions
                .contains(&Action::Release { vm: "vm-1".into() })
        );
    }

    #[test]
    fn a_dead_qemu_is_restarted_until_it_crash_loops() {
        let c = compute(vec![vm("vm-1", "w1", Phase::Running, Power::Running)]);
        let seen = [seen("vm-1", None, true)];
        let mut memory = Memory::default();
        let plan = reconcile("w1", &c, &seen, &memory);
        assert_eq!(
            plan.actions,
            [
                Action::Report {
                    vm: "vm-1".into(),
                    phase: Phase::Creating,
                    message: Some("QEMU was not running; starting it again".into())
                },
                Action::Start { vm: "vm-1".into() }
            ],
            "the phase stops claiming `running` at once"
        );
        memory.recent_crashes.insert("vm-1".into(), CRASH_LIMIT);
        let plan = reconcile("w1", &c, &seen, &memory);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::Start { .. }))
        );
        assert_eq!(plan.drift[0].kind, DriftKind::CrashLoop);
    }

    fn starts(plan: &Plan) -> bool {
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Start { .. }))
    }

    #[test]
    fn a_missing_disk_is_lost_not_a_fresh_disk() {
        for power in [Power::Running, Power::Stopped] {
            let c = compute(vec![vm("vm-1", "w1", Phase::Running, power)]);
            let plan = reconcile("w1", &c, &[], &Memory::default());
            assert!(!starts(&plan), "{power:?}: {:?}", plan.actions);
            assert_eq!(plan.drift[0].kind, DriftKind::MissingDisk);
            assert!(
                plan.drift[0].fix.contains("--empty-disk"),
                "{:?}",
                plan.drift
            );
            assert!(
                plan.actions.iter().any(|a| matches!(
                    a,
                    Action::Report {
                        phase: Phase::Lost,
                        ..
                    }
                )),
                "{:?}",
                plan.actions
            );
        }
    }

    #[test]
    fn a_vm_starts_only_on_its_own_disk() {
        let mut v = vm("vm-1", "w1", Phase::Stopped, Power::Running);
        // Its home is another host: nothing starts here, whatever files are here.
        v.value.disk.host = Some("w2".into());
        let c = compute(vec![v.clone()]);
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert!(!starts(&plan), "{:?}", plan.actions);
        assert_eq!(plan.drift[0].kind, DriftKind::MissingDisk);
        // Its home is here but the disk here is of another generation.
        v.value.disk.host = Some("w1".into());
        v.value.disk.generation = 2;
        let c = compute(vec![v.clone()]);
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert!(!starts(&plan), "{:?}", plan.actions);
        // Its own disk: it starts.
        v.value.disk.generation = 1;
        let c = compute(vec![v]);
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert!(starts(&plan), "{:?}", plan.actions);
    }

    #[test]
    fn a_recreated_vm_archives_its_old_disk_before_a_new_one() {
        // Recreated: no home, generation 2; the old copy (generation 1) is still here.
        let mut v = vm("vm-1", "w1", Phase::Placed, Power::Running);
        v.value.disk.host = None;
        v.value.disk.generation = 2;
        let c = compute(vec![v]);
        let plan = reconcile("w1", &c, &[seen("vm-1", Some(3), true)], &Memory::default());
        assert!(
            plan.actions
                .contains(&Action::Shutdown { vm: "vm-1".into() }),
            "it ran on the old disk: stopped first: {:?}",
            plan.actions
        );
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert!(
            plan.actions
                .contains(&Action::Archive { vm: "vm-1".into() })
                && !starts(&plan),
            "{:?}",
            plan.actions
        );
        // Once the old copy is archived, the new disk is made.
        let plan = reconcile("w1", &c, &[], &Memory::default());
        assert!(starts(&plan), "{:?}", plan.actions);
    }

    #[test]
    fn only_an_explicit_destroy_of_a_gone_vms_files_deletes() {
        let mut c = compute(vec![vm("vm-2", "w2", Phase::Running, Power::Running)]);
        let seen = [seen("vm-2", None, true), seen("vm-8", None, true)];
        let plan = reconcile("w1", &c, &seen, &Memory::default());
        let ids: Vec<_> = plan.drift.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["w1/unknown-vm/vm-8", "w1/wrong-host/vm-2"]);
        for id in &ids {
            c.fixes.insert(id.clone(), 9);
            c.destroy.insert(id.clone());
        }
        let plan = reconcile("w1", &c, &seen, &Memory::default());
        assert!(
            plan.actions.contains(&Action::Delete { vm: "vm-8".into() }),
            "{:?}",
            plan.actions
        );
        assert!(
            plan.actions
                .contains(&Action::Archive { vm: "vm-2".into() }),
            "a copy of a VM that exists is never destroyed: {:?}",
            plan.actions
        );
    }

    #[test]
    fn altered_tap_rules_are_put_back_and_listed_until_acknowledged() {
        let c = compute(vec![vm("vm-1", "w1", Phase::Running, Power::Running)]);
        let mut altered = seen("vm-1", Some(42), true);
        altered.guard_altered = true;
        let mut memory = Memory::default();
        memory.applied_io.insert("vm-1".into(), IoLimits::default());
        let plan = reconcile("w1", &c, &[altered], &memory);
        assert_eq!(plan.actions, [Action::Guard { vm: "vm-1".into() }]);
        assert!(plan.drift.is_empty(), "no repair made yet");
        // Put back once: listed, and no new repair while they hold.
        memory.guard_repairs.insert("vm-1".into(), 1);
        let intact = seen("vm-1", Some(42), true);
        let plan = reconcile("w1", &c, std::slice::from_ref(&intact), &memory);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.drift.len(), 1);
        assert_eq!(plan.drift[0].kind, DriftKind::GuardAltered);
        assert!(plan.drift[0].detail.contains("1 time"), "{:?}", plan.drift);
        // A stopped VM's rules are not looked after.
        let stopped = seen("vm-1", None, true);
        let plan = reconcile("w1", &c, &[stopped], &Memory::default());
        assert!(!plan.actions.contains(&Action::Guard { vm: "vm-1".into() }));
        // The operator's fix acknowledges it.
        let mut c = c;
        c.fixes.insert(plan_id("w1", "vm-1"), 9);
        let plan = reconcile("w1", &c, &[intact], &memory);
        assert!(
            plan.actions
                .contains(&Action::AckGuard { vm: "vm-1".into() })
        );
    }

    fn plan_id(host: &str, vm: &str) -> String {
        format!("{host}/{}/{vm}", DriftKind::GuardAltered.as_str())
    }

    #[test]
    fn running_matches_power_and_io() {
        let mut v = vm("vm-1", "w1", Phase::Running, Power::Running);
        v.value.request.io.iops = Some(100);
        let c = compute(vec![v]);
        let seen = [seen("vm-1", Some(42), true)];
        let plan = reconcile("w1", &c, &seen, &Memory::default());
        assert_eq!(
            plan.actions,
            [Action::SetIo {
                vm: "vm-1".into(),
                io: IoLimits {
                    iops: Some(100),
                    bytes_per_sec: None,
                    ..IoLimits::default()
                }
            }]
        );
        let mut memory = Memory::default();
        memory.applied_io.insert(
            "vm-1".into(),
            IoLimits {
                iops: Some(100),
                bytes_per_sec: None,
                ..IoLimits::default()
            },
        );
        assert!(reconcile("w1", &c, &seen, &memory).actions.is_empty());
        let c = compute(vec![vm("vm-1", "w1", Phase::Running, Power::Stopped)]);
        let plan = reconcile("w1", &c, &seen, &memory);
        assert!(
            plan.actions
                .contains(&Action::Shutdown { vm: "vm-1".into() })
        );
    }

    #[test]
    fn deletion_removes_then_forgets() {
        let mut v = vm("vm-1", "w1", Phase::Deleting, Power::Running);
        v.value.deleting = true;
        let c = compute(vec![v]);
        let plan = reconcile("w1", &c, &[seen("vm-1", Some(1), true)], &Memory::default());
        assert_eq!(plan.actions, [Action::Delete { vm: "vm-1".into() }]);
        let plan = reconcile("w1", &c, &[], &Memory::default());
        assert_eq!(plan.actions, [Action::Forget { vm: "vm-1".into() }]);
    }

    /// A disk on RBD is in Ceph: its home deletes it (the image) with no handle here, as a
    /// worker that took the disk over and never started the VM has none.
    #[test]
    fn deleting_a_vm_on_rbd_removes_its_image_at_its_home_only() {
        let mut v = vm("vm-1", "w1", Phase::Deleting, Power::Running);
        v.value.deleting = true;
        v.value.storage = hearth_types::compute::Storage::Rbd { pool: "rbd".into() };
        v.value.disk.host = Some("w1".into());
        let c = compute(vec![v.clone()]);
        let plan = reconcile("w1", &c, &[], &Memory::default());
        assert_eq!(plan.actions, [Action::Delete { vm: "vm-1".into() }]);
        v.value.disk.host = Some("w2".into());
        let c = compute(vec![v]);
        let plan = reconcile("w1", &c, &[], &Memory::default());
        assert_eq!(plan.actions, [Action::Forget { vm: "vm-1".into() }]);
    }

    #[test]
    fn what_is_not_placed_here_is_drift() {
        let c = compute(vec![vm("vm-2", "w2", Phase::Running, Power::Running)]);
        let mut foreign = seen("vm-9", Some(7), false);
        foreign.foreign = true;
        let seen = [
            seen("vm-2", Some(5), true),
            seen("vm-3", Some(6), true),
            foreign,
        ];
        let plan = reconcile("w1", &c, &seen, &Memory::default());
        assert_eq!(
            plan.actions,
            [Action::Shutdown { vm: "vm-2".into() }],
            "a running copy of a VM placed elsewhere is shut down (its disk stays); nothing else is touched"
        );
        let kinds: Vec<_> = plan.drift.iter().map(|d| (d.vm.as_str(), d.kind)).collect();
        assert!(kinds.contains(&("vm-2", DriftKind::WrongHost)));
        assert!(kinds.contains(&("vm-3", DriftKind::UnknownVm)));
        assert!(kinds.contains(&("vm-9", DriftKind::UnknownVm)));
    }

    #[test]
    fn two_vms_with_one_address_is_drift() {
        let mut a = vm("vm-1", "w1", Phase::Running, Power::Running);
        let mut b = vm("vm-2", "w1", Phase::Running, Power::Running);
        let ip = Assigned {
            pool: "lan".into(),
            address: "192.0.2.5".parse().unwrap(),
            prefix: 24,
            routed: false,
        };
        a.value.ips.push(ip.clone());
        b.value.ips.push(ip);
        let c = compute(vec![a, b]);
        let seen = [seen("vm-1", Some(1), true), seen("vm-2", Some(2), true)];
        let mut memory = Memory::default();
        memory.applied_io.insert("vm-1".into(), IoLimits::default());
        memory.applied_io.insert("vm-2".into(), IoLimits::default());
        let plan = reconcile("w1", &c, &seen, &memory);
        assert_eq!(plan.drift.len(), 1);
        assert_eq!(plan.drift[0].kind, DriftKind::IpConflict);
        assert_eq!(plan.drift[0].vm, "vm-2");
    }

    #[test]
    fn a_reboot_request_reboots_a_running_vm_and_is_acknowledged_otherwise() {
        let mut a = vm("vm-1", "w1", Phase::Running, Power::Running);
        a.value.reboots_asked = 2;
        a.value.reboots_done = 1;
        let c = compute(vec![a.clone()]);
        let plan = reconcile("w1", &c, &[seen("vm-1", Some(4), true)], &Memory::default());
        assert_eq!(
            plan.actions,
            [Action::Reboot {
                vm: "vm-1".into(),
                done: 2
            }]
        );
        a.value.request.power = Power::Stopped;
        let c = compute(vec![a]);
        let plan = reconcile("w1", &c, &[seen("vm-1", None, true)], &Memory::default());
        assert_eq!(
            plan.actions,
            [Action::AckReboot {
                vm: "vm-1".into(),
                done: 2
            }]
        );
    }

    /// Review finding: the reboot task records the reboot through Raft, then leaves `busy`;
    /// a pass on a local copy that has not applied the record yet rebooted the VM again.
    #[test]
    fn a_reboot_done_here_is_not_done_again_before_the_cluster_records_it() {
        let mut a = vm("vm-1", "w1", Phase::Running, Power::Running);
        a.value.reboots_asked = 1;
        let c = compute(vec![a]);
        let mut memory = Memory::default();
        memory.reboots_done.insert("vm-1".into(), 1);
        memory.applied_io.insert("vm-1".into(), IoLimits::default());
        let plan = reconcile("w1", &c, &[seen("vm-1", Some(4), true)], &memory);
        assert_eq!(
            plan.actions,
            [Action::AckReboot {
                vm: "vm-1".into(),
                done: 1
            }]
        );
    }

    #[test]
    fn asked_fixes_become_host_actions_then_done() {
        let mut looping = vm("vm-1", "w1", Phase::Crashed, Power::Running);
        looping.value.message = Some("QEMU died 3 times in a row; not restarting".into());
        let mut c = compute(vec![looping]);
        let mut memory = Memory::default();
        memory.recent_crashes.insert("vm-1".into(), CRASH_LIMIT);
        let mut foreign = seen("vm-9", Some(77), false);
        foreign.foreign = true;
        let seen = [seen("vm-1", None, true), foreign, seen("vm-8", None, true)];
        let plan = reconcile("w1", &c, &seen, &memory);
        assert_eq!(plan.drift.len(), 3, "{:?}", plan.drift);
        for d in &plan.drift {
            c.fixes.insert(d.id.clone(), 9);
        }
        // Another host's fix, and a fix whose entry is gone.
        c.fixes.insert("w2/crash-loop/vm-5".into(), 9);
        c.fixes.insert("w1/unknown-vm/vm-6".into(), 9);
        let plan = reconcile("w1", &c, &seen, &memory);
        let fixing: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::Report { .. }))
            .collect();
        assert_eq!(
            fixing,
            [
                &Action::ResetCrashes { vm: "vm-1".into() },
                &Action::FixDone {
                    id: "w1/crash-loop/vm-1".into()
                },
                &Action::FixDone {
                    id: "w1/unknown-vm/vm-6".into()
                },
                // Files of a VM that no longer exists: archived, never deleted unasked.
                &Action::Archive { vm: "vm-8".into() },
                &Action::FixDone {
                    id: "w1/unknown-vm/vm-8".into()
                },
                &Action::KillForeign {
                    vm: "vm-9".into(),
                    pid: 77
                },
                &Action::FixDone {
                    id: "w1/unknown-vm/vm-9".into()
                },
            ]
        );
    }

    #[test]
    fn a_stopped_vm_does_not_conflict() {
        let mut a = vm("vm-1", "w1", Phase::Running, Power::Running);
        let mut b = vm("vm-2", "w1", Phase::Stopped, Power::Stopped);
        let ip = Assigned {
            pool: "lan".into(),
            address: "192.0.2.5".parse().unwrap(),
            prefix: 24,
            routed: false,
        };
        a.value.ips.push(ip.clone());
        b.value.ips.push(ip);
        let c = compute(vec![a, b]);
        let seen = [seen("vm-1", Some(1), true), seen("vm-2", None, true)];
        let plan = reconcile("w1", &c, &seen, &Memory::default());
        assert!(plan.drift.is_empty(), "{:?}", plan.drift);
    }

    #[test]
    fn a_disk_here_without_a_home_is_claimed_whatever_the_vm_does() {
        // Made before the home was recorded, or by a hearth that kept none (generation 0).
        for (phase, pid) in [(Phase::Running, Some(4)), (Phase::Stopped, None)] {
            let mut v = vm("vm-1", "w1", phase, Power::Running);
            v.value.disk.host = None;
            let c = compute(vec![v]);
            let plan = reconcile("w1", &c, &[seen("vm-1", pid, true)], &Memory::default());
            assert!(
                plan.actions
                    .contains(&Action::ClaimDisk { vm: "vm-1".into() }),
                "{phase:?}: {:?}",
                plan.actions
            );
        }
    }

    #[test]
    fn an_unreadable_generation_file_loses_that_vm_only() {
        let mut a = seen("vm-1", None, true);
        a.generation = hearth_qemu::disk::UNREADABLE_GENERATION;
        let c = compute(vec![
            vm("vm-1", "w1", Phase::Stopped, Power::Running),
            vm("vm-2", "w1", Phase::Stopped, Power::Running),
        ]);
        let plan = reconcile("w1", &c, &[a, seen("vm-2", None, true)], &Memory::default());
        assert_eq!(plan.drift.len(), 1, "{:?}", plan.drift);
        assert!(
            plan.drift[0].detail.contains("unreadable"),
            "{:?}",
            plan.drift
        );
        assert!(plan.actions.contains(&Action::Start { vm: "vm-2".into() }));
        assert!(!plan.actions.contains(&Action::Start { vm: "vm-1".into() }));
    }
}
