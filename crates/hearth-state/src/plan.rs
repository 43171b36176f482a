//! The pure decisions of who votes: who forms the group when there is none, which live nodes
//! join as learners (workers stay learners), which learners become voters, and which
//! long-dead voters are replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::types::RaftNode;

/// The most voters a group has; the rest stay learners.
pub const MAX_VOTERS: usize = 5;

/// A server or witness that gossip knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: u64,
    pub node: RaftNode,
    /// Alive or suspect in gossip.
    pub up: bool,
    /// For a node that is not up: how long it has been down (as far as this node knows).
    pub down_for: Duration,
    /// It belongs to a formed group already.
    pub in_group: bool,
    /// A server or witness; workers only follow the group as learners.
    pub can_vote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddLearner { id: u64, node: RaftNode },
    SetVoters(BTreeSet<u64>),
}

/// The number of voters to aim for given `n` eligible nodes: as many as possible up to
/// [`MAX_VOTERS`], but odd above two, since a fourth voter raises the quorum without
/// surviving more failures.
pub fn target_voters(n: usize) -> usize {
    let n = n.min(MAX_VOTERS);
    if n > 2 && n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

/// The voters to form a new group with, when this node (`me`) is the one to form it: no live
/// candidate is in a group yet, at least `expect` servers and witnesses are up, and `me` is
/// the lowest-named of them. The group starts with the first [`target_voters`] of them by
/// name; its leader adds the rest as learners. `None` when this node must wait.
pub fn formation(
    candidates: &[Candidate],
    me: &str,
    expect: usize,
) -> Option<BTreeMap<u64, RaftNode>> {
    let mut up: Vec<&Candidate> = candidates.iter().filter(|c| c.up && c.can_vote).collect();
    up.sort_by(|a, b| a.node.name.cmp(&b.node.name));
    // A group exists: its leader will add this node as a learner.
    let grouped = up.iter().any(|c| c.in_group);
    if grouped || up.len() < expect || up.first().is_none_or(|c| c.node.name != me) {
        return None;
    }
    let voters = up.iter().take(target_voters(up.len()));
    Some(voters.map(|c| (c.id, c.node.clone())).collect())
}

/// What the leader should change. Applied one change at a time; the plan is recomputed after
/// each, so it only needs to make progress.
pub fn plan(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    candidates: &[Candidate],
    replace_after: Duration,
) -> Vec<Change> {
    let mut changes: Vec<Change> = candidates
        .iter()
        .filter(|c| c.up && !voters.contains(&c.id) && !learners.contains(&c.id))
        .map(|c| Change::AddLearner {
            id: c.id,
            node: c.node.clone(),
        })
        .collect();
    let is_up = |id: &u64| candidates.iter().any(|c| c.id == *id && c.up);
    let long_dead = |id: &u64| {
        candidates
            .iter()
            .find(|c| c.id == *id)
            .is_some_and(|c| !c.up && c.down_for >= replace_after)
    };
    let can_vote = |id: &u64| candidates.iter().any(|c| c.id == *id && c.can_vote);
    let mut spare: Vec<u64> = learners
        .iter()
        .copied()
        .filter(|id| is_up(id) && can_vote(id))
        .collect();
    let mut next = voters.clone();
    // Replace long-dead voters while a live learner can take their place.
    for dead in voters.iter().filter(|id| long_dead(id)) {
        let Some(replacement) = spare.pop() else {
            break;
        };
        next.remove(dead);
        next.insert(replacement);
    }
    let eligible = next.len() + spare.len();
    while next.len() < target_voters(eligible) {
        let Some(learner) = spare.pop() else {
            break;
        };
        next.insert(learner);
    }
    if next != *voters {
        changes.push(Change::SetVoters(next));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, up: bool, down_secs: u64) -> Candidate {
        Candidate {
            id,
            node: RaftNode {
                name: format!("n{id}"),
                rpc_addr: format!("127.0.0.{id}:7947"),
            },
            up,
            down_for: Duration::from_secs(down_secs),
            in_group: true,
            can_vote: true,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    const REPLACE: Duration = Duration::from_secs(60);

    fn fresh(id: u64) -> Candidate {
        Candidate {
            in_group: false,
            ..candidate(id, true, 0)
        }
    }

    #[test]
    fn the_lowest_named_live_server_forms_the_group_once_enough_are_up() {
        let two = [fresh(2), fresh(1)];
        assert_eq!(formation(&two, "n1", 3), None, "too few up");
        let three = [fresh(2), fresh(1), fresh(3)];
        assert_eq!(formation(&three, "n2", 3), None, "n2 is not the lowest");
        let formed = formation(&three, "n1", 3).expect("n1 forms");
        assert_eq!(formed.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        // Four up: three voters (odd), the fourth joins later as a learner.
        let four = [fresh(4), fresh(3), fresh(2), fresh(1)];
        assert_eq!(formation(&four, "n1", 3).unwrap().len(), 3);
        // Workers do not count, nor do nodes that are down.
        let mut worker = fresh(0);
        worker.can_vote = false;
        let mut down = fresh(5);
        down.up = false;
        let mixed = [worker, down, fresh(1), fresh(2)];
        assert_eq!(formation(&mixed, "n1", 3), None);
        assert_eq!(formation(&mixed, "n1", 2).unwrap().len(), 2);
    }

    #[test]
    fn no_second_group_is_formed_beside_one_that_exists() {
        let three = [fresh(1), fresh(2), candidate(3, true, 0)];
        assert_eq!(formation(&three, "n1", 3), None);
    }

    #[test]
    fn new_servers_join_as_learners_then_become_voters() {
        let cands = [
            candidate(1, true, 0),
            candidate(2, true, 0),
            candidate(3, true, 0),
        ];
        let changes = plan(&set(&[1]), &set(&[]), &cands, REPLACE);
        assert_eq!(changes.len(), 2);
        assert!(matches!(changes[0], Change::AddLearner { id: 2, .. }));
        let changes = plan(&set(&[1]), &set(&[2, 3]), &cands, REPLACE);
        assert_eq!(changes, [Change::SetVoters(set(&[1, 2, 3]))]);
        assert!(plan(&set(&[1, 2, 3]), &set(&[]), &cands, REPLACE).is_empty());
    }

    #[test]
    fn at_most_five_voters_and_odd() {
        let cands: Vec<_> = (1..=7).map(|i| candidate(i, true, 0)).collect();
        let changes = plan(&set(&[1]), &set(&[2, 3, 4, 5, 6, 7]), &cands, REPLACE);
        let [Change::SetVoters(voters)] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        assert_eq!(voters.len(), 5);
        // Four eligible nodes make three voters and a learner.
        let changes = plan(&set(&[1]), &set(&[2, 3, 4]), &cands[..4], REPLACE);
        let [Change::SetVoters(voters)] = changes.as_slice() else {
            panic!("{changes:?}");
        };
        assert_eq!(voters.len(), 3);
    }

    #[test]
    fn workers_are_learners_and_never_voters() {
        let mut cands: Vec<_> = (1..=3).map(|i| candidate(i, true, 0)).collect();
        for c in &mut cands[1..] {
            c.can_vote = false;
        }
        let changes = plan(&set(&[1]), &set(&[]), &cands, REPLACE);
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|c| matches!(c, Change::AddLearner { .. }))
        );
        assert!(plan(&set(&[1]), &set(&[2, 3]), &cands, REPLACE).is_empty());
    }

    #[test]
    fn two_servers_make_two_voters() {
        let cands = [candidate(1, true, 0), candidate(2, true, 0)];
        assert_eq!(
            plan(&set(&[1]), &set(&[2]), &cands, REPLACE),
            [Change::SetVoters(set(&[1, 2]))]
        );
    }

    #[test]
    fn long_dead_voters_are_replaced_only_by_live_learners() {
        let cands = [
            candidate(1, true, 0),
            candidate(2, true, 0),
            candidate(3, false, 120),
            candidate(4, true, 0),
        ];
        assert_eq!(
            plan(&set(&[1, 2, 3]), &set(&[4]), &cands, REPLACE),
            [Change::SetVoters(set(&[1, 2, 4]))]
        );
        // Not dead long enough: keep it.
        let mut recent = cands.clone();
        recent[2].down_for = Duration::from_secs(10);
        assert!(plan(&set(&[1, 2, 3]), &set(&[4]), &recent, REPLACE).is_empty());
        // No replacement: keep the dead voter rather than shrink the group.
        assert!(plan(&set(&[1, 2, 3]), &set(&[]), &cands[..3], REPLACE).is_empty());
    }
}
