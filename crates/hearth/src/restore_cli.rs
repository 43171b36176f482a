//! `hearth restore --from REPO`: rebuilds a co-op on servers installed afresh from its
//! restic repository. The CLI reads the repository itself, with the password file named:
//! the newest backup of the state (or `--snapshot`'s), the image files it refers to (each
//! uploaded to the agent as `hearth image put` does), and the VMs' snapshots newer than the
//! state backup. `POST /v1/restore` then fills the cluster, and each worker recovers the
//! disks of the VMs placed on it from those snapshots before they start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hearth_agent::state_backups::{FILE, IMAGE_TAG, TAG, time_ms};
use hearth_compute::restic::{Repo, Snapshot};
use hearth_types::api::BackupRow;
use hearth_types::backup::{BackupSnapshot, StateFile, StateRestore};
use hearth_types::desired::DesiredState;

use crate::client::{ApiClient, ClientArgs, ClientError};

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The restic repository the co-op backs up into, as its backup target names it: an
    /// absolute path, sftp:HOST:/PATH, rest:URL or s3:URL.
    #[arg(long, value_name = "REPO")]
    pub from: String,
    /// The file holding the repository's password (kept safe apart from the servers).
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
    /// A file of KEY=value lines given to restic as its environment (an S3 backend's
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, say).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// The backup of the state to restore, by its snapshot id or a prefix of it (`hearth
    /// backups --state` showed them); the newest by default.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
}

pub fn restore(args: &RestoreArgs) -> ExitCode {
    crate::cli::with_client(&args.client, |client, json| run(client, json, args))
}

/// What the repository gave, and what became of it.
#[derive(serde::Serialize)]
struct Report {
    snapshot: String,
    state_time_ms: u64,
    images_restored: Vec<String>,
    images_missing: Vec<String>,
    vms_recovering: Vec<String>,
    vms_lost: Vec<String>,
}

fn run(client: &ApiClient, json: bool, args: &RestoreArgs) -> Result<(), ClientError> {
    let cache = std::env::temp_dir().join(format!("hearth-restore-{}", std::process::id()));
    let repo = repo_of(args, &cache)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Failed(format!("starting the runtime: {e}")))?;
    let result = runtime.block_on(restore_from(client, json, args, &repo, &cache));
    let _ = std::fs::remove_dir_all(&cache);
    result
}

fn repo_of(args: &RestoreArgs, cache: &Path) -> Result<Repo, ClientError> {
    if !args.password_file.is_file() {
        return Err(ClientError::Usage(format!(
            "--password-file: {} is not a file; name the file holding the repository's password",
            args.password_file.display()
        )));
    }
    let env = match &args.env_file {
        None => Vec::new(),
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| hearth_compute::restic::env_lines(&text))
            .map_err(|e| ClientError::Usage(format!("--env-file: {}: {e}", file.display())))?,
    };
    Ok(Repo {
        location: args.from.clone(),
        password_file: args.password_file.clone(),
        cache_dir: cache.join("cache"),
        env,
    })
}

async fn restore_from(
    client: &ApiClient,
    json: bool,
    args: &RestoreArgs,
    repo: &Repo,
    work: &Path,
) -> Result<(), ClientError> {
    let failed = |what: &str, e: String| ClientError::Failed(format!("{what}: {e}"));
    let all = (repo.snapshots().await).map_err(|e| failed(&format!("reading {}", args.from), e))?;
    let chosen = state_snapshot(&all, args.snapshot.as_deref(), &args.from)?;
    // Before anything is uploaded: the cluster must be new and empty.
    let mut restore = StateRestore {
        snapshot: chosen.id.clone(),
        file: StateFile {
            index: 0,
            taken_ms: 0,
            state: DesiredState::default(),
        },
        snapshots: BTreeMap::new(),
        check: true,
    };
    let _: serde_json::Value = client.post_json("/v1/restore", &restore)?;
    eprintln!(
        "reading the state backup {} of {} (by {})",
        chosen.short_id, chosen.time, chosen.hostname
    );
    let bytes = (repo.dump_bytes(&chosen.id, FILE).await).map_err(|e| failed("reading it", e))?;
    restore.file = state_file(&bytes, time_ms(chosen).unwrap_or(0))?;
    let (images_restored, images_missing) =
        put_images_back(client, repo, &all, &restore.file.state, work).await?;
    restore.snapshots = newer_snapshots(&all, &restore.file, &args.from);
    restore.check = false;
    let _: serde_json::Value = client.post_json("/v1/restore", &restore)?;
    let rows: Vec<BackupRow> = client.get("/v1/backups")?;
    let report = Report {
        snapshot: chosen.id.clone(),
        state_time_ms: restore.file.taken_ms,
        images_restored,
        images_missing,
        vms_recovering: (rows.iter().filter(|r| r.backups.recover.is_some()))
            .map(|r| r.name.clone())
            .collect(),
        vms_lost: lost(&restore.file.state, &rows),
    };
    print_report(json, &report, &restore.file.state);
    Ok(())
}

/// The state backup asked for: `--snapshot`'s, else the newest.
fn state_snapshot<'a>(
    all: &'a [Snapshot],
    asked: Option<&str>,
    from: &str,
) -> Result<&'a Snapshot, ClientError> {
    let states = || all.iter().filter(|s| s.tags.iter().any(|t| t == TAG));
    let chosen = match asked {
        Some(id) => states().rfind(|s| s.id.starts_with(id)),
        None => states().next_back(),
    };
    chosen.ok_or_else(|| match asked {
        Some(id) => ClientError::Usage(format!(
            "--snapshot: {from} holds no backup of the state with id {id}"
        )),
        None => ClientError::Failed(format!(
            "{from} holds no backup of a hearth cluster's state (tag {TAG}): the leader stores one every [state] backup_interval into each backup target"
        )),
    })
}

/// The state file's JSON: written with its index, or (older backups) the bare state.
fn state_file(bytes: &[u8], taken_ms: u64) -> Result<StateFile, ClientError> {
    if let Ok(file) = serde_json::from_slice::<StateFile>(bytes) {
        return Ok(file);
    }
    serde_json::from_slice::<DesiredState>(bytes)
        .map(|state| StateFile {
            index: 0,
            taken_ms,
            state,
        })
        .map_err(|e| ClientError::Failed(format!("the state backup does not read: {e}")))
}

/// Puts each image file the state refers to back into the cluster: the restored ones and
/// the missing ones, by sha256.
async fn put_images_back(
    client: &ApiClient,
    repo: &Repo,
    all: &[Snapshot],
    state: &DesiredState,
    work: &Path,
) -> Result<(Vec<String>, Vec<String>), ClientError> {
    std::fs::create_dir_all(work)
        .map_err(|e| ClientError::Failed(format!("{}: {e}", work.display())))?;
    let (mut restored, mut missing) = (Vec::new(), Vec::new());
    for sha256 in hearth_compute::images::image_files(&state.compute) {
        let tag = format!("{IMAGE_TAG}{sha256}");
        let Some(snapshot) = all.iter().rfind(|s| s.tags.contains(&tag)) else {
            eprintln!(
                "warning: the repository holds no copy of image file {sha256}; put its image back with `hearth image put` before its VMs can start"
            );
            missing.push(sha256);
            continue;
        };
        let file = work.join(&sha256);
        (repo.dump_file(&snapshot.id, &sha256, &file).await)
            .map_err(|e| ClientError::Failed(format!("image file {sha256}: {e}")))?;
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        eprintln!(
            "putting image file {} back ({} MiB)",
            &sha256[..12.min(sha256.len())],
            size >> 20
        );
        let mut reader = std::fs::File::open(&file)
            .map_err(|e| ClientError::Failed(format!("{}: {e}", file.display())))?;
        let _: serde_json::Value =
            client.put_stream(&format!("/v1/blobs/{sha256}"), &mut reader)?;
        let _ = std::fs::remove_file(&file);
        restored.push(sha256);
    }
    Ok((restored, missing))
}

/// Per VM of the state, its newest snapshot in the repository made after the state backup
/// (which could not record it), as a snapshot of the state's target at this location.
fn newer_snapshots(
    all: &[Snapshot],
    file: &StateFile,
    from: &str,
) -> BTreeMap<String, BackupSnapshot> {
    let trimmed = |l: &str| l.trim_end_matches('/').to_owned();
    let target = (file.state.backups.targets.values())
        .find(|t| trimmed(&t.value.location) == trimmed(from))
        .map(|t| t.value.name.clone());
    let Some(target) = target else {
        eprintln!(
            "warning: no backup target of the restored state is at {from}: each VM is recovered from the newest snapshot the state recorded"
        );
        return BTreeMap::new();
    };
    let mut newest = BTreeMap::new();
    for snapshot in all {
        let Some(vm) = (snapshot.tags.iter()).find_map(|t| t.strip_prefix("vm=")) else {
            continue;
        };
        let time_ms = time_ms(snapshot).unwrap_or(0);
        if !file.state.compute.vms.contains_key(vm) || time_ms <= file.taken_ms {
            continue;
        }
        // Listed oldest first: the last one seen is the newest.
        newest.insert(
            vm.to_owned(),
            // Short, as the state records the snapshots of its runs.
            BackupSnapshot {
                id: snapshot.short_id.clone(),
                target: target.clone(),
                time_ms,
                host: snapshot.hostname.clone(),
                generation: 0,
                size_bytes: 0,
                added_bytes: 0,
                read_bytes: 0,
                by: None,
            },
        );
    }
    newest
}

/// The VMs left with no backup to recover their disk from, by name.
fn lost(state: &DesiredState, rows: &[BackupRow]) -> Vec<String> {
    let recovering: Vec<&str> = (rows.iter())
        .filter(|r| r.backups.recover.is_some())
        .map(|r| r.vm.as_str())
        .collect();
    (state.compute.vms.values())
        .filter(|vm| !vm.value.deleting && !recovering.contains(&vm.value.id.as_str()))
        .filter(|vm| vm.value.disk.host.is_some())
        .map(|vm| vm.value.request.name.clone())
        .collect()
}

fn print_report(json: bool, report: &Report, state: &DesiredState) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    println!(
        "restored the state of {} (snapshot {}): {} account(s), {} VM(s), {} image(s)",
        crate::output::time_ms(report.state_time_ms),
        report.snapshot,
        state.accounts.len(),
        state.compute.vms.len(),
        state.compute.images.len()
    );
    println!(
        "{} VM(s) get their disk back from their newest backup as they are placed: {}",
        report.vms_recovering.len(),
        report.vms_recovering.join(", ")
    );
    if !report.vms_lost.is_empty() {
        println!(
            "{} VM(s) had no backup and are lost (see `hearth drift`): {}",
            report.vms_lost.len(),
            report.vms_lost.join(", ")
        );
    }
    if !report.images_missing.is_empty() {
        println!(
            "{} image file(s) were not in the repository: put their images back with `hearth image put`",
            report.images_missing.len()
        );
    }
}
