//! Backups as kept in the desired state: the co-op's backup targets (restic repositories,
//! named by location and by the files on each worker holding their password and keys, never
//! the secrets themselves), and per VM the backups asked for and done, with the snapshots
//! each run stored. The pure checks (`BackupTarget::validate`, `VmBackups::pending`) are what
//! the state's `apply`, the API and the workers use.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::Versioned;

/// The most snapshots a VM's record keeps (the oldest go first; restic keeps the data).
pub const MAX_SNAPSHOTS: usize = 100;
/// The longest error text a failed run keeps.
pub const MAX_ERROR: usize = 500;

/// A restic repository backups go into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupTarget {
    /// Letters, digits and `-`, as in `hearth backup VM --target NAME`.
    pub name: String,
    /// Where the repository is, as restic names it: an absolute path, `sftp:host:/path`,
    /// `rest:https://host/repo/` or `s3:https://host/bucket`.
    pub location: String,
    /// The file on each worker that holds the repository's password (absolute path).
    pub password_file: String,
    /// A file on each worker of `KEY=value` lines given to restic as its environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …), for S3 and similar backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
}

impl BackupTarget {
    /// Why the target cannot be used, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        check_target_name("name", &self.name)?;
        let location = &self.location;
        let known = ["sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:"];
        if !(location.starts_with('/') || known.iter().any(|k| location.starts_with(k))) {
            return Err(format!(
                "location: {location:?} must be an absolute path or start with one of {}",
                known.join(" ")
            ));
        }
        if location.len() > 1024 || location.chars().any(char::is_control) {
            return Err("location: too long or holds a control character".into());
        }
        // Every node reads the desired state: a password belongs in the env file.
        // (A user name in an `sftp:` location is no secret: its key is the worker's.)
        let remote = !location.starts_with('/') && !location.starts_with("sftp:");
        let authority = location
            .split_once("://")
            .filter(|_| remote)
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default());
        if authority.is_some_and(|a| a.contains('@')) {
            // Not quoted: it holds a secret.
            return Err("location: holds credentials before @; put them in env_file (RESTIC_REST_USERNAME, RESTIC_REST_PASSWORD, AWS_…)".into());
        }
        for (key, file) in [
            ("password_file", Some(&self.password_file)),
            ("env_file", self.env_file.as_ref()),
        ] {
            if let Some(file) = file
                && (!file.starts_with('/')
                    || file.len() > 1024
                    || file.chars().any(char::is_control))
            {
                return Err(format!("{key}: {file:?} must be an absolute path"));
            }
        }
        Ok(())
    }
}

/// The most snapshots of each kind a retention policy keeps.
pub const MAX_KEEP: u32 = 1000;

/// Which of a VM's snapshots a schedule keeps, as restic's `forget --keep-daily/-weekly/
/// -monthly` reads it: the newest snapshot of each of the last `daily` days (in the
/// schedule's time zone), of the last `weekly` weeks and of the last `monthly` months.
/// All three 0: every snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    #[schemars(range(max = MAX_KEEP))]
    pub daily: u32,
    #[schemars(range(max = MAX_KEEP))]
    pub weekly: u32,
    #[schemars(range(max = MAX_KEEP))]
    pub monthly: u32,
}

impl Default for Keep {
    /// A week of days, a month of weeks, half a year of months.
    fn default() -> Keep {
        Keep {
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

impl Keep {
    /// Whether every snapshot is kept.
    pub fn keeps_all(&self) -> bool {
        self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

fn utc() -> String {
    "UTC".into()
}

/// A daily backup into a target at a time of day, and which snapshots to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// The backup target the scheduled runs go into.
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]{1,63}$"))]
    pub target: String,
    /// The time of day, `HH:MM` (24 hours), in `time_zone`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub at: String,
    /// An IANA time zone such as `Europe/Berlin`: the co-op's days, for the time and for
    /// retention.
    #[serde(default = "utc")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_+/-]{1,64}$"))]
    pub time_zone: String,
    #[serde(default)]
    pub keep: Keep,
}

impl BackupPolicy {
    /// The time of day as (hour, minute), if `at` is `HH:MM`.
    pub fn hour_minute(&self) -> Option<(u8, u8)> {
        let (h, m) = self.at.split_once(':')?;
        let two = |s: &str| -> Option<u8> {
            (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let (h, m) = (two(h)?, two(m)?);
        (h < 24 && m < 60).then_some((h, m))
    }

    /// Why the policy cannot be used, naming the field. (That the time zone exists is the
    /// API's check: the state's `apply` must not depend on a node's time zone database.)
    pub fn validate(&self) -> Result<(), String> {
        check_target_name("target", &self.target)?;
        if self.hour_minute().is_none() {
            return Err(format!(
                "at: {:?} must be a time of day as HH:MM, such as 03:00",
                self.at
            ));
        }
        let zone_ok = !self.time_zone.is_empty()
            && self.time_zone.len() <= 64
            && (self.time_zone.chars()).all(|c| c.is_ascii_alphanumeric() || "_+/-".contains(c));
        if !zone_ok {
            return Err(format!(
                "time_zone: {:?} must be an IANA time zone such as Europe/Berlin or UTC",
                self.time_zone
            ));
        }
        let keep = &self.keep;
        if [keep.daily, keep.weekly, keep.monthly]
            .iter()
            .any(|k| *k > MAX_KEEP)
        {
            return Err(format!("keep: at most {MAX_KEEP} of each kind"));
        }
        Ok(())
    }
}

/// A VM's schedule: its plan's (the default), none, or its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleChoice {
    #[default]
    Plan,
    Off,
    Own {
        policy: BackupPolicy,
    },
}

impl ScheduleChoice {
    pub fn is_plan(&self) -> bool {
        *self == ScheduleChoice::Plan
    }
}

/// The schedule VM `vm` follows: its own, or its owner's plan's (the named plan, else the
/// co-op's `default` plan), unless it has none.
pub fn policy_of<'a>(
    state: &'a crate::desired::DesiredState,
    vm: &str,
) -> Option<&'a BackupPolicy> {
    match state.backups.vms.get(vm).map(|b| &b.schedule) {
        Some(ScheduleChoice::Own { policy }) => return Some(policy),
        Some(ScheduleChoice::Off) => return None,
        Some(ScheduleChoice::Plan) | None => {}
    }
    let owner = &state.compute.vms.get(vm)?.value.request.owner;
    let plan = state
        .accounts
        .get(owner)
        .and_then(|a| a.value.plan.as_deref());
    plan.and_then(|name| state.plans.get(name))
        .or_else(|| state.plans.get(crate::quota::DEFAULT_PLAN))
        .and_then(|p| p.value.backup.as_ref())
}

fn check_target_name(key: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{key}: {name:?} must be 1 to 63 letters, digits and -"
        )),
    }
}

/// One snapshot a backup run stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupSnapshot {
    /// restic's snapshot id.
    pub id: String,
    pub target: String,
    /// When the disk was copied (Unix ms, the worker's clock).
    pub time_ms: u64,
    /// The worker that ran it.
    pub host: String,
    /// The disk's generation it was taken of.
    pub generation: u64,
    /// The disk's size.
    pub size_bytes: u64,
    /// Bytes new to the repository.
    pub added_bytes: u64,
    /// Bytes the copy read from the disk: all of it the first time, then what the guest
    /// wrote since the last backup (0 in records of workers before this field).
    #[serde(default)]
    pub read_bytes: u64,
    /// Asked for by whom (an account), or `None` for a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A VM's backups: runs asked for (a counter, like reboots), done, and what they stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmBackups {
    /// Runs asked for; a run is due while `asked > done`.
    #[serde(default)]
    pub asked: u64,
    /// The target and account of the last ask.
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_by: Option<String>,
    /// Runs finished (stored or given up).
    #[serde(default)]
    pub done: u64,
    /// Failed attempts at the run due now.
    #[serde(default)]
    pub failures: u32,
    /// Why the last attempt failed, until a run succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Newest last.
    #[serde(default)]
    pub snapshots: Vec<BackupSnapshot>,
    /// A restore of one of them into the VM, under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRun>,
    /// The last restore that replaced the VM's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
    /// Why the last restore was given up (the VM kept the disk it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_error: Option<String>,
    /// After `hearth restore` rebuilt the cluster from a state backup: the snapshot the VM's
    /// disk is to be made from. Its placed host dumps it into a new disk before anything
    /// runs; no other disk may be claimed for the VM meanwhile (never a blank one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover: Option<Recover>,
    /// The schedule it follows.
    #[serde(default, skip_serializing_if = "ScheduleChoice::is_plan")]
    pub schedule: ScheduleChoice,
    /// The time slot (Unix ms) of the last scheduled run asked for.
    #[serde(default)]
    pub scheduled_ms: u64,
    /// When its owner asked for backups in the last day (Unix ms, the API node's clock),
    /// against the plan's `backups_per_day`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand_ms: Vec<u64>,
}

/// Where a restore is: asked for (the VM stops, its disk home prepares the snapshot's disk
/// beside the VM's), or swapped (the cluster recorded the new disk's generation; the home
/// puts it in place and archives the old one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreStage {
    Asked,
    Swapped,
}

/// A restore of a snapshot into its VM, under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreRun {
    pub snapshot: BackupSnapshot,
    pub stage: RestoreStage,
    /// The power the VM gets back once its disk is the snapshot's.
    pub power_after: crate::compute::Power,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Failed attempts at preparing the disk.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A restore done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Restored {
    pub snapshot: String,
    /// The snapshot's time: the disk is as it was then.
    pub snapshot_time_ms: u64,
    /// The disk generation it became.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl VmBackups {
    /// Whether a run is due.
    pub fn pending(&self) -> bool {
        self.asked > self.done
    }

    /// Whether a restore is under way.
    pub fn restoring(&self) -> bool {
        self.restore.is_some()
    }
}

/// One backup of the whole desired state (accounts, plans, images, pools, VM definitions,
/// records, notices, zones, …) into a target's repository, for disaster recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateSnapshot {
    /// restic's snapshot id.
    pub id: String,
    /// When it was taken (Unix ms, the leader's clock).
    pub time_ms: u64,
    /// The log index the state was at.
    pub index: u64,
    /// The leader that took it.
    pub host: String,
    pub size_bytes: u64,
}

/// The desired state's backups into one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateBackups {
    /// The last one stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<StateSnapshot>,
    /// When the last attempt was made (Unix ms, the leader's clock).
    #[serde(default)]
    pub attempted_ms: u64,
    /// Attempts failed since the last one stored.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Backups in the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Backups {
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<BackupTarget>>")]
    pub targets: imbl::OrdMap<String, Versioned<BackupTarget>>,
    /// By VM id.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, VmBackups>")]
    pub vms: imbl::OrdMap<String, VmBackups>,
    /// The desired state's own backups, by target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state: BTreeMap<String, StateBackups>,
}

/// Cuts an error to [`MAX_ERROR`] bytes at a character boundary.
pub fn short_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, location: &str) -> BackupTarget {
        BackupTarget {
            name: name.into(),
            location: location.into(),
            password_file: "/etc/hearth/restic.pass".into(),
            env_file: None,
        }
    }

    #[test]
    fn targets_name_a_restic_location_and_absolute_files() {
        assert!(target("local", "/srv/backups").validate().is_ok());
        assert!(
            target("offsite", "s3:https://s3.coop.test/b")
                .validate()
                .is_ok()
        );
        assert!(target("sftp", "sftp:backup@host:/srv/r").validate().is_ok());
        let bad = target("x y", "/srv").validate().unwrap_err();
        assert!(bad.starts_with("name:"), "{bad}");
        let bad = target("a", "relative/path").validate().unwrap_err();
        assert!(bad.starts_with("location:"), "{bad}");
        let bad = target("a", "rest:https://u:secret@host:8000/r/")
            .validate()
            .unwrap_err();
        assert!(bad.contains("env_file") && !bad.contains("secret"), "{bad}");
        assert!(target("a", "sftp://backup@host//srv/r").validate().is_ok());
        let mut relative = target("a", "/srv");
        relative.password_file = "pass".into();
        assert!(
            relative
                .validate()
                .unwrap_err()
                .starts_with("password_file:")
        );
    }

    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR);
        let cut = short_error(&long);
        assert!(cut.len() <= MAX_ERROR && long.starts_with(&cut));
    }
}

/// A disk to be made from a backup before its VM first runs: after `hearth restore`, or for
/// a new VM restored from another's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recover {
    pub snapshot: BackupSnapshot,
    /// The VM the snapshot is of, when not this one (its file is `ID.raw` inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

impl Recover {
    /// A VM's own snapshot.
    pub fn own(snapshot: BackupSnapshot) -> Recover {
        Recover { snapshot, of: None }
    }
}

/// The desired state as a backup of it holds it (`hearth-state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateFile {
    /// The (logical) log index the state was read at: versions and VM ids below it are
    /// taken, so a cluster restored from it counts on from there.
    pub index: u64,
    /// When it was read, Unix ms, by the leader's clock.
    pub taken_ms: u64,
    pub state: crate::desired::DesiredState,
}

/// `POST /v1/restore` (`hearth restore --from REPO`): fill a new, empty cluster with a
/// backup of the desired state, and recover each VM's disk from its latest backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateRestore {
    /// The restic snapshot the state came from, for the record.
    pub snapshot: String,
    pub file: StateFile,
    /// Per VM id, snapshots the repository holds that are newer than the state backup
    /// (which could not record them); the newest of these and the state's own records is
    /// the one each VM's disk is recovered from.
    #[serde(default)]
    pub snapshots: BTreeMap<String, BackupSnapshot>,
    /// Only check that this cluster may take it (it is new and empty); change nothing.
    #[serde(default)]
    pub check: bool,
}
