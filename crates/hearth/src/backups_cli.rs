//! `hearth backup` and `hearth backups`: back a VM up now (following the run until its
//! snapshot is stored), list VMs' backups and their snapshots, and (admins) the backup
//! targets, restic repositories named with the files on each worker holding their secrets.

use std::time::{Duration, Instant};

use clap::Subcommand;
use hearth_types::api::{BackupRow, NewBackup, PutBackupTarget, RestoreBackup, StateBackupRow};
use hearth_types::backup::{
    BackupPolicy, BackupSnapshot, BackupTarget, Keep, RestoreStage, ScheduleChoice,
};
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back VM up now, while it runs: its disk is copied at this instant and stored in the
    /// backup target's restic repository (only what changed since its last backup is
    /// added). Waits until the snapshot is stored, printing progress (or --no-wait).
    Now {
        /// The VM's name or id.
        vm: String,
        /// The backup target (default: that of its last backup, the only one, or the one named `default`).
        #[arg(long)]
        target: Option<String>,
        /// Return once the backup is asked for.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restore VM from one of its snapshots (`hearth backups VM` lists them): the VM stops,
    /// its disk is replaced by the snapshot's (the disk it had is archived on its host,
    /// never deleted), and it runs again if it ran. Asks for confirmation, naming the
    /// snapshot's time, unless --yes. Waits until it is done, printing progress.
    Restore {
        /// The VM's name or id.
        vm: String,
        /// The snapshot's id.
        snapshot: String,
        /// Do not ask: the VM's disk is replaced by the snapshot's.
        #[arg(long)]
        yes: bool,
        /// Restore into a new VM of this name instead, like VM (size, image, pools,
        /// owner) with addresses of its own; VM is left as it is, and nothing is asked.
        #[arg(long, value_name = "NAME")]
        into: Option<String>,
        /// Return once the restore is asked for.
        #[arg(long)]
        no_wait: bool,
    },
    /// End VM's restore while its disk is not yet replaced (its worker is gone, say, or the
    /// snapshot cannot be fetched): the VM keeps the disk it had and runs again if it ran.
    /// Refused once the restored disk is recorded as the VM's: its worker finishes that.
    AbortRestore {
        /// The VM's name or id.
        vm: String,
    },
    /// Give VM a daily backup schedule of its own, none (--off), or its plan's (--plan)
    /// (admins). A VM follows its owner's plan's schedule (`hearth plan set --backup-at`)
    /// unless given one here. Its first scheduled backup is made at once, then one a day
    /// at the time; after each, the snapshots the retention keeps no more are forgotten
    /// and their data pruned from the repository.
    Schedule {
        /// The VM's name or id.
        vm: String,
        #[command(flatten)]
        policy: ScheduleArgs,
        /// No scheduled backups for this VM.
        #[arg(long, conflicts_with_all = ["at", "plan"])]
        off: bool,
        /// Follow its owner's plan's schedule again.
        #[arg(long, conflicts_with = "at")]
        plan: bool,
    },
    /// Backup targets (admins): restic repositories backups go into.
    #[command(subcommand)]
    Target(TargetCommand),
}

/// A daily schedule and its retention, as flags.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// Back up every day at this time of day (HH:MM, 24 hours, in --time-zone).
    #[arg(long, value_name = "HH:MM", required_unless_present_any = ["off", "plan"])]
    at: Option<String>,
    /// The backup target (default: the only one, or the one named `default`).
    #[arg(long, requires = "at")]
    target: Option<String>,
    #[command(flatten)]
    keep: KeepArgs,
}

/// A schedule's time zone and retention, as flags (shared with `hearth plan set`).
#[derive(clap::Args)]
pub struct KeepArgs {
    /// The co-op's time zone (IANA, such as Europe/Berlin): for the time of day and for
    /// which day a snapshot belongs to.
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = Keep::default().daily)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks.
    #[arg(long, value_name = "N", default_value_t = Keep::default().weekly)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months (all three 0: keep every
    /// snapshot).
    #[arg(long, value_name = "N", default_value_t = Keep::default().monthly)]
    pub keep_monthly: u32,
}

impl KeepArgs {
    /// The policy of a backup into `target` every day at `at`.
    pub fn policy(&self, target: String, at: String) -> BackupPolicy {
        BackupPolicy {
            target,
            at,
            time_zone: self.time_zone.clone(),
            keep: Keep {
                daily: self.keep_daily,
                weekly: self.keep_weekly,
                monthly: self.keep_monthly,
            },
        }
    }
}

/// A schedule in one cell: `03:00 Europe/Berlin → local, keep 7d 4w 6m`.
pub fn schedule_cell(policy: Option<&BackupPolicy>) -> String {
    let Some(p) = policy else {
        return "-".into();
    };
    let keep = match p.keep.keeps_all() {
        true => "keep all".into(),
        false => format!(
            "keep {}d {}w {}m",
            p.keep.daily, p.keep.weekly, p.keep.monthly
        ),
    };
    format!("{} {} → {}, {keep}", p.at, p.time_zone, p.target)
}

/// The only target, or the one named `default`, for a schedule that names none.
fn only_target(client: &ApiClient) -> Result<String, ClientError> {
    let list: Vec<hearth_types::desired::Versioned<BackupTarget>> =
        client.get("/v1/backup-targets")?;
    let names: Vec<&str> = list.iter().map(|t| t.value.name.as_str()).collect();
    match names.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ if names.contains(&"default") => Ok("default".into()),
        [] => Err(ClientError::Usage(
            "target: the co-op has no backup target yet: hearth backup target put NAME --location … --password-file …".into(),
        )),
        _ => Err(ClientError::Usage(format!(
            "target: give --target, one of {}",
            names.join(", ")
        ))),
    }
}

fn schedule(
    client: &ApiClient,
    json: bool,
    vm: &str,
    args: ScheduleArgs,
    (off, plan): (bool, bool),
) -> Result<(), ClientError> {
    let choice = match (off, plan, args.at) {
        (true, _, _) => ScheduleChoice::Off,
        (_, true, _) => ScheduleChoice::Plan,
        (_, _, Some(at)) => {
            let target = match args.target {
                Some(target) => target,
                None => only_target(client)?,
            };
            ScheduleChoice::Own {
                policy: args.keep.policy(target, at),
            }
        }
        (false, false, None) => {
            return Err(ClientError::Usage(
                "give --at HH:MM, --off or --plan".into(),
            ));
        }
    };
    let _: Value = client.put(&format!("/v1/vms/{vm}/backup-schedule"), &choice)?;
    let row: BackupRow = client.get(&format!("/v1/vms/{vm}/backups"))?;
    if json {
        print_json(&row);
        return Ok(());
    }
    match (&row.policy, row.next_ms) {
        (Some(policy), Some(next)) => println!(
            "{vm}: backed up daily at {} {}; next at {} (UTC)",
            policy.at,
            policy.time_zone,
            crate::output::time_ms(next)
        ),
        _ => println!("{vm}: no scheduled backups"),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TargetCommand {
    /// Add or change a target. The password and key files must exist on every worker
    /// (root-readable only, say); their contents never enter the cluster's state or logs.
    Put {
        /// Letters, digits and `-`.
        name: String,
        /// Where the repository is, as restic names it: `/srv/backups`,
        /// `sftp:backup@host:/srv/hearth`, `rest:https://host:8000/hearth/` or
        /// `s3:https://s3.example.org/bucket`. It is made at once by the node that
        /// takes this command, if it can (else by the first backup).
        #[arg(long)]
        location: String,
        /// The file on each worker holding the repository's password.
        #[arg(long)]
        password_file: String,
        /// A file on each worker of `KEY=value` lines for restic's environment (S3 keys:
        /// `AWS_ACCESS_KEY_ID=…`, `AWS_SECRET_ACCESS_KEY=…`).
        #[arg(long)]
        env_file: Option<String>,
    },
    /// The targets.
    List,
    /// Remove a target (its repository and snapshots stay where they are).
    Rm { name: String },
}

pub fn backup(client: &ApiClient, json: bool, command: BackupCommand) -> Result<(), ClientError> {
    match command {
        BackupCommand::Now {
            vm,
            target,
            no_wait,
        } => now(client, json, &vm, target, no_wait),
        BackupCommand::Restore {
            vm,
            snapshot,
            yes: _,
            into: Some(into),
            no_wait,
        } => restore_into(client, json, (&vm, &snapshot), &into, no_wait),
        BackupCommand::Restore {
            vm,
            snapshot,
            yes,
            into: None,
            no_wait,
        } => restore(client, json, &vm, &snapshot, yes, no_wait),
        BackupCommand::AbortRestore { vm } => {
            let answer: Value = client.delete(&format!("/v1/vms/{vm}/restore"))?;
            report(
                json,
                &answer,
                &format!("{vm}: restore aborted; it keeps the disk it had"),
            );
            Ok(())
        }
        BackupCommand::Schedule {
            vm,
            policy,
            off,
            plan,
        } => schedule(client, json, &vm, policy, (off, plan)),
        BackupCommand::Target(TargetCommand::Put {
            name,
            location,
            password_file,
            env_file,
        }) => {
            let target = PutBackupTarget {
                location,
                password_file,
                env_file,
            };
            let answer: Value = client.put(&format!("/v1/backup-targets/{name}"), &target)?;
            report(json, &answer, &format!("backup target {name}: set"));
            Ok(())
        }
        BackupCommand::Target(TargetCommand::List) => {
            let list: Vec<hearth_types::desired::Versioned<BackupTarget>> =
                client.get("/v1/backup-targets")?;
            if json {
                print_json(&list);
                return Ok(());
            }
            print_table(
                &["NAME", "LOCATION", "PASSWORD FILE", "ENV FILE"],
                list.iter().map(|t| {
                    let t = &t.value;
                    vec![
                        t.name.clone(),
                        t.location.clone(),
                        t.password_file.clone(),
                        t.env_file.clone().unwrap_or_else(|| "-".into()),
                    ]
                }),
            );
            Ok(())
        }
        BackupCommand::Target(TargetCommand::Rm { name }) => {
            let answer: Value = client.delete(&format!("/v1/backup-targets/{name}"))?;
            report(json, &answer, &format!("backup target {name}: removed"));
            Ok(())
        }
    }
}

/// Asks for a backup, then follows it until it is stored (or given up).
fn now(
    client: &ApiClient,
    json: bool,
    vm: &str,
    target: Option<String>,
    no_wait: bool,
) -> Result<(), ClientError> {
    let answer: Value =
        client.post_json(&format!("/v1/vms/{vm}/backups"), &NewBackup { target })?;
    if no_wait {
        report(json, &answer, &format!("{vm}: backup asked for"));
        return Ok(());
    }
    let mut row: BackupRow = client.get(&format!("/v1/vms/{vm}/backups"))?;
    let asked = row.backups.asked.max(1);
    let started = Instant::now();
    let mut said = String::new();
    while row.backups.done < asked {
        let line = match &row.backups.last_error {
            Some(error) if row.backups.failures > 0 => {
                format!(
                    "{vm}: attempt {} failed ({error}); retrying",
                    row.backups.failures
                )
            }
            _ => format!(
                "{vm}: backing up ({} s)",
                started.elapsed().as_secs() / 5 * 5
            ),
        };
        if line != said && !json {
            eprintln!("{line}");
            said = line;
        }
        std::thread::sleep(Duration::from_millis(500));
        row = client.get(&format!("/v1/vms/{vm}/backups"))?;
    }
    let stored = row
        .backups
        .snapshots
        .last()
        .filter(|_| row.backups.last_error.is_none());
    match stored {
        Some(snapshot) if json => {
            print_json(snapshot);
            Ok(())
        }
        Some(snapshot) => {
            println!(
                "{vm}: snapshot {} stored in {} at {}: a disk of {}, {} read from it, {} new",
                snapshot.id,
                snapshot.target,
                crate::output::time_ms(snapshot.time_ms),
                size(snapshot.size_bytes),
                size(snapshot.read_bytes),
                size(snapshot.added_bytes)
            );
            Ok(())
        }
        None => Err(ClientError::Failed(format!(
            "{vm}: the backup failed: {}",
            row.backups.last_error.unwrap_or_default()
        ))),
    }
}

/// Asks on the terminal whether to replace `vm`'s disk with `snapshot`, naming its time.
fn confirm(vm: &str, snapshot: &BackupSnapshot) -> Result<(), ClientError> {
    use std::io::{BufRead, IsTerminal, Write};
    let question = format!(
        "{vm}: replace its disk with snapshot {} of {} (UTC)? The VM stops; the disk it has now is archived on its host.",
        snapshot.id,
        crate::output::time_ms(snapshot.time_ms)
    );
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(format!(
            "{question} Add --yes to confirm without a terminal"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") {
        true => Ok(()),
        false => Err(ClientError::Failed(format!("{vm}: not restored"))),
    }
}

/// Asks for a restore, then follows it until the VM runs (or stays stopped) on the
/// snapshot's disk, or it is given up.
/// `hearth backup restore VM SNAPSHOT --into NEW`: a new VM from VM's snapshot; waits
/// until its disk is made (unless `no_wait`).
fn restore_into(
    client: &ApiClient,
    json: bool,
    (vm, snapshot): (&str, &str),
    into: &str,
    no_wait: bool,
) -> Result<(), ClientError> {
    let body = RestoreBackup {
        snapshot: snapshot.to_owned(),
        into: Some(into.to_owned()),
    };
    let answer: Value = client.post_json(&format!("/v1/vms/{vm}/restore"), &body)?;
    if no_wait {
        report(
            json,
            &answer,
            &format!("{into}: created from {vm}'s snapshot {snapshot}"),
        );
        return Ok(());
    }
    eprintln!("{into}: created; its worker makes its disk from {vm}'s snapshot {snapshot}");
    let mut said = String::new();
    loop {
        let row: BackupRow = client.get(&format!("/v1/vms/{into}/backups"))?;
        if let Some(done) = row
            .backups
            .restored
            .filter(|_| row.backups.recover.is_none())
        {
            if json {
                print_json(&done);
            } else {
                println!(
                    "{into}: made from {vm}'s snapshot {snapshot}: its disk is as {vm}'s was at {} (UTC)",
                    crate::output::time_ms(done.snapshot_time_ms)
                );
            }
            return Ok(());
        }
        let vm_row: hearth_types::api::VmRow = client.get(&format!("/v1/vms/{into}"))?;
        let line = vm_row.vm.message.clone().unwrap_or_default();
        if line != said && !line.is_empty() && !json {
            eprintln!("{into}: {line}");
            said = line;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn restore(
    client: &ApiClient,
    json: bool,
    vm: &str,
    snapshot: &str,
    yes: bool,
    no_wait: bool,
) -> Result<(), ClientError> {
    let row: BackupRow = client.get(&format!("/v1/vms/{vm}/backups"))?;
    let Some(found) = row.backups.snapshots.iter().find(|s| s.id == snapshot) else {
        return Err(ClientError::Usage(format!(
            "snapshot: {vm} has no snapshot {snapshot} (hearth backups {vm} lists them)"
        )));
    };
    if !yes {
        confirm(vm, found)?;
    }
    let body = RestoreBackup {
        snapshot: snapshot.to_owned(),
        into: None,
    };
    let answer: Value = client.post_json(&format!("/v1/vms/{vm}/restore"), &body)?;
    if no_wait {
        report(json, &answer, &format!("{vm}: restore asked for"));
        return Ok(());
    }
    let mut said = String::new();
    let row = loop {
        let row: BackupRow = client.get(&format!("/v1/vms/{vm}/backups"))?;
        let Some(run) = &row.backups.restore else {
            break row;
        };
        let line = match (&run.stage, &run.last_error) {
            (_, Some(error)) => {
                format!("{vm}: attempt {} failed ({error}); retrying", run.failures)
            }
            (RestoreStage::Asked, None) => format!(
                "{vm}: stopping and fetching the snapshot (`hearth backup abort-restore {vm}` ends it, keeping the disk)"
            ),
            (RestoreStage::Swapped, None) => format!("{vm}: putting the restored disk in place"),
        };
        if line != said && !json {
            eprintln!("{line}");
            said = line;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    match (&row.backups.restored, &row.backups.restore_error) {
        (_, Some(error)) => Err(ClientError::Failed(format!(
            "{vm}: the restore was given up, and the VM kept its disk: {error}"
        ))),
        (Some(done), None) if done.snapshot == snapshot => {
            if json {
                print_json(done);
            } else {
                println!(
                    "{vm}: restored from snapshot {snapshot}: its disk is as it was at {} (UTC)",
                    crate::output::time_ms(done.snapshot_time_ms)
                );
            }
            Ok(())
        }
        _ => Err(ClientError::Failed(format!(
            "{vm}: the restore ended, but not from {snapshot}"
        ))),
    }
}

/// `hearth backups [VM]`: every VM's backups, or one VM's snapshots.
pub fn list(client: &ApiClient, json: bool, vm: Option<String>) -> Result<(), ClientError> {
    let Some(vm) = vm else {
        let rows: Vec<BackupRow> = client.get("/v1/backups")?;
        if json {
            print_json(&rows);
            return Ok(());
        }
        print_table(
            &[
                "VM",
                "NAME",
                "OWNER",
                "STATUS",
                "SNAPSHOTS",
                "LAST",
                "SCHEDULE",
                "NEXT",
                "ERROR",
            ],
            rows.iter().map(|r| {
                let last = r.backups.snapshots.last();
                vec![
                    r.vm.clone(),
                    r.name.clone(),
                    r.owner.clone(),
                    r.status.clone(),
                    r.backups.snapshots.len().to_string(),
                    last.map_or("-".into(), |s| crate::output::time_ms(s.time_ms)),
                    schedule_cell(r.policy.as_ref()),
                    r.next_ms.map_or("-".into(), crate::output::time_ms),
                    r.backups.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            }),
        );
        return Ok(());
    };
    let row: BackupRow = client.get(&format!("/v1/vms/{vm}/backups"))?;
    if json {
        print_json(&row);
        return Ok(());
    }
    print_table(
        &[
            "SNAPSHOT",
            "TIME (UTC)",
            "TARGET",
            "SIZE",
            "READ",
            "NEW",
            "HOST",
            "BY",
        ],
        row.backups.snapshots.iter().rev().map(|s| {
            vec![
                s.id.clone(),
                crate::output::time_ms(s.time_ms),
                s.target.clone(),
                size(s.size_bytes),
                size(s.read_bytes),
                size(s.added_bytes),
                s.host.clone(),
                s.by.clone().unwrap_or_else(|| "schedule".into()),
            ]
        }),
    );
    if let Some(error) = &row.backups.last_error {
        eprintln!("{vm}: the last backup is {}: {error}", row.status);
    }
    if let (Some(policy), Some(next)) = (&row.policy, row.next_ms) {
        eprintln!(
            "{vm}: scheduled {}; next at {} (UTC)",
            schedule_cell(Some(policy)),
            crate::output::time_ms(next)
        );
    }
    Ok(())
}

/// `hearth backups [VM]`, or with `state`, `hearth backups --state`.
pub fn backups(
    client: &ApiClient,
    json: bool,
    vm: Option<String>,
    state: bool,
) -> Result<(), ClientError> {
    match state {
        true => state_list(client, json),
        false => list(client, json, vm),
    }
}

/// `hearth backups --state`: the cluster state's own backups, per target.
pub fn state_list(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let rows: Vec<StateBackupRow> = client.get("/v1/state-backups")?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    print_table(
        &["TARGET", "SNAPSHOT", "TIME (UTC)", "INDEX", "SIZE", "ERROR"],
        rows.iter().map(|r| {
            let last = r.backups.last.as_ref();
            vec![
                r.target.clone(),
                last.map_or("-".into(), |s| s.id.clone()),
                last.map_or("-".into(), |s| crate::output::time_ms(s.time_ms)),
                last.map_or("-".into(), |s| s.index.to_string()),
                last.map_or("-".into(), |s| size(s.size_bytes)),
                r.backups.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
