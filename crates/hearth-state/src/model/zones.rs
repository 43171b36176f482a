//! The member zone commands' `apply`: a member claims a domain (within their plan's zone
//! quota, never overlapping another claim), proves it, and edits its record sets and the
//! names that follow their VMs. The rules on names and sets are `hearth_types::zones`.

use hearth_types::desired::{DesiredState, RecordSet, Versioned};
use hearth_types::zones::{MemberZone, check_apex, overlaps};

use super::Outcome;
use super::cas::{Expect, invalid, put, refused, remove};

/// The member zone commands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ZoneCommand {
    /// Claims a domain; unverified until `Verify`. `reserved` is the co-op's own zone as
    /// the API node serves it, which no member may claim any part of.
    Claim {
        zone: Box<MemberZone>,
        reserved: String,
    },
    /// The TXT challenge was found (or an admin approved the claim): every server answers.
    Verify {
        apex: String,
    },
    /// Puts one record set (its key is `name/TYPE`).
    PutSet {
        apex: String,
        set: RecordSet,
        expect: Expect,
    },
    RemoveSet {
        apex: String,
        key: String,
    },
    /// Makes `name` answer the addresses of the owner's VM `vm`; `None` stops it.
    Follow {
        apex: String,
        name: String,
        vm: Option<String>,
    },
    /// Gives the domain up.
    Release {
        apex: String,
        expect: Expect,
    },
}

impl ZoneCommand {
    /// The domain the command is about.
    pub fn apex(&self) -> &str {
        match self {
            ZoneCommand::Claim { zone, .. } => &zone.apex,
            ZoneCommand::Verify { apex }
            | ZoneCommand::PutSet { apex, .. }
            | ZoneCommand::RemoveSet { apex, .. }
            | ZoneCommand::Follow { apex, .. }
            | ZoneCommand::Release { apex, .. } => apex,
        }
    }
}

pub(super) fn apply(state: &mut DesiredState, command: &ZoneCommand, index: u64) -> Outcome {
    match command {
        ZoneCommand::Claim { zone, reserved } => claim(state, zone, reserved, index),
        ZoneCommand::Verify { apex } => edit(state, apex, index, |zone| {
            zone.verified = true;
            Ok(())
        }),
        ZoneCommand::PutSet { apex, set, expect } => put_set(state, apex, set, *expect, index),
        ZoneCommand::RemoveSet { apex, key } => edit(state, apex, index, |zone| {
            zone.records.remove(key).map(drop).ok_or(Outcome::NotFound)
        }),
        ZoneCommand::Follow { apex, name, vm } => follow(state, apex, name, vm.as_deref(), index),
        ZoneCommand::Release { apex, expect } => remove(&mut state.zones, apex, *expect),
    }
}

/// How many zones `owner` may hold: a member's plan's quota (the built-in plan's is
/// [`DEFAULT_ZONES`]); an admin's are not counted.
fn zone_quota(state: &DesiredState, owner: &str) -> u64 {
    match state.accounts.get(owner).map(|a| &a.value) {
        Some(account) if account.role == hearth_types::account::AccountRole::Member => {
            hearth_types::quota::quota_of(&state.plans, account.plan.as_deref(), &account.quota)
                .zones
                .unwrap_or(u64::MAX)
        }
        _ => u64::MAX,
    }
}

fn claim(state: &mut DesiredState, zone: &MemberZone, reserved: &str, index: u64) -> Outcome {
    let apex = match check_apex(&zone.apex) {
        Ok(apex) if apex == zone.apex => apex,
        Ok(_) => return invalid("apex: lowercase, without the final dot"),
        Err(message) => return invalid(message),
    };
    if !state.accounts.contains_key(&zone.owner) {
        return refused(format!("owner: no account named {}", zone.owner));
    }
    if zone.verified || !zone.records.is_empty() || !zone.follows.is_empty() {
        return invalid("verified: a new claim is unverified and empty");
    }
    let reserved = reserved.trim_end_matches('.').to_ascii_lowercase();
    if !reserved.is_empty() && overlaps(&apex, &reserved) {
        return refused(format!(
            "apex: {apex} is part of the co-op's own zone {reserved}, which only admins edit"
        ));
    }
    if let Some(other) = state.zones.keys().find(|other| overlaps(&apex, other)) {
        return refused(format!(
            "apex: {apex} overlaps the zone {other}, which is claimed already"
        ));
    }
    let held = state
        .zones
        .values()
        .filter(|z| z.value.owner == zone.owner)
        .count() as u64;
    let quota = zone_quota(state, &zone.owner);
    if held >= quota {
        return refused(format!(
            "zones: over quota: {quota} allowed, {held} held; release one first"
        ));
    }
    put(&mut state.zones, apex, zone.clone(), Expect::Absent, index)
}

/// Changes the zone `apex` with `change`, at a new version.
fn edit(
    state: &mut DesiredState,
    apex: &str,
    index: u64,
    change: impl FnOnce(&mut MemberZone) -> Result<(), Outcome>,
) -> Outcome {
    let Some(Versioned { value, .. }) = state.zones.get(apex) else {
        return Outcome::NotFound;
    };
    let mut zone = value.clone();
    if let Err(outcome) = change(&mut zone) {
        return outcome;
    }
    put(&mut state.zones, apex.to_owned(), zone, Expect::Any, index)
}

fn put_set(
    state: &mut DesiredState,
    apex: &str,
    set: &RecordSet,
    expect: Expect,
    index: u64,
) -> Outcome {
    let current = state.zones.get(apex).map(|z| z.version);
    if !expect.holds(current) {
        return Outcome::Conflict { current };
    }
    edit(state, apex, index, |zone| {
        let key = zone.validate_set(set).map_err(invalid)?;
        zone.records.insert(key, set.clone());
        Ok(())
    })
}

fn follow(
    state: &mut DesiredState,
    apex: &str,
    name: &str,
    vm: Option<&str>,
    index: u64,
) -> Outcome {
    let owner = match state.zones.get(apex) {
        Some(zone) => zone.value.owner.clone(),
        None => return Outcome::NotFound,
    };
    let found = vm.map(|vm| state.compute.find_vm(vm).map(|v| v.value.clone()));
    let vm_name = match found {
        None => None,
        Some(Some(vm)) if vm.request.owner == owner => Some(vm.request.name.clone()),
        Some(_) => {
            return refused(format!(
                "vm: {owner} has no VM named {}",
                vm.unwrap_or_default()
            ));
        }
    };
    edit(state, apex, index, |zone| {
        match vm_name {
            Some(vm_name) => {
                let name = zone.validate_follow(name).map_err(invalid)?;
                zone.follows.insert(name, vm_name);
            }
            None => {
                zone.follows
                    .remove(&name.to_ascii_lowercase())
                    .ok_or(Outcome::NotFound)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::desired::RecordData;

    fn claim_of(owner: &str, apex: &str) -> ZoneCommand {
        ZoneCommand::Claim {
            zone: Box::new(MemberZone {
                apex: apex.into(),
                owner: owner.into(),
                challenge: "hearth-verify=x".into(),
                verified: false,
                records: Default::default(),
                follows: Default::default(),
                created_at: 0,
            }),
            reserved: "coop.example.".into(),
        }
    }

    fn state_with(accounts: &[&str]) -> DesiredState {
        let mut state = DesiredState::default();
        for name in accounts {
            let account = serde_json::from_value(serde_json::json!({
                "name": name, "role": "member",
                "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            }))
            .unwrap();
            state.accounts.insert(
                (*name).into(),
                Versioned {
                    version: 1,
                    value: account,
                },
            );
        }
        state
    }

    #[test]
    fn claims_never_overlap_nor_touch_the_co_ops_zone_and_keep_to_the_quota() {
        let mut state = state_with(&["mia", "max"]);
        assert!(apply(&mut state, &claim_of("mia", "example.org"), 2).changed());
        for (owner, apex) in [
            ("max", "example.org"),
            ("max", "www.example.org"),
            ("max", "vm.coop.example"),
            ("max", "coop.example"),
        ] {
            let outcome = apply(&mut state, &claim_of(owner, apex), 3);
            assert!(
                matches!(outcome, Outcome::Refused { .. }),
                "{apex}: {outcome:?}"
            );
        }
        assert!(apply(&mut state, &claim_of("mia", "b.org"), 4).changed());
        assert!(apply(&mut state, &claim_of("mia", "c.org"), 5).changed());
        let over = apply(&mut state, &claim_of("mia", "d.org"), 6);
        assert!(matches!(over, Outcome::Refused { .. }), "{over:?}");
        assert!(apply(&mut state, &claim_of("max", "d.org"), 7).changed());
    }

    #[test]
    fn sets_are_validated_and_names_follow_only_the_owners_vms() {
        let mut state = state_with(&["mia"]);
        apply(&mut state, &claim_of("mia", "example.org"), 2);
        let www = RecordSet {
            name: "www".into(),
            ttl: Some(60),
            values: vec![RecordData::A {
                address: "192.0.2.7".parse().unwrap(),
            }],
        };
        let put = |set: RecordSet| ZoneCommand::PutSet {
            apex: "example.org".into(),
            set,
            expect: Expect::Any,
        };
        assert!(apply(&mut state, &put(www), 3).changed());
        let bad = RecordSet {
            name: "www".into(),
            ttl: None,
            values: vec![RecordData::Cname {
                target: "elsewhere.net.".into(),
            }],
        };
        assert!(matches!(
            apply(&mut state, &put(bad), 4),
            Outcome::Invalid { .. }
        ));
        let follow = ZoneCommand::Follow {
            apex: "example.org".into(),
            name: "shop".into(),
            vm: Some("nobodys".into()),
        };
        assert!(matches!(
            apply(&mut state, &follow, 5),
            Outcome::Refused { .. }
        ));
        assert_eq!(
            state.zones["example.org"]
                .value
                .records
                .keys()
                .collect::<Vec<_>>(),
            ["www/A"]
        );
    }
}
