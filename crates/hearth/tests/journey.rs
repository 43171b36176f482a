//! A new member's whole way through the co-op, against a real agent, a real QEMU guest,
//! real `dig`, an SMTP sink and real headless Chromium: she signs up, confirms her address,
//! is approved by an admin, creates a VM within her plan (a second one is over it), fixes
//! the guest's network from the panel's terminal, and points her own domain at the VM. At
//! month end (the agent's wall clock moved there with libfaketime) the leader closes the
//! month by itself, her invoice matches the metered usage to the cent, it reaches her by
//! email and in the panel, and an admin exports it as CSV for the co-op's books.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hearth_testkit::clock::FakeClock;
use hearth_testkit::smtp::SmtpSink;
use hearth_testkit::vms::{BOOT, wait_for_hosts};
use hearth_testkit::webdriver::Browser;
use hearth_testkit::{TempDir, TestAgent, TestCluster, dig_short, eventually};
use hearth_types::invoice::{Invoice, Resource, month_bounds, month_of};
use hearth_types::metering::UsageRow;

const SHORT: Duration = Duration::from_secs(30);
/// The metering period: seconds here, an hour by default.
const PERIOD: u32 = 2;
const DOMAIN: &str = "nia.test";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn flash(browser: &Browser) -> String {
    browser.text("#flash").unwrap_or_default()
}

/// Nia's usage rows of `month`, as an admin reads them.
fn usage(agent: &TestAgent, month: &str) -> Result<Vec<UsageRow>, String> {
    let value = agent.api_json(&format!("/v1/usage?member=nia&month={month}"))?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Types `line` into the terminal page and waits for `answer` on its screen.
fn type_and_see(browser: &Browser, line: &str, answer: &str) -> String {
    browser.fill(".xterm-helper-textarea", &format!("{line}\n"));
    eventually(&format!("`{answer}` on the terminal"), SHORT, || {
        let rows = browser.text(".xterm-rows")?;
        match rows.contains(answer) {
            true => Ok(rows),
            false => Err(rows),
        }
    })
}

/// The admin's side: the test guest image and pool, a plan of one VM with prices, and
/// sign-up by approval onto that plan.
fn open_the_coop(agent: &TestAgent, base: &str) {
    wait_for_hosts(agent, 1);
    agent.add_test_guest(&hearth_testkit::test_guest());
    // 36.00 per vCPU-hour is a cent per vCPU-second, 144.00 per GiB-hour a cent per second
    // for 256 MiB; disk and address prices are per month, large enough that seconds of
    // them come to cents.
    agent.cli(&[
        "plan",
        "set",
        "basic",
        "--vms",
        "1",
        "--zones",
        "1",
        "--currency",
        "EUR",
        "--price-vcpu-hour",
        "36.00",
        "--price-gib-ram-hour",
        "144.00",
        "--price-gib-disk-month",
        "1000000.00",
        "--price-address-month",
        "2000000.00",
    ]);
    agent.cli(&[
        "signup",
        "set",
        "--mode",
        "approval",
        "--public-url",
        base,
        "--plan",
        "basic",
    ]);
    agent.ensure_account("ann");
}

/// Nia signs up and confirms her address; Ann approves her on the Members page.
fn sign_up_and_get_approved(browser: &Browser, sink: &SmtpSink, base: &str) {
    browser.goto(&format!("{base}/login"));
    browser.click("#signup-link");
    browser.fill("#name", "nia");
    browser.fill("#email", "nia@coop.test");
    browser.fill("#password", "nia's long password");
    browser.click("#signup");
    let mail = sink.wait_for("nia@coop.test", 1, SHORT);
    let link = mail
        .line_starting(&format!("{base}/verify?token="))
        .unwrap_or_else(|| panic!("no link in {}", mail.body()));
    browser.goto(&link);
    browser.click("#confirm");
    browser.log_in(base, "nia", "nia's long password");
    assert!(
        flash(browser).contains("not approved"),
        "{}",
        flash(browser)
    );
    browser.log_in(base, "ann", "ann's test password");
    browser.goto(&format!("{base}/admin/members"));
    browser.click("#account-nia form[action$='/approve'] button");
    assert!(
        flash(browser).contains("nia approved"),
        "{}",
        flash(browser)
    );
}

/// Nia creates her VM in the panel and sees it boot; a second one is over her plan. Returns
/// the VM's id and address.
fn create_the_vm(browser: &Browser, base: &str) -> (String, String) {
    browser.log_in(base, "nia", "nia's long password");
    assert!(browser.url().ends_with("/panel"), "{}", browser.url());
    browser.fill("#vm-name", "web1");
    browser.select("#image", "tiny");
    browser.select("#size", "tiny");
    browser.select("#pool", "lan");
    browser.click("#create-vm");
    let vm_url = browser.url();
    let id = vm_url.rsplit('/').next().unwrap_or_default().to_owned();
    assert!(id.starts_with("vm-"), "{vm_url}");
    let console = eventually("the guest's shell on its page", BOOT, || {
        browser.goto(&vm_url);
        let console = browser.text("#console")?;
        match console.contains("HEARTH-GUEST-READY") {
            true => Ok(console),
            false => Err(console),
        }
    });
    let ip = console
        .split("ip=")
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ', '\n']).next())
        .unwrap_or_else(|| panic!("no address in {console}"))
        .to_owned();
    assert!(ip.starts_with("192.0.2."), "{console}");
    browser.goto(&format!("{base}/panel"));
    browser.fill("#vm-name", "web2");
    browser.select("#size", "tiny");
    browser.click("#create-vm");
    assert!(flash(browser).contains("over quota"), "{}", flash(browser));
    (id, ip)
}

/// In the terminal page, the guest's address is gone (the broken config of a support
/// ticket) and Nia puts it back; the guest's own `ip` says so.
fn fix_the_network(browser: &Browser, base: &str, id: &str, ip: &str) {
    browser.goto(&format!("{base}/panel/vms/{id}/terminal"));
    eventually("the keyboard", SHORT, || {
        let status = browser.text("#terminal-status")?;
        match status.contains("You hold the keyboard") {
            true => Ok(()),
            false => Err(status),
        }
    });
    let count = "ip -4 addr show dev eth0 | grep -c inet";
    type_and_see(
        browser,
        &format!("ip addr flush dev eth0; echo NET-BROKEN-$({count})"),
        "NET-BROKEN-0",
    );
    type_and_see(
        browser,
        &format!(
            "ip addr add {ip}/24 dev eth0 && ip route add default via 192.0.2.1; echo NET-FIXED-$({count})"
        ),
        "NET-FIXED-1",
    );
}

/// Nia claims her domain, Ann approves the claim, and the apex follows her VM.
fn point_the_domain(browser: &Browser, agent: &TestAgent, base: &str, ip: &str) {
    browser.goto(&format!("{base}/panel/zones"));
    browser.fill("#apex", DOMAIN);
    browser.click("#claim-zone");
    assert!(browser.find("#challenge").is_ok(), "{}", browser.source());
    browser.log_in(base, "ann", "ann's test password");
    browser.goto(&format!("{base}/panel/zones/{DOMAIN}"));
    browser.click("#approve");
    assert!(flash(browser).contains("verified"), "{}", flash(browser));
    browser.log_in(base, "nia", "nia's long password");
    browser.goto(&format!("{base}/panel/zones/{DOMAIN}"));
    browser.fill("#follow-name", "@");
    browser.select("#follow-vm", "web1");
    browser.click("#follow-vm-button");
    browser.fill("#set-name", "www");
    browser.select("#set-type", "CNAME");
    browser.fill("#set-values", &format!("{DOMAIN}."));
    browser.click("#put-record");
    assert!(flash(browser).contains("saved"), "{}", flash(browser));
    eventually(
        "the domain answers with the VM's address",
        SHORT,
        || match dig_short(agent.dns_addr(), DOMAIN, "A")? {
            got if got == [ip.to_owned()] => Ok(()),
            got => Err(format!("{got:?}")),
        },
    );
    assert_eq!(
        dig_short(agent.dns_addr(), &format!("www.{DOMAIN}"), "CNAME").unwrap(),
        [format!("{DOMAIN}.")]
    );
}

/// Rounds `numerator / denominator` (both positive) to the nearest whole, halves up.
fn rounded(numerator: i128, denominator: i128) -> i128 {
    (2 * numerator + denominator) / (2 * denominator)
}

/// The cents each resource of `rows` costs at the test's plan, per month of usage, each
/// line rounded once as an invoice does.
fn expected_cents(rows: &[&UsageRow]) -> BTreeMap<Resource, i128> {
    let mut by_month: BTreeMap<String, [i128; 4]> = BTreeMap::new();
    for row in rows {
        let sums = by_month.entry(month_of(row.start_s)).or_default();
        let running = i128::from(row.running_s);
        let seen = i128::from(row.seen_s);
        sums[0] += running * i128::from(row.vcpus);
        sums[1] += running * i128::from(row.memory_mib);
        sums[2] += seen * i128::from(row.disk_gib);
        sums[3] += seen * i128::from(row.addresses);
    }
    let mut out = BTreeMap::new();
    for (month, [vcpu_s, mib_s, gib_s, address_s]) in by_month {
        let (start, end) = month_bounds(&month).unwrap();
        let month_s = i128::from(end - start);
        // Prices in cents: 3 600 per vCPU-hour, 14 400 per GiB-hour, 100 000 000 per
        // GiB-month, 200 000 000 per address-month.
        for (resource, cents) in [
            (Resource::VcpuHours, rounded(3_600 * vcpu_s, 3_600)),
            (Resource::RamGibHours, rounded(14_400 * mib_s, 3_600 * 1024)),
            (
                Resource::DiskGibMonths,
                rounded(100_000_000 * gib_s, month_s),
            ),
            (
                Resource::AddressMonths,
                rounded(200_000_000 * address_s, month_s),
            ),
        ] {
            *out.entry(resource).or_default() += cents;
        }
    }
    out
}

/// The month closes by itself once the agent's clock is past its end and `close_after`;
/// the invoice's lines are the rows it billed, to the cent. Returns the invoice.
fn month_end(agent: &TestAgent, clock: &mut FakeClock, id: &str) -> Invoice {
    let month = month_of(clock.now());
    eventually("three whole periods of web1 running", BOOT, || {
        let rows = usage(agent, &month)?;
        let whole = rows
            .iter()
            .filter(|r| r.vm == id && r.running_s == PERIOD)
            .count();
        match whole >= 3 {
            true => Ok(()),
            false => Err(format!("{rows:?}")),
        }
    });
    let (_, end) = month_bounds(&month).unwrap();
    // An hour (the default close_after) and a little after the month's end.
    clock.set(end + 3_600 + 5);
    let invoice = eventually("the month closed", SHORT, || {
        let value = agent.api_json(&format!("/v1/invoices/{month}/nia"))?;
        let invoice: Invoice = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        match invoice.closed_at_ms {
            Some(_) => Ok(invoice),
            None => Err(value.to_string()),
        }
    });
    let rows = usage(agent, &month).unwrap();
    let billed: Vec<&UsageRow> = rows
        .iter()
        .filter(|r| r.billed_in.as_deref() == Some(month.as_str()))
        .collect();
    assert!(billed.len() >= 3, "{rows:?}");
    let mut periods: Vec<u64> = billed.iter().map(|r| r.start_s).collect();
    periods.dedup();
    assert_eq!(periods.len(), billed.len(), "a period twice: {billed:?}");
    let want = expected_cents(&billed);
    for (resource, cents) in &want {
        let got: i128 = invoice
            .lines
            .iter()
            .filter(|l| l.vm_id == id && l.resource == *resource)
            .map(|l| l.amount.micros() / 10_000)
            .sum();
        assert_eq!(got, *cents, "{resource:?}: {invoice:?} from {billed:?}");
    }
    let total: i128 = want.values().sum();
    assert!(total > 0, "{invoice:?}");
    assert_eq!(invoice.total.micros(), total * 10_000, "{invoice:?}");
    assert_eq!(invoice.currency.as_deref(), Some("EUR"));
    invoice
}

/// The invoice reaches Nia by email and in the panel, and Ann exports it as CSV.
fn invoice_delivered(browser: &Browser, sink: &SmtpSink, base: &str, invoice: &Invoice) {
    let month = &invoice.month;
    let total = format!("{} EUR", invoice.total);
    let mail = eventually("the invoice by email", SHORT, || {
        sink.mails()
            .into_iter()
            .find(|m| {
                m.to.iter().any(|t| t.contains("nia@coop.test")) && m.subject().contains("invoice")
            })
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_eq!(mail.subject(), format!("Your invoice for {month}: {total}"));
    let link = format!("{base}/panel/billing/{month}");
    assert!(mail.body().contains(&link), "{}", mail.body());

    // A day has passed on the server: her session ended; she logs in again.
    browser.log_in(base, "nia", "nia's long password");
    browser.goto(&link);
    assert_eq!(browser.text("#total").unwrap(), total);
    assert!(browser.text("body").unwrap().contains("Closed: final."));

    browser.log_in(base, "ann", "ann's test password");
    browser.goto(&format!("{base}/admin/billing?month={month}"));
    // The page's download link, fetched with her session as the browser would (the panel's
    // content security policy keeps scripts from fetching it).
    let href = browser.script("return document.querySelector('#csv').getAttribute('href')");
    assert_eq!(
        href.as_str(),
        Some(format!("/admin/billing.csv?month={month}").as_str())
    );
    let cookie = browser
        .cookies()
        .iter()
        .find(|c| c["name"] == "hearth_session")
        .and_then(|c| c["value"].as_str().map(str::to_owned))
        .expect("a session cookie");
    let addr = base.trim_start_matches("http://");
    let request = format!(
        "GET /admin/billing.csv?month={month} HTTP/1.1\r\nHost: {addr}\r\nCookie: hearth_session={cookie}\r\nConnection: close\r\n\r\n"
    );
    let (status, csv) = hearth_testkit::http_request(addr.parse().unwrap(), &request).unwrap();
    assert_eq!(status, 200, "{csv}");
    assert!(csv.starts_with("member,month,status,currency,vm,"), "{csv}");
    let total_row = csv
        .lines()
        .find(|l| l.starts_with(&format!("nia,{month},closed,EUR,")) && l.contains("total"))
        .unwrap_or_else(|| panic!("no total row for nia in {csv}"));
    assert!(
        total_row.ends_with(&format!(",total,,,{},", invoice.total)),
        "{total_row}"
    );
}

#[test]
fn a_new_member_joins_runs_a_vm_points_her_domain_and_pays_to_the_cent() {
    let sink = SmtpSink::start(std::net::Ipv4Addr::LOCALHOST);
    let root = TempDir::new("journey");
    let mut clock = FakeClock::new(root.path());
    let env = clock.env();
    let smtp = format!(
        "[smtp]\nserver = \"{}\"\nfrom = \"Test co-op <noreply@coop.test>\"\n",
        sink.addr()
    );
    let cluster = TestCluster::start_with(bin(), 1, move |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.env = env.clone();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n\
             [billing]\nmeter_period = \"{PERIOD}s\"\nmeter_interval = \"100ms\"\n{smtp}"
        );
    });
    let agent = &cluster.agents[0];
    let base = format!("http://{}", agent.api_addr());
    open_the_coop(agent, &base);
    let browser = Browser::start(1100, 900);

    sign_up_and_get_approved(&browser, &sink, &base);
    let (id, ip) = create_the_vm(&browser, &base);
    fix_the_network(&browser, &base, &id, &ip);
    point_the_domain(&browser, agent, &base, &ip);
    let invoice = month_end(agent, &mut clock, &id);
    invoice_delivered(&browser, &sink, &base, &invoice);
}
