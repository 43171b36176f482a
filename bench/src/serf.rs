//! A HashiCorp Serf cluster with default settings, one `serf agent` per loopback address,
//! observed through `serf members -format json` as its users would.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::TempDir;

use crate::procs::{ProcessGuard, poll_until};

const SERF_PORT: u16 = 7946;
const RPC_PORT: u16 = 7373;

struct SerfNode {
    name: String,
    ip: Ipv4Addr,
    process: Option<ProcessGuard>,
}

/// Node `idx` is `n{idx+1}` on 127.a.b.{idx+1}; every node joins through the first.
pub struct SerfCluster {
    nodes: Vec<SerfNode>,
    dir: TempDir,
}

impl SerfCluster {
    /// Starts `n_nodes` agents on a fresh loopback block, the seed first.
    pub fn start(n_nodes: usize) -> Result<SerfCluster> {
        let ip = hearth_testkit::loopback_block();
        let mut cluster = SerfCluster {
            nodes: (0..n_nodes)
                .map(|idx| SerfNode {
                    name: format!("n{}", idx + 1),
                    ip: ip(idx as u8 + 1),
                    process: None,
                })
                .collect(),
            dir: TempDir::new("bench-serf"),
        };
        for idx in 0..n_nodes {
            cluster.spawn(idx)?;
        }
        Ok(cluster)
    }

    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn pid(&self, idx: usize) -> Option<u32> {
        self.nodes[idx].process.as_ref().map(ProcessGuard::pid)
    }

    fn rpc_addr(&self, idx: usize) -> SocketAddr {
        SocketAddr::from((self.nodes[idx].ip, RPC_PORT))
    }

    fn log_path(&self, idx: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.nodes[idx].name))
    }

    /// Starts node `idx` (again) and waits until its RPC answers.
    pub fn spawn(&mut self, idx: usize) -> Result<()> {
        if self.nodes[idx].process.is_some() {
            bail!("serf {} is still running", self.nodes[idx].name);
        }
        let node = &self.nodes[idx];
        let mut command = Command::new("serf");
        command
            .arg("agent")
            .arg(format!("-node={}", node.name))
            .arg(format!("-bind={}:{SERF_PORT}", node.ip))
            .arg(format!("-rpc-addr={}", self.rpc_addr(idx)));
        if idx != 0 {
            command.arg(format!("-join={}:{SERF_PORT}", self.nodes[0].ip));
        }
        let label = format!("serf {}", node.name);
        let process = ProcessGuard::spawn(&label, command, Some(&self.log_path(idx)))?;
        self.nodes[idx].process = Some(process);
        poll_until(
            &format!("{label} RPC to answer"),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                if let Some(process) = self.nodes[idx].process.as_mut() {
                    process.check_running()?;
                }
                self.members(idx)
            },
        )
        .map(|_| ())
    }

    /// SIGKILLs node `idx`; returns the moment just before the signal was sent.
    pub fn kill9(&mut self, idx: usize) -> Instant {
        let killed_at = Instant::now();
        // Dropping the guard sends SIGKILL and reaps the process.
        self.nodes[idx].process = None;
        killed_at
    }

    /// name -> status (`alive`, `failed`, `left`, ...) as node `idx` sees it.
    pub fn members(&self, idx: usize) -> Result<Vec<(String, String)>> {
        let output = members_command(self.rpc_addr(idx))
            .output()
            .context("run serf members")?;
        parse_members(&output.stdout)
    }

    /// Starts `serf members` on node `idx` without waiting, for polling several at once.
    pub fn spawn_members(&self, idx: usize) -> Result<Child> {
        members_command(self.rpc_addr(idx))
            .spawn()
            .context("run serf members")
    }

    /// Waits until every running node sees every node `alive`.
    pub fn wait_all_alive(&self, timeout: Duration) -> Result<()> {
        let n_nodes = self.nodes.len();
        for idx in (0..n_nodes).filter(|&idx| self.nodes[idx].process.is_some()) {
            poll_until(
                &format!("serf {} to see {n_nodes} alive", self.nodes[idx].name),
                timeout,
                Duration::from_millis(100),
                || {
                    let members = self.members(idx)?;
                    let alive = members.iter().filter(|(_, s)| s == "alive").count();
                    if alive == n_nodes {
                        Ok(())
                    } else {
                        bail!("{members:?}")
                    }
                },
            )?;
        }
        Ok(())
    }

    pub fn name(&self, idx: usize) -> &str {
        &self.nodes[idx].name
    }
}

fn members_command(rpc: SocketAddr) -> Command {
    let mut command = Command::new("serf");
    command
        .args(["members", "-format=json"])
        .arg(format!("-rpc-addr={rpc}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Reads `serf members -format json` output into (name, status) pairs.
pub fn parse_members(stdout: &[u8]) -> Result<Vec<(String, String)>> {
    let value: serde_json::Value =
        serde_json::from_slice(stdout).context("serf members printed no JSON")?;
    let rows = value["members"]
        .as_array()
        .context("serf members: no members array")?;
    Ok(rows
        .iter()
        .map(|row| {
            let field = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
            (field("name"), field("status"))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serf_members_json() {
        let out = br#"{"members":[{"name":"n2","addr":"127.1.1.2:7946","status":"failed"},
                                   {"name":"n1","addr":"127.1.1.1:7946","status":"alive"}]}"#;
        let members = parse_members(out).unwrap();
        assert_eq!(
            members,
            [
                ("n2".into(), "failed".into()),
                ("n1".into(), "alive".into())
            ]
        );
    }
}
