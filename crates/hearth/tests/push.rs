//! `[dns.push]` against a real Knot primary that each test starts: the Raft leader publishes
//! the healthy instances, node names and static records with TSIG-signed RFC 2136 UPDATEs; a
//! killed node's instance leaves the primary; a wrong key is refused and counted; bad push
//! configs exit 2 naming the key. Knot is asked with real `dig`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_testkit::{TempDir, TestAgent, TestCluster, ZONE, dig_short, eventually, random_secret};

const DEADLINE: Duration = Duration::from_secs(60);
const KEY_NAME: &str = "hearth-push.";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// A Knot DNS primary for `ZONE` on its own loopback address, accepting updates signed with
/// one TSIG key; killed by PID when dropped, even when the test fails.
struct Knot {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Knot {
    fn start(key_secret: &str) -> Knot {
        let dir = TempDir::new("knot");
        let addr = free_addr();
        let config = knot_config(dir.path(), addr, key_secret);
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        std::fs::write(dir.path().join("knot.conf"), config).unwrap();
        let zone_file = format!(
            "$ORIGIN {ZONE}\n$TTL 60\n@ SOA ns.example. hostmaster.example. 1 3600 600 1209600 60\n@ NS ns.example.\n"
        );
        std::fs::write(dir.path().join("storage").join("coop.test.zone"), zone_file).unwrap();
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
        eventually("knot to serve the zone", DEADLINE, || {
            if let Ok(Some(status)) = knot.child.try_wait() {
                panic!("knotd exited with {status}: {}", knot.log());
            }
            match dig_short(knot.addr, ZONE, "SOA")?.as_slice() {
                [soa] if soa.starts_with("ns.example.") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        knot
    }

    /// `dig +short` against Knot.
    fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>, String> {
        dig_short(self.addr, name, rtype)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }

    /// Waits until Knot answers `name` `rtype` with exactly `want` (sorted).
    fn wait_for(&self, name: &str, rtype: &str, want: &[String]) {
        eventually(
            &format!("knot: {name} {rtype} = {want:?}"),
            DEADLINE,
            || {
                let got = self.dig(name, rtype)?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        );
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

fn knot_config(dir: &Path, addr: SocketAddr, key_secret: &str) -> String {
    let dir = dir.display();
    format!(
        r#"server:
    rundir: "{dir}/run"
    listen: {ip}@{port}

database:
    storage: "{dir}/storage"

log:
  - target: stderr
    any: info

key:
  - id: {KEY_NAME}
    algorithm: hmac-sha256
    secret: {key_secret}

acl:
  - id: hearth-update
    key: {KEY_NAME}
    action: update

zone:
  - domain: {ZONE}
    storage: "{dir}/storage"
    file: "coop.test.zone"
    acl: hearth-update
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// `knotd`, which lives in /usr/sbin, outside many users' PATH.
fn knotd() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"]);
    let found = dirs
        .map(|dir| Path::new(dir).join("knotd"))
        .find(|p| p.exists());
    found.expect("knotd not found: install the `knot` package (scripts/test.sh does)")
}

/// A free TCP port on a loopback address of its own, for Knot's UDP and TCP.
fn free_addr() -> SocketAddr {
    let ip = Ipv4Addr::new(
        127,
        rand::random_range(1..=250),
        rand::random_range(1..=250),
        253,
    );
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback address");
    listener.local_addr().unwrap()
}

/// The `[dns.push]` table for `knot` with the key in `key_file`.
fn push_config(knot: &Knot, key_file: &Path) -> String {
    format!(
        "\n[dns.push]\nserver   = \"{}\"\nkey_name = \"{KEY_NAME}\"\nkey_file = \"{}\"\n",
        knot.addr,
        key_file.display()
    )
}

fn write_key(knot: &Knot, secret: &str) -> PathBuf {
    let path = knot.dir.path().join("hearth-push.key");
    hearth_testkit::write_private(&path, &format!("{secret}\n"));
    path
}

fn metric(agent: &TestAgent, series: &str) -> Result<u64, String> {
    let (_, text) = agent.http_get("/metrics", false)?;
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{series} ")));
    let value = line.and_then(|line| line.split_whitespace().nth(1));
    value
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("no {series} in {text}"))
}

fn leader(cluster: &TestCluster) -> usize {
    let name = eventually("a Raft leader", DEADLINE, || {
        let state = cluster.agents[0].state()?;
        match state["leader"].as_str() {
            Some(leader) if !leader.is_empty() => Ok(leader.to_owned()),
            _ => Err(state.to_string()),
        }
    });
    let position = cluster.agents.iter().position(|a| a.spec.name == name);
    position.expect("the leader is one of ours")
}

fn put_record(agent: &TestAgent, name: &str, ip: &str) {
    let body =
        format!(r#"{{"records":{{"name":"{name}","values":[{{"type":"A","address":"{ip}"}}]}}}}"#);
    eventually("the record written", DEADLINE, || {
        match agent.http_send("PUT", "/v1/records", &body)? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    });
}

fn service_ip(idx: usize) -> String {
    format!("10.9.0.{}", idx + 1)
}

#[test]
fn the_leader_publishes_to_knot_and_a_killed_nodes_instance_leaves() {
    let secret = random_secret();
    let knot = Knot::start(&secret);
    let key_file = write_key(&knot, &secret);
    let push = push_config(&knot, &key_file);
    let mut cluster = TestCluster::start(bin(), 3, |idx| {
        format!(
            "\n[state]\nbootstrap_expect = 3\n{push}\n[[service]]\nname = \"www\"\naddress = \"{}\"\n",
            service_ip(idx)
        )
    });
    let www = format!("www.{ZONE}");
    let all: Vec<String> = (0..3).map(service_ip).collect();
    knot.wait_for(&www, "A", &all);
    let n2_ip = cluster.agents[1].spec.ip.to_string();
    knot.wait_for(&format!("n2.{ZONE}"), "A", &[n2_ip]);

    put_record(&cluster.agents[1], "mail", "192.0.2.25");
    knot.wait_for(&format!("mail.{ZONE}"), "A", &["192.0.2.25".into()]);

    // Kill the leader, the one pushing: the next leader resyncs without its instance.
    let killed = leader(&cluster);
    let pushed = metric(&cluster.agents[killed], "hearth_dns_push_updates_total").unwrap();
    assert!(pushed >= 1, "the leader pushed {pushed} updates");
    cluster.agents[killed].kill9();
    let rest: Vec<String> = (0..3).filter(|&i| i != killed).map(service_ip).collect();
    knot.wait_for(&www, "A", &rest);
    knot.wait_for(&format!("mail.{ZONE}"), "A", &["192.0.2.25".into()]);
    // Nothing failed on the way, and the key never reached a log.
    for (idx, agent) in cluster.agents.iter().enumerate() {
        let log = std::fs::read_to_string(agent.log_path()).unwrap();
        assert!(
            !log.contains(&secret),
            "{} logged the TSIG secret",
            agent.spec.name
        );
        if idx != killed {
            assert_eq!(metric(agent, "hearth_dns_push_failures_total"), Ok(0));
        }
    }
}

#[test]
fn a_wrong_key_is_refused_by_knot_and_counted() {
    let knot = Knot::start(&random_secret());
    let wrong = random_secret();
    let key_file = write_key(&knot, &wrong);
    let push = push_config(&knot, &key_file);
    let cluster = TestCluster::start(bin(), 1, |_| {
        format!("{push}\n[[service]]\nname = \"www\"\n")
    });
    let agent = &cluster.agents[0];
    eventually("a counted push failure", DEADLINE, || {
        match metric(agent, "hearth_dns_push_failures_total")? {
            0 => Err("no failure yet".into()),
            _ => Ok(()),
        }
    });
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(log.contains("NOTAUTH (BADSIG)"), "{log}");
    assert!(!log.contains(&wrong), "the TSIG secret reached the log");
    assert_eq!(metric(agent, "hearth_dns_push_updates_total"), Ok(0));
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), Ok(vec![]));
}

#[test]
fn bad_push_configs_exit_2_naming_the_key() {
    let dir = TempDir::new("push-config");
    let secret = random_secret();
    let key_file = dir.path().join("key");
    let not_base64 = "this is not base64 but a secret all the same";
    hearth_testkit::write_private(&key_file, not_base64);
    let base = format!(
        "node_name = \"n1\"\ncluster = \"c\"\nsecret = \"{secret}\"\ngossip_addr = \"127.0.0.1:0\"\n"
    );
    let push = |body: &str| format!("{base}[dns.push]\n{body}");
    let good_key = dir.path().join("good-key");
    hearth_testkit::write_private(&good_key, &random_secret());
    let key = |path: &Path| format!("key_name = \"k\"\nkey_file = \"{}\"\n", path.display());
    let cases = [
        (
            push(&format!("server = \"nowhere\"\n{}", key(&good_key))),
            vec!["dns.push.server", "nowhere"],
        ),
        (
            push(&format!("server = \"127.0.0.1\"\n{}", key(&key_file))),
            vec!["dns.push.key_file", "base64"],
        ),
        (
            push(&format!(
                "server = \"127.0.0.1\"\n{}",
                key(Path::new("/nonexistent/key"))
            )),
            vec!["dns.push.key_file", "cannot read", "/nonexistent/key"],
        ),
        (
            push(&format!(
                "server = \"127.0.0.1\"\nalgorithm = \"hmac-md5\"\n{}",
                key(&good_key)
            )),
            vec!["dns.push.algorithm", "hmac-md5"],
        ),
        (
            push(&format!(
                "server = \"127.0.0.1\"\ncolour = \"blue\"\n{}",
                key(&good_key)
            )),
            vec!["colour"],
        ),
        (push("server = \"127.0.0.1\"\n"), vec!["key_name"]),
    ];
    for (text, needles) in cases {
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, &text).unwrap();
        let output = Command::new(bin())
            .args(["agent", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}\nstderr: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
        }
        assert!(
            !stderr.contains(not_base64),
            "the key file's content was printed"
        );
    }
}
