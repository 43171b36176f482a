//! Desired-state objects kept in the replicated (Raft) state: cluster-wide services, static
//! DNS records, node drain flags. Each is versioned; writes compare-and-set on the version.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::account::{Account, ApiToken, AuditEntry};
use crate::compute::Compute;
use crate::event::ClusterEvent;
use crate::member::{CheckStatus, MemberRow};
use crate::notice::Notice;
pub use crate::versioned::Versioned;

/// One value of a static DNS record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum RecordData {
    A {
        address: Ipv4Addr,
    },
    Aaaa {
        address: Ipv6Addr,
    },
    Cname {
        #[schemars(length(max = 254), regex(pattern = crate::names::DOMAIN_PATTERN))]
        target: String,
    },
    Txt {
        text: String,
    },
    Mx {
        preference: u16,
        #[schemars(length(max = 254), regex(pattern = crate::names::DOMAIN_PATTERN))]
        exchange: String,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        #[schemars(length(max = 254), regex(pattern = crate::names::DOMAIN_PATTERN))]
        target: String,
    },
    /// Which certificate authorities may issue for the name (RFC 8659).
    Caa {
        /// 128 marks the property critical.
        flags: u8,
        /// `issue`, `issuewild` or `iodef` (or another property of letters and digits).
        #[schemars(length(min = 1, max = 15), regex(pattern = "^[A-Za-z0-9]+$"))]
        tag: String,
        #[schemars(length(max = 255))]
        value: String,
    },
}

impl RecordData {
    pub fn type_name(&self) -> &'static str {
        match self {
            RecordData::A { .. } => "A",
            RecordData::Aaaa { .. } => "AAAA",
            RecordData::Cname { .. } => "CNAME",
            RecordData::Txt { .. } => "TXT",
            RecordData::Mx { .. } => "MX",
            RecordData::Srv { .. } => "SRV",
            RecordData::Caa { .. } => "CAA",
        }
    }

    /// Checks the fields a request may get wrong; the error names the field.
    /// The value as a zone file writes it after the type: `10 mail.example.org` for an MX,
    /// a quoted string for a TXT.
    pub fn value_text(&self) -> String {
        match self {
            RecordData::A { address } => address.to_string(),
            RecordData::Aaaa { address } => address.to_string(),
            RecordData::Cname { target } => target.clone(),
            RecordData::Txt { text } => format!("{text:?}"),
            RecordData::Mx {
                preference,
                exchange,
            } => format!("{preference} {exchange}"),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}"),
            RecordData::Caa { flags, tag, value } => format!("{flags} {tag} {value:?}"),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let check_target = |field: &str, name: &str| {
            if is_domain_name(name) {
                Ok(())
            } else {
                Err(format!("{field}: `{name}` is not a domain name"))
            }
        };
        match self {
            RecordData::A { .. } | RecordData::Aaaa { .. } => Ok(()),
            RecordData::Cname { target } => check_target("target", target),
            RecordData::Txt { text } if text.len() > 255 => {
                Err("text: at most 255 bytes per TXT string".into())
            }
            RecordData::Txt { .. } => Ok(()),
            RecordData::Mx { exchange, .. } => check_target("exchange", exchange),
            RecordData::Srv { target, .. } => check_target("target", target),
            RecordData::Caa { tag, value, .. } => {
                let tag_ok = !tag.is_empty()
                    && tag.len() <= 15
                    && tag.bytes().all(|b| b.is_ascii_alphanumeric());
                if !tag_ok {
                    Err(format!(
                        "tag: `{tag}` is not a CAA property (issue, issuewild, iodef)"
                    ))
                } else if value.len() > 255 || value.contains('"') {
                    Err("value: at most 255 bytes, without quotes".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// The records of one name and type (an RRset), e.g. every `A` of `mail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordSet {
    /// The name relative to the zone (`mail`, `_imap._tcp`), or `@` for the apex.
    #[schemars(length(max = 254), regex(pattern = crate::names::RECORD_NAME_PATTERN))]
    pub name: String,
    pub ttl: Option<u32>,
    #[schemars(length(min = 1))]
    pub values: Vec<RecordData>,
}

impl RecordSet {
    /// `name/TYPE`, the key the set is stored under, lowercase name.
    pub fn key(&self) -> Option<String> {
        let first = self.values.first()?;
        Some(record_key(&self.name, first.type_name()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name != "@" && !is_domain_name(&self.name) {
            return Err(format!(
                "name: `{}` is not a name inside the zone",
                self.name
            ));
        }
        let Some(first) = self.values.first() else {
            return Err("values: give at least one value".into());
        };
        if self
            .values
            .iter()
            .any(|v| v.type_name() != first.type_name())
        {
            return Err("values: all values of a set must have the same type".into());
        }
        if first.type_name() == "CNAME" && self.values.len() > 1 {
            return Err("values: a CNAME has exactly one target".into());
        }
        for (idx, value) in self.values.iter().enumerate() {
            value.validate().map_err(|e| format!("values[{idx}].{e}"))?;
        }
        Ok(())
    }
}

pub fn record_key(name: &str, type_name: &str) -> String {
    format!(
        "{}/{}",
        name.to_ascii_lowercase(),
        type_name.to_ascii_uppercase()
    )
}

fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A check as stored in the desired state (the config file's `[service.check]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// Exactly one of http, tcp and exec.
#[schemars(extend("oneOf" = [
    {"required": ["http"], "properties": {"http": {"type": "string"}}},
    {"required": ["tcp"], "properties": {"tcp": {"type": "string"}}},
    {"required": ["exec"], "properties": {"exec": {"type": "array"}}}
]))]
pub struct CheckSpec {
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub tcp: Option<String>,
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    pub interval_ms: u64,
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    #[schemars(range(min = 1))]
    pub rise: u32,
    #[schemars(range(min = 1))]
    pub fall: u32,
}

/// A service declared once for the whole cluster. Every node it selects runs an instance
/// at its own address, checked locally, exactly as if its config declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterService {
    #[schemars(regex(pattern = crate::names::LABEL_PATTERN))]
    pub name: String,
    /// Node names that run it; empty means every node.
    #[serde(default)]
    #[schemars(inner(regex(pattern = crate::names::LABEL_PATTERN)))]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub check: Option<CheckSpec>,
}

impl ClusterService {
    pub fn validate(&self) -> Result<(), String> {
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !label_ok(&self.name) {
            return Err(format!("name: `{}` must be one DNS label", self.name));
        }
        if let Some(idx) = self.nodes.iter().position(|n| !label_ok(n)) {
            return Err(format!(
                "nodes[{idx}]: `{}` is not a node name",
                self.nodes[idx]
            ));
        }
        if let Some(check) = &self.check {
            let kinds = [
                check.http.is_some(),
                check.tcp.is_some(),
                check.exec.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err("check: set exactly one of http, tcp, exec".into());
            }
            if check.timeout_ms == 0 || check.timeout_ms > check.interval_ms {
                return Err("check.timeout_ms: above zero and at most check.interval_ms".into());
            }
            if check.rise == 0 || check.fall == 0 {
                return Err("check.rise, check.fall: at least 1".into());
            }
        }
        Ok(())
    }

    pub fn runs_on(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n.eq_ignore_ascii_case(node))
    }
}

/// The whole replicated desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DesiredState {
    #[schemars(with = "BTreeMap<String, Versioned<ClusterService>>")]
    pub services: imbl::OrdMap<String, Versioned<ClusterService>>,
    /// Keyed by [`record_key`].
    #[schemars(with = "BTreeMap<String, Versioned<RecordSet>>")]
    pub records: imbl::OrdMap<String, Versioned<RecordSet>>,
    /// Nodes in maintenance: their instances leave DNS.
    #[schemars(with = "BTreeMap<String, Versioned<bool>>")]
    pub drained: imbl::OrdMap<String, Versioned<bool>>,
    #[serde(default)]
    pub observed: Observed,
    /// Recent cluster-wide events by id.
    #[serde(default)]
    #[schemars(with = "BTreeMap<u64, EventRecord>")]
    pub events: imbl::OrdMap<u64, EventRecord>,
    /// Images, IP pools, VMs, worker hosts and drift.
    #[serde(default)]
    pub compute: Compute,
    /// Incidents and maintenance notes for the status page, by id.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<Notice>>")]
    pub notices: imbl::OrdMap<String, Versioned<Notice>>,
    /// Admins and members, by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<Account>>")]
    pub accounts: imbl::OrdMap<String, Versioned<Account>>,
    /// API tokens of accounts, by id.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<ApiToken>>")]
    pub tokens: imbl::OrdMap<String, Versioned<ApiToken>>,
    /// The most recent changes made through the API, oldest first.
    #[serde(default)]
    #[schemars(with = "Vec<AuditEntry>")]
    pub audit: imbl::Vector<AuditEntry>,
    /// Members' plans (quotas), by name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<crate::quota::Plan>>")]
    pub plans: crate::quota::Plans,
    /// Each service's availability per day, sampled by the leader, for the status page.
    #[serde(default)]
    pub uptime: BTreeMap<String, crate::uptime::ServiceUptime>,
    /// Metered usage, credits and closed invoices.
    #[serde(default)]
    pub billing: crate::invoice::Billing,
    /// The sign-up setting, invite codes and emailed tokens.
    #[serde(default)]
    pub signup: crate::signup::Signup,
    /// Members' own DNS zones, by domain.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Versioned<crate::zones::MemberZone>>")]
    pub zones: imbl::OrdMap<String, Versioned<crate::zones::MemberZone>>,
    /// Backup targets, and each VM's backups.
    #[serde(default)]
    pub backups: crate::backup::Backups,
    /// Added to each log index before it is used (as a version, a VM id, …): a cluster
    /// restored from a backup of another one (`hearth restore`) counts on from that
    /// cluster's last index, so no version or id is used twice.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index_base: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DesiredState {
    pub fn is_drained(&self, node: &str) -> bool {
        self.drained.get(node).is_some_and(|d| d.value)
    }
}

/// Whether a cluster handler has run for an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    pub attempts: u32,
    pub delivered: bool,
    pub last_error: Option<String>,
    /// Unix milliseconds before which the next attempt must not start (backoff).
    pub next_attempt_ms: u64,
}

/// A cluster-wide event, recorded through the log so that every leader sees the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventRecord {
    /// From the log index that recorded it (the next free id when one entry raised two):
    /// stable, unique, increasing, and the same on every node.
    pub id: u64,
    /// Unix milliseconds, as the leader that recorded it saw them.
    pub at_ms: u64,
    pub event: ClusterEvent,
    /// By cluster handler name.
    pub deliveries: BTreeMap<String, Delivery>,
}

/// The last observed state of the cluster, as recorded by leaders: events are the changes
/// to it, so a new leader that observes the same state records nothing new.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Observed {
    pub members: BTreeMap<String, MemberRow>,
    /// Keyed `node/service`.
    pub checks: BTreeMap<String, CheckStatus>,
}

/// How many events the state keeps; older ones are dropped first.
pub const MAX_EVENTS: usize = 500;
