//! On the Raft leader: delivers each closed invoice to `[billing] webhook_url` as a signed
//! POST, and records every attempt through the log, so a new leader picks up where the
//! old one stopped: a delivered invoice is never sent again by hearth (a receiver still
//! sees a repeat if a leader dies between its POST and the record, and must dedupe on
//! `X-Hearth-Delivery`), and a failed one waits out its backoff. The signature is
//! `X-Hearth-Signature: t=UNIX,v1=HEX`, HEX being HMAC-SHA256 of the secret over
//! `UNIX.BODY`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::unix_ms;

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::invoice::{Invoice, WebhookDelivery};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Webhook;

/// Attempts per invoice before it is left as failed (an admin may send it again).
pub const MAX_ATTEMPTS: u32 = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// How many times, and how far apart at most, a delivery is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub max_attempts: u32,
    pub max_backoff: Duration,
}

/// The webhook's: 8 attempts, at most 10 minutes apart.
pub const WEBHOOK: Retry = Retry {
    max_attempts: MAX_ATTEMPTS,
    max_backoff: MAX_BACKOFF,
};
const TIMEOUT: Duration = Duration::from_secs(10);

/// `t=UNIX,v1=HEX` for `body` sent at `unix`.
pub fn signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    let hex = hmac_hex(secret, &[format!("{unix}.").as_bytes(), body]);
    format!("t={unix},v1={hex}")
}

/// HMAC-SHA256 of `parts` one after the other, in lowercase hex.
fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The closed invoices due for an attempt at `now_ms` by `deliveries` (the webhook's, or the
/// emails'), oldest first.
pub fn due(
    invoices: &hearth_types::shared_map::OrdMap<String, Invoice>,
    deliveries: &BTreeMap<String, WebhookDelivery>,
    now_ms: u64,
    retry: Retry,
) -> Vec<(String, Invoice, WebhookDelivery)> {
    invoices
        .iter()
        .filter_map(|(key, invoice)| {
            let delivery = deliveries.get(key).cloned().unwrap_or_default();
            let waiting = !delivery.delivered
                && delivery.attempts < retry.max_attempts
                && delivery.next_attempt_ms <= now_ms;
            waiting.then(|| (key.clone(), invoice.clone(), delivery))
        })
        .collect()
}

/// The delivery after an attempt at `now_ms` that got `status` (or failed with `error`).
pub fn after_attempt(
    before: &WebhookDelivery,
    now_ms: u64,
    status: Option<u16>,
    error: Option<String>,
    retry: Retry,
) -> WebhookDelivery {
    let attempts = before.attempts.saturating_add(1);
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    let backoff = Duration::from_secs(1u64 << attempts.min(20)).min(retry.max_backoff);
    WebhookDelivery {
        attempts,
        delivered,
        last_status: status,
        last_error: if delivered {
            None
        } else {
            Some(error.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or(0))))
        },
        last_attempt_ms: now_ms,
        next_attempt_ms: now_ms + backoff.as_millis() as u64,
    }
}

/// Runs until `shutdown`: every second, the leader sends what is due.
pub async fn deliver(state: StateNode, webhook: Webhook, shutdown: CancellationToken) {
    let mut ticks = crate::ticks::Ticks::new(Duration::from_secs(1), shutdown);
    while ticks.next().await {
        if !state.is_leader() {
            continue;
        }
        let desired = state.reader().current();
        let billing = &desired.billing;
        for (key, invoice, before) in
            due(&billing.invoices, &billing.deliveries, unix_ms(), WEBHOOK)
        {
            if !state.is_leader() {
                break;
            }
            let (status, error) = match post(&webhook, &key, &invoice).await {
                Ok(status) => (Some(status), None),
                Err(error) => (None, Some(error)),
            };
            let delivery = after_attempt(&before, unix_ms(), status, error, WEBHOOK);
            tracing::info!(invoice = %key, attempts = delivery.attempts, delivered = delivery.delivered, "invoice webhook");
            if let Err(error) = state.submit(Command::RecordWebhook { key, delivery }).await {
                tracing::debug!(%error, "recording a webhook delivery");
            }
        }
    }
}

/// POSTs `invoice`; the answer's status, or why there was none.
async fn post(webhook: &Webhook, key: &str, invoice: &Invoice) -> Result<u16, String> {
    let body = serde_json::to_vec(&serde_json::json!({
        "event": "invoice.closed",
        "invoice": invoice,
    }))
    .map_err(|e| e.to_string())?;
    let unix = unix_ms() / 1000;
    let target = &webhook.target;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hearth-webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nX-Hearth-Event: invoice.closed\r\nX-Hearth-Delivery: {key}\r\n\
         X-Hearth-Signature: {signature}\r\nConnection: close\r\n\r\n",
        path = target.path,
        host = target.host,
        len = body.len(),
        signature = signature(&webhook.secret, unix, &body),
    );
    let exchange = async {
        let mut stream = match target.host.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, target.port)).await,
            Err(_) => TcpStream::connect((target.host.as_str(), target.port)).await,
        }
        .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 256];
        while !answer.contains(&b'\n') && answer.len() < 4096 {
            match stream.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "no HTTP status in the answer".to_owned())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer in {TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_backs_off_and_a_2xx_is_final() {
        let first = after_attempt(&WebhookDelivery::default(), 1_000, Some(500), None, WEBHOOK);
        assert_eq!((first.attempts, first.delivered), (1, false));
        assert_eq!(first.next_attempt_ms, 3_000);
        assert_eq!(first.last_error.as_deref(), Some("HTTP 500"));
        let second = after_attempt(
            &first,
            3_000,
            None,
            Some("connect: refused".into()),
            WEBHOOK,
        );
        assert_eq!(second.next_attempt_ms, 7_000);
        let done = after_attempt(&second, 7_000, Some(204), None, WEBHOOK);
        assert!(done.delivered && done.last_error.is_none());
        let mut billing = hearth_types::invoice::Billing::default();
        billing
            .invoices
            .insert("2026-11/alice".into(), crate::webhook::tests::invoice());
        assert_eq!(
            due(&billing.invoices, &billing.deliveries, 0, WEBHOOK).len(),
            1
        );
        billing
            .deliveries
            .insert("2026-11/alice".into(), first.clone());
        assert!(due(&billing.invoices, &billing.deliveries, 2_999, WEBHOOK).is_empty());
        assert_eq!(
            due(&billing.invoices, &billing.deliveries, 3_000, WEBHOOK).len(),
            1
        );
        billing.deliveries.insert("2026-11/alice".into(), done);
        assert!(due(&billing.invoices, &billing.deliveries, u64::MAX, WEBHOOK).is_empty());
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_the_time_and_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            signature(b"Jefe", 7, b"{}"),
            format!("t=7,v1={}", hmac_hex(b"Jefe", &[b"7.{}"]))
        );
    }

    pub(super) fn invoice() -> Invoice {
        Invoice {
            member: "alice".into(),
            month: "2026-11".into(),
            status: hearth_types::invoice::InvoiceStatus::Closed,
            currency: None,
            lines: vec![],
            total: Default::default(),
            closed_at_ms: Some(0),
        }
    }
}
