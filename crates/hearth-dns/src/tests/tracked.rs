//! The index that follows changes (`tracked`) against the index built whole: after every
//! step of a seeded random walk over record sets, VMs, members and drain flags, both agree,
//! and the followed snapshot has the whole build's serial.

use std::sync::Arc;

use hearth_types::compute::Vm;
use hearth_types::desired::{DesiredState, RecordData, Versioned};
use hearth_types::{CheckStatus, MemberState, View};

use super::fixture::{a, aaaa, cname, desired, mx, record_set, txt, view, zone};
use crate::ZoneSnapshot;
use crate::tracked::Tracked;

/// A small deterministic generator: the walk is the same on every run.
struct Walk(u64);

impl Walk {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn pick_string(&mut self, items: &[String]) -> String {
        items[self.below(items.len())].clone()
    }
}

/// Names that collide on purpose: with nodes (`alpha`), services (`web`, `bravo`), VMs
/// (`web1.vm`), each other (`mail` and its absolute spelling, `Deep` and `deep`), the apex,
/// names outside the zone, and deep names whose parents are empty non-terminals.
const NAMES: &[&str] = &[
    "@",
    "alpha",
    "web",
    "bravo",
    "mail",
    "mail.hearth.test.",
    "a.b.c",
    "b.c",
    "deep.x.y",
    "Deep.X.y",
    "web1.vm",
    "elsewhere.example.",
    "bad..name",
];

fn random_value(walk: &mut Walk) -> RecordData {
    match walk.below(6) {
        0 => a(&format!("192.0.2.{}", walk.below(4))),
        1 => aaaa(&format!("2001:db8::{}", walk.below(4))),
        2 => cname(walk.pick(&["web", "alpha.hearth.test.", "x.example."])),
        3 => txt(walk.pick(&["v=spf1 -all", "hello"])),
        4 => mx(10, "mail"),
        _ => a("198.51.100.1"),
    }
}

fn vm(name: &str, address: &str) -> Versioned<Vm> {
    let value: Vm = serde_json::from_value(serde_json::json!({
        "id": format!("vm-{name}"), "name": name, "owner": "alice", "vcpus": 1,
        "memory_mib": 64, "disk_gib": 1, "image": "tiny", "host": null,
        "phase": "running", "deleting": false,
        "ips": [{"pool": "v4", "address": address, "prefix": 24}],
    }))
    .unwrap();
    Versioned { version: 1, value }
}

/// One random change to the view or the desired state.
fn step(walk: &mut Walk, view: &mut View, desired: &mut DesiredState) {
    match walk.below(10) {
        0..=4 => {
            let values: Vec<RecordData> =
                (0..1 + walk.below(2)).map(|_| random_value(walk)).collect();
            let set = record_set(
                walk.pick(NAMES),
                walk.pick(&[None, Some(60)]).to_owned(),
                &values,
            );
            let key = set.key().unwrap();
            if walk.below(3) == 0 {
                desired.records.remove(&key);
            } else {
                desired.records.insert(
                    key,
                    Versioned {
                        version: 1,
                        value: set,
                    },
                );
            }
        }
        5 => {
            let keys: Vec<String> = desired.records.keys().cloned().collect();
            if !keys.is_empty() {
                let key = walk.pick_string(&keys);
                desired.records.remove(&key);
            }
        }
        6 => {
            let name = walk.pick(&["web1", "Web1", "web2"]);
            if walk.below(3) == 0 {
                desired.compute.vms.remove(&format!("vm-{name}"));
            } else {
                let entry = vm(name, &format!("192.0.2.{}", 10 + walk.below(3)));
                desired.compute.vms.insert(entry.value.id.clone(), entry);
            }
        }
        7 => {
            let node = walk.pick(&["alpha", "bravo", "delta"]).to_owned();
            if desired.drained.remove(&node).is_none() {
                desired.drained.insert(
                    node,
                    Versioned {
                        version: 1,
                        value: true,
                    },
                );
            }
        }
        8 => {
            let names: Vec<String> = view.members.keys().cloned().collect();
            let member = view.members.get_mut(&walk.pick_string(&names)).unwrap();
            member.state = walk.pick(&[
                MemberState::Alive,
                MemberState::Suspect,
                MemberState::Dead,
                MemberState::Left,
            ]);
        }
        _ => {
            let names: Vec<String> = view.members.keys().cloned().collect();
            let member = view.members.get_mut(&walk.pick_string(&names)).unwrap();
            if let Some(instance) = member.services.first_mut() {
                instance.status = match instance.status {
                    CheckStatus::Passing => CheckStatus::Failing,
                    _ => CheckStatus::Passing,
                };
            }
        }
    }
}

#[test]
fn the_followed_index_is_the_index_built_whole_after_every_change() {
    let zone = zone();
    for seed in 1..=20u64 {
        let mut walk = Walk(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (mut view, mut desired) = (view(), desired([], &[]));
        let mut tracked = Tracked::build(&zone, &view, &desired);
        let mut snapshot =
            ZoneSnapshot::build(&zone, Arc::new(view.clone()), Arc::new(desired.clone()));
        for n in 0..150 {
            let before = (view.clone(), desired.clone());
            step(&mut walk, &mut view, &mut desired);
            tracked = tracked.follow(Some((&before.0, &before.1)), &zone, &view, &desired);
            let whole = Tracked::build(&zone, &view, &desired);
            assert_eq!(tracked.index, whole.index, "seed {seed}, step {n}");
            snapshot = snapshot.follow(&zone, Arc::new(view.clone()), Arc::new(desired.clone()));
            let rebuilt =
                ZoneSnapshot::build(&zone, Arc::new(view.clone()), Arc::new(desired.clone()));
            assert_eq!(snapshot.serial(), rebuilt.serial(), "seed {seed}, step {n}");
        }
    }
}

#[test]
fn a_change_of_one_record_set_recomputes_only_its_name() {
    let zone = zone();
    let view = view();
    let sets = (0..1_000).map(|i| record_set(&format!("host{i}.rack"), None, &[a("192.0.2.1")]));
    let before = desired(sets, &[]);
    let tracked = Tracked::build(&zone, &view, &before);
    let mut after = before.clone();
    let set = record_set("host7.rack", None, &[a("192.0.2.2")]);
    after.records.insert(
        set.key().unwrap(),
        Versioned {
            version: 2,
            value: set,
        },
    );
    let followed = tracked.follow(Some((&view, &before)), &zone, &view, &after);
    assert_eq!(followed.index, Tracked::build(&zone, &view, &after).index);
    // The apex is always looked at again; every other name but host7.rack is the same data.
    let untouched = followed.index.shared_with(&tracked.index);
    assert_eq!(untouched, followed.index.len() - 2);
}
