//! A rolling upgrade, as an admin does one with packages: three servers run the previous
//! release (`dist/previous-release`, built from this checkout's history by
//! `scripts/build-previous-release.sh`), and each in turn is stopped (SIGTERM, as `systemctl
//! restart` sends) and started again on this build, with its data. Throughout, the others
//! answer DNS; writes commit through the mixed group and reach the old nodes; a leader on
//! the new release puts nothing in the log the old ones cannot read (the state level holds
//! its uptime samples back); and once every node runs the new release, the samples start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_testkit::{TestCluster, ZONE, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

fn new_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// `target/previous-release/hearth`, which `scripts/test.sh` builds.
fn previous_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("previous-release")
        .join("hearth");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/build-previous-release.sh target/previous-release (scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn service(idx: usize) -> String {
    format!(
        "[state]\nbootstrap_expect = 3\n\n[[service]]\nname = \"www\"\naddress = \"192.0.2.{}\"\n[service.check]\nexec = [\"true\"]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n",
        idx + 1
    )
}

/// The leader every running agent agrees on, with three voters: its index.
fn leader(cluster: &TestCluster) -> usize {
    let name = eventually("one leader and three voters", DEADLINE, || {
        let mut leaders = Vec::new();
        for agent in &cluster.agents {
            let state = agent.state()?;
            let voters = state["voters"].as_array().map_or(0, Vec::len);
            if voters != 3 {
                return Err(format!("{}: {state}", agent.spec.name));
            }
            leaders.push(state["leader"].as_str().unwrap_or_default().to_owned());
        }
        leaders.dedup();
        match leaders.as_slice() {
            [one] if !one.is_empty() => Ok(one.clone()),
            other => Err(format!("leaders: {other:?}")),
        }
    });
    cluster
        .agents
        .iter()
        .position(|a| a.spec.name == name)
        .expect("the leader is one of ours")
}

/// Writes record `name` through agent `via` and waits until every agent serves it.
fn write_everywhere(cluster: &TestCluster, via: usize, name: &str, ip: &str) {
    let body =
        format!(r#"{{"records":{{"name":"{name}","values":[{{"type":"A","address":"{ip}"}}]}}}}"#);
    eventually(
        &format!("{name} written through n{}", via + 1),
        DEADLINE,
        || match cluster.agents[via].http_send("PUT", "/v1/records", &body)? {
            (200 | 201, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        },
    );
    for agent in &cluster.agents {
        eventually(
            &format!("{name} served by {}", agent.spec.name),
            DEADLINE,
            || match agent.dig(&format!("{name}.{ZONE}"), "A")?.as_slice() {
                [one] if one == ip => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

/// Today's uptime figures of `www` on agent `idx`: (known ms, up ms), or none (an old release
/// has no uptime in its status).
fn www_today(cluster: &TestCluster, idx: usize) -> Result<Option<(u64, u64)>, String> {
    let json = cluster.agents[idx].api_json("/status.json")?;
    let services = json["services"].as_array().ok_or(json.to_string())?;
    let www = services
        .iter()
        .find(|s| s["name"] == "www")
        .ok_or(json.to_string())?;
    Ok(www["days"].as_array().and_then(|days| {
        let today = days.last()?;
        Some((today["known_ms"].as_u64()?, today["up_ms"].as_u64()?))
    }))
}

#[test]
fn a_rolling_upgrade_keeps_dns_and_writes_and_holds_new_writes_back_until_it_is_done() {
    let old = previous_bin();
    let mut cluster = TestCluster::start(&old, 3, service);
    leader(&cluster);
    write_everywhere(&cluster, 0, "before", "198.51.100.1");

    for idx in 0..3 {
        let name = cluster.agents[idx].spec.name.clone();
        cluster.agents[idx].signal("TERM");
        cluster.agents[idx].wait_exit(DEADLINE);
        // While it is down, the others answer.
        for (other, agent) in cluster.agents.iter().enumerate() {
            if other == idx {
                continue;
            }
            eventually(
                &format!("{} answers while {name} is down", agent.spec.name),
                DEADLINE,
                || match agent.dig(&format!("www.{ZONE}"), "A")?.len() {
                    0 => Err("no answer".into()),
                    n => Ok(n),
                },
            );
        }
        let agent = &mut cluster.agents[idx];
        agent.set_bin(new_bin());
        agent.spec.extra =
            service(idx).replace("[state]\n", "[state]\nuptime_interval = \"200ms\"\n");
        agent.restart();
        leader(&cluster);
        write_everywhere(&cluster, idx, &format!("after-{name}"), "198.51.100.2");

        if idx == 0 {
            // One new node among two old ones: while it leads, its uptime samples would be
            // entries the old ones cannot read. Make it the leader, then write through it.
            let mut tries = 0;
            while leader(&cluster) != 0 {
                tries += 1;
                assert!(tries <= 12, "n1 never became the leader");
                // The old leader stops; the two left elect one of them; it comes back.
                let other = leader(&cluster);
                let gone = cluster.agents[other].spec.name.clone();
                cluster.agents[other].signal("TERM");
                cluster.agents[other].wait_exit(DEADLINE);
                eventually("a leader among the two left", DEADLINE, || {
                    let state = cluster.agents[0].state()?;
                    match state["leader"].as_str() {
                        Some(name) if !name.is_empty() && name != gone => Ok(()),
                        _ => Err(state.to_string()),
                    }
                });
                cluster.agents[other].restart();
            }
            let term = cluster.agents[0].state().unwrap()["term"].clone();
            for round in 0..5 {
                write_everywhere(&cluster, 0, &format!("mixed-{round}"), "198.51.100.3");
            }
            assert_eq!(
                www_today(&cluster, 0).unwrap(),
                Some((0, 0)),
                "no uptime recorded while old nodes run"
            );
            // Had it logged an entry the old nodes cannot read, they could not follow it, and
            // it would have lost the lead to one of them.
            let state = cluster.agents[0].state().unwrap();
            assert_eq!(
                (&state["leader"], &state["term"]),
                (&"n1".into(), &term),
                "{state}"
            );
        }
    }

    // Every node runs the new release: the samples start, and reach every node.
    for idx in 0..3 {
        eventually(
            &format!("uptime on n{}", idx + 1),
            DEADLINE,
            || match www_today(&cluster, idx)? {
                Some((known, up)) if known > 0 && up == known => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    write_everywhere(&cluster, 2, "done", "198.51.100.4");
    let members = cluster.agents[1].api_json("/v1/members").unwrap();
    let versions: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["tags"]["state-level"].as_str())
        .collect();
    let level = hearth_state::model::STATE_LEVEL.to_string();
    assert_eq!(versions, [level.as_str(); 3], "{members}");
}
