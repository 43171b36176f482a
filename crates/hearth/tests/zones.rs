//! Members' own DNS zones against a real agent, real `dig`, a real Knot and real headless
//! Chromium: a member claims `example.test`; until the claim is proven the agent REFUSES the
//! domain; Knot, standing for the member's current DNS host, serves the TXT challenge (and
//! the same records the member then puts in hearth), the agent checks it and answers for the
//! domain with its own SOA and the co-op's name servers; every answer is compared with
//! Knot's for the same records; a name follows a VM's address; other members can neither
//! see the zone nor claim inside it, and each keeps to the zone quota; the co-op's own zone
//! stays admins'. The panel's Domains pages do the same in a browser.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_testkit::{TempDir, TestAgent, TestCluster, dig_full, dig_short, eventually};

const DEADLINE: Duration = Duration::from_secs(30);
const DOMAIN: &str = "example.test";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// Knot serving `zone_text` as `DOMAIN` on `addr`; killed by PID when dropped.
struct Knot {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Knot {
    fn start(addr: SocketAddr, zone_text: &str) -> Knot {
        let dir = TempDir::new("knot-member");
        let base = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        let config = format!(
            "server:\n    rundir: \"{base}/run\"\n    listen: {ip}@{port}\n\ndatabase:\n    storage: \"{base}/storage\"\n\nlog:\n  - target: stderr\n    any: info\n\nzone:\n  - domain: {DOMAIN}\n    storage: \"{base}/storage\"\n    file: \"member.zone\"\n",
            ip = addr.ip(),
            port = addr.port()
        );
        std::fs::write(dir.path().join("knot.conf"), config).unwrap();
        std::fs::write(dir.path().join("storage/member.zone"), zone_text).unwrap();
        let log = std::fs::File::create(dir.path().join("knot.log")).unwrap();
        let child = Command::new(knotd())
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn knotd");
        let mut knot = Knot { child, addr, dir };
        eventually("knot to serve the member's zone", DEADLINE, || {
            if let Ok(Some(status)) = knot.child.try_wait() {
                panic!("knotd exited with {status}: {}", knot.log());
            }
            match dig_short(knot.addr, DOMAIN, "SOA")?.as_slice() {
                [_] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        knot
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- knot log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `knotd`, which lives in /usr/sbin, outside many users' PATH.
fn knotd() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"]);
    dirs.map(|dir| Path::new(dir).join("knotd"))
        .find(|p| p.exists())
        .expect("knotd not found: install the `knot` package (scripts/test.sh does)")
}

/// A free port on a loopback address of its own.
fn free_addr() -> SocketAddr {
    let ip = Ipv4Addr::new(
        127,
        rand::random_range(1..=250),
        rand::random_range(1..=250),
        252,
    );
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback address");
    listener.local_addr().unwrap()
}

/// Runs the CLI against `agent` with `token`: (exit code, stdout, stderr).
fn cli_as(agent: &TestAgent, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    agent.cli_as(token, args)
}

fn ok_as(agent: &TestAgent, token: &str, args: &[&str]) -> String {
    agent.cli_ok_as(token, args)
}

/// A member account and a token of theirs.
fn member(agent: &TestAgent, name: &str) -> String {
    agent.make_member(name)
}

fn status_of(agent: &TestAgent, name: &str, rtype: &str) -> String {
    let text = dig_full(agent.dns_addr(), &[name, rtype]);
    text.split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("none")
        .to_owned()
}

/// Mia's (fake) VM `web1` with an address from pool `lan`; its address.
fn mias_vm(agent: &TestAgent) -> String {
    agent.cli(&[
        "pool",
        "add",
        "lan",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
    ]);
    agent.add_fake_image("tiny");
    agent.cli(&[
        "vm",
        "create",
        "web1",
        "--image",
        "tiny",
        "--owner",
        "mia",
        "--memory-mib",
        "256",
        "--disk-gib",
        "1",
        "--pool",
        "lan",
    ]);
    eventually("web1's address", DEADLINE, || {
        let row = agent.api_json("/v1/vms/web1")?;
        row["ips"][0]["address"]
            .as_str()
            .map(str::to_owned)
            .ok_or(row.to_string())
    })
}

/// The records both Knot and hearth serve for the member's zone (relative names, as
/// `hearth zone set` takes them, and as a zone file writes them).
const RECORDS: &[(&str, &str, &str)] = &[
    ("www", "A", "192.0.2.7"),
    ("mail", "A", "192.0.2.8"),
    ("@", "MX", "10 mail.example.test."),
    ("@", "TXT", "v=spf1 mx -all"),
    ("@", "CAA", "0 issue letsencrypt.org"),
    ("_sip._tcp", "SRV", "10 5 5060 mail.example.test."),
    ("alias", "CNAME", "www.example.test."),
];

fn knot_zone(challenge: &str) -> String {
    let mut text = format!(
        "$ORIGIN {DOMAIN}.\n$TTL 300\n@ SOA ns.example.net. hostmaster.example.net. 1 3600 600 1209600 300\n@ NS ns.example.net.\n_hearth-challenge TXT \"{challenge}\"\n"
    );
    for (name, rtype, value) in RECORDS {
        let value = match *rtype {
            "TXT" => format!("\"{value}\""),
            "CAA" => {
                let (head, issuer) = value.rsplit_once(' ').unwrap();
                format!("{head} \"{issuer}\"")
            }
            _ => (*value).to_owned(),
        };
        text.push_str(&format!("{name} {rtype} {value}\n"));
    }
    text
}

#[test]
fn a_member_proves_a_domain_and_every_server_answers_for_it_as_knot_would() {
    let knot_addr = free_addr();
    let cluster = TestCluster::start_with(bin(), 1, move |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "verify_resolver = \"{knot_addr}\"\n[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n"
        );
    });
    let agent = &cluster.agents[0];
    eventually("the state formed", DEADLINE, || match agent.host_count() {
        Ok(1) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let mia = member(agent, "mia");
    let max = member(agent, "max");

    // Mia claims the domain: nobody answers for it yet.
    let out = ok_as(agent, &mia, &["zone", "add", DOMAIN]);
    let challenge = out
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("no challenge in {out}"))
        .to_owned();
    assert!(challenge.starts_with("hearth-verify="), "{out}");
    assert_eq!(status_of(agent, &format!("www.{DOMAIN}"), "A"), "REFUSED");
    let (code, _, stderr) = cli_as(agent, &mia, &["zone", "verify", DOMAIN]);
    assert_ne!(code, Some(0), "verified with no TXT record anywhere");
    assert!(stderr.contains("looking up"), "{stderr}");

    // Her records, put into hearth and, with the challenge, into her current host (Knot).
    for (name, rtype, value) in RECORDS {
        ok_as(agent, &mia, &["zone", "set", DOMAIN, name, rtype, value]);
    }
    let knot = Knot::start(knot_addr, &knot_zone(&challenge));
    ok_as(agent, &mia, &["zone", "verify", DOMAIN]);

    // The agent answers as Knot does for the same records.
    for (name, rtype, _) in RECORDS {
        let owner = match *name {
            "@" => DOMAIN.to_owned(),
            name => format!("{name}.{DOMAIN}"),
        };
        let want = dig_short(knot.addr, &owner, rtype).unwrap();
        assert!(!want.is_empty(), "knot has {owner} {rtype}");
        eventually(&format!("{owner} {rtype} as knot"), DEADLINE, || {
            let got = dig_short(agent.dns_addr(), &owner, rtype)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("hearth {got:?}, knot {want:?}"))
            }
        });
    }
    // Its own SOA, the co-op's name servers, NXDOMAIN with the SOA, REFUSED elsewhere.
    let soa = dig_short(agent.dns_addr(), DOMAIN, "SOA").unwrap();
    assert!(
        soa[0].starts_with("n1.coop.test. hostmaster.example.test."),
        "{soa:?}"
    );
    assert_eq!(
        dig_short(agent.dns_addr(), DOMAIN, "NS").unwrap(),
        ["n1.coop.test."]
    );
    let missing = dig_full(agent.dns_addr(), &[&format!("nosuch.{DOMAIN}"), "A"]);
    assert!(
        missing.contains("status: NXDOMAIN") && missing.contains("hostmaster.example.test."),
        "{missing}"
    );
    assert!(missing.contains("flags: qr aa"), "{missing}");
    assert_eq!(status_of(agent, "other.test", "A"), "REFUSED");

    // A name follows her VM's address; when the VM goes, the name holds nothing.
    let vm_ip = mias_vm(agent);
    ok_as(agent, &mia, &["zone", "follow", DOMAIN, "shop", "web1"]);
    eventually("shop follows web1", DEADLINE, || {
        match dig_short(agent.dns_addr(), &format!("shop.{DOMAIN}"), "A")? {
            got if got == [vm_ip.clone()] => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    let (code, _, stderr) = cli_as(agent, &max, &["zone", "follow", DOMAIN, "x", "web1"]);
    assert_ne!(code, Some(0), "max followed mia's VM");
    assert!(stderr.contains("no zone"), "{stderr}");

    // Others see nothing of it and cannot claim inside it; each keeps to the quota.
    let (code, listed, _) = cli_as(agent, &max, &["zone", "list", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(listed.trim(), "[]", "max sees mia's zone");
    let (_, _, stderr) = cli_as(agent, &max, &["zone", "add", &format!("shop.{DOMAIN}")]);
    assert!(stderr.contains("overlaps"), "{stderr}");
    let (_, _, stderr) = cli_as(agent, &max, &["zone", "add", "vm.coop.test"]);
    assert!(stderr.contains("co-op's own zone"), "{stderr}");
    for domain in ["a.test", "b.test", "c.test"] {
        ok_as(agent, &max, &["zone", "add", domain]);
    }
    let (_, _, stderr) = cli_as(agent, &max, &["zone", "add", "d.test"]);
    assert!(stderr.contains("over quota"), "{stderr}");
    // An unverified claim is never answered; an admin may approve one.
    assert_eq!(status_of(agent, "a.test", "SOA"), "REFUSED");
    let (code, _, stderr) = cli_as(agent, &max, &["zone", "verify", "a.test", "--approve"]);
    assert_ne!(code, Some(0), "a member approved their own claim: {stderr}");
    agent.cli(&["zone", "verify", "a.test", "--approve"]);
    eventually("a.test answered", DEADLINE, || {
        match status_of(agent, "a.test", "SOA").as_str() {
            "NOERROR" => Ok(()),
            other => Err(other.to_owned()),
        }
    });

    // Mia gives her domain up: it is refused again.
    ok_as(agent, &mia, &["zone", "rm", DOMAIN]);
    eventually("example.test refused again", DEADLINE, || match status_of(
        agent,
        &format!("www.{DOMAIN}"),
        "A",
    )
    .as_str()
    {
        "REFUSED" => Ok(()),
        other => Err(other.to_owned()),
    });
}

/// The panel's Domains pages in real headless Chromium: a member claims the domain, reads the
/// TXT record to put, checks it (refused until her current host, Knot, serves it), puts
/// record sets (a bad value is refused with the field named), makes a name follow her VM,
/// removes a set, and releases the domain; `dig` sees each change. Another member's browser
/// finds no such domain, and the co-op's zone cannot be claimed.
#[test]
fn a_member_manages_her_domain_in_the_panel_in_a_real_browser() {
    use hearth_testkit::webdriver::Browser;
    let knot_addr = free_addr();
    let cluster = TestCluster::start_with(bin(), 1, move |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "verify_resolver = \"{knot_addr}\"\n[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n"
        );
    });
    let agent = &cluster.agents[0];
    eventually("the state formed", DEADLINE, || match agent.host_count() {
        Ok(1) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    member(agent, "mia");
    member(agent, "max");
    let vm_ip = mias_vm(agent);

    let base = format!("http://{}", agent.api_addr());
    let browser = Browser::start(1000, 900);
    let login = |name: &str| {
        browser.delete_cookies();
        browser.goto(&format!("{base}/login"));
        browser.fill("#name", name);
        browser.fill("#password", &format!("{name}'s long password"));
        browser.click("#login");
    };
    let flash = || browser.text("#flash").unwrap_or_default();
    login("mia");
    browser.click("nav a[href=\"/panel/zones\"]");
    browser.fill("#apex", "vm.coop.test");
    browser.click("#claim-zone");
    assert!(flash().contains("co-op's own zone"), "{}", flash());
    browser.fill("#apex", DOMAIN);
    browser.click("#claim-zone");
    assert!(browser.url().ends_with(&format!("/panel/zones/{DOMAIN}")));
    let shown = browser.text("#challenge").unwrap();
    let challenge = shown
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("no challenge in {shown}"))
        .to_owned();
    assert!(
        shown.starts_with(&format!("_hearth-challenge.{DOMAIN}. TXT")),
        "{shown}"
    );
    assert!(browser.find("#approve").is_err(), "a member may approve");
    browser.click("#verify");
    assert!(flash().contains("looking up"), "{}", flash());
    assert_eq!(status_of(agent, DOMAIN, "SOA"), "REFUSED");
    let _knot = Knot::start(knot_addr, &knot_zone(&challenge));
    browser.click("#verify");
    assert!(flash().contains("verified"), "{}", flash());
    assert!(browser.find("#challenge").is_err());

    // Record sets through the form; a bad value is refused, naming what is wrong.
    let put = |name: &str, rtype: &str, values: &str| {
        browser.fill("#set-name", name);
        browser.select("#set-type", rtype);
        browser.fill("#set-values", values);
        browser.click("#put-record");
        flash()
    };
    let said = put("www", "A", "192.0.2.7\n192.0.2.9");
    assert!(said.contains("saved"), "{said}");
    let said = put("@", "MX", "ten mail.example.test.");
    assert!(said.contains("preference"), "{said}");
    let said = put("@", "MX", "10 mail.example.test.");
    assert!(said.contains("saved"), "{said}");
    let said = put("@", "CNAME", "www.example.test.");
    assert!(said.contains("apex"), "{said}");
    eventually("www answered", DEADLINE, || {
        match dig_short(agent.dns_addr(), &format!("www.{DOMAIN}"), "A")? {
            got if got == ["192.0.2.7", "192.0.2.9"] => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    assert_eq!(
        dig_short(agent.dns_addr(), DOMAIN, "MX").unwrap(),
        ["10 mail.example.test."]
    );

    // A name follows her VM.
    browser.fill("#follow-name", "shop");
    browser.select("#follow-vm", "web1");
    browser.click("#follow-vm-button");
    assert!(flash().contains("shop follows web1"), "{}", flash());
    eventually("shop follows web1", DEADLINE, || {
        match dig_short(agent.dns_addr(), &format!("shop.{DOMAIN}"), "A")? {
            got if got == [vm_ip.clone()] => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    assert!(
        browser
            .text("#records")
            .unwrap()
            .contains("follows VM web1")
    );

    // A set removed by its button is gone from the answers.
    browser.click("button[data-name=\"www\"][data-rtype=\"A\"]");
    assert!(flash().contains("www A removed"), "{}", flash());
    eventually("www gone", DEADLINE, || {
        match status_of(agent, &format!("www.{DOMAIN}"), "A").as_str() {
            "NXDOMAIN" => Ok(()),
            other => Err(other.to_owned()),
        }
    });

    // Max finds no such domain, and cannot claim inside Mia's.
    login("max");
    browser.goto(&format!("{base}/panel/zones/{DOMAIN}"));
    assert!(browser.find("#records").is_err() && browser.find("#proof").is_err());
    assert!(browser.text("body").unwrap().contains("No such domain"));
    browser.goto(&format!("{base}/panel/zones"));
    assert!(browser.find("#zones").is_err(), "max sees a domain list");
    browser.fill("#apex", &format!("shop.{DOMAIN}"));
    browser.click("#claim-zone");
    assert!(flash().contains("overlaps"), "{}", flash());

    // Mia releases it: refused again.
    login("mia");
    browser.goto(&format!("{base}/panel/zones/{DOMAIN}"));
    browser.click(&format!(
        "form[action=\"/panel/zones/{DOMAIN}/delete\"] button"
    ));
    assert!(flash().contains("released"), "{}", flash());
    eventually("refused again", DEADLINE, || {
        match status_of(agent, DOMAIN, "SOA").as_str() {
            "REFUSED" => Ok(()),
            other => Err(other.to_owned()),
        }
    });
}
