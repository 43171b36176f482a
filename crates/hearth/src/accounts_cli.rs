//! `hearth admin`, `hearth account` and `hearth token`: accounts and API tokens, through the
//! local agent's API. Passwords are read from a file or standard input, never from the
//! command line (where `ps` would show them).

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use hearth_types::account::{AccountRole, TokenScope};
use hearth_types::api::{AccountRow, CreatedToken, NewAccount, NewToken, TokenRow};
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an admin account (the first one is made with the node's own API token, which
    /// the CLI on a server reads by itself).
    Create(NewAccountArgs),
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create a member account (or an admin, with --admin).
    Add {
        #[command(flatten)]
        args: NewAccountArgs,
        #[arg(long)]
        admin: bool,
    },
    /// List accounts with their role and SSH keys.
    List,
    /// Let in a member who signed up while the co-op approves new members (`hearth signup
    /// show` lists them); they are told by email.
    Approve { name: String },
    /// Remove an account; its tokens are revoked. Refused while it owns VMs: delete them
    /// first, so the name's next owner cannot inherit them.
    Rm { name: String },
}

#[derive(clap::Args)]
pub struct NewAccountArgs {
    /// Lowercase letters, digits and inner hyphens; a member's VMs carry it as their owner.
    name: String,
    #[arg(long, default_value = "")]
    email: String,
    /// A file holding the password (at least 10 characters), or `-` for standard input
    /// (the default).
    #[arg(long, value_name = "FILE", default_value = "-")]
    password_file: PathBuf,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once and kept nowhere.
    Create {
        /// For another account (admins only); default: the caller's.
        #[arg(long)]
        account: Option<String>,
        /// A token that can only read.
        #[arg(long)]
        read_only: bool,
        /// What the token is for.
        #[arg(long, default_value = "")]
        note: String,
        /// How long the token lives, like "30d" or "12h". It never outlives the token
        /// making it (a web session) nor the node's `max_token_lifetime`; default: as long
        /// as those allow (until revoked, if neither limits it).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List your tokens (admins: every token); never their secrets.
    List,
    /// Revoke a token at once, on every node.
    Revoke { id: String },
}

fn read_password(path: &PathBuf) -> Result<String, ClientError> {
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| {
        ClientError::Usage(format!(
            "--password-file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let password = text.trim_end_matches(['\n', '\r']).to_owned();
    if password.chars().count() < 10 {
        return Err(ClientError::Usage(
            "--password-file: the password needs at least 10 characters".into(),
        ));
    }
    Ok(password)
}

fn create_account(
    client: &ApiClient,
    json_out: bool,
    args: NewAccountArgs,
    role: AccountRole,
) -> Result<(), ClientError> {
    let password = read_password(&args.password_file)?;
    let body = NewAccount {
        name: args.name.clone(),
        role,
        email: args.email,
        password,
    };
    let answer: Value = client.post_json("/v1/accounts", &body)?;
    if json_out {
        print_json(&answer);
    } else {
        println!("{} ({}) created", args.name, role.as_str());
    }
    Ok(())
}

pub fn admin(client: &ApiClient, json: bool, command: AdminCommand) -> Result<(), ClientError> {
    match command {
        AdminCommand::Create(args) => create_account(client, json, args, AccountRole::Admin),
    }
}

pub fn account(client: &ApiClient, json: bool, command: AccountCommand) -> Result<(), ClientError> {
    match command {
        AccountCommand::Add { args, admin } => {
            let role = if admin {
                AccountRole::Admin
            } else {
                AccountRole::Member
            };
            create_account(client, json, args, role)
        }
        AccountCommand::List => {
            let rows: Vec<AccountRow> = client.get("/v1/accounts")?;
            if json {
                print_json(&rows);
                return Ok(());
            }
            print_table(
                &["NAME", "ROLE", "EMAIL", "SSH KEYS"],
                rows.iter().map(|r| {
                    vec![
                        r.name.clone(),
                        r.role.as_str().to_owned(),
                        r.email.clone(),
                        r.ssh_keys.len().to_string(),
                    ]
                }),
            );
            Ok(())
        }
        AccountCommand::Approve { name } => {
            let answer: Value = client.post(&format!("/v1/accounts/{name}/approve"))?;
            crate::output::report(json, &answer, &format!("{name}: approved; they can log in"));
            Ok(())
        }
        AccountCommand::Rm { name } => {
            let answer: Value = client.delete(&format!("/v1/accounts/{name}"))?;
            if json {
                print_json(&answer);
            } else {
                println!("{name}: removed; its tokens are revoked");
            }
            Ok(())
        }
    }
}

pub fn token(client: &ApiClient, json: bool, command: TokenCommand) -> Result<(), ClientError> {
    match command {
        TokenCommand::Create {
            account,
            read_only,
            note,
            expires_in,
        } => {
            let scope = if read_only {
                TokenScope::ReadOnly
            } else {
                TokenScope::Full
            };
            let body = NewToken {
                account,
                scope,
                note,
                expires_in_secs: expires_in.map(|d| d.as_secs().max(1)),
            };
            let answer: CreatedToken = client.post_json("/v1/tokens", &body)?;
            if json {
                print_json(&answer);
            } else {
                println!("{}", answer.token);
                eprintln!(
                    "token {} for {} ({}); keep it: it is shown only this once",
                    answer.id,
                    answer.account,
                    answer.scope.as_str()
                );
            }
            Ok(())
        }
        TokenCommand::List => {
            let rows: Vec<TokenRow> = client.get("/v1/tokens")?;
            if json {
                print_json(&rows);
                return Ok(());
            }
            print_table(
                &["ID", "ACCOUNT", "SCOPE", "STATE", "EXPIRES", "NOTE"],
                rows.iter().map(|r| {
                    vec![
                        r.id.clone(),
                        r.account.clone(),
                        r.scope.as_str().to_owned(),
                        if r.revoked { "revoked" } else { "active" }.to_owned(),
                        r.expires_at.map_or("never".into(), |at| {
                            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
                            humantime::format_rfc3339_seconds(time).to_string()
                        }),
                        r.note.clone(),
                    ]
                }),
            );
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let answer: Value = client.delete(&format!("/v1/tokens/{id}"))?;
            if json {
                print_json(&answer);
            } else {
                println!("{id}: revoked");
            }
            Ok(())
        }
    }
}

/// The audit log: who changed what, when, through which node, and how it ended.
pub fn audit(client: &ApiClient, json: bool, jsonl: bool) -> Result<(), ClientError> {
    let entries: Vec<hearth_types::account::AuditEntry> = client.get("/v1/audit")?;
    if jsonl {
        for entry in &entries {
            println!("{}", serde_json::to_string(entry).unwrap_or_default());
        }
        return Ok(());
    }
    if json {
        print_json(&entries);
        return Ok(());
    }
    print_table(
        &["AT", "WHO", "CHANGE", "STATUS", "NODE", "CLIENT", "NOTE"],
        entries.iter().rev().map(|e| {
            vec![
                e.at.to_string(),
                e.who.clone(),
                format!("{} {}", e.method, e.path),
                e.status.to_string(),
                e.node.clone(),
                e.client.clone(),
                e.note.clone(),
            ]
        }),
    );
    Ok(())
}
