//! Members' VMs with real agents and real QEMU (TCG when KVM is unusable) booting the tiny
//! test guest built by `scripts/build-test-guest.sh`: create → running → the guest's marker
//! and address on its console; a killed QEMU is restarted; an agent restart adopts the VM
//! (still one QEMU); IO limits through QMP; a QEMU hearth did not start is drift; delete
//! removes the disk and frees the address; VMs spread over two workers, and a console read
//! through another node's API.

use std::path::Path;

use hearth_testkit::vms::{BOOT, console, passes, vm, vm_dir, wait_for_hosts, wait_phase};
use hearth_testkit::{TestAgent, TestCluster, eventually, kill_pid, qemu_pids_under};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// One server+worker agent with the guest image and a pool declared.
fn single_worker() -> TestCluster {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    add_image_and_pool(agent);
    cluster
}

fn add_image_and_pool(agent: &TestAgent) {
    agent.add_test_guest(&hearth_testkit::test_guest());
}

#[test]
fn a_vm_boots_is_restarted_is_adopted_and_is_deleted() {
    let mut cluster = single_worker();
    let agent = &cluster.agents[0];
    let out = hearth_testkit::vms::create_tiny(
        agent,
        "web1",
        &[
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHearthTestKeyHearthTestKeyHearthTestKey alice@test",
            "--iops",
            "100",
        ],
    );
    assert!(out.contains("placed on n1"), "{out}");
    let row = wait_phase(agent, "web1", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let ip = row["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(ip, "192.0.2.2", "the first free address after the gateway");
    // The guest read its seed: hostname, address and key count on the console.
    eventually("the guest's marker", BOOT, || {
        let text = console(agent, &id);
        if text.contains("HEARTH-GUEST-READY")
            && text.contains(&format!("HEARTH-GUEST hostname=web1 ip={ip}/24 keys=1"))
        {
            Ok(())
        } else {
            Err(text)
        }
    });
    let pids = qemu_pids_under(&agent.dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let first = pids[0];

    // Its QEMU's CPU and memory on /metrics, by name and owner.
    let (_, metrics) = agent.http_get("/metrics", false).unwrap();
    let sample = |name: &str| {
        let series = format!("{name}{{vm=\"web1\",owner=\"alice\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert!(sample("hearth_vm_cpu_seconds_total").is_some(), "{metrics}");
    assert!(
        sample("hearth_vm_memory_bytes").unwrap_or(0) > 1 << 20,
        "{metrics}"
    );
    // Its guest's disk IO, from QMP query-blockstats: it read its disk for the marker of
    // its first boot and wrote it.
    eventually("the guest's disk IO on /metrics", BOOT, || {
        let (_, metrics) = agent.http_get("/metrics", false)?;
        let io = |direction: &str| {
            let series = format!(
                "hearth_vm_disk_bytes_total{{vm=\"web1\",owner=\"alice\",direction=\"{direction}\"}} "
            );
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if io("read") > 0 && io("write") > 0 {
            Ok(())
        } else {
            Err(metrics)
        }
    });

    // IO limits, read back through QMP by the CLI-independent path: the driver's own QMP.
    let limits = eventually("IO limits through QMP", BOOT, || {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let driver = hearth_qemu::driver::Driver::new(
            agent.dir.join("data").join("vms"),
            hearth_qemu::accel::Accel::Tcg,
            hearth_qemu::driver::Network::User,
        );
        rt.block_on(driver.io_limits(&id))
            .map_err(|e| e.to_string())
    });
    assert_eq!(limits.iops, Some(100));

    // Killed from outside: the reconciler starts it again.
    kill_pid(first);
    eventually(
        "a new QEMU",
        BOOT,
        || match qemu_pids_under(&agent.dir)[..] {
            [pid] if pid != first => Ok(pid),
            ref other => Err(format!("{other:?}")),
        },
    );
    wait_phase(agent, "web1", "running");
    let boots = |text: &str| text.matches("HEARTH-GUEST-READY").count();
    eventually("the guest booted a second time", BOOT, || {
        let text = console(agent, &id);
        if boots(&text) == 2 { Ok(()) } else { Err(text) }
    });
    // Read only once the guest has booted again: the new QEMU is up.
    let pids = qemu_pids_under(&agent.dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let second = pids[0];
    assert_ne!(second, first);

    // The agent dies and comes back: it adopts the VM; still exactly one QEMU.
    cluster.agents[0].kill9();
    assert_eq!(
        qemu_pids_under(&cluster.agents[0].dir),
        [second],
        "QEMU outlives the agent"
    );
    cluster.agents[0].restart();
    let agent = &cluster.agents[0];
    eventually(
        "three reconciliation passes after the restart",
        BOOT,
        || {
            let n = passes(agent);
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} passes"))
            }
        },
    );
    assert_eq!(
        qemu_pids_under(&agent.dir),
        [second],
        "adopted, not started twice"
    );
    assert_eq!(vm(agent, "web1").unwrap()["shown_phase"], "running");

    // Reboot: ACPI shutdown, then a fresh QEMU that boots the guest again.
    let before = boots(&console(agent, &id));
    let out = agent.cli(&["vm", "reboot", "web1"]);
    assert!(out.contains("asked to reboot"), "{out}");
    eventually("the guest booted again", BOOT, || {
        let text = console(agent, &id);
        match qemu_pids_under(&agent.dir)[..] {
            [pid] if pid != second && boots(&text) > before => Ok(()),
            ref other => Err(format!("{other:?}, {} boots", boots(&text))),
        }
    });
    eventually("the reboot recorded", BOOT, || {
        let row = vm(agent, "web1")?;
        if row["reboots_done"] == 1 && row["shown_phase"] == "running" && row["message"].is_null() {
            Ok(())
        } else {
            Err(row.to_string())
        }
    });

    // Delete: the process and the disk go, the address is free again.
    agent.cli(&["vm", "delete", "web1"]);
    eventually("web1 forgotten", BOOT, || match vm(agent, "web1") {
        Err(e) if e.contains("404") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert!(!vm_dir(agent, &id).exists(), "the disk is removed");
    assert!(qemu_pids_under(&agent.dir).is_empty());
    let pools = agent.api_json("/v1/pools").unwrap();
    assert_eq!(
        pools[0]["used"].as_array().map(Vec::len),
        Some(0),
        "{pools}"
    );
}

#[test]
fn a_qemu_hearth_did_not_start_is_drift() {
    let cluster = single_worker();
    let agent = &cluster.agents[0];
    let dir = agent.dir.join("data").join("vms").join("vm-999");
    std::fs::create_dir_all(&dir).unwrap();
    let qmp = dir.join("qmp.sock");
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,accel=tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .spawn()
        .expect("start qemu-system-x86_64");
    let entry = eventually("a drift entry for vm-999", BOOT, || {
        let drift = agent.api_json("/v1/drift")?;
        drift
            .as_array()
            .and_then(|d| d.iter().find(|e| e["vm"] == "vm-999").cloned())
            .ok_or_else(|| drift.to_string())
    });
    assert_eq!(entry["kind"], "unknown-vm", "{entry}");
    let out = agent.cli(&["drift"]);
    assert!(out.contains("vm-999"), "{out}");
    // One click: the fix stops the intruder, and its entry goes.
    let id = entry["id"].as_str().unwrap().to_owned();
    let out = agent.cli(&["fix", &id]);
    assert!(out.contains("fix asked"), "{out}");
    eventually("the foreign QEMU stopped", BOOT, || {
        match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    });
    eventually("the process's drift entry gone", BOOT, || {
        let drift = agent.api_json("/v1/drift")?;
        let left = drift
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["detail"].as_str().unwrap_or("").contains("process"))
            .count();
        if left == 0 {
            Ok(())
        } else {
            Err(drift.to_string())
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_dead_hosts_vm_is_lost_until_fenced_then_placed_elsewhere() {
    let mut cluster = TestCluster::start_with(bin(), 3, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 3\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 3);
    add_image_and_pool(agent);
    // Stopped VMs: placed and accounted for like any, with no guest to boot.
    agent.ensure_account("carol");
    for name in ["p", "q", "r"] {
        agent.cli(&[
            "vm",
            "create",
            name,
            "--image",
            "tiny",
            "--owner",
            "carol",
            "--memory-mib",
            "256",
            "--disk-gib",
            "1",
            "--stopped",
        ]);
    }
    // A VM on a host other than n1, whose API the test keeps using.
    let (name, dead) = eventually("a VM stopped on n2 or n3", BOOT, || {
        for name in ["p", "q", "r"] {
            let row = vm(agent, name)?;
            let host = row["host"].as_str().unwrap_or_default().to_owned();
            if row["shown_phase"] == "stopped" && host != "n1" && !host.is_empty() {
                return Ok((name, host));
            }
        }
        Err("none yet".into())
    });
    let index = cluster
        .agents
        .iter()
        .position(|a| a.spec.name == dead)
        .unwrap();
    cluster.agents[index].kill9();
    let agent = &cluster.agents[0];
    let row = eventually("the VM shows as lost", BOOT, || {
        let row = vm(agent, name)?;
        match row["shown_phase"].as_str() {
            Some("lost") => Ok(row),
            Some("stopped") => Err(row.to_string()),
            other => panic!("a dead host's VM must show lost, not {other:?}: {row}"),
        }
    });
    assert_eq!(row["host"], dead.as_str(), "not moved before it is fenced");
    // Still there several reconciliation passes later: no fence, no move.
    let then = passes(agent);
    eventually("three more passes", BOOT, || {
        let now = passes(agent);
        if now >= then + 3 {
            Ok(())
        } else {
            Err(format!("{now} passes"))
        }
    });
    let row = vm(agent, name).unwrap();
    assert_eq!(row["host"], dead.as_str(), "{row}");
    assert_eq!(row["shown_phase"], "lost", "{row}");

    agent.cli(&["node", "fence", &dead]);
    eventually("placed on a live host once fenced", BOOT, || {
        let row = vm(agent, name)?;
        let host = row["host"].as_str().unwrap_or_default();
        if !host.is_empty() && host != dead && row["shown_phase"] == "stopped" {
            Ok(())
        } else {
            Err(row.to_string())
        }
    });
}

#[test]
fn vms_spread_over_two_workers() {
    let cluster = TestCluster::start_with(bin(), 2, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 2\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\nstats_interval = \"200ms\"\n".into();
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 2);
    add_image_and_pool(agent);
    agent.ensure_account("bob");
    for name in ["a", "b"] {
        // Stopped: placed like any VM, but no guest boots, which keeps the test light.
        agent.cli(&[
            "vm",
            "create",
            name,
            "--image",
            "tiny",
            "--owner",
            "bob",
            "--memory-mib",
            "256",
            "--disk-gib",
            "1",
            "--stopped",
        ]);
    }
    let hosts = eventually("both placed and stopped", BOOT, || {
        let mut hosts = Vec::new();
        for name in ["a", "b"] {
            let row = vm(agent, name)?;
            if row["shown_phase"] != "stopped" {
                return Err(row.to_string());
            }
            hosts.push(row["host"].as_str().unwrap_or_default().to_owned());
        }
        Ok(hosts)
    });
    assert_ne!(hosts[0], hosts[1], "spread: {hosts:?}");

    // The console of a VM on the other worker, read through this node's API: the request
    // crosses the cluster RPC to its host.
    let remote = if hosts[0] == "n1" { "b" } else { "a" };
    agent.cli(&["vm", "start", remote]);
    eventually("the remote guest's marker through n1", BOOT, || {
        let out = agent.cli(&["vm", "console", remote]);
        if out.contains(&format!("HEARTH-GUEST hostname={remote} "))
            && out.contains("HEARTH-GUEST-READY")
        {
            Ok(())
        } else {
            Err(out)
        }
    });
    // Its load, sampled by its host, read through this node's API over the same RPC.
    let (status, body) = agent
        .http_get(&format!("/v1/vms/{remote}/stats"), true)
        .unwrap();
    assert_eq!(status, 200, "{body}");
    eventually("the remote guest's load", BOOT, || {
        let stats = agent.api_json(&format!("/v1/vms/{remote}/stats"))?;
        let remote_host = if remote == "a" { &hosts[0] } else { &hosts[1] };
        let buckets = stats["day"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let sum = |field: &str| {
            buckets
                .iter()
                .map(|b| b[field].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        if stats["host"] == remote_host.as_str()
            && stats["vcpus"].as_u64().is_some_and(|n| n >= 1)
            && sum("cpu_ms") > 0
            && sum("covered_ms") > 0
            && sum("read_bytes") + sum("written_bytes") > 0
            && stats["week"]["buckets"]
                .as_array()
                .is_some_and(|b| !b.is_empty())
        {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    });
    let table = agent.cli(&["vm", "load", remote]);
    assert!(
        table.starts_with("FROM") && table.contains(" UTC") && table.contains(" %"),
        "{table}"
    );
    // Each worker renews its lease, and says so.
    eventually("the lease shown in /metrics", BOOT, || {
        match agent.http_get("/metrics", false)? {
            (200, text) if text.contains("\nhearth_worker_lease_valid 1\n") => Ok(()),
            (status, text) => Err(format!(
                "{status}: {}",
                text.lines()
                    .filter(|l| l.contains("lease"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    });
    // An unknown VM has none.
    let (status, _) = agent.http_get("/v1/vms/no-such-vm/stats", true).unwrap();
    assert_eq!(status, 404);
}
