//! Suspicions foca will never settle. foca discards its pending timers whenever it renews its
//! identity (after the cluster declared this node dead, say after a long pause), including
//! the timer that would turn a member it suspects into `down`. Such a member then stays
//! `suspect` in this node's view until it happens to bump its incarnation, which the
//! deterministic simulation showed can take tens of seconds. This tracker declares a member
//! down once it has been suspect at the same incarnation for longer than foca itself ever
//! waits; a live member then refutes by rejoining as a newer incarnation.

use std::collections::HashMap;
use std::time::Duration;

use foca::{Member, State};

use crate::identity::NodeId;
use crate::timing::GossipTiming;

/// How long a member may stay suspect at one incarnation: foca's own limit stretched to its
/// most (5x under poor local health), plus two probe rounds.
pub fn limit(timing: &GossipTiming) -> Duration {
    timing.suspicion_timeout * 6 + timing.probe_interval * 2
}

#[derive(Debug, Default)]
pub struct StaleSuspicions {
    since: HashMap<(NodeId, u16), Duration>,
}

impl StaleSuspicions {
    /// Given every member foca knows and the time now (any monotonic origin), the members to
    /// declare down.
    pub fn check<'a>(
        &mut self,
        members: impl Iterator<Item = &'a Member<NodeId>>,
        now: Duration,
        limit: Duration,
    ) -> Vec<Member<NodeId>> {
        let mut seen = HashMap::new();
        let mut stale = Vec::new();
        for member in members.filter(|m| m.state() == State::Suspect) {
            let key = (member.id().clone(), member.incarnation());
            let since = self.since.get(&key).copied().unwrap_or(now);
            if now.saturating_sub(since) >= limit {
                stale.push(Member::new(
                    member.id().clone(),
                    member.incarnation(),
                    State::Down,
                ));
            } else {
                seen.insert(key, since);
            }
        }
        self.since = seen;
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            bump: 1,
        }
    }

    #[test]
    fn only_a_suspicion_older_than_the_limit_at_one_incarnation_goes_down() {
        let mut tracker = StaleSuspicions::default();
        let limit = Duration::from_secs(10);
        let s = |inc| Member::new(id("b"), inc, State::Suspect);
        let alive = Member::new(id("c"), 0, State::Alive);
        let at = Duration::from_secs;
        assert!(
            tracker
                .check([s(0), alive.clone()].iter(), at(0), limit)
                .is_empty()
        );
        assert!(tracker.check([s(0)].iter(), at(9), limit).is_empty());
        // A refutation (a new incarnation) starts the clock again.
        assert!(tracker.check([s(1)].iter(), at(12), limit).is_empty());
        assert!(tracker.check([s(1)].iter(), at(21), limit).is_empty());
        let down = tracker.check([s(1)].iter(), at(22), limit);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].state(), State::Down);
        assert_eq!(down[0].incarnation(), 1);
        // A member that recovered in between is forgotten.
        assert!(tracker.check([s(2)].iter(), at(30), limit).is_empty());
        assert!(tracker.check([alive].iter(), at(31), limit).is_empty());
        assert!(tracker.check([s(2)].iter(), at(45), limit).is_empty());
    }
}
