//! Cluster-wide events with real agents: a `scope = "cluster"` handler runs once per event
//! across the cluster, on the leader, with a stable id; a leader change neither drops nor
//! repeats a delivered event; a failing handler is retried.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TempDir, TestCluster, eventually};

const DEADLINE: Duration = Duration::from_secs(90);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn handlers(log: &Path, flag: &Path) -> String {
    format!(
        r#"[state]
bootstrap_expect = 5

[[handler]]
scope = "cluster"
name = "log"
events = ["member-failed"]
command = ["/bin/sh", "-c", "echo \"$HEARTH_EVENT_ID $HEARTH_MEMBER_NAME $HEARTH_SELF\" >> {log}"]

[[handler]]
scope = "cluster"
name = "flaky"
events = ["member-failed"]
command = ["/bin/sh", "-c", "test -e {flag} || {{ touch {flag}; exit 1; }}"]
"#,
        log = log.display(),
        flag = flag.display(),
    )
}

/// (event id, member) lines the handler wrote, across all nodes.
fn deliveries(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            Some((words.next()?.parse().ok()?, words.next()?.to_owned()))
        })
        .collect()
}

fn leader_index(cluster: &TestCluster, alive: &[usize]) -> usize {
    eventually("an agreed leader", DEADLINE, || {
        let mut leaders: Vec<String> = alive
            .iter()
            .map(|&i| {
                cluster.agents[i]
                    .state()
                    .map(|s| s["leader"].as_str().unwrap_or_default().to_owned())
            })
            .collect::<Result<_, _>>()?;
        leaders.dedup();
        match leaders.as_slice() {
            [l] => alive
                .iter()
                .copied()
                .find(|&i| &cluster.agents[i].spec.name == l)
                .ok_or(format!("leader {l} is not alive")),
            _ => Err(format!("{leaders:?}")),
        }
    })
}

#[test]
fn cluster_handlers_run_once_per_event_across_leader_changes() {
    let dir = TempDir::new("events");
    let (log, flag) = (dir.path().join("log"), dir.path().join("flag"));
    let mut cluster = TestCluster::start(bin(), 5, |_| handlers(&log, &flag));
    let leader = leader_index(&cluster, &[0, 1, 2, 3, 4]);
    let victim = (leader + 1) % 5;
    let victim_name = cluster.agents[victim].spec.name.clone();
    cluster.agents[victim].kill9();
    let first = eventually(
        "the failure delivered once",
        DEADLINE,
        || match deliveries(&log).as_slice() {
            [(id, member)] if *member == victim_name => Ok(*id),
            other => Err(format!("{other:?}")),
        },
    );
    // The flaky handler failed once, then succeeded on retry.
    let events = eventually("the retry to be recorded", DEADLINE, || {
        let events = cluster.agents[leader].api_json("/v1/events")?;
        let flaky = events
            .as_array()
            .and_then(|list| list.iter().find(|e| e["id"] == first))
            .map(|e| e["deliveries"]["flaky"].clone())
            .unwrap_or_default();
        if flaky["delivered"] == true && flaky["attempts"] == 2 {
            Ok(events)
        } else {
            Err(events.to_string())
        }
    });
    assert!(events.to_string().contains("member-failed"));

    // Kill the leader: the next one records its failure and delivers it, and never repeats
    // the first event.
    let old_leader_name = cluster.agents[leader].spec.name.clone();
    cluster.agents[leader].kill9();
    let alive: Vec<usize> = (0..5).filter(|&i| i != leader && i != victim).collect();
    leader_index(&cluster, &alive);
    eventually("the leader's failure delivered", DEADLINE, || {
        let lines = deliveries(&log);
        if lines.iter().any(|(_, m)| *m == old_leader_name) {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    // Observation window: a duplicate would appear within a few of the 500 ms delivery
    // rounds, so here waiting is the point.
    std::thread::sleep(Duration::from_secs(3));
    let lines = deliveries(&log);
    assert_eq!(lines.len(), 2, "each event exactly once: {lines:?}");
    assert_ne!(lines[0].0, lines[1].0, "distinct ids: {lines:?}");
    assert_eq!(lines[0].0, first, "the first event kept its id");
}
