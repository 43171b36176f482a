//! The cluster events compute commands raise: a replica that degrades or comes in sync, and a
//! VM restarted on its replica's host. Found by comparing the VM before and after the command,
//! so they are recorded exactly when the state changes, on every node alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hearth_types::compute::{ReplicaState, Vm};
use hearth_types::desired::DesiredState;
use hearth_types::{ClusterEvent, EventKind, MemberRow, MemberState, VmEvent};

use super::compute::ComputeCommand;

/// What a command that may raise an event saw of its VM before it applied.
pub(super) struct Before {
    key: String,
    home: Option<String>,
    replica: Option<(u64, ReplicaState)>,
    at_ms: u64,
}

/// The VM `command` may raise an event about, as it is now.
pub(super) fn before(state: &DesiredState, command: &ComputeCommand) -> Option<Before> {
    let (key, at_ms) = match command {
        ComputeCommand::ReplicaProgress { vm, at_ms, .. }
        | ComputeCommand::Failover { vm, at_ms, .. }
        | ComputeCommand::TakeOver { vm, at_ms, .. } => (vm, *at_ms),
        _ => return None,
    };
    let vm = &state.compute.vms.get(key)?.value;
    Some(Before {
        key: key.clone(),
        home: vm.disk.host.clone(),
        replica: vm.replica.as_ref().map(|r| (r.since, r.state)),
        at_ms,
    })
}

/// The event the command raised, if the VM changed in a way handlers are told about, with
/// the time it happened.
pub(super) fn raised(state: &DesiredState, before: Before) -> Option<(ClusterEvent, u64)> {
    let vm = &state.compute.vms.get(&before.key)?.value;
    let home = vm.disk.host.clone()?;
    let replica = vm.replica.as_ref();
    let kind = if before.home.as_ref() != Some(&home) {
        EventKind::VmFailover
    } else {
        let r = replica?;
        match before.replica {
            Some((since, was)) if since == r.since && was != r.state => match r.state {
                ReplicaState::Degraded => EventKind::ReplicaDegraded,
                ReplicaState::InSync => EventKind::ReplicaInSync,
                _ => return None,
            },
            _ => return None,
        }
    };
    let event = ClusterEvent {
        kind,
        member: member_row(state, &home),
        instance: None,
        vm: Some(vm_event(&before.key, vm, kind, before.home)),
    };
    Some((event, before.at_ms))
}

fn vm_event(key: &str, vm: &Vm, kind: EventKind, old_home: Option<String>) -> VmEvent {
    let replica = vm.replica.as_ref();
    VmEvent {
        id: key.to_owned(),
        name: vm.request.name.clone(),
        owner: vm.request.owner.clone(),
        replica_host: replica.map(|r| r.host.clone()),
        from: (kind == EventKind::VmFailover)
            .then_some(old_home)
            .flatten(),
        message: replica.and_then(|r| r.message.clone()),
    }
}

/// The host as the leader last observed it; a host never observed gets a row with its name
/// and no address.
fn member_row(state: &DesiredState, host: &str) -> MemberRow {
    state
        .observed
        .members
        .get(host)
        .cloned()
        .unwrap_or_else(|| MemberRow {
            name: host.to_owned(),
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            gossip_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            state: MemberState::Alive,
            roles: Vec::new(),
            tags: Default::default(),
            rpc_addr: None,
        })
}

#[cfg(test)]
mod tests {
    use super::super::{Command, apply};
    use super::*;
    use hearth_types::compute::Host;
    use hearth_types::desired::Versioned;

    /// vm-1 (`db1` of alice) asks for two copies and lives on w1; w2 is the other worker.
    fn setup() -> DesiredState {
        let mut state = DesiredState::default();
        for name in ["w1", "w2"] {
            state.compute.hosts.insert(name.into(), Host::default());
        }
        let mut vm = super::super::migration::tests::vm_on_w1();
        vm.request.replicas = 2;
        let vm = Versioned {
            version: 7,
            value: vm,
        };
        state.compute.vms.insert("vm-1".into(), vm);
        state
    }

    fn run(state: &mut DesiredState, command: ComputeCommand, index: u64) {
        apply(state, &Command::Compute { command }, index);
    }

    fn report(state: ReplicaState, at_ms: u64) -> ComputeCommand {
        ComputeCommand::ReplicaProgress {
            vm: "vm-1".into(),
            host: "w1".into(),
            since: 10,
            state,
            done_bytes: 100,
            total_bytes: 100,
            message: (state == ReplicaState::Degraded).then(|| "w2 stopped answering".into()),
            at_ms,
        }
    }

    fn kinds(state: &DesiredState) -> Vec<(u64, EventKind)> {
        let events = state.events.values();
        events.map(|e| (e.id, e.event.kind)).collect()
    }

    #[test]
    fn a_replica_raises_one_event_when_in_sync_and_one_when_degraded() {
        let mut state = setup();
        let place = ComputeCommand::PlaceReplica {
            vm: "vm-1".into(),
            host: "w2".into(),
        };
        run(&mut state, place, 10);
        let listening = ComputeCommand::ReplicaListening {
            vm: "vm-1".into(),
            host: "w2".into(),
            since: 10,
            nbd: "127.0.0.1:1".into(),
        };
        run(&mut state, listening, 11);
        run(&mut state, report(ReplicaState::Syncing, 1_000), 12);
        assert_eq!(kinds(&state), vec![]);
        run(&mut state, report(ReplicaState::InSync, 2_000), 13);
        run(&mut state, report(ReplicaState::InSync, 2_500), 14);
        assert_eq!(kinds(&state), vec![(13, EventKind::ReplicaInSync)]);
        run(&mut state, report(ReplicaState::Degraded, 3_000), 15);
        // A refused report (a degraded copy stays so) raises nothing.
        run(&mut state, report(ReplicaState::InSync, 4_000), 16);
        let expected = vec![
            (13, EventKind::ReplicaInSync),
            (15, EventKind::ReplicaDegraded),
        ];
        assert_eq!(kinds(&state), expected);
        let degraded = &state.events[&15];
        assert_eq!(degraded.at_ms, 3_000);
        assert_eq!(degraded.event.member.name, "w1");
        let vm = degraded.event.vm.as_ref().unwrap();
        assert_eq!((vm.id.as_str(), vm.name.as_str()), ("vm-1", "db1"));
        assert_eq!(vm.owner, "alice");
        assert_eq!(vm.replica_host.as_deref(), Some("w2"));
        assert_eq!(vm.message.as_deref(), Some("w2 stopped answering"));
        assert_eq!(degraded.event.subject(), "vm db1");
    }

    #[test]
    fn a_failover_raises_an_event_on_the_new_home_and_two_events_in_one_entry_get_two_ids() {
        let mut state = setup();
        run(
            &mut state,
            ComputeCommand::RenewLease { host: "w1".into() },
            9,
        );
        let place = ComputeCommand::PlaceReplica {
            vm: "vm-1".into(),
            host: "w2".into(),
        };
        run(&mut state, place, 10);
        let vm = &mut state.compute.vms.get_mut("vm-1").unwrap().value;
        vm.replica.as_mut().unwrap().state = ReplicaState::InSync;
        let failover = ComputeCommand::Failover {
            vm: "vm-1".into(),
            from: "w1".into(),
            to: "w2".into(),
            since: 10,
            lease: 9,
            at_ms: 5_000,
        };
        let member = MemberRow {
            name: "w3".into(),
            ..member_row(&state, "w3")
        };
        let observe = Command::ObserveMember {
            member,
            at_ms: 5_001,
        };
        let batch = Command::Batch {
            commands: vec![Command::Compute { command: failover }, observe],
        };
        apply(&mut state, &batch, 20);
        // The next entry's event comes after both.
        run(&mut state, report(ReplicaState::Degraded, 6_000), 21);
        assert_eq!(
            kinds(&state),
            vec![(20, EventKind::VmFailover), (21, EventKind::MemberJoin)]
        );
        let failover = &state.events[&20].event;
        assert_eq!(failover.member.name, "w2");
        let vm = failover.vm.as_ref().unwrap();
        assert_eq!(vm.from.as_deref(), Some("w1"));
        assert_eq!(vm.replica_host, None);
    }
}
