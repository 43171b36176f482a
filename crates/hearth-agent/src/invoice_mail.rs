//! On the Raft leader: emails each closed invoice to its member through `[smtp]`, line by
//! line with its total and a link to the panel, and records every attempt through the log
//! as the webhook's are (`webhook::after_attempt`), so a new leader neither mails an invoice
//! twice once sent nor forgets a failure's backoff. A member without an address gets no
//! mail (the invoice waits, and goes out if they add one within the window); invoices
//! closed more than [`WINDOW_MS`] ago are never mailed, so an upgrade or a long outage does
//! not send a pile of old ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::desired::DesiredState;
use hearth_types::invoice::Invoice;
use tokio_util::sync::CancellationToken;

use crate::mail::MailSettings;
use crate::unix_ms;
use crate::webhook::{Retry, after_attempt, due};
use hearth_types::invoice::WebhookDelivery;

/// How long after its month closed an invoice may still be mailed.
pub const WINDOW_MS: u64 = 7 * 86_400 * 1000;

/// The state level that carries `RecordInvoiceMail`: below it, nothing is mailed, since
/// an attempt could not be recorded and would be made again.
pub const MAIL_LEVEL: u32 = 7;

/// Mail is tried until the window closes, at most an hour apart.
pub const RETRY: Retry = Retry {
    max_attempts: u32::MAX,
    max_backoff: Duration::from_secs(3600),
};

/// The closed invoices to mail at `now_ms`: (key, invoice, address, the delivery so far).
/// `mails` is the recorded attempts, overlaid with any this leader made but could not
/// record yet.
pub fn to_mail(
    desired: &DesiredState,
    mails: &BTreeMap<String, WebhookDelivery>,
    now_ms: u64,
) -> Vec<(String, Invoice, String, WebhookDelivery)> {
    due(&desired.billing.invoices, mails, now_ms, RETRY)
        .into_iter()
        .filter(|(_, invoice, _)| {
            invoice
                .closed_at_ms
                .is_some_and(|at| now_ms.saturating_sub(at) <= WINDOW_MS)
        })
        .filter_map(|(key, invoice, delivery)| {
            let account = &desired.accounts.get(&invoice.member)?.value;
            let reachable = !account.email.is_empty() && !account.disabled && !account.unverified;
            reachable.then(|| (key, invoice, account.email.clone(), delivery))
        })
        .collect()
}

/// The email of `invoice`: (subject, body). `link` is the panel's page of it, if the co-op
/// set a public address.
pub fn message(invoice: &Invoice, link: Option<&str>) -> (String, String) {
    let currency = invoice.currency.as_deref().unwrap_or("");
    let total = format!("{} {currency}", invoice.total)
        .trim_end()
        .to_owned();
    let mut body = format!(
        "Hello {},\n\nyour invoice for {} is closed: {total}.\n\n",
        invoice.member, invoice.month
    );
    for line in &invoice.lines {
        let what = line.note.as_deref().unwrap_or(&line.vm);
        body.push_str(&format!(
            "{what:<20} {:<8} {:<16} {:>14} x {:>12} = {:>10}\n",
            line.usage_month,
            line.resource.as_str(),
            line.quantity.to_string(),
            line.unit_price.to_string(),
            line.amount.to_string(),
        ));
    }
    body.push_str(&format!("{:>95}\n", format!("total {total}")));
    if let Some(link) = link {
        body.push_str(&format!("\nIt is in the panel too: {link}\n"));
    }
    (format!("Your invoice for {}: {total}", invoice.month), body)
}

/// The recorded attempts, with this leader's own newer ones laid over them.
fn known(
    recorded: &BTreeMap<String, WebhookDelivery>,
    mine: &BTreeMap<String, WebhookDelivery>,
) -> BTreeMap<String, WebhookDelivery> {
    let mut all = recorded.clone();
    for (key, delivery) in mine {
        let newer = all
            .get(key)
            .is_none_or(|seen| seen.attempts < delivery.attempts);
        if newer {
            all.insert(key.clone(), delivery.clone());
        }
    }
    all
}

/// Mails one invoice to `to`: (status, error) as a webhook attempt records them.
async fn send(
    mail: &MailSettings,
    desired: &DesiredState,
    invoice: &Invoice,
    to: &str,
) -> (Option<u16>, Option<String>) {
    let settings = &desired.signup.settings;
    let link = (!settings.public_url.is_empty())
        .then(|| settings.link(&format!("/panel/billing/{}", invoice.month)));
    let (subject, body) = message(invoice, link.as_deref());
    match crate::mail::send_one(mail, to, &subject, &body).await {
        Ok(()) => (Some(250), None),
        Err(error) => (None, Some(error)),
    }
}

/// Runs until `shutdown`: every second, the leader mails what is due. Attempts it could
/// not record are remembered here, so a slow log never turns into repeated mail.
pub async fn deliver(state: StateNode, mail: Arc<MailSettings>, shutdown: CancellationToken) {
    let mut ticks = crate::ticks::Ticks::new(Duration::from_secs(1), shutdown);
    let mut mine = BTreeMap::new();
    while ticks.next().await {
        if !state.is_leader() || state.cluster_level() < MAIL_LEVEL {
            mine.clear();
            continue;
        }
        let desired = state.reader().current();
        let mails = known(&desired.billing.mails, &mine);
        for (key, invoice, to, before) in to_mail(&desired, &mails, unix_ms()) {
            if !state.is_leader() {
                break;
            }
            let (status, error) = send(&mail, &desired, &invoice, &to).await;
            let delivery = after_attempt(&before, unix_ms(), status, error, RETRY);
            tracing::info!(invoice = %key, attempts = delivery.attempts, sent = delivery.delivered, "invoice email");
            mine.insert(key.clone(), delivery.clone());
            let command = Command::RecordInvoiceMail { key, delivery };
            if let Err(error) = state.submit(command).await {
                tracing::warn!(%error, "recording an invoice email; it will not be sent again by this leader");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::account::{Account, AccountRole};
    use hearth_types::desired::Versioned;
    use hearth_types::invoice::InvoiceStatus;

    fn invoice(member: &str, closed_at_ms: u64) -> Invoice {
        Invoice {
            member: member.into(),
            month: "2026-11".into(),
            status: InvoiceStatus::Closed,
            currency: Some("EUR".into()),
            lines: vec![],
            total: "12.34".parse().unwrap(),
            closed_at_ms: Some(closed_at_ms),
        }
    }

    fn state() -> DesiredState {
        let mut desired = DesiredState::default();
        for (name, email) in [("ana", "ana@coop.test"), ("bo", "")] {
            let account = Account {
                name: name.into(),
                role: AccountRole::Member,
                email: email.into(),
                password_hash: String::new(),
                ssh_keys: Default::default(),
                disabled: false,
                plan: None,
                quota: Default::default(),
                unverified: false,
                awaiting_approval: false,
            };
            desired.accounts.insert(
                name.into(),
                Versioned {
                    version: 1,
                    value: account,
                },
            );
        }
        for member in ["ana", "bo"] {
            desired
                .billing
                .invoices
                .insert(format!("2026-11/{member}"), invoice(member, 1_000));
        }
        desired
    }

    #[test]
    fn members_with_an_address_get_recent_invoices_once() {
        let mut desired = state();
        let due = to_mail(&desired, &desired.billing.mails, 2_000);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].2, "ana@coop.test");
        // Too long after the close: never.
        assert!(to_mail(&desired, &desired.billing.mails, 1_000 + WINDOW_MS + 1).is_empty());
        // Sent: not again.
        desired.billing.mails.insert(
            "2026-11/ana".into(),
            WebhookDelivery {
                attempts: 1,
                delivered: true,
                ..WebhookDelivery::default()
            },
        );
        assert!(to_mail(&desired, &desired.billing.mails, 2_000).is_empty());
    }

    #[test]
    fn failures_are_retried_through_the_window_at_most_an_hour_apart() {
        let mut delivery = WebhookDelivery::default();
        for _ in 0..40 {
            delivery = after_attempt(&delivery, 0, None, Some("refused".into()), RETRY);
        }
        assert_eq!(delivery.attempts, 40);
        assert_eq!(delivery.next_attempt_ms, 3_600_000);
        let desired = state();
        let mut mails = BTreeMap::new();
        mails.insert("2026-11/ana".to_owned(), delivery);
        assert_eq!(to_mail(&desired, &mails, 3_600_000).len(), 1);
    }

    #[test]
    fn an_attempt_not_yet_recorded_is_not_made_again() {
        let desired = state();
        let attempt = after_attempt(&WebhookDelivery::default(), 2_000, Some(250), None, RETRY);
        let mine = BTreeMap::from([("2026-11/ana".to_owned(), attempt)]);
        let mails = known(&desired.billing.mails, &mine);
        assert!(to_mail(&desired, &mails, 3_000).is_empty());
        // Once the log has a newer record, it wins.
        let mut recorded = BTreeMap::new();
        let mut later = mine["2026-11/ana"].clone();
        later.attempts = 5;
        later.delivered = false;
        recorded.insert("2026-11/ana".to_owned(), later);
        assert!(!known(&recorded, &mine)["2026-11/ana"].delivered);
    }

    #[test]
    fn the_message_says_the_total_and_links_to_the_panel() {
        let (subject, body) = message(
            &invoice("ana", 0),
            Some("https://panel.coop.test/panel/billing/2026-11"),
        );
        assert_eq!(subject, "Your invoice for 2026-11: 12.34 EUR");
        assert!(body.contains("total 12.34 EUR"), "{body}");
        assert!(body.contains("https://panel.coop.test/panel/billing/2026-11"));
    }
}
