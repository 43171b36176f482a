//! Backups of the desired state itself, for disaster recovery: every `[state]
//! backup_interval` the leader stores the whole state (accounts, plans, images, pools, VM
//! definitions, records, notices, zones, backup targets and snapshots) as JSON into each
//! backup target's restic repository, tagged `hearth-state`, and records the snapshot (or
//! why not) through the log. `due` is pure; older state snapshots are forgotten (not
//! pruned: the VMs' retention prunes) beyond the last 24, 7 daily, 4 weekly and 12 monthly.
//! The image files the state refers to go in too, each once (tagged `image-file=SHA256`), so
//! `hearth restore` brings back the images the VMs' disks are overlays on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_compute::restic::Repo;
use hearth_state::model::Command;
use hearth_state::model::backups::{BackupCommand, StateResult};
use hearth_state::node::StateNode;
use hearth_types::backup::{BackupTarget, StateFile, StateSnapshot};
use hearth_types::desired::DesiredState;
use tokio_util::sync::CancellationToken;

use crate::unix_ms;

/// The tag of the state's snapshots.
pub const TAG: &str = "hearth-state";
/// The file the state is inside its snapshots.
pub const FILE: &str = "hearth-state.json";
/// The tag of an image file's snapshot, before its sha256.
pub const IMAGE_TAG: &str = "image-file=";
/// The state level that reads backup commands.
const BACKUP_LEVEL: u32 = 8;
/// How soon a failed attempt is made again (at most).
const RETRY: Duration = Duration::from_secs(600);
/// The state snapshots kept: `restic forget` flags.
const KEEP: [(&str, u32); 4] = [
    ("--keep-last", 24),
    ("--keep-daily", 7),
    ("--keep-weekly", 4),
    ("--keep-monthly", 12),
];

/// The targets the state is due to be backed up into at `now_ms`: never yet, `every` after
/// the last attempt, or sooner (at most [`RETRY`]) after a failure.
pub fn due(desired: &DesiredState, now_ms: u64, every: Duration) -> Vec<BackupTarget> {
    let retry = every.min(RETRY);
    desired
        .backups
        .targets
        .values()
        .filter(|target| {
            let Some(backups) = desired.backups.state.get(&target.value.name) else {
                return true;
            };
            let wait = match backups.failures {
                0 => every,
                _ => retry,
            };
            backups.attempted_ms.saturating_add(wait.as_millis() as u64) <= now_ms
        })
        .map(|target| target.value.clone())
        .collect()
}

/// Runs until `shutdown`: the leader backs the state up into each target due.
pub async fn run(
    state: StateNode,
    data_dir: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::ticks::Ticks::new(every.min(Duration::from_secs(10)), shutdown);
    while ticks.next().await {
        if !state.is_leader() || state.cluster_level() < BACKUP_LEVEL {
            continue;
        }
        let desired = state.reader().current();
        for target in due(&desired, unix_ms(), every) {
            let at_ms = unix_ms();
            let result = match store(&state, &desired, &target, &data_dir).await {
                Ok(snapshot) => {
                    tracing::info!(target = %target.name, snapshot = %snapshot.id, "the state is backed up");
                    StateResult::Stored { snapshot }
                }
                Err(error) => {
                    tracing::warn!(target = %target.name, %error, "backing the state up failed");
                    StateResult::Failed { error }
                }
            };
            let command = Command::Backup {
                command: BackupCommand::StateBackup {
                    target: target.name.clone(),
                    host: state.name().to_owned(),
                    at_ms,
                    result,
                },
            };
            if let Err(error) = state.submit(command).await {
                tracing::warn!(%error, "recording a backup of the state");
            }
        }
    }
}

/// Stores `desired` into `target`'s repository, then forgets the state snapshots no more
/// kept.
async fn store(
    state: &StateNode,
    desired: &DesiredState,
    target: &BackupTarget,
    data_dir: &Path,
) -> Result<StateSnapshot, String> {
    let repo = hearth_compute::backup_runs::repo_of(target, data_dir)?;
    let file = StateFile {
        index: state.status().applied_index + desired.index_base,
        taken_ms: unix_ms(),
        state: desired.clone(),
    };
    let json = serde_json::to_vec(&file).map_err(|e| format!("the state as JSON: {e}"))?;
    let file = data_dir.join("state-backup.json");
    std::fs::write(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
    let stored = store_file(&repo, state.name(), &file).await;
    let _ = std::fs::remove_file(&file);
    let summary = stored?;
    if let Err(error) = repo.forget_tagged(TAG, &KEEP, "UTC", false).await {
        tracing::warn!(target = %target.name, %error, "forgetting old state snapshots");
    }
    store_images(&repo, state.name(), desired, data_dir).await?;
    Ok(StateSnapshot {
        id: summary.snapshot_id,
        time_ms: unix_ms(),
        index: state.status().applied_index,
        host: state.name().to_owned(),
        size_bytes: json.len() as u64,
    })
}

/// Stores each image file the state refers to that the repository lacks, from this node's
/// store (a server keeps every image file the state refers to).
async fn store_images(
    repo: &Repo,
    host: &str,
    desired: &DesiredState,
    data_dir: &Path,
) -> Result<(), String> {
    let images = hearth_compute::blobs::BlobStore::new(data_dir.join("images"));
    let stored: BTreeSet<String> = (repo.snapshots().await?.into_iter())
        .flat_map(|s| s.tags)
        .filter_map(|tag| tag.strip_prefix(IMAGE_TAG).map(str::to_owned))
        .collect();
    for sha256 in hearth_compute::images::image_files(&desired.compute) {
        if stored.contains(&sha256) {
            continue;
        }
        if !images.has(&sha256) {
            tracing::warn!(%sha256, "an image file to back up is not on this node yet");
            continue;
        }
        let tag = format!("{IMAGE_TAG}{sha256}");
        repo.store(&sha256, &tag, host, &images.path(&sha256))
            .await
            .map_err(|e| format!("image file {sha256}: {e}"))?;
        tracing::info!(%sha256, "an image file is backed up");
    }
    Ok(())
}

/// A restic snapshot's time (RFC 3339, with its offset) as Unix ms.
pub fn time_ms(snapshot: &hearth_compute::restic::Snapshot) -> Option<u64> {
    let at: jiff::Timestamp = snapshot.time.parse().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

async fn store_file(
    repo: &Repo,
    host: &str,
    file: &Path,
) -> Result<hearth_compute::restic::Summary, String> {
    repo.ensure().await?;
    repo.store(FILE, TAG, host, file).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::backup::StateBackups;
    use hearth_types::desired::Versioned;

    #[test]
    fn a_target_is_due_every_interval_and_sooner_after_a_failure() {
        let mut desired = DesiredState::default();
        let target = BackupTarget {
            name: "local".into(),
            location: "/srv/backups".into(),
            password_file: "/etc/hearth/restic.pass".into(),
            env_file: None,
        };
        desired.backups.targets.insert(
            "local".into(),
            Versioned {
                version: 1,
                value: target,
            },
        );
        let hour = Duration::from_secs(3600);
        assert_eq!(due(&desired, 5, hour).len(), 1, "never backed up");
        let at = 1_000_000;
        desired.backups.state.insert(
            "local".into(),
            StateBackups {
                attempted_ms: at,
                ..Default::default()
            },
        );
        assert!(due(&desired, at + 3_599_999, hour).is_empty());
        assert_eq!(due(&desired, at + 3_600_000, hour).len(), 1);
        desired.backups.state.get_mut("local").unwrap().failures = 1;
        assert!(due(&desired, at + 599_999, hour).is_empty());
        assert_eq!(due(&desired, at + 600_000, hour).len(), 1);
    }

    #[test]
    fn restic_times_read_with_their_offset() {
        let at = |time: &str| {
            time_ms(&hearth_compute::restic::Snapshot {
                id: "a".into(),
                short_id: "a".into(),
                time: time.into(),
                hostname: "n1".into(),
                tags: vec![],
                paths: vec![],
            })
        };
        assert_eq!(at("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(at("1970-01-01T01:00:02.25+01:00"), Some(2_250));
        assert_eq!(at("yesterday"), None);
    }
}
