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
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("email", &self.email)
            .field("ssh_keys", &self.ssh_keys.len())
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl Account {
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
        Ok(())
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
    if known && base64ish && !key.contains('\n') && key.len() <= 16 * 1024 {
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
}

impl ApiToken {
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

/// One change made through the API: who, what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Unix seconds on the node that took the request.
    pub at: u64,
    /// The account, or `root` for the node token.
    pub who: String,
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The node that took the request.
    pub node: String,
}

/// Audit entries kept; older ones are dropped.
pub const AUDIT_KEEP: usize = 1000;

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
        };
        assert!(!format!("{token:?}").contains("SECRET"));
    }

    #[test]
    fn keys_and_emails_are_checked() {
        assert!(check_ssh_key("ssh-ed25519 AAAAC3Nza alice@x").is_ok());
        assert!(check_ssh_key("hello world").is_err());
        assert!(check_ssh_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
    }
}
