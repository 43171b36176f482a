//! Announcement email: who receives it (a pure function of the desired state) and sending it
//! over SMTP with lettre, one message per member so no one sees another's address.

use std::fmt;
use std::time::Duration;

use hearth_types::desired::DesiredState;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::config::SmtpConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

/// `[smtp]`, checked, with the password read.
#[derive(Clone)]
pub struct MailSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Mailbox,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("auth", &self.credentials.is_some())
            .finish()
    }
}

impl MailSettings {
    /// The checked settings, or None with each problem (naming its `smtp.` key) recorded.
    pub fn from_config(config: &SmtpConfig, problems: &mut Vec<String>) -> Option<MailSettings> {
        let before = problems.len();
        let (host, port) = match config.server.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host.trim_matches(['[', ']']).to_owned(), port),
                _ => {
                    problems.push(format!(
                        "smtp.server: `{}` has no valid port; write host:port, e.g. \"127.0.0.1:25\"",
                        config.server
                    ));
                    (String::new(), 0)
                }
            },
            _ => {
                problems.push(format!(
                    "smtp.server: `{}` is not host:port; write e.g. \"mail.example.org:587\"",
                    config.server
                ));
                (String::new(), 0)
            }
        };
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|_| {
                problems.push(format!(
                    "smtp.from: `{}` is not an address; write \"noreply@example.org\" or \"Co-op <noreply@example.org>\"",
                    config.from
                ))
            })
            .ok();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let tls = config.tls.unwrap_or(if loopback {
            SmtpTls::None
        } else {
            SmtpTls::Starttls
        });
        let credentials = match (&config.username, &config.password_file) {
            (None, None) => None,
            (Some(user), Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some((user.clone(), text.trim_end_matches(['\r', '\n']).to_owned()))
                }
                Ok(_) => {
                    problems.push(format!("smtp.password_file: {} is empty", path.display()));
                    None
                }
                Err(error) => {
                    problems.push(format!(
                        "smtp.password_file: cannot read {}: {error}",
                        path.display()
                    ));
                    None
                }
            },
            _ => {
                problems.push(
                    "smtp.username, smtp.password_file: give both for SMTP AUTH, or neither".into(),
                );
                None
            }
        };
        if credentials.is_some() && tls == SmtpTls::None && !loopback {
            problems.push(
                "smtp.tls: a password would cross the network in clear; set tls = \"starttls\" or \"tls\""
                    .into(),
            );
        }
        (problems.len() == before).then(|| MailSettings {
            host,
            port,
            tls,
            from: from.expect("checked"),
            credentials,
        })
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let builder = match self.tls {
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.as_str())
            }
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&self.host)
                .map_err(|e| e.to_string())?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&self.host)
                .map_err(|e| e.to_string())?,
        };
        let builder = builder
            .port(self.port)
            .timeout(Some(Duration::from_secs(30)));
        let builder = match &self.credentials {
            Some((user, password)) => {
                builder.credentials(Credentials::new(user.clone(), password.clone()))
            }
            None => builder,
        };
        Ok(builder.build())
    }
}

/// Who an announcement goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Recipients {
    /// (account, address) of every account that owns a VM and has an address.
    pub to: Vec<(String, String)>,
    /// Accounts that own a VM but gave no address.
    pub without_email: Vec<String>,
}

/// Every account that owns at least one VM (not being deleted), in name order.
pub fn recipients(desired: &DesiredState) -> Recipients {
    let owners: std::collections::BTreeSet<&str> = desired
        .compute
        .vms
        .values()
        .filter(|vm| !vm.value.deleting)
        .map(|vm| vm.value.request.owner.as_str())
        .collect();
    let mut out = Recipients::default();
    for owner in owners {
        match desired.accounts.get(owner).map(|a| &a.value) {
            Some(account) if !account.disabled && !account.email.is_empty() => {
                out.to.push((account.name.clone(), account.email.clone()));
            }
            Some(account) if !account.disabled => out.without_email.push(account.name.clone()),
            _ => {}
        }
    }
    out
}

/// What sending an announcement did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Report {
    pub sent: Vec<String>,
    pub without_email: Vec<String>,
    /// (account, why).
    pub failed: Vec<(String, String)>,
}

/// Sends `subject`/`body` to each recipient, one message each.
pub async fn announce(
    settings: &MailSettings,
    recipients: Recipients,
    subject: &str,
    body: &str,
) -> Report {
    let mut report = Report {
        without_email: recipients.without_email,
        ..Report::default()
    };
    let transport = match settings.transport() {
        Ok(transport) => transport,
        Err(error) => {
            report.failed = recipients
                .to
                .into_iter()
                .map(|(name, _)| (name, error.clone()))
                .collect();
            return report;
        }
    };
    for (name, address) in recipients.to {
        let message = address
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|to| {
                Message::builder()
                    .from(settings.from.clone())
                    .to(to)
                    .subject(subject)
                    .body(body.to_owned())
                    .map_err(|e| e.to_string())
            });
        let result = match message {
            Ok(message) => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => report.sent.push(name),
            Err(error) => {
                tracing::warn!(account = %name, %error, "announcement not sent");
                report.failed.push((name, error));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, from: &str) -> SmtpConfig {
        SmtpConfig {
            server: server.into(),
            from: from.into(),
            tls: None,
            username: None,
            password_file: None,
        }
    }

    #[test]
    fn settings_name_each_bad_key() {
        let mut problems = vec![];
        let ok = MailSettings::from_config(
            &config("127.0.0.1:2525", "Co-op <noreply@example.org>"),
            &mut problems,
        )
        .unwrap();
        assert_eq!((ok.port, ok.tls), (2525, SmtpTls::None));
        let remote =
            MailSettings::from_config(&config("mail.example.org:587", "a@b.c"), &mut problems)
                .unwrap();
        assert_eq!(remote.tls, SmtpTls::Starttls);
        assert!(problems.is_empty());
        assert!(MailSettings::from_config(&config("nohost", "x"), &mut problems).is_none());
        assert!(problems[0].starts_with("smtp.server:"), "{problems:?}");
        assert!(problems[1].starts_with("smtp.from:"), "{problems:?}");
        let mut problems = vec![];
        let mut half = config("mail.example.org:587", "a@b.c");
        half.username = Some("u".into());
        assert!(MailSettings::from_config(&half, &mut problems).is_none());
        assert!(problems[0].contains("give both"), "{problems:?}");
    }

    #[test]
    fn announcements_go_to_owners_of_vms_only() {
        let (mut desired, _, _) = crate::auth::tests::world();
        for account in desired.accounts.values_mut() {
            account.value.email = format!("{}@example.org", account.value.name);
        }
        desired.accounts.get_mut("bob").unwrap().value.email.clear();
        // ann owns no VM; bob gave no address.
        assert_eq!(
            recipients(&desired),
            Recipients {
                to: vec![("alice".into(), "alice@example.org".into())],
                without_email: vec!["bob".into()],
            }
        );
        // A VM being deleted no longer makes its owner a recipient.
        for vm in desired.compute.vms.values_mut() {
            vm.value.deleting = true;
        }
        assert_eq!(recipients(&desired), Recipients::default());
    }
}
