//! Pure functions that turn foca's member list and the latest announcements into the
//! node-local [`View`], and two successive views into the events between them.

use std::collections::{BTreeMap, HashMap};

use foca::State;
use hearth_types::{
    CheckStatus, ClusterEvent, EventKind, Member, MemberState, NodeAnnouncement, View,
};

use crate::identity::NodeId;

/// Builds the view. `members` is foca's list (every identity it knows, with its state);
/// a member appears once its announcement has arrived, since before that we know neither
/// its roles nor its services.
pub fn build_view<'a>(
    own: &NodeAnnouncement,
    members: impl Iterator<Item = (&'a NodeId, State)>,
    announcements: &HashMap<String, NodeAnnouncement>,
) -> View {
    // Several identities may share a name across restarts; the newest incarnation wins.
    let mut newest: HashMap<&str, (&NodeId, State)> = HashMap::new();
    for (id, state) in members {
        let entry = newest.entry(id.name.as_str()).or_insert((id, state));
        if id.bump > entry.0.bump {
            *entry = (id, state);
        }
    }
    let mut view = View {
        self_name: own.meta.name.clone(),
        members: BTreeMap::new(),
    };
    for (name, (_, state)) in newest {
        if name == own.meta.name {
            continue;
        }
        let Some(announcement) = announcements.get(name) else {
            continue;
        };
        view.members.insert(
            name.to_owned(),
            member_from(announcement, member_state(state, announcement.leaving)),
        );
    }
    let own_state = member_state(State::Alive, own.leaving);
    view.members
        .insert(own.meta.name.clone(), member_from(own, own_state));
    view
}

fn member_state(state: State, leaving: bool) -> MemberState {
    match (state, leaving) {
        (_, true) => MemberState::Left,
        (State::Alive, false) => MemberState::Alive,
        (State::Suspect, false) => MemberState::Suspect,
        (State::Down, false) => MemberState::Dead,
    }
}

fn member_from(announcement: &NodeAnnouncement, state: MemberState) -> Member {
    Member {
        meta: announcement.meta.clone(),
        state,
        services: announcement.services.clone(),
    }
}

/// The events that lead from `old` to `new`, members first, then checks, in name order.
pub fn diff_events(old: &View, new: &View) -> Vec<ClusterEvent> {
    let mut events = Vec::new();
    for (name, member) in &new.members {
        let before = old.members.get(name);
        if let Some(kind) = member_event(before, member) {
            events.push(ClusterEvent {
                kind,
                member: member.row(),
                instance: None,
                vm: None,
            });
        }
    }
    for (name, member) in &new.members {
        let before = old.members.get(name);
        for instance in &member.services {
            let old_status = before
                .and_then(|b| b.services.iter().find(|i| i.service == instance.service))
                .map_or(CheckStatus::Unknown, |i| i.status);
            let kind = match instance.status {
                _ if instance.status == old_status => continue,
                CheckStatus::Passing => EventKind::CheckPassing,
                CheckStatus::Failing => EventKind::CheckFailing,
                CheckStatus::Unknown => continue,
            };
            events.push(ClusterEvent {
                kind,
                member: member.row(),
                instance: Some(instance.clone()),
                vm: None,
            });
        }
    }
    events
}

fn member_event(before: Option<&Member>, now: &Member) -> Option<EventKind> {
    let was_up = before.is_some_and(|b| b.state.is_up());
    match (was_up, now.state) {
        (false, state) if state.is_up() => Some(EventKind::MemberJoin),
        (true, MemberState::Dead) => Some(EventKind::MemberFailed),
        (true, MemberState::Left) => Some(EventKind::MemberLeave),
        (true, _) if before.is_some_and(|b| b.meta != now.meta) => Some(EventKind::MemberUpdate),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::{NodeMeta, Role, ServiceInstance};

    fn announcement(name: &str, version: u64, status: CheckStatus) -> NodeAnnouncement {
        let octet = name.bytes().last().unwrap_or(b'0');
        NodeAnnouncement {
            meta: NodeMeta {
                name: name.into(),
                gossip_addr: format!("127.0.0.{}:7946", octet - b'0').parse().unwrap(),
                address: format!("127.0.0.{}", octet - b'0').parse().unwrap(),
                roles: vec![Role::Server],
                tags: Default::default(),
                rpc_addr: None,
                in_group: false,
            },
            version,
            services: vec![ServiceInstance {
                service: "www".into(),
                address: format!("10.0.0.{}", octet - b'0').parse().unwrap(),
                status,
            }],
            leaving: false,
        }
    }

    fn id(name: &str, bump: u64) -> NodeId {
        let a = announcement(name, 0, CheckStatus::Unknown);
        NodeId {
            name: name.into(),
            addr: a.meta.gossip_addr,
            bump,
        }
    }

    #[test]
    fn members_without_announcement_are_not_shown() {
        let own = announcement("n1", 1, CheckStatus::Passing);
        let n2 = id("n2", 1);
        let view = build_view(&own, [(&n2, State::Alive)].into_iter(), &HashMap::new());
        assert_eq!(view.members.keys().collect::<Vec<_>>(), ["n1"]);
    }

    #[test]
    fn states_map_and_leaving_wins() {
        let own = announcement("n1", 1, CheckStatus::Passing);
        let mut anns = HashMap::new();
        for name in ["n2", "n3", "n4", "n5"] {
            anns.insert(
                name.to_string(),
                announcement(name, 1, CheckStatus::Passing),
            );
        }
        anns.get_mut("n5").unwrap().leaving = true;
        let ids = [id("n2", 1), id("n3", 1), id("n4", 1), id("n5", 1)];
        let states = [State::Alive, State::Suspect, State::Down, State::Down];
        let view = build_view(&own, ids.iter().zip(states), &anns);
        let got: Vec<_> = view.members.values().map(|m| m.state).collect();
        use MemberState::*;
        assert_eq!(got, [Alive, Alive, Suspect, Dead, Left]);
    }

    #[test]
    fn newest_incarnation_of_a_name_wins() {
        let own = announcement("n1", 1, CheckStatus::Passing);
        let anns = HashMap::from([(
            "n2".to_string(),
            announcement("n2", 1, CheckStatus::Passing),
        )]);
        let (old, new) = (id("n2", 1), id("n2", 2));
        let view = build_view(
            &own,
            [(&new, State::Alive), (&old, State::Down)].into_iter(),
            &anns,
        );
        assert_eq!(view.members["n2"].state, MemberState::Alive);
    }

    fn view_of(members: &[(&str, MemberState, CheckStatus)]) -> View {
        let mut view = View::default();
        for (name, state, status) in members {
            let a = announcement(name, 1, *status);
            view.members.insert((*name).into(), member_from(&a, *state));
        }
        view
    }

    fn kinds(events: &[ClusterEvent]) -> Vec<(EventKind, String)> {
        events
            .iter()
            .map(|e| (e.kind, e.member.name.clone()))
            .collect()
    }

    #[test]
    fn diff_reports_joins_failures_leaves_and_checks() {
        use CheckStatus::*;
        use MemberState::*;
        let old = view_of(&[
            ("n1", Alive, Passing),
            ("n2", Alive, Passing),
            ("n3", Alive, Passing),
        ]);
        let new = view_of(&[
            ("n1", Alive, Failing),
            ("n2", Dead, Passing),
            ("n3", Left, Passing),
            ("n4", Alive, Unknown),
        ]);
        let events = diff_events(&old, &new);
        assert_eq!(
            kinds(&events),
            [
                (EventKind::MemberFailed, "n2".into()),
                (EventKind::MemberLeave, "n3".into()),
                (EventKind::MemberJoin, "n4".into()),
                (EventKind::CheckFailing, "n1".into()),
            ]
        );
        let recovered = view_of(&[("n1", Alive, Passing)]);
        assert_eq!(
            kinds(&diff_events(&new, &recovered)),
            [(EventKind::CheckPassing, "n1".into())]
        );
    }

    #[test]
    fn suspect_is_not_an_event_and_meta_change_is_an_update() {
        use CheckStatus::*;
        use MemberState::*;
        let old = view_of(&[("n2", Alive, Passing)]);
        let suspect = view_of(&[("n2", Suspect, Passing)]);
        assert!(diff_events(&old, &suspect).is_empty());
        let mut retagged = old.clone();
        retagged
            .members
            .get_mut("n2")
            .unwrap()
            .meta
            .tags
            .insert("rack".into(), "b".into());
        assert_eq!(
            kinds(&diff_events(&old, &retagged)),
            [(EventKind::MemberUpdate, "n2".into())]
        );
    }
}
