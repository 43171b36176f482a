//! Recovery from a permanent loss of quorum: [`recover_alone`] rewrites a stopped node's state
//! file so that the node restarts as the only voter of its group, keeping every write it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use openraft::{Membership, StoredMembership, Vote};
use serde::Serialize;

use crate::store::{self, GapInLog, OpenStoreError, Replacement, StoredRaft};
use crate::types::{RaftNode, node_id};

/// What [`recover_alone`] did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// The node that is now the group's only voter.
    pub voter: String,
    /// The Raft RPC address the new membership gives it.
    pub rpc_addr: String,
    /// The voters of the group's latest configuration before the recovery (both halves of a
    /// joint configuration), by name, sorted; they must be wiped before they start again.
    pub previous_voters: Vec<String>,
    /// The learners of that configuration, by name, sorted; they are no longer members and
    /// must be wiped too.
    pub previous_learners: Vec<String>,
    /// The index of the last log entry the desired state now includes. The node's log
    /// continues after it.
    pub applied_index: u64,
    /// The index this node had applied before the recovery (0 if nothing).
    pub previously_applied_index: u64,
    /// The last index this node knew to be committed before the recovery (0 if none).
    pub committed_index: u64,
    /// Entries after `committed_index` that the recovery kept and applied. A follower learns
    /// that an entry is committed one heartbeat after the leader acknowledged it, so these may
    /// be acknowledged writes; they may also be writes whose client saw a timeout.
    pub n_entries_past_committed: u64,
    /// The term of the vote the node restarts with; it elects itself at the next term.
    pub term: u64,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} is now the only voter of the group (voters before: {}); its desired state \
             includes every log entry up to index {}.",
            self.voter,
            self.previous_voters.join(", "),
            self.applied_index
        )?;
        if self.n_entries_past_committed > 0 {
            writeln!(
                f,
                "{} entries after index {}, the last one {} knew committed, were kept: the old \
                 group may have acknowledged them.",
                self.n_entries_past_committed, self.committed_index, self.voter
            )?;
        }
        let others: Vec<&str> = self
            .previous_voters
            .iter()
            .chain(&self.previous_learners)
            .filter(|name| **name != self.voter)
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            writeln!(
                f,
                "Before starting {} again, remove each one's state directory \
                 (<data_dir>/state); each then rejoins the new group as a learner.",
                others.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Why [`recover_alone`] refused or failed. In every case the stored state is as it was.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// No state file at the path given.
    #[error(
        "{}: there is no hearth state file here; check the data directory (the file is \
         <data_dir>/state/state.redb). Nothing was changed",
        .path.display()
    )]
    Missing { path: PathBuf },
    /// Another process, normally the agent, has the file open.
    #[error(
        "{}: the state file is in use, so the hearth agent on this host is still running: stop \
         it (systemctl stop hearth) and run the recovery again. Nothing was changed",
        .path.display()
    )]
    Locked { path: PathBuf },
    /// The file is not a redb database, or redb's integrity check failed.
    #[error(
        "{}: the state file is damaged ({source}) and cannot be recovered from: recover another \
         surviving server instead, or restore this file from a backup",
        .path.display()
    )]
    Corrupt { path: PathBuf, source: redb::Error },
    /// A stored value did not decode.
    #[error(
        "{}: the stored {what} cannot be decoded ({source}); run the recovery with the hearth \
         version that wrote the file",
        .path.display()
    )]
    Undecodable {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    /// The file is in a redb format this build cannot open.
    #[error(
        "{}: the state file uses redb file format {format}, which this hearth cannot read; run \
         the recovery with the hearth version that wrote it",
        .path.display()
    )]
    UnsupportedFormat { path: PathBuf, format: u8 },
    /// The log lacks an entry between what was applied and its end.
    #[error(
        "{}: the Raft log has lost entry {expected} ({}); the file is damaged: recover another \
         surviving server instead, or restore this file from a backup",
        .path.display(),
        .found.map_or_else(|| "the log ends before it".to_owned(), |i| format!("the next one is {i}"))
    )]
    MissingEntries {
        path: PathBuf,
        expected: u64,
        found: Option<u64>,
    },
    /// The node never joined a group: its log is empty.
    #[error(
        "{}: this node never joined a group (its Raft log is empty), so there is nothing to \
         recover: start the agent and it forms or joins one",
        .path.display()
    )]
    NotFormed { path: PathBuf },
    /// The name given is not in the group's membership: most likely a typo, and a node
    /// restarted under another name would not be the voter.
    #[error(
        "{}: `{name}` is not a member of the group this file belongs to (its members: \
         {members}); give this node's `node_name` from its config",
        .path.display()
    )]
    NotAMember {
        path: PathBuf,
        name: String,
        members: String,
    },
    /// The operating system refused a read or write.
    #[error(
        "{}: cannot read or write the state file ({source}); run the recovery as the agent's \
         user and check that the disk is not full",
        .path.display()
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Any other failure of redb.
    #[error("{}: the state database failed ({source}); check the disk and the system log", .path.display())]
    Database { path: PathBuf, source: redb::Error },
}

impl From<OpenStoreError> for RecoverError {
    fn from(error: OpenStoreError) -> Self {
        match error {
            OpenStoreError::MissingDirectory { dir } => RecoverError::Missing { path: dir },
            OpenStoreError::Locked { path } => RecoverError::Locked { path },
            OpenStoreError::Corrupt { path, source } => RecoverError::Corrupt { path, source },
            OpenStoreError::Undecodable { path, what, source } => {
                RecoverError::Undecodable { path, what, source }
            }
            OpenStoreError::UnsupportedFormat { path, format } => {
                RecoverError::UnsupportedFormat { path, format }
            }
            OpenStoreError::Io { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                RecoverError::Missing { path }
            }
            OpenStoreError::Io { path, source } => RecoverError::Io { path, source },
            OpenStoreError::Database { path, source } => RecoverError::Database { path, source },
        }
    }
}

/// Makes the node `node_name` the only voter of its Raft group, for when a majority of the
/// voters is lost for good. Run it on a stopped agent's state file
/// (`<data_dir>/state/state.redb`) with the node's `node_name` and the Raft RPC address it
/// advertises, then start the agent: it elects itself within an election timeout and takes
/// writes again.
///
/// The desired state it keeps is everything in this node's log: what it had applied, what it
/// knew committed but had not applied yet, and the entries after that. Those last ones are
/// kept, not dropped, because a follower learns that an entry is committed only with the
/// leader's next message: the old group may have acknowledged them, and this log may be their
/// only copy. (It is what Raft itself does when a node is elected: its whole log gets
/// committed.) Writes acknowledged by a majority that did not include this node are lost; with
/// a choice of survivors, recover the one whose log is longest and wipe the others.
///
/// How: in one redb write transaction, the entries not yet applied are applied with the state
/// machine's own function; the state becomes a snapshot at the last log id whose membership
/// is this node alone; the log is emptied and marked purged, committed and applied up to that
/// id; and the vote becomes this node's own, uncommitted, one term above any term it has seen,
/// as if it had just started a campaign. On startup openraft loads the snapshot's membership
/// and, since a lone voter needs no one's vote, wins the next term at its first election
/// tick and appends a blank entry of that term after the snapshot. A crash before the commit
/// leaves the old store whole. On any error nothing stored changes: a missing or locked file
/// is not even opened; otherwise redb's integrity check at open may rewrite its own
/// bookkeeping, as at every agent start.
///
/// **The other members must be wiped before they start again**: remove each one's state
/// directory (`<data_dir>/state`), and it rejoins the new group through gossip, as a learner
/// first, like a new server. This node cannot safely ignore or out-vote a member that comes
/// back with the old group's data. Raft RPCs carry no group identity, and two of three old
/// voters still form a majority of the old configuration: they elect a leader among themselves
/// at a term above this node's, and openraft makes any node follow a leader of a higher term,
/// truncating its log where it differs, which would discard writes made since the recovery.
/// Raising this node's term does not help, since they learn it from its refusals and go
/// beyond. Telling the groups apart needs an id of the group stored with the state and carried
/// by every Raft RPC and announcement, created at formation and renewed by each recovery, with
/// RPCs of another group refused; that is a change of the wire protocol, not done here.
pub fn recover_alone(
    path: &Path,
    node_name: &str,
    rpc_addr: SocketAddr,
) -> Result<RecoveryReport, RecoverError> {
    // Checked first because redb's open creates nothing but reports a missing file only as
    // an I/O error.
    if !path.is_file() {
        return Err(RecoverError::Missing {
            path: path.to_path_buf(),
        });
    }
    let me = RaftNode::new(node_name, rpc_addr);
    store::replace_offline(path, |stored| plan_recovery(path, stored, me))
}

/// Decides, from what the store holds, what it becomes and what to tell the operator.
fn plan_recovery(
    path: &Path,
    mut stored: StoredRaft,
    me: RaftNode,
) -> Result<(Replacement, RecoveryReport), RecoverError> {
    let Some(last_log_id) = stored.last_log_id() else {
        return Err(RecoverError::NotFormed {
            path: path.to_path_buf(),
        });
    };
    let previously_applied = stored.last_applied;
    let known_committed = stored.committed.max(previously_applied);
    let n_entries_past_committed = stored
        .entries
        .iter()
        .filter(|e| known_committed.is_none_or(|c| e.log_id.index > c.index))
        .count() as u64;
    stored.apply_log().map_err(
        |GapInLog { expected, found }| RecoverError::MissingEntries {
            path: path.to_path_buf(),
            expected,
            found,
        },
    )?;

    let me_id = node_id(&me.name);
    let previous = stored.membership.membership();
    let name_of = |id: u64| {
        previous
            .get_node(&id)
            .map_or(id.to_string(), |n| n.name.clone())
    };
    let names = |ids: &mut dyn Iterator<Item = u64>| -> Vec<String> {
        let sorted: BTreeSet<String> = ids.map(name_of).collect();
        sorted.into_iter().collect()
    };
    let previous_voters = names(&mut previous.voter_ids());
    let previous_learners = names(&mut previous.learner_ids());
    if previous.get_node(&me_id).is_none() {
        return Err(RecoverError::NotAMember {
            path: path.to_path_buf(),
            name: me.name,
            members: names(&mut previous.nodes().map(|(id, _)| *id)).join(", "),
        });
    }

    // One above both the vote's term and the last entry's: no term goes back, and the vote is
    // one this node could hold in Raft (its own campaign), not a vote it never cast.
    let seen_term = stored.vote.map_or(0, |v| v.leader_id.term);
    let term = seen_term.max(last_log_id.leader_id.term) + 1;
    let alone = Membership::new(
        vec![BTreeSet::from([me_id])],
        BTreeMap::from([(me_id, me.clone())]),
    );
    let report = RecoveryReport {
        voter: me.name,
        rpc_addr: me.rpc_addr,
        previous_voters,
        previous_learners,
        applied_index: last_log_id.index,
        previously_applied_index: previously_applied.map_or(0, |id| id.index),
        committed_index: known_committed.map_or(0, |id| id.index),
        n_entries_past_committed,
        term,
    };
    let replacement = Replacement {
        vote: Vote::new(term, me_id),
        last_log_id,
        membership: StoredMembership::new(Some(last_log_id), alone),
        state: stored.state,
    };
    Ok((replacement, report))
}

#[cfg(test)]
mod tests;
