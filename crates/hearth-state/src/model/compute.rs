//! Compute commands (images, IP pools, VMs, hosts, drift) and their pure `apply`: static IP
//! allocation happens here, in log order, so an address can never go to two VMs.

use hearth_types::compute::{
    Assigned, Capacity, Compute, DiskHome, Drift, DriftKind, Evacuation, Image, IoLimits, IpPool,
    Listening, Phase, Power, ReplicaState, Storage, Vm, VmRequest,
};
use hearth_types::desired::Versioned;
use hearth_types::shared_map::OrdMapExt;
use serde::{Deserialize, Serialize};

use super::cas::{Expect, Outcome, put, remove};
use super::{migration, rbd, replicas};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ComputeCommand {
    PutImage {
        image: Image,
        expect: Expect,
    },
    RemoveImage {
        name: String,
        expect: Expect,
    },
    PutPool {
        pool: IpPool,
        expect: Expect,
    },
    RemovePool {
        name: String,
        expect: Expect,
    },
    /// Creates a VM: checks the image, allocates one address per pool, assigns the id.
    CreateVm {
        request: VmRequest,
    },
    SetPower {
        vm: String,
        power: Power,
        expect: Expect,
    },
    SetIo {
        vm: String,
        io: IoLimits,
        expect: Expect,
    },
    /// Gives a VM to another account (an admin's decision; the new owner's quota applies).
    SetOwner {
        vm: String,
        owner: String,
        expect: Expect,
    },
    /// Unplaced VMs go at once; placed ones are marked, and go when their host confirms
    /// that the disk is removed (`Forget`), or when the host is fenced or left.
    DeleteVm {
        vm: String,
        expect: Expect,
    },
    /// The leader chose a host (or, with `None`, took the VM off a host it cannot run on).
    Place {
        vm: String,
        host: Option<String>,
        /// The host the leader saw; the placement fails if it changed meanwhile.
        from: Option<String>,
    },
    /// A host reports a VM's phase.
    Report {
        vm: String,
        host: String,
        phase: Phase,
        message: Option<String>,
    },
    /// A host removed a deleted VM's disk: forget the VM, freeing its addresses.
    Forget {
        vm: String,
        host: String,
    },
    /// A worker host reports its capacity.
    Host {
        host: String,
        capacity: Capacity,
    },
    /// An operator confirmed the host is off (or takes that back).
    Fence {
        host: String,
        fenced: bool,
    },
    /// The evacuation of a host: asked for (`Moving`), over, or stopped; `None` forgets it.
    SetEvacuation {
        host: String,
        evacuation: Option<Evacuation>,
    },
    /// A host's current drift entries, replacing what it reported before.
    Drift {
        host: String,
        drift: Vec<Drift>,
    },
    /// Ask for a reboot of a running VM (its host shuts it down and starts it again).
    Reboot {
        vm: String,
        expect: Expect,
    },
    /// The host rebooted the VM up to the `done`th request.
    Rebooted {
        vm: String,
        host: String,
        done: u64,
    },
    /// An operator applies a drift entry's proposed fix. Fixes of the desired state are
    /// applied here; fixes on a host are recorded for that host to carry out. With
    /// `destroy`, the fix of an `unknown-vm` entry for files of a VM that no longer exists
    /// removes them instead of archiving them (refused for any other entry).
    Fix {
        id: String,
        #[serde(default)]
        destroy: bool,
    },
    /// The host carried out (or gave up on) the fix of drift entry `id`.
    FixDone {
        id: String,
        host: String,
    },
    /// A host records that it holds the VM's disk of `generation`, before QEMU first runs on
    /// it. Refused unless the VM is placed on that host at that generation and has no other
    /// home: so the desired state always knows where a disk that ever ran is.
    ClaimDisk {
        vm: String,
        host: String,
        generation: u64,
    },
    /// An admin gives up a lost disk: the VM starts over on an empty disk from its image (a
    /// new generation, so any copy of the old disk is stale and never used). Allowed only
    /// when the old disk cannot be in use: the VM's host is fenced, or reported the disk
    /// missing, or the VM never had one.
    Recreate {
        vm: String,
        expect: Expect,
    },
    /// Move a VM and its disk to host `to` (cold: stopped, copied, started there; live:
    /// mirrored and moved while it runs). Refused unless the VM runs from its disk's home, is
    /// not being deleted or moved, and `to` is another known host that is not fenced.
    Migrate {
        vm: String,
        to: String,
        #[serde(default)]
        live: bool,
        #[serde(default)]
        expect: Expect,
    },
    /// Live: the target's paused QEMU waits for move `since` of the VM at `listen`.
    MigrationListening {
        vm: String,
        to: String,
        since: u64,
        listen: Listening,
    },
    /// Live: the source's QEMU finished move `since` (disk mirrored, RAM moved) and is
    /// paused; the target may switch.
    MigrationCompleted {
        vm: String,
        host: String,
        since: u64,
    },
    /// The source host stopped the VM: its disk of `generation` is at rest for the copy.
    MigrationStopped {
        vm: String,
        host: String,
        generation: u64,
    },
    /// The copying host's progress: the target's for a cold move, the source's for a live one.
    MigrationProgress {
        vm: String,
        host: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// The target holds a whole copy of the disk of `generation` (as `generation + 1`): the
    /// VM and its disk home switch to it at once. Refused unless the home is still `from` at
    /// `generation` and a copy to `to` is under way.
    MoveDisk {
        vm: String,
        from: String,
        to: String,
        generation: u64,
    },
    /// Give a move up (the target failed, or an admin asked): the VM runs at its source.
    AbortMigration {
        vm: String,
        why: String,
    },
    /// The leader places a replica of the VM's disk on `host` (`docs/replicas.md`); its
    /// `since` is this entry's index. Refused unless the VM asks for two copies, has a disk
    /// home other than `host`, is not moving or being deleted, and has no replica.
    PlaceReplica {
        vm: String,
        host: String,
    },
    /// The leader drops replica `since`: its host removes the copy.
    DropReplica {
        vm: String,
        since: u64,
        why: String,
    },
    /// The replica host exports the empty copy of replica `since` at `nbd` (`IP:PORT`).
    ReplicaListening {
        vm: String,
        host: String,
        since: u64,
        nbd: String,
    },
    /// A worker renews its lease: its `Host.lease` becomes this entry's index.
    RenewLease {
        host: String,
    },
    /// The replica host restarts a VM whose home stopped renewing its lease (last renewed
    /// at index `lease`) from replica `since`: the VM and its disk's home move to `to` at the
    /// next generation, in one step. Refused unless the home is still `from` with no renewal
    /// since `lease`, and replica `since` on `to` is in sync.
    Failover {
        vm: String,
        from: String,
        to: String,
        since: u64,
        lease: u64,
        /// Unix milliseconds on the host that asked, for the `vm-failover` event.
        #[serde(default)]
        at_ms: u64,
    },
    /// The home of an RBD disk records the Ceph client addresses its QEMU runs with, so
    /// that another worker can fence them (`docs/rbd.md`).
    RbdClients {
        vm: String,
        host: String,
        clients: Vec<String>,
    },
    /// Worker `to` takes over the RBD disk of a VM whose home `from` has not renewed its
    /// lease since index `lease` (or is fenced), after putting `fenced` on Ceph's blocklist:
    /// the VM and its disk's home move to `to`, the disk stays the same image. Refused unless
    /// `fenced` holds every client recorded for the VM.
    TakeOver {
        vm: String,
        from: String,
        to: String,
        lease: u64,
        fenced: Vec<String>,
        /// Unix milliseconds on the host that asked, for the `vm-failover` event.
        #[serde(default)]
        at_ms: u64,
    },
    /// The disk's home reports the mirror into replica `since`.
    ReplicaProgress {
        vm: String,
        host: String,
        since: u64,
        state: ReplicaState,
        done_bytes: u64,
        total_bytes: u64,
        #[serde(default)]
        message: Option<String>,
        /// Unix milliseconds on the reporting host, for `replica-*` events.
        #[serde(default)]
        at_ms: u64,
    },
}

impl ComputeCommand {
    /// The state level that introduced what this command carries (see
    /// `model::STATE_LEVEL`): 3 for network limits, pools that delegate networks and the
    /// `guard-altered` drift kind.
    pub fn level(&self) -> u32 {
        use ComputeCommand as C;
        match self {
            C::SetIo { io, .. } if io.limits_network() => 3,
            C::CreateVm { request } if request.io.limits_network() => 3,
            // Disks on RBD.
            C::RbdClients { .. } | C::TakeOver { .. } => 10,
            C::PutPool { pool, .. } if pool.storage.is_some() => 10,
            C::Host { capacity, .. } if capacity.rbd => 10,
            C::PutPool { pool, .. } if pool.delegate.is_some() => 3,
            C::Drift { drift, .. } if drift.iter().any(|d| d.kind == DriftKind::GuardAltered) => 3,
            _ => 1,
        }
    }

    pub fn object_key(&self) -> String {
        match self {
            ComputeCommand::PutImage { image, .. } => format!("image/{}", image.name),
            ComputeCommand::RemoveImage { name, .. } => format!("image/{name}"),
            ComputeCommand::PutPool { pool, .. } => format!("pool/{}", pool.name),
            ComputeCommand::RemovePool { name, .. } => format!("pool/{name}"),
            // The id comes from the log index: one creation per entry.
            ComputeCommand::CreateVm { .. } => "vm-create".into(),
            ComputeCommand::SetPower { vm, .. }
            | ComputeCommand::SetIo { vm, .. }
            | ComputeCommand::SetOwner { vm, .. }
            | ComputeCommand::DeleteVm { vm, .. }
            | ComputeCommand::Place { vm, .. }
            | ComputeCommand::Report { vm, .. }
            | ComputeCommand::Forget { vm, .. }
            | ComputeCommand::Reboot { vm, .. }
            | ComputeCommand::Rebooted { vm, .. }
            | ComputeCommand::ClaimDisk { vm, .. }
            | ComputeCommand::Recreate { vm, .. }
            | ComputeCommand::Migrate { vm, .. }
            | ComputeCommand::MigrationStopped { vm, .. }
            | ComputeCommand::MigrationListening { vm, .. }
            | ComputeCommand::MigrationProgress { vm, .. }
            | ComputeCommand::MigrationCompleted { vm, .. }
            | ComputeCommand::MoveDisk { vm, .. }
            | ComputeCommand::AbortMigration { vm, .. }
            | ComputeCommand::PlaceReplica { vm, .. }
            | ComputeCommand::DropReplica { vm, .. }
            | ComputeCommand::ReplicaListening { vm, .. }
            | ComputeCommand::Failover { vm, .. }
            | ComputeCommand::RbdClients { vm, .. }
            | ComputeCommand::TakeOver { vm, .. }
            | ComputeCommand::ReplicaProgress { vm, .. } => format!("vm/{vm}"),
            ComputeCommand::Fix { id, .. } | ComputeCommand::FixDone { id, .. } => {
                format!("fix/{id}")
            }
            ComputeCommand::Host { host, .. }
            | ComputeCommand::RenewLease { host }
            | ComputeCommand::Fence { host, .. }
            | ComputeCommand::SetEvacuation { host, .. } => {
                format!("host/{host}")
            }
            ComputeCommand::Drift { host, .. } => format!("drift/{host}"),
        }
    }
}

pub(super) fn apply(compute: &mut Compute, command: &ComputeCommand, index: u64) -> Outcome {
    use ComputeCommand as C;
    match command {
        C::PutImage { image, expect } => put_image(compute, image, *expect, index),
        C::RemoveImage { name, expect } => remove_image(compute, name, *expect),
        C::PutPool { pool, expect } => put_pool(compute, pool, *expect, index),
        C::RemovePool { name, expect } => remove_pool(compute, name, *expect),
        C::CreateVm { request } => create_vm(compute, request, None, index),
        C::SetPower { vm, power, expect } => {
            update_vm(compute, vm, *expect, index, |vm| vm.request.power = *power)
        }
        C::SetIo { vm, io, expect } => set_io(compute, vm, io, *expect, index),
        C::SetOwner { vm, owner, expect } => set_owner(compute, vm, owner, *expect, index),
        C::DeleteVm { vm, expect } => delete_vm(compute, vm, *expect, index),
        C::Place { vm, host, from } => place(compute, vm, host, from, index),
        C::Report {
            vm,
            host,
            phase,
            message,
        } => report(compute, vm, host, *phase, message, index),
        C::Forget { vm, host } => forget(compute, vm, host),
        C::Host { host, capacity } => {
            let entry = compute.hosts.entry(host.clone()).or_default();
            if entry.capacity == *capacity {
                return Outcome::Nothing;
            }
            entry.capacity = *capacity;
            Outcome::Applied { version: index }
        }
        C::Fence { host, fenced } => {
            compute.hosts.entry(host.clone()).or_default().fenced = *fenced;
            Outcome::Applied { version: index }
        }
        C::SetEvacuation { host, evacuation } => {
            set_evacuation(compute, host, evacuation.as_ref(), index)
        }
        C::Drift { host, drift } => host_drift(compute, host, drift, index),
        C::Reboot { vm, expect } => reboot(compute, vm, *expect, index),
        C::Rebooted { vm, host, done } => rebooted(compute, vm, host, *done),
        C::Fix { id, destroy } => fix(compute, id, *destroy, index),
        C::FixDone { id, host } => {
            if !id.starts_with(&format!("{host}/")) || compute.fixes.remove(id).is_none() {
                return Outcome::Nothing;
            }
            compute.destroy.remove(id);
            Outcome::Applied { version: index }
        }
        C::ClaimDisk {
            vm,
            host,
            generation,
        } => claim_disk(compute, vm, host, *generation),
        C::Recreate { vm, expect } => recreate(compute, vm, *expect, index),
        C::Migrate { .. }
        | C::MigrationStopped { .. }
        | C::MigrationListening { .. }
        | C::MigrationProgress { .. }
        | C::MigrationCompleted { .. }
        | C::MoveDisk { .. }
        | C::AbortMigration { .. } => migration::apply(compute, command, index),
        C::PlaceReplica { .. }
        | C::DropReplica { .. }
        | C::ReplicaListening { .. }
        | C::ReplicaProgress { .. }
        | C::RenewLease { .. }
        | C::Failover { .. } => replicas::apply(compute, command, index),
        C::RbdClients { .. } | C::TakeOver { .. } => rbd::apply(compute, command, index),
    }
}

fn set_evacuation(
    compute: &mut Compute,
    host: &str,
    evacuation: Option<&Evacuation>,
    index: u64,
) -> Outcome {
    match compute.hosts.get_mut(host) {
        Some(entry) if entry.evacuation.as_ref() == evacuation => Outcome::Nothing,
        Some(entry) => {
            entry.evacuation = evacuation.cloned();
            Outcome::Applied { version: index }
        }
        None => Outcome::NotFound,
    }
}

fn put_image(compute: &mut Compute, image: &Image, expect: Expect, index: u64) -> Outcome {
    if let Err(message) = image.validate() {
        return Outcome::Invalid { message };
    }
    // VMs of a state written before they kept their base keep the version they have.
    if let Some(old) = compute.images.get(&image.name).map(|i| i.value.clone())
        && old != *image
        && expect.holds(compute.images.get(&image.name).map(|i| i.version))
    {
        compute.vms.change_where(
            |_, vm| vm.value.base.is_none() && vm.value.request.image == image.name,
            |_, vm| vm.value.base = Some(old.clone()),
        );
    }
    put(
        &mut compute.images,
        image.name.clone(),
        image.clone(),
        expect,
        index,
    )
}

fn remove_image(compute: &mut Compute, name: &str, expect: Expect) -> Outcome {
    if let Some(vm) = compute
        .vms
        .values()
        .find(|vm| vm.value.request.image == name)
    {
        return Outcome::Invalid {
            message: format!("name: image {name} is used by VM {}", vm.value.request.name),
        };
    }
    remove(&mut compute.images, name, expect)
}

fn put_pool(compute: &mut Compute, pool: &IpPool, expect: Expect, index: u64) -> Outcome {
    if let Err(message) = pool.validate() {
        return Outcome::Invalid { message };
    }
    if let Some(old) = compute.pools.get(&pool.name)
        && old.value.cidr != pool.cidr
        && !compute.used_addresses(&pool.name).is_empty()
    {
        return Outcome::Invalid {
            message: "cidr: cannot change while VMs hold addresses from the pool".into(),
        };
    }
    put(
        &mut compute.pools,
        pool.name.clone(),
        pool.clone(),
        expect,
        index,
    )
}

fn remove_pool(compute: &mut Compute, name: &str, expect: Expect) -> Outcome {
    let used = compute.used_addresses(name);
    if !used.is_empty() {
        return Outcome::Invalid {
            message: format!("name: {} addresses of pool {name} are in use", used.len()),
        };
    }
    remove(&mut compute.pools, name, expect)
}

/// The leader's placement; a VM with a disk home goes nowhere else.
fn place(
    compute: &mut Compute,
    vm: &str,
    host: &Option<String>,
    from: &Option<String>,
    index: u64,
) -> Outcome {
    let Some(entry) = compute.vms.get_mut(vm) else {
        return Outcome::NotFound;
    };
    if entry.value.host != *from {
        return Outcome::Conflict {
            current: Some(entry.version),
        };
    }
    if let Some(home) = &entry.value.disk.host
        && host.as_ref() != Some(home)
    {
        return Outcome::Invalid {
            message: format!(
                "vm: the disk of {} is on {home}; it cannot start anywhere else",
                entry.value.request.name
            ),
        };
    }
    entry.value.host = host.clone();
    let phase = if host.is_some() {
        Phase::Placed
    } else {
        Phase::Pending
    };
    entry.value.set_phase(phase, None, index);
    Outcome::Applied {
        version: entry.version,
    }
}

/// A host reports a VM's phase; a report from a host the VM is no longer placed on is stale.
fn report(
    compute: &mut Compute,
    vm: &str,
    host: &str,
    phase: Phase,
    message: &Option<String>,
    index: u64,
) -> Outcome {
    let Some(entry) = compute.vms.get_mut(vm) else {
        return Outcome::NotFound;
    };
    if entry.value.host.as_deref() != Some(host) {
        return Outcome::Conflict {
            current: Some(entry.version),
        };
    }
    // A VM of a state written before disks had homes (generation 0) that runs on its host
    // has its disk there.
    let claims = phase == Phase::Running
        && entry.value.disk.host.is_none()
        && entry.value.disk.generation == 0;
    if claims {
        entry.value.disk.host = Some(host.to_owned());
    }
    if entry.value.phase == phase && entry.value.message == *message && !claims {
        return Outcome::Nothing;
    }
    entry.value.set_phase(phase, message.clone(), index);
    Outcome::Applied {
        version: entry.version,
    }
}

/// The host removed a deleted VM's disk: the VM and its addresses go.
fn forget(compute: &mut Compute, vm: &str, host: &str) -> Outcome {
    match compute.vms.get(vm) {
        None => Outcome::NotFound,
        Some(entry) if entry.value.deleting && entry.value.host.as_deref() == Some(host) => {
            compute.vms.remove(vm);
            Outcome::Removed
        }
        Some(entry) => Outcome::Conflict {
            current: Some(entry.version),
        },
    }
}

fn host_drift(compute: &mut Compute, host: &str, drift: &[Drift], index: u64) -> Outcome {
    let current = compute.drift.get(host).map(Vec::as_slice).unwrap_or(&[]);
    if current == drift {
        return Outcome::Nothing;
    }
    if drift.is_empty() {
        compute.drift.remove(host);
    } else {
        compute.drift.insert(host.to_owned(), drift.to_vec());
    }
    Outcome::Applied { version: index }
}

fn reboot(compute: &mut Compute, vm: &str, expect: Expect, index: u64) -> Outcome {
    if let Some(entry) = compute.vms.get(vm)
        && entry.value.request.power != Power::Running
    {
        return Outcome::Invalid {
            message: format!(
                "vm: {} is stopped; start it instead",
                entry.value.request.name
            ),
        };
    }
    update_vm(compute, vm, expect, index, |vm| {
        vm.reboots_asked = vm.reboots_asked.max(vm.reboots_done) + 1
    })
}

fn rebooted(compute: &mut Compute, vm: &str, host: &str, done: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(vm) else {
        return Outcome::NotFound;
    };
    if entry.value.host.as_deref() != Some(host) {
        return Outcome::Conflict {
            current: Some(entry.version),
        };
    }
    if entry.value.reboots_done >= done {
        return Outcome::Nothing;
    }
    entry.value.reboots_done = done;
    Outcome::Applied {
        version: entry.version,
    }
}

fn claim_disk(compute: &mut Compute, vm: &str, host: &str, generation: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(vm) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    // A fenced host is off as far as the cluster knows: nothing of it starts.
    let placed_here =
        vm.host.as_deref() == Some(host) && !compute.hosts.get(host).is_some_and(|h| h.fenced);
    match &vm.disk.host {
        _ if !placed_here || vm.deleting || vm.disk.generation != generation => Outcome::Conflict {
            current: Some(entry.version),
        },
        Some(home) if home == host => Outcome::Nothing,
        Some(_) => Outcome::Conflict {
            current: Some(entry.version),
        },
        None => {
            vm.disk.host = Some(host.to_owned());
            Outcome::Applied {
                version: entry.version,
            }
        }
    }
}

/// `hearth vm recreate NAME --empty-disk`: the old disk is given up, never reused.
fn recreate(compute: &mut Compute, key: &str, expect: Expect, index: u64) -> Outcome {
    let Some(entry) = compute.vms.get(key) else {
        return Outcome::NotFound;
    };
    let vm = &entry.value;
    let fenced = vm
        .host
        .as_ref()
        .is_some_and(|h| compute.hosts.get(h).is_some_and(|h| h.fenced));
    // Its host said the disk is missing (a host reports `lost` for nothing else).
    let missing = vm.phase == Phase::Lost;
    if vm.host.is_some() && !fenced && !missing {
        return Outcome::Invalid {
            message: format!(
                "vm: {} is on {}, which has not reported its disk missing; recreate gives up a lost disk only (if {} is off for good, fence it first)",
                vm.request.name,
                vm.host.as_deref().unwrap_or_default(),
                vm.host.as_deref().unwrap_or_default()
            ),
        };
    }
    let base = compute
        .images
        .get(&vm.request.image)
        .map(|image| image.value.clone());
    update_vm(compute, key, expect, index, |vm| {
        vm.disk = DiskHome {
            host: None,
            generation: vm.disk.generation + 1,
        };
        // A replica holds the given-up disk: its host archives it (never deletes it).
        vm.replica = None;
        if base.is_some() {
            vm.base = base;
        }
        if fenced {
            vm.host = None;
        }
        let phase = if vm.host.is_some() {
            Phase::Placed
        } else {
            Phase::Pending
        };
        vm.set_phase(phase, Some("recreated with an empty disk".into()), index);
    })
}

/// The proposed fix of a drift entry. Conflicts and missing disks are fixed in the desired
/// state; the rest is the host's to do.
fn fix(compute: &mut Compute, id: &str, destroy: bool, index: u64) -> Outcome {
    let Some(entry) = compute
        .drift
        .values()
        .flatten()
        .find(|d| d.id == id)
        .cloned()
    else {
        return Outcome::NotFound;
    };
    match entry.kind {
        DriftKind::IpConflict => {
            // Stop the newer holder of the address; the entry goes when the host sees it.
            update_vm(compute, &entry.vm, Expect::Any, index, |vm| {
                vm.request.power = Power::Stopped
            })
        }
        _ if destroy
            && (entry.kind != DriftKind::UnknownVm || compute.vms.contains_key(&entry.vm)) =>
        {
            Outcome::Invalid {
                message: format!(
                    "destroy: {id} is not the files of a VM that no longer exists; only those can be destroyed"
                ),
            }
        }
        // Starting over on an empty disk is never a one-click fix: the data would be gone.
        DriftKind::MissingDisk => Outcome::Invalid {
            message: format!(
                "id: no fix brings back a missing disk; if its data is gone, start over with `hearth vm recreate {} --empty-disk`",
                compute.vms.get(&entry.vm).map_or(entry.vm.as_str(), |vm| vm
                    .value
                    .request
                    .name
                    .as_str())
            ),
        },
        DriftKind::UnknownVm
        | DriftKind::WrongHost
        | DriftKind::CrashLoop
        | DriftKind::GuardAltered => {
            compute.fixes.insert(entry.id.clone(), index);
            if destroy {
                compute.destroy.insert(entry.id.clone());
            }
            Outcome::Applied { version: index }
        }
    }
}

/// The copies of its disk a new VM gets: what it asks for, or with 0 the most its pools ask
/// for, else 1.
fn copies(compute: &Compute, request: &VmRequest) -> u8 {
    if request.replicas > 0 {
        return request.replicas;
    }
    let pools = request.pools.iter().filter_map(|p| compute.pools.get(p));
    pools.filter_map(|p| p.value.replicas).max().unwrap_or(1)
}

/// Where a new VM's disk is kept: what the first of its pools that says asks for, else its
/// owner's plan's storage, else a local file.
pub(super) fn storage_of(
    compute: &Compute,
    request: &VmRequest,
    plan: Option<&Storage>,
) -> Storage {
    let pools = request.pools.iter().filter_map(|p| compute.pools.get(p));
    pools
        .filter_map(|p| p.value.storage.clone())
        .next()
        .or_else(|| plan.cloned())
        .unwrap_or_default()
}

/// One address from each of the request's pools, in order, or why not.
fn addresses(compute: &Compute, request: &VmRequest) -> Result<Vec<Assigned>, String> {
    let mut ips = Vec::new();
    for pool_name in &request.pools {
        let Some(pool) = compute.pools.get(pool_name) else {
            return Err(format!("pools: no pool named {pool_name}"));
        };
        let mut used = compute.used_addresses(pool_name);
        used.extend(ips.iter().map(|a: &Assigned| a.address));
        let Some(address) = pool.value.allocate(&used) else {
            return Err(format!("pools: pool {pool_name} has no free address"));
        };
        ips.push(Assigned {
            pool: pool_name.clone(),
            address,
            prefix: pool.value.assigned_prefix().unwrap_or(32),
            routed: pool.value.delegate.is_some(),
        });
    }
    Ok(ips)
}

pub(super) fn create_vm(
    compute: &mut Compute,
    request: &VmRequest,
    plan_storage: Option<&Storage>,
    index: u64,
) -> Outcome {
    if let Err(message) = request.validate() {
        return Outcome::Invalid { message };
    }
    let mut request = request.clone();
    let storage = storage_of(compute, &request, plan_storage);
    // A disk on RBD is in Ceph already: no second copy of hearth's own.
    request.replicas = match storage {
        Storage::Local => copies(compute, &request),
        Storage::Rbd { .. } => 1,
    };
    let Some(image) = compute.images.get(&request.image).cloned() else {
        return Outcome::Invalid {
            message: format!("image: no image named {}", request.image),
        };
    };
    if image.value.arch != request.arch {
        return Outcome::Invalid {
            message: format!(
                "arch: image {} is {}, not {}",
                request.image, image.value.arch, request.arch
            ),
        };
    }
    if compute
        .vms
        .values()
        .any(|vm| vm.value.request.name == request.name)
    {
        return Outcome::Invalid {
            message: format!("name: a VM named {} exists", request.name),
        };
    }
    let ips = match addresses(compute, &request) {
        Ok(ips) => ips,
        Err(message) => return Outcome::Invalid { message },
    };
    let id = format!("vm-{index}");
    compute.vms.insert(
        id.clone(),
        Versioned {
            version: index,
            value: Vm {
                id: id.clone(),
                request: request.clone(),
                ips,
                host: None,
                deleting: false,
                phase: Phase::Pending,
                message: None,
                phase_since: index,
                reboots_asked: 0,
                reboots_done: 0,
                disk: DiskHome {
                    host: None,
                    generation: 1,
                },
                base: Some(image.value),
                migration: None,
                moved_from: None,
                move_given_up: None,
                replica: None,
                adopt_replica: None,
                storage,
                rbd_clients: Vec::new(),
            },
        },
    );
    Outcome::Created { id, version: index }
}

fn set_io(compute: &mut Compute, vm: &str, io: &IoLimits, expect: Expect, index: u64) -> Outcome {
    match io.validate() {
        Ok(()) => update_vm(compute, vm, expect, index, |vm| vm.request.io = *io),
        Err(message) => Outcome::Invalid { message },
    }
}

fn set_owner(compute: &mut Compute, vm: &str, owner: &str, expect: Expect, index: u64) -> Outcome {
    if owner.is_empty() || owner.len() > 64 {
        return Outcome::Invalid {
            message: "owner: give 1 to 64 characters".into(),
        };
    }
    update_vm(compute, vm, expect, index, |vm| {
        vm.request.owner = owner.to_owned()
    })
}

fn update_vm(
    compute: &mut Compute,
    key: &str,
    expect: Expect,
    index: u64,
    change: impl FnOnce(&mut Vm),
) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    if !expect.holds(Some(entry.version)) {
        return Outcome::Conflict {
            current: Some(entry.version),
        };
    }
    if entry.value.deleting {
        return Outcome::Invalid {
            message: "vm: it is being deleted".into(),
        };
    }
    change(&mut entry.value);
    entry.version = index;
    Outcome::Applied { version: index }
}

fn delete_vm(compute: &mut Compute, key: &str, expect: Expect, index: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    if !expect.holds(Some(entry.version)) {
        return Outcome::Conflict {
            current: Some(entry.version),
        };
    }
    if entry.value.host.is_none() {
        compute.vms.remove(key);
        return Outcome::Removed;
    }
    entry.value.deleting = true;
    // A VM being deleted is not moved: the target's copy, if any, is never switched to.
    entry.value.migration = None;
    entry.version = index;
    entry.value.set_phase(Phase::Deleting, None, index);
    Outcome::Applied { version: index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::{Arch, Blob};

    fn image() -> Image {
        Image {
            name: "tiny".into(),
            format: "qcow2".into(),
            arch: Arch::X86_64,
            disk: Blob {
                sha256: "a".repeat(64),
                size_bytes: 1,
            },
            kernel: None,
            initrd: None,
            append: None,
        }
    }

    fn request(name: &str) -> VmRequest {
        VmRequest {
            name: name.into(),
            owner: "alice".into(),
            arch: Arch::X86_64,
            vcpus: 1,
            memory_mib: 256,
            disk_gib: 1,
            image: "tiny".into(),
            ssh_keys: vec![],
            pools: vec!["lan".into()],
            io: IoLimits::default(),
            power: Power::Running,
            replicas: 1,
        }
    }

    fn setup() -> Compute {
        let mut compute = Compute::default();
        let pool = IpPool {
            name: "lan".into(),
            cidr: "192.0.2.0/30".into(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            resolvers: vec![],
            first: None,
            last: None,
            replicas: None,
            delegate: None,
            storage: None,
        };
        for (i, command) in [
            ComputeCommand::PutImage {
                image: image(),
                expect: Expect::Absent,
            },
            ComputeCommand::PutPool {
                pool,
                expect: Expect::Absent,
            },
        ]
        .iter()
        .enumerate()
        {
            assert!(apply(&mut compute, command, i as u64 + 1).changed());
        }
        compute
    }

    #[test]
    fn a_vm_that_does_not_say_gets_the_copies_its_pool_asks_for() {
        let mut compute = setup();
        // The pool has one free address: each VM is deleted (never placed, so at once).
        let created = |compute: &mut Compute, name: &str, replicas: u8, index: u64| {
            let mut request = request(name);
            request.replicas = replicas;
            let create = ComputeCommand::CreateVm { request };
            let Outcome::Created { id, .. } = apply(compute, &create, index) else {
                panic!("{name} not created")
            };
            let got = compute.vms[&id].value.request.replicas;
            let delete = ComputeCommand::DeleteVm {
                vm: id,
                expect: Expect::Any,
            };
            assert_eq!(apply(compute, &delete, index + 1), Outcome::Removed);
            got
        };
        assert_eq!(created(&mut compute, "a", 0, 10), 1, "no pool default: one");
        let mut pool = compute.pools["lan"].value.clone();
        pool.replicas = Some(2);
        let put = ComputeCommand::PutPool {
            pool,
            expect: Expect::Any,
        };
        assert!(apply(&mut compute, &put, 12).changed());
        assert_eq!(created(&mut compute, "b", 0, 13), 2, "the pool's default");
        assert_eq!(created(&mut compute, "c", 1, 15), 1, "asked for one");
        let mut request = request("d");
        request.replicas = 3;
        assert!(matches!(
            apply(&mut compute, &ComputeCommand::CreateVm { request }, 17),
            Outcome::Invalid { .. }
        ));
    }

    #[test]
    fn an_address_goes_to_one_vm_only_and_is_freed_on_delete() {
        let mut compute = setup();
        let create = |name: &str| ComputeCommand::CreateVm {
            request: request(name),
        };
        let Outcome::Created { id, .. } = apply(&mut compute, &create("a"), 10) else {
            panic!()
        };
        assert_eq!(
            compute.vms[&id].value.ips[0].address.to_string(),
            "192.0.2.2"
        );
        // A /30 has one address left after the gateway: the second VM gets nothing.
        let outcome = apply(&mut compute, &create("b"), 11);
        assert!(
            matches!(&outcome, Outcome::Invalid { message } if message.contains("no free address")),
            "{outcome:?}"
        );
        assert_eq!(compute.vms.len(), 1);
        // Names are unique.
        assert!(matches!(
            apply(&mut compute, &create("a"), 12),
            Outcome::Invalid { .. }
        ));
        // Unplaced: deleted at once, and the address is free again.
        let delete = ComputeCommand::DeleteVm {
            vm: id.clone(),
            expect: Expect::Any,
        };
        assert_eq!(apply(&mut compute, &delete, 13), Outcome::Removed);
        assert!(matches!(
            apply(&mut compute, &create("b"), 14),
            Outcome::Created { .. }
        ));
    }

    #[test]
    fn placed_vms_are_forgotten_only_when_their_host_confirms() {
        let mut compute = setup();
        let Outcome::Created { id, .. } = apply(
            &mut compute,
            &ComputeCommand::CreateVm {
                request: request("a"),
            },
            10,
        ) else {
            panic!()
        };
        let place = ComputeCommand::Place {
            vm: id.clone(),
            host: Some("w1".into()),
            from: None,
        };
        assert!(apply(&mut compute, &place, 11).changed());
        assert_eq!(compute.vms[&id].value.phase, Phase::Placed);
        // A second placement based on a stale view fails.
        assert!(matches!(
            apply(&mut compute, &place, 12),
            Outcome::Conflict { .. }
        ));
        // Reports from another host are stale.
        let report = |host: &str| ComputeCommand::Report {
            vm: id.clone(),
            host: host.into(),
            phase: Phase::Running,
            message: None,
        };
        assert!(matches!(
            apply(&mut compute, &report("w2"), 13),
            Outcome::Conflict { .. }
        ));
        assert!(apply(&mut compute, &report("w1"), 14).changed());
        assert_eq!(apply(&mut compute, &report("w1"), 15), Outcome::Nothing);
        let delete = ComputeCommand::DeleteVm {
            vm: id.clone(),
            expect: Expect::Any,
        };
        assert!(apply(&mut compute, &delete, 16).changed());
        assert_eq!(compute.vms[&id].value.phase, Phase::Deleting);
        assert_eq!(
            compute.used_addresses("lan").len(),
            1,
            "held until forgotten"
        );
        let forget = |host: &str| ComputeCommand::Forget {
            vm: id.clone(),
            host: host.into(),
        };
        assert!(matches!(
            apply(&mut compute, &forget("w2"), 17),
            Outcome::Conflict { .. }
        ));
        assert_eq!(apply(&mut compute, &forget("w1"), 18), Outcome::Removed);
        assert!(compute.used_addresses("lan").is_empty());
    }

    #[test]
    fn images_and_pools_in_use_cannot_be_removed() {
        let mut compute = setup();
        apply(
            &mut compute,
            &ComputeCommand::CreateVm {
                request: request("a"),
            },
            10,
        );
        let outcome = apply(
            &mut compute,
            &ComputeCommand::RemoveImage {
                name: "tiny".into(),
                expect: Expect::Any,
            },
            11,
        );
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
        let outcome = apply(
            &mut compute,
            &ComputeCommand::RemovePool {
                name: "lan".into(),
                expect: Expect::Any,
            },
            12,
        );
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
    }

    /// A VM with no addresses (the test pool has room for one only).
    fn created(compute: &mut Compute, name: &str, index: u64) -> String {
        let mut request = request(name);
        request.pools.clear();
        let Outcome::Created { id, .. } =
            apply(compute, &ComputeCommand::CreateVm { request }, index)
        else {
            panic!("not created")
        };
        id
    }

    #[test]
    fn a_disk_home_is_claimed_once_by_the_vms_host_and_never_moves_by_placement() {
        let mut compute = setup();
        let id = created(&mut compute, "a", 10);
        assert_eq!(compute.vms[&id].value.disk.generation, 1);
        let claim = |host: &str, generation| ComputeCommand::ClaimDisk {
            vm: id.clone(),
            host: host.into(),
            generation,
        };
        // Not placed there: refused.
        assert!(matches!(
            apply(&mut compute, &claim("w1", 1), 11),
            Outcome::Conflict { .. }
        ));
        let place = |host: Option<&str>, from: Option<&str>| ComputeCommand::Place {
            vm: id.clone(),
            host: host.map(Into::into),
            from: from.map(Into::into),
        };
        assert!(apply(&mut compute, &place(Some("w1"), None), 12).changed());
        assert!(matches!(
            apply(&mut compute, &claim("w1", 2), 13),
            Outcome::Conflict { .. }
        ));
        assert!(apply(&mut compute, &claim("w1", 1), 14).changed());
        assert_eq!(apply(&mut compute, &claim("w1", 1), 15), Outcome::Nothing);
        assert_eq!(compute.vms[&id].value.disk.host.as_deref(), Some("w1"));
        // With its disk on w1, the VM goes nowhere else.
        let outcome = apply(&mut compute, &place(Some("w2"), Some("w1")), 16);
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
        let outcome = apply(&mut compute, &place(None, Some("w1")), 17);
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
        // A missing disk has no one-click fix.
        compute.drift.insert(
            "w1".into(),
            vec![Drift {
                id: format!("w1/missing-disk/{id}"),
                host: "w1".into(),
                vm: id.clone(),
                kind: DriftKind::MissingDisk,
                detail: String::new(),
                fix: String::new(),
            }],
        );
        let outcome = apply(
            &mut compute,
            &ComputeCommand::Fix {
                id: format!("w1/missing-disk/{id}"),
                destroy: false,
            },
            18,
        );
        assert!(
            matches!(&outcome, Outcome::Invalid { message } if message.contains("--empty-disk")),
            "{outcome:?}"
        );
    }

    #[test]
    fn recreate_gives_up_only_a_disk_that_is_lost() {
        let mut compute = setup();
        let id = created(&mut compute, "a", 10);
        for (i, command) in [
            ComputeCommand::Place {
                vm: id.clone(),
                host: Some("w1".into()),
                from: None,
            },
            ComputeCommand::ClaimDisk {
                vm: id.clone(),
                host: "w1".into(),
                generation: 1,
            },
            ComputeCommand::Report {
                vm: id.clone(),
                host: "w1".into(),
                phase: Phase::Running,
                message: None,
            },
        ]
        .iter()
        .enumerate()
        {
            assert!(apply(&mut compute, command, 11 + i as u64).changed());
        }
        let recreate = ComputeCommand::Recreate {
            vm: id.clone(),
            expect: Expect::Any,
        };
        // w1 is up as far as the state knows and has the disk.
        let outcome = apply(&mut compute, &recreate, 20);
        assert!(
            matches!(&outcome, Outcome::Invalid { message } if message.contains("fence")),
            "{outcome:?}"
        );
        assert_eq!(compute.vms[&id].value.disk.generation, 1);
        // Fenced: the VM starts over elsewhere, on a new generation.
        apply(
            &mut compute,
            &ComputeCommand::Fence {
                host: "w1".into(),
                fenced: true,
            },
            21,
        );
        assert!(apply(&mut compute, &recreate, 22).changed());
        let vm = &compute.vms[&id].value;
        assert_eq!((vm.host.as_deref(), vm.disk.host.as_deref()), (None, None));
        assert_eq!(vm.disk.generation, 2);
        assert_eq!(vm.phase, Phase::Pending);
        // A host that reported the disk missing may have it recreated in place.
        let other = created(&mut compute, "b", 30);
        for command in [
            ComputeCommand::Place {
                vm: other.clone(),
                host: Some("w2".into()),
                from: None,
            },
            ComputeCommand::ClaimDisk {
                vm: other.clone(),
                host: "w2".into(),
                generation: 1,
            },
            ComputeCommand::Report {
                vm: other.clone(),
                host: "w2".into(),
                phase: Phase::Lost,
                message: Some("its disk is gone from this host".into()),
            },
            ComputeCommand::Recreate {
                vm: other.clone(),
                expect: Expect::Any,
            },
        ] {
            assert!(apply(&mut compute, &command, 31).changed(), "{command:?}");
        }
        let vm = &compute.vms[&other].value;
        assert_eq!(vm.host.as_deref(), Some("w2"));
        assert_eq!((vm.disk.host.as_deref(), vm.disk.generation), (None, 2));
    }

    #[test]
    fn new_image_content_is_a_new_version_and_vms_keep_their_base() {
        let mut compute = setup();
        let id = created(&mut compute, "a", 10);
        let mut newer = image();
        newer.disk.sha256 = "b".repeat(64);
        assert!(
            apply(
                &mut compute,
                &ComputeCommand::PutImage {
                    image: newer.clone(),
                    expect: Expect::Any,
                },
                11
            )
            .changed()
        );
        assert_eq!(compute.images["tiny"].value, newer);
        assert_eq!(compute.images["tiny"].version, 11);
        let vm = &compute.vms[&id].value;
        assert_eq!(vm.base_image(&compute).unwrap().disk.sha256, "a".repeat(64));
        // A VM created now gets the new version.
        let later = created(&mut compute, "b", 12);
        assert_eq!(
            compute.vms[&later]
                .value
                .base_image(&compute)
                .unwrap()
                .disk
                .sha256,
            "b".repeat(64)
        );
    }

    #[test]
    fn a_fenced_host_claims_nothing_and_late_reports_record_no_home() {
        let mut compute = setup();
        let id = created(&mut compute, "a", 10);
        let place = ComputeCommand::Place {
            vm: id.clone(),
            host: Some("w1".into()),
            from: None,
        };
        assert!(apply(&mut compute, &place, 11).changed());
        apply(
            &mut compute,
            &ComputeCommand::Fence {
                host: "w1".into(),
                fenced: true,
            },
            12,
        );
        let claim = ComputeCommand::ClaimDisk {
            vm: id.clone(),
            host: "w1".into(),
            generation: 1,
        };
        assert!(matches!(
            apply(&mut compute, &claim, 13),
            Outcome::Conflict { .. }
        ));
        // A `running` report records a home only for a VM of an older state (generation 0).
        let report = ComputeCommand::Report {
            vm: id.clone(),
            host: "w1".into(),
            phase: Phase::Running,
            message: None,
        };
        apply(&mut compute, &report, 14);
        assert_eq!(compute.vms[&id].value.disk.host, None);
        compute.vms.get_mut(&id).unwrap().value.disk.generation = 0;
        compute.vms.get_mut(&id).unwrap().value.phase = Phase::Placed;
        apply(&mut compute, &report, 15);
        assert_eq!(compute.vms[&id].value.disk.host.as_deref(), Some("w1"));
        // Recreate is refused for a VM on a host that is up (not fenced) and has not said
        // its disk is missing, home or not.
        apply(
            &mut compute,
            &ComputeCommand::Fence {
                host: "w1".into(),
                fenced: false,
            },
            16,
        );
        let other = created(&mut compute, "b", 17);
        apply(
            &mut compute,
            &ComputeCommand::Place {
                vm: other.clone(),
                host: Some("w1".into()),
                from: None,
            },
            18,
        );
        let outcome = apply(
            &mut compute,
            &ComputeCommand::Recreate {
                vm: other,
                expect: Expect::Any,
            },
            19,
        );
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
    }

    #[test]
    fn vms_of_an_older_state_keep_the_image_version_they_have() {
        let mut compute = setup();
        let id = created(&mut compute, "a", 10);
        compute.vms.get_mut(&id).unwrap().value.base = None;
        let mut newer = image();
        newer.disk.sha256 = "b".repeat(64);
        let put = ComputeCommand::PutImage {
            image: newer,
            expect: Expect::Any,
        };
        assert!(apply(&mut compute, &put, 11).changed());
        let vm = &compute.vms[&id].value;
        assert_eq!(vm.base_image(&compute).unwrap().disk.sha256, "a".repeat(64));
    }
}
