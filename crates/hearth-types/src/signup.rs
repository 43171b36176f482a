//! Sign-up, as kept in the desired state: the co-op's setting (closed, by invite code, or
//! with an admin's approval), its invite codes, and the single-use, expiring tokens that
//! verify an email address or reset a password. Only sha256s of codes and tokens are kept,
//! and the pure rules here (`redeem`, `use_token`, `prune`) take the time as an argument,
//! so every replica applies them alike.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::check_name;

/// How long an email verification link works.
pub const VERIFY_SECS: u64 = 48 * 3600;
/// How long a password reset link works.
pub const RESET_SECS: u64 = 3600;
/// The most invites and email tokens kept at once (expired ones go first).
pub const MAX_PENDING: usize = 10_000;

/// What a `public_url` may be: empty, or http(s):// and a host, maybe a port and a path, with
/// no query, fragment or character a link would need escaped.
pub const PUBLIC_URL_PATTERN: &str =
    r"^$|^https?://[A-Za-z0-9._~:@!$&'()*+,;=%\[\]-][A-Za-z0-9._~:@!$&'()*+,;=%\[\]/-]*$";

/// The characters [`PUBLIC_URL_PATTERN`] allows after the scheme.
fn url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._~:@!$&'()*+,;=%[]-/".contains(c)
}

/// Who may create an account on the public sign-up page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignupMode {
    /// Nobody: admins create accounts.
    #[default]
    Closed,
    /// Whoever has an unused invite code.
    Invite,
    /// Anybody, but the account works only once an admin approved it.
    Approval,
}

impl SignupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupMode::Closed => "closed",
            SignupMode::Invite => "invite",
            SignupMode::Approval => "approval",
        }
    }
}

/// The co-op's sign-up setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupSettings {
    pub mode: SignupMode,
    /// The panel's address as members reach it (`https://panel.coop.example`): the links
    /// in verification and reset emails start with it, never with the `Host` a request
    /// named, which anyone can set.
    #[serde(default)]
    #[schemars(length(max = 200), regex(pattern = PUBLIC_URL_PATTERN))]
    pub public_url: String,
    /// The plan new members get (`None`: the default plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub plan: Option<String>,
}

impl SignupSettings {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(plan) = &self.plan {
            check_name("plan", plan)?;
        }
        if self.public_url.is_empty() {
            return match self.mode {
                SignupMode::Closed => Ok(()),
                _ => Err("public_url: sign-up sends links to the panel; give its address as members reach it (https://panel.example.org)".into()),
            };
        }
        let rest = self
            .public_url
            .strip_prefix("https://")
            .or_else(|| self.public_url.strip_prefix("http://"));
        let fine = rest.is_some_and(|rest| {
            !rest.is_empty() && !rest.starts_with('/') && rest.chars().all(url_char)
        });
        if !fine || self.public_url.len() > 200 {
            return Err(format!(
                "public_url: `{}` is not an http:// or https:// address without a query",
                self.public_url
            ));
        }
        Ok(())
    }

    /// The link to `path` (with its query) on the panel.
    pub fn link(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.public_url.trim_end_matches('/'))
    }
}

/// An invite code, kept by its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Invite {
    /// The first 16 hex digits of the code's sha256: how admins name it.
    pub id: String,
    pub code_sha256: String,
    #[serde(default)]
    pub note: String,
    pub created_by: String,
    pub created_at: u64,
    /// Unix seconds after which it no longer works.
    pub expires_at: u64,
    /// The account it made, once used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
}

/// What an emailed token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MailPurpose {
    /// Proves the account's email address.
    Verify,
    /// Sets a new password.
    Reset,
}

/// A token sent by email, kept by its sha256; it works once, until `expires_at`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MailToken {
    pub sha256: String,
    pub account: String,
    pub purpose: MailPurpose,
    pub expires_at: u64,
    #[serde(default)]
    pub used: bool,
}

impl std::fmt::Debug for MailToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailToken")
            .field("account", &self.account)
            .field("purpose", &self.purpose)
            .field("expires_at", &self.expires_at)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// Sign-up in the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signup {
    #[serde(default)]
    pub settings: SignupSettings,
    /// By id.
    #[serde(default)]
    pub invites: BTreeMap<String, Invite>,
    /// By sha256.
    #[serde(default)]
    pub tokens: BTreeMap<String, MailToken>,
}

impl Signup {
    /// Drops invites and tokens that expired by `now`.
    pub fn prune(&mut self, now: u64) {
        self.invites.retain(|_, invite| invite.expires_at > now);
        self.tokens.retain(|_, token| token.expires_at > now);
    }

    /// Whether there is room for one more invite or token.
    pub fn has_room(&self) -> bool {
        self.invites.len() + self.tokens.len() < MAX_PENDING
    }

    /// Marks the invite whose code has `code_sha256` used by `account`, if it is unused
    /// and unexpired at `now`; otherwise why not (one message, whatever the reason, so a
    /// guesser learns nothing).
    pub fn redeem(&mut self, code_sha256: &str, account: &str, now: u64) -> Result<(), String> {
        let invite = self
            .invites
            .values_mut()
            .find(|invite| invite.code_sha256 == code_sha256)
            .filter(|invite| invite.used_by.is_none() && invite.expires_at > now);
        match invite {
            Some(invite) => {
                invite.used_by = Some(account.to_owned());
                Ok(())
            }
            None => Err("invite: the code is wrong, used or expired".into()),
        }
    }

    /// Uses the token with `sha256` for `purpose` at `now`: its account, once; afterwards,
    /// and when it expired or never existed, why not.
    pub fn use_token(
        &mut self,
        sha256: &str,
        purpose: MailPurpose,
        now: u64,
    ) -> Result<String, String> {
        match self.tokens.get_mut(sha256) {
            Some(token) if token.purpose == purpose && !token.used && token.expires_at > now => {
                token.used = true;
                Ok(token.account.clone())
            }
            _ => Err(
                "token: this link was already used, has expired, or is wrong; ask for a new one"
                    .into(),
            ),
        }
    }

    /// Ends the account's unused tokens of `purpose` (a newer one replaces them).
    pub fn retire(&mut self, account: &str, purpose: MailPurpose) {
        for token in self.tokens.values_mut() {
            if token.account == account && token.purpose == purpose {
                token.used = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sha: &str, purpose: MailPurpose, expires_at: u64) -> MailToken {
        MailToken {
            sha256: sha.into(),
            account: "mia".into(),
            purpose,
            expires_at,
            used: false,
        }
    }

    #[test]
    fn a_token_works_once_for_its_purpose_until_it_expires() {
        let mut signup = Signup::default();
        for (sha, purpose) in [("a", MailPurpose::Verify), ("b", MailPurpose::Reset)] {
            signup.tokens.insert(sha.into(), token(sha, purpose, 100));
        }
        assert!(
            signup.use_token("a", MailPurpose::Reset, 10).is_err(),
            "wrong purpose"
        );
        assert_eq!(
            signup.use_token("a", MailPurpose::Verify, 10),
            Ok("mia".into())
        );
        assert!(
            signup.use_token("a", MailPurpose::Verify, 11).is_err(),
            "used"
        );
        assert!(
            signup.use_token("b", MailPurpose::Reset, 100).is_err(),
            "expired"
        );
        assert!(
            signup.use_token("c", MailPurpose::Reset, 1).is_err(),
            "unknown"
        );
        signup.prune(100);
        assert!(signup.tokens.is_empty());
    }

    #[test]
    fn an_invite_makes_one_account_before_it_expires() {
        let mut signup = Signup::default();
        signup.invites.insert(
            "i1".into(),
            Invite {
                id: "i1".into(),
                code_sha256: "c1".into(),
                note: String::new(),
                created_by: "ann".into(),
                created_at: 0,
                expires_at: 50,
                used_by: None,
            },
        );
        assert!(signup.redeem("c1", "mia", 50).is_err(), "expired");
        assert!(signup.redeem("c2", "mia", 1).is_err(), "wrong code");
        assert_eq!(signup.redeem("c1", "mia", 49), Ok(()));
        assert!(signup.redeem("c1", "max", 49).is_err(), "used");
        assert_eq!(signup.invites["i1"].used_by.as_deref(), Some("mia"));
    }

    #[test]
    fn the_public_url_is_checked_and_links_start_with_it() {
        let settings = |mode, url: &str| SignupSettings {
            mode,
            public_url: url.into(),
            plan: None,
        };
        assert!(settings(SignupMode::Closed, "").validate().is_ok());
        assert!(settings(SignupMode::Invite, "").validate().is_err());
        for bad in [
            "ftp://x",
            "https://",
            "https://a b",
            "https://x/?q=1",
            "x.org",
        ] {
            assert!(
                settings(SignupMode::Approval, bad).validate().is_err(),
                "{bad}"
            );
        }
        let good = settings(SignupMode::Approval, "https://panel.coop.example/");
        assert!(good.validate().is_ok());
        assert_eq!(
            good.link("/verify?token=t"),
            "https://panel.coop.example/verify?token=t"
        );
    }
}
