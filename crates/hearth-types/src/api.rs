//! The JSON API's request bodies and answer rows, in one place: the agent's handlers read
//! the requests and write the rows, and the CLI and the web panel build the same requests
//! and read the same rows, so a field renamed on one side fails to compile on the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountRole, ApiToken, TokenScope};
use crate::compute::{Capacity, Image, IoLimits, IpPool, Phase, Vm};
use crate::desired::{ClusterService, RecordSet};
use crate::member::MemberState;
use crate::notice::Notice;

/// What a write expects the object's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Write whatever is there.
    #[default]
    Any,
    /// Only create: fail if the object exists.
    Absent,
    /// Only if the object is at exactly this version.
    Version(u64),
}

impl Expect {
    /// Whether an object at `current` (None: absent) meets the expectation.
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(version) => current == Some(version),
        }
    }

    fn is_any(&self) -> bool {
        *self == Expect::Any
    }
}

/// `PUT /v1/images`: declare or replace an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutImage {
    pub image: Image,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `PUT /v1/pools`: declare or replace an address pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPool {
    pub pool: IpPool,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `PUT /v1/plans`: declare or replace a members' plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPlan {
    pub plan: crate::quota::Plan,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `PUT /v1/accounts/NAME/plan`: an account's plan and its own limits (each set one takes
/// the plan's place).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub plan: Option<String>,
    #[serde(default)]
    pub quota: crate::quota::Quota,
}

/// `POST /v1/credits`: an amount given back to a member on their next invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredit {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub member: String,
    /// Positive, in whole cents, such as "5.00".
    #[schemars(schema_with = "crate::money::credit_schema")]
    pub amount: crate::money::Amount,
    /// Why, shown on the invoice line: not only spaces.
    #[schemars(length(min = 1, max = 200), regex(pattern = "\\S"))]
    pub reason: String,
}

/// A closed invoice's webhook delivery (`GET /v1/invoice-deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryRow {
    pub month: String,
    pub member: String,
    pub delivery: crate::invoice::WebhookDelivery,
    /// Its email to the member (none yet: not sent, or no `[smtp]` or address).
    #[serde(default)]
    pub mail: crate::invoice::WebhookDelivery,
}

/// A plan and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanRow {
    pub plan: crate::quota::Plan,
    pub version: u64,
}

/// `PUT /v1/cluster-services`: declare or replace a cluster-wide service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutService {
    pub service: ClusterService,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `PUT /v1/records`: set one name's records of one type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRecords {
    pub records: RecordSet,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `PUT /v1/notices`: post or change a status-page notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNotice {
    pub notice: Notice,
    #[serde(default, skip_serializing_if = "Expect::is_any")]
    pub expect: Expect,
}

/// `POST /v1/vms/VM/owner`: give a VM to another account (admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOwner {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub owner: String,
}

/// `PUT /v1/vms/ID/io`: a VM's disk IO limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetIo {
    pub io: IoLimits,
}

/// `POST /v1/vms/ID/recreate`: start a lost VM again on an empty disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recreate {
    /// Must be true: the VM's old disk is given up, and it starts on an empty one.
    #[schemars(extend("const" = true))]
    pub empty_disk: bool,
}

/// `POST /v1/vms/ID/migrate`: move a VM and its disk to another host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateVm {
    /// The host to move to; absent: the worker with the most free memory that fits the VM.
    #[serde(default)]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub to: Option<String>,
    /// Shut the VM down, copy its disk and start it on the target. Without it, a running VM
    /// moves live (it runs on, and pauses only for the switch); a stopped one moves cold.
    #[serde(default)]
    pub cold: bool,
}

/// `POST /v1/accounts`: a new member or admin.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub name: String,
    pub role: AccountRole,
    /// Empty, or an address (with an `@`).
    #[serde(default)]
    #[schemars(length(max = 254), regex(pattern = "^$|@"))]
    pub email: String,
    /// At least 10 characters.
    #[schemars(length(min = 10))]
    pub password: String,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn full() -> TokenScope {
    TokenScope::Full
}

/// `POST /v1/tokens`: a new API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Admins may make one for another account; default: the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub account: Option<String>,
    #[serde(default = "full")]
    pub scope: TokenScope,
    #[serde(default)]
    pub note: String,
    /// Seconds the token lives; never longer than the token (a web session) making it, nor
    /// than the node's `max_token_lifetime`. Default: as long as those allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// `PUT /v1/me/ssh-keys/NAME`: one SSH public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// `TYPE BASE64 [comment]` on one line; TYPE starts `ssh-`, `ecdsa-sha2-` or `sk-`.
    #[schemars(length(max = 16384), regex(pattern = crate::names::SSH_KEY_PATTERN))]
    pub key: String,
}

/// `POST /v1/me/password`: change the caller's password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub current: String,
    /// At least 10 characters.
    #[schemars(length(min = 10))]
    pub new: String,
    /// Also revoke every API token of the account (web sessions end in any case).
    #[serde(default)]
    pub revoke_tokens: bool,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword { .. }")
    }
}

/// `POST /v1/announce`: an email to every member who owns a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// 1 to 200 characters on one line, not all blank.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = "^[^\\r\\n]*[^\\s][^\\r\\n]*$")
    )]
    pub subject: String,
    /// 1 to 65536 characters, not all blank.
    #[schemars(length(min = 1, max = 65536), regex(pattern = "\\S"))]
    pub body: String,
}

/// A VM as the API shows it: the desired object, with the phase read against the answering
/// node's gossip view (a VM on a host that is not up is `lost`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmRow {
    pub version: u64,
    #[serde(flatten)]
    pub vm: Vm,
    /// Overrides the stored phase.
    pub shown_phase: Phase,
}

/// A member's zone as the API shows it, with the name its challenge record goes at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ZoneRow {
    pub zone: crate::zones::MemberZone,
    pub version: u64,
    /// `_hearth-challenge.<domain>`: where the TXT record holding `zone.challenge` goes.
    pub challenge_name: String,
}

/// `POST /v1/vms/{key}/backups`: back a VM up now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    /// The backup target (default: that of its last backup, the only one, or the one named `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z0-9-]{1,63}$"))]
    pub target: Option<String>,
}

/// `POST /v1/vms/{key}/restore`: replace the VM's disk with one of its snapshots. The VM
/// stops, and runs again (if it ran) on the snapshot's disk; its disk until then is
/// archived on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    /// The snapshot's id, as `GET /v1/vms/{key}/backups` lists it.
    #[schemars(regex(pattern = "^[0-9a-f]{8,64}$"))]
    pub snapshot: String,
    /// Restore into a new VM of this name instead (like the VM: size, image, pools, owner,
    /// with addresses of its own): the VM itself is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub into: Option<String>,
}

/// `PUT /v1/backup-targets/{name}`: a restic repository backups go into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBackupTarget {
    /// As restic names it: an absolute path, `sftp:…`, `rest:…`, `s3:…`.
    /// Credentials go in `env_file`: no `@` except in an `sftp:` location.
    #[schemars(regex(
        pattern = r"^(/[!-?A-~]{0,1000}|sftp:[!-~]{0,1000}|(rest|s3|b2|azure|gs|swift):[!-?A-~]{0,1000})$"
    ))]
    pub location: String,
    /// The file on each worker holding the repository's password (absolute).
    #[schemars(regex(pattern = r"^/[!-~]{0,1000}$"))]
    pub password_file: String,
    /// A file on each worker of `KEY=value` lines for restic's environment (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[!-~]{0,1000}$"))]
    pub env_file: Option<String>,
}

/// A VM's backups, as `GET /v1/backups` and `GET /v1/vms/{key}/backups` answer them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupRow {
    pub vm: String,
    /// The VM's name and owner (empty once the VM is deleted).
    pub name: String,
    pub owner: String,
    /// `idle`, `running` (due, no failure yet), `retrying`, `failed` (the last run was
    /// given up) or `restoring`.
    pub status: String,
    /// The schedule it follows (its own or its plan's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::backup::BackupPolicy>,
    /// When the schedule's next run is due (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ms: Option<u64>,
    #[serde(flatten)]
    pub backups: crate::backup::VmBackups,
}

/// The desired state's backups into one target, as `GET /v1/state-backups` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateBackupRow {
    pub target: String,
    #[serde(flatten)]
    pub backups: crate::backup::StateBackups,
}

/// `POST /v1/zones`: claim a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    /// The domain, like `example.org`.
    #[schemars(length(min = 3, max = 235), regex(pattern = crate::zones::APEX_PATTERN))]
    pub apex: String,
    /// Admins: the account that will hold it (default: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub owner: Option<String>,
}

/// `PUT /v1/zones/{apex}/follows/{name}`: the VM whose addresses the name answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowVm {
    #[schemars(length(min = 1, max = 128))]
    pub vm: String,
}

/// `GET /v1/signup`: the co-op's sign-up setting, and the accounts that wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SignupView {
    pub settings: crate::signup::SignupSettings,
    /// Accounts waiting for an admin's approval (`hearth account approve NAME`).
    pub awaiting_approval: Vec<String>,
    /// Accounts whose email address is not confirmed yet.
    pub unverified: Vec<String>,
}

/// `POST /v1/invites`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// Seconds until the code stops working (default a week, at most a year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_622_400))]
    pub expires_in_secs: Option<u64>,
    /// Who it is for, for the admins' list.
    #[serde(default)]
    #[schemars(length(max = 200))]
    pub note: String,
}

/// A new invite: its code, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedInvite {
    pub id: String,
    pub code: String,
    pub expires_at: u64,
}

/// An account as the API shows it: never the password hash. The node token's caller is
/// `root`, an admin with no stored account (version 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountRow {
    pub name: String,
    pub role: AccountRole,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub ssh_keys: BTreeMap<String, String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub version: u64,
    /// A member's plan (`default` when none is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// A member's limits (its plan's, with its own in their place); none for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<crate::quota::Quota>,
    /// What a member's VMs hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::quota::Usage>,
    /// Signed up; the email address is not confirmed yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// Signed up; an admin has not approved it yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
}

impl AccountRow {
    pub fn new(account: &Account, version: u64) -> AccountRow {
        AccountRow {
            name: account.name.clone(),
            role: account.role,
            email: account.email.clone(),
            ssh_keys: account.ssh_keys.clone(),
            disabled: account.disabled,
            unverified: account.unverified,
            awaiting_approval: account.awaiting_approval,
            version,
            plan: None,
            quota: None,
            usage: None,
        }
    }

    /// The row of `account` with, for a member, its plan, quota and usage in `desired`.
    pub fn with_quota(
        account: &Account,
        version: u64,
        desired: &crate::desired::DesiredState,
    ) -> AccountRow {
        let mut row = AccountRow::new(account, version);
        if account.role == crate::account::AccountRole::Member {
            use crate::quota::{DEFAULT_PLAN, quota_of, usage};
            let plan = account
                .plan
                .clone()
                .filter(|p| desired.plans.contains_key(p))
                .unwrap_or_else(|| DEFAULT_PLAN.to_owned());
            row.plan = Some(plan);
            row.quota = Some(quota_of(
                &desired.plans,
                account.plan.as_deref(),
                &account.quota,
            ));
            row.usage = Some(usage(&desired.compute, &account.name, None));
        }
        row
    }

    /// The node token's caller.
    pub fn root() -> AccountRow {
        AccountRow {
            name: "root".to_owned(),
            role: AccountRole::Admin,
            email: String::new(),
            ssh_keys: BTreeMap::new(),
            disabled: false,
            version: 0,
            plan: None,
            quota: None,
            usage: None,
            unverified: false,
            awaiting_approval: false,
        }
    }
}

/// A worker host: what it offers, whether it is fenced, its gossip state, its VM count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostRow {
    pub name: String,
    pub capacity: Capacity,
    pub fenced: bool,
    /// None: the answering node's gossip view does not know it.
    pub state: Option<MemberState>,
    pub vms: usize,
    /// What the VMs placed on it ask for together, against `capacity`.
    #[serde(default)]
    pub placed: crate::quota::Usage,
    /// `hearth node evacuate` of it, if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<crate::compute::Evacuation>,
    /// The N+1 check: `None` when the other workers can hold all its VMs, else why not.
    #[serde(default)]
    pub cannot_evacuate: Option<String>,
}

/// An address pool and the addresses its VMs hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolRow {
    pub version: u64,
    pub pool: IpPool,
    pub used: BTreeSet<IpAddr>,
}

/// An API token as listings show it: never the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenRow {
    pub id: String,
    pub account: String,
    pub scope: TokenScope,
    pub note: String,
    pub created_at: u64,
    pub revoked: bool,
    /// Unix seconds after which it no longer works; absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl From<&ApiToken> for TokenRow {
    fn from(token: &ApiToken) -> TokenRow {
        TokenRow {
            id: token.id.clone(),
            account: token.account.clone(),
            scope: token.scope,
            note: token.note.clone(),
            created_at: token.created_at,
            revoked: token.revoked,
            expires_at: token.expires_at,
        }
    }
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedToken {
    pub id: String,
    pub account: String,
    pub scope: TokenScope,
    /// `hth_ID_SECRET`, to send as `Authorization: Bearer`.
    pub token: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A piece of a VM's serial console log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConsoleText {
    pub vm: String,
    pub host: String,
    /// Where this text starts in the log.
    pub offset: u64,
    /// The offset to ask for next.
    pub next: u64,
    /// The log's length now.
    pub total: u64,
    pub text: String,
}

/// A VM's recent load, as its host recorded it: CPU time and disk bytes (and network bytes
/// with a tap) per 5 minutes over the last day, and per 30 minutes over the last week.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmStats {
    pub vm: String,
    pub host: String,
    /// The VM's vCPUs, the most CPU time it can use per second of wall time.
    pub vcpus: u32,
    pub day: crate::vmstats::Series,
    pub week: crate::vmstats::Series,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expectation_of_any_is_left_out_and_read_back_as_any() {
        let set = RecordSet {
            name: "www".into(),
            ttl: None,
            values: vec![],
        };
        let put = PutRecords {
            records: set.clone(),
            expect: Expect::Any,
        };
        let text = serde_json::to_string(&put).unwrap();
        assert!(!text.contains("expect"), "{text}");
        let back: PutRecords = serde_json::from_str(&text).unwrap();
        assert_eq!(back, put);
        let pinned = PutRecords {
            records: set,
            expect: Expect::Version(7),
        };
        let text = serde_json::to_string(&pinned).unwrap();
        assert!(text.contains(r#""expect":{"version":7}"#), "{text}");
        assert_eq!(serde_json::from_str::<PutRecords>(&text).unwrap(), pinned);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let refused = serde_json::from_str::<Recreate>(r#"{"empty_disk":true,"force":1}"#);
        assert!(refused.is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let created = CreatedToken {
            id: "abc".into(),
            account: "ana".into(),
            scope: TokenScope::Full,
            token: "hth_abc_supersecret".into(),
        };
        assert!(!format!("{created:?}").contains("supersecret"));
        let password = NewPassword {
            current: "old-secret".into(),
            new: "new-secret".into(),
            revoke_tokens: false,
        };
        assert!(!format!("{password:?}").contains("secret"));
    }

    #[test]
    fn the_root_caller_reads_as_an_account_row() {
        let row: AccountRow = serde_json::from_str(r#"{"name":"root","role":"admin"}"#).unwrap();
        assert_eq!(row, AccountRow::root());
    }
}
