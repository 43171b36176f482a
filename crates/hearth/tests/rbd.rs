//! Disks on Ceph RBD, against a real single-node Ceph (`hearth_testkit::ceph`: Debian's
//! ceph-mon, ceph-mgr and a memstore ceph-osd) and QEMU's own rbd driver
//! (qemu-block-extra):
//!
//! - what an RBD disk stands on: an image imported once and protected as a snapshot, a
//!   VM's disk as a clone of it that QEMU writes; and Ceph's fencing, a client put on the
//!   OSD blocklist that can write no more while a new client reads what it wrote before;
//! - hearth's RBD backend with three real agents and the test guest (a boot counter and a
//!   tick written to its disk each second): a VM taking an address from a pool with
//!   `--storage rbd:rbd` gets a clone of its image in the pool and its home records its
//!   QEMU's Ceph client; its worker hangs (agent and QEMU frozen with SIGSTOP): once its
//!   lease has lapsed another worker puts that client on the blocklist and restarts the VM
//!   on the same disk (boot 2, every tick it printed); the frozen QEMU, woken, completes no
//!   write; the worker, woken too, stops it and starts nothing; deleting the VM removes its
//!   image;
//! - moves with nothing copied: live by hand and by an evacuation (the guest ticks on
//!   without a boot), then cold (its second boot finds every tick), the same image at the
//!   same generation throughout, and each handle left behind archived;
//! - backups into a real restic repository of the running and of the stopped VM, restored
//!   in place (a new image of the next generation, the one before kept) and into a new VM
//!   on RBD, each guest booting on the backup's disk.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hearth_testkit::ceph::Ceph;
use hearth_testkit::vms::{
    BOOT, boots, console, create_tiny, last_tick_at_boot, second_boot_keeps_ticks,
    three_workers_with, ticks, vm, vm_dir, wait_phase,
};
use hearth_testkit::{TestCluster, eventually, qemu_pids_under, signal_pid};
use serde_json::Value;

/// qemu-io on an image, driven line by line through its standard input.
struct Client {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn open(image: &str) -> Client {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", image])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run qemu-io");
        let (send, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        Client { child, lines }
    }

    /// Sends `command`, then the first line saying how it went (`wrote …`, `… failed …`),
    /// if one comes within `wait`.
    fn ask(&mut self, command: &str, wait: Duration) -> Option<String> {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("wrote") || line.contains("failed") => {
                    return Some(line);
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the first 4 KiB of `image` hold `byte`, read by a new client.
fn holds(image: &str, byte: u8) -> bool {
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", &format!("read -P {byte:#x} 0 4k"), image])
        .output()
        .expect("run qemu-io");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success()
        && text.contains("read 4096/4096")
        && !text.contains("Pattern verification failed")
}

#[test]
fn a_clone_of_a_protected_image_takes_writes_until_its_client_is_blocklisted() {
    let ceph = Ceph::start();
    let guest = hearth_testkit::test_guest();
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(guest.join("base.qcow2"))
        .arg(ceph.qemu_name("tiny"))
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img convert into RBD");
    ceph.rbd(&["snap", "create", "rbd/tiny@v1"]);
    ceph.rbd(&["snap", "protect", "rbd/tiny@v1"]);
    ceph.rbd(&["clone", "rbd/tiny@v1", "rbd/vm-1"]);
    let listed = ceph.rbd(&["ls", "-l", "rbd"]);
    assert!(listed.contains("rbd/tiny@v1"), "{listed}");

    let image = ceph.qemu_name("vm-1");
    let mut client = Client::open(&image);
    let said = client.ask("write -P 0x5a 0 4k", Duration::from_secs(60));
    assert!(
        said.as_deref()
            .is_some_and(|l| l.contains("wrote 4096/4096")),
        "{said:?}"
    );
    assert!(holds(&image, 0x5a));

    // Fenced: the client watching the image is put on the blocklist, as hearth will do to
    // a dead worker's client before its VM starts elsewhere.
    let watcher = eventually("the client's watch", Duration::from_secs(30), || {
        let status = ceph.rbd(&["status", "rbd/vm-1"]);
        (status.lines())
            .find_map(|l| l.trim().strip_prefix("watcher=")?.split_whitespace().next())
            .map(str::to_owned)
            .ok_or(status)
    });
    ceph.ceph(&["osd", "blocklist", "add", &watcher]);
    let said = client.ask("write -P 0x5b 0 4k", Duration::from_secs(30));
    // Refused at once (EBLOCKLISTED), not left hanging.
    assert!(
        said.as_deref().is_some_and(|l| l.contains("failed")),
        "a blocklisted client's write: {said:?}"
    );
    assert!(holds(&image, 0x5a), "the blocklisted write landed");
    assert!(!holds(&image, 0x5b));
}

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn index_of(cluster: &TestCluster, host: &Value) -> usize {
    cluster
        .agents
        .iter()
        .position(|a| *host == a.spec.name.as_str())
        .unwrap_or_else(|| panic!("not a known host: {host}"))
}

/// The guest's last tick on its console at `host`.
fn last_tick(cluster: &TestCluster, host: usize, id: &str) -> u64 {
    *ticks(&console(&cluster.agents[host], id))
        .last()
        .unwrap_or(&0)
}

/// Three workers with [ceph] pointing at `ceph`, and a pool `ceph` whose VMs' disks are in
/// its pool `rbd`.
fn rbd_cluster(ceph: &Ceph) -> TestCluster {
    let extra = format!("\n[ceph]\nconf = \"{}\"\n", ceph.conf.display());
    let cluster = three_workers_with(bin(), &extra);
    cluster.agents[0].cli(&[
        "pool",
        "add",
        "ceph",
        "198.51.100.0/24",
        "--storage",
        "rbd:rbd",
    ]);
    cluster
}

/// The images in Ceph's pool `rbd` that are disks of VM `id`.
fn disks_of(ceph: &Ceph, id: &str) -> Vec<String> {
    let prefix = format!("hearth-{id}-");
    let listed = ceph.rbd(&["ls", "rbd"]);
    listed
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_vm_on_rbd_restarts_on_another_worker_after_its_dead_workers_client_is_fenced() {
    let ceph = Ceph::start();
    let cluster = rbd_cluster(&ceph);
    let a = &cluster.agents[0];
    create_tiny(a, "web", &["--pool", "ceph"]);
    let row = wait_phase(a, "web", "running");
    assert_eq!(row["storage"]["kind"], "rbd", "{row}");
    assert_eq!(row["replicas"], 1, "{row}");
    let id = row["id"].as_str().unwrap().to_owned();
    let image = format!("hearth-{id}-g1");
    let listed = ceph.rbd(&["ls", "-l", "rbd"]);
    assert!(listed.contains(&image), "{listed}");
    assert!(listed.contains("hearth-base-"), "{listed}");
    let h = index_of(&cluster, &row["host"]);
    // Its home records the client its QEMU runs with.
    let clients = eventually("the QEMU's Ceph client recorded", BOOT, || {
        let row = vm(a, "web")?;
        match row["rbd_clients"].as_array() {
            Some(list) if !list.is_empty() => Ok(list.clone()),
            _ => Err(row.to_string()),
        }
    });
    eventually("the guest ticks", BOOT, || {
        let text = console(&cluster.agents[h], &id);
        match ticks(&text).last() {
            Some(&t) if t >= 3 && boots(&text) == [1] => Ok(()),
            _ => Err(text),
        }
    });

    // The worker hangs: its QEMU and its agent frozen, as on a machine that stopped.
    let qemu = qemu_pids_under(&cluster.agents[h].dir);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    signal_pid(qemu[0], "STOP");
    cluster.agents[h].signal("STOP");
    let frozen_at = last_tick(&cluster, h, &id);

    let observer = (h + 1) % 3;
    let row = eventually("web running on another worker", BOOT, || {
        let row = vm(&cluster.agents[observer], "web")?;
        let moved = row["host"] != cluster.agents[h].spec.name.as_str();
        match moved && row["shown_phase"] == "running" {
            true => Ok(row),
            false => Err(row.to_string()),
        }
    });
    let to = index_of(&cluster, &row["host"]);
    assert_eq!(row["disk"]["host"], row["host"], "{row}");
    assert_eq!(row["disk"]["generation"], 1, "the same disk: {row}");
    // Its own disk, not a fresh one: the second boot, with every tick the console printed.
    let on_disk = second_boot_keeps_ticks(&cluster.agents[to], &id, frozen_at);
    let blocklist = ceph.ceph(&["osd", "blocklist", "ls"]);
    for client in &clients {
        let client = client.as_str().unwrap();
        assert!(blocklist.contains(client), "{client} not in {blocklist}");
    }

    // The frozen QEMU wakes: Ceph refuses its writes, so its guest completes no tick past
    // what the new guest found on the disk, while the new guest ticks on.
    signal_pid(qemu[0], "CONT");
    let now = last_tick(&cluster, to, &id);
    eventually("the new guest ticks on", BOOT, || {
        let t = last_tick(&cluster, to, &id);
        (t >= now + 5).then_some(()).ok_or(format!("tick {t}"))
    });
    let old = last_tick(&cluster, h, &id);
    assert!(
        old <= on_disk,
        "the fenced guest completed tick {old}, past the disk's {on_disk}"
    );
    // Refused, not lost in a cache: the fenced guest's own writes fail.
    eventually("the fenced guest's write refused", BOOT, || {
        let text = console(&cluster.agents[h], &id);
        text.contains("HEARTH-GUEST-TICK-FAILED")
            .then_some(())
            .ok_or(text)
    });

    // The worker comes back: it stops the fenced QEMU and starts nothing.
    cluster.agents[h].signal("CONT");
    eventually("the fenced QEMU stopped", BOOT, || {
        match qemu_pids_under(&cluster.agents[h].dir)[..] {
            [] => Ok(()),
            ref pids => Err(format!("{pids:?}")),
        }
    });
    let row = vm(&cluster.agents[h], "web").unwrap();
    assert_eq!(index_of(&cluster, &row["host"]), to, "{row}");

    // Deleting the VM removes its image from the pool.
    cluster.agents[h].cli(&["vm", "delete", "web"]);
    eventually("the image removed", BOOT, || {
        let listed = ceph.rbd(&["ls", "rbd"]);
        (!listed.contains(&image)).then_some(()).ok_or(listed)
    });
}

/// A VM on RBD moves with nothing copied: live by `hearth vm migrate` (the guest ticks on,
/// no boot) and by the evacuation of its host, then cold (its second boot finds every tick
/// it printed): always the same image at the same generation, one QEMU at a time, and each
/// handle left behind archived.
#[test]
fn a_vm_on_rbd_moves_live_and_cold_with_its_disk_left_in_ceph() {
    let ceph = Ceph::start();
    let cluster = rbd_cluster(&ceph);
    let a = &cluster.agents[0];
    create_tiny(a, "web", &["--pool", "ceph"]);
    let row = wait_phase(a, "web", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let image = format!("hearth-{id}-g1");
    let h = index_of(&cluster, &row["host"]);
    eventually("the guest ticks", BOOT, || {
        let text = console(&cluster.agents[h], &id);
        match ticks(&text).last() {
            Some(&t) if t >= 3 && boots(&text) == [1] => Ok(()),
            _ => Err(text),
        }
    });

    // Live, by hand: the RAM moves, the disk stays where it is, in Ceph.
    let t = (h + 1) % 3;
    let (source, target) = (&cluster.agents[h], &cluster.agents[t]);
    let before = last_tick(&cluster, h, &id);
    let (code, out, err) = a.cli_within(
        &["vm", "migrate", "web", "--to", &target.spec.name],
        BOOT * 3,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let moved = format!("moved from {} to {}", source.spec.name, target.spec.name);
    assert!(out.contains(&moved), "{out}");
    assert!(err.contains("live"), "progress: {err}");
    let ticking = eventually("the guest ticking on at its new host", BOOT, || {
        let text = console(target, &id);
        match ticks(&text).last() {
            Some(&n) if n > before + 2 => Ok(text),
            _ => Err(text),
        }
    });
    assert!(boots(&ticking).is_empty(), "no boot: {ticking}");
    assert!(
        ticks(&ticking)[0] > before,
        "ticks on from {before}: {ticking}"
    );
    let row = wait_phase(a, "web", "running");
    assert_eq!(index_of(&cluster, &row["host"]), t, "{row}");
    assert_eq!(row["disk"]["host"], row["host"], "{row}");
    assert_eq!(row["disk"]["generation"], 1, "the same image: {row}");
    let dir = vm_dir(target, &id);
    assert!(
        dir.join("rbd").is_file(),
        "a handle of the image at the target"
    );
    assert!(!dir.join("disk.qcow2").exists(), "no copy of the disk");
    assert_eq!(disks_of(&ceph, &id), std::slice::from_ref(&image));
    gone_from(source, &id);

    // Live again, by the evacuation of its host (a QEMU that came in live moves on).
    let (code, out, err) = a.cli_within(&["node", "evacuate", &target.spec.name], BOOT * 3);
    assert_eq!(code, Some(0), "{out}{err}");
    let row = wait_phase(a, "web", "running");
    let x = index_of(&cluster, &row["host"]);
    assert_ne!(x, t, "{row}");
    // Its console there fills as the guest ticks on: ticks, and no boot.
    let text = eventually("the guest ticking at its new host", BOOT, || {
        let text = console(&cluster.agents[x], &id);
        match ticks(&text).is_empty() {
            false => Ok(text),
            true => Err(text),
        }
    });
    assert!(boots(&text).is_empty(), "moved live: {text}");
    assert_eq!(row["disk"]["generation"], 1, "{row}");
    gone_from(target, &id);

    // Cold, to the worker that is neither drained nor its host.
    let y = 3 - t - x;
    let printed = eventually("a tick at its host", BOOT, || {
        match last_tick(&cluster, x, &id) {
            0 => Err("no tick".to_owned()),
            n => Ok(n),
        }
    });
    let to = cluster.agents[y].spec.name.clone();
    let (code, out, err) = a.cli_within(&["vm", "migrate", "web", "--cold", "--to", &to], BOOT * 3);
    assert_eq!(code, Some(0), "{out}{err}");
    // Its own disk, not a fresh one: the second boot, with every tick printed before.
    second_boot_keeps_ticks(&cluster.agents[y], &id, printed);
    let row = wait_phase(a, "web", "running");
    assert_eq!(index_of(&cluster, &row["host"]), y, "{row}");
    assert_eq!(row["disk"]["generation"], 1, "{row}");
    assert_eq!(disks_of(&ceph, &id), [image]);
    gone_from(&cluster.agents[x], &id);
    assert_eq!(a.api_json("/v1/drift").unwrap(), serde_json::json!([]));
}

/// The VM's QEMU has stopped on `host`, and the handle its move left there is archived.
fn gone_from(host: &hearth_testkit::TestAgent, id: &str) {
    eventually(
        "the QEMU left behind stopped",
        BOOT,
        || match qemu_pids_under(&host.dir)[..] {
            [] => Ok(()),
            ref pids => Err(format!("{pids:?}")),
        },
    );
    eventually("the handle left behind archived", BOOT, || {
        match vm_dir(host, id).exists() {
            false => Ok(()),
            true => Err(format!("{} still there", vm_dir(host, id).display())),
        }
    });
}

/// The snapshots of `name`, oldest first, from `hearth backups NAME --json`.
fn snapshots(agent: &hearth_testkit::TestAgent, name: &str) -> Vec<Value> {
    let row: Value = serde_json::from_str(&agent.cli(&["backups", name, "--json"])).unwrap();
    row["snapshots"].as_array().cloned().unwrap_or_default()
}

/// Backups of a VM on RBD, into a real restic repository, and restores: of the running VM
/// (read through QEMU), restored into the same VM (a new image of the next generation; the
/// image before stays in the pool), of the stopped VM (read from Ceph by `qemu-img`), and
/// restored into a new VM whose disk is made in the pool from it. Each restored guest boots
/// on the backup's disk: its boot counter and last tick from the backup's time.
#[test]
fn a_vm_on_rbd_is_backed_up_and_restored_in_place_and_into_a_new_vm() {
    let ceph = Ceph::start();
    let cluster = rbd_cluster(&ceph);
    let a = &cluster.agents[0];
    let target = hearth_testkit::restic::LocalRepo::new("rbd-backups");
    target.put_target(a, "local");
    create_tiny(a, "web", &["--pool", "ceph"]);
    let row = wait_phase(a, "web", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let h = index_of(&cluster, &row["host"]);
    let home = &cluster.agents[h];
    let ticking = |n: u64| {
        eventually(&format!("a tick past {n}"), BOOT, || {
            let text = console(home, &id);
            let since = text.rfind("HEARTH-GUEST-BOOTS").map_or(0, |at| at);
            match ticks(&text[since..]).last() {
                Some(&t) if t > n => Ok(t),
                _ => Err(text.clone()),
            }
        })
    };
    ticking(3);

    // The running VM's backup; the guest goes on writing; then the restore in place.
    let out = a.cli(&["backup", "now", "web"]);
    assert!(out.contains("stored in local"), "{out}");
    let snapshot = snapshots(a, "web")[0]["id"].as_str().unwrap().to_owned();
    let backed_up = disk_tick_of(&target, &id, &snapshot);
    ticking(backed_up + 3);
    let out = a.cli(&["backup", "restore", "web", &snapshot, "--yes"]);
    assert!(out.contains("restored from snapshot"), "{out}");
    let row = wait_phase(a, "web", "running");
    assert_eq!(row["disk"]["generation"], 2, "a new disk: {row}");
    let text = eventually("the restored guest's boot", BOOT, || {
        let text = console(home, &id);
        match last_tick_at_boot(&text, 1) {
            Some(_) => Ok(text),
            None => Err(text),
        }
    });
    assert_eq!(boots(&text).last(), Some(&2), "{text}");
    assert_eq!(last_tick_at_boot(&text, 1), Some(backed_up), "{text}");
    let (before, after) = (format!("hearth-{id}-g1"), format!("hearth-{id}-g2"));
    assert_eq!(
        disks_of(&ceph, &id),
        [before, after.clone()],
        "the disk before kept"
    );

    // The stopped VM's backup, read from a snapshot in Ceph (dropped after, with one a run
    // cut short left), then a new VM made from it on RBD too.
    a.cli(&["vm", "stop", "web"]);
    wait_phase(a, "web", "stopped");
    ceph.rbd(&["snap", "create", &format!("rbd/{after}@hearth-backup-left")]);
    let out = a.cli(&["backup", "now", "web"]);
    assert!(out.contains("stored in local"), "{out}");
    let left = ceph.rbd(&["snap", "ls", &format!("rbd/{after}")]);
    assert!(!left.contains("hearth-backup-"), "{left}");
    let stopped = snapshots(a, "web")[1]["id"].as_str().unwrap().to_owned();
    let at_stop = disk_tick_of(&target, &id, &stopped);
    let out = a.cli(&["backup", "restore", "web", &stopped, "--into", "copy"]);
    assert!(out.contains("copy: made from web's snapshot"), "{out}");
    let row = wait_phase(a, "copy", "running");
    assert_eq!(row["storage"]["kind"], "rbd", "{row}");
    let copy = row["id"].as_str().unwrap().to_owned();
    let on = &cluster.agents[index_of(&cluster, &row["host"])];
    let text = eventually("the new VM's boot", BOOT, || {
        let text = console(on, &copy);
        match last_tick_at_boot(&text, 2) {
            Some(_) => Ok(text),
            None => Err(text),
        }
    });
    assert_eq!(
        boots(&text),
        [3],
        "the web's disk, booted a third time: {text}"
    );
    assert_eq!(last_tick_at_boot(&text, 2), Some(at_stop), "{text}");
    assert_eq!(disks_of(&ceph, &copy).len(), 1);
    assert!(
        !ceph.rbd(&["ls", "rbd"]).contains(".restored"),
        "no restored name left"
    );

    // A backup snapshot left on a disk does not keep its VM's deletion from removing it.
    let image = disks_of(&ceph, &copy).remove(0);
    ceph.rbd(&["snap", "create", &format!("rbd/{image}@hearth-backup-left")]);
    a.cli(&["vm", "delete", "copy"]);
    eventually("the deleted VM's image removed", BOOT, || {
        match disks_of(&ceph, &copy).as_slice() {
            [] => Ok(()),
            left => Err(format!("{left:?}")),
        }
    });
}

/// The tick on the disk in snapshot `snapshot` of VM `id`, dumped from the repository.
fn disk_tick_of(target: &hearth_testkit::restic::LocalRepo, id: &str, snapshot: &str) -> u64 {
    let repo = hearth_compute::restic::Repo {
        location: target.location.clone(),
        password_file: target.password.clone(),
        cache_dir: target.dir.path().join("cache"),
        env: vec![],
    };
    let dumped = target.dir.path().join("dumped.raw");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(repo.dump(id, snapshot, &dumped)).unwrap();
    hearth_testkit::vms::disk_tick_as(&dumped, "raw").unwrap()
}
