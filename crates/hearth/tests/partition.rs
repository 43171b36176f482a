//! Partitions between real agents in network namespaces this test creates: a node cut off
//! from the others refuses writes with a clear error while the majority goes on, and after
//! healing every node converges.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::{TempDir, TestAgent, eventually, start_in_lab};

const DEADLINE: Duration = Duration::from_secs(90);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn put_record(agent: &TestAgent, name: &str) -> Result<(u16, String), String> {
    let body =
        format!(r#"{{"records":{{"name":"{name}","values":[{{"type":"TXT","text":"{name}"}}]}}}}"#);
    agent.http_send("PUT", "/v1/records", &body)
}

fn leader_of(agents: &[TestAgent], among: &[usize]) -> Result<usize, String> {
    let mut leaders = Vec::new();
    for &idx in among {
        let state = agents[idx].state()?;
        leaders.push(state["leader"].as_str().unwrap_or_default().to_owned());
    }
    leaders.dedup();
    match leaders.as_slice() {
        [leader] => among
            .iter()
            .copied()
            .find(|&i| agents[i].spec.name == *leader)
            .ok_or_else(|| format!("leader {leader} is outside {among:?}")),
        _ => Err(format!("leaders: {leaders:?}")),
    }
}

#[test]
fn minority_refuses_writes_majority_goes_on_and_all_converge() {
    let lab = NetnsLab::new(3).expect("create network namespaces (needs root and iproute2)");
    let root = TempDir::new("partition");
    let mut agents: Vec<TestAgent> = start_in_lab(
        bin(),
        root.path(),
        &lab,
        "test",
        "[\"server\"]",
        "[state]\nbootstrap_expect = 3\n",
    );
    let leader = eventually("a leader", DEADLINE, || leader_of(&agents, &[0, 1, 2]));
    let (status, body) = put_record(&agents[leader], "before").unwrap();
    assert_eq!(status, 200, "{body}");

    // Cut the leader off: it is the minority now.
    lab.cut(leader);
    let majority: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let refusal = eventually("the cut-off node to refuse writes", DEADLINE, || {
        let (status, body) = put_record(&agents[leader], "minority")?;
        if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    });
    assert!(refusal.contains("quorum"), "{refusal}");
    eventually("the majority to elect a leader and write", DEADLINE, || {
        leader_of(&agents, &majority)?;
        let (status, body) = put_record(&agents[majority[0]], "majority")?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    });

    lab.heal(leader);
    eventually("every node to converge", DEADLINE, || {
        let mut seen = Vec::new();
        for agent in &agents {
            let records = agent.api_json("/v1/records?consistent")?;
            let mut keys: Vec<String> = records
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            seen.push(keys);
        }
        let want = vec!["before/TXT".to_string(), "majority/TXT".to_string()];
        if seen.iter().all(|keys| *keys == want) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    // Gossip heals too: everyone sees everyone alive.
    for agent in &agents {
        eventually("all alive after healing", DEADLINE, || {
            let states = agent.member_states()?;
            if states.len() == 3 && states.iter().all(|(_, s)| s == "alive") {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        });
    }
    for agent in &mut agents {
        agent.kill9();
    }
}
