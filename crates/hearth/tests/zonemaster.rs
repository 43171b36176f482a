//! What registries run before they accept a delegation: Zonemaster (Debian's
//! `zonemaster-cli`), against three hearth servers in network namespaces, delegated from a
//! root zone that Knot serves beside them. It must find nothing wrong but what the test
//! network itself causes (private addresses, no reverse names).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::{TempDir, TestAgent, eventually, lab_spec, random_secret};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

const DEADLINE: Duration = Duration::from_secs(60);

/// What the test network causes, never hearth: its addresses are private and have no
/// reverse names.
const NETWORK_ONLY: [&str; 2] = [
    "NAMESERVER_IP_PRIVATE_NETWORK",
    "NAMESERVER_IP_WITHOUT_REVERSE",
];

/// A process of the test's own, killed (by its PID) and reaped when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig +short` run inside namespace `ns`.
fn dig_in(ns: &str, server: std::net::Ipv4Addr, name: &str, rtype: &str) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "dig", &format!("@{server}")])
        .args([name, rtype, "+short", "+time=2", "+tries=1"])
        .output()
        .expect("dig (apt-get install dnsutils)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Knot serving, at `lab`'s node 3, a root zone that delegates the test zone to n1–n3.
fn root_server(lab: &NetnsLab, dir: &Path) -> Owned {
    let at = lab.data_ip(3);
    let mut zone = format!(
        "$TTL 3600\n. SOA root. hostmaster.root. 1 14400 3600 1209600 3600\n. NS root.\nroot. A {at}\n"
    );
    for idx in 0..3 {
        let ns = format!("n{}.{}", idx + 1, hearth_testkit::ZONE);
        zone.push_str(&format!(
            "{} NS {ns}\n{ns} A {}\n",
            hearth_testkit::ZONE,
            lab.data_ip(idx)
        ));
    }
    std::fs::write(dir.join("root.zone"), zone).unwrap();
    let config = format!(
        "server:\n    listen: {at}@53\n    rundir: {d}\ndatabase:\n    storage: {d}\nzone:\n  - domain: .\n    file: {d}/root.zone\n",
        d = dir.display()
    );
    std::fs::write(dir.join("knot.conf"), config).unwrap();
    let log = std::fs::File::create(dir.join("knot.log")).unwrap();
    // `ip netns exec` execs knotd in place: the PID is knotd's own.
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.netns(3), "knotd", "-c"])
        .arg(dir.join("knot.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .spawn()
        .expect("knotd (apt-get install knot)");
    Owned(child)
}

/// Zonemaster's findings at NOTICE and above, one `LEVEL TESTCASE TAG args` line each.
fn zonemaster(lab: &NetnsLab, hints: &Path) -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.netns(3), "zonemaster-cli"])
        .arg("--hints")
        .arg(hints)
        .args(["--no-ipv6", "--level", "INFO", "--show-testcase", "--raw"])
        .arg(hearth_testkit::ZONE.trim_end_matches('.'))
        .output()
        .expect("zonemaster-cli (apt-get install zonemaster-cli)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "zonemaster-cli: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Each finding: `SECONDS LEVEL TESTCASE TAG args`.
    text.lines()
        .filter_map(|line| line.trim().split_once(' ').map(|(_, rest)| rest.trim()))
        .map(|rest| rest.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn zonemaster_finds_nothing_but_the_test_networks_own_faults() {
    let lab = NetnsLab::new(4).expect("network namespaces (run as root)");
    let dir = TempDir::new("zonemaster");
    let secret = random_secret();
    let agents: Vec<TestAgent> = (0..3)
        .map(|idx| {
            let mut spec = lab_spec(
                &lab,
                idx,
                &secret,
                "zm",
                "[\"server\"]",
                "[state]\nbootstrap_expect = 3\n",
            );
            spec.dns_port = Some(53);
            TestAgent::start(bin(), dir.path(), spec)
        })
        .collect();
    let _root = root_server(&lab, dir.path());
    let hints = dir.path().join("hints");
    std::fs::write(
        &hints,
        format!(". 3600000 NS root.\nroot. 3600000 A {}\n", lab.data_ip(3)),
    )
    .unwrap();
    // The delegation answers, and every server sees all three.
    let ns3 = lab.netns(3);
    eventually("the root's referral", DEADLINE, || {
        match dig_in(&ns3, lab.data_ip(3), "root.", "A") {
            answer if !answer.is_empty() => Ok(()),
            _ => Err("no answer from the root".to_owned()),
        }
    });
    for agent in &agents {
        eventually("three name servers", DEADLINE, || {
            let ns = dig_in(&ns3, agent.spec.ip, hearth_testkit::ZONE, "NS");
            match ns.lines().count() {
                3 => Ok(()),
                _ => Err(ns),
            }
        });
    }

    // ... and serves the same zone (the same SOA, serial included).
    eventually("one SOA on all three", DEADLINE, || {
        let mut soas: Vec<String> = agents
            .iter()
            .map(|a| dig_in(&ns3, a.spec.ip, hearth_testkit::ZONE, "SOA"))
            .collect();
        soas.dedup();
        match soas.as_slice() {
            [one] if !one.is_empty() => Ok(()),
            _ => Err(format!("{soas:?}")),
        }
    });

    let findings = zonemaster(&lab, &hints);
    // It ran the consistency and name server tests (the SOA serial, EDNS, TCP, ...).
    for module in ["CONSISTENCY01", "NAMESERVER01", "ZONE02", "DELEGATION01"] {
        assert!(
            findings.iter().any(|f| f.split(' ').nth(1) == Some(module)),
            "{module} did not run: {findings:#?}"
        );
    }
    let faults: Vec<&String> = findings
        .iter()
        .filter(|f| matches!(f.split(' ').next(), Some("WARNING" | "ERROR" | "CRITICAL")))
        .filter(|f| {
            !NETWORK_ONLY
                .iter()
                .any(|tag| f.split(' ').nth(2) == Some(tag))
        })
        .collect();
    assert!(faults.is_empty(), "{faults:#?}");
}
