//! Invoices as a pure function of metered usage and a plan's prices: `invoice` turns a
//! member's usage rows and credits into itemised lines (per VM, per resource, per month the
//! usage belongs to), each rounded to the cent once; `close` makes every member's invoice of
//! a month that has ended, marks what it counted as billed, and keeps it unchanged from
//! then on. Usage a worker sends after its month closed is not lost: it is unbilled, so the
//! next month's invoice counts it, on lines that name its month. Months are UTC calendar
//! months.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::metering::UsageRow;
use crate::money::{Amount, Prices};
use crate::shared_map::OrdMapExt;

/// The co-op's billing: metered usage, credits, and the invoices of closed months.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Billing {
    /// Usage rows by `UsageRow::key`. Rows counted by an invoice are kept two more months,
    /// then dropped (the invoice keeps their sums).
    #[serde(default)]
    pub usage: crate::metering::Usage,
    /// Credits and corrections by id (the log index that added them).
    #[serde(default)]
    #[schemars(with = "BTreeMap<u64, Credit>")]
    pub credits: imbl::OrdMap<u64, Credit>,
    /// Closed invoices by `MONTH/member`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Invoice>")]
    pub invoices: imbl::OrdMap<String, Invoice>,
    /// The months closed.
    #[serde(default)]
    pub closed: BTreeSet<String>,
    /// Each closed invoice's delivery to the co-op's webhook, by the invoice's key.
    #[serde(default)]
    pub deliveries: BTreeMap<String, WebhookDelivery>,
    /// Each closed invoice's email to its member (through `[smtp]`), by the invoice's key,
    /// recorded as a webhook delivery is.
    #[serde(default)]
    pub mails: BTreeMap<String, WebhookDelivery>,
}

/// How a closed invoice's webhook delivery went: every attempt is recorded through the log,
/// so a new leader neither sends it again once delivered nor forgets a failure's backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookDelivery {
    pub attempts: u32,
    pub delivered: bool,
    /// The last attempt's HTTP status, or why it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix milliseconds of the last attempt.
    pub last_attempt_ms: u64,
    /// Unix milliseconds before which the next attempt must not start (backoff).
    pub next_attempt_ms: u64,
}

/// An amount given back to a member (a correction, a goodwill credit): a line of its own
/// on the next invoice that closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Credit {
    pub id: u64,
    pub member: String,
    /// What the member is given back: positive, in whole cents.
    pub amount: Amount,
    pub reason: String,
    /// Unix milliseconds, as the node that took it saw them.
    pub at_ms: u64,
    /// The month whose invoice counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_in: Option<String>,
}

impl Credit {
    pub fn validate(&self) -> Result<(), String> {
        if self.amount <= Amount::ZERO {
            return Err("amount: a credit is a positive amount, such as 5.00".into());
        }
        if Amount::from_cents(self.amount.to_cents()) != self.amount {
            return Err(format!(
                "amount: {} is not whole cents; give at most two decimals",
                self.amount
            ));
        }
        if self.reason.trim().is_empty() || self.reason.chars().count() > 200 {
            return Err("reason: say why in 1 to 200 characters".into());
        }
        crate::names::check_name("member", &self.member)
    }
}

/// What a line counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    VcpuHours,
    RamGibHours,
    DiskGibMonths,
    AddressMonths,
    Credit,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::VcpuHours => "vcpu-hours",
            Resource::RamGibHours => "ram-gib-hours",
            Resource::DiskGibMonths => "disk-gib-months",
            Resource::AddressMonths => "address-months",
            Resource::Credit => "credit",
        }
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceLine {
    /// The VM's id and name ("" for a credit).
    pub vm_id: String,
    pub vm: String,
    /// The month the usage belongs to (earlier than the invoice's for usage sent late).
    pub usage_month: String,
    pub resource: Resource,
    /// How much, to a millionth (vCPU-hours, GiB-months, …; 1 for a credit).
    pub quantity: Amount,
    /// The price of one unit (0 when the plan has none).
    #[schemars(schema_with = "crate::money::signed_schema")]
    pub unit_price: Amount,
    /// What the line costs, in whole cents (negative for a credit).
    #[schemars(schema_with = "crate::money::signed_schema")]
    pub amount: Amount,
    /// A credit's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Whether a month's invoice is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InvoiceStatus {
    /// The month has not closed: the figures grow as usage is recorded.
    Open,
    /// Final: it never changes; corrections are credits on a later invoice.
    Closed,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Closed => "closed",
        }
    }
}

/// A member's invoice for a month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Invoice {
    pub member: String,
    /// `YYYY-MM`.
    pub month: String,
    pub status: InvoiceStatus,
    /// The plan's currency; absent when the plan has no prices.
    pub currency: Option<String>,
    pub lines: Vec<InvoiceLine>,
    /// The sum of the lines, in whole cents.
    #[schemars(schema_with = "crate::money::signed_schema")]
    pub total: Amount,
    /// When the month was closed (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<u64>,
}

/// [`month_bounds`]'s rule as a JSON Schema pattern: `YYYY-MM` from 1970.
pub const MONTH_PATTERN: &str = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$";

/// The key of a closed invoice.
pub fn invoice_key(month: &str, member: &str) -> String {
    format!("{month}/{member}")
}

/// `YYYY-MM` of a Unix time in seconds.
pub fn month_of(secs: u64) -> String {
    let (year, month, _) = crate::uptime::civil(secs / 86_400);
    format!("{year:04}-{month:02}")
}

/// The first and the last-plus-one second of month `YYYY-MM`, or why it is not one.
pub fn month_bounds(month: &str) -> Result<(u64, u64), String> {
    let bad = || format!("month: `{month}` is not a month; write it as YYYY-MM, such as 2026-11");
    let (year, number) = month.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || number.len() != 2 {
        return Err(bad());
    }
    let year: i64 = year.parse().map_err(|_| bad())?;
    let number: u32 = number.parse().map_err(|_| bad())?;
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&number) {
        return Err(bad());
    }
    let next = if number == 12 {
        (year + 1, 1)
    } else {
        (year, number + 1)
    };
    let start = days_from_civil(year, number) * 86_400;
    let end = days_from_civil(next.0, next.1) * 86_400;
    Ok((start as u64, end as u64))
}

/// The month `count` months before `month` (which must be valid).
pub fn months_before(month: &str, count: u32) -> String {
    let (start, _) = month_bounds(month).unwrap_or((0, 0));
    let mut at = start;
    for _ in 0..count {
        at = month_bounds(&month_of(at.saturating_sub(1))).map_or(0, |(s, _)| s);
    }
    month_of(at)
}

/// Days from 1970-01-01 to the first of `month` of `year` (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One VM's sums over one month of usage: resource-seconds.
#[derive(Debug, Default)]
struct Sums {
    name: String,
    vcpu_s: i128,
    ram_mib_s: i128,
    disk_gib_s: i128,
    address_s: i128,
}

/// Each VM's sums per month of usage, from `rows`. Rows of one VM and period from two
/// hosts (a move or a failover within the period) count its disk and addresses once (the
/// longer seen) and its running time together, never above the period.
fn sums<'a>(rows: impl IntoIterator<Item = &'a UsageRow>) -> BTreeMap<(String, String), Sums> {
    let mut periods: BTreeMap<(&str, u64), Vec<&UsageRow>> = BTreeMap::new();
    for row in rows {
        periods.entry((&row.vm, row.start_s)).or_default().push(row);
    }
    let mut out: BTreeMap<(String, String), Sums> = BTreeMap::new();
    for ((vm, start_s), rows) in periods {
        let Some(longest) = rows.iter().max_by_key(|r| r.seen_s) else {
            continue;
        };
        let running: u64 = rows.iter().map(|r| u64::from(r.running_s)).sum();
        let running = i128::from(running.min(u64::from(longest.period_s)));
        let seen = i128::from(longest.seen_s);
        let sums = out.entry((month_of(start_s), vm.to_owned())).or_default();
        sums.name.clone_from(&longest.name);
        sums.vcpu_s += running * i128::from(longest.vcpus);
        sums.ram_mib_s += running * i128::from(longest.memory_mib);
        sums.disk_gib_s += seen * i128::from(longest.disk_gib);
        sums.address_s += seen * i128::from(longest.addresses);
    }
    out
}

/// Member `member`'s invoice for `month`, from its usage rows and credits, at `prices`.
/// Lines come per VM, per month of usage, per resource used; each is rounded to the cent
/// once, and the total is the sum of the lines.
pub fn invoice<'a>(
    member: &str,
    month: &str,
    rows: impl IntoIterator<Item = &'a UsageRow>,
    credits: impl IntoIterator<Item = &'a Credit>,
    prices: Option<&Prices>,
) -> Invoice {
    let mut lines = Vec::new();
    for ((usage_month, vm_id), sums) in sums(rows) {
        let month_s = month_bounds(&usage_month).map_or(1, |(s, e)| i128::from(e - s));
        let per = [
            (
                Resource::VcpuHours,
                sums.vcpu_s,
                3600,
                prices.and_then(|p| p.vcpu_hour),
            ),
            (
                Resource::RamGibHours,
                sums.ram_mib_s,
                3600 * 1024,
                prices.and_then(|p| p.gib_ram_hour),
            ),
            (
                Resource::DiskGibMonths,
                sums.disk_gib_s,
                month_s,
                prices.and_then(|p| p.gib_disk_month),
            ),
            (
                Resource::AddressMonths,
                sums.address_s,
                month_s,
                prices.and_then(|p| p.address_month),
            ),
        ];
        for (resource, used, unit, price) in per {
            if used == 0 {
                continue;
            }
            let price = price.unwrap_or(Amount::ZERO);
            lines.push(InvoiceLine {
                vm_id: vm_id.clone(),
                vm: sums.name.clone(),
                usage_month: usage_month.clone(),
                resource,
                quantity: Amount::ratio(used, unit).unwrap_or(Amount::ZERO),
                unit_price: price,
                amount: Amount::from_cents(price.cents_times(used, unit).unwrap_or(0)),
                note: None,
            });
        }
    }
    for credit in credits {
        lines.push(InvoiceLine {
            vm_id: String::new(),
            vm: String::new(),
            usage_month: month_of(credit.at_ms / 1000),
            resource: Resource::Credit,
            quantity: Amount::from_cents(100),
            unit_price: Amount::from_micros(-credit.amount.micros()),
            amount: Amount::from_micros(-credit.amount.micros()),
            note: Some(credit.reason.clone()),
        });
    }
    let total = lines.iter().fold(Amount::ZERO, |sum, line| {
        sum.checked_add(line.amount).unwrap_or(sum)
    });
    Invoice {
        member: member.to_owned(),
        month: month.to_owned(),
        status: InvoiceStatus::Open,
        currency: prices.map(|p| p.currency.clone()),
        lines,
        total,
        closed_at_ms: None,
    }
}

/// The members with unbilled usage before `end_s` or unbilled credits.
fn members_due(billing: &Billing, end_s: u64) -> BTreeSet<String> {
    let mut members: BTreeSet<String> = billing
        .usage
        .values()
        .filter(|r| r.billed_in.is_none() && r.start_s < end_s)
        .map(|r| r.owner.clone())
        .collect();
    members.extend(
        billing
            .credits
            .values()
            .filter(|c| c.billed_in.is_none())
            .map(|c| c.member.clone()),
    );
    members
}

/// `member`'s invoice for `month` as it stands: the closed one, else an open one over the
/// unbilled usage of that month and before, and the unbilled credits.
pub fn current(
    billing: &Billing,
    member: &str,
    month: &str,
    prices: Option<&Prices>,
) -> Result<Invoice, String> {
    let (_, end_s) = month_bounds(month)?;
    if let Some(closed) = billing.invoices.get(&invoice_key(month, member)) {
        return Ok(closed.clone());
    }
    let rows = billing
        .usage
        .values()
        .filter(|r| r.owner == member && r.billed_in.is_none() && r.start_s < end_s);
    let credits = billing
        .credits
        .values()
        .filter(|c| c.member == member && c.billed_in.is_none());
    Ok(invoice(member, month, rows, credits, prices))
}

/// Closes `month` at `at_ms`: every member with unbilled usage of it (or of months before,
/// sent late) or an unbilled credit gets a closed invoice, and what it counted is marked
/// billed. Returns how many invoices it made; `Ok(None)` when the month was closed already.
/// Refused before the month has ended. Rows billed by an earlier close are dropped: the
/// state keeps the rows of the open month and of the last month closed only (its invoices
/// keep the sums), since every row is in every copy of the state.
pub fn close(
    billing: &mut Billing,
    month: &str,
    at_ms: u64,
    prices: impl Fn(&str) -> Option<Prices>,
) -> Result<Option<usize>, String> {
    let (_, end_s) = month_bounds(month)?;
    if billing.closed.contains(month) {
        return Ok(None);
    }
    if at_ms / 1000 < end_s {
        return Err(format!(
            "month: {month} has not ended yet; a month closes once it is over"
        ));
    }
    let members = members_due(billing, end_s);
    for member in &members {
        let mut invoice = current(billing, member, month, prices(member).as_ref())?;
        invoice.status = InvoiceStatus::Closed;
        invoice.closed_at_ms = Some(at_ms);
        billing.invoices.insert(invoice_key(month, member), invoice);
    }
    let usage = std::sync::Arc::make_mut(&mut billing.usage);
    for row in usage.values_mut() {
        if row.billed_in.is_none() && row.start_s < end_s {
            row.billed_in = Some(month.to_owned());
        }
    }
    billing.credits.change_where(
        |_, credit| credit.billed_in.is_none(),
        |_, credit| credit.billed_in = Some(month.to_owned()),
    );
    usage.retain(|_, r| r.billed_in.as_deref().is_none_or(|m| m >= month));
    billing.closed.insert(month.to_owned());
    Ok(Some(members.len()))
}

/// The month a leader should close now (`now_s`), if any: the oldest month not closed
/// that holds unbilled usage or credits, or follows a closed one that does (usage sent
/// late), once `grace_s` has passed since it ended.
pub fn due(billing: &Billing, now_s: u64, grace_s: u64) -> Option<String> {
    let oldest = billing
        .usage
        .values()
        .filter(|r| r.billed_in.is_none())
        .map(|r| r.start_s)
        .chain(
            billing
                .credits
                .values()
                .filter(|c| c.billed_in.is_none())
                .map(|c| c.at_ms / 1000),
        )
        .min()?;
    let mut month = month_of(oldest);
    while billing.closed.contains(&month) {
        let (_, end) = month_bounds(&month).ok()?;
        month = month_of(end);
    }
    let (_, end) = month_bounds(&month).ok()?;
    (end.saturating_add(grace_s) <= now_s).then_some(month)
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Every line of `invoices`, then a `total` row per invoice.
pub fn to_csv(invoices: &[Invoice]) -> String {
    let mut out = String::from(
        "member,month,status,currency,vm,vm_id,usage_month,resource,quantity,unit_price,amount,note\n",
    );
    for invoice in invoices {
        let currency = invoice.currency.as_deref().unwrap_or("");
        let head = [
            field(&invoice.member),
            field(&invoice.month),
            invoice.status.as_str().to_owned(),
            field(currency),
        ]
        .join(",");
        for line in &invoice.lines {
            out.push_str(&format!(
                "{head},{},{},{},{},{},{},{},{}\n",
                field(&line.vm),
                field(&line.vm_id),
                field(&line.usage_month),
                line.resource.as_str(),
                line.quantity,
                line.unit_price,
                line.amount,
                field(line.note.as_deref().unwrap_or("")),
            ));
        }
        out.push_str(&format!("{head},,,,total,,,{},\n", invoice.total));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_totals_each_invoice() {
        let invoice = Invoice {
            member: "alice".into(),
            month: "2026-11".into(),
            status: InvoiceStatus::Closed,
            currency: Some("EUR".into()),
            lines: vec![InvoiceLine {
                vm_id: String::new(),
                vm: String::new(),
                usage_month: "2026-11".into(),
                resource: Resource::Credit,
                quantity: "1".parse().unwrap(),
                unit_price: "-2.50".parse().unwrap(),
                amount: "-2.50".parse().unwrap(),
                note: Some("outage, \"sorry\"".into()),
            }],
            total: "-2.50".parse().unwrap(),
            closed_at_ms: Some(0),
        };
        let csv = to_csv(&[invoice]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "alice,2026-11,closed,EUR,,,2026-11,credit,1.00,-2.50,-2.50,\"outage, \"\"sorry\"\"\""
        );
        assert_eq!(lines[2], "alice,2026-11,closed,EUR,,,,total,,,-2.50,");
    }

    fn row(vm: &str, host: &str, start_s: u64, seen_s: u32, running_s: u32) -> UsageRow {
        UsageRow {
            vm: vm.into(),
            name: format!("{vm}-name"),
            owner: "alice".into(),
            host: host.into(),
            start_s,
            period_s: 3600,
            seen_s,
            running_s,
            vcpus: 2,
            memory_mib: 1536,
            disk_gib: 10,
            addresses: 1,
            billed_in: None,
        }
    }

    fn prices() -> Prices {
        Prices {
            currency: "EUR".into(),
            vcpu_hour: Some("0.004".parse().unwrap()),
            gib_ram_hour: Some("0.002".parse().unwrap()),
            gib_disk_month: Some("0.05".parse().unwrap()),
            address_month: Some("1.50".parse().unwrap()),
            backup_gib_month: None,
        }
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_bounds("1970-01"), Ok((0, 31 * 86_400)));
        let (start, end) = month_bounds("2024-02").unwrap();
        assert_eq!((end - start) / 86_400, 29);
        assert_eq!(month_of(start), "2024-02");
        assert_eq!(month_of(end - 1), "2024-02");
        assert_eq!(month_of(end), "2024-03");
        assert_eq!(months_before("2026-01", 2), "2025-11");
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "", "2026-00"] {
            assert!(
                month_bounds(bad).unwrap_err().starts_with("month:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn lines_are_exact_to_the_cent_and_a_stopped_vm_pays_for_disk_and_address_only() {
        // November 2026: 30 days. vm-1 runs all of it; vm-2 is stopped all of it.
        let (start, end) = month_bounds("2026-11").unwrap();
        let mut rows = Vec::new();
        let mut at = start;
        while at < end {
            rows.push(row("vm-1", "w1", at, 3600, 3600));
            rows.push(row("vm-2", "w1", at, 3600, 0));
            at += 3600;
        }
        let invoice = invoice("alice", "2026-11", &rows, [], Some(&prices()));
        let line = |vm: &str, resource| {
            invoice
                .lines
                .iter()
                .find(|l| l.vm_id == vm && l.resource == resource)
                .map(|l| (l.quantity.to_string(), l.amount.to_string()))
        };
        // 720 h × 2 vCPU × 0.004 = 5.76; 720 h × 1.5 GiB × 0.002 = 2.16.
        assert_eq!(
            line("vm-1", Resource::VcpuHours),
            Some(("1440.00".into(), "5.76".into()))
        );
        assert_eq!(
            line("vm-1", Resource::RamGibHours),
            Some(("1080.00".into(), "2.16".into()))
        );
        // A whole month of 10 GiB at 0.05 = 0.50, and one address 1.50, for both.
        for vm in ["vm-1", "vm-2"] {
            assert_eq!(
                line(vm, Resource::DiskGibMonths),
                Some(("10.00".into(), "0.50".into()))
            );
            assert_eq!(
                line(vm, Resource::AddressMonths),
                Some(("1.00".into(), "1.50".into()))
            );
        }
        assert_eq!(line("vm-2", Resource::VcpuHours), None);
        assert_eq!(line("vm-2", Resource::RamGibHours), None);
        assert_eq!(invoice.total.to_string(), "11.92");
    }

    #[test]
    fn a_line_is_rounded_once_not_per_hour() {
        // 7 hours of one vCPU at 0.0015: 0.0105 → 0.01 (rounding each hour would give 0.00).
        let mut one = row("vm-1", "w1", 0, 3600, 3600);
        one.vcpus = 1;
        one.memory_mib = 0;
        one.disk_gib = 0;
        one.addresses = 0;
        let rows: Vec<UsageRow> = (0..7)
            .map(|h| UsageRow {
                start_s: h * 3600,
                ..one.clone()
            })
            .collect();
        let prices = Prices {
            vcpu_hour: Some("0.0015".parse().unwrap()),
            ..prices()
        };
        let invoice = invoice("alice", "1970-01", &rows, [], Some(&prices));
        assert_eq!(invoice.lines.len(), 1);
        assert_eq!(invoice.total.to_string(), "0.01");
        assert_eq!(invoice.lines[0].quantity.to_string(), "7.00");
    }

    #[test]
    fn a_period_reported_by_two_hosts_counts_disk_once_and_running_at_most_in_full() {
        let rows = [
            row("vm-1", "w1", 0, 3600, 2000),
            row("vm-1", "w2", 0, 1700, 1700),
        ];
        let prices = prices();
        let invoice = invoice("alice", "1970-01", &rows, [], Some(&prices));
        let quantity = |resource| {
            invoice
                .lines
                .iter()
                .find(|l| l.resource == resource)
                .map(|l| l.quantity.to_string())
        };
        assert_eq!(quantity(Resource::VcpuHours).as_deref(), Some("2.00"));
        // Seen for one hour (not two) of a 31-day month: 10 GiB × 1/744.
        assert_eq!(
            quantity(Resource::DiskGibMonths).as_deref(),
            Some("0.013441")
        );
    }

    #[test]
    fn closing_freezes_the_invoice_and_late_usage_goes_on_the_next_one() {
        let (nov, dec) = (
            month_bounds("2026-11").unwrap(),
            month_bounds("2026-12").unwrap(),
        );
        let mut billing = Billing::default();
        crate::metering::record(&mut billing.usage, &[row("vm-1", "w1", nov.0, 3600, 3600)]);
        billing.credits.insert(
            7,
            Credit {
                id: 7,
                member: "alice".into(),
                amount: "1.00".parse().unwrap(),
                reason: "outage on the 3rd".into(),
                at_ms: nov.0 * 1000,
                billed_in: None,
            },
        );
        let prices = |_: &str| Some(prices());
        // Not before the month is over.
        assert!(close(&mut billing, "2026-11", (nov.1 - 1) * 1000, prices).is_err());
        assert_eq!(
            close(&mut billing, "2026-11", nov.1 * 1000, prices),
            Ok(Some(1))
        );
        assert_eq!(
            close(&mut billing, "2026-11", nov.1 * 1000, prices),
            Ok(None)
        );
        let closed = current(&billing, "alice", "2026-11", None).unwrap();
        assert_eq!(closed.status, InvoiceStatus::Closed);
        assert!(
            closed
                .lines
                .iter()
                .any(|l| l.resource == Resource::Credit && l.amount.to_string() == "-1.00")
        );
        // A row of November sent after the close: November's invoice stays as it was, and
        // December's counts it, named as November's usage.
        crate::metering::record(
            &mut billing.usage,
            &[row("vm-1", "w1", nov.0 + 3600, 3600, 3600)],
        );
        assert_eq!(current(&billing, "alice", "2026-11", None).unwrap(), closed);
        let open = current(
            &billing,
            "alice",
            "2026-12",
            Some(&prices("alice").unwrap()),
        )
        .unwrap();
        assert_eq!(open.status, InvoiceStatus::Open);
        assert!(open.lines.iter().all(|l| l.usage_month == "2026-11"));
        assert!(!open.lines.is_empty());
        assert_eq!(
            close(&mut billing, "2026-12", dec.1 * 1000, prices),
            Ok(Some(1))
        );
        // Nothing counted twice: December's invoice has only the late hour.
        let december = current(&billing, "alice", "2026-12", None).unwrap();
        let hours: Vec<_> = december
            .lines
            .iter()
            .filter(|l| l.resource == Resource::VcpuHours)
            .map(|l| l.quantity.to_string())
            .collect();
        assert_eq!(hours, ["2.00"]);
        assert!(
            december
                .lines
                .iter()
                .all(|l| l.resource != Resource::Credit)
        );
    }

    #[test]
    fn the_month_due_is_the_oldest_unclosed_one_with_something_to_bill_once_grace_passed() {
        let mut billing = Billing::default();
        let (oct, nov) = (
            month_bounds("2026-10").unwrap(),
            month_bounds("2026-11").unwrap(),
        );
        assert_eq!(due(&billing, nov.1 + 10_000, 3600), None);
        crate::metering::record(&mut billing.usage, &[row("vm-1", "w1", oct.0, 3600, 0)]);
        assert_eq!(due(&billing, oct.1 + 3599, 3600), None);
        assert_eq!(
            due(&billing, oct.1 + 3600, 3600).as_deref(),
            Some("2026-10")
        );
        close(&mut billing, "2026-10", (oct.1 + 3600) * 1000, |_| None).unwrap();
        assert_eq!(due(&billing, nov.1 + 3600, 3600), None);
        // A late October row: November takes it.
        crate::metering::record(
            &mut billing.usage,
            &[row("vm-1", "w1", oct.0 + 3600, 3600, 0)],
        );
        assert_eq!(due(&billing, nov.1, 3600), None);
        assert_eq!(
            due(&billing, nov.1 + 3600, 3600).as_deref(),
            Some("2026-11")
        );
    }

    #[test]
    fn rows_are_dropped_at_the_close_after_the_one_that_billed_them() {
        let mut billing = Billing::default();
        let prices = |_: &str| None;
        let (sep, _) = month_bounds("2026-09").unwrap();
        crate::metering::record(&mut billing.usage, &[row("vm-1", "w1", sep, 3600, 0)]);
        let (_, end) = month_bounds("2026-09").unwrap();
        close(&mut billing, "2026-09", end * 1000, prices).unwrap();
        assert_eq!(billing.usage.len(), 1);
        let (_, end) = month_bounds("2026-10").unwrap();
        close(&mut billing, "2026-10", end * 1000, prices).unwrap();
        assert!(billing.usage.is_empty());
        assert!(billing.invoices.contains_key("2026-09/alice"));
    }

    #[test]
    fn credits_are_positive_whole_cents_with_a_reason() {
        let credit = |amount: &str, reason: &str| Credit {
            id: 1,
            member: "alice".into(),
            amount: amount.parse().unwrap(),
            reason: reason.into(),
            at_ms: 0,
            billed_in: None,
        };
        assert!(credit("5.00", "outage").validate().is_ok());
        for (amount, reason, field) in [
            ("0", "x", "amount:"),
            ("-1", "x", "amount:"),
            ("0.001", "x", "amount:"),
            ("1", " ", "reason:"),
        ] {
            let error = credit(amount, reason).validate().unwrap_err();
            assert!(error.starts_with(field), "{error}");
        }
    }
}
