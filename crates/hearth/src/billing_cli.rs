//! `hearth invoice`: members' invoices and the usage behind them, closing a month and
//! credits, through the local agent's API; tables, `--json`, or `--csv` for the books.

use clap::Subcommand;
use hearth_types::api::{DeliveryRow, NewCredit};
use hearth_types::invoice::{Invoice, month_bounds, month_of, to_csv};
use hearth_types::metering::UsageRow;
use hearth_types::money::Amount;
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum InvoiceCommand {
    /// List invoices: the closed ones, and each member's open invoice of --month (this
    /// month by default) as it stands. A member sees only their own.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Every line of every invoice listed as CSV, with a total row per invoice: the
        /// export for the co-op's accounting.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// One invoice, line by line: per VM and resource, each rounded to the cent once.
    Show {
        #[command(flatten)]
        filter: Filter,
        /// The lines as CSV.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// The metered usage rows (one VM, one period, one host) of a month.
    Usage {
        #[command(flatten)]
        filter: Filter,
    },
    /// Close a month that has ended now, instead of `[billing] close_after` after its end:
    /// its invoices become final. Usage sent later goes on the next month's invoice.
    Close {
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
    },
    /// Each closed invoice's delivery to `[billing] webhook_url`: attempts, the last
    /// status or error, and whether it was delivered.
    Deliveries,
    /// Send a closed invoice to the webhook again (after the receiver was fixed, say).
    Redeliver {
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
        #[arg(long, value_name = "NAME")]
        member: String,
    },
    /// Give a member a credit (a correction, a refund) on their next invoice to close.
    Credit {
        #[arg(long, value_name = "NAME")]
        member: String,
        /// Positive, in whole cents of the member's plan's currency, such as 5.00.
        #[arg(long, value_name = "AMOUNT")]
        amount: Amount,
        /// Why: shown on the invoice line.
        #[arg(long)]
        reason: String,
    },
}

/// Whose and which month: every member's (a member: their own) and this month by default.
#[derive(clap::Args)]
pub struct Filter {
    /// Only this member's.
    #[arg(long, value_name = "NAME")]
    member: Option<String>,
    /// Only this month's, as YYYY-MM (UTC months).
    #[arg(long, value_name = "YYYY-MM")]
    month: Option<String>,
}

/// A query string of the parameters that are set.
fn query(params: &[(&str, &Option<String>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", value.as_deref()?)))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

fn checked_month(month: Option<String>) -> Result<Option<String>, ClientError> {
    if let Some(month) = &month {
        month_bounds(month).map_err(|e| ClientError::Usage(format!("--{e}")))?;
    }
    Ok(month)
}

pub fn invoice(client: &ApiClient, json: bool, command: InvoiceCommand) -> Result<(), ClientError> {
    match command {
        InvoiceCommand::List { filter, csv } => list(client, json, filter, csv),
        InvoiceCommand::Show { filter, csv } => show(client, json, filter, csv),
        InvoiceCommand::Usage { filter } => usage(client, json, filter),
        InvoiceCommand::Close { month } => {
            checked_month(Some(month.clone()))?;
            let answer: Value = client.post(&format!("/v1/invoices/{month}/close"))?;
            report(json, &answer, &format!("{month} closed"));
            Ok(())
        }
        InvoiceCommand::Deliveries => {
            let rows: Vec<DeliveryRow> = client.get("/v1/invoice-deliveries")?;
            if json {
                print_json(&rows);
            } else {
                print_deliveries(&rows);
            }
            Ok(())
        }
        InvoiceCommand::Redeliver { month, member } => {
            let path = format!("/v1/invoices/{month}/{member}/redeliver");
            let answer: Value = client.post(&path)?;
            report(
                json,
                &answer,
                &format!("the invoice of {member} for {month} will be sent again"),
            );
            Ok(())
        }
        InvoiceCommand::Credit {
            member,
            amount,
            reason,
        } => {
            let body = NewCredit {
                member: member.clone(),
                amount,
                reason,
            };
            let answer: Value = client.post_json("/v1/credits", &body)?;
            report(
                json,
                &answer,
                &format!("credit of {amount} for {member} added"),
            );
            Ok(())
        }
    }
}

/// `hearth invoice list`.
fn list(client: &ApiClient, json: bool, filter: Filter, csv: bool) -> Result<(), ClientError> {
    let Filter { member, month } = filter;
    let month = checked_month(month)?;
    let path = format!(
        "/v1/invoices{}",
        query(&[("member", &member), ("month", &month)])
    );
    let invoices: Vec<Invoice> = client.get(&path)?;
    if json {
        print_json(&invoices);
    } else if csv {
        print!("{}", to_csv(&invoices));
    } else {
        print_list(&invoices);
    }
    Ok(())
}

/// `hearth invoice show`.
fn show(client: &ApiClient, json: bool, filter: Filter, csv: bool) -> Result<(), ClientError> {
    let Filter { member, month } = filter;
    let month = checked_month(month)?.unwrap_or_else(|| month_of(now_s()));
    let member = match member {
        Some(member) => member,
        None => own_name(client)?,
    };
    let invoice: Invoice = client.get(&format!("/v1/invoices/{month}/{member}"))?;
    if json {
        print_json(&invoice);
    } else if csv {
        print!("{}", to_csv(std::slice::from_ref(&invoice)));
    } else {
        print_invoice(&invoice);
    }
    Ok(())
}

/// `hearth invoice usage`.
fn usage(client: &ApiClient, json: bool, filter: Filter) -> Result<(), ClientError> {
    let Filter { member, month } = filter;
    let month = checked_month(month)?;
    let path = format!(
        "/v1/usage{}",
        query(&[("member", &member), ("month", &month)])
    );
    let rows: Vec<UsageRow> = client.get(&path)?;
    if json {
        print_json(&rows);
    } else {
        print_usage(&rows);
    }
    Ok(())
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The caller's own account name (for a member's `show` with no --member).
fn own_name(client: &ApiClient) -> Result<String, ClientError> {
    let me: Value = client.get("/v1/me")?;
    me["name"]
        .as_str()
        .filter(|name| *name != "root")
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Usage("give --member NAME (this token is no account's)".into()))
}

fn print_list(invoices: &[Invoice]) {
    print_table(
        &["MONTH", "MEMBER", "STATUS", "LINES", "TOTAL", "CURRENCY"],
        invoices.iter().map(|i| {
            vec![
                i.month.clone(),
                i.member.clone(),
                status(i).to_owned(),
                i.lines.len().to_string(),
                i.total.to_string(),
                i.currency.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    );
}

fn status(invoice: &Invoice) -> &'static str {
    invoice.status.as_str()
}

fn print_invoice(invoice: &Invoice) {
    let currency = invoice.currency.as_deref().unwrap_or("(no prices)");
    println!(
        "invoice of {} for {} ({}), {currency}",
        invoice.member,
        invoice.month,
        status(invoice)
    );
    print_table(
        &[
            "VM",
            "USAGE MONTH",
            "RESOURCE",
            "QUANTITY",
            "UNIT PRICE",
            "AMOUNT",
        ],
        invoice.lines.iter().map(|l| {
            vec![
                match &l.note {
                    Some(note) => note.clone(),
                    None => l.vm.clone(),
                },
                l.usage_month.clone(),
                l.resource.as_str().to_owned(),
                l.quantity.to_string(),
                l.unit_price.to_string(),
                l.amount.to_string(),
            ]
        }),
    );
    println!(
        "total {} {}",
        invoice.total,
        invoice.currency.as_deref().unwrap_or("")
    );
}

fn print_deliveries(rows: &[DeliveryRow]) {
    print_table(
        &[
            "MONTH",
            "MEMBER",
            "DELIVERED",
            "ATTEMPTS",
            "LAST",
            "EMAILED",
        ],
        rows.iter().map(|r| {
            let d = &r.delivery;
            let last = match (&d.last_error, d.last_status) {
                (Some(error), _) => error.clone(),
                (None, Some(status)) => format!("HTTP {status}"),
                (None, None) => "-".into(),
            };
            let emailed = match (&r.mail, r.mail.delivered) {
                (_, true) => "yes".to_owned(),
                (mail, false) if mail.attempts == 0 => "no".to_owned(),
                (mail, false) => format!(
                    "no ({} attempts: {})",
                    mail.attempts,
                    mail.last_error.as_deref().unwrap_or("-")
                ),
            };
            vec![
                r.month.clone(),
                r.member.clone(),
                if d.delivered { "yes" } else { "no" }.into(),
                d.attempts.to_string(),
                last,
                emailed,
            ]
        }),
    );
}

fn print_usage(rows: &[UsageRow]) {
    print_table(
        &[
            "PERIOD START",
            "VM",
            "OWNER",
            "HOST",
            "SEEN S",
            "RUNNING S",
            "VCPUS",
            "MEMORY MIB",
            "DISK GIB",
            "ADDRESSES",
            "BILLED IN",
        ],
        rows.iter().map(|r| {
            vec![
                r.start_s.to_string(),
                r.name.clone(),
                r.owner.clone(),
                r.host.clone(),
                r.seen_s.to_string(),
                r.running_s.to_string(),
                r.vcpus.to_string(),
                r.memory_mib.to_string(),
                r.disk_gib.to_string(),
                r.addresses.to_string(),
                r.billed_in.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_has_only_what_is_set() {
        assert_eq!(query(&[("member", &None), ("month", &None)]), "");
        assert_eq!(
            query(&[
                ("member", &Some("bo".into())),
                ("month", &Some("2026-11".into()))
            ]),
            "?member=bo&month=2026-11"
        );
    }
}
