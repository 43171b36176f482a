//! Who takes over a disk on RBD, and when.

use std::time::{Duration, Instant};

use hearth_types::compute::{Capacity, Host, Phase, Storage, Vm};
use hearth_types::desired::{DesiredState, Versioned};

use super::*;

const WAIT: Duration = Duration::from_secs(20);

fn world() -> DesiredState {
    let mut desired = DesiredState::default();
    for (name, memory_mib, rbd) in [
        ("w1", 4096, true),
        ("w2", 2048, true),
        ("w3", 3072, true),
        ("w4", 8192, false),
    ] {
        desired.compute.hosts.insert(
            name.into(),
            Host {
                capacity: Capacity {
                    vcpus: 4,
                    memory_mib,
                    disk_gib: 10,
                    live_migration: true,
                    rbd,
                },
                lease: 7,
                ..Host::default()
            },
        );
    }
    for (id, storage) in [
        ("vm-1", Storage::Rbd { pool: "rbd".into() }),
        ("vm-2", Storage::Local),
    ] {
        let mut vm = Vm::example(id, id, "alice");
        vm.storage = storage;
        vm.host = Some("w1".into());
        vm.disk.host = Some("w1".into());
        vm.phase = Phase::Running;
        desired.compute.vms.insert(
            id.into(),
            Versioned {
                version: 1,
                value: vm,
            },
        );
    }
    desired
}

fn watch(start: Instant) -> LeaseWatch {
    ["w1", "w2", "w3", "w4"]
        .into_iter()
        .map(|h| (h.to_owned(), (7, start)))
        .collect()
}

#[test]
fn the_roomiest_worker_with_ceph_takes_over_once_the_home_is_silent() {
    let desired = world();
    let start = Instant::now();
    let mut leases = watch(start);
    // Not yet: the wait has not passed.
    for me in ["w2", "w3"] {
        assert!(takeovers(me, &desired, &leases, start + WAIT / 2, WAIT).is_empty());
    }
    // w2 and w3 renewed since; w1 did not.
    let later = start + WAIT + Duration::from_secs(1);
    for h in ["w2", "w3", "w4"] {
        leases.insert(h.into(), (8, later - Duration::from_secs(2)));
    }
    // w3 has more memory than w2; w4 has the most but no Ceph; the local disk stays.
    assert!(takeovers("w2", &desired, &leases, later, WAIT).is_empty());
    assert!(takeovers("w4", &desired, &leases, later, WAIT).is_empty());
    assert_eq!(
        takeovers("w3", &desired, &leases, later, WAIT),
        [Action::TakeOver {
            vm: "vm-1".into(),
            from: "w1".into(),
            lease: 7
        }]
    );
}

#[test]
fn a_fenced_home_is_taken_over_at_once_and_a_deleted_vm_never() {
    let mut desired = world();
    let start = Instant::now();
    desired.compute.hosts.get_mut("w1").unwrap().fenced = true;
    assert_eq!(
        takeovers("w3", &desired, &watch(start), start, WAIT).len(),
        1
    );
    desired.compute.vms.get_mut("vm-1").unwrap().value.deleting = true;
    assert!(takeovers("w3", &desired, &watch(start), start, WAIT).is_empty());
}
