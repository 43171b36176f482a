//! A member's disk is never lost and a VM never runs twice, with real agents and real QEMU
//! guests that count their boots on their own disk (`HEARTH-GUEST-BOOTS n=N`): a VM that kept
//! its disk counts on, one started on a blank disk would say `n=1` again.
//!
//! - an agent stopped with SIGTERM, made to `hearth leave`, or killed with `kill -9`: its VM
//!   shows `lost` elsewhere, is never placed again, keeps running in the same QEMU, and is
//!   adopted when the agent is back;
//! - a fence of a host gossip sees alive is refused;
//! - a powered-off, fenced host's VM stays `lost` with a `missing-disk` entry and no fix;
//!   `hearth vm recreate --empty-disk` (admins only, audited) then starts it over elsewhere;
//!   when the old host comes back, its stale copy is archived by the drift fix, not deleted;
//! - a forced fence of a live host and a recreate: the old copy, still running, is shut down
//!   and archived by its drift fix;
//! - an image replaced while a VM uses it: the VM keeps its base after a reboot;
//! - files of a VM that no longer exists: archived by the fix, removed only with --destroy;
//! - a cold move (`hearth vm migrate --cold`): the guest counts on from its own disk on the
//!   target, whose copy points at the target's own image file; the copy left behind is
//!   archived, never deleted; a move to a host that cannot take the VM is refused; a move
//!   whose copy fails on the target is given up, and the VM starts again where it was, on
//!   its own disk;
//! - a live move (`hearth vm migrate`): the guest ticks on on the target with no boot, its
//!   disk holds what it wrote during the move, it runs once; a live move whose target QEMU
//!   is killed midway is given up and the VM runs on where it was, untouched;
//!   `hearth node evacuate` then moves it off its host live, and a host with two VMs is
//!   emptied one move at a time.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::vms::{
    BOOT, boots, console, ticks, vm, vm_dir, wait_drift, wait_for_hosts, wait_passes, wait_phase,
};
use hearth_testkit::{TestAgent, TestCluster, eventually, kill_pid, qemu_pids_under};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn three_workers() -> TestCluster {
    hearth_testkit::vms::three_workers(bin())
}

/// Creates a running VM through `agent` and waits for its guest's first boot; returns the
/// index of its host and its id.
fn running_vm(cluster: &TestCluster, agent: usize, name: &str) -> (usize, String) {
    let agent = &cluster.agents[agent];
    hearth_testkit::vms::create_tiny(agent, name, &[]);
    let row = wait_phase(agent, name, "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let host = host_index(cluster, &row);
    wait_boots(&cluster.agents[host], &id, &[1]);
    (host, id)
}

fn host_index(cluster: &TestCluster, row: &Value) -> usize {
    cluster
        .agents
        .iter()
        .position(|a| row["host"] == a.spec.name.as_str())
        .unwrap_or_else(|| panic!("not on a known host: {row}"))
}

/// Waits until the guest's boot counters on `host`'s console are exactly `expected`.
fn wait_boots(host: &TestAgent, id: &str, expected: &[u64]) {
    eventually(&format!("{id} boots {expected:?}"), BOOT, || {
        let text = console(host, id);
        if boots(&text) == expected && text.matches("HEARTH-GUEST-READY").count() == expected.len()
        {
            Ok(())
        } else {
            Err(text)
        }
    });
}

fn one_qemu(host: &TestAgent) -> u32 {
    match qemu_pids_under(&host.dir)[..] {
        [pid] => pid,
        ref other => panic!("{}: QEMU processes {other:?}", host.spec.name),
    }
}

fn other(host: usize) -> usize {
    (host + 1) % 3
}

/// The VM, read through another node while its host's agent is away: `lost`, still placed
/// on that host, and still so after several reconciliation passes there.
fn stays_lost_on(cluster: &TestCluster, observer: usize, name: &str, host: &str) {
    let agent = &cluster.agents[observer];
    let row = wait_phase(agent, name, "lost");
    assert_eq!(row["host"], host, "{row}");
    wait_passes(agent, 3);
    let row = vm(agent, name).unwrap();
    assert_eq!(row["host"], host, "never placed elsewhere: {row}");
    assert_eq!(row["disk"]["host"], host, "{row}");
    assert_eq!(row["shown_phase"], "lost", "{row}");
}

#[test]
fn an_agent_that_stops_leaves_or_dies_keeps_its_vm_running_and_adopts_it() {
    let mut cluster = three_workers();
    let (h, id) = running_vm(&cluster, 0, "web1");
    let o = other(h);
    let host = cluster.agents[h].spec.name.clone();
    let qemu = one_qemu(&cluster.agents[h]);
    let shown = cluster.agents[o].cli(&["vm", "show", "web1"]);
    assert!(
        shown.contains(&format!("disk: on {host} (generation 1)")),
        "{shown}"
    );

    // Ways an agent goes away: SIGTERM (as systemd stops it), `hearth leave`, kill -9.
    for way in ["SIGTERM", "leave", "kill -9"] {
        match way {
            "SIGTERM" => {
                cluster.agents[h].signal("TERM");
                cluster.agents[h].wait_exit(Duration::from_secs(30));
            }
            "leave" => {
                cluster.agents[h].cli(&["leave"]);
                cluster.agents[h].wait_exit(Duration::from_secs(30));
            }
            _ => cluster.agents[h].kill9(),
        }
        assert_eq!(
            qemu_pids_under(&cluster.agents[h].dir),
            [qemu],
            "{way}: QEMU outlives the agent"
        );
        stays_lost_on(&cluster, o, "web1", &host);
        let drift = cluster.agents[o].api_json("/v1/drift").unwrap();
        assert!(
            drift
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == format!("{host}/missing-disk/{id}").as_str()
                    && d["fix"].as_str().unwrap_or("").contains("come back")),
            "{way}: {drift}"
        );
        // No copy anywhere else.
        for (i, agent) in cluster.agents.iter().enumerate() {
            if i != h {
                assert!(
                    !vm_dir(agent, &id).exists(),
                    "{way}: a copy on {}",
                    agent.spec.name
                );
                assert!(qemu_pids_under(&agent.dir).is_empty(), "{way}");
            }
        }

        cluster.agents[h].restart();
        wait_phase(&cluster.agents[o], "web1", "running");
        wait_passes(&cluster.agents[h], 3);
        assert_eq!(
            qemu_pids_under(&cluster.agents[h].dir),
            [qemu],
            "{way}: adopted, the same QEMU"
        );
        assert_eq!(
            boots(&console(&cluster.agents[h], &id)),
            [1],
            "{way}: never started again"
        );
    }

    // A fence of a host gossip sees alive is refused, and changes nothing.
    let (code, _, err) = cluster.agents[o].cli_result(&["node", "fence", &host]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("alive") && err.contains("web1"), "{err}");
    let hosts = cluster.agents[o].api_json("/v1/hosts").unwrap();
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["fenced"] == false),
        "{hosts}"
    );
    assert_eq!(one_qemu(&cluster.agents[h]), qemu);

    // An admin forces it anyway, and gives the disk up: the warning names the VM, and a new
    // copy starts elsewhere on an empty disk. The old copy, still running, is a stale copy:
    // its host shuts it down by itself (the VM runs elsewhere now), keeps its disk, and the
    // drift fix archives it whole.
    let (code, _, err) = cluster.agents[o].cli_result(&["node", "fence", &host, "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning") && err.contains("web1"), "{err}");
    cluster.agents[o].cli(&["vm", "recreate", "web1", "--empty-disk"]);
    let row = wait_phase(&cluster.agents[o], "web1", "running");
    let new_host = host_index(&cluster, &row);
    assert_ne!(new_host, h, "{row}");
    wait_boots(&cluster.agents[new_host], &id, &[1]);
    eventually(
        "the stale copy shut down by its host",
        BOOT,
        || match qemu_pids_under(&cluster.agents[h].dir)[..] {
            [] => Ok(()),
            ref other => Err(format!("{other:?}")),
        },
    );
    assert!(
        vm_dir(&cluster.agents[h], &id).join("disk.qcow2").is_file(),
        "its disk stays"
    );
    let stale = format!("{host}/wrong-host/{id}");
    wait_drift(&cluster.agents[o], &stale, "has files here");
    cluster.agents[o].cli(&["fix", &stale]);
    let archived = eventually("the stale copy archived", BOOT, || {
        archived_copy(&cluster.agents[h], &id, 1).ok_or_else(|| "not archived".to_owned())
    });
    let old_console = std::fs::read_to_string(archived.join("console.log")).unwrap();
    assert_eq!(
        boots(&old_console.replace('\r', "")),
        [1],
        "the old data, whole"
    );
    assert!(archived.join("disk.qcow2").is_file());
}

/// The archived copy of `id` at `generation` on `host`, if there is one.
fn archived_copy(host: &TestAgent, id: &str, generation: u64) -> Option<std::path::PathBuf> {
    std::fs::read_dir(host.dir.join("data").join("vms-archive"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{id}-gen{generation}-"))
        })
}

#[test]
fn a_powered_off_hosts_vm_is_lost_until_an_admin_recreates_it_on_an_empty_disk() {
    let mut cluster = three_workers();
    // The VM's owner, a member.
    let password = cluster.agents[0].dir.join("alice.pass");
    std::fs::write(&password, "a long enough secret phrase").unwrap();
    cluster.agents[0].cli(&[
        "account",
        "add",
        "alice",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    let (h, id) = running_vm(&cluster, 0, "db1");
    let o = other(h);
    let host = cluster.agents[h].spec.name.clone();
    // A reboot first, so the disk holds two boots: a blank disk would say 1.
    cluster.agents[o].cli(&["vm", "reboot", "db1"]);
    wait_boots(&cluster.agents[h], &id, &[1, 2]);

    // The machine loses power: its agent and its QEMU die.
    let qemu = one_qemu(&cluster.agents[h]);
    cluster.agents[h].kill9();
    kill_pid(qemu);
    stays_lost_on(&cluster, o, "db1", &host);

    // Fenced as the README says: still lost, its disk on the fenced host, no one-click fix.
    let out = cluster.agents[o].cli(&["node", "fence", &host]);
    assert!(out.contains("fence"), "{out}");
    stays_lost_on(&cluster, o, "db1", &host);
    let entry_id = format!("{host}/missing-disk/{id}");
    let entry = wait_drift(&cluster.agents[o], &entry_id, "fenced");
    assert!(
        entry["detail"].as_str().unwrap().contains("fenced"),
        "{entry}"
    );
    assert!(
        entry["fix"]
            .as_str()
            .unwrap()
            .contains("recreate db1 --empty-disk"),
        "{entry}"
    );
    let (code, _, err) = cluster.agents[o].cli_result(&["fix", &entry_id]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("recreate"), "{err}");
    for agent in &cluster.agents {
        assert!(qemu_pids_under(&agent.dir).is_empty(), "nothing runs it");
    }

    // Recreate needs the words, and an admin: alice owns db1, but may not give its disk up.
    let (code, _, err) = cluster.agents[o].cli_result(&["vm", "recreate", "db1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--empty-disk"), "{err}");
    let alice = cluster.agents[o].cli(&["token", "create", "--account", "alice"]);
    let (status, answer) = hearth_testkit::http_request(
        cluster.agents[o].api_addr(),
        &format!(
            "POST /v1/vms/db1/recreate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 19\r\nConnection: close\r\n\r\n{{\"empty_disk\":true}}",
            alice.trim()
        ),
    )
    .unwrap();
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        vm(&cluster.agents[o], "db1").unwrap()["disk"]["generation"],
        1
    );
    let out = cluster.agents[o].cli(&["vm", "recreate", "db1", "--empty-disk"]);
    assert!(out.contains("empty disk"), "{out}");
    let row = wait_phase(&cluster.agents[o], "db1", "running");
    let new_host = host_index(&cluster, &row);
    assert_ne!(new_host, h, "{row}");
    assert_eq!(row["disk"]["generation"], 2, "{row}");
    // The admin asked for a blank disk, and got one: the guest counts from 1 again.
    wait_boots(&cluster.agents[new_host], &id, &[1]);
    let audit = eventually("the recreate audited", BOOT, || {
        let entries = cluster.agents[o].api_json("/v1/audit")?;
        entries
            .as_array()
            .into_iter()
            .flatten()
            // The admin's (the member's refused try is recorded too).
            .find(|e| {
                e["path"] == "/v1/vms/db1/recreate" && e["method"] == "POST" && e["who"] == "root"
            })
            .cloned()
            .ok_or_else(|| entries.to_string())
    });
    assert_eq!(audit["status"], 200, "{audit}");

    // The old host comes back with its copy (generation 1, two boots): a stale copy that
    // is never started, and whose drift fix archives it instead of deleting it.
    cluster.agents[h].restart();
    cluster.agents[o].cli(&["node", "unfence", &host]);
    let stale_id = format!("{host}/wrong-host/{id}");
    wait_drift(&cluster.agents[o], &stale_id, "stale copy");
    assert!(
        qemu_pids_under(&cluster.agents[h].dir).is_empty(),
        "not started"
    );
    let (code, _, err) = cluster.agents[o].cli_result(&["fix", &stale_id, "--destroy"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("destroy"), "{err}");
    assert!(
        vm_dir(&cluster.agents[h], &id).exists(),
        "--destroy of a live VM's copy refused"
    );
    cluster.agents[o].cli(&["fix", &stale_id]);
    let archived = eventually("the stale copy archived", BOOT, || {
        archived_copy(&cluster.agents[h], &id, 1).ok_or_else(|| "not yet".to_owned())
    });
    assert!(!vm_dir(&cluster.agents[h], &id).exists());
    assert!(archived.join("disk.qcow2").is_file(), "the disk is kept");
    let old_console = std::fs::read_to_string(archived.join("console.log"))
        .unwrap()
        .replace('\r', "");
    assert_eq!(boots(&old_console), [1, 2], "the old data, whole");
    // The VM itself was not touched.
    assert_eq!(
        vm(&cluster.agents[o], "db1").unwrap()["shown_phase"],
        "running"
    );
    assert_eq!(boots(&console(&cluster.agents[new_host], &id)), [1]);
}

#[test]
fn an_image_replaced_under_a_vm_keeps_the_vms_disk_whole() {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n".into();
    });
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    let guest = hearth_testkit::test_guest();
    agent.add_test_guest(&guest);
    let (_, id) = running_vm(&cluster, 0, "app1");
    assert!(
        console(agent, &id).contains("base=\"HEARTH-TEST-BASE v1\""),
        "{}",
        console(agent, &id)
    );

    // New content under the same name: a base image whose first sector says v2.
    let raw = agent.dir.join("base-v2.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..20].copy_from_slice(b"HEARTH-TEST-BASE v2\n");
    std::fs::write(&raw, &bytes).unwrap();
    // Its kernel command line differs too: `hearth.discard_check` makes the guest print a
    // HEARTH-GUEST-DISCARD line, so a VM booted with the new version's settings shows it.
    let mut image = hearth_testkit::test_guest_image_args(&guest, "tiny", &raw, "raw");
    *image.last_mut().unwrap() = "console=ttyS0 quiet panic=-1 hearth.discard_check".into();
    agent.cli(&image.iter().map(String::as_str).collect::<Vec<_>>());
    // The VM restarts on its own disk, still an overlay on the image it was made from.
    agent.cli(&["vm", "reboot", "app1"]);
    wait_boots(agent, &id, &[1, 2]);
    let text = console(agent, &id);
    assert_eq!(
        text.matches("base=\"HEARTH-TEST-BASE v1\"").count(),
        2,
        "{text}"
    );
    assert!(
        !text.contains("HEARTH-GUEST-DISCARD"),
        "booted with its own version's kernel command line: {text}"
    );
    // A VM made now is made from the new version.
    let (_, newer) = running_vm(&cluster, 0, "app2");
    let text = console(agent, &newer);
    assert!(text.contains("base=\"HEARTH-TEST-BASE v2\""), "{text}");
    assert!(text.contains("HEARTH-GUEST-DISCARD"), "{text}");
    // Files of a VM id the state does not hold: the fix archives them; only --destroy
    // removes them.
    for (gone, destroy) in [("vm-900001", false), ("vm-900002", true)] {
        let dir = vm_dir(agent, gone);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk.qcow2"), b"member data").unwrap();
        let entry = format!("n1/unknown-vm/{gone}");
        wait_drift(agent, &entry, "no VM by that id exists");
        if destroy {
            agent.cli(&["fix", &entry, "--destroy"]);
        } else {
            agent.cli(&["fix", &entry]);
        }
        eventually("the files gone from the VM root", BOOT, || {
            if dir.exists() {
                Err("still there".to_owned())
            } else {
                Ok(())
            }
        });
        let archived = archived_copy(agent, gone, 0);
        match destroy {
            false => assert_eq!(
                std::fs::read(archived.expect("archived").join("disk.qcow2")).unwrap(),
                b"member data"
            ),
            true => assert!(archived.is_none(), "destroyed, as asked"),
        }
    }

    // The old version cannot be removed by name while VMs use it; neither can the new.
    let (code, _, err) = agent.cli_result(&["image", "rm", "tiny"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("used by"), "{err}");
}

#[test]
fn cold_and_live_moves_keep_the_vms_disk_and_archive_the_copy_left_behind() {
    let cluster = three_workers();
    let (h, id) = running_vm(&cluster, 0, "mover");
    let t = other(h);
    let (source, target) = (&cluster.agents[h], &cluster.agents[t]);
    let target_name = target.spec.name.as_str();

    // Refused with the field to change: its own host, an unknown host, no --cold.
    let agent = &cluster.agents[0];
    let here = source.spec.name.as_str();
    for (args, why) in [
        (
            vec!["vm", "migrate", "mover", "--cold", "--to", here],
            "already",
        ),
        (
            vec!["vm", "migrate", "mover", "--cold", "--to", "nowhere"],
            "to: nowhere",
        ),
    ] {
        let (code, _, err) = agent.cli_result(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    // A copy that cannot be made (a file where the target builds it) is given up: the VM
    // starts again on its own disk where it was, and the target keeps nothing of it.
    let trap = target.dir.join("data/vms").join(format!("{id}.incoming"));
    std::fs::write(&trap, b"in the way").unwrap();
    let (code, out, err) = agent.cli_within(
        &["vm", "migrate", "mover", "--cold", "--to", target_name],
        BOOT * 3,
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("the move did not happen"), "{err}");
    assert!(err.contains("given up"), "{err}");
    wait_boots(source, &id, &[1, 2]);
    let row = wait_phase(agent, "mover", "running");
    assert_eq!(row["host"], here, "{row}");
    assert_eq!(row["disk"]["generation"], 1, "{row}");
    assert!(!vm_dir(target, &id).exists());
    std::fs::remove_file(&trap).unwrap();

    // The move, followed by the CLI to the end.
    let (code, out, err) = agent.cli_within(
        &["vm", "migrate", "mover", "--cold", "--to", target_name],
        BOOT * 3,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("moved from {here} to {target_name}")),
        "{out}"
    );
    assert!(
        err.contains("stopping") || err.contains("copying"),
        "progress: {err}"
    );

    // The guest counts on from its own disk: 3, never a fresh 1.
    wait_boots(target, &id, &[3]);
    let row = vm(agent, "mover").unwrap();
    assert_eq!(row["host"], target_name, "{row}");
    assert_eq!(row["disk"]["host"], target_name, "{row}");
    assert_eq!(row["disk"]["generation"], 2, "{row}");
    assert!(row.get("migration").is_none(), "{row}");
    let disk = vm_dir(target, &id).join("disk.qcow2");
    let backing = hearth_qemu::disk::backing_file(&disk).unwrap().unwrap();
    assert!(
        backing.starts_with(target.dir.join("data").join("images")),
        "the copy uses the target's own image file: {}",
        backing.display()
    );
    one_qemu(target);
    assert!(qemu_pids_under(&source.dir).is_empty(), "it runs once");

    // The source's copy is archived whole, not deleted, and nothing is drift.
    let archived = eventually("the copy left behind archived", BOOT, || {
        archived_copy(source, &id, 1).ok_or_else(|| "not yet".to_owned())
    });
    assert!(archived.join("disk.qcow2").is_file());
    assert!(!vm_dir(source, &id).exists());
    wait_passes(source, 2);
    let drift = agent.api_json("/v1/drift").unwrap();
    assert_eq!(drift, serde_json::json!([]), "{drift}");

    // `hearth hosts` shows the N+1 check.
    let hosts = agent.cli(&["hosts"]);
    assert!(hosts.matches(" yes").count() >= 3, "{hosts}");
    live_moves(&cluster, &id, t);
}

/// The guest's last tick on `host`'s console since its last boot there (ticks count from 1
/// at each boot), once it has ticked there.
fn last_tick(host: &TestAgent, id: &str) -> u64 {
    eventually(&format!("{id} ticking on {}", host.spec.name), BOOT, || {
        let text = console(host, id);
        let since_boot = text
            .rfind("HEARTH-GUEST-BOOTS")
            .map_or(text.as_str(), |at| &text[at..]);
        ticks(since_boot)
            .last()
            .copied()
            .ok_or_else(|| "no tick yet".to_owned())
    })
}

/// Waits until the VM's move shows `stage` with some bytes copied; returns the row.
fn wait_stage(agent: &TestAgent, name: &str, stage: &str) -> Value {
    eventually(&format!("{name} at {stage}"), BOOT, || {
        let row = vm(agent, name)?;
        let moving = &row["migration"];
        if moving["stage"] == stage && moving["done_bytes"].as_u64().unwrap_or(0) > 0 {
            Ok(row)
        } else {
            Err(row.to_string())
        }
    })
}

/// From VM `id` running (booted 3 times) on host `t`: a live move that fails midway, one that
/// succeeds, and an evacuation, each checked on the guest's own console and disk.
fn live_moves(cluster: &TestCluster, id: &str, t: usize) {
    let agent = &cluster.agents[0];
    let u = other(t);
    let (source, target) = (&cluster.agents[t], &cluster.agents[u]);
    let (here, target_name) = (source.spec.name.as_str(), target.spec.name.as_str());
    let ips = vm(agent, "mover").unwrap()["ips"].clone();

    // The target's QEMU is killed while the disk and RAM are on their way: the move is given
    // up, and the VM runs on where it was, in the same QEMU (no boot), ticking on.
    let pid = one_qemu(source);
    let (code, out, err) =
        agent.cli_result(&["vm", "migrate", "mover", "--to", target_name, "--no-wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_stage(agent, "mover", "mirroring");
    let incoming = one_qemu(target);
    kill_pid(incoming);
    let row = eventually("the live move given up", BOOT, || {
        let row = vm(agent, "mover")?;
        match row.get("migration") {
            None => Ok(row),
            Some(_) => Err(row.to_string()),
        }
    });
    assert_eq!(row["host"], here, "{row}");
    assert!(
        row["move_given_up"]
            .as_str()
            .unwrap_or("")
            .contains("given up"),
        "{row}"
    );
    let before = last_tick(source, id);
    eventually(
        "the guest ticking on at its source",
        BOOT,
        || match last_tick(source, id) {
            n if n > before + 2 => Ok(()),
            n => Err(format!("tick {n}")),
        },
    );
    assert_eq!(one_qemu(source), pid, "the same QEMU runs on");
    assert_eq!(boots(&console(source, id)), [3], "no boot");
    eventually(
        "nothing of the failed move left on the target",
        BOOT,
        || match (
            qemu_pids_under(&target.dir).is_empty(),
            vm_dir(target, id).with_extension("incoming").exists(),
        ) {
            (true, false) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(vm(agent, "mover").unwrap()["disk"]["generation"], 2);

    // The live move, followed by the CLI to the end: the guest ticks on on the target from
    // where it was, without a boot, once.
    let before = last_tick(source, id);
    let (code, out, err) =
        agent.cli_within(&["vm", "migrate", "mover", "--to", target_name], BOOT * 3);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("moved from {here} to {target_name}")),
        "{out}"
    );
    assert!(err.contains("live"), "progress: {err}");
    let after = last_tick(target, id);
    let text = console(target, id);
    assert!(boots(&text).is_empty(), "no boot on the target: {text}");
    assert!(ticks(&text)[0] > before, "ticks on from {before}: {text}");
    assert!(after > before, "{after} after {before}");
    let row = wait_phase(agent, "mover", "running");
    assert_eq!(row["host"], target_name, "{row}");
    assert_eq!(row["disk"]["host"], target_name, "{row}");
    assert_eq!(row["disk"]["generation"], 3, "{row}");
    assert_eq!(row["ips"], ips, "same addresses: {row}");
    one_qemu(target);
    eventually("the source's QEMU gone", BOOT, || {
        match qemu_pids_under(&source.dir)[..] {
            [] => Ok(()),
            ref pids => Err(format!("{pids:?}")),
        }
    });
    let archived = eventually("the copy left behind archived", BOOT, || {
        archived_copy(source, id, 2).ok_or_else(|| "not yet".to_owned())
    });
    assert!(archived.join("disk.qcow2").is_file());
    // The move's key files are gone from both ends.
    assert!(!archived.join("tls").exists());
    assert!(!vm_dir(target, id).join("tls").exists());
    let disk = vm_dir(target, id).join("disk.qcow2");
    let backing = hearth_qemu::disk::backing_file(&disk).unwrap().unwrap();
    assert!(
        backing.starts_with(target.dir.join("data").join("images")),
        "{}",
        backing.display()
    );
    wait_passes(target, 2);
    assert_eq!(agent.api_json("/v1/drift").unwrap(), serde_json::json!([]));

    // The evacuation of the host moves it on again, live, though this QEMU itself came in
    // live; and so does the evacuation of the host after (no reboot in between).
    let third = evacuate_live(cluster, id, target_name, 4);
    let fourth = evacuate_live(cluster, id, &third.spec.name, 5);

    // A reboot where it is now reads the disk it has: the boot counter says 4 and the last
    // tick it finds is one the guest wrote there (the mirrors kept every write).
    let after = last_tick(fourth, id);
    agent.cli(&["vm", "reboot", "mover"]);
    wait_boots(fourth, id, &[4]);
    let text = console(fourth, id);
    let found = hearth_testkit::vms::last_tick_at_boot(&text, 3)
        .unwrap_or_else(|| panic!("no last tick: {text}"));
    assert!(found >= after, "the disk kept tick {after}, found {found}");
}

/// `hearth node evacuate HOST` of the host VM `id` ("mover") runs on: it moves live (no
/// boot, ticking on) to another host, at disk generation `generation`, and the host ends
/// empty with its evacuation done. Returns the host it runs on now.
fn evacuate_live<'c>(
    cluster: &'c TestCluster,
    id: &str,
    host: &str,
    generation: u64,
) -> &'c TestAgent {
    let agent = &cluster.agents[0];
    let from = cluster.agents.iter().find(|a| a.spec.name == host).unwrap();
    let before = last_tick(from, id);
    let (code, out, err) = agent.cli_within(&["node", "evacuate", host], BOOT * 3);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("evacuated"), "{out}");
    let row = wait_phase(agent, "mover", "running");
    let now = &cluster.agents[host_index(cluster, &row)];
    assert!(now.spec.name != host, "{row}");
    let text = console(now, id);
    assert!(boots(&text).is_empty(), "moved live: {text}");
    let moved_at = last_tick(now, id);
    assert!(moved_at > before, "{moved_at} after {before}");
    assert_eq!(row["disk"]["generation"], generation, "{row}");
    assert!(row["move_given_up"].is_null(), "{row}");
    let hosts: Value = agent.api_json("/v1/hosts").unwrap();
    let evacuated = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == host)
        .unwrap();
    assert_eq!(evacuated["evacuation"]["state"], "done", "{evacuated}");
    assert_eq!(evacuated["vms"], 0, "{evacuated}");
    now
}

/// `hearth node evacuate` of a host with two running VMs: both move off, one at a time, live
/// (no new boot), each on its own disk, and the host ends empty with its evacuation done.
#[test]
fn evacuating_a_two_vm_host_moves_both_live_and_empties_it() {
    let cluster = three_workers();
    let agent = &cluster.agents[0];
    // Both VMs on n1: the other hosts are drained while they are created.
    let names: Vec<String> = cluster.agents.iter().map(|a| a.spec.name.clone()).collect();
    for name in &names[1..] {
        agent.cli(&["node", "drain", name]);
    }
    let (h1, id1) = running_vm(&cluster, 0, "pair1");
    let (h2, id2) = running_vm(&cluster, 0, "pair2");
    assert_eq!((h1, h2), (0, 0), "both on n1");
    for name in &names[1..] {
        agent.cli(&["node", "undrain", name]);
    }
    let (code, out, err) = agent.cli_within(&["node", "evacuate", &names[0]], BOOT * 4);
    assert_eq!(code, Some(0), "{out}{err}");
    for (name, id) in [("pair1", &id1), ("pair2", &id2)] {
        let row = wait_phase(agent, name, "running");
        let host = host_index(&cluster, &row);
        assert_ne!(host, 0, "{row}");
        // Its own disk, and no reboot: the guest's boot counter shows no new boot.
        let text = console(&cluster.agents[host], id);
        assert!(boots(&text).is_empty(), "moved live: {text}");
        assert_eq!(row["disk"]["generation"], 2, "{row}");
    }
    let hosts: Value = agent.api_json("/v1/hosts").unwrap();
    let evacuated = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == names[0].as_str())
        .unwrap();
    assert_eq!(evacuated["evacuation"]["state"], "done", "{evacuated}");
    assert_eq!(evacuated["vms"], 0, "{evacuated}");
}
