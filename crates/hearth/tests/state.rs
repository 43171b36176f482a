//! The replicated desired state with real agents: the group forms from gossip, writes go
//! through any node, the leader's death does not stop writes, no quorum means a fast 503
//! with the reason, and acknowledged writes survive kill -9 of every node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TestAgent, TestCluster, eventually};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn expect(n: usize) -> impl Fn(usize) -> String {
    move |_| format!("[state]\nbootstrap_expect = {n}\n")
}

/// Waits until the agents at `alive` agree on a leader among them and see `n_voters` voters;
/// returns
/// the leader's index in `cluster.agents`.
fn wait_for_group(cluster: &TestCluster, alive: &[usize], n_voters: usize) -> usize {
    let leader = eventually("a leader all agree on", DEADLINE, || {
        let mut leaders = Vec::new();
        for &idx in alive {
            let state = cluster.agents[idx].state()?;
            let voters = state["voters"].as_array().map_or(0, Vec::len);
            if voters != n_voters {
                return Err(format!(
                    "{}: {voters} voters: {state}",
                    cluster.agents[idx].spec.name
                ));
            }
            leaders.push(state["leader"].as_str().unwrap_or_default().to_owned());
        }
        leaders.dedup();
        let among_alive = |name: &str| alive.iter().any(|&i| cluster.agents[i].spec.name == name);
        match leaders.as_slice() {
            [leader] if among_alive(leader) => Ok(leader.clone()),
            _ => Err(format!("leaders: {leaders:?}")),
        }
    });
    cluster
        .agents
        .iter()
        .position(|a| a.spec.name == leader)
        .expect("the leader is one of ours")
}

fn put_record(agent: &TestAgent, name: &str, ip: &str) -> Result<(u16, String), String> {
    let body =
        format!(r#"{{"records":{{"name":"{name}","values":[{{"type":"A","address":"{ip}"}}]}}}}"#);
    agent.http_send("PUT", "/v1/records", &body)
}

fn consistent_records(agent: &TestAgent) -> Result<Value, String> {
    agent.api_json("/v1/records?consistent")
}

#[test]
fn group_forms_writes_go_anywhere_and_survive_the_leaders_death() {
    let mut cluster = TestCluster::start(bin(), 3, expect(3));
    let leader = wait_for_group(&cluster, &[0, 1, 2], 3);
    let follower = (leader + 1) % 3;
    // A write through a follower is forwarded to the leader.
    let (status, body) = put_record(&cluster.agents[follower], "mail", "192.0.2.1").unwrap();
    assert_eq!(status, 200, "{body}");
    for agent in &cluster.agents {
        let records = consistent_records(agent).unwrap();
        assert_eq!(
            records["mail/A"]["value"]["values"][0]["address"], "192.0.2.1",
            "{records}"
        );
    }
    // Read-your-writes: what a client wrote through a follower reads back there at once,
    // without asking for a consistent read (a token made there works there at once).
    for n in 0..20 {
        let name = format!("ryw{n}");
        let (status, body) = put_record(&cluster.agents[follower], &name, "192.0.2.9").unwrap();
        assert_eq!(status, 200, "{body}");
        let records = cluster.agents[follower].api_json("/v1/records").unwrap();
        assert!(
            records[format!("{name}/A")].is_object(),
            "{name}: {records}"
        );
    }
    // The CLI does the same, with compare-and-set.
    let target = &cluster.agents[follower];
    let output = std::process::Command::new(bin())
        .args([
            "records",
            "add",
            "mail",
            "A",
            "192.0.2.2",
            "--api",
            &target.api_addr().to_string(),
            &format!("--token={}", target.token()),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // `hearth state` on a follower shows every member's own applied index.
    let status: serde_json::Value =
        serde_json::from_str(&cluster.agents[follower].cli(&["state", "--json"])).unwrap();
    let nodes = status["nodes"].as_object().expect("nodes");
    assert_eq!(nodes.len(), 3, "{status}");
    for (name, report) in nodes {
        assert!(
            report["applied_index"].as_u64().is_some_and(|i| i >= 2),
            "{name}: {status}"
        );
    }
    let table = cluster.agents[follower].cli(&["state"]);
    assert!(
        table.contains("APPLIED") && table.contains("leader"),
        "{table}"
    );

    cluster.agents[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_for_group(&cluster, &survivors, 3);
    assert_ne!(new_leader, leader);
    eventually("a write after the leader died", DEADLINE, || {
        let (status, body) = put_record(&cluster.agents[survivors[0]], "www2", "192.0.2.3")?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    });
    // The old leader comes back as a follower and catches up.
    cluster.agents[leader].restart();
    eventually("the restarted node to catch up", DEADLINE, || {
        let records = consistent_records(&cluster.agents[leader])?;
        let mail = records["mail/A"]["value"]["values"]
            .as_array()
            .map_or(0, Vec::len);
        if records["www2/A"].is_object() && mail == 2 {
            Ok(())
        } else {
            Err(records.to_string())
        }
    });
}

#[test]
fn without_quorum_writes_fail_fast_with_the_reason() {
    let mut cluster = TestCluster::start(bin(), 3, expect(3));
    let leader = wait_for_group(&cluster, &[0, 1, 2], 3);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.agents[others[0]].kill9();
    cluster.agents[others[1]].kill9();
    // Both on the old leader and (after restarting one) on a lone follower, the write is
    // refused with 503 and a reason, rather than hanging.
    let (status, body) = put_record(&cluster.agents[leader], "x", "192.0.2.9").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("quorum"), "{body}");
    // A bad body is a 400 naming the field, quorum or not.
    let (status, body) = cluster.agents[leader]
        .http_send(
            "PUT",
            "/v1/records",
            r#"{"records":{"name":"y","values":[{"type":"A"}]}}"#,
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("address"), "{body}");
    // Local reads still work without a quorum.
    assert!(cluster.agents[leader].api_json("/v1/records").is_ok());
}

#[test]
fn acknowledged_writes_survive_kill9_of_every_node() {
    let mut cluster = TestCluster::start(bin(), 3, expect(3));
    let leader = wait_for_group(&cluster, &[0, 1, 2], 3);
    let n_writes = 20;
    for i in 0..n_writes {
        let target = &cluster.agents[(leader + i) % 3];
        let (status, body) =
            put_record(target, &format!("host{i}"), &format!("192.0.2.{}", i + 1)).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for agent in &mut cluster.agents {
        agent.kill9();
    }
    for agent in &mut cluster.agents {
        agent.restart();
    }
    wait_for_group(&cluster, &[0, 1, 2], 3);
    for agent in &cluster.agents {
        let records = eventually("records after a full restart", DEADLINE, || {
            consistent_records(agent)
        });
        let n = records.as_object().map_or(0, |o| o.len());
        assert_eq!(n, n_writes, "{records}");
    }
}

#[test]
fn two_servers_need_a_witness_to_write_when_one_dies() {
    // Without a witness: the survivor refuses writes and says to add a witness.
    let mut pair = TestCluster::start(bin(), 2, expect(2));
    wait_for_group(&pair, &[0, 1], 2);
    pair.agents[1].kill9();
    let refusal = eventually("a refusal", DEADLINE, || {
        let (status, body) = put_record(&pair.agents[0], "a", "192.0.2.1")?;
        if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    });
    assert!(refusal.contains("witness"), "{refusal}");

    // With a witness: either server can die and writes go on.
    let mut trio = TestCluster::start(bin(), 0, |_| String::new());
    for idx in 0..3 {
        let mut spec = trio.spec(idx, "[state]\nbootstrap_expect = 3\n".into());
        if idx == 2 {
            spec.roles = "[\"witness\"]".into();
        }
        trio.add(spec);
    }
    let leader = wait_for_group(&trio, &[0, 1, 2], 3);
    let victim = if leader == 2 { 0 } else { leader };
    trio.agents[victim].kill9();
    let writer = if victim == 0 { 1 } else { 0 };
    eventually("a write with the witness's vote", DEADLINE, || {
        let (status, body) = put_record(&trio.agents[writer], "b", "192.0.2.2")?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    });
}

#[test]
fn cluster_wide_services_run_where_declared_and_leave_when_removed() {
    let cluster = TestCluster::start(bin(), 3, expect(3));
    wait_for_group(&cluster, &[0, 1, 2], 3);
    let cli = |args: &[&str]| cluster.agents[0].cli(args);
    cli(&["services", "add", "web", "--node", "n2", "--node", "n3"]);
    assert!(cli(&["services", "list"]).contains("n2,n3"));
    let name = format!("web.{}", hearth_testkit::ZONE);
    let want: Vec<String> = {
        let mut ips = vec![
            cluster.agents[1].spec.ip.to_string(),
            cluster.agents[2].spec.ip.to_string(),
        ];
        ips.sort();
        ips
    };
    for agent in &cluster.agents {
        eventually("the cluster-wide service in DNS", DEADLINE, || {
            let got = agent.dig(&name, "A")?;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
    cli(&["services", "rm", "web"]);
    for agent in &cluster.agents {
        eventually("the removed service gone from DNS", DEADLINE, || {
            let got = agent.dig(&name, "A")?;
            if got.is_empty() {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
}

#[test]
fn static_records_and_drain_reach_every_nodes_dns() {
    let cluster = TestCluster::start(bin(), 3, |i| {
        format!(
            "[state]\nbootstrap_expect = 3\n[[service]]\nname = \"www\"\naddress = \"10.0.0.{}\"\n",
            i + 1
        )
    });
    wait_for_group(&cluster, &[0, 1, 2], 3);
    let cli = |args: &[&str]| cluster.agents[2].cli(args);
    cli(&["records", "add", "mail", "A", "192.0.2.7"]);
    cli(&[
        "records",
        "add",
        "@",
        "MX",
        "10",
        &format!("mail.{}", hearth_testkit::ZONE),
    ]);
    let zone = hearth_testkit::ZONE;
    for agent in &cluster.agents {
        eventually("static records in DNS", DEADLINE, || {
            let a = agent.dig(&format!("mail.{zone}"), "A")?;
            let mx = agent.dig(zone, "MX")?;
            if a == ["192.0.2.7"] && mx.len() == 1 {
                Ok(())
            } else {
                Err(format!("{a:?} {mx:?}"))
            }
        });
    }
    cli(&["node", "drain", "n2"]);
    let www = format!("www.{zone}");
    for agent in &cluster.agents {
        eventually("the drained node's instance out of DNS", DEADLINE, || {
            let got = agent.dig(&www, "A")?;
            if got == ["10.0.0.1", "10.0.0.3"] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
    cli(&["node", "undrain", "n2"]);
    for agent in &cluster.agents {
        eventually("the undrained node back in DNS", DEADLINE, || {
            let got = agent.dig(&www, "A")?;
            if got.len() == 3 {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
}

#[test]
fn a_node_without_the_secret_can_neither_read_nor_write_raft() {
    use hearth_membership::stream::SealedStream;
    use hearth_membership::{Keyring, Secret};
    use hearth_state::model::{Command, Expect};
    use hearth_state::network::RpcRequest;

    let cluster = TestCluster::start(bin(), 3, expect(3));
    let leader = wait_for_group(&cluster, &[0, 1, 2], 3);
    let rpc = SocketAddr::from((cluster.agents[leader].spec.ip, hearth_testkit::RPC_PORT));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome: Result<Vec<u8>, String> = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(rpc)
            .await
            .map_err(|e| e.to_string())?;
        let wrong = Keyring::new("test", &Secret::new([7; 32]), &[]);
        let mut sealed =
            SealedStream::client(stream, &wrong, hearth_membership::stream::Tier::Full)
                .await
                .map_err(|e| e.to_string())?;
        let write = RpcRequest::Write(Box::new(Command::SetDrain {
            node: "n1".into(),
            drained: true,
            expect: Expect::Any,
        }));
        sealed
            .send(&serde_json::to_vec(&write).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(10), sealed.recv()).await;
        answer
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())
    });
    // The server does not know our key: it hangs up, and nothing readable comes back.
    assert!(
        outcome.is_err(),
        "the server answered a stranger: {outcome:?}"
    );
    let desired = cluster.agents[leader]
        .api_json("/v1/desired?consistent")
        .unwrap();
    assert_eq!(desired["drained"], serde_json::json!({}), "{desired}");
}

#[test]
fn a_long_dead_voter_is_replaced_by_a_live_server() {
    let config = |_| "[state]\nbootstrap_expect = 3\nreplace_voter_after = \"2s\"\n".to_string();
    let mut cluster = TestCluster::start(bin(), 4, config);
    // Four servers make three voters and one learner.
    let leader = wait_for_group(&cluster, &[0, 1, 2, 3], 3);
    let state = cluster.agents[leader].state().unwrap();
    let voters: Vec<String> = serde_json::from_value(state["voters"].clone()).unwrap();
    let victim = cluster
        .agents
        .iter()
        .position(|a| voters.contains(&a.spec.name) && a.spec.name != state["leader"])
        .unwrap();
    let victim_name = cluster.agents[victim].spec.name.clone();
    cluster.agents[victim].kill9();
    let alive: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    eventually("the dead voter replaced", DEADLINE, || {
        let state = cluster.agents[alive[0]].state()?;
        let voters: Vec<String> =
            serde_json::from_value(state["voters"].clone()).map_err(|e| e.to_string())?;
        let all_alive = voters.len() == 3 && !voters.contains(&victim_name);
        if all_alive {
            Ok(())
        } else {
            Err(state.to_string())
        }
    });
    // And the group still writes.
    let (status, body) = put_record(&cluster.agents[alive[1]], "after", "192.0.2.8").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn one_command_recovers_from_a_permanent_loss_of_quorum() {
    let mut cluster = TestCluster::start(bin(), 3, expect(3));
    let leader = wait_for_group(&cluster, &[0, 1, 2], 3);
    for i in 0..5 {
        let (status, body) =
            put_record(&cluster.agents[leader], &format!("kept{i}"), "192.0.2.5").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Wait until n1 holds every write, then lose the whole group.
    eventually("n1 to apply the writes", DEADLINE, || {
        let records = cluster.agents[0].api_json("/v1/records")?;
        if records.as_object().map_or(0, |o| o.len()) == 5 {
            Ok(())
        } else {
            Err(records.to_string())
        }
    });
    for agent in &mut cluster.agents {
        agent.kill9();
    }
    // n2 and n3 are gone for good (their disks wiped); n1 alone is recovered.
    let output = std::process::Command::new(bin())
        .args(["state", "recover", "--config"])
        .arg(cluster.agents[0].config_path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("n1"), "{report}");
    for agent in &cluster.agents[1..] {
        std::fs::remove_dir_all(agent.dir.join("data/state")).unwrap();
    }
    cluster.agents[0].restart();
    eventually("n1 to lead alone", DEADLINE, || {
        let state = cluster.agents[0].state()?;
        if state["leader"] == "n1" {
            Ok(())
        } else {
            Err(state.to_string())
        }
    });
    let (status, body) = put_record(&cluster.agents[0], "after", "192.0.2.6").unwrap();
    assert_eq!(status, 200, "{body}");
    // The wiped servers rejoin as learners, are promoted, and get everything.
    cluster.agents[1].restart();
    cluster.agents[2].restart();
    wait_for_group(&cluster, &[0, 1, 2], 3);
    for agent in &cluster.agents {
        let records = eventually("the recovered state everywhere", DEADLINE, || {
            let records = consistent_records(agent)?;
            if records.as_object().map_or(0, |o| o.len()) == 6 {
                Ok(records)
            } else {
                Err(records.to_string())
            }
        });
        assert!(
            records["kept4/A"].is_object() && records["after/A"].is_object(),
            "{records}"
        );
    }
    // Recovering while the agent runs is refused with a clear message.
    let output = std::process::Command::new(bin())
        .args(["state", "recover", "--config"])
        .arg(cluster.agents[0].config_path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("stop"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_new_worker_behind_the_purged_log_gets_the_snapshot_and_every_record() {
    let mut cluster = TestCluster::start(bin(), 0, |_| String::new());
    let server = cluster.spec(
        0,
        "[state]\nbootstrap_expect = 1\nsnapshot_every = 10\n".into(),
    );
    cluster.add(server);
    let leader = wait_for_group(&cluster, &[0], 1);
    assert_eq!(leader, 0);
    // Sequential writes: each its own log entry, so the log passes several snapshots.
    for i in 0..60 {
        let (status, body) = put_record(&cluster.agents[0], &format!("r{i}"), "192.0.2.9")
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        assert_eq!(status, 200, "write {i}: {body}");
    }
    let purged = eventually("the leader's log purged", DEADLINE, || {
        let state = cluster.agents[0].state()?;
        match state["purged_index"].as_u64() {
            Some(purged) if purged > 0 => Ok(purged),
            _ => Err(format!("{state}")),
        }
    });
    let applied = cluster.agents[0].state().expect("state")["applied_index"]
        .as_u64()
        .expect("an applied index");
    assert!(applied > purged, "applied {applied}, purged {purged}");

    let mut worker = cluster.spec(1, "[compute]\ndriver = \"fake\"\n".into());
    worker.roles = "[\"worker\"]".into();
    cluster.add(worker);
    let worker = &cluster.agents[1];
    // The entries up to `purged` are gone from every log: the worker can only have them from
    // the snapshot.
    eventually(
        "the worker caught up through the snapshot",
        DEADLINE,
        || {
            let state = worker.state()?;
            let (got, snapshot) = (
                state["applied_index"].as_u64().unwrap_or(0),
                state["snapshot_index"].as_u64().unwrap_or(0),
            );
            if got >= applied && snapshot >= purged {
                Ok(())
            } else {
                Err(format!("applied {got}, snapshot {snapshot}: {state}"))
            }
        },
    );
    let zone = hearth_testkit::ZONE;
    for name in ["r0", "r30", "r59"] {
        eventually("the record in the worker's DNS", DEADLINE, || {
            let got = worker.dig(&format!("{name}.{zone}"), "A")?;
            if got == ["192.0.2.9"] {
                Ok(())
            } else {
                Err(format!("{name}: {got:?}"))
            }
        });
    }
    let out = worker.cli(&["state"]);
    assert!(out.contains("snapshot: "), "{out}");
}
