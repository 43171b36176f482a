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

/// Three server+worker agents with the guest image and a pool `lan` declared. Live moves are
/// slowed down (8 MiB/s) so that a test can act while one is under way; leases last 6 s, so
/// a VM with a replica is restarted within seconds when its host dies. A cluster handler
/// logs every VM event to [`handler_log`].
pub fn three_workers(bin: &std::path::Path) -> crate::TestCluster {
    three_workers_with(bin, "")
}

/// [`three_workers`], each with `extra` at the end of its config (a `[ceph]` section, say).
pub fn three_workers_with(bin: &std::path::Path, extra: &str) -> crate::TestCluster {
    let mut cluster = crate::TestCluster::start(bin, 0, |_| String::new());
    let log = handler_log(cluster.root.path());
    for idx in 0..3 {
        let mut spec = cluster.spec(idx, format!("{}{extra}", worker_config(&log)));
        spec.roles = WORKER_ROLES.into();
        cluster.add(spec);
    }
    wait_for_hosts(&cluster.agents[0], 3);
    cluster.agents[0].add_test_guest(&crate::test_guest());
    cluster
}

/// [`three_workers`] in the namespaces of `lab` (three nodes), with their files under `root`.
pub fn three_workers_in_lab(
    bin: &std::path::Path,
    root: &std::path::Path,
    lab: &crate::netns::NetnsLab,
) -> Vec<TestAgent> {
    let config = worker_config(&handler_log(root));
    let agents = crate::start_in_lab(bin, root, lab, "test", WORKER_ROLES, &config);
    wait_for_hosts(&agents[0], 3);
    agents[0].add_test_guest(&crate::test_guest());
    agents
}

const WORKER_ROLES: &str = "[\"server\", \"worker\"]";

/// The config of a [`three_workers`] agent, its cluster handler appending to `log`.
fn worker_config(log: &std::path::Path) -> String {
    format!(
        "[state]\nbootstrap_expect = 3\n[compute]\nvcpus = 4\nmemory_mib = 2048\n\
         disk_gib = 20\nmigration_mib_per_sec = 8\nlease_secs = 6\n\n\
         [[handler]]\nscope = \"cluster\"\nname = \"log\"\n\
         events = [\"replica-degraded\", \"replica-in-sync\", \"vm-failover\"]\n\
         command = ['sh', '-c', 'echo \"$HEARTH_EVENT_ID $HEARTH_EVENT vm=$HEARTH_VM \
         from=$HEARTH_FAILOVER_FROM on=$HEARTH_MEMBER_NAME\" >> {}']\n",
        log.display()
    )
}

/// Where the cluster handler of [`three_workers`] with its files under `root` (the
/// cluster's `root`) appends one line per VM event it runs for: `ID KIND vm=NAME from=HOST
/// on=HOST`.
pub fn handler_log(root: &std::path::Path) -> std::path::PathBuf {
    root.join("handler-events.log")
}

/// `hearth vm create NAME` of the test guest (image `tiny`, owner alice, made an account if
/// need be, 256 MiB, 1 GiB,
/// an address from pool `lan`) through `agent`, with `extra` arguments; returns the CLI's
/// output.
pub fn create_tiny(agent: &TestAgent, name: &str, extra: &[&str]) -> String {
    create_from(agent, name, "tiny", extra)
}

/// Like [`create_tiny`], from image `image`.
pub fn create_from(agent: &TestAgent, name: &str, image: &str, extra: &[&str]) -> String {
    let mut args = vec!["--pool", "lan"];
    args.extend_from_slice(extra);
    create_with(agent, name, image, &args)
}

/// Like [`create_from`], with no address unless `extra` names a pool.
pub fn create_with(agent: &TestAgent, name: &str, image: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "vm",
        "create",
        name,
        "--image",
        image,
        "--owner",
        "alice",
        "--memory-mib",
        "256",
        "--disk-gib",
        "1",
    ];
    args.extend_from_slice(extra);
    agent.ensure_account("alice");
    agent.cli(&args)
}

/// The tick the guest found on its disk at boot number `boot + 1` (`HEARTH-GUEST-LAST-TICK
/// boot=N n=T`, printed by the boot after boot N), if the console has it.
pub fn last_tick_at_boot(console: &str, boot: u64) -> Option<u64> {
    let prefix = format!("HEARTH-GUEST-LAST-TICK boot={boot} n=");
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
}

/// The tick the test guest last wrote to the disk in the qcow2 file `disk` (`HEARTH-TICK N`
/// at 2 MiB), read with `qemu-io` sharing the file with whoever has it open.
pub fn disk_tick(disk: &std::path::Path) -> Result<u64, String> {
    disk_tick_as(disk, "qcow2")
}

/// [`disk_tick`] of an image in `format` (`qcow2`, `raw`).
pub fn disk_tick_as(disk: &std::path::Path, format: &str) -> Result<u64, String> {
    let output = std::process::Command::new("qemu-io")
        .args(["-r", "-U", "-f", format, "-c", "read -v 2097152 32"])
        .arg(disk)
        .output()
        .map_err(|e| format!("qemu-io: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `-v` dumps 16 bytes a line: `OFFSET:  HEX HEX ...  TEXT`; the hex is read back.
    let bytes: Vec<u8> = text
        .lines()
        .filter(|_| output.status.success())
        .filter_map(|l| l.split_once(":  ")?.1.split("  ").next())
        .flat_map(|hex| {
            hex.split(' ')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    String::from_utf8_lossy(&bytes)
        .strip_prefix("HEARTH-TICK ")
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .ok_or_else(|| format!("no tick in {}: {text}", disk.display()))
}

/// Waits for the guest's second boot on `host` and checks that the disk it booted from held
/// every tick the console printed before (`printed`): returns the last tick found there.
pub fn second_boot_keeps_ticks(host: &TestAgent, id: &str, printed: u64) -> u64 {
    let text = crate::eventually("the guest's second boot", BOOT, || {
        let text = console(host, id);
        let read = boots(&text) == [2] && last_tick_at_boot(&text, 1).is_some();
        read.then_some(text.clone()).ok_or(text)
    });
    let found = last_tick_at_boot(&text, 1).expect("a last tick");
    assert!(
        found >= printed,
        "the console printed tick {printed}, the disk has {found}"
    );
    found
}
