//! Backups of a running VM into a real restic repository, from the real QEMU guest a real
//! agent runs (the guest writes a tick to its own disk every second): the point-in-time
//! copy (`Driver::copy_disk`, QMP `blockdev-backup`) never stops the guest; a second backup
//! after the guest changed its disk stores little more than the change; each snapshot
//! dumps back to the disk as it was at its time; a copy that cannot be written fails and
//! leaves the guest running on its disk. Through the cluster: a member backs her VM up and
//! restores it (the guest boots on the backup's disk, its boot counter and last tick from
//! the backup's time, the disk before archived), and a target that fails is retried, then
//! shown as failed. A plan's daily schedule backs a new VM up at once, its retention
//! forgets the snapshots it keeps no more (in the state and the repository), the plan
//! limits a member's own backups a day, and a VM's own schedule or none replaces it. And
//! disaster recovery: every server's state wiped, `hearth restore --from REPO` on the
//! reinstalled server brings back the accounts and VMs with their addresses, each VM's disk
//! from its newest backup (a VM never backed up is lost, never given a blank disk), and the
//! member makes a new VM from a snapshot of hers. A second backend: an S3 bucket (moto's
//! server), its keys in an env file. And the README's backup commands, run as written in a
//! private mount namespace with its own `/etc/hearth` and `/srv`. And a worker restarted
//! after an interruption removes a backup's copies and archives a restore's stale disk. A
//! restore stuck on a dead worker is aborted by an admin, and the VM keeps its disk.

use std::path::Path;

use hearth_compute::restic::Repo;
use hearth_qemu::accel::Accel;
use hearth_qemu::driver::{Driver, Network};
use hearth_qemu::last_backup::Hold;
use hearth_testkit::vms::{
    BOOT, console, create_tiny, disk_tick_as, ticks, vm_dir, wait_for_hosts,
};
use hearth_testkit::{TempDir, TestAgent, TestCluster, eventually};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// The guest's last tick on its console.
fn last_tick(agent: &TestAgent, id: &str) -> u64 {
    ticks(&console(agent, id)).last().copied().unwrap_or(0)
}

/// Waits until the guest ticked past `n` on its console: it runs.
fn ticks_past(agent: &TestAgent, id: &str, n: u64) {
    eventually(
        &format!("{id} to tick past {n}"),
        BOOT,
        || match last_tick(agent, id) {
            t if t > n => Ok(()),
            t => Err(format!("tick {t}")),
        },
    );
}

/// A one-node server and worker with the test guest as image `tiny`; `state` goes into its
/// `[state]` section.
fn one_worker(state: &str) -> TestCluster {
    one_worker_in(state, None)
}

/// [`one_worker`], its agent in the mount namespace held by process `mount_ns`, if any.
fn one_worker_in(state: &str, mount_ns: Option<u32>) -> TestCluster {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.mount_ns = mount_ns;
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n{state}[compute]\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 20\n"
        );
    });
    wait_for_hosts(&cluster.agents[0], 1);
    cluster.agents[0].add_test_guest(&hearth_testkit::test_guest());
    cluster
}

#[test]
fn a_running_guest_is_backed_up_twice_incrementally_and_dumps_back_as_it_was() {
    let cluster = one_worker("");
    let agent = &cluster.agents[0];
    create_tiny(agent, "box", &[]);
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    ticks_past(agent, &id, 3);

    let root = vm_dir(agent, &id).parent().unwrap().to_owned();
    let driver = Driver::new(root, Accel::Tcg, Network::User);
    let work = TempDir::new("backups");
    std::fs::write(
        work.path().join("password"),
        "a restic password of some length\n",
    )
    .unwrap();
    let repo = Repo {
        location: work.path().join("repo").display().to_string(),
        password_file: work.path().join("password"),
        cache_dir: work.path().join("cache"),
        env: vec![],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let copy = work.path().join(format!("{id}.last-backup"));
    let descriptor = copy.join("disk.vmdk");
    runtime.block_on(repo.ensure()).unwrap();
    // Made twice: the second finds it there.
    runtime.block_on(repo.ensure()).unwrap();

    // The first backup: the whole disk is read while the guest ticks on.
    let copied = runtime.block_on(driver.copy_disk(&id, &copy)).unwrap();
    let size = copied.size;
    assert_eq!(
        (size, copied.read, copied.incremental),
        (1 << 30, 1 << 30, false)
    );
    let first_tick = disk_tick_as(&descriptor, "vmdk").unwrap();
    let held = Hold::try_take(&copy)
        .unwrap()
        .expect("nothing else holds the copy");
    let first = runtime
        .block_on(repo.backup(&id, "n1", (&copy, &held), None))
        .unwrap();
    drop(held);
    assert_eq!(first.files_unmodified, 0, "{first:?}");
    ticks_past(agent, &id, first_tick + 2);

    // The second, after more ticks: only the blocks written since are read, restic reads
    // only the parts they fell in, and only about the change is stored.
    let copied = runtime.block_on(driver.copy_disk(&id, &copy)).unwrap();
    assert!(copied.incremental && copied.read < 64 << 20, "{copied:?}");
    let second_tick = disk_tick_as(&descriptor, "vmdk").unwrap();
    assert!(second_tick > first_tick, "{first_tick} then {second_tick}");
    let held = Hold::try_take(&copy)
        .unwrap()
        .expect("the first restic let go");
    let second =
        (runtime.block_on(repo.backup(&id, "n1", (&copy, &held), Some(&first.snapshot_id))))
            .unwrap();
    drop(held);
    assert!(second.files_unmodified >= 200, "{second:?}");
    assert!(
        second.data_added < 8 << 20,
        "the second backup stored {} bytes (the first {})",
        second.data_added,
        first.data_added
    );

    // With the guest paused, a copy of only what changed is the whole disk, byte for byte.
    let disk = vm_dir(agent, &id).join("disk.qcow2");
    runtime.block_on(driver.execute(&id, "stop", None)).unwrap();
    let copied = runtime.block_on(driver.copy_disk(&id, &copy));
    let compared = std::process::Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "vmdk"])
        .args([&disk, &descriptor])
        .output()
        .unwrap();
    runtime.block_on(driver.execute(&id, "cont", None)).unwrap();
    assert!(copied.unwrap().incremental);
    assert!(compared.status.success(), "{compared:?}");

    // Each snapshot dumps back to the disk of its time.
    let snapshots = runtime.block_on(repo.list(&id)).unwrap();
    let ids: Vec<&str> = snapshots.iter().map(|s| s.short_id.as_str()).collect();
    assert_eq!(
        ids,
        [first.snapshot_id.as_str(), second.snapshot_id.as_str()]
    );
    let dumped = work.path().join("dumped.raw");
    for (snapshot, tick) in [(&first, first_tick), (&second, second_tick)] {
        runtime
            .block_on(repo.dump(&id, &snapshot.snapshot_id, &dumped))
            .unwrap();
        assert_eq!(std::fs::metadata(&dumped).unwrap().len(), size);
        assert_eq!(disk_tick_as(&dumped, "raw").unwrap(), tick);
    }

    // A copy that cannot be written fails, and the guest runs on its disk, never rebooted.
    let nowhere = work.path().join("password").join("copy");
    assert!(runtime.block_on(driver.copy_disk(&id, &nowhere)).is_err());
    let now = last_tick(agent, &id);
    ticks_past(agent, &id, now + 2);
    let text = console(agent, &id);
    assert_eq!(hearth_testkit::vms::boots(&text), [1], "{text}");
    let on_disk = disk_tick_as(&disk, "qcow2").unwrap();
    assert!(on_disk > second_tick, "{on_disk}");

    // QEMU killed: its bitmap is gone with it, so the next copy reads the whole disk again.
    let pid = driver.pid(&id).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the guest restarted", BOOT, || match driver.pid(&id) {
        Some(new) if new != pid => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let copied = eventually("a copy from the restarted QEMU", BOOT, || {
        runtime
            .block_on(driver.copy_disk(&id, &copy))
            .map_err(|e| e.to_string())
    });
    assert_eq!((copied.read, copied.incremental), (size, false));
}

/// Runs `hearth ARGS` as the account of `token`; panics unless it succeeds.
#[test]
fn a_restarted_worker_sweeps_what_an_interrupted_backup_or_restore_left() {
    let mut cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\n".into();
    });
    wait_for_hosts(&cluster.agents[0], 1);
    let agent = &mut cluster.agents[0];
    agent.kill9();
    // What a worker killed in the middle of a backup, and after a restore's disk was made
    // for a VM the cluster no longer has, leaves beside the VMs' directories.
    let (copy, restored) = (vm_dir(agent, "gone.backup"), vm_dir(agent, "gone.restored"));
    for dir in [&copy, &restored] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("disk.raw"), b"a disk").unwrap();
    }
    agent.restart();
    let archive = agent.dir.join("data").join("vms-archive");
    eventually("the leftovers swept", BOOT, || {
        let archived: Vec<String> = std::fs::read_dir(&archive)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        match (copy.exists(), restored.exists(), archived.as_slice()) {
            (false, false, [one]) if one.starts_with("gone.restored-") => Ok(()),
            state => Err(format!("{state:?}")),
        }
    });
    let kept = std::fs::read_dir(&archive)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read(kept.path().join("disk.raw")).unwrap(),
        b"a disk"
    );
}

fn ok_as(agent: &TestAgent, token: &str, args: &[&str]) -> String {
    agent.cli_ok_as(token, args)
}

#[test]
fn a_member_backs_up_and_restores_her_vm_and_a_failing_target_is_retried_then_shown() {
    let cluster = one_worker("");
    let agent = &cluster.agents[0];
    let mia = agent.make_member("mia");
    let bo = agent.make_member("bo");
    agent.cli(&[
        "vm",
        "create",
        "box",
        "--image",
        "tiny",
        "--owner",
        "mia",
        "--memory-mib",
        "256",
        "--disk-gib",
        "1",
        "--pool",
        "lan",
    ]);
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    ticks_past(agent, &id, 3);

    // No target yet: the member is told to ask an admin.
    let (code, _, stderr) = agent.cli_as(&mia, &["backup", "now", "box"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("no backup target"), "{stderr}");
    // Members may not name targets.
    let work = TempDir::new("backup-targets");
    let password = work.path().join("password");
    std::fs::write(&password, "the co-op's restic password\n").unwrap();
    let location = work.path().join("repo").display().to_string();
    let put = [
        "backup",
        "target",
        "put",
        "local",
        "--location",
        &location,
        "--password-file",
        password.to_str().unwrap(),
    ];
    let (code, _, stderr) = agent.cli_as(&mia, &put);
    assert_ne!(code, Some(0), "{stderr}");
    agent.cli(&put);

    // Her backup, while the guest runs: stored, shown to her and to no other member.
    let before = last_tick(agent, &id);
    let out = ok_as(agent, &mia, &["backup", "now", "box"]);
    assert!(out.contains("stored in local"), "{out}");
    let row: serde_json::Value =
        serde_json::from_str(&ok_as(agent, &mia, &["backups", "box", "--json"])).unwrap();
    let snapshots = row["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{row}");
    assert_eq!(snapshots[0]["by"], "mia");
    assert_eq!(row["status"], "idle");
    let listed: serde_json::Value =
        serde_json::from_str(&ok_as(agent, &bo, &["backups", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]));
    let (code, _, stderr) = agent.cli_as(&bo, &["backups", "box"]);
    assert_ne!(code, Some(0), "{stderr}");
    let (code, _, _) = agent.cli_as(&bo, &["backup", "now", "box"]);
    assert_ne!(code, Some(0));

    // It is in the repository, and dumps back to her disk as it was then.
    let repo = Repo {
        location: location.clone(),
        password_file: password.clone(),
        cache_dir: work.path().join("cache"),
        env: vec![],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(repo.list(&id)).unwrap();
    let snapshot_id = snapshots[0]["id"].as_str().unwrap();
    assert!(
        stored.iter().any(|s| s.id.starts_with(snapshot_id)),
        "{stored:?} lacks {snapshot_id}"
    );
    let dumped = work.path().join("dumped.raw");
    runtime
        .block_on(repo.dump(&id, snapshot_id, &dumped))
        .unwrap();
    let tick = disk_tick_as(&dumped, "raw").unwrap();
    assert!(
        tick + 1 >= before,
        "the copy's tick {tick}, the guest's {before} before"
    );

    // A target whose password file is missing: three attempts, then `failed`, with why,
    // in the list and the metrics; the guest never stops.
    agent.cli(&[
        "backup",
        "target",
        "put",
        "broken",
        "--location",
        &location,
        "--password-file",
        "/nonexistent/password",
    ]);
    let (code, _, stderr) = agent.cli_as(&mia, &["backup", "now", "box", "--target", "broken"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("backup failed"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&agent.cli(&["backups", "--json"])).unwrap();
    assert_eq!(rows[0]["status"], "failed", "{rows}");
    assert_eq!(rows[0]["failures"], 3, "{rows}");
    assert!(
        rows[0]["last_error"].as_str().unwrap().contains("password"),
        "{rows}"
    );
    assert!(agent.metric("hearth_backup_failures_total") >= 3);
    let now = last_tick(agent, &id);
    ticks_past(agent, &id, now + 1);
    assert_eq!(hearth_testkit::vms::boots(&console(agent, &id)), [1]);

    // The next run into the good target stores only about the change.
    let out = ok_as(agent, &mia, &["backup", "now", "box", "--target", "local"]);
    assert!(out.contains("stored"), "{out}");
    let row: serde_json::Value =
        serde_json::from_str(&ok_as(agent, &mia, &["backups", "box", "--json"])).unwrap();
    let snapshots = row["snapshots"].as_array().unwrap();
    assert_eq!(
        (snapshots.len(), &row["status"]),
        (2, &serde_json::json!("idle")),
        "{row}"
    );
    let added = snapshots[1]["added_bytes"].as_u64().unwrap();
    assert!(added < 8 << 20, "the second run added {added} bytes");
    // The first run read the whole disk; the second only what the guest wrote since.
    let read = |n: usize| snapshots[n]["read_bytes"].as_u64().unwrap();
    assert_eq!(read(0), snapshots[0]["size_bytes"].as_u64().unwrap());
    assert!(read(1) < 64 << 20, "the second run read {} bytes", read(1));
    assert_eq!(agent.metric("hearth_backups_stored_total"), 2);

    // The guest goes on writing; then she restores the second snapshot. Without a terminal
    // the confirmation, naming the snapshot's time, needs --yes.
    let snapshot = snapshots[1]["id"].as_str().unwrap().to_owned();
    runtime
        .block_on(repo.dump(&id, &snapshot, &dumped))
        .unwrap();
    let backed_up = disk_tick_as(&dumped, "raw").unwrap();
    ticks_past(agent, &id, backed_up + 3);
    let (code, _, stderr) = agent.cli_as(&mia, &["backup", "restore", "box", &snapshot]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--yes") && stderr.contains("UTC"),
        "{stderr}"
    );
    let out = ok_as(
        agent,
        &mia,
        &["backup", "restore", "box", &snapshot, "--yes"],
    );
    assert!(out.contains("restored from snapshot"), "{out}");
    // It runs again on the snapshot's disk: its second boot, which found the tick of the
    // backup's time on its disk (a fresh disk would boot for the first time).
    hearth_testkit::vms::wait_phase(agent, "box", "running");
    eventually("the restored guest's boot", BOOT, || {
        let text = console(agent, &id);
        match hearth_testkit::vms::last_tick_at_boot(&text, 1) {
            Some(tick) => Ok(tick),
            None => Err(text),
        }
    });
    let text = console(agent, &id);
    assert_eq!(hearth_testkit::vms::boots(&text).last(), Some(&2), "{text}");
    assert_eq!(
        hearth_testkit::vms::last_tick_at_boot(&text, 1),
        Some(backed_up),
        "{text}"
    );
    let row: serde_json::Value =
        serde_json::from_str(&ok_as(agent, &mia, &["backups", "box", "--json"])).unwrap();
    assert_eq!(row["restored"]["snapshot"], snapshot.as_str(), "{row}");
    assert_eq!(row["status"], "idle", "{row}");
    // The disk it had before is archived on its host, not deleted.
    let archive = hearth_qemu::disk::archive_root(vm_dir(agent, &id).parent().unwrap());
    let archived: Vec<String> = std::fs::read_dir(&archive)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        archived.iter().any(|name| name.contains(&id)),
        "{archived:?}"
    );

    in_the_panel(agent, &mia, &id, &repo, &runtime, &dumped);
}

/// She backs up and restores again from the panel, in headless Chromium: "Back up now",
/// then a snapshot's "Restore…" and the one confirmation, which names its time.
fn in_the_panel(
    agent: &TestAgent,
    mia: &str,
    id: &str,
    repo: &Repo,
    runtime: &tokio::runtime::Runtime,
    dumped: &Path,
) {
    let browser = hearth_testkit::webdriver::Browser::start(1100, 900);
    let base = format!("http://{}", agent.api_addr());
    browser.log_in(&base, "mia", "mia's long password");
    browser.goto(&format!("{base}/panel/vms/{id}"));
    browser.click("#backups");
    browser.click("form[action$='/backups'] button");
    let row = eventually("the panel's backup", BOOT, || {
        let row: serde_json::Value =
            serde_json::from_str(&ok_as(agent, mia, &["backups", "box", "--json"])).unwrap();
        match row["snapshots"].as_array().map(Vec::len) {
            Some(3) if row["status"] == "idle" => Ok(row),
            _ => Err(row.to_string()),
        }
    });
    let snapshot = row["snapshots"][2]["id"].as_str().unwrap().to_owned();
    let time_ms = row["snapshots"][2]["time_ms"].as_u64().unwrap();
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms),
    )
    .to_string();
    runtime.block_on(repo.dump(id, &snapshot, dumped)).unwrap();
    let backed_up = disk_tick_as(dumped, "raw").unwrap();
    ticks_past(agent, id, backed_up + 3);

    let page = format!("{base}/panel/vms/{id}/backups");
    browser.goto(&page);
    browser.click(&format!("#restore-{snapshot}"));
    let question = browser.text("#restore-question").unwrap();
    assert!(question.contains(&when), "{question} lacks {when}");
    browser.click("form[action$='/restore'] button");
    browser.wait_for_text(
        &page,
        &format!("Restored from the snapshot of {when}"),
        BOOT,
    );
    eventually("the guest's third boot, on the backup's disk", BOOT, || {
        let text = console(agent, id);
        match hearth_testkit::vms::last_tick_at_boot(&text, 2) {
            Some(tick) => Ok(tick),
            None => Err(text),
        }
    });
    let text = console(agent, id);
    assert_eq!(hearth_testkit::vms::boots(&text).last(), Some(&3), "{text}");
    assert_eq!(
        hearth_testkit::vms::last_tick_at_boot(&text, 2),
        Some(backed_up),
        "{text}"
    );

    // The same page makes a new VM from the snapshot instead, named as she says.
    browser.goto(&format!("{page}/{snapshot}/restore"));
    browser.fill("#restore-new input[name=name]", "box-then");
    browser.click("#restore-new button");
    eventually("the panel to say it is made", BOOT, || {
        let shown = browser.source();
        match shown.contains("box-then is made") {
            true => Ok(()),
            false => Err(shown),
        }
    });
    let row: serde_json::Value =
        serde_json::from_str(&ok_as(agent, mia, &["backups", "box-then", "--json"])).unwrap();
    let from = row["recover"]["snapshot"]["id"]
        .as_str()
        .or(row["restored"]["snapshot"].as_str());
    assert_eq!(from, Some(snapshot.as_str()), "{row}");
    assert_eq!(row["owner"], "mia", "{row}");
}

/// The time of day `minutes` ago, UTC, as `HH:MM`.
fn utc_hh_mm_ago(minutes: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let of_day = (now / 60 + 24 * 60 - minutes) % (24 * 60);
    format!("{:02}:{:02}", of_day / 60, of_day % 60)
}

/// A VM's backups row, as `hearth backups VM --json` prints it.
fn backups_of(agent: &TestAgent, vm: &str) -> serde_json::Value {
    serde_json::from_str(&agent.cli(&["backups", vm, "--json"])).unwrap()
}

#[test]
fn a_plans_schedule_backs_up_at_once_then_daily_keeps_what_it_says_and_limits_members() {
    let cluster = one_worker("backup_interval = \"10s\"\n");
    let agent = &cluster.agents[0];
    let work = TempDir::new("backup-schedule");
    let password = work.path().join("password");
    std::fs::write(&password, "the co-op's restic password\n").unwrap();
    let location = work.path().join("repo").display().to_string();
    // A plan naming a target that does not exist is refused.
    let at = utc_hh_mm_ago(60);
    let plan = |target: &str| {
        agent.cli_result(&[
            "plan",
            "set",
            "default",
            "--backups-per-day",
            "1",
            "--backup-at",
            &at,
            "--backup-target",
            target,
            "--keep-daily",
            "1",
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
        ])
    };
    let (code, _, stderr) = plan("local");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("backup.target"), "{stderr}");
    agent.cli(&[
        "backup",
        "target",
        "put",
        "local",
        "--location",
        &location,
        "--password-file",
        password.to_str().unwrap(),
    ]);
    let (code, stdout, stderr) = plan("local");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let alice = agent.make_member("alice");
    create_tiny(agent, "box", &[]);
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();

    // The plan's schedule backs the new VM up at once (its time passed an hour ago), as the
    // schedule's, and the next is due tomorrow at that time.
    let row = eventually("the first scheduled backup", BOOT, || {
        let row = backups_of(agent, "box");
        match row["snapshots"].as_array().map(Vec::len) {
            Some(1) => Ok(row),
            _ => Err(row.to_string()),
        }
    });
    let scheduled = row["snapshots"][0].clone();
    assert!(scheduled.get("by").is_none(), "{row}");
    assert_eq!(row["policy"]["at"], at.as_str(), "{row}");
    let next = row["next_ms"].as_u64().unwrap();
    let slot = row["scheduled_ms"].as_u64().unwrap();
    assert_eq!(next, slot + 24 * 3600 * 1000, "{row}");
    let table = agent.cli(&["backups"]);
    assert!(
        table.contains(&format!("{at} UTC → local, keep 1d 0w 0m")),
        "{table}"
    );

    // Her own backup: the plan allows one a day. Retention keeps only the newest snapshot
    // of the day, so the scheduled one is forgotten, in the state and in the repository.
    let out = ok_as(agent, &alice, &["backup", "now", "box"]);
    assert!(out.contains("stored in local"), "{out}");
    let row = backups_of(agent, "box");
    let snapshots = row["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{row}");
    assert_eq!(snapshots[0]["by"], "alice", "{row}");
    let repo = Repo {
        location: location.clone(),
        password_file: password.clone(),
        cache_dir: work.path().join("cache"),
        env: vec![],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(repo.list(&id)).unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        stored[0]
            .id
            .starts_with(snapshots[0]["id"].as_str().unwrap())
    );
    let (code, _, stderr) = agent.cli_as(&alice, &["backup", "now", "box"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("allows 1 backups of a VM a day"),
        "{stderr}"
    );
    // An admin's backup is not counted.
    let out = agent.cli(&["backup", "now", "box"]);
    assert!(out.contains("stored"), "{out}");

    // A schedule of the VM's own, at another time: its slot is new, so it runs at once;
    // keeping every snapshot, nothing is forgotten.
    let own = utc_hh_mm_ago(30);
    let (code, _, stderr) = agent.cli_as(&alice, &["backup", "schedule", "box", "--off"]);
    assert_ne!(code, Some(0), "members do not set schedules: {stderr}");
    let out = agent.cli(&[
        "backup",
        "schedule",
        "box",
        "--at",
        &own,
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ]);
    assert!(out.contains(&format!("daily at {own} UTC")), "{out}");
    let before = backups_of(agent, "box")["snapshots"]
        .as_array()
        .unwrap()
        .len();
    eventually("the VM's own schedule's backup", BOOT, || {
        let row = backups_of(agent, "box");
        match row["snapshots"].as_array().map(Vec::len) {
            Some(n) if n == before + 1 && row["status"] == "idle" => Ok(()),
            _ => Err(row.to_string()),
        }
    });
    // Off: no schedule, no next run.
    agent.cli(&["backup", "schedule", "box", "--off"]);
    let row = backups_of(agent, "box");
    assert!(
        row.get("policy").is_none() && row.get("next_ms").is_none(),
        "{row}"
    );
    // The cluster's own state is backed up into the target too, for disaster recovery: a
    // snapshot taken after all this holds the VM, its owner and the plan's schedule.
    let since = hearth_compute::unix_ms();
    let row = eventually("a backup of the state", BOOT, || {
        let rows: serde_json::Value =
            serde_json::from_str(&agent.cli(&["backups", "--state", "--json"])).unwrap();
        match rows[0]["last"]["time_ms"].as_u64() {
            Some(t) if t > since => Ok(rows[0].clone()),
            _ => Err(rows.to_string()),
        }
    });
    assert_eq!(row["target"], "local", "{row}");
    let snapshot = row["last"]["id"].as_str().unwrap();
    let json = runtime
        .block_on(repo.dump_bytes(snapshot, hearth_agent::state_backups::FILE))
        .unwrap();
    let file: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(file["index"].as_u64().unwrap() > 0, "{}", file["index"]);
    let state = &file["state"];
    let vm = &state["compute"]["vms"][&id];
    assert_eq!(vm["value"]["name"], "box", "{vm}");
    assert_eq!(state["accounts"]["alice"]["value"]["role"], "member");
    assert_eq!(
        state["plans"]["default"]["value"]["backup"]["at"],
        at.as_str()
    );
    // The VM's snapshots are still its own.
    let stored = runtime.block_on(repo.list(&id)).unwrap();
    assert!(
        stored.iter().all(|s| s.tags == [format!("vm={id}")]),
        "{stored:?}"
    );

    // The target cannot be removed while the plan's schedule uses it.
    let (code, _, stderr) = agent.cli_result(&["backup", "target", "rm", "local"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("plan default"), "{stderr}");
}

#[test]
fn a_guest_is_backed_up_into_an_s3_bucket_with_keys_from_an_env_file() {
    let s3 = hearth_testkit::S3Server::start();
    let cluster = one_worker("");
    let agent = &cluster.agents[0];
    create_tiny(agent, "box", &[]);
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    ticks_past(agent, &id, 3);

    let work = TempDir::new("s3-target");
    let password = work.path().join("password");
    std::fs::write(&password, "the co-op's restic password\n").unwrap();
    let env_file = work.path().join("s3.env");
    let secret = "a-secret-key-of-the-bucket";
    std::fs::write(
        &env_file,
        format!("# the bucket's keys\nAWS_ACCESS_KEY_ID=hearth\nAWS_SECRET_ACCESS_KEY={secret}\n"),
    )
    .unwrap();
    let location = format!("s3:{}/hearth-backups", s3.endpoint);
    agent.cli(&[
        "backup",
        "target",
        "put",
        "s3",
        "--location",
        &location,
        "--password-file",
        password.to_str().unwrap(),
        "--env-file",
        env_file.to_str().unwrap(),
    ]);
    let out = agent.cli(&["backup", "now", "box"]);
    assert!(out.contains("stored in s3"), "{out}");
    let before = last_tick(agent, &id);
    ticks_past(agent, &id, before + 3);
    let out = agent.cli(&["backup", "now", "box"]);
    assert!(out.contains("stored in s3"), "{out}");
    let row = backups_of(agent, "box");
    let snapshots = row["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{row}");
    let added = snapshots[1]["added_bytes"].as_u64().unwrap();
    assert!(added < 8 << 20, "the second run added {added} bytes");

    // In the bucket: the second snapshot dumps back to the disk as it was then.
    let env =
        hearth_compute::restic::env_lines(&std::fs::read_to_string(&env_file).unwrap()).unwrap();
    let repo = Repo {
        location,
        password_file: password.clone(),
        cache_dir: work.path().join("cache"),
        env,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dumped = work.path().join("dumped.raw");
    let snapshot = snapshots[1]["id"].as_str().unwrap();
    runtime.block_on(repo.dump(&id, snapshot, &dumped)).unwrap();
    let tick = disk_tick_as(&dumped, "raw").unwrap();
    assert!(
        tick + 1 >= before + 3,
        "the copy's tick {tick}, the guest's {before} + 3 before"
    );
    // The keys stay in their file: the cluster's state names the file, never the key.
    let state = agent.api_json("/v1/desired").unwrap().to_string();
    assert!(state.contains("s3.env") && !state.contains(secret));
}

/// Kills the agent and the QEMU processes it started, and wipes its data directory: the
/// server is gone with everything on it but its config.
fn burn_down(agent: &mut TestAgent) {
    agent.kill9();
    for pid in hearth_testkit::qemu_pids_under(&agent.dir) {
        hearth_testkit::kill_pid(pid);
    }
    eventually(
        "the guests to be gone",
        BOOT,
        || match hearth_testkit::qemu_pids_under(&agent.dir) {
            pids if pids.is_empty() => Ok(()),
            pids => Err(format!("{pids:?}")),
        },
    );
    std::fs::remove_dir_all(agent.dir.join("data")).unwrap();
}

#[test]
fn the_whole_cluster_comes_back_from_its_backup_repository_on_a_wiped_server() {
    let mut cluster = one_worker("");
    let agent = &cluster.agents[0];
    let alice = agent.make_member("alice");
    create_tiny(agent, "box", &[]);
    create_tiny(agent, "scratch", &[]);
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let address = row["ips"][0]["address"].clone();
    assert!(address.is_string(), "{row}");
    hearth_testkit::vms::wait_phase(agent, "scratch", "running");
    ticks_past(agent, &id, 3);

    // The target: the state (and the image files) go in at once; box's backup after it,
    // so only the repository knows that snapshot. scratch is never backed up.
    let target = hearth_testkit::restic::LocalRepo::new("disaster");
    target.put_target(agent, "local");
    let (location, password, work) = (
        target.location.clone(),
        target.password.clone(),
        &target.dir,
    );
    wait_for_a_state_backup(agent);
    let out = agent.cli(&["backup", "now", "box"]);
    assert!(out.contains("stored in local"), "{out}");
    let snapshot = backups_of(agent, "box")["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let repo = Repo {
        location: location.clone(),
        password_file: password.clone(),
        cache_dir: work.path().join("cache"),
        env: vec![],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dumped = work.path().join("dumped.raw");
    runtime
        .block_on(repo.dump(&id, &snapshot, &dumped))
        .unwrap();
    let backed_up = disk_tick_as(&dumped, "raw").unwrap();
    std::fs::remove_file(&dumped).unwrap();
    ticks_past(agent, &id, backed_up + 3);

    // The fire: the server and everything on it is gone; it is installed afresh.
    burn_down(&mut cluster.agents[0]);
    cluster.agents[0].restart();
    let agent = &cluster.agents[0];
    wait_for_hosts(agent, 1);
    let (code, _, stderr) = agent.cli_as(&alice, &["vm", "list"]);
    assert_ne!(code, Some(0), "a new cluster knows no alice: {stderr}");

    // A wrong password file is named; then the restore.
    let (code, _, stderr) = agent.cli_result(&[
        "restore",
        "--from",
        &location,
        "--password-file",
        "/nonexistent/password",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--password-file"), "{stderr}");
    let out = agent.cli(&[
        "restore",
        "--from",
        &location,
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert!(out.contains("1 VM(s) get their disk back"), "{out}");
    assert!(out.contains("lost") && out.contains("scratch"), "{out}");

    // box runs again on its backup's disk, at the same address: its second boot, which
    // found the tick of the backup's time (a blank disk would boot for the first time).
    let row = hearth_testkit::vms::wait_phase(agent, "box", "running");
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["ips"][0]["address"], address, "{row}");
    let text = eventually("the recovered guest's boot", BOOT, || {
        let text = console(agent, &id);
        match hearth_testkit::vms::last_tick_at_boot(&text, 1) {
            Some(_) => Ok(text),
            None => Err(text),
        }
    });
    assert_eq!(hearth_testkit::vms::boots(&text), [2], "{text}");
    assert_eq!(
        hearth_testkit::vms::last_tick_at_boot(&text, 1),
        Some(backed_up),
        "{text}"
    );
    assert_eq!(
        backups_of(agent, "box")["restored"]["snapshot"],
        snapshot.as_str()
    );

    // scratch had no backup: lost, with a drift entry, and no disk made for it.
    let row = hearth_testkit::vms::wait_phase(agent, "scratch", "lost");
    let scratch = row["id"].as_str().unwrap();
    let drift: serde_json::Value = serde_json::from_str(&agent.cli(&["drift", "--json"])).unwrap();
    assert!(
        drift
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["vm"] == scratch && d["kind"] == "missing-disk"),
        "{drift}"
    );
    assert!(!vm_dir(agent, scratch).exists());

    // Alice's account and token came back; a new VM's id is not one the old cluster used.
    let listed = agent.cli_ok_as(&alice, &["vm", "list", "--json"]);
    assert!(listed.contains("box"), "{listed}");
    let out = agent.cli(&[
        "vm",
        "create",
        "later",
        "--image",
        "tiny",
        "--owner",
        "alice",
        "--memory-mib",
        "256",
        "--disk-gib",
        "1",
        "--stopped",
    ]);
    let later: serde_json::Value =
        serde_json::from_str(&agent.cli(&["vm", "show", "later", "--json"])).unwrap();
    let number = |id: &str| id.trim_start_matches("vm-").parse::<u64>().unwrap();
    let later_id = later["id"].as_str().unwrap_or_else(|| panic!("{out}"));
    assert!(
        number(later_id) > number(&id).max(number(scratch)),
        "{later_id}"
    );

    // Alice makes a second VM from box's backup: a new address, the same disk then.
    let out = agent.cli_ok_as(
        &alice,
        &["backup", "restore", "box", &snapshot, "--into", "copy"],
    );
    assert!(out.contains("copy: made from box's snapshot"), "{out}");
    let row = hearth_testkit::vms::wait_phase(agent, "copy", "running");
    let copy = row["id"].as_str().unwrap().to_owned();
    assert_ne!(row["ips"][0]["address"], address, "{row}");
    let text = eventually("the copy's boot", BOOT, || {
        let text = console(agent, &copy);
        match hearth_testkit::vms::last_tick_at_boot(&text, 1) {
            Some(_) => Ok(text),
            None => Err(text),
        }
    });
    assert_eq!(
        hearth_testkit::vms::last_tick_at_boot(&text, 1),
        Some(backed_up),
        "{text}"
    );

    // The cluster holds something now: a second restore is refused, naming what.
    let (code, _, stderr) = agent.cli_result(&[
        "restore",
        "--from",
        &location,
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("already holds"), "{stderr}");
}

/// The README's shell blocks of its backups section, in order.
fn readme_backup_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("### Backups").expect("README: ### Backups");
    let rest = &readme[start..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::to_owned)
        .collect()
}

/// The README's backup commands, pasted as written into bash on a worker that is also the
/// server (a private mount namespace gives it its own `/etc/hearth` and `/srv`): the target
/// with its password file, the plan's schedule and retention and a VM's own schedule, a
/// backup into the repository they name, and the drill's `hearth restore`, which a cluster
/// holding things refuses with why.
#[test]
fn the_readmes_backup_commands_work_as_written() {
    let blocks = readme_backup_blocks();
    assert_eq!(blocks.len(), 3, "README: three sh blocks about backups");
    let ns = hearth_testkit::MountNs::new();
    let cluster = one_worker_in("", Some(ns.pid()));
    let agent = &cluster.agents[0];
    create_tiny(agent, "web", &[]);
    let row = hearth_testkit::vms::wait_phase(agent, "web", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    ticks_past(agent, &id, 2);

    for block in &blocks[..2] {
        let (code, out, err) = ns.bash(agent, block);
        assert_eq!(code, Some(0), "{block}\n{out}{err}");
    }
    let (_, mode, _) = ns.bash(agent, "stat -c %a /etc/hearth/restic-local.pass");
    assert_eq!(mode.trim(), "600");
    // The README's `hearth backup now NAME` goes into the repository it named.
    let (code, out, err) = ns.bash(agent, "hearth backup now web");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("stored in local"), "{out}");
    assert_eq!(
        backups_of(agent, "web")["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (code, _, err) = ns.bash(agent, "test -f /srv/backups/hearth/config");
    assert_eq!(code, Some(0), "no repository at /srv/backups/hearth: {err}");
    // `--off`: no schedule, no next run.
    let row = backups_of(agent, "web");
    assert!(
        row.get("policy").is_none() && row.get("next_ms").is_none(),
        "{row}"
    );

    // The drill reads the newest backup of the state, which the leader stores at the first
    // tick of its `[state] backup_interval` loop after the target appeared (up to 10 s).
    wait_for_a_state_backup(agent);
    let (code, out, err) = ns.bash(agent, &blocks[2]);
    assert_ne!(code, Some(0), "{out}");
    assert!(err.contains("already holds"), "{err}");
}

/// Waits until `hearth backups --state` shows a stored backup of the cluster's state in the
/// first target: the leader's loop stores one at its first tick after the target appears.
fn wait_for_a_state_backup(agent: &TestAgent) {
    eventually("a backup of the state", BOOT, || {
        let rows: serde_json::Value =
            serde_json::from_str(&agent.cli(&["backups", "--state", "--json"])).unwrap();
        match rows[0]["last"]["id"].as_str() {
            Some(_) => Ok(()),
            None => Err(rows.to_string()),
        }
    });
}

/// A restore whose worker died before it could begin is stuck (the VM waits stopped for
/// a disk nobody makes). An admin aborts it: the VM keeps its disk and gets its power back,
/// a second abort is refused, and the worker, back, neither restores nor reboots it: the
/// guest's QEMU ran on through (one boot, ticking on), and no restored disk is made.
#[test]
fn a_restore_stuck_on_a_dead_worker_is_aborted_and_the_vm_keeps_its_disk() {
    let mut cluster = hearth_testkit::vms::three_workers(bin());
    let target = hearth_testkit::restic::LocalRepo::new("abort-restore");
    target.put_target(&cluster.agents[0], "local");
    create_tiny(&cluster.agents[0], "box", &[]);
    let row = hearth_testkit::vms::wait_phase(&cluster.agents[0], "box", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let home = (cluster.agents.iter())
        .position(|a| row["host"] == a.spec.name.as_str())
        .unwrap();
    let other = (home + 1) % 3;
    ticks_past(&cluster.agents[home], &id, 3);
    let out = cluster.agents[other].cli(&["backup", "now", "box"]);
    assert!(out.contains("stored in local"), "{out}");
    let backups = |agent: &TestAgent| -> serde_json::Value {
        serde_json::from_str(&agent.cli(&["backups", "box", "--json"])).unwrap()
    };
    let snapshot = backups(&cluster.agents[other])["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Its worker dies (the agent; its QEMU runs on), then a restore is asked for: stuck.
    cluster.agents[home].kill9();
    let before = last_tick(&cluster.agents[home], &id);
    let a = &cluster.agents[other];
    // (The dead worker may have led the group: asked again until a new leader took it.)
    let ask = ["backup", "restore", "box", &snapshot, "--yes", "--no-wait"];
    eventually("the restore asked for", BOOT, || {
        let (_, listed, _) = a.cli_result(&["backups", "box", "--json"]);
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
        if listed["restore"]["stage"] == "asked" {
            return Ok(());
        }
        let (_, out, err) = a.cli_result(&ask);
        Err(format!("{out}{err}"))
    });

    let out = a.cli(&["backup", "abort-restore", "box"]);
    assert!(out.contains("restore aborted"), "{out}");
    let row = backups(a);
    assert!(row["restore"].is_null(), "{row}");
    assert!(
        row["restore_error"].as_str().unwrap().contains("aborted"),
        "{row}"
    );
    let (code, _, stderr) = a.cli_result(&["backup", "abort-restore", "box"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("no restore"), "{stderr}");

    // The worker comes back: the same QEMU runs on, on the disk it had.
    cluster.agents[home].restart();
    let (a, home) = (&cluster.agents[other], &cluster.agents[home]);
    ticks_past(home, &id, before + 2);
    let row = hearth_testkit::vms::wait_phase(a, "box", "running");
    assert_eq!(row["disk"]["generation"], 1, "{row}");
    assert_eq!(hearth_testkit::vms::boots(&console(home, &id)), [1]);
    let restored = vm_dir(home, &id).with_extension("restored");
    assert!(!restored.exists(), "{} was made", restored.display());
    assert!(backups(a)["restore"].is_null());
}
