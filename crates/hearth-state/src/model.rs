//! Writes to the desired state as a closed `Command` enum, and `apply`, the pure function
//! every replica runs on each committed command, in log order.

use hearth_types::desired::{
    ClusterService, Delivery, DesiredState, EventRecord, MAX_EVENTS, RecordSet, record_key,
};

use hearth_types::shared_map::OrdMapExt;
use hearth_types::{ClusterEvent, EventKind, MemberRow, ServiceInstance};

use serde::{Deserialize, Serialize};

pub mod backups;
mod billing;
pub use billing::prices_of;
mod cas;
pub mod compute;
mod migration;
mod quota;
mod rbd;
mod replicas;
pub mod restore;
pub mod signup;
mod vm_events;
pub mod zones;

pub use cas::{Expect, Outcome};
use cas::{put, remove};
pub use compute::ComputeCommand;

/// One write to the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    PutService {
        service: ClusterService,
        expect: Expect,
    },
    RemoveService {
        name: String,
        expect: Expect,
    },
    PutRecords {
        records: RecordSet,
        expect: Expect,
    },
    RemoveRecords {
        key: String,
        expect: Expect,
    },
    SetDrain {
        node: String,
        drained: bool,
        expect: Expect,
    },
    /// The leader saw this member in this state (at `at_ms`, its clock).
    ObserveMember {
        member: MemberRow,
        at_ms: u64,
    },
    /// The leader saw this check status of `member`'s instance.
    ObserveCheck {
        member: MemberRow,
        instance: ServiceInstance,
        at_ms: u64,
    },
    /// A cluster handler ran (or failed to run) for an event.
    RecordDelivery {
        event: u64,
        handler: String,
        delivery: Delivery,
    },
    /// `hearth restore`: a new, empty cluster takes a backup of another's desired state
    /// (`model::restore`).
    RestoreState {
        #[serde(with = "as_json_text")]
        restore: Box<hearth_types::backup::StateRestore>,
    },
    /// Independent commands committed as one log entry (group commit on the leader). Each
    /// applies, or fails, on its own, in order; no two touch the same object.
    Batch {
        commands: Vec<Command>,
    },
    /// Images, IP pools, VMs, hosts and drift.
    Compute {
        command: ComputeCommand,
    },
    /// Posts or updates a status-page notice.
    PutNotice {
        notice: hearth_types::notice::Notice,
        expect: Expect,
    },
    RemoveNotice {
        id: String,
        expect: Expect,
    },
    /// Creates or updates an account (the API node hashed any new password). A new password
    /// ends the account's web sessions in the same entry, and its API tokens too with
    /// `revoke_tokens`.
    PutAccount {
        account: hearth_types::account::Account,
        expect: Expect,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        revoke_tokens: bool,
    },
    /// Removes an account and revokes its tokens.
    RemoveAccount {
        name: String,
        expect: Expect,
    },
    /// Adds a token of an existing account.
    PutToken {
        token: hearth_types::account::ApiToken,
    },
    RevokeToken {
        id: String,
    },
    /// Sign-up: the setting, invites, new members and emailed tokens.
    Signup {
        command: signup::SignupCommand,
    },
    /// Members' own DNS zones.
    Zone {
        command: zones::ZoneCommand,
    },
    /// Backup targets, backups asked for and their runs.
    Backup {
        command: backups::BackupCommand,
    },
    /// Records a change made through the API.
    Audit {
        entry: hearth_types::account::AuditEntry,
    },
    /// Creates or changes a members' plan.
    PutPlan {
        plan: Box<hearth_types::quota::Plan>,
        expect: Expect,
    },
    /// Removes a plan; its members fall back to the default plan.
    RemovePlan {
        name: String,
        expect: Expect,
    },
    /// The leader's sample of each service's availability (a passing instance or none), at
    /// `at_ms` by its clock: the time since the previous sample counts as that one said.
    RecordUptime {
        at_ms: u64,
        up: std::collections::BTreeMap<String, bool>,
    },
    /// A worker's usage rows of closed metering periods; the state keeps the first row of
    /// each (period, VM, host), so a row sent twice counts once.
    RecordUsage {
        host: String,
        rows: Vec<hearth_types::metering::UsageRow>,
    },
    /// Closes a month that has ended (by `at_ms`): every member's invoice of it is made and
    /// never changes again.
    CloseMonth {
        month: String,
        at_ms: u64,
    },
    /// Gives a member a credit on their next invoice; its id is the log index.
    AddCredit {
        credit: hearth_types::invoice::Credit,
    },
    /// The leader's attempt to deliver closed invoice `key` to the webhook (or an admin's
    /// reset of it, to send it again).
    RecordWebhook {
        key: String,
        delivery: hearth_types::invoice::WebhookDelivery,
    },
    /// The leader's attempt to email closed invoice `key` to its member.
    RecordInvoiceMail {
        key: String,
        delivery: hearth_types::invoice::WebhookDelivery,
    },
}

/// Whom a worker's command speaks for: the worker that may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker<'a> {
    /// The host (a node name) the command is about.
    Host(&'a str),
    /// The VM's host or the target of its move (a move given up by either side).
    HostOfVm(&'a str),
}

impl Command {
    /// For a worker's command (`is_a_workers`), whom it speaks for.
    pub fn speaks_for(&self) -> Option<Speaker<'_>> {
        use crate::model::compute::ComputeCommand as C;
        let command = match self {
            Command::Audit { entry } => return Some(Speaker::Host(&entry.node)),
            Command::RecordUsage { host, .. } => return Some(Speaker::Host(host)),
            Command::Backup {
                command:
                    backups::BackupCommand::Record { host, .. }
                    | backups::BackupCommand::RestoreSwapped { host, .. }
                    | backups::BackupCommand::RestoreDone { host, .. },
            } => return Some(Speaker::Host(host)),
            Command::Compute { command } => command,
            _ => return None,
        };
        Some(match command {
            C::Report { host, .. }
            | C::Host { host, .. }
            | C::Drift { host, .. }
            | C::Rebooted { host, .. }
            | C::FixDone { host, .. }
            | C::ClaimDisk { host, .. }
            | C::Forget { host, .. }
            | C::MigrationCompleted { host, .. }
            | C::MigrationStopped { host, .. }
            | C::MigrationProgress { host, .. }
            | C::ReplicaListening { host, .. }
            | C::ReplicaProgress { host, .. }
            | C::RenewLease { host } => Speaker::Host(host),
            C::MigrationListening { to, .. } | C::MoveDisk { to, .. } | C::Failover { to, .. } => {
                Speaker::Host(to)
            }
            C::AbortMigration { vm, .. } => Speaker::HostOfVm(vm),
            _ => return None,
        })
    }

    /// Whether a worker writes this about itself (its host, its VMs' phases, drift, moves
    /// and replicas, its lease) or for its API's audit log: all a connection opened with a
    /// worker key may write (`network::worker_may`).
    pub fn is_a_workers(&self) -> bool {
        use crate::model::compute::ComputeCommand as C;
        match self {
            Command::Audit { .. }
            | Command::RecordUsage { .. }
            | Command::Backup {
                command:
                    backups::BackupCommand::Record { .. }
                    | backups::BackupCommand::RestoreSwapped { .. }
                    | backups::BackupCommand::RestoreDone { .. },
            } => true,
            Command::Compute { command } => matches!(
                command,
                C::Report { .. }
                    | C::Host { .. }
                    | C::Drift { .. }
                    | C::Rebooted { .. }
                    | C::FixDone { .. }
                    | C::ClaimDisk { .. }
                    | C::Forget { .. }
                    | C::MigrationListening { .. }
                    | C::MigrationCompleted { .. }
                    | C::MigrationStopped { .. }
                    | C::MigrationProgress { .. }
                    | C::MoveDisk { .. }
                    | C::AbortMigration { .. }
                    | C::ReplicaListening { .. }
                    | C::ReplicaProgress { .. }
                    | C::RenewLease { .. }
                    | C::Failover { .. }
            ),
            _ => false,
        }
    }

    /// The object a command changes, for keeping two changes of one object out of one batch.
    /// The object this command changes, for group commit (`crate::batch`): `None` for an
    /// audit entry, which only appends and has no version, so a burst's entries share log
    /// entries instead of queueing one per entry behind the writes they describe.
    pub fn batch_key(&self) -> Option<String> {
        match self {
            Command::Audit { .. } => None,
            other => Some(other.object_key()),
        }
    }

    pub fn object_key(&self) -> String {
        match self {
            Command::PutService { service, .. } => {
                format!("service/{}", service.name.to_ascii_lowercase())
            }
            Command::RemoveService { name, .. } => format!("service/{}", name.to_ascii_lowercase()),
            Command::PutRecords { records, .. } => match records.key() {
                Some(key) => format!("records/{key}"),
                None => format!("records/invalid/{}", records.name),
            },
            Command::RemoveRecords { key, .. } => match key.split_once('/') {
                Some((name, kind)) => format!("records/{}", record_key(name, kind)),
                None => format!("records/invalid/{key}"),
            },
            Command::SetDrain { node, .. } => format!("drain/{node}"),
            // Observations and deliveries also append to the event list; one per entry.
            Command::ObserveMember { .. }
            | Command::ObserveCheck { .. }
            | Command::RecordDelivery { .. }
            | Command::Batch { .. } => "observed".into(),
            Command::Compute { command } => command.object_key(),
            Command::PutNotice { notice, .. } => format!("notice/{}", notice.id),
            Command::RemoveNotice { id, .. } => format!("notice/{id}"),
            // Account changes touch the account's tokens too: one per entry.
            Command::PutAccount { .. }
            | Command::RemoveAccount { .. }
            | Command::PutToken { .. }
            | Command::RevokeToken { .. }
            | Command::Signup { .. } => "accounts".into(),
            Command::Zone { command } => format!("zone/{}", command.apex()),
            Command::Backup { command } => command.object_key(),
            Command::RestoreState { .. } => "restore".into(),
            Command::PutPlan { plan, .. } => format!("plan/{}", plan.name),
            Command::RemovePlan { name, .. } => format!("plan/{name}"),
            Command::Audit { .. } => "audit".into(),
            Command::RecordUptime { .. } => "uptime".into(),
            Command::RecordUsage { .. }
            | Command::CloseMonth { .. }
            | Command::AddCredit { .. }
            | Command::RecordWebhook { .. }
            | Command::RecordInvoiceMail { .. } => "billing".into(),
        }
    }
}

/// A value carried as its JSON text: the command enum is tagged internally, and serde reads
/// such an enum's fields through a buffer that cannot turn a map's string keys back into
/// numbers (a state's events are keyed by number).
mod as_json_text {
    use serde::{Deserialize, Deserializer, Serializer, de::DeserializeOwned};

    pub fn serialize<T: serde::Serialize, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Removes an account and revokes its tokens; refused while it owns VMs, which would pass to
/// whoever gets the name next.
fn remove_account(state: &mut DesiredState, name: &str, expect: Expect, index: u64) -> Outcome {
    let owned: Vec<&str> = state
        .compute
        .vms
        .values()
        .filter(|vm| vm.value.request.owner == name)
        .map(|vm| vm.value.request.name.as_str())
        .collect();
    if !owned.is_empty() && state.accounts.contains_key(name) {
        return Outcome::Invalid {
            message: format!(
                "name: {name} owns VMs ({}); delete them before the account",
                owned.join(", ")
            ),
        };
    }
    let outcome = remove(&mut state.accounts, name, expect);
    if outcome == Outcome::Removed {
        state.tokens.change_where(
            |_, token| token.value.account == name,
            |_, token| {
                token.value.revoked = true;
                token.version = index;
            },
        );
    }
    outcome
}

/// The newest command set this build reads and writes. Each node gossips it (tag
/// [`LEVEL_TAG`]; a node without the tag is level 1), and the leader refuses a command of a
/// level some live node lacks, so a rolling upgrade never puts in the log an entry an older
/// node cannot read. Raise it with each release that adds a command, and give the command
/// that level in [`Command::level`]. The same holds for anything new *inside* a command that
/// an old node's decoder refuses (a new variant of an enum it carries, such as a new drift
/// kind, or a field of a struct that denies unknown fields): such a command must report the
/// new level when it carries the new thing.
pub const STATE_LEVEL: u32 = 10;
/// The gossip tag carrying a node's [`STATE_LEVEL`].
pub const LEVEL_TAG: &str = "state-level";

impl Command {
    /// The [`STATE_LEVEL`] that introduced this command: 1 for those of the first release.
    pub fn level(&self) -> u32 {
        match self {
            Command::RecordUptime { .. } => 2,
            Command::RecordUsage { .. }
            | Command::CloseMonth { .. }
            | Command::AddCredit { .. }
            | Command::RecordWebhook { .. } => 4,
            Command::Signup { .. } => 5,
            Command::Zone { .. } => 6,
            Command::RecordInvoiceMail { .. } => 7,
            Command::RestoreState { .. }
            | Command::Backup {
                command:
                    backups::BackupCommand::Recovered { .. }
                    | backups::BackupCommand::RestoreInto { .. },
            } => 9,
            Command::Backup { .. } => 8,
            // A plan's backup schedule, and a limit on members' backups a day.
            Command::PutPlan { plan, .. }
                if plan.backup.is_some() || plan.quota.backups_per_day.is_some() =>
            {
                8
            }
            Command::PutAccount { account, .. } if account.quota.backups_per_day.is_some() => 8,
            // CAA records, and a zone quota on a plan or an account.
            Command::PutRecords { records, .. }
                if records
                    .values
                    .iter()
                    .any(|v| matches!(v, hearth_types::desired::RecordData::Caa { .. })) =>
            {
                6
            }
            Command::PutPlan { plan, .. } if plan.storage.is_some() => 10,
            Command::PutPlan { plan, .. } if plan.quota.zones.is_some() => 6,
            Command::PutAccount { account, .. } if account.quota.zones.is_some() => 6,
            // The new account fields an older node would drop.
            Command::PutAccount { account, .. }
                if account.unverified || account.awaiting_approval =>
            {
                5
            }
            // Network limits in a plan's or an account's quota (level 3).
            Command::PutPlan { plan, .. }
                if plan.quota.io().limits_network() || plan.prices.is_some() =>
            {
                3
            }
            Command::PutAccount { account, .. } if account.quota.io().limits_network() => 3,
            Command::Compute { command } => command.level(),
            _ => 1,
        }
    }
}

/// The highest level every live (alive or suspect) node in `view` reads.
pub fn cluster_level(view: &hearth_types::View) -> u32 {
    view.members
        .values()
        .filter(|m| {
            matches!(
                m.state,
                hearth_types::MemberState::Alive | hearth_types::MemberState::Suspect
            )
        })
        .map(|m| {
            m.meta
                .tags
                .get(LEVEL_TAG)
                .and_then(|level| level.parse().ok())
                .unwrap_or(1)
        })
        .min()
        .unwrap_or(STATE_LEVEL)
}

/// The highest level every node that must read the log reads: the live nodes in `view`
/// (see [`cluster_level`]), and, while this node's gossip is still `warming` up after its
/// start, every member of the Raft group (`group`, by name) it has not heard from yet,
/// taken for the oldest release. Else a node that restarts before it hears of an older
/// server would write what that server cannot read.
pub fn group_level<'a>(
    view: &hearth_types::View,
    group: impl IntoIterator<Item = &'a str>,
    warming: bool,
) -> u32 {
    let unheard = warming
        && group
            .into_iter()
            .any(|name| !view.members.contains_key(name));
    match unheard {
        true => 1,
        false => cluster_level(view),
    }
}

/// Applies `command`, committed at log `index`, to `state`. Either the whole command takes
/// effect or none of it does.
pub fn apply(state: &mut DesiredState, command: &Command, index: u64) -> Outcome {
    match command {
        Command::PutService { service, expect } => put_service(state, service, *expect, index),
        Command::RemoveService { name, expect } => {
            remove(&mut state.services, &name.to_ascii_lowercase(), *expect)
        }
        Command::PutNotice { notice, expect } => put_notice(state, notice, *expect, index),
        Command::RecordUptime { at_ms, up } => {
            match hearth_types::uptime::record(&mut state.uptime, *at_ms, up) {
                true => Outcome::Applied { version: index },
                false => Outcome::Nothing,
            }
        }
        Command::RemoveNotice { id, expect } => remove(&mut state.notices, id, *expect),
        Command::RecordUsage { host, rows } => billing::record_usage(state, host, rows, index),
        Command::CloseMonth { month, at_ms } => billing::close_month(state, month, *at_ms, index),
        Command::AddCredit { credit } => billing::add_credit(state, credit, index),
        Command::RecordWebhook { key, delivery } => {
            billing::record_webhook(state, key, delivery, index)
        }
        Command::RecordInvoiceMail { key, delivery } => {
            billing::record_mail(state, key, delivery, index)
        }
        Command::PutAccount {
            account,
            expect,
            revoke_tokens,
        } => put_account(state, account, *expect, *revoke_tokens, index),
        Command::RemoveAccount { name, expect } => remove_account(state, name, *expect, index),
        Command::PutToken { token } => put_token(state, token, index),
        Command::Signup { command } => signup::apply(state, command, index),
        Command::Zone { command } => zones::apply(state, command, index),
        Command::Backup { command } => backups::apply(state, command, index),
        Command::RestoreState { restore } => restore::apply(state, restore, index),
        Command::Audit { entry } => audit(state, entry, index),
        Command::RevokeToken { id } => revoke_token(state, id, index),
        Command::PutRecords { records, expect } => put_records(state, records, *expect, index),
        Command::RemoveRecords { key, expect } => remove_records(state, key, *expect),
        Command::SetDrain {
            node,
            drained,
            expect,
        } => put(&mut state.drained, node.clone(), *drained, *expect, index),
        Command::ObserveMember { member, at_ms } => observe_member(state, member, *at_ms, index),
        Command::ObserveCheck {
            member,
            instance,
            at_ms,
        } => observe_check(state, member, instance, *at_ms, index),
        Command::RecordDelivery {
            event,
            handler,
            delivery,
        } => record_delivery(state, *event, handler, delivery, index),
        Command::PutPlan { plan, expect } => put_plan(state, plan, *expect, index),
        Command::RemovePlan { name, expect } => remove(&mut state.plans, name, *expect),
        Command::Compute { command } => apply_compute(state, command, index),
        Command::Batch { commands } => Outcome::Many {
            outcomes: commands
                .iter()
                .map(|command| match command {
                    Command::Batch { .. } => Outcome::Invalid {
                        message: "batch: a batch cannot hold another batch".into(),
                    },
                    command => apply(state, command, index),
                })
                .collect(),
        },
    }
}

/// A compute command, admitted by the owner's quota, and the VM event it raises.
pub(super) fn apply_compute(
    state: &mut DesiredState,
    command: &ComputeCommand,
    index: u64,
) -> Outcome {
    if let Some(message) = backups::blocks(state, command) {
        return Outcome::Refused { message };
    }
    let command = match quota::admit(state, command) {
        Ok(command) => command,
        Err(message) => return Outcome::Refused { message },
    };
    let command = command.as_ref();
    let before = vm_events::before(state, command);
    let outcome = match command {
        ComputeCommand::CreateVm { request } => {
            let storage = quota::plan_storage(state, &request.owner);
            compute::create_vm(&mut state.compute, request, storage.as_ref(), index)
        }
        _ => compute::apply(&mut state.compute, command, index),
    };
    // An admin who gives the disk up gives up its recovery from a backup too.
    if let ComputeCommand::Recreate { vm, .. } = command
        && outcome.changed()
        && let Some(backups) = state.backups.vms.get_mut(vm)
    {
        backups.recover = None;
    }
    if let Some((event, at_ms)) = before.and_then(|b| vm_events::raised(state, b)) {
        record_event(state, event, at_ms, index);
    }
    outcome
}

fn put_service(
    state: &mut DesiredState,
    service: &ClusterService,
    expect: Expect,
    index: u64,
) -> Outcome {
    if let Err(message) = service.validate() {
        return Outcome::Invalid { message };
    }
    let key = service.name.to_ascii_lowercase();
    put(&mut state.services, key, service.clone(), expect, index)
}

fn put_notice(
    state: &mut DesiredState,
    notice: &hearth_types::notice::Notice,
    expect: Expect,
    index: u64,
) -> Outcome {
    if let Err(message) = notice.validate() {
        return Outcome::Invalid { message };
    }
    put(
        &mut state.notices,
        notice.id.clone(),
        notice.clone(),
        expect,
        index,
    )
}

fn put_account(
    state: &mut DesiredState,
    account: &hearth_types::account::Account,
    expect: Expect,
    revoke_tokens: bool,
    index: u64,
) -> Outcome {
    if let Err(message) = account.validate() {
        return Outcome::Invalid { message };
    }
    let new_password = state
        .accounts
        .get(&account.name)
        .is_some_and(|old| old.value.password_hash != account.password_hash);
    let outcome = put(
        &mut state.accounts,
        account.name.clone(),
        account.clone(),
        expect,
        index,
    );
    if new_password && outcome.changed() {
        // Sessions end with the password that opened them; tokens too when asked.
        state
            .tokens
            .retain(|_, t| t.value.account != account.name || !t.value.is_session());
        state.tokens.change_where(
            |_, t| revoke_tokens && t.value.account == account.name && !t.value.revoked,
            |_, token| {
                token.value.revoked = true;
                token.version = index;
            },
        );
    }
    outcome
}

fn put_token(
    state: &mut DesiredState,
    token: &hearth_types::account::ApiToken,
    index: u64,
) -> Outcome {
    if !state.accounts.contains_key(&token.account) {
        return Outcome::Invalid {
            message: format!("account: no account named {}", token.account),
        };
    }
    if token.id.is_empty() || token.secret_sha256.len() != 64 {
        return Outcome::Invalid {
            message: "id: a token needs an id and a sha256".into(),
        };
    }
    // Expired tokens (old web sessions) go, with the new token's creation time as the clock,
    // so every replica drops the same ones.
    state
        .tokens
        .retain(|_, t| t.value.expires_at.is_none_or(|at| at > token.created_at));
    put(
        &mut state.tokens,
        token.id.clone(),
        token.clone(),
        Expect::Absent,
        index,
    )
}

fn put_plan(
    state: &mut DesiredState,
    plan: &hearth_types::quota::Plan,
    expect: Expect,
    index: u64,
) -> Outcome {
    if let Err(message) = plan.validate() {
        return Outcome::Invalid { message };
    }
    if let Some(policy) = &plan.backup
        && !state.backups.targets.contains_key(&policy.target)
    {
        return Outcome::Refused {
            message: format!(
                "backup.target: no backup target {:?} (hearth backup target list)",
                policy.target
            ),
        };
    }
    put(
        &mut state.plans,
        plan.name.clone(),
        plan.clone(),
        expect,
        index,
    )
}

/// Keeps the last `AUDIT_KEEP` entries of each caller.
fn audit(
    state: &mut DesiredState,
    entry: &hearth_types::account::AuditEntry,
    index: u64,
) -> Outcome {
    use hearth_types::account::{AUDIT_KEEP, append_audit};
    append_audit(&mut state.audit, entry.clone(), AUDIT_KEEP);
    Outcome::Applied { version: index }
}

fn revoke_token(state: &mut DesiredState, id: &str, index: u64) -> Outcome {
    match state.tokens.get_mut(id) {
        None => Outcome::NotFound,
        // A session that ends (logout) leaves nothing behind.
        Some(token) if token.value.expires_at.is_some() => {
            state.tokens.remove(id);
            Outcome::Removed
        }
        Some(token) if token.value.revoked => Outcome::Nothing,
        Some(token) => {
            token.value.revoked = true;
            token.version = index;
            Outcome::Applied { version: index }
        }
    }
}

fn put_records(
    state: &mut DesiredState,
    records: &RecordSet,
    expect: Expect,
    index: u64,
) -> Outcome {
    let key = match (records.validate(), records.key()) {
        (Ok(()), Some(key)) => key,
        (Err(message), _) => return Outcome::Invalid { message },
        (Ok(()), None) => {
            return Outcome::Invalid {
                message: "values: give at least one value".into(),
            };
        }
    };
    put(&mut state.records, key, records.clone(), expect, index)
}

fn remove_records(state: &mut DesiredState, key: &str, expect: Expect) -> Outcome {
    let key = match key.split_once('/') {
        Some((name, kind)) => record_key(name, kind),
        None => {
            return Outcome::Invalid {
                message: format!("key: `{key}` is not NAME/TYPE"),
            };
        }
    };
    remove(&mut state.records, &key, expect)
}

fn record_delivery(
    state: &mut DesiredState,
    event: u64,
    handler: &str,
    delivery: &Delivery,
    index: u64,
) -> Outcome {
    match state.events.get_mut(&event) {
        Some(record) => {
            record
                .deliveries
                .insert(handler.to_owned(), delivery.clone());
            Outcome::Applied { version: index }
        }
        None => Outcome::NotFound,
    }
}

/// The event a member's change of state is, if any.
fn member_event(before: Option<&MemberRow>, now: &MemberRow) -> Option<EventKind> {
    let was_up = before.is_some_and(|b| b.state.is_up());
    match (was_up, now.state.is_up(), now.state) {
        (false, true, _) => Some(EventKind::MemberJoin),
        (true, false, hearth_types::MemberState::Dead) => Some(EventKind::MemberFailed),
        (true, false, _) => Some(EventKind::MemberLeave),
        (true, true, _) => {
            let changed = before.is_some_and(|b| {
                (&b.address, &b.roles, &b.tags) != (&now.address, &now.roles, &now.tags)
            });
            changed.then_some(EventKind::MemberUpdate)
        }
        (false, false, _) => None,
    }
}

fn observe_member(state: &mut DesiredState, member: &MemberRow, at_ms: u64, index: u64) -> Outcome {
    let before = state.observed.members.get(&member.name);
    if before == Some(member) {
        return Outcome::Nothing;
    }
    let kind = member_event(before, member);
    state
        .observed
        .members
        .insert(member.name.clone(), member.clone());
    if let Some(kind) = kind {
        record_event(
            state,
            ClusterEvent {
                kind,
                member: member.clone(),
                instance: None,
                vm: None,
            },
            at_ms,
            index,
        );
    }
    Outcome::Applied { version: index }
}

fn observe_check(
    state: &mut DesiredState,
    member: &MemberRow,
    instance: &ServiceInstance,
    at_ms: u64,
    index: u64,
) -> Outcome {
    let key = format!("{}/{}", member.name, instance.service);
    let before = state.observed.checks.insert(key, instance.status);
    let kind = match instance.status {
        _ if before == Some(instance.status) => return Outcome::Nothing,
        hearth_types::CheckStatus::Passing => EventKind::CheckPassing,
        hearth_types::CheckStatus::Failing => EventKind::CheckFailing,
        hearth_types::CheckStatus::Unknown => return Outcome::Applied { version: index },
    };
    let event = ClusterEvent {
        kind,
        member: member.clone(),
        instance: Some(instance.clone()),
        vm: None,
    };
    record_event(state, event, at_ms, index);
    Outcome::Applied { version: index }
}

/// Records `event` under the log `index` that raised it, or the next free id after the
/// last event when an earlier command of the same batch took that one: ids stay unique and
/// increasing, and are the same on every node.
fn record_event(state: &mut DesiredState, event: ClusterEvent, at_ms: u64, index: u64) {
    let id = state
        .events
        .get_max()
        .map_or(index, |(last, _)| index.max(last + 1));
    state.events.insert(
        id,
        EventRecord {
            id,
            at_ms,
            event,
            deliveries: Default::default(),
        },
    );
    while state.events.len() > MAX_EVENTS
        && let Some(oldest) = state.events.get_min().map(|(id, _)| *id)
    {
        state.events.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::desired::RecordData;
    use hearth_types::desired::Versioned;

    #[test]
    fn new_commands_wait_until_every_live_node_reads_them() {
        use hearth_types::{Member, MemberState, NodeMeta, View};
        let member = |name: &str, state, level: Option<&str>| Member {
            meta: NodeMeta {
                name: name.into(),
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                address: "192.0.2.1".parse().unwrap(),
                roles: vec![],
                tags: level
                    .map(|l| (LEVEL_TAG.to_owned(), l.to_owned()))
                    .into_iter()
                    .collect(),
                rpc_addr: None,
                in_group: true,
            },
            state,
            services: vec![],
        };
        let view = |members: Vec<Member>| View {
            members: members
                .into_iter()
                .map(|m| (m.meta.name.clone(), m))
                .collect(),
            ..View::default()
        };
        let upgraded = view(vec![
            member("n1", MemberState::Alive, Some("2")),
            member("n2", MemberState::Suspect, Some("2")),
            // A dead node of an old release does not hold the cluster back.
            member("n3", MemberState::Dead, None),
        ]);
        assert_eq!(cluster_level(&upgraded), 2);
        let mixed = view(vec![
            member("n1", MemberState::Alive, Some("2")),
            member("n2", MemberState::Alive, None),
        ]);
        assert_eq!(cluster_level(&mixed), 1);
        let uptime = Command::RecordUptime {
            at_ms: 1,
            up: Default::default(),
        };
        assert!(uptime.level() > cluster_level(&mixed));
        // Just started, before gossip brought n3's announcement: n3 may be old.
        assert_eq!(group_level(&upgraded, ["n1", "n2", "n4"], true), 1);
        assert_eq!(group_level(&upgraded, ["n1", "n2", "n4"], false), 2);
        assert_eq!(group_level(&upgraded, ["n1", "n2", "n3"], true), 2);
        let first = Command::RemoveNotice {
            id: "n".into(),
            expect: Default::default(),
        };
        assert_eq!(first.level(), 1);
        assert!(STATE_LEVEL >= uptime.level());
        // Network limits are level 3; the same command without them is not.
        let mut io = hearth_types::compute::IoLimits::default();
        let set = |io| Command::Compute {
            command: ComputeCommand::SetIo {
                vm: "vm-1".into(),
                io,
                expect: Default::default(),
            },
        };
        assert_eq!(set(io).level(), 1);
        io.net_out_bytes_per_sec = Some(1000);
        assert_eq!(set(io).level(), 3);
        assert!(STATE_LEVEL >= set(io).level());
    }

    fn a_record(name: &str, ip: &str) -> RecordSet {
        RecordSet {
            name: name.into(),
            ttl: None,
            values: vec![RecordData::A {
                address: ip.parse().unwrap(),
            }],
        }
    }

    #[test]
    fn a_batch_applies_each_command_on_its_own_and_survives_the_log_encoding() {
        let mut state = DesiredState::default();
        let batch = Command::Batch {
            commands: vec![
                Command::PutRecords {
                    records: a_record("www", "192.0.2.1"),
                    expect: Expect::Any,
                },
                Command::RemoveRecords {
                    key: "missing/A".into(),
                    expect: Expect::Any,
                },
                Command::PutRecords {
                    records: a_record("mail", "192.0.2.2"),
                    expect: Expect::Version(3),
                },
                Command::Batch { commands: vec![] },
            ],
        };
        // The log stores commands as JSON; a batch must round-trip.
        let decoded: Command =
            serde_json::from_slice(&serde_json::to_vec(&batch).unwrap()).unwrap();
        assert_eq!(decoded, batch);
        let outcome = apply(&mut state, &decoded, 9);
        let Outcome::Many { outcomes } = &outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(outcomes[0], Outcome::Applied { version: 9 });
        assert_eq!(outcomes[1], Outcome::NotFound);
        assert_eq!(outcomes[2], Outcome::Conflict { current: None });
        assert!(matches!(outcomes[3], Outcome::Invalid { .. }));
        assert!(outcome.changed());
        assert_eq!(state.records.len(), 1);
        let encoded = serde_json::to_vec(&outcome).unwrap();
        assert_eq!(
            serde_json::from_slice::<Outcome>(&encoded).unwrap(),
            outcome
        );
    }

    #[test]
    fn sessions_expire_on_every_replica_alike_and_logout_leaves_nothing() {
        use hearth_types::account::{Account, AccountRole, ApiToken, TokenScope};
        let mut state = DesiredState::default();
        let account = Account {
            name: "alice".into(),
            role: AccountRole::Member,
            email: String::new(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            ssh_keys: Default::default(),
            disabled: false,
            plan: None,
            quota: Default::default(),
            unverified: false,
            awaiting_approval: false,
        };
        let put_account = Command::PutAccount {
            account,
            expect: Expect::Absent,
            revoke_tokens: false,
        };
        assert!(apply(&mut state, &put_account, 1).changed());
        let token = |id: &str, created_at: u64, expires_at: Option<u64>| Command::PutToken {
            token: ApiToken {
                id: id.into(),
                account: "alice".into(),
                scope: TokenScope::Full,
                secret_sha256: "0".repeat(64),
                note: String::new(),
                created_at,
                revoked: false,
                expires_at,
                session: expires_at.is_some(),
            },
        };
        apply(&mut state, &token("api", 100, None), 2);
        apply(&mut state, &token("s1", 100, Some(200)), 3);
        apply(&mut state, &token("s2", 150, Some(1000)), 4);
        assert_eq!(state.tokens.len(), 3);
        // A token created at 200 is the clock that retires s1, not s2 or the API token.
        apply(&mut state, &token("s3", 200, Some(1200)), 5);
        let ids: Vec<_> = state.tokens.keys().cloned().collect();
        assert_eq!(ids, ["api", "s2", "s3"]);
        // Logging out removes the session; revoking an API token keeps it, flagged.
        let revoke = |id: &str| Command::RevokeToken { id: id.into() };
        assert_eq!(apply(&mut state, &revoke("s2"), 6), Outcome::Removed);
        assert!(!state.tokens.contains_key("s2"));
        apply(&mut state, &revoke("api"), 7);
        assert!(state.tokens["api"].value.revoked);

        // A new password ends the sessions in the same entry; API tokens stay unless asked.
        apply(&mut state, &token("api2", 300, None), 8);
        let mut changed = state.accounts["alice"].value.clone();
        changed.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$bmV3".into();
        let change =
            |account: &hearth_types::account::Account, revoke_tokens| Command::PutAccount {
                account: account.clone(),
                expect: Expect::Any,
                revoke_tokens,
            };
        assert!(apply(&mut state, &change(&changed, false), 9).changed());
        let ids: Vec<_> = state.tokens.keys().cloned().collect();
        assert_eq!(ids, ["api", "api2"], "s3, a session, ended");
        assert!(!state.tokens["api2"].value.revoked);
        // The same password again changes nothing; a newer one with revoke_tokens revokes.
        assert!(apply(&mut state, &change(&changed, true), 10).changed());
        assert!(!state.tokens["api2"].value.revoked, "not a new password");
        changed.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$bmV3ZXI".into();
        apply(&mut state, &change(&changed, true), 11);
        assert!(state.tokens["api2"].value.revoked);

        // An account that owns VMs cannot be removed: the next account of that name would
        // get them.
        let mut vm = hearth_types::compute::Vm::example("vm-9", "web", "alice");
        vm.phase_since = 8;
        vm.disk = Default::default();
        state.compute.vms.insert(
            "vm-9".into(),
            Versioned {
                version: 8,
                value: vm.clone(),
            },
        );
        let remove = Command::RemoveAccount {
            name: "alice".into(),
            expect: Expect::Any,
        };
        let outcome = apply(&mut state, &remove, 9);
        assert!(
            matches!(&outcome, Outcome::Invalid { message } if message.contains("web")),
            "{outcome:?}"
        );
        assert!(state.accounts.contains_key("alice"));
        vm.request.owner = "bob".into();
        state.compute.vms.get_mut("vm-9").unwrap().value = vm;
        assert_eq!(apply(&mut state, &remove, 10), Outcome::Removed);
    }

    #[test]
    fn versions_are_log_indices_and_cas_checks_them() {
        let mut state = DesiredState::default();
        let put = |expect| Command::PutRecords {
            records: a_record("Mail", "192.0.2.1"),
            expect,
        };
        assert_eq!(
            apply(&mut state, &put(Expect::Absent), 5),
            Outcome::Applied { version: 5 }
        );
        assert_eq!(
            apply(&mut state, &put(Expect::Absent), 6),
            Outcome::Conflict { current: Some(5) }
        );
        assert_eq!(
            apply(&mut state, &put(Expect::Version(4)), 7),
            Outcome::Conflict { current: Some(5) }
        );
        assert_eq!(
            apply(&mut state, &put(Expect::Version(5)), 8),
            Outcome::Applied { version: 8 }
        );
        assert_eq!(state.records["mail/A"].version, 8);
        let remove = |expect| Command::RemoveRecords {
            key: "MAIL/a".into(),
            expect,
        };
        assert_eq!(
            apply(&mut state, &remove(Expect::Version(5)), 9),
            Outcome::Conflict { current: Some(8) }
        );
        assert_eq!(
            apply(&mut state, &remove(Expect::Any), 10),
            Outcome::Removed
        );
        assert_eq!(
            apply(&mut state, &remove(Expect::Any), 11),
            Outcome::NotFound
        );
        assert!(state.records.is_empty());
    }

    #[test]
    fn invalid_commands_change_nothing_and_name_the_field() {
        let mut state = DesiredState::default();
        let bad = Command::PutRecords {
            records: RecordSet {
                name: "bad name".into(),
                ttl: None,
                values: vec![],
            },
            expect: Expect::Any,
        };
        let Outcome::Invalid { message } = apply(&mut state, &bad, 1) else {
            panic!("accepted an invalid record set");
        };
        assert!(message.starts_with("name:"), "{message}");
        let bad = Command::PutService {
            service: ClusterService {
                name: "web".into(),
                nodes: vec!["n 1".into()],
                check: None,
            },
            expect: Expect::Any,
        };
        let Outcome::Invalid { message } = apply(&mut state, &bad, 2) else {
            panic!("accepted an invalid service");
        };
        assert!(message.starts_with("nodes[0]"), "{message}");
        assert_eq!(state, DesiredState::default());
    }

    fn row(name: &str, state: hearth_types::MemberState) -> MemberRow {
        MemberRow {
            name: name.into(),
            address: "10.0.0.1".parse().unwrap(),
            gossip_addr: "10.0.0.1:7946".parse().unwrap(),
            state,
            roles: vec![],
            tags: Default::default(),
            rpc_addr: None,
        }
    }

    #[test]
    fn a_restore_of_a_state_with_events_goes_through_the_log_encoding() {
        let mut old = DesiredState::default();
        let observe = Command::ObserveMember {
            member: row("n2", hearth_types::MemberState::Alive),
            at_ms: 1,
        };
        apply(&mut old, &observe, 10);
        assert!(!old.events.is_empty());
        let command = Command::RestoreState {
            restore: Box::new(hearth_types::backup::StateRestore {
                snapshot: "s".into(),
                file: hearth_types::backup::StateFile {
                    index: 10,
                    taken_ms: 1,
                    state: old,
                },
                snapshots: Default::default(),
                check: false,
            }),
        };
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), command);
    }

    #[test]
    fn observations_record_each_change_once_with_the_log_index_as_id() {
        use hearth_types::MemberState::*;
        let mut state = DesiredState::default();
        let observe = |s| Command::ObserveMember {
            member: row("n2", s),
            at_ms: 1,
        };
        apply(&mut state, &observe(Alive), 10);
        // A second leader observing the same state records nothing.
        assert_eq!(apply(&mut state, &observe(Alive), 11), Outcome::Nothing);
        apply(&mut state, &observe(Suspect), 12);
        apply(&mut state, &observe(Dead), 13);
        apply(&mut state, &observe(Dead), 14);
        let kinds: Vec<(u64, EventKind)> = state
            .events
            .values()
            .map(|e| (e.id, e.event.kind))
            .collect();
        assert_eq!(
            kinds,
            [(10, EventKind::MemberJoin), (13, EventKind::MemberFailed)]
        );
        let delivered = Command::RecordDelivery {
            event: 13,
            handler: "pager".into(),
            delivery: Delivery {
                attempts: 1,
                delivered: true,
                ..Default::default()
            },
        };
        assert_eq!(
            apply(&mut state, &delivered, 15),
            Outcome::Applied { version: 15 }
        );
        assert!(state.events[&13].deliveries["pager"].delivered);
        let unknown = Command::RecordDelivery {
            event: 99,
            handler: "pager".into(),
            delivery: Delivery::default(),
        };
        assert_eq!(apply(&mut state, &unknown, 16), Outcome::NotFound);
    }

    #[test]
    fn old_events_are_pruned() {
        let mut state = DesiredState::default();
        for i in 0..(MAX_EVENTS as u64 + 10) {
            let status = if i % 2 == 0 {
                hearth_types::CheckStatus::Passing
            } else {
                hearth_types::CheckStatus::Failing
            };
            let instance = ServiceInstance {
                service: "www".into(),
                address: "10.0.0.1".parse().unwrap(),
                status,
            };
            let command = Command::ObserveCheck {
                member: row("n1", hearth_types::MemberState::Alive),
                instance,
                at_ms: i,
            };
            apply(&mut state, &command, i + 1);
        }
        assert_eq!(state.events.len(), MAX_EVENTS);
        assert_eq!(state.events.keys().next(), Some(&11));
    }

    #[test]
    fn drain_flags() {
        let mut state = DesiredState::default();
        let drain = |drained| Command::SetDrain {
            node: "n2".into(),
            drained,
            expect: Expect::Any,
        };
        apply(&mut state, &drain(true), 3);
        assert!(state.is_drained("n2"));
        apply(&mut state, &drain(false), 4);
        assert!(!state.is_drained("n2"));
    }
}
