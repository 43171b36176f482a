//! Helpers for tests of members' VMs on real agents: a VM's row and phase through the API,
//! its directory and console log on its host, the guest's boot counter, and the host loop's
//! pass counter from `/metrics`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::{TestAgent, eventually};

/// How long a VM has to reach a phase: the guest boots under TCG when KVM is unusable.
pub const BOOT: Duration = Duration::from_secs(120);

/// `/v1/vms/NAME` through this agent's API.
pub fn vm(agent: &TestAgent, name: &str) -> Result<Value, String> {
    agent.api_json(&format!("/v1/vms/{name}"))
}

/// Waits until the VM's shown phase (read through `agent`) is `phase`; returns its row.
pub fn wait_phase(agent: &TestAgent, name: &str, phase: &str) -> Value {
    eventually(&format!("{name} {phase}"), BOOT, || {
        let row = vm(agent, name)?;
        if row["shown_phase"] == phase {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    })
}

/// The VM's directory on `host`.
pub fn vm_dir(host: &TestAgent, id: &str) -> PathBuf {
    host.dir.join("data").join("vms").join(id)
}

/// The VM's serial console log on `host`, without the tty's carriage returns.
pub fn console(host: &TestAgent, id: &str) -> String {
    std::fs::read_to_string(vm_dir(host, id).join("console.log"))
        .unwrap_or_default()
        .replace('\r', "")
}

/// Every boot count the test guest printed (`HEARTH-GUEST-BOOTS n=N`), in order: the guest
/// keeps the counter on its own disk, so a blank disk says 1 again.
pub fn boots(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HEARTH-GUEST-BOOTS n="))
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Every tick the test guest printed (`HEARTH-GUEST-TICK n=N`, one a second from boot), in
/// order: a guest moved live ticks on from where it was, with no boot in between.
pub fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HEARTH-GUEST-TICK n="))
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Reconciliation passes this agent's host loop has completed.
pub fn passes(agent: &TestAgent) -> u64 {
    let (_, text) = agent.http_get("/metrics", false).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("hearth_reconcile_passes_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until this agent's host loop made `n` more passes than it had when called.
pub fn wait_passes(agent: &TestAgent, n: u64) {
    let then = passes(agent);
    eventually(&format!("{n} more reconciliation passes"), BOOT, || {
        let now = passes(agent);
        if now >= then + n {
            Ok(())
        } else {
            Err(format!("{now} passes"))
        }
    });
}

/// Waits until `n` workers registered their capacity.
pub fn wait_for_hosts(agent: &TestAgent, n: usize) {
    eventually(&format!("{n} workers registered"), BOOT, || {
        match agent.host_count()? {
            count if count == n => Ok(()),
            count => Err(format!("{count} hosts")),
        }
    });
}

/// Waits until `/v1/drift` (through `agent`) has entry `id` whose detail contains `detail`;
/// returns the entry.
pub fn wait_drift(agent: &TestAgent, id: &str, detail: &str) -> Value {
    eventually(&format!("drift entry {id}"), BOOT, || {
        let drift = agent.api_json("/v1/drift")?;
        drift
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["id"] == id && d["detail"].as_str().unwrap_or("").contains(detail))
            .cloned()
            .ok_or_else(|| drift.to_string())
    })
}
