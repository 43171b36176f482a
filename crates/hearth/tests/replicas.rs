//! Replicated disks (`replicas = 2`, `docs/replicas.md`) with real agents, real QEMU and
//! `qemu-storage-daemon`, and the test guest, which writes a tick to its disk each second
//! (synchronously) and prints it after the write completed:
//!
//! - a VM asking for two copies gets a replica on another worker, which reaches `in-sync`;
//!   from then on the replica's file holds every tick the console printed (a write the
//!   guest saw complete is on both hosts); `vm show` and `/metrics` say so;
//! - a reboot makes the replica afresh (recorded degraded before the new QEMU runs);
//! - the replica's host dies (`kill -9` of its agent and its storage daemon): the VM runs on
//!   in the same QEMU with no boot, and a new replica is made on the third worker and gets
//!   in sync; the dead host, back, removes its stale copy;
//! - a live move drops the replica first, moves the VM without a boot, and its new home
//!   gets a fresh replica in sync;
//! - deleting the VM removes its replica;
//! - the death of a VM's host (`kill -9` of its agent and its QEMU): the replica host waits
//!   out the dead host's lease, restarts the VM from its copy with the same address, and the
//!   guest's next boot finds every tick it printed before; a monitor sampling QEMU processes
//!   on all hosts for the whole test never sees two; a fresh replica is made on the third
//!   worker; the dead host, back, archives its stale copy and starts nothing;
//! - a host cut off from the group's quorum (the two other agents frozen with SIGSTOP)
//!   kills its VM with replicas itself within its lease and starts nothing without one;
//!   when the group is back the VM runs again exactly once, at its host or on its replica
//!   host (whichever the log orders first), on its own disk;
//! - a host cut off by a network partition (its link to the others down, in network
//!   namespaces this test creates) kills its VM's QEMU before its replica host restarts the
//!   VM (as both agents' logs order it; the QEMU monitor never sees two); the replica host
//!   finds the cut-off home's connection to its export left over (the home no longer
//!   answers), restarts the VM from its copy with every tick, and the healed home archives
//!   its stale copy and starts nothing;
//! - a VM with two copies is backed up while it runs, from its replica by the replica's
//!   host (QEMU lets no backup read a disk its mirror holds), with no reboot and every tick
//!   the console printed before; restored, its copy goes, it boots on the backup's disk,
//!   and a fresh copy of the restored disk gets in sync.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::vms::{
    BOOT, boots, console, create_tiny, disk_tick, handler_log, last_tick_at_boot,
    second_boot_keeps_ticks, three_workers, three_workers_in_lab, ticks, vm, wait_phase,
};
use hearth_testkit::{TempDir, TestAgent, TestCluster, eventually, kill_pid, qemu_pids_under};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn index_of(cluster: &TestCluster, host: &Value) -> usize {
    cluster
        .agents
        .iter()
        .position(|a| *host == a.spec.name.as_str())
        .unwrap_or_else(|| panic!("not a known host: {host}"))
}

/// The replica copy of `id` on `host`.
fn replica_dir(host: &TestAgent, id: &str) -> PathBuf {
    host.dir
        .join("data")
        .join("vms")
        .join(format!("{id}.replica"))
}

/// The pid of the storage daemon exporting `id`'s replica on `host`, if it runs.
fn daemon_pid(host: &TestAgent, id: &str) -> Option<u32> {
    let text = std::fs::read_to_string(replica_dir(host, id).join("qsd.pid")).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("qemu-storage-daemon")
        .then_some(pid)
}

/// Waits until the VM's replica is `in-sync` on a host other than `not_on`; returns its
/// row, and collects every replica state seen on the way into `seen`.
fn wait_in_sync(agent: &TestAgent, name: &str, not_on: &[&Value], seen: &mut Vec<String>) -> Value {
    eventually(&format!("{name}'s replica in sync"), BOOT, || {
        let row = vm(agent, name)?;
        let r = &row["replica"];
        let state = format!("{}:{}", r["host"], r["state"]);
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if r["state"] == "in-sync" && !not_on.contains(&&r["host"]) {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    })
}

/// Every tick the console printed is on the replica's copy: the copy's last tick is at
/// least the console's, read before it.
fn replica_holds_the_ticks(home: &TestAgent, replica: &TestAgent, id: &str) {
    for _ in 0..3 {
        let printed = *ticks(&console(home, id)).last().unwrap_or(&0);
        let copy = replica_dir(replica, id).join("disk.qcow2");
        let on_copy = eventually("a tick on the replica", Duration::from_secs(30), || {
            disk_tick(&copy)
        });
        assert!(
            on_copy >= printed,
            "the replica's last tick {on_copy} is behind the console's {printed}"
        );
        let next = printed + 1;
        eventually(
            "the guest ticks on",
            Duration::from_secs(30),
            || match ticks(&console(home, id)).last() {
                Some(&t) if t >= next => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

#[test]
fn a_vm_with_two_copies_keeps_one_in_sync_elsewhere_and_makes_it_again_when_lost() {
    let mut cluster = three_workers(bin());
    let a = &cluster.agents[0];
    create_tiny(a, "db2", &["--replicas", "2"]);
    let row = wait_phase(a, "db2", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let h = index_of(&cluster, &row["host"]);
    let mut seen = Vec::new();
    let row = wait_in_sync(a, "db2", &[&row["host"]], &mut seen);
    let r = index_of(&cluster, &row["replica"]["host"]);
    assert_ne!(r, h, "never both copies on one host: {row}");
    let third = 3 - h - r;
    let (home, replica) = (&cluster.agents[h], &cluster.agents[r]);
    assert!(
        daemon_pid(replica, &id).is_some(),
        "a storage daemon exports the copy"
    );
    assert!(!replica_dir(&cluster.agents[third], &id).exists());
    eventually("the guest ready", BOOT, || {
        let text = console(home, &id);
        (boots(&text) == [1] && !ticks(&text).is_empty())
            .then_some(())
            .ok_or(text)
    });
    replica_holds_the_ticks(home, replica, &id);
    let shown = a.cli(&["vm", "show", "db2"]);
    assert!(
        shown.contains(&format!("replica: on {}, in-sync", replica.spec.name)),
        "{shown}"
    );
    let (_, metrics) = a.http_get("/metrics", false).unwrap();
    assert!(
        metrics.contains("hearth_vm_replicas{state=\"in-sync\"} 1"),
        "{metrics}"
    );
    let qemu = qemu_pids_under(&home.dir);
    assert_eq!(qemu.len(), 1, "{qemu:?}");

    // A reboot: the new QEMU writes without the old mirror, so the replica is recorded
    // degraded before it starts, and made afresh.
    let since = row["replica"]["since"].as_u64().unwrap();
    a.cli(&["vm", "reboot", "db2"]);
    eventually("the guest rebooted", BOOT, || {
        let text = console(home, &id);
        (boots(&text) == [1, 2]).then_some(()).ok_or(text)
    });
    let row = eventually("a fresh replica in sync", BOOT, || {
        let row = vm(a, "db2")?;
        let fresh = row["replica"]["since"].as_u64().unwrap_or(0) > since;
        if fresh && row["replica"]["state"] == "in-sync" {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    });
    let r = index_of(&cluster, &row["replica"]["host"]);
    assert_ne!(r, h, "{row}");
    let third = 3 - h - r;
    let qemu = qemu_pids_under(&cluster.agents[h].dir);
    replica_holds_the_ticks(&cluster.agents[h], &cluster.agents[r], &id);

    // The replica's host dies: its agent and its storage daemon.
    let daemon = daemon_pid(&cluster.agents[r], &id).expect("the replica's daemon");
    let lost_host = row["replica"]["host"].clone();
    cluster.agents[r].kill9();
    kill_pid(daemon);
    let mut seen = Vec::new();
    let row = wait_in_sync(
        &cluster.agents[h],
        "db2",
        &[&row["host"], &lost_host],
        &mut seen,
    );
    assert_eq!(
        index_of(&cluster, &row["replica"]["host"]),
        third,
        "{row} after {seen:?}"
    );
    let home_log = std::fs::read_to_string(cluster.agents[h].log_path()).unwrap_or_default();
    assert!(
        seen.iter().any(|s| s.contains("degraded")) || home_log.contains("replica degraded"),
        "the lost replica was seen degraded: {seen:?}"
    );
    // A cluster handler ran for the copy that degraded and for the fresh one.
    handler_ran(
        cluster.root.path(),
        &["replica-degraded vm=db2", "replica-in-sync vm=db2"],
    );
    let home = &cluster.agents[h];
    assert_eq!(qemu_pids_under(&home.dir), qemu, "the same QEMU ran on");
    assert_eq!(boots(&console(home, &id)), [1, 2], "no boot");
    replica_holds_the_ticks(home, &cluster.agents[third], &id);

    // The dead host comes back: its copy is no replica's any more, and goes.
    cluster.agents[r].restart();
    eventually("the stale copy removed", BOOT, || {
        let dir = replica_dir(&cluster.agents[r], &id);
        (!dir.exists())
            .then_some(())
            .ok_or(dir.display().to_string())
    });

    // A live move: the replica goes first (QEMU mirrors into one target at a time), the VM
    // moves without a boot, and its new home gets a fresh replica.
    let target = cluster.agents[r].spec.name.clone();
    let out = cluster.agents[h].cli(&["vm", "migrate", "db2", "--to", &target]);
    assert!(out.contains(&target), "{out}");
    let row = wait_in_sync(
        &cluster.agents[h],
        "db2",
        &[&Value::from(target.as_str())],
        &mut seen,
    );
    assert_eq!(row["host"], target.as_str(), "{row}");
    let (home, copy) = (r, index_of(&cluster, &row["replica"]["host"]));
    // The target's console has what the guest printed since it came in: ticks, no boot.
    eventually("the guest ticks on at its new home", BOOT, || {
        let text = console(&cluster.agents[home], &id);
        (!ticks(&text).is_empty()).then_some(()).ok_or(text)
    });
    assert!(
        boots(&console(&cluster.agents[home], &id)).is_empty(),
        "moved live, no boot"
    );
    replica_holds_the_ticks(&cluster.agents[home], &cluster.agents[copy], &id);

    // Deleting the VM removes its replica too.
    cluster.agents[h].cli(&["vm", "delete", "db2"]);
    eventually("the VM and its replica gone", BOOT, || {
        let gone = vm(&cluster.agents[h], "db2").is_err()
            && !replica_dir(&cluster.agents[copy], &id).exists()
            && daemon_pid(&cluster.agents[copy], &id).is_none();
        gone.then_some(()).ok_or("still there".to_owned())
    });
    for agent in &cluster.agents {
        assert!(
            qemu_pids_under(&agent.dir).is_empty(),
            "{}",
            agent.spec.name
        );
    }
}

/// Waits until `host` has archived a copy of VM `id` (a stale one, never started).
fn wait_archived(host: &TestAgent, id: &str) {
    let archive = host.dir.join("data").join("vms-archive");
    eventually("the stale copy archived", BOOT, || {
        let archived = std::fs::read_dir(&archive)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(id))
            })
            .unwrap_or(false);
        archived
            .then_some(())
            .ok_or(format!("nothing in {}", archive.display()))
    });
}

/// Waits until the cluster handler of the test cluster logged a line holding each of `want`.
fn handler_ran(root: &Path, want: &[&str]) {
    let log = handler_log(root);
    eventually("the cluster handler ran", BOOT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all = want.iter().all(|w| text.lines().any(|l| l.contains(w)));
        all.then_some(()).ok_or(text)
    });
}

/// Samples the QEMU processes under every agent directory of `dirs` every 50 ms until
/// stopped; returns the most hosts seen running one at once. (Within a host, a second QEMU
/// on the same pidfile cannot start: what must never happen is a QEMU on two hosts.)
fn qemu_monitor(
    dirs: Vec<PathBuf>,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<usize>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut most = 0;
        while !flag.load(Ordering::Relaxed) {
            let running: Vec<&PathBuf> = dirs
                .iter()
                .filter(|d| !qemu_pids_under(d).is_empty())
                .collect();
            if running.len() > 1 {
                eprintln!("QEMU on several hosts at once: {running:?}");
            }
            most = most.max(running.len());
            std::thread::sleep(Duration::from_millis(50));
        }
        most
    });
    (stop, thread)
}

#[test]
fn a_dead_hosts_vm_restarts_from_its_in_sync_replica_with_its_data_and_never_twice() {
    let mut cluster = three_workers(bin());
    let a = &cluster.agents[0];
    // Two copies as the rule of a pool the VM takes an address from.
    a.cli(&["pool", "add", "ha", "198.51.100.0/24", "--replicas", "2"]);
    create_tiny(a, "db3", &["--pool", "ha"]);
    let row = wait_phase(a, "db3", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let ips = row["ips"].clone();
    let h = index_of(&cluster, &row["host"]);
    let row = wait_in_sync(a, "db3", &[&row["host"]], &mut Vec::new());
    let r = index_of(&cluster, &row["replica"]["host"]);
    let third = 3 - h - r;
    let dirs = cluster.agents.iter().map(|a| a.dir.clone()).collect();
    let (stop, monitor) = qemu_monitor(dirs);
    // A few ticks on the disk, then the host dies: its agent and its QEMU.
    let printed = eventually("the guest ticks", BOOT, || {
        let text = console(&cluster.agents[h], &id);
        match ticks(&text).last() {
            Some(&t) if t >= 3 && boots(&text) == [1] => Ok(t),
            _ => Err(text),
        }
    });
    let qemu = qemu_pids_under(&cluster.agents[h].dir);
    cluster.agents[h].kill9();
    for pid in qemu {
        kill_pid(pid);
    }
    let printed = printed.max(*ticks(&console(&cluster.agents[h], &id)).last().unwrap());
    let died = std::time::Instant::now();

    // The replica host restarts it from its copy: same addresses, boot 2, every tick there.
    let observer = &cluster.agents[third];
    let row = eventually("db3 running on its replica host", BOOT, || {
        let row = vm(observer, "db3")?;
        let moved = row["host"] == cluster.agents[r].spec.name.as_str();
        if moved && row["shown_phase"] == "running" {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    });
    let text = eventually("the guest's second boot", BOOT, || {
        let text = console(&cluster.agents[r], &id);
        let read = boots(&text) == [2] && last_tick_at_boot(&text, 1).is_some();
        read.then_some(text.clone()).ok_or(text)
    });
    eprintln!(
        "dead host to VM booting on its replica host: {:?}",
        died.elapsed()
    );
    assert_eq!(row["ips"], ips, "{row}");
    assert_eq!(row["disk"]["host"], cluster.agents[r].spec.name.as_str());
    let found = last_tick_at_boot(&text, 1).unwrap_or_else(|| panic!("no last tick: {text}"));
    assert!(
        found >= printed,
        "the console printed tick {printed}, the disk has {found}"
    );
    // The copy left on the dead host is superseded: an older generation, never started.
    assert_eq!(
        row["moved_from"]["host"],
        cluster.agents[h].spec.name.as_str(),
        "{row}"
    );
    assert_eq!(row["disk"]["generation"], 2, "{row}");

    let line = format!(
        "vm-failover vm=db3 from={} on={}",
        cluster.agents[h].spec.name, cluster.agents[r].spec.name
    );
    handler_ran(cluster.root.path(), &[&line]);

    // A fresh replica on the third worker, the only other one up.
    let row = wait_in_sync(observer, "db3", &[&row["host"]], &mut Vec::new());
    assert_eq!(index_of(&cluster, &row["replica"]["host"]), third, "{row}");

    // The dead host comes back: its copy is stale (an older generation), archived; it
    // starts nothing.
    cluster.agents[h].restart();
    wait_archived(&cluster.agents[h], &id);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = monitor.join().unwrap();
    assert_eq!(most, 1, "hosts running the VM at once");
    assert!(qemu_pids_under(&cluster.agents[h].dir).is_empty());
}

#[test]
fn a_host_that_loses_the_group_kills_its_replicated_vm_and_it_runs_once_afterwards() {
    let cluster = three_workers(bin());
    let a = &cluster.agents[0];
    create_tiny(a, "db4", &["--replicas", "2"]);
    let row = wait_phase(a, "db4", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let h = index_of(&cluster, &row["host"]);
    wait_in_sync(a, "db4", &[&row["host"]], &mut Vec::new());
    eventually("the guest up", BOOT, || {
        let text = console(&cluster.agents[h], &id);
        (boots(&text) == [1]).then_some(()).ok_or(text)
    });
    let dirs = cluster.agents.iter().map(|a| a.dir.clone()).collect();
    let (stop, monitor) = qemu_monitor(dirs);

    // The two other agents freeze: the VM's host cannot reach the group's quorum, so it
    // cannot renew its lease, and within the lease (6 s) it kills the VM's QEMU itself.
    let others: Vec<usize> = (0..3).filter(|i| *i != h).collect();
    for &o in &others {
        cluster.agents[o].signal("STOP");
    }
    let home = &cluster.agents[h];
    eventually(
        "the VM killed by its own host",
        BOOT,
        || match qemu_pids_under(&home.dir)[..] {
            [] => Ok(()),
            ref pids => Err(format!("{pids:?}")),
        },
    );
    eventually("the host says why", BOOT, || {
        let log = std::fs::read_to_string(home.log_path()).unwrap_or_default();
        log.contains("lease lapsed").then_some(()).ok_or(log)
    });
    // Without a lease it starts nothing: a few passes later it still runs nothing.
    hearth_testkit::vms::wait_passes(home, 3);
    assert!(
        qemu_pids_under(&home.dir).is_empty(),
        "started without a lease"
    );

    // The group is back: the VM runs again, once: at its host (which renewed first) or on
    // its replica host (whose wait ran out while it was frozen); either way from its own
    // disk, its guest's second boot.
    for &o in &others {
        cluster.agents[o].signal("CONT");
    }
    let now = eventually("the guest's second boot", BOOT, || {
        let found = (0..3).find(|&i| {
            let text = console(&cluster.agents[i], &id);
            let second = if i == h { vec![1, 2] } else { vec![2] };
            boots(&text) == second && !qemu_pids_under(&cluster.agents[i].dir).is_empty()
        });
        found.ok_or_else(|| "no second boot yet".to_owned())
    });
    let name = cluster.agents[now].spec.name.clone();
    eventually("the cluster says where it runs", BOOT, || {
        let row = vm(&cluster.agents[now], "db4")?;
        let there = row["host"] == name.as_str() && row["shown_phase"] == "running";
        there.then_some(()).ok_or(row.to_string())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(monitor.join().unwrap(), 1, "hosts running the VM at once");
}

/// The first line of `agent`'s log holding `text`, and its timestamp (RFC 3339 in UTC, so
/// two agents' stamps on this machine's clock compare as strings).
fn logged_at(agent: &TestAgent, text: &str) -> Result<String, String> {
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let line = log.lines().find(|l| l.contains(text));
    let stamp = line.and_then(|l| l.split_whitespace().next());
    stamp
        .map(str::to_owned)
        .ok_or_else(|| format!("no `{text}` in the log of {}", agent.spec.name))
}

fn position(agents: &[TestAgent], name: &Value) -> usize {
    let found = agents.iter().position(|a| *name == a.spec.name.as_str());
    found.unwrap_or_else(|| panic!("no agent {name}"))
}

#[test]
fn a_host_cut_off_by_a_partition_kills_its_vm_before_its_replica_host_restarts_it() {
    let lab = NetnsLab::new(3).expect("create network namespaces (needs root and iproute2)");
    let root = TempDir::new("replica-partition");
    let agents = three_workers_in_lab(bin(), root.path(), &lab);
    let a = &agents[0];
    create_tiny(a, "db5", &["--replicas", "2"]);
    let row = wait_phase(a, "db5", "running");
    let (id, ips) = (row["id"].as_str().unwrap().to_owned(), row["ips"].clone());
    let h = position(&agents, &row["host"]);
    let row = wait_in_sync(a, "db5", &[&row["host"]], &mut Vec::new());
    let r = position(&agents, &row["replica"]["host"]);
    let third = 3 - h - r;
    let printed = eventually("the guest ticks", BOOT, || {
        let text = console(&agents[h], &id);
        match ticks(&text).last() {
            Some(&t) if t >= 3 && boots(&text) == [1] => Ok(t),
            _ => Err(text),
        }
    });
    let dirs = agents.iter().map(|a| a.dir.clone()).collect();
    let (stop, monitor) = qemu_monitor(dirs);

    // The home's link goes down: it cannot renew its lease and kills the VM's QEMU; the
    // others wait its lease out, and the replica host restarts the VM from its copy.
    lab.cut(h);
    let printed = printed.max(*ticks(&console(&agents[h], &id)).last().unwrap());
    let r_name = agents[r].spec.name.clone();
    let row = eventually("db5 running on its replica host", BOOT, || {
        let row = vm(&agents[third], "db5")?;
        let moved = row["host"] == r_name.as_str() && row["shown_phase"] == "running";
        moved.then_some(row.clone()).ok_or(row.to_string())
    });
    assert!(
        qemu_pids_under(&agents[h].dir).is_empty(),
        "the cut-off home still runs the VM"
    );
    let fenced = logged_at(&agents[h], "killed: the lease lapsed").unwrap();
    let restarted = logged_at(&agents[r], "restarting the VM here from its replica").unwrap();
    assert!(
        fenced < restarted,
        "the home killed the VM at {fenced}, the replica host restarted it at {restarted}"
    );
    logged_at(&agents[r], "its connection is left over from a cut link").unwrap();
    assert_eq!(row["ips"], ips, "{row}");
    second_boot_keeps_ticks(&agents[r], &id, printed);
    let line = format!(
        "vm-failover vm=db5 from={} on={r_name}",
        agents[h].spec.name
    );
    handler_ran(root.path(), &[&line]);

    // The link is back: the home's copy is stale (an older generation), archived; it
    // starts nothing.
    lab.heal(h);
    wait_archived(&agents[h], &id);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(monitor.join().unwrap(), 1, "hosts running the VM at once");
    assert!(qemu_pids_under(&agents[h].dir).is_empty());
}

/// A VM with two copies backed up while it runs (a real restic repository): the replica's
/// host copies its replica, the guest runs on (no second boot) and the backup holds every
/// tick the console printed before it. Restored, its second copy goes when the restore
/// starts, the guest boots on the backup's disk (its boot counter and last tick from the
/// backup's time), and a fresh copy of the restored disk is made and gets in sync, holding
/// every tick the restored guest prints.
#[test]
fn a_vm_with_two_copies_is_backed_up_running_restored_and_gets_a_fresh_copy() {
    let cluster = three_workers(bin());
    let a = &cluster.agents[0];
    let target = hearth_testkit::restic::LocalRepo::new("replica-backups");
    target.put_target(a, "local");
    create_tiny(a, "db2", &["--replicas", "2"]);
    let row = wait_phase(a, "db2", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let home = &cluster.agents[index_of(&cluster, &row["host"])];
    let mut seen = Vec::new();
    let row = wait_in_sync(a, "db2", &[&row["host"]], &mut seen);
    let first_copy = row["replica"]["since"].clone();
    let copier = &cluster.agents[index_of(&cluster, &row["replica"]["host"])];
    let printed = eventually("a tick past 3", BOOT, || {
        match ticks(&console(home, &id)).last() {
            Some(&t) if t > 3 => Ok(t),
            other => Err(format!("{other:?}")),
        }
    });

    // Backed up while it runs: its QEMU's mirror holds the disk, so the replica's host
    // copies its copy, which holds every write the guest saw complete.
    let out = a.cli(&["backup", "now", "db2"]);
    assert!(out.contains("stored in local"), "{out}");
    assert_eq!(
        boots(&console(home, &id)),
        [1],
        "the guest ran on through its backup"
    );
    let listed: Value = serde_json::from_str(&a.cli(&["backups", "db2", "--json"])).unwrap();
    let snapshot = listed["snapshots"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        listed["snapshots"][0]["host"],
        copier.spec.name.as_str(),
        "{listed}"
    );
    let work = copier
        .dir
        .join("data")
        .join("vms")
        .join(format!("{id}.backup"));
    assert!(!work.exists(), "{} is left behind", work.display());
    a.cli(&["vm", "stop", "db2"]);
    wait_phase(a, "db2", "stopped");
    a.cli(&["vm", "start", "db2"]);
    wait_phase(a, "db2", "running");
    let repo = hearth_compute::restic::Repo {
        location: target.location.clone(),
        password_file: target.password.clone(),
        cache_dir: target.dir.path().join("cache"),
        env: vec![],
    };
    let dumped = target.dir.path().join("dumped.raw");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(repo.dump(&id, &snapshot, &dumped))
        .unwrap();
    let backed_up = hearth_testkit::vms::disk_tick_as(&dumped, "raw").unwrap();
    assert!(
        backed_up >= printed,
        "the backup's last tick {backed_up} is behind the console's {printed}, printed before it"
    );
    // Ticks written after the backup, on its second boot.
    let since_boot = |text: &str| {
        let at = text.rfind("HEARTH-GUEST-BOOTS").unwrap_or(0);
        ticks(&text[at..]).len()
    };
    eventually("the second boot ticking", BOOT, || {
        let text = console(home, &id);
        match boots(&text) == [1, 2] && since_boot(&text) > 3 {
            true => Ok(()),
            false => Err(text),
        }
    });

    let out = a.cli(&["backup", "restore", "db2", &snapshot, "--yes"]);
    assert!(out.contains("restored from snapshot"), "{out}");
    let row = wait_phase(a, "db2", "running");
    assert_eq!(row["disk"]["generation"], 2, "{row}");
    // Booted on the backup's disk (in a new directory, so a new console log): its counter
    // says 2 again (the disk it replaced would say 3), and the tick it finds is the
    // backup's.
    let text = eventually("the restored guest's boot", BOOT, || {
        let text = console(home, &id);
        match boots(&text) == [2] && since_boot(&text) > 0 {
            true => Ok(text),
            false => Err(text),
        }
    });
    let found = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("HEARTH-GUEST-LAST-TICK boot=1 n="));
    assert_eq!(
        found.map(str::trim),
        Some(backed_up.to_string().as_str()),
        "{text}"
    );
    // A fresh copy, of the restored disk.
    let row = eventually("a fresh copy in sync", BOOT, || {
        let row = wait_in_sync(a, "db2", &[], &mut seen);
        match row["replica"]["since"] != first_copy {
            true => Ok(row),
            false => Err(row.to_string()),
        }
    });
    let replica = &cluster.agents[index_of(&cluster, &row["replica"]["host"])];
    replica_holds_the_ticks(home, replica, &id);
}
