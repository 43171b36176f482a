//! Accounts (admins and members) and their API tokens, as kept in the desired state. Only
//! hashes are kept: an argon2 PHC string for a password, a sha256 for a token's secret. Their
//! `Debug` output leaves the hashes out, so they never reach a log.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::check_name;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AccountRole {
    Admin,
    Member,
}

impl AccountRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountRole::Admin => "admin",
            AccountRole::Member => "member",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Account {
    /// Also the `owner` of the member's VMs.
    pub name: String,
    pub role: AccountRole,
    #[serde(default)]
    pub email: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    /// The member's SSH public keys, by a name they chose.
    #[serde(default)]
    pub ssh_keys: BTreeMap<String, String>,
    #[serde(default)]
    pub disabled: bool,
    /// The member's plan (`quota::DEFAULT_PLAN` when unset or gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Limits of this account's own, in place of its plan's.
    #[serde(default, skip_serializing_if = "crate::quota::Quota::is_unset")]
    pub quota: crate::quota::Quota,
    /// Signed up, and the email address is not confirmed yet: the account cannot log in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// Signed up while the co-op approves new members, and not approved yet: the account
    /// cannot log in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("email", &self.email)
            .field("ssh_keys", &self.ssh_keys.len())
            .field("disabled", &self.disabled)
            .field("plan", &self.plan)
            .field("unverified", &self.unverified)
            .field("awaiting_approval", &self.awaiting_approval)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// An account with no email, password, keys or plan of its own, as tests write one.
    pub fn example(name: &str, role: AccountRole) -> Account {
        Account {
            name: name.into(),
            role,
            email: String::new(),
            password_hash: String::new(),
            ssh_keys: BTreeMap::new(),
            disabled: false,
            plan: None,
            quota: crate::quota::Quota::default(),
            unverified: false,
            awaiting_approval: false,
        }
    }

    /// Why the account cannot log in or use its tokens now, if it cannot.
    pub fn locked(&self) -> Option<&'static str> {
        if self.disabled {
            Some("This account is disabled.")
        } else if self.unverified {
            Some("Confirm your email address first: open the link we sent to it.")
        } else if self.awaiting_approval {
            Some(
                "An admin has not approved this account yet; you will get an email when they have.",
            )
        } else {
            None
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if !self.email.is_empty() && (!self.email.contains('@') || self.email.len() > 254) {
            return Err(format!("email: `{}` is not an address", self.email));
        }
        if !self.password_hash.starts_with("$argon2") {
            return Err("password_hash: not an argon2 hash".into());
        }
        for (name, key) in &self.ssh_keys {
            check_name("ssh_keys", name)?;
            check_ssh_key(key)?;
        }
        if let Some(plan) = &self.plan {
            check_name("plan", plan)?;
        }
        self.quota.validate().map_err(|e| format!("quota.{e}"))
    }
}

/// An OpenSSH public key line: `TYPE BASE64 [comment]`, one line.
pub fn check_ssh_key(key: &str) -> Result<(), String> {
    let mut parts = key.split_whitespace();
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("");
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    let base64ish = !blob.is_empty()
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if known && base64ish && !key.contains('\n') && key.chars().count() <= 16 * 1024 {
        Ok(())
    } else {
        Err("key: not an OpenSSH public key (TYPE BASE64 [comment])".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    /// Everything the account may do.
    Full,
    /// Reads only.
    ReadOnly,
}

impl TokenScope {
    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Full => "full",
            TokenScope::ReadOnly => "read-only",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiToken {
    pub id: String,
    pub account: String,
    pub scope: TokenScope,
    /// Hex sha256 of the secret part.
    pub secret_sha256: String,
    #[serde(default)]
    pub note: String,
    pub created_at: u64,
    #[serde(default)]
    pub revoked: bool,
    /// Unix seconds after which the token no longer works (web sessions); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A web session, opened by a login: it ends with a password change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
}

impl ApiToken {
    /// Whether this is a web session (sessions opened before the flag existed carry the
    /// login's note and an expiry).
    pub fn is_session(&self) -> bool {
        self.session || (self.expires_at.is_some() && self.note == "web session")
    }

    /// Whether the token still works at `now` (unix seconds).
    pub fn live(&self, now: u64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|at| now < at)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("scope", &self.scope)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// One change made or refused through the API, or one login: who, what, when, and how it
/// ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Unix seconds on the node that took the request.
    pub at: u64,
    /// The account, `root` for a node token, or `anonymous` when no token or password
    /// was accepted (`ANONYMOUS`).
    pub who: String,
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The node that took the request.
    pub node: String,
    /// The client's address as the node saw it (behind a trusted proxy, the address the
    /// proxy reported).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// What else the entry says, such as the account a failed login named.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Audit entries kept per caller (`who`): a caller's oldest entry is dropped for its new
/// one, so no caller, however busy, can push another's entries out.
pub const AUDIT_KEEP: usize = 1000;

/// The `who` of entries no credential stood behind.
pub const ANONYMOUS: &str = "anonymous";

/// Appends `entry` to `log` (oldest first), dropping the oldest entry of the same caller
/// when that caller already has `keep`.
pub fn append_audit(
    log: &mut crate::shared_map::Vector<AuditEntry>,
    entry: AuditEntry,
    keep: usize,
) {
    let mine = log.iter().filter(|e| e.who == entry.who).count();
    if mine >= keep.max(1)
        && let Some(oldest) = log.iter().position(|e| e.who == entry.who)
    {
        log.remove(oldest);
    }
    log.push_back(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_hashes_out() {
        let account = Account {
            name: "alice".into(),
            role: AccountRole::Member,
            email: "alice@example.org".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$SECRETSALT$SECRETHASH".into(),
            ssh_keys: BTreeMap::new(),
            disabled: false,
            plan: None,
            quota: Default::default(),
            unverified: false,
            awaiting_approval: false,
        };
        assert_eq!(account.validate(), Ok(()));
        assert!(!format!("{account:?}").contains("SECRET"));
        let token = ApiToken {
            id: "t1".into(),
            account: "alice".into(),
            scope: TokenScope::Full,
            secret_sha256: "SECRETDIGEST".into(),
            note: String::new(),
            created_at: 1,
            revoked: false,
            expires_at: None,
            session: false,
        };
        assert!(!format!("{token:?}").contains("SECRET"));
    }

    /// Regression: a member's 1 010 refused requests pushed every admin entry out of a
    /// 1 000-entry log.
    #[test]
    fn a_busy_caller_evicts_only_its_own_audit_entries() {
        let entry = |who: &str, at: u64| AuditEntry {
            at,
            who: who.into(),
            method: "PUT".into(),
            path: "/v1/me/ssh-keys/x".into(),
            status: 400,
            node: "n1".into(),
            client: String::new(),
            note: String::new(),
        };
        let mut log = crate::shared_map::Vector::new();
        append_audit(&mut log, entry("ann", 1), 5);
        append_audit(&mut log, entry("root", 2), 5);
        for at in 10..1020 {
            append_audit(&mut log, entry("mallory", at), 5);
        }
        append_audit(&mut log, entry("ann", 2000), 5);
        let who: Vec<(&str, u64)> = log.iter().map(|e| (e.who.as_str(), e.at)).collect();
        assert_eq!(
            who,
            [
                ("ann", 1),
                ("root", 2),
                ("mallory", 1015),
                ("mallory", 1016),
                ("mallory", 1017),
                ("mallory", 1018),
                ("mallory", 1019),
                ("ann", 2000),
            ]
        );
    }

    #[test]
    fn keys_and_emails_are_checked() {
        assert!(check_ssh_key("ssh-ed25519 AAAAC3Nza alice@x").is_ok());
        assert!(check_ssh_key("hello world").is_err());
        assert!(check_ssh_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
    }
}
