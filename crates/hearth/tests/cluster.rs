//! Real multi-process clusters on loopback: convergence, failover in DNS after kill -9,
//! check failure and recovery, graceful leave, rejoin after restart, a wrong-secret node,
//! and garbage on the gossip and DNS ports. Queried with real `dig` and HTTP.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TestCluster, ZONE, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn www(zone_ip_last: &str) -> String {
    format!("[[service]]\nname = \"www\"\naddress = \"10.0.0.{zone_ip_last}\"\n")
}

fn www_name() -> String {
    format!("www.{ZONE}")
}

#[test]
fn three_agents_converge_and_kill9_leaves_dns() {
    let mut cluster = TestCluster::start(bin(), 3, |i| www(&(i + 1).to_string()));
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );
    let all = vec!["10.0.0.1".to_string(), "10.0.0.2".into(), "10.0.0.3".into()];
    for agent in &cluster.agents {
        eventually("all three instances in DNS", DEADLINE, || {
            let got = agent.dig(&www_name(), "A")?;
            if got == all {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
    // Servers that see the same cluster serve the same zone, under the same SOA serial.
    let serial = same_serial(&cluster.agents);
    // Node names answer with the node's address.
    let n2_ip = cluster.agents[1].spec.ip.to_string();
    assert_eq!(
        cluster.agents[0].dig(&format!("n2.{ZONE}"), "A").unwrap(),
        [n2_ip]
    );

    cluster.agents[2].kill9();
    for agent in &cluster.agents[..2] {
        eventually("the killed node's address gone from DNS", DEADLINE, || {
            let got = agent.dig(&www_name(), "A")?;
            if got == all[..2] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "dead")],
        DEADLINE,
    );
    // A zone without n3 is another zone: a new serial, the same on both.
    assert_ne!(same_serial(&cluster.agents[..2]), serial);

    // A restart with the same name rejoins cleanly and comes back into DNS.
    cluster.agents[2].restart();
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );
    for agent in &cluster.agents {
        eventually("the restarted node back in DNS", DEADLINE, || {
            let got = agent.dig(&www_name(), "A")?;
            if got == all {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
}

/// Waits until every agent of `agents` answers the same SOA serial; returns it. The SOA's
/// timers are ones registries accept (refresh 4 h, retry 1 h, expire 2 weeks).
fn same_serial(agents: &[hearth_testkit::TestAgent]) -> String {
    eventually("the same SOA serial on every server", DEADLINE, || {
        let mut serials = Vec::new();
        for agent in agents {
            let soa = agent.dig(ZONE, "SOA")?;
            let fields: Vec<&str> = soa.first().map_or(vec![], |l| l.split(' ').collect());
            match fields[..] {
                [_, _, serial, "14400", "3600", "1209600", _] => serials.push(serial.to_owned()),
                _ => return Err(format!("{soa:?}")),
            }
        }
        serials.dedup();
        match &serials[..] {
            [one] => Ok(one.clone()),
            _ => Err(format!("{serials:?}")),
        }
    })
}

#[test]
fn failing_check_removes_instance_and_recovery_readds_it() {
    let root = hearth_testkit::TempDir::new("flag");
    let flag = root.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let service = |i: usize| {
        let check = if i == 1 {
            format!(
                "[service.check]\nexec = [\"test\", \"-e\", \"{}\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n",
                flag.display()
            )
        } else {
            String::new()
        };
        format!("{}{check}", www(&(i + 1).to_string()))
    };
    let cluster = TestCluster::start(bin(), 2, service);
    let both = vec!["10.0.0.1".to_string(), "10.0.0.2".into()];
    let expect = |want: &[String]| {
        for agent in &cluster.agents {
            eventually("DNS answer", DEADLINE, || {
                let got = agent.dig(&www_name(), "A")?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            });
        }
    };
    expect(&both);
    std::fs::remove_file(&flag).unwrap();
    expect(&both[..1]);
    let services = cluster.agents[0].api_json("/v1/services").unwrap();
    let n2 = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == "n2")
        .unwrap()
        .clone();
    assert_eq!(n2["status"], "failing");
    std::fs::write(&flag, "").unwrap();
    expect(&both);
}

#[test]
fn graceful_leave_is_seen_as_left() {
    let mut cluster = TestCluster::start(bin(), 3, |i| www(&(i + 1).to_string()));
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );
    // SIGTERM leaves gracefully.
    cluster.agents[2].signal("TERM");
    assert_eq!(cluster.agents[2].wait_exit(DEADLINE), Some(0));
    // `hearth leave` does the same through the API.
    let n2 = &cluster.agents[1];
    let status = std::process::Command::new(bin())
        .args([
            "leave",
            "--api",
            &n2.api_addr().to_string(),
            &format!("--token={}", n2.token()),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(cluster.agents[1].wait_exit(DEADLINE), Some(0));
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "left"), ("n3", "left")], DEADLINE);
    eventually("left nodes out of DNS", DEADLINE, || {
        let got = cluster.agents[0].dig(&www_name(), "A")?;
        if got == ["10.0.0.1"] {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

#[test]
fn wrong_secret_never_joins_and_its_packets_are_counted() {
    let mut cluster = TestCluster::start(bin(), 2, |_| String::new());
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    let mut intruder = cluster.spec(2, String::new());
    intruder.secret = hearth_testkit::random_secret();
    cluster.add(intruder);
    // The intruder keeps knocking; wait until n1 has dropped some of its packets.
    eventually("n1 to drop the intruder's packets", DEADLINE, || {
        let (_, metrics) = cluster.agents[0].http_get("/metrics", false)?;
        let dropped = metric(
            &metrics,
            "hearth_gossip_packets_dropped_total{reason=\"unknown_key\"}",
        );
        if dropped >= 3.0 {
            Ok(())
        } else {
            Err(format!("dropped {dropped}"))
        }
    });
    assert_only_members(
        &cluster.agents[..2],
        &["n1", "n2"],
        "the intruder must not appear",
    );
    assert_eq!(
        cluster.agents[2].member_states().unwrap(),
        [("n3".to_string(), "alive".to_string())]
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn garbage_on_gossip_and_dns_ports_is_survived() {
    let mut cluster = TestCluster::start(bin(), 2, |i| www(&(i + 1).to_string()));
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    let target = &cluster.agents[0];
    let socket = UdpSocket::bind((cluster.agents[1].spec.ip, 0)).unwrap();
    let gossip_dropped = |metrics: &str| -> f64 {
        [
            "not_hearth",
            "bad_version",
            "unknown_key",
            "auth_failed",
            "malformed",
        ]
        .iter()
        .map(|r| {
            metric(
                metrics,
                &format!("hearth_gossip_packets_dropped_total{{reason=\"{r}\"}}"),
            )
        })
        .sum()
    };
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..3000usize {
        // In batches small enough for the socket's receive buffer (about a hundred datagrams
        // of this size on Linux's default), each waited for: on a busy machine the agent may
        // not read while a batch arrives, and a full buffer loses datagrams it never saw.
        if i > 0 && i % 50 == 0 {
            eventually("a batch of garbage counted", DEADLINE, || {
                let (_, metrics) = target.http_get("/metrics", false)?;
                let dropped = gossip_dropped(&metrics);
                if dropped >= (i as f64) * 0.9 {
                    Ok(())
                } else {
                    Err(format!("gossip drops counted: {dropped} of {i} sent"))
                }
            });
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 1500) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|j| (state >> (j % 8 * 8)) as u8 ^ j as u8)
            .collect();
        if i % 3 == 0 && len > 3 {
            bytes[..3].copy_from_slice(b"HG\x01"); // looks like ours, but is not sealed
        }
        let _ = socket.send_to(&bytes, target.gossip_addr());
        let _ = socket.send_to(&bytes, target.dns_addr());
    }
    // TCP garbage on the DNS port, too.
    if let Ok(mut stream) = std::net::TcpStream::connect(target.dns_addr()) {
        use std::io::Write;
        let _ = stream.write_all(&[0xff; 4000]);
    }
    eventually("the agent to still answer DNS", DEADLINE, || {
        let got = target.dig(&www_name(), "A")?;
        if got.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    // The agent drains its socket on its own schedule: poll until the drops are counted.
    let metrics = eventually("the garbage counted as dropped", DEADLINE, || {
        let (_, metrics) = target.http_get("/metrics", false)?;
        let dropped = gossip_dropped(&metrics);
        if dropped >= 2700.0 {
            Ok(metrics)
        } else {
            Err(format!("gossip drops counted: {dropped} of 3000 sent"))
        }
    });
    assert!(
        metric(&metrics, "hearth_dns_packets_dropped_total") > 0.0,
        "{metrics}"
    );
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    assert!(cluster.agents[0].is_running());
}

/// A `member-failed` handler that appends the failed member's name to `log`.
fn failed_handler(log: &Path) -> String {
    format!(
        "[[handler]]\nevents = [\"member-failed\"]\ncommand = [\"/bin/sh\", \"-c\", \"echo $HEARTH_SELF:$HEARTH_MEMBER_NAME >> {}\"]\n",
        log.display()
    )
}

#[test]
fn a_one_second_pause_is_not_a_death() {
    let root = hearth_testkit::TempDir::new("pause");
    let log = root.path().join("failed");
    let cluster = TestCluster::start(bin(), 3, |_| failed_handler(&log));
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );
    for round in 0..3 {
        // The pause is the fault under test, so here sleeping is the point.
        cluster.agents[round % 3].signal("STOP");
        std::thread::sleep(Duration::from_secs(1));
        cluster.agents[round % 3].signal("CONT");
        // Observe for longer than a suspicion can last (1.5 s base) plus dissemination:
        // a false death would be declared within this window.
        std::thread::sleep(Duration::from_secs(4));
    }
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );
    let failures = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(failures.is_empty(), "false deaths declared: {failures}");
}

#[test]
fn secret_rotates_with_sighup_and_no_downtime() {
    let root = hearth_testkit::TempDir::new("rotate");
    let log = root.path().join("failed");
    let (old, new) = (
        hearth_testkit::random_secret(),
        hearth_testkit::random_secret(),
    );
    let mut cluster = TestCluster::start(bin(), 0, |_| String::new());
    let secret_files: Vec<_> = (0..2)
        .map(|i| root.path().join(format!("secret{i}")))
        .collect();
    for (idx, file) in secret_files.iter().enumerate() {
        hearth_testkit::write_private(file, &format!("{old}\n"));
        let mut spec = cluster.spec(idx, failed_handler(&log));
        spec.secret_file = Some(file.clone());
        cluster.add(spec);
    }
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    let unknown_key_drops = |agent: &hearth_testkit::TestAgent| {
        let (_, text) = agent.http_get("/metrics", false).unwrap();
        metric(
            &text,
            "hearth_gossip_packets_dropped_total{reason=\"unknown_key\"}",
        )
    };
    let reloaded = |agent: &hearth_testkit::TestAgent, n_keys: usize| {
        let needle = format!("n_keys={n_keys}");
        eventually("SIGHUP reload logged", DEADLINE, || {
            let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
            let count = log
                .lines()
                .filter(|l| l.contains("secrets reloaded") && l.contains(&needle))
                .count();
            if count > 0 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        });
    };
    // 1. Every node accepts the new secret, still sending with the old one.
    for (idx, file) in secret_files.iter().enumerate() {
        std::fs::write(file, format!("{old}\n{new}\n")).unwrap();
        cluster.agents[idx].signal("HUP");
        reloaded(&cluster.agents[idx], 2);
    }
    // 2. Every node sends with the new secret, still accepting the old one.
    for (idx, file) in secret_files.iter().enumerate() {
        std::fs::write(file, format!("{new}\n{old}\n")).unwrap();
        cluster.agents[idx].signal("HUP");
        eventually("the reload to take effect", DEADLINE, || {
            let log = std::fs::read_to_string(cluster.agents[idx].log_path()).unwrap_or_default();
            let count = log
                .lines()
                .filter(|l| l.contains("secrets reloaded") && l.contains("n_keys=2"))
                .count();
            if count >= 2 {
                Ok(())
            } else {
                Err(format!("{count} reloads"))
            }
        });
    }
    // 3. The old secret is dropped.
    for (idx, file) in secret_files.iter().enumerate() {
        std::fs::write(file, format!("{new}\n")).unwrap();
        cluster.agents[idx].signal("HUP");
        reloaded(&cluster.agents[idx], 1);
    }
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    // No datagram was ever sealed with a key the other node lacked, and nobody died.
    assert_eq!(unknown_key_drops(&cluster.agents[0]), 0.0);
    assert_eq!(unknown_key_drops(&cluster.agents[1]), 0.0);
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    // A node that only knows the old secret is now shut out.
    let mut stale = cluster.spec(2, String::new());
    stale.secret = old;
    cluster.add(stale);
    eventually("n1 to drop the stale node's packets", DEADLINE, || {
        let dropped = unknown_key_drops(&cluster.agents[0]);
        if dropped >= 1.0 {
            Ok(())
        } else {
            Err(format!("{dropped}"))
        }
    });
    assert_only_members(
        &cluster.agents[..2],
        &["n1", "n2"],
        "the stale node must not appear",
    );
}

#[test]
fn dns_follows_the_rules_over_udp_and_tcp() {
    use hearth_testkit::dig_full;
    let cluster = TestCluster::start(bin(), 2, |i| www(&(i + 1).to_string()));
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], DEADLINE);
    let dns = cluster.agents[0].dns_addr();
    eventually("both instances", DEADLINE, || {
        let got = cluster.agents[0].dig(&www_name(), "A")?;
        if got.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    // Case-insensitive, authoritative, over TCP too.
    let out = dig_full(dns, &["+tcp", "+norec", &format!("WwW.{ZONE}"), "A"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("flags: qr aa"),
        "{out}"
    );
    assert!(
        out.contains("10.0.0.1") && out.contains("10.0.0.2"),
        "{out}"
    );
    // NXDOMAIN with the SOA in authority.
    let out = dig_full(dns, &[&format!("nope.{ZONE}"), "A"]);
    assert!(
        out.contains("status: NXDOMAIN") && out.contains(" aa"),
        "{out}"
    );
    assert!(out.contains("AUTHORITY: 1") && out.contains("SOA"), "{out}");
    // NODATA: the name exists, the type does not.
    let out = dig_full(dns, &[&www_name(), "AAAA"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    // The apex: SOA and NS (the server nodes).
    let ns = cluster.agents[0].dig(ZONE, "NS").unwrap();
    assert_eq!(ns, [format!("n1.{ZONE}"), format!("n2.{ZONE}")]);
    assert_eq!(cluster.agents[0].dig(ZONE, "SOA").unwrap().len(), 1);
    // Outside the zone: refused.
    let out = dig_full(dns, &["example.org.", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let (_, metrics) = cluster.agents[0].http_get("/metrics", false).unwrap();
    for rcode in ["noerror", "nxdomain", "refused"] {
        let n = metric(
            &metrics,
            &format!("hearth_dns_queries_total{{rcode=\"{rcode}\"}}"),
        );
        assert!(n >= 1.0, "{rcode}: {n}\n{metrics}");
    }
}

/// Asserts that each of `agents` lists exactly `names` as members.
fn assert_only_members(agents: &[hearth_testkit::TestAgent], names: &[&str], why: &str) {
    for agent in agents {
        let mut got: Vec<String> = agent
            .member_states()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        got.sort();
        assert_eq!(got, names, "{why}");
    }
}

/// `/metrics` shows the machine (CPU time, memory, the data directory's file system) and what
/// this worker offers against what is placed on it.
#[test]
fn metrics_show_the_host_and_its_placed_load() {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
    });
    let agent = &cluster.agents[0];
    hearth_testkit::vms::wait_for_hosts(agent, 1);
    agent.add_fake_image("fake");
    agent.ensure_account("alice");
    let body =
        r#"{"name":"m1","owner":"alice","vcpus":2,"memory_mib":256,"disk_gib":3,"image":"fake"}"#;
    let (status, answer) = agent.http_send("POST", "/v1/vms", body).unwrap();
    assert_eq!(status, 201, "{answer}");
    let text = eventually("the VM's load on the host", DEADLINE, || {
        let (_, text) = agent.http_get("/metrics", false)?;
        match metric(&text, "hearth_host_placed{resource=\"vcpus\"}") {
            2.0 => Ok(text),
            other => Err(format!("placed vcpus {other}")),
        }
    });
    for (series, want) in [
        ("hearth_host_offered{resource=\"vcpus\"}", 4.0),
        ("hearth_host_offered{resource=\"memory_mib\"}", 2048.0),
        ("hearth_host_placed{resource=\"memory_mib\"}", 256.0),
        ("hearth_host_placed{resource=\"disk_gib\"}", 3.0),
    ] {
        assert_eq!(metric(&text, series), want, "{series}");
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: f64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        metric(&text, "hearth_host_memory_bytes{kind=\"total\"}"),
        total_kib * 1024.0
    );
    assert!(metric(&text, "hearth_data_dir_bytes{kind=\"free\"}") > 0.0);
    assert!(
        metric(&text, "hearth_data_dir_bytes{kind=\"size\"}")
            >= metric(&text, "hearth_data_dir_bytes{kind=\"free\"}")
    );
    assert!(metric(&text, "hearth_host_cpu_seconds_total{mode=\"idle\"}") > 0.0);
    // The data directory's block device, when it has one (not on tmpfs or overlay): the
    // agent has written its Raft store there.
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(&agent.dir).unwrap().dev();
    let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
    let has_device = Path::new(&format!("/sys/dev/block/{major}:{minor}/stat")).exists();
    let written = "hearth_data_dir_io_bytes_total{direction=\"write\"}";
    assert_eq!(
        text.lines().any(|l| l.starts_with(written)),
        has_device,
        "{text}"
    );
    if has_device {
        assert!(
            metric(
                &text,
                "hearth_data_dir_io_operations_total{direction=\"write\"}"
            ) > 0.0
        );
    }
}
