//! The panel's billing pages, as pure functions over invoices: a member's running usage and
//! past invoices, one invoice line by line, and the admins' list of every member's with the
//! CSV export.

use hearth_types::invoice::Invoice;

use super::escape;
use super::pages::{Chrome, frame};

/// An invoice's total with its currency: `12.50 EUR`.
fn total(invoice: &Invoice) -> String {
    match &invoice.currency {
        Some(currency) => format!("{} {}", invoice.total, escape(currency)),
        None => format!("{} (no prices)", invoice.total),
    }
}

/// The lines of `invoice` as a table.
fn lines(invoice: &Invoice) -> String {
    if invoice.lines.is_empty() {
        return "<p class=\"muted\">Nothing used yet.</p>\n".into();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"invoice\"><tr><th>VM</th><th>usage month</th><th>resource</th><th class=\"num\">quantity</th><th class=\"num\">unit price</th><th class=\"num\">amount</th></tr>\n",
    );
    for line in &invoice.lines {
        let what = line.note.as_deref().unwrap_or(&line.vm);
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(what),
            escape(&line.usage_month),
            line.resource.as_str(),
            line.quantity,
            line.unit_price,
            line.amount,
        ));
    }
    out.push_str(&format!(
        "<tr class=\"total\"><td colspan=\"5\">total</td><td class=\"num\" id=\"total\">{}</td></tr></table></div>\n",
        total(invoice)
    ));
    out
}

/// `/panel/billing`: this month's usage so far, and the member's invoices.
pub fn member_billing(chrome: &Chrome, open: &Invoice, invoices: &[Invoice]) -> String {
    let mut body = format!(
        "<h1>Billing</h1>\n<h2>{} so far</h2>\n<p class=\"muted\">Usage is recorded per VM each hour its host measured; the invoice closes after the month ends.</p>\n<section id=\"running\">{}</section>\n<h2>Invoices</h2>\n",
        escape(&open.month),
        lines(open)
    );
    let closed: Vec<&Invoice> = invoices
        .iter()
        .filter(|i| i.closed_at_ms.is_some())
        .collect();
    if closed.is_empty() {
        body.push_str("<p class=\"muted\">No closed invoices yet.</p>\n");
    } else {
        body.push_str(
            "<table id=\"invoices\"><tr><th>month</th><th class=\"num\">total</th></tr>\n",
        );
        for invoice in closed.iter().rev() {
            body.push_str(&format!(
                "<tr><td><a href=\"/panel/billing/{month}\">{month}</a></td><td class=\"num\">{}</td></tr>\n",
                total(invoice),
                month = escape(&invoice.month),
            ));
        }
        body.push_str("</table>\n");
    }
    frame(chrome, "Billing · hearth", &body)
}

/// `/panel/billing/MONTH`: one invoice.
pub fn invoice_page(chrome: &Chrome, invoice: &Invoice) -> String {
    let body = format!(
        "<h1>Invoice {} · {}</h1>\n<p>{}</p>\n{}",
        escape(&invoice.month),
        escape(&invoice.member),
        match invoice.status {
            hearth_types::invoice::InvoiceStatus::Closed => "Closed: final.",
            hearth_types::invoice::InvoiceStatus::Open => "Open: it grows until the month closes.",
        },
        lines(invoice)
    );
    frame(chrome, "Invoice · hearth", &body)
}

/// `/admin/billing?month=YYYY-MM`: every member's invoice of the month, and the export.
pub fn admin_billing(chrome: &Chrome, month: &str, invoices: &[Invoice]) -> String {
    let month = escape(month);
    let mut body = format!(
        "<h1>Billing</h1>\n<form method=\"get\" action=\"/admin/billing\"><label for=\"month\">Month</label> <input id=\"month\" name=\"month\" value=\"{month}\" pattern=\"[0-9]{{4}}-[0-9]{{2}}\"> <button>Show</button></form>\n<p><a id=\"csv\" href=\"/admin/billing.csv?month={month}\" download>Download CSV of {month}</a></p>\n"
    );
    if invoices.is_empty() {
        body.push_str("<p class=\"muted\">No invoices for this month.</p>\n");
    } else {
        body.push_str("<table id=\"invoices\"><tr><th>member</th><th>status</th><th class=\"num\">lines</th><th class=\"num\">total</th></tr>\n");
        for invoice in invoices {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                escape(&invoice.member),
                invoice.status.as_str(),
                invoice.lines.len(),
                total(invoice),
            ));
        }
        body.push_str("</table>\n");
    }
    frame(chrome, "Billing · hearth", &body)
}
