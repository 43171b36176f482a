//! Group commit on the leader: writes that arrive while earlier ones are being committed
//! travel together as one `Command::Batch` log entry, so one fsync and one replication round
//! serve many writes. openraft 0.9 writes each log entry with its own awaited fsync, which
//! otherwise caps the leader at one write per fsync.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use openraft::error::RaftError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{Command, Outcome};
use crate::reply::{StateError, WriteResult, write_error};
use crate::types::Raft;

/// The most commands one log entry carries.
pub const MAX_BATCH: usize = 256;
/// Batches being committed at once. While they are in flight, new writes queue and form the
/// next batch.
const IN_FLIGHT: usize = 2;

/// One write waiting for its batch.
pub struct Pending {
    pub command: Command,
    pub reply: oneshot::Sender<Result<WriteResult, StateError>>,
}

/// Takes the next batch off the front of `queue`: up to `max` commands, in arrival order,
/// no two of which touch the same object. A command whose object is already in the batch
/// stays queued, ahead of everything after it, so two writes to one object are never in one
/// entry: each committed change of an object gets its own log index, which is its version.
/// Commands of no object (`key` gives `None`: audit entries, which only append) never wait
/// for one another.
pub fn take_batch<T>(
    queue: &mut VecDeque<T>,
    max: usize,
    key: impl Fn(&T) -> Option<String>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut batch = Vec::new();
    let mut kept = VecDeque::new();
    while let Some(item) = queue.pop_front() {
        if batch.len() < max && key(&item).is_none_or(|k| seen.insert(k)) {
            batch.push(item);
        } else {
            kept.push_back(item);
        }
    }
    *queue = kept;
    batch
}

/// Feeds queued writes to Raft in batches until `shutdown` or until every sender is gone.
pub async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut queue: VecDeque<Pending> = VecDeque::new();
    loop {
        if queue.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                pending = rx.recv() => match pending {
                    Some(pending) => queue.push_back(pending),
                    None => return,
                },
            }
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        while let Ok(pending) = rx.try_recv() {
            queue.push_back(pending);
        }
        // A writer that gave up (timed out) no longer waits; its command is not sent.
        queue.retain(|pending| !pending.reply.is_closed());
        let batch = take_batch(&mut queue, MAX_BATCH, |p| p.command.batch_key());
        if batch.is_empty() {
            continue;
        }
        // Entries reach Raft in the order their batches were taken; only the waiting for
        // their commit runs concurrently.
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let single = commands.len() == 1;
        let command = if single {
            commands.into_iter().next().expect("one command")
        } else {
            Command::Batch { commands }
        };
        match raft.client_write_ff(command).await {
            Ok(receiver) => {
                tokio::spawn(async move {
                    let result = match receiver.await {
                        Ok(Ok(response)) => Ok((response.log_id.index, response.data)),
                        Ok(Err(error)) => Err(write_error(RaftError::APIError(error))),
                        Err(_) => Err(StateError::Fatal("raft stopped".into())),
                    };
                    answer(replies, single, result);
                    drop(permit);
                });
            }
            Err(fatal) => answer(replies, single, Err(write_error(RaftError::Fatal(fatal)))),
        }
    }
}

/// Answers each writer of a committed (or failed) entry with its own outcome.
fn answer(
    replies: Vec<oneshot::Sender<Result<WriteResult, StateError>>>,
    single: bool,
    result: Result<(u64, Outcome), StateError>,
) {
    match result {
        Ok((index, outcome)) => {
            let outcomes = match outcome {
                Outcome::Many { outcomes } if !single => outcomes,
                other => vec![other; replies.len()],
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(WriteResult { index, outcome }));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_order_and_never_holds_one_object_twice() {
        let mut queue: VecDeque<(&str, u32)> =
            [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5)].into();
        let batch = take_batch(&mut queue, 10, |(k, _)| Some(k.to_string()));
        assert_eq!(batch, [("a", 1), ("b", 2), ("c", 4)]);
        assert_eq!(queue, [("a", 3), ("a", 5)]);
        let batch = take_batch(&mut queue, 10, |(k, _)| Some(k.to_string()));
        assert_eq!(batch, [("a", 3)]);
        assert_eq!(queue, [("a", 5)]);
    }

    #[test]
    fn audit_entries_share_an_entry_and_wait_for_nothing() {
        use hearth_types::account::AuditEntry;
        let audit = |at| Command::Audit {
            entry: AuditEntry {
                at,
                who: "root".into(),
                ..Default::default()
            },
        };
        // A burst of writes, each followed by its audit entry: one batch takes them all
        // (audit entries used to go one per log entry and pile up behind the writes).
        let mut queue: VecDeque<Command> = (0..100)
            .flat_map(|n| {
                let records = hearth_types::desired::RecordSet {
                    name: format!("n{n}"),
                    ttl: None,
                    values: Vec::new(),
                };
                [
                    Command::PutRecords {
                        records,
                        expect: crate::model::Expect::Any,
                    },
                    audit(n),
                ]
            })
            .collect();
        let batch = take_batch(&mut queue, MAX_BATCH, Command::batch_key);
        assert_eq!(batch.len(), 200);
        assert!(queue.is_empty());
        // Even two equal entries go together.
        let mut queue: VecDeque<Command> = [audit(1), audit(1)].into();
        assert_eq!(
            take_batch(&mut queue, MAX_BATCH, Command::batch_key).len(),
            2
        );
    }

    #[test]
    fn a_batch_stops_at_its_size_limit() {
        let mut queue: VecDeque<u32> = (0..10).collect();
        let batch = take_batch(&mut queue, 4, |n| Some(n.to_string()));
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(queue.len(), 6);
        assert_eq!(queue.front(), Some(&4));
    }
}
