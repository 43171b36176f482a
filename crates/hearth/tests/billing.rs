//! Metering and invoices with a real agent and a real QEMU guest: the worker records each
//! VM's use per period (2 s here, an hour by default), every period exactly once across an
//! agent killed and restarted; a stopped VM pays for disk and address only; the open
//! invoice matches the usage rows to the cent at the plan's prices; a month that has not
//! ended cannot close; credits go on the invoice; a CSV export lists every line.

use std::collections::BTreeMap;
use std::path::Path;

use hearth_testkit::vms::{BOOT, create_tiny, wait_for_hosts, wait_phase};
use hearth_testkit::{TestCluster, eventually};
use hearth_types::invoice::{Invoice, Resource, month_bounds, month_of};
use hearth_types::metering::UsageRow;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

const PERIOD: u32 = 2;

fn usage(agent: &hearth_testkit::TestAgent) -> Result<Vec<UsageRow>, String> {
    let value = agent.api_json("/v1/usage?member=alice")?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The rows of VM `id` by period start; panics on two rows of one period from one host.
fn by_period(rows: &[UsageRow], id: &str) -> BTreeMap<u64, UsageRow> {
    let mut out = BTreeMap::new();
    for row in rows.iter().filter(|r| r.vm == id) {
        assert!(
            out.insert(row.start_s, row.clone()).is_none(),
            "period {} twice: {rows:?}",
            row.start_s
        );
    }
    out
}

/// Panics unless `starts` (period starts, in order) has every period from its first to its
/// last.
fn assert_every_period<'a>(vm: &str, starts: impl Iterator<Item = &'a u64>) {
    let starts: Vec<u64> = starts.copied().collect();
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            u64::from(PERIOD),
            "{vm}: a period missing: {starts:?}"
        );
    }
}

/// Waits for `count` more rows of VM `id` that say it was `running` all period.
fn wait_rows(agent: &hearth_testkit::TestAgent, id: &str, running: bool, count: usize) {
    let then = by_period(&usage(agent).unwrap(), id).len();
    eventually(
        &format!("{count} more whole periods, running {running}"),
        BOOT,
        || {
            let rows = by_period(&usage(agent)?, id);
            let whole = rows
                .values()
                .skip(then)
                .filter(|r| r.seen_s == PERIOD && (r.running_s == PERIOD) == running)
                .count();
            if whole >= count {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
}

#[test]
fn usage_is_metered_once_per_period_and_the_invoice_matches_it_to_the_cent() {
    let mut cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n\
             [billing]\nmeter_period = \"{PERIOD}s\"\nmeter_interval = \"100ms\"\n"
        );
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    agent.add_test_guest(&hearth_testkit::test_guest());
    // 36.00 per vCPU-hour is a cent per vCPU-second; 144.00 per GiB-hour is a cent per
    // second for 256 MiB. Disk and address prices are per month: large, so that seconds of
    // them come to cents.
    agent.cli(&[
        "plan",
        "set",
        "basic",
        "--currency",
        "EUR",
        "--price-vcpu-hour",
        "36.00",
        "--price-gib-ram-hour",
        "144.00",
        "--price-gib-disk-month",
        "3000000.00",
        "--price-address-month",
        "2000000.00",
    ]);
    agent.ensure_account("alice");
    agent.cli(&["plan", "assign", "alice", "--plan", "basic"]);
    create_tiny(agent, "web", &["--vcpus", "1"]);
    let id = wait_phase(agent, "web", "running")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_rows(agent, &id, true, 2);

    // The agent killed and started again (QEMU runs on): no period lost or counted twice.
    let killed = unix_s();
    cluster.agents[0].kill9();
    cluster.agents[0].restart();
    let agent = &cluster.agents[0];
    wait_rows(agent, &id, true, 3);
    let back = unix_s();

    // Stopped, it pays for its disk and address only.
    let stopping = unix_s();
    agent.cli(&["vm", "stop", "web"]);
    wait_phase(agent, "web", "stopped");
    let stopped = unix_s();
    wait_rows(agent, &id, false, 2);

    let rows = usage(agent).unwrap();
    let periods = by_period(&rows, &id);
    // Every period from the first to the last is there, and all but the first (which began
    // at the VM's first sample) and the last two (which may be cut by the reads) are whole.
    assert_every_period(&id, periods.keys());
    // Whole periods run all through before the stop, and not at all after it. (Around the
    // restart, the looks before the host loop found its QEMU again may count as not running.)
    let period = u64::from(PERIOD);
    let near_restart =
        |row: &UsageRow| row.start_s + period + 2 * period > killed && row.start_s < back;
    for row in periods
        .values()
        .skip(1)
        .take(periods.len().saturating_sub(3))
    {
        assert_eq!(row.seen_s, PERIOD, "{row:?}");
        if row.start_s + period <= stopping && !near_restart(row) {
            assert_eq!(row.running_s, PERIOD, "{row:?}");
        } else if row.start_s >= stopped {
            assert_eq!(row.running_s, 0, "{row:?}");
        }
    }

    // The open invoice: each line from the rows, at the plan's prices, exact to the cent.
    let month = month_of(periods.keys().next().copied().unwrap());
    let invoice: Invoice = serde_json::from_str(&agent.cli(&[
        "invoice", "show", "--member", "alice", "--month", &month, "--json",
    ]))
    .unwrap();
    // Only rows written so far count: read them again with the invoice.
    let rows = usage(agent).unwrap();
    let periods = by_period(&rows, &id);
    let running: i128 = periods.values().map(|r| i128::from(r.running_s)).sum();
    let seen: i128 = periods.values().map(|r| i128::from(r.seen_s)).sum();
    let line = |resource| {
        invoice
            .lines
            .iter()
            .find(|l| l.vm_id == id && l.resource == resource)
            .map(|l| l.amount.micros() / 10_000)
    };
    let (start, end) = month_bounds(&month).unwrap();
    let month_s = i128::from(end - start);
    let rounded =
        |numerator: i128, denominator: i128| (2 * numerator + denominator) / (2 * denominator);
    if invoice
        .lines
        .iter()
        .any(|l| l.vm_id == id && l.resource == Resource::VcpuHours)
    {
        assert_eq!(
            line(Resource::VcpuHours),
            Some(running),
            "{invoice:?} {rows:?}"
        );
        assert_eq!(line(Resource::RamGibHours), Some(running), "{invoice:?}");
    }
    // 3 000 000.00 per GiB-month for 1 GiB, 2 000 000.00 per address-month, in cents.
    let disk = rounded(300_000_000 * seen, month_s);
    assert!(disk > 0);
    assert_eq!(line(Resource::DiskGibMonths), Some(disk), "{invoice:?}");
    assert_eq!(
        line(Resource::AddressMonths),
        Some(rounded(200_000_000 * seen, month_s)),
        "{invoice:?}"
    );
    let sum: i128 = invoice.lines.iter().map(|l| l.amount.micros()).sum();
    assert_eq!(invoice.total.micros(), sum);
    assert_eq!(invoice.currency.as_deref(), Some("EUR"));

    // This month has not ended: it cannot close.
    let (code, _, err) = agent.cli_result(&["invoice", "close", "--month", &month]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has not ended yet"), "{err}");

    // A credit is a line of its own, and the CSV export has every line and a total.
    agent.cli(&[
        "invoice",
        "credit",
        "--member",
        "alice",
        "--amount",
        "1.25",
        "--reason",
        "outage, sorry",
    ]);
    let csv = agent.cli(&["invoice", "list", "--member", "alice", "--csv"]);
    assert!(csv.starts_with("member,month,status,currency,vm,"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains(",credit,1.00,-1.25,-1.25,\"outage, sorry\"")),
        "{csv}"
    );
    assert!(csv.lines().any(|l| l.contains(",total,")), "{csv}");
    let (code, _, err) = agent.cli_result(&[
        "invoice", "credit", "--member", "alice", "--amount", "0.001", "--reason", "x",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("amount:"), "{err}");
}

/// Unix seconds now.
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A metric's value on `agent`'s `/metrics`.
fn metric(agent: &hearth_testkit::TestAgent, name: &str) -> u64 {
    agent.metric(name)
}

/// Every VM's rows, by VM id, then period start, then host.
fn all_rows(
    agent: &hearth_testkit::TestAgent,
) -> Result<BTreeMap<String, BTreeMap<u64, Vec<UsageRow>>>, String> {
    let rows: Vec<UsageRow> =
        serde_json::from_value(agent.api_json("/v1/usage")?).map_err(|e| e.to_string())?;
    let mut out: BTreeMap<String, BTreeMap<u64, Vec<UsageRow>>> = BTreeMap::new();
    for row in rows {
        out.entry(row.vm.clone())
            .or_default()
            .entry(row.start_s)
            .or_default()
            .push(row);
    }
    Ok(out)
}

/// Three server+worker agents in namespaces, VMs on the fake driver: the Raft leader killed
/// and started again, then a worker cut off from the others for several periods. Its rows
/// wait in its meter file while it cannot reach a quorum and are written once it can; every
/// VM's periods are there, each whole, each from one host, none twice.
#[test]
fn a_leader_kill_and_a_cut_off_worker_neither_drop_nor_double_a_period() {
    let lab = hearth_testkit::netns::NetnsLab::new(3).expect("network namespaces (run as root)");
    let root = hearth_testkit::TempDir::new("metering");
    let mut agents = hearth_testkit::start_in_lab(
        bin(),
        root.path(),
        &lab,
        "test",
        "[\"server\", \"worker\"]",
        &format!(
            "[state]\nbootstrap_expect = 3\n[compute]\ndriver = \"fake\"\nvcpus = 8\nmemory_mib = 8192\ndisk_gib = 100\n\
             [billing]\nmeter_period = \"{PERIOD}s\"\nmeter_interval = \"100ms\"\n"
        ),
    );
    wait_for_hosts(&agents[0], 3);
    agents[0].add_fake_image("fake");
    for name in ["a", "b", "c", "d"] {
        hearth_testkit::vms::create_with(&agents[0], name, "fake", &[]);
    }
    let wait_whole = |agents: &[hearth_testkit::TestAgent], at: usize, what: &str, after: u64| {
        eventually(what, BOOT, || {
            let rows = all_rows(&agents[at])?;
            let done = rows.len() == 4
                && rows.values().all(|periods| {
                    periods
                        .iter()
                        .filter(|(start, rows)| **start > after && rows[0].seen_s == PERIOD)
                        .count()
                        >= 2
                });
            if done {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        });
    };
    wait_whole(&agents, 0, "two whole periods of each VM", 0);

    // The leader killed, and started again after a new one took over.
    let leader = eventually("a leader", BOOT, || {
        let state = agents[0].state()?;
        let name = state["leader"].as_str().unwrap_or_default().to_owned();
        agents
            .iter()
            .position(|a| a.spec.name == name)
            .ok_or(format!("{state}"))
    });
    agents[leader].kill9();
    let other = (leader + 1) % 3;
    eventually("a new leader", BOOT, || {
        let state = agents[other].state()?;
        match state["leader"].as_str() {
            Some(name) if !name.is_empty() && name != agents[leader].spec.name => Ok(()),
            _ => Err(state.to_string()),
        }
    });
    agents[leader].restart();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    wait_whole(
        &agents,
        other,
        "two whole periods of each VM after the restart",
        now(),
    );

    // A worker cut off: its rows wait, then are written.
    let cut = (leader + 2) % 3;
    lab.cut(cut);
    eventually("rows waiting on the cut-off worker", BOOT, || match metric(
        &agents[cut],
        "hearth_usage_rows_waiting",
    ) {
        n if n >= 2 => Ok(()),
        n => Err(format!("{n} waiting")),
    });
    lab.heal(cut);
    eventually("the cut-off worker's rows written", BOOT, || {
        match metric(&agents[cut], "hearth_usage_rows_waiting") {
            0 => Ok(()),
            n => Err(format!("{n} waiting")),
        }
    });
    wait_whole(
        &agents,
        other,
        "two whole periods of each VM after healing",
        now(),
    );

    let rows = all_rows(&agents[other]).unwrap();
    for (vm, periods) in &rows {
        assert_every_period(vm, periods.keys());
        // All whole but the first (from the VM's first sample) and the last (still filling
        // when the others were read).
        for (start, rows) in periods.iter().skip(1).take(periods.len().saturating_sub(2)) {
            assert_eq!(rows.len(), 1, "{vm} at {start}: {rows:?}");
            assert_eq!(rows[0].seen_s, PERIOD, "{vm} at {start}: {rows:?}");
        }
    }
    assert!(metric(&agents[cut], "hearth_usage_write_failures_total") > 0);
}

/// A credit of 2.50 for alice ("goodwill"), and last month closed, so that she has a closed
/// invoice; the time now and last month.
fn credit_and_close_last_month(agent: &hearth_testkit::TestAgent) -> (u64, String) {
    agent.cli(&[
        "invoice", "credit", "--member", "alice", "--amount", "2.50", "--reason", "goodwill",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last_month = hearth_types::invoice::months_before(&month_of(now), 1);
    agent.cli(&["invoice", "close", "--month", &last_month]);
    (now, last_month)
}

/// One request the test's webhook receiver got: its head and body.
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A receiver on loopback that answers 500 to the first request and 200 to the others.
fn receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = n.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut log = log.lock().unwrap();
            let status = if log.is_empty() { "500 Oops" } else { "200 OK" };
            log.push(Received { head, body });
            let _ = (&stream).write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, got)
}

/// The README's receiver-side check of a webhook's signature (its `python` block), run by
/// Python's standard library on what the receiver got: whether it accepts it.
fn readme_check_accepts(secret: &str, signature: &str, body: &[u8]) -> bool {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("```python\n").expect("README: a python block") + 10;
    let block: String = readme[start..]
        .split("```")
        .next()
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", l.trim_start_matches("  ")))
        .collect();
    let script = format!(
        "import sys\nsecret = sys.argv[1].encode()\nsignature = sys.argv[2]\nbody = sys.stdin.buffer.read()\n{block}print(good)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script, secret, signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        said == "True" || said == "False",
        "the README's check printed `{said}`"
    );
    said == "True"
}

/// A closed month's invoice is POSTed to the webhook, signed; a failed attempt is retried;
/// the invoice never changes after its month closed; an admin can send it again.
#[test]
fn a_closed_invoice_goes_to_the_webhook_signed_and_retried_and_stays_as_it_was() {
    let (port, got) = receiver();
    let root = hearth_testkit::TempDir::new("webhook");
    let secret = "a-webhook-secret-of-some-length";
    let secret_file = root.path().join("webhook.secret");
    hearth_testkit::write_private(&secret_file, &format!("{secret}\n"));
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\n[billing]\nwebhook_url = \"http://127.0.0.1:{port}/hooks/invoices\"\nwebhook_secret_file = \"{}\"\n",
            secret_file.display()
        );
    });
    let agent = &cluster.agents[0];
    // Once the worker has registered, the group takes writes.
    wait_for_hosts(agent, 1);
    agent.ensure_account("alice");
    let (_, last_month) = credit_and_close_last_month(agent);

    eventually("the invoice delivered on the second attempt", BOOT, || {
        let rows: serde_json::Value =
            serde_json::from_str(&agent.cli(&["invoice", "deliveries", "--json"])).unwrap();
        let delivery = &rows[0]["delivery"];
        if delivery["delivered"] == true {
            Ok(rows)
        } else {
            Err(rows.to_string())
        }
    });
    let rows: serde_json::Value =
        serde_json::from_str(&agent.cli(&["invoice", "deliveries", "--json"])).unwrap();
    assert_eq!(rows[0]["delivery"]["attempts"], 2, "{rows}");
    assert_eq!(rows[0]["member"], "alice");
    let received = got.lock().unwrap();
    assert_eq!(received.len(), 2);
    let last = &received[1];
    assert!(
        last.head.starts_with("POST /hooks/invoices HTTP/1.1\r\n"),
        "{}",
        last.head
    );
    assert!(
        last.head
            .contains(&format!("X-Hearth-Delivery: {last_month}/alice\r\n")),
        "{}",
        last.head
    );
    let signature = last
        .head
        .lines()
        .find_map(|l| l.strip_prefix("X-Hearth-Signature: "))
        .expect("a signature");
    assert!(
        signature.starts_with("t=") && signature.contains(",v1="),
        "{signature}"
    );
    assert!(readme_check_accepts(secret, signature, &last.body));
    // The same check refuses another secret and a changed body.
    assert!(!readme_check_accepts(
        "another-secret-entirely",
        signature,
        &last.body
    ));
    let mut changed = last.body.clone();
    changed.push(b' ');
    assert!(!readme_check_accepts(secret, signature, &changed));
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["event"], "invoice.closed");
    assert_eq!(body["invoice"]["member"], "alice");
    assert_eq!(body["invoice"]["month"], last_month.as_str());
    assert_eq!(body["invoice"]["total"], "-2.50");
    drop(received);

    // Closed means final: a later credit goes on this month's open invoice instead.
    agent.cli(&[
        "invoice", "credit", "--member", "alice", "--amount", "1.00", "--reason", "later",
    ]);
    let closed: Invoice = serde_json::from_str(&agent.cli(&[
        "invoice",
        "show",
        "--member",
        "alice",
        "--month",
        &last_month,
        "--json",
    ]))
    .unwrap();
    assert_eq!(closed.total.to_string(), "-2.50");
    let open: Invoice =
        serde_json::from_str(&agent.cli(&["invoice", "show", "--member", "alice", "--json"]))
            .unwrap();
    assert_eq!(open.total.to_string(), "-1.00");

    // The tables say the same.
    let list = agent.cli(&[
        "invoice",
        "list",
        "--member",
        "alice",
        "--month",
        &last_month,
    ]);
    assert!(list.contains("closed") && list.contains("-2.50"), "{list}");
    let show = agent.cli(&[
        "invoice",
        "show",
        "--member",
        "alice",
        "--month",
        &last_month,
    ]);
    assert!(
        show.contains("goodwill") && show.contains("total -2.50"),
        "{show}"
    );
    let deliveries = agent.cli(&["invoice", "deliveries"]);
    let row = deliveries
        .lines()
        .find(|l| l.contains("alice"))
        .unwrap_or_default();
    assert!(row.contains("yes"), "{deliveries}");

    // Sent again when an admin asks.
    agent.cli(&[
        "invoice",
        "redeliver",
        "--month",
        &last_month,
        "--member",
        "alice",
    ]);
    eventually("a third request", BOOT, || {
        match got.lock().unwrap().len() {
            3 => Ok(()),
            n => Err(format!("{n} requests")),
        }
    });
}

/// In real Chromium: a member sees their usage so far and their closed invoice, and not the
/// admins' billing page; an admin sees every member's invoices of a month and downloads
/// them as CSV.
#[test]
fn a_member_sees_usage_and_invoices_and_an_admin_exports_them_in_a_real_browser() {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\n\
             [billing]\nmeter_period = \"{PERIOD}s\"\nmeter_interval = \"100ms\"\n"
        );
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    for (name, admin) in [("ann", true), ("alice", false)] {
        let file = agent.dir.join(format!("{name}.password"));
        std::fs::write(&file, format!("{name}'s long password")).unwrap();
        let mut args = vec![
            "account",
            "add",
            name,
            "--password-file",
            file.to_str().unwrap(),
        ];
        if admin {
            args.push("--admin");
        }
        agent.cli(&args);
    }
    agent.cli(&[
        "plan",
        "set",
        "default",
        "--currency",
        "EUR",
        "--price-gib-disk-month",
        "1000000.00",
    ]);
    agent.add_fake_image("fake");
    hearth_testkit::vms::create_with(agent, "web", "fake", &[]);
    let (now, last_month) = credit_and_close_last_month(agent);

    let base = format!("http://{}", agent.api_addr());
    let browser = hearth_testkit::webdriver::Browser::start(1000, 800);
    browser.goto(&format!("{base}/login"));
    browser.fill("#name", "alice");
    browser.fill("#password", "alice's long password");
    browser.click("#login");
    let text = browser.wait_for_text(&format!("{base}/panel/billing"), "disk-gib-months", BOOT);
    assert!(text.contains("web"), "{text}");
    let running = browser.text("#running").unwrap();
    assert!(running.contains("EUR"), "{running}");
    browser.click(&format!("a[href='/panel/billing/{last_month}']"));
    let invoice = browser.text("body").unwrap();
    assert!(invoice.contains("Closed: final."), "{invoice}");
    assert!(invoice.contains("goodwill"), "{invoice}");
    assert_eq!(browser.text("#total").unwrap(), "-2.50 EUR");
    browser.goto(&format!("{base}/admin/billing"));
    assert!(browser.text("body").unwrap().contains("Admins only"));

    browser.delete_cookies();
    browser.goto(&format!("{base}/login"));
    browser.fill("#name", "ann");
    browser.fill("#password", "ann's long password");
    browser.click("#login");
    browser.goto(&format!("{base}/admin/billing?month={last_month}"));
    let table = browser.text("#invoices").unwrap();
    assert!(
        table.contains("alice") && table.contains("closed"),
        "{table}"
    );
    // The export link, fetched with the admin's session as the browser would (the panel's
    // content policy lets no script fetch it).
    let href = browser
        .script("return document.querySelector('#csv').getAttribute('href')")
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(href, format!("/admin/billing.csv?month={last_month}"));
    let cookie = browser
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "hearth_session")
        .and_then(|c| c["value"].as_str().map(str::to_owned))
        .expect("a session cookie");
    let (status, body) = hearth_testkit::http_request(
        agent.api_addr(),
        &format!(
            "GET {href} HTTP/1.1\r\nHost: x\r\nCookie: hearth_session={cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let text = body.as_str();
    assert!(text.starts_with("member,month,status,"), "{text}");
    assert!(
        // A credit's month is the one it was given in.
        text.contains(&format!(
            "alice,{last_month},closed,EUR,,,{},credit,1.00,-2.50,-2.50,goodwill",
            month_of(now)
        )),
        "{text}"
    );
}
