//! Who is calling and what they may do. The node's API token (`data_dir/api-token`) is the
//! root admin; accounts present tokens `hth_<id>.<secret>` checked against the sha256 kept in
//! the desired state. The rules are a pure function of (caller, method, path, desired state):
//! members reach only their own VMs, their keys and tokens, and read images and pools;
//! everything else is for admins. A member asking for another member's VM gets the same 404
//! as for a VM that does not exist.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::Method;
use base64::Engine;
use hearth_types::account::{AccountRole, ApiToken, TokenScope};
use hearth_types::desired::DesiredState;
use sha2::{Digest, Sha256};

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The node's own API token on a server or witness: an admin that needs no account
    /// (bootstrap, the CLI on the node).
    Root,
    /// The node's own API token on a worker (no server or witness role): it reads the
    /// cluster and makes the node leave, and changes nothing else, so a worker's files are
    /// not the keys to the co-op's accounts, services and records.
    Worker,
    Account {
        name: String,
        role: AccountRole,
        scope: TokenScope,
        /// When the presented token stops working (a web session's end); a token it makes
        /// may not outlive it.
        expires_at: Option<u64>,
    },
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Root => true,
            Caller::Worker => false,
            Caller::Account { role, .. } => *role == AccountRole::Admin,
        }
    }

    /// The account whose things alone this caller may see; `None` sees everything.
    pub fn only_owner(&self) -> Option<&str> {
        match self {
            Caller::Account {
                name,
                role: AccountRole::Member,
                ..
            } => Some(name),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Caller::Root => "root",
            Caller::Worker => "worker-node",
            Caller::Account { name, .. } => name,
        }
    }
}

/// A new token's parts: what the caller presents once, and what is kept.
pub fn new_token(account: &str, scope: TokenScope, note: String, now: u64) -> (String, ApiToken) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::fill(&mut id[..]);
    rand::fill(&mut secret[..]);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = ApiToken {
        id: id.clone(),
        account: account.to_owned(),
        scope,
        secret_sha256: sha256_hex(&secret),
        note,
        created_at: now,
        revoked: false,
        expires_at: None,
        session: false,
    };
    (format!("hth_{id}.{secret}"), token)
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit, so timing does not reveal the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller a bearer token stands for, if it is valid at `now` (unix seconds).
pub fn authenticate(
    presented: &str,
    root: &str,
    desired: Option<&DesiredState>,
    now: u64,
) -> Option<Caller> {
    if constant_time_eq(presented.as_bytes(), root.as_bytes()) {
        return Some(Caller::Root);
    }
    let (id, secret) = presented.strip_prefix("hth_")?.split_once('.')?;
    let desired = desired?;
    let token = &desired.tokens.get(id)?.value;
    if !token.live(now)
        || !constant_time_eq(
            sha256_hex(secret).as_bytes(),
            token.secret_sha256.as_bytes(),
        )
    {
        return None;
    }
    let account = &desired.accounts.get(&token.account)?.value;
    if account.locked().is_some() {
        return None;
    }
    Some(Caller::Account {
        name: account.name.clone(),
        role: account.role,
        scope: token.scope,
        expires_at: token.expires_at,
    })
}

/// What the rules say about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 403 with the reason.
    Forbidden(String),
    /// 404, as if the object did not exist.
    Hidden(String),
}

/// The authorization rules. `path` is the request path without the query.
pub fn authorize(
    caller: &Caller,
    method: &Method,
    path: &str,
    desired: Option<&DesiredState>,
) -> Verdict {
    if let Caller::Account {
        scope: TokenScope::ReadOnly,
        ..
    } = caller
        && method != Method::GET
    {
        return Verdict::Forbidden("this token is read-only".into());
    }
    if *caller == Caller::Worker {
        return worker_may(method, path);
    }
    let Some(owner) = caller.only_owner() else {
        return Verdict::Allow;
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let admin_only = || {
        Verdict::Forbidden(format!(
            "{} {path} is for admins; {owner} is a member",
            method.as_str()
        ))
    };
    match segments.as_slice() {
        ["v1", "me"] | ["v1", "me", ..] | ["v1", "tokens"] | ["v1", "tokens", _] => Verdict::Allow,
        ["v1", "images"] | ["v1", "pools"] if method == Method::GET => Verdict::Allow,
        // Their own invoices and usage: the handlers keep to the caller's.
        ["v1", "invoices"] | ["v1", "usage"] if method == Method::GET => Verdict::Allow,
        ["v1", "invoices", _, member] if method == Method::GET => {
            if *member == owner {
                Verdict::Allow
            } else {
                Verdict::Hidden(format!("member: no invoices of {member}"))
            }
        }
        ["v1", "vms"] => Verdict::Allow,
        // Their own VMs' backups: the list keeps to the caller's.
        ["v1", "backups"] if method == Method::GET => Verdict::Allow,
        // Their own zones: the list keeps to the caller's.
        ["v1", "zones"] => Verdict::Allow,
        ["v1", "zones", apex, ..] => {
            let mine = desired
                .and_then(|d| d.zones.get(&apex.to_ascii_lowercase()))
                .is_some_and(|zone| zone.value.owner == owner);
            if mine {
                Verdict::Allow
            } else {
                Verdict::Hidden(format!("zone: no zone {apex}"))
            }
        }
        // Giving up a disk is an admin's decision, even for the member's own VM.
        ["v1", "vms", _, "recreate"] => admin_only(),
        // So is where a VM runs, and how much IO it may do (the member's plan sets it).
        ["v1", "vms", _, "migrate" | "migration" | "io" | "owner"] => admin_only(),
        // And its backup schedule (the co-op pays for the storage).
        ["v1", "vms", _, "backup-schedule"] => admin_only(),
        ["v1", "vms", key] | ["v1", "vms", key, _] | ["v1", "vms", key, "console", "attach"] => {
            let mine = desired
                .and_then(|d| d.compute.find_vm(key))
                .is_some_and(|vm| vm.value.request.owner == owner);
            if mine {
                Verdict::Allow
            } else {
                Verdict::Hidden(format!("vm: no VM with id or name {key}"))
            }
        }
        _ => admin_only(),
    }
}

/// When a new token made by `caller` at `now` expires: what was asked, never later than the
/// caller's own token nor than `max_secs` from now.
pub fn token_expiry(
    caller: &Caller,
    asked_secs: Option<u64>,
    max_secs: Option<u64>,
    now: u64,
) -> Option<u64> {
    let creator = match caller {
        Caller::Account { expires_at, .. } => *expires_at,
        Caller::Root | Caller::Worker => None,
    };
    [
        asked_secs.map(|s| now.saturating_add(s)),
        max_secs.map(|s| now.saturating_add(s)),
        creator,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// What a worker's node token may do: read what is not about accounts, and leave.
fn worker_may(method: &Method, path: &str) -> Verdict {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let private = matches!(
        segments.as_slice(),
        [
            "v1",
            "accounts"
                | "tokens"
                | "audit"
                | "desired"
                | "plans"
                | "me"
                | "invoices"
                | "usage"
                | "credits"
                | "signup"
                | "invites",
            ..
        ]
    );
    let allowed = (method == Method::GET && !private)
        || (method == Method::POST && segments.as_slice() == ["v1", "leave"]);
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Forbidden(format!(
            "{} {path}: a worker's node token only reads the cluster and makes the node leave; use an admin's token (hearth token create, on a server)",
            method.as_str()
        ))
    }
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The smallest password accepted.
pub const MIN_PASSWORD: usize = 10;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hearth_types::account::Account;
    use hearth_types::compute::Vm;
    use hearth_types::desired::Versioned;
    use hearth_types::shared_map::OrdMapExt;

    /// A pending VM `id` named `name` of `owner`.
    fn vm(id: &str, name: &str, owner: &str) -> Versioned<Vm> {
        let mut vm = Vm::example(id, name, owner);
        vm.request.memory_mib = 256;
        vm.phase_since = 1;
        vm.disk = Default::default();
        Versioned {
            version: 1,
            value: vm,
        }
    }

    /// Members alice (VM a1) and bob (VM b1), admin ann; alice's full token and ann's
    /// read-only one.
    pub(crate) fn world() -> (DesiredState, String, String) {
        let mut desired = DesiredState::default();
        for (name, role) in [
            ("alice", AccountRole::Member),
            ("bob", AccountRole::Member),
            ("ann", AccountRole::Admin),
        ] {
            desired.accounts.insert(
                name.into(),
                Versioned {
                    version: 1,
                    value: Account {
                        name: name.into(),
                        role,
                        email: String::new(),
                        password_hash: "$argon2id$x".into(),
                        ssh_keys: Default::default(),
                        disabled: false,
                        plan: None,
                        quota: Default::default(),
                        unverified: false,
                        awaiting_approval: false,
                    },
                },
            );
        }
        desired
            .compute
            .vms
            .insert("vm-1".into(), vm("vm-1", "a1", "alice"));
        desired
            .compute
            .vms
            .insert("vm-2".into(), vm("vm-2", "b1", "bob"));
        let (alice, token) = new_token("alice", TokenScope::Full, String::new(), 5);
        desired.tokens.insert(
            token.id.clone(),
            Versioned {
                version: 2,
                value: token,
            },
        );
        let (ro, token) = new_token("ann", TokenScope::ReadOnly, String::new(), 5);
        desired.tokens.insert(
            token.id.clone(),
            Versioned {
                version: 3,
                value: token,
            },
        );
        (desired, alice, ro)
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_nothing_else_does() {
        let (mut desired, alice, _) = world();
        assert_eq!(
            authenticate("root-secret", "root-secret", None, 10),
            Some(Caller::Root)
        );
        let caller = authenticate(&alice, "root-secret", Some(&desired), 10).unwrap();
        assert_eq!(caller.only_owner(), Some("alice"));
        let forged = format!("{}x", alice);
        assert_eq!(
            authenticate(&forged, "root-secret", Some(&desired), 10),
            None
        );
        assert_eq!(
            authenticate("hth_nope.nope", "root-secret", Some(&desired), 10),
            None
        );
        // A session works until it expires.
        desired.tokens.change_each(|_, token| {
            token.value.expires_at = Some(20);
        });
        assert!(authenticate(&alice, "root-secret", Some(&desired), 19).is_some());
        assert_eq!(
            authenticate(&alice, "root-secret", Some(&desired), 20),
            None
        );
        desired.tokens.change_each(|_, token| {
            token.value.expires_at = None;
            token.value.revoked = true;
        });
        assert_eq!(
            authenticate(&alice, "root-secret", Some(&desired), 10),
            None
        );
    }

    #[test]
    fn members_see_their_own_vms_and_nothing_of_others() {
        let (desired, alice, ro) = world();
        let alice = authenticate(&alice, "r", Some(&desired), 10).unwrap();
        let check = |method: Method, path: &str| authorize(&alice, &method, path, Some(&desired));
        assert_eq!(check(Method::GET, "/v1/vms/a1"), Verdict::Allow);
        assert_eq!(check(Method::POST, "/v1/vms/vm-1/stop"), Verdict::Allow);
        assert_eq!(check(Method::GET, "/v1/vms/vm-1/console"), Verdict::Allow);
        assert_eq!(
            check(Method::GET, "/v1/vms/vm-1/console/attach"),
            Verdict::Allow
        );
        // Giving up a disk is for admins, even of the member's own VM.
        assert!(matches!(
            check(Method::POST, "/v1/vms/a1/recreate"),
            Verdict::Forbidden(_)
        ));
        for (method, path) in [
            (Method::POST, "/v1/vms/a1/migrate"),
            (Method::DELETE, "/v1/vms/a1/migration"),
        ] {
            assert!(
                matches!(check(method, path), Verdict::Forbidden(_)),
                "{path}"
            );
        }
        // Another member's VM, by name or id, looks like no VM at all.
        assert_eq!(
            check(Method::GET, "/v1/vms/b1"),
            Verdict::Hidden("vm: no VM with id or name b1".into())
        );
        assert_eq!(
            check(Method::DELETE, "/v1/vms/vm-2"),
            Verdict::Hidden("vm: no VM with id or name vm-2".into())
        );
        assert_eq!(
            check(Method::GET, "/v1/vms/vm-404"),
            Verdict::Hidden("vm: no VM with id or name vm-404".into())
        );
        assert_eq!(
            check(Method::GET, "/v1/vms/b1/console/attach"),
            Verdict::Hidden("vm: no VM with id or name b1".into())
        );
        assert!(matches!(
            check(Method::GET, "/v1/drift"),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            check(Method::PUT, "/v1/images"),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            check(Method::GET, "/v1/desired"),
            Verdict::Forbidden(_)
        ));
        assert_eq!(check(Method::GET, "/v1/images"), Verdict::Allow);
        // Their own invoices and usage (the handlers filter lists to them); not another's,
        // and neither closing a month nor giving credits.
        assert_eq!(check(Method::GET, "/v1/invoices"), Verdict::Allow);
        assert_eq!(check(Method::GET, "/v1/usage"), Verdict::Allow);
        assert_eq!(
            check(Method::GET, "/v1/invoices/2026-11/alice"),
            Verdict::Allow
        );
        assert!(matches!(
            check(Method::GET, "/v1/invoices/2026-11/bob"),
            Verdict::Hidden(_)
        ));
        for (method, path) in [
            (Method::POST, "/v1/invoices/2026-11/close"),
            (Method::POST, "/v1/credits"),
        ] {
            assert!(
                matches!(check(method, path), Verdict::Forbidden(_)),
                "{path}"
            );
        }
        let ro = authenticate(&ro, "r", Some(&desired), 10).unwrap();
        assert!(ro.is_admin());
        assert_eq!(
            authorize(&ro, &Method::GET, "/v1/drift", Some(&desired)),
            Verdict::Allow
        );
        assert!(matches!(
            authorize(&ro, &Method::POST, "/v1/vms", Some(&desired)),
            Verdict::Forbidden(_)
        ));
    }

    /// A worker's own token reads what is not about accounts, and leaves; nothing else.
    #[test]
    fn a_workers_node_token_reads_and_leaves_only() {
        let (desired, _, _) = world();
        let check = |method: Method, path: &str| {
            authorize(&Caller::Worker, &method, path, Some(&desired)) == Verdict::Allow
        };
        assert!(check(Method::GET, "/v1/members"));
        assert!(check(Method::GET, "/v1/vms/a1"));
        assert!(check(Method::POST, "/v1/leave"));
        for path in [
            "/v1/accounts",
            "/v1/tokens",
            "/v1/audit",
            "/v1/desired",
            "/v1/me",
            "/v1/invoices",
            "/v1/usage",
        ] {
            assert!(!check(Method::GET, path), "{path}");
        }
        for path in [
            "/v1/accounts",
            "/v1/tokens",
            "/v1/vms",
            "/v1/nodes/n1/fence",
        ] {
            assert!(!check(Method::POST, path), "{path}");
        }
        assert!(!check(Method::PUT, "/v1/cluster-services"));
        assert!(!Caller::Worker.is_admin());
    }

    /// Regression: a 12-hour web session could mint a token that never expired.
    #[test]
    fn a_token_never_outlives_the_session_that_made_it_nor_the_maximum() {
        let session = Caller::Account {
            name: "alice".into(),
            role: AccountRole::Member,
            scope: TokenScope::Full,
            expires_at: Some(1_000),
        };
        assert_eq!(token_expiry(&session, None, None, 100), Some(1_000));
        assert_eq!(token_expiry(&session, Some(10), None, 100), Some(110));
        assert_eq!(token_expiry(&session, Some(5_000), None, 100), Some(1_000));
        assert_eq!(token_expiry(&session, None, Some(60), 100), Some(160));
        let cli = Caller::Account {
            name: "alice".into(),
            role: AccountRole::Member,
            scope: TokenScope::Full,
            expires_at: None,
        };
        assert_eq!(token_expiry(&cli, None, None, 100), None);
        assert_eq!(token_expiry(&cli, Some(u64::MAX), Some(60), 100), Some(160));
        assert_eq!(token_expiry(&Caller::Root, None, None, 100), None);
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("x", "not a hash"));
    }
}
