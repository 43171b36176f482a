//! `hearth signup`: the co-op's sign-up setting and its invite codes (admins). The public
//! side is the panel's `/signup` page; `hearth account approve` lets a new member in.

use clap::Subcommand;
use hearth_types::api::{CreatedInvite, NewInvite, SignupView};
use hearth_types::signup::{Invite, SignupMode, SignupSettings};
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum SignupCommand {
    /// Print the setting, and the accounts waiting for approval or for their email.
    Show,
    /// Open or close the public sign-up page (`/signup` on every node's panel).
    ///
    /// `invite`: whoever has an unused invite code (`hearth signup invite create`) may sign
    /// up. `approval`: anybody may, and the account works once an admin ran `hearth account
    /// approve NAME`. Either way the new member confirms their email address through a link
    /// sent with this node's [smtp] settings, and the links start with --public-url.
    Set {
        #[arg(long, value_parser = parse_mode)]
        mode: SignupMode,
        /// The panel's address as members reach it, like https://panel.coop.example; the
        /// links in emails start with it (never with a request's Host header).
        #[arg(long, default_value = "")]
        public_url: String,
        /// The plan new members get (default: the default plan).
        #[arg(long)]
        plan: Option<String>,
    },
    /// Invite codes for `--mode invite`.
    #[command(subcommand)]
    Invite(InviteCommand),
}

#[derive(Subcommand)]
pub enum InviteCommand {
    /// Make a code; it is printed once (the cluster keeps only its hash) and makes one
    /// account.
    Create {
        /// How long it works, like "7d" or "12h" (at most a year).
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        expires_in: humantime::Duration,
        /// Who it is for, shown in the list.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Codes not expired yet, and who used them.
    List,
    /// Withdraw a code by its id.
    Rm { id: String },
}

fn parse_mode(text: &str) -> Result<SignupMode, String> {
    match text {
        "closed" => Ok(SignupMode::Closed),
        "invite" => Ok(SignupMode::Invite),
        "approval" => Ok(SignupMode::Approval),
        _ => Err("one of closed, invite, approval".into()),
    }
}

pub fn signup(client: &ApiClient, json: bool, command: SignupCommand) -> Result<(), ClientError> {
    match command {
        SignupCommand::Show => {
            let view: SignupView = client.get("/v1/signup")?;
            if json {
                print_json(&view);
                return Ok(());
            }
            let settings = &view.settings;
            println!("mode: {}", settings.mode.as_str());
            println!("public url: {}", settings.public_url);
            println!("plan: {}", settings.plan.as_deref().unwrap_or("default"));
            println!("awaiting approval: {}", view.awaiting_approval.join(", "));
            println!("email not confirmed: {}", view.unverified.join(", "));
            Ok(())
        }
        SignupCommand::Set {
            mode,
            public_url,
            plan,
        } => {
            let settings = SignupSettings {
                mode,
                public_url,
                plan,
            };
            let answer: Value = client.put("/v1/signup", &settings)?;
            report(json, &answer, &format!("sign-up: {}", mode.as_str()));
            Ok(())
        }
        SignupCommand::Invite(command) => invite(client, json, command),
    }
}

fn invite(client: &ApiClient, json: bool, command: InviteCommand) -> Result<(), ClientError> {
    match command {
        InviteCommand::Create { expires_in, note } => {
            let body = NewInvite {
                expires_in_secs: Some(expires_in.as_secs()),
                note,
            };
            let created: CreatedInvite = client.post_json("/v1/invites", &body)?;
            if json {
                print_json(&created);
            } else {
                println!("{}", created.code);
                eprintln!(
                    "invite {}: the code above works once, until {} (it is shown only now)",
                    created.id,
                    hearth_agent::web::utc(created.expires_at)
                );
            }
            Ok(())
        }
        InviteCommand::List => {
            let invites: Vec<Invite> = client.get("/v1/invites")?;
            if json {
                print_json(&invites);
                return Ok(());
            }
            print_table(
                &["ID", "NOTE", "BY", "EXPIRES", "USED BY"],
                invites.iter().map(|i| {
                    vec![
                        i.id.clone(),
                        i.note.clone(),
                        i.created_by.clone(),
                        hearth_agent::web::utc(i.expires_at),
                        i.used_by.clone().unwrap_or_else(|| "-".into()),
                    ]
                }),
            );
            Ok(())
        }
        InviteCommand::Rm { id } => {
            let answer: Value = client.delete(&format!("/v1/invites/{id}"))?;
            report(json, &answer, &format!("invite {id}: withdrawn"));
            Ok(())
        }
    }
}
