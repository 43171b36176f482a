//! Hearth clusters for the benchmarks, started through the testkit: every node runs the
//! service `www` at its own made-up address (never contacted: there is no check).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use hearth_testkit::{TestAgent, TestCluster, ZONE};

use crate::procs::poll_until;

/// `www.coop.test.`
pub fn www_name() -> String {
    format!("www.{ZONE}")
}

/// The address node `idx` gives its `www` instance: 10.99.0.{idx+1}. DNS only hands it out.
pub fn www_address(idx: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, idx as u8 + 1)
}

/// The `[[service]]` table of node `idx`.
pub fn www_service(idx: usize) -> String {
    format!(
        "\n[[service]]\nname = \"www\"\naddress = \"{}\"\n",
        www_address(idx)
    )
}

/// Starts `n_nodes` agents with `www` and `extra(idx)`, then waits for full convergence.
pub fn start_cluster(
    bin: &Path,
    n_nodes: usize,
    extra: impl Fn(usize) -> String,
) -> Result<TestCluster> {
    if !bin.is_file() {
        bail!(
            "no hearth binary at {}: run `cargo build --release -p hearth` or pass --hearth",
            bin.display()
        );
    }
    let cluster = TestCluster::start(bin, n_nodes, |idx| www_service(idx) + &extra(idx));
    wait_converged(&cluster, Duration::from_secs(60))?;
    Ok(cluster)
}

/// Waits until every running agent sees all nodes `alive` and answers `www` with every
/// node's address.
pub fn wait_converged(cluster: &TestCluster, timeout: Duration) -> Result<()> {
    let n_nodes = cluster.agents.len();
    let mut want_names: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
    want_names.sort();
    let want_www: Vec<Ipv4Addr> = (0..n_nodes).map(www_address).collect();
    for agent in &cluster.agents {
        if agent.pid().is_none() {
            continue;
        }
        poll_until(
            &format!("{} to see every node alive", agent.spec.name),
            timeout,
            Duration::from_millis(50),
            || converged(agent, &want_names, &want_www),
        )?;
    }
    Ok(())
}

fn converged(agent: &TestAgent, want_names: &[String], want_www: &[Ipv4Addr]) -> Result<()> {
    let mut members = agent.member_states().map_err(|e| anyhow!(e))?;
    members.sort();
    let names: Vec<&String> = members.iter().map(|(name, _)| name).collect();
    if names != want_names.iter().collect::<Vec<_>>()
        || members.iter().any(|(_, state)| state != "alive")
    {
        bail!("members {members:?}");
    }
    let www = www_answer(agent.dns_addr())?;
    if www != want_www {
        bail!("www answers {www:?}");
    }
    Ok(())
}

/// The sorted A records of `www` from one server, with a real `dig` (not for hot loops).
pub fn www_answer(server: SocketAddr) -> Result<Vec<Ipv4Addr>> {
    let lines = hearth_testkit::dig_short(server, &www_name(), "A").map_err(|e| anyhow!(e))?;
    let mut addresses = lines
        .iter()
        .map(|line| line.parse::<Ipv4Addr>())
        .collect::<Result<Vec<_>, _>>()?;
    addresses.sort();
    Ok(addresses)
}

/// PIDs of the running agents.
pub fn pids(cluster: &TestCluster) -> Vec<u32> {
    cluster.agents.iter().filter_map(TestAgent::pid).collect()
}

/// How many times the agent has logged a change of its local health score so far (the
/// testkit runs agents with `hearth_membership=debug`): Lifeguard stretching its suspicion
/// timeout because its own timers fired late.
pub fn health_changes(agent: &TestAgent) -> usize {
    std::fs::read_to_string(agent.log_path())
        .unwrap_or_default()
        .matches("local health changed")
        .count()
}
