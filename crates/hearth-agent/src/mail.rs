//! Announcement email: who receives it (a pure function of the desired state) and sending it
//! over SMTP with lettre, one message per member so no one sees another's address. The
//! settings (`MailSettings`) are checked with the rest of the config, in `config`.

use std::time::Duration;

use hearth_types::desired::DesiredState;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;

pub use crate::config::{MailSettings, SmtpTls};

impl MailSettings {
    /// An SMTP client for these settings, with the TLS mode and credentials they name.
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
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Report {
    pub sent: Vec<String>,
    pub without_email: Vec<String>,
    /// (account, why).
    pub failed: Vec<(String, String)>,
}

/// Sends one message to `to` (a sign-up's verification link, a reset link).
pub async fn send_one(
    settings: &MailSettings,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let transport = settings.transport()?;
    let to = to.parse::<Mailbox>().map_err(|e| e.to_string())?;
    let message = Message::builder()
        .from(settings.from.clone())
        .to(to)
        .subject(subject)
        .body(body.to_owned())
        .map_err(|e| e.to_string())?;
    transport
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
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
    use hearth_types::shared_map::OrdMapExt;

    #[test]
    fn announcements_go_to_owners_of_vms_only() {
        let (mut desired, _, _) = crate::auth::tests::world();
        desired.accounts.change_each(|_, account| {
            account.value.email = format!("{}@example.org", account.value.name);
        });
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
        desired.compute.vms.change_each(|_, vm| {
            vm.value.deleting = true;
        });
        assert_eq!(recipients(&desired), Recipients::default());
    }
}
