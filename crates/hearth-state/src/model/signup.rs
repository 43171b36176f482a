//! The sign-up commands' `apply`: the co-op's setting, invite codes, a new member's account
//! with its verification token, and the single use of an emailed token (the rules
//! themselves are `hearth_types::signup`). Every command carries the API node's clock, and
//! expired codes and tokens go with it, so every replica keeps the same ones.

use hearth_types::account::{Account, AccountRole};
use hearth_types::desired::DesiredState;
use hearth_types::signup::{Invite, MailPurpose, MailToken, SignupMode, SignupSettings};

use super::Outcome;
use super::cas::{Expect, invalid, put, refused};

/// The sign-up commands: an admin's setting and invites, and the public pages' writes. Each
/// carries the API node's clock (`at`, unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SignupCommand {
    /// Sets the co-op's sign-up setting.
    PutSettings {
        settings: SignupSettings,
    },
    /// Adds an invite code (its sha256).
    PutInvite {
        invite: Invite,
        at: u64,
    },
    RemoveInvite {
        id: String,
    },
    /// A new member's account, unverified, with its verification token; an invite code's
    /// sha256 when the co-op asks for one.
    SignUp {
        account: Box<Account>,
        invite: Option<String>,
        token: MailToken,
        at: u64,
    },
    /// A token for an existing account (a password reset).
    AddMailToken {
        token: MailToken,
        at: u64,
    },
    /// Uses an emailed token once; a reset carries the new password's hash.
    UseMailToken {
        sha256: String,
        purpose: MailPurpose,
        password_hash: Option<String>,
        at: u64,
    },
}

pub(super) fn apply(state: &mut DesiredState, command: &SignupCommand, index: u64) -> Outcome {
    match command {
        SignupCommand::PutSettings { settings } => put_signup(state, settings, index),
        SignupCommand::PutInvite { invite, at } => put_invite(state, invite, *at, index),
        SignupCommand::RemoveInvite { id } => remove_invite(state, id),
        SignupCommand::SignUp {
            account,
            invite,
            token,
            at,
        } => sign_up(state, account, invite.as_deref(), token, *at, index),
        SignupCommand::AddMailToken { token, at } => add_mail_token(state, token, *at, index),
        SignupCommand::UseMailToken {
            sha256,
            purpose,
            password_hash,
            at,
        } => use_mail_token(
            state,
            sha256,
            *purpose,
            password_hash.as_deref(),
            *at,
            index,
        ),
    }
}

pub(super) fn put_signup(
    state: &mut DesiredState,
    settings: &SignupSettings,
    index: u64,
) -> Outcome {
    if let Err(message) = settings.validate() {
        return invalid(message);
    }
    state.signup.settings = settings.clone();
    Outcome::Applied { version: index }
}

pub(super) fn put_invite(
    state: &mut DesiredState,
    invite: &Invite,
    at: u64,
    index: u64,
) -> Outcome {
    state.signup.prune(at);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&invite.code_sha256, 64)
        || !invite.code_sha256.starts_with(&invite.id)
        || !hex(&invite.id, 16)
    {
        return invalid("id: an invite's id is the first 16 hex digits of its code's sha256");
    }
    if invite.expires_at <= at || invite.used_by.is_some() || invite.note.len() > 200 {
        return invalid("expires_at: a new invite is unused, expires later, and has a short note");
    }
    if !state.signup.has_room() {
        return refused("invites: too many pending; remove some (hearth invite rm)");
    }
    if state.signup.invites.contains_key(&invite.id) {
        return Outcome::Conflict {
            current: Some(index),
        };
    }
    state
        .signup
        .invites
        .insert(invite.id.clone(), invite.clone());
    Outcome::Applied { version: index }
}

pub(super) fn remove_invite(state: &mut DesiredState, id: &str) -> Outcome {
    match state.signup.invites.remove(id) {
        Some(_) => Outcome::Removed,
        None => Outcome::NotFound,
    }
}

/// A verification token for `account`, as a new token must be.
fn check_token(
    token: &MailToken,
    account: &str,
    purpose: MailPurpose,
    at: u64,
) -> Result<(), Outcome> {
    let fine = token.account == account
        && token.purpose == purpose
        && token.sha256.len() == 64
        && token.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        && token.expires_at > at
        && !token.used;
    match fine {
        true => Ok(()),
        false => Err(invalid(
            "token: a new, unused token of the account, for the purpose",
        )),
    }
}

/// A new member's account from the public page, unverified (and awaiting an admin when
/// the co-op approves new members), with the token its email carries. An invite code, in
/// that mode, is used in the same entry.
pub(super) fn sign_up(
    state: &mut DesiredState,
    account: &Account,
    invite: Option<&str>,
    token: &MailToken,
    at: u64,
    index: u64,
) -> Outcome {
    state.signup.prune(at);
    let settings = state.signup.settings.clone();
    if settings.mode == SignupMode::Closed {
        return refused("sign-up is closed; the co-op's admins create accounts");
    }
    if let Err(message) = account.validate() {
        return invalid(message);
    }
    if account.email.is_empty() {
        return invalid("email: sign-up needs an address to confirm");
    }
    if let Err(outcome) = check_token(token, &account.name, MailPurpose::Verify, at) {
        return outcome;
    }
    let taken = state.accounts.contains_key(&account.name)
        || state
            .accounts
            .values()
            .any(|a| a.value.email.eq_ignore_ascii_case(&account.email));
    if taken {
        return refused(
            "name: that name or email address already has an account; choose another, or reset its password",
        );
    }
    if !state.signup.has_room() {
        return refused("sign-up: too many pending; try again later");
    }
    if settings.mode == SignupMode::Invite {
        let redeemed = match invite {
            Some(code) => state.signup.redeem(code, &account.name, at),
            None => Err("invite: sign-up needs an invite code".into()),
        };
        if let Err(message) = redeemed {
            return refused(message);
        }
    }
    let account = Account {
        role: AccountRole::Member,
        disabled: false,
        plan: settings.plan.clone(),
        quota: Default::default(),
        ssh_keys: Default::default(),
        unverified: true,
        awaiting_approval: settings.mode == SignupMode::Approval,
        ..account.clone()
    };
    let name = account.name.clone();
    let outcome = put(&mut state.accounts, name, account, Expect::Absent, index);
    if outcome.changed() {
        state
            .signup
            .tokens
            .insert(token.sha256.clone(), token.clone());
    }
    outcome
}

/// A token for an existing account (a password reset); the account's older ones of the
/// same purpose stop working.
pub(super) fn add_mail_token(
    state: &mut DesiredState,
    token: &MailToken,
    at: u64,
    index: u64,
) -> Outcome {
    state.signup.prune(at);
    if !state.accounts.contains_key(&token.account) {
        return invalid(format!("account: no account named {}", token.account));
    }
    if let Err(outcome) = check_token(token, &token.account, token.purpose, at) {
        return outcome;
    }
    if !state.signup.has_room() {
        return refused("tokens: too many pending; try again later");
    }
    state.signup.retire(&token.account, token.purpose);
    state
        .signup
        .tokens
        .insert(token.sha256.clone(), token.clone());
    Outcome::Applied { version: index }
}

/// Uses an emailed token once: a verification marks the address proven, a reset sets the
/// new password (ending the account's web sessions, as any password change does) and
/// proves the address too.
pub(super) fn use_mail_token(
    state: &mut DesiredState,
    sha256: &str,
    purpose: MailPurpose,
    password_hash: Option<&str>,
    at: u64,
    index: u64,
) -> Outcome {
    if purpose == MailPurpose::Reset && !password_hash.is_some_and(|h| h.starts_with("$argon2")) {
        return invalid("password_hash: a reset sets a new password");
    }
    state.signup.prune(at);
    let name = match state.signup.use_token(sha256, purpose, at) {
        Ok(name) => name,
        Err(message) => return refused(message),
    };
    let Some(account) = state.accounts.get(&name) else {
        return refused("account: it no longer exists");
    };
    let mut account = account.value.clone();
    account.unverified = false;
    if let Some(hash) = password_hash {
        account.password_hash = hash.to_owned();
    }
    super::put_account(state, &account, Expect::Any, false, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::signup::RESET_SECS;

    fn member(name: &str, email: &str) -> Account {
        serde_json::from_value(serde_json::json!({
            "name": name, "role": "admin", "email": email,
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        }))
        .unwrap()
    }

    fn token(sha: char, account: &str, purpose: MailPurpose, expires_at: u64) -> MailToken {
        MailToken {
            sha256: sha.to_string().repeat(64),
            account: account.into(),
            purpose,
            expires_at,
            used: false,
        }
    }

    fn open(state: &mut DesiredState, mode: SignupMode) {
        let settings = SignupSettings {
            mode,
            public_url: "https://panel.coop.example".into(),
            plan: Some("small".into()),
        };
        assert!(put_signup(state, &settings, 1).changed());
    }

    #[test]
    fn a_sign_up_makes_an_unverified_member_on_the_co_ops_plan() {
        let mut state = DesiredState::default();
        let verify = token('a', "mia", MailPurpose::Verify, 1000);
        let closed = sign_up(
            &mut state,
            &member("mia", "mia@x.org"),
            None,
            &verify,
            10,
            2,
        );
        assert!(matches!(closed, Outcome::Refused { .. }), "{closed:?}");
        open(&mut state, SignupMode::Approval);
        let made = sign_up(
            &mut state,
            &member("mia", "mia@x.org"),
            None,
            &verify,
            10,
            2,
        );
        assert!(made.changed(), "{made:?}");
        let mia = &state.accounts["mia"].value;
        assert_eq!(
            mia.role,
            AccountRole::Member,
            "never an admin, whatever was sent"
        );
        assert!(mia.unverified && mia.awaiting_approval);
        assert_eq!(mia.plan.as_deref(), Some("small"));
        // The same name, or the same address under another name, is taken.
        let again = token('b', "max", MailPurpose::Verify, 1000);
        let taken = sign_up(&mut state, &member("max", "MIA@x.org"), None, &again, 11, 3);
        assert!(matches!(taken, Outcome::Refused { .. }), "{taken:?}");
        // The link proves the address once.
        let hash = verify.sha256.clone();
        assert!(use_mail_token(&mut state, &hash, MailPurpose::Verify, None, 20, 4).changed());
        assert!(!state.accounts["mia"].value.unverified);
        let twice = use_mail_token(&mut state, &hash, MailPurpose::Verify, None, 21, 5);
        assert!(matches!(twice, Outcome::Refused { .. }), "{twice:?}");
    }

    #[test]
    fn an_invite_code_makes_one_account() {
        let mut state = DesiredState::default();
        open(&mut state, SignupMode::Invite);
        let code = "c".repeat(64);
        let invite = Invite {
            id: code[..16].into(),
            code_sha256: code.clone(),
            note: "for mia".into(),
            created_by: "ann".into(),
            created_at: 0,
            expires_at: 500,
            used_by: None,
        };
        assert!(put_invite(&mut state, &invite, 1, 2).changed());
        let verify = token('a', "mia", MailPurpose::Verify, 1000);
        let without = sign_up(&mut state, &member("mia", "m@x.org"), None, &verify, 10, 3);
        assert!(matches!(without, Outcome::Refused { .. }), "{without:?}");
        let made = sign_up(
            &mut state,
            &member("mia", "m@x.org"),
            Some(&code),
            &verify,
            10,
            3,
        );
        assert!(made.changed(), "{made:?}");
        assert!(!state.accounts["mia"].value.awaiting_approval);
        let verify = token('b', "max", MailPurpose::Verify, 1000);
        let reused = sign_up(
            &mut state,
            &member("max", "x@x.org"),
            Some(&code),
            &verify,
            11,
            4,
        );
        assert!(matches!(reused, Outcome::Refused { .. }), "{reused:?}");
        assert!(!state.accounts.contains_key("max"));
    }

    #[test]
    fn a_reset_sets_the_password_once_and_ends_sessions() {
        let mut state = DesiredState::default();
        let mia = member("mia", "m@x.org");
        state.accounts.insert(
            "mia".into(),
            hearth_types::desired::Versioned {
                version: 1,
                value: mia,
            },
        );
        let first = token('a', "mia", MailPurpose::Reset, 10 + RESET_SECS);
        let second = token('b', "mia", MailPurpose::Reset, 20 + RESET_SECS);
        assert!(add_mail_token(&mut state, &first, 10, 2).changed());
        assert!(add_mail_token(&mut state, &second, 20, 3).changed());
        let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$bmV3";
        let retired = use_mail_token(
            &mut state,
            &first.sha256,
            MailPurpose::Reset,
            Some(new_hash),
            30,
            4,
        );
        assert!(
            matches!(retired, Outcome::Refused { .. }),
            "a newer link replaced it"
        );
        let late = use_mail_token(
            &mut state,
            &second.sha256,
            MailPurpose::Reset,
            Some(new_hash),
            20 + RESET_SECS,
            4,
        );
        assert!(matches!(late, Outcome::Refused { .. }), "expired");
        let third = token('c', "mia", MailPurpose::Reset, 100 + RESET_SECS);
        assert!(add_mail_token(&mut state, &third, 100, 5).changed());
        let done = use_mail_token(
            &mut state,
            &third.sha256,
            MailPurpose::Reset,
            Some(new_hash),
            110,
            6,
        );
        assert!(done.changed(), "{done:?}");
        assert_eq!(state.accounts["mia"].value.password_hash, new_hash);
    }
}
