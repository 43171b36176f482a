//! A real single-node Ceph cluster for tests, started from Debian's `ceph-mon`, `ceph-mgr`
//! and `ceph-osd` (installed by `scripts/test.sh`): one monitor on a free loopback port, one
//! OSD on `memstore` (in memory, no disk), pool `rbd` of size 1, no cephx. The daemons run
//! in the foreground as this process's children and are killed, by PID, on drop, with the
//! directory. QEMU reaches its images as `rbd:POOL/IMAGE:conf=CONF` (`qemu-block-extra`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TempDir;

/// A running single-node Ceph.
pub struct Ceph {
    daemons: Vec<Child>,
    /// The client config (`ceph -c`, `rbd -c`, QEMU's `conf=`).
    pub conf: PathBuf,
    dir: TempDir,
}

impl Ceph {
    /// Makes and starts the cluster, with pool `rbd` ready for images (about 10 s).
    pub fn start() -> Ceph {
        let dir = TempDir::new("ceph");
        let port = crate::free_port();
        let fsid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("a uuid");
        for sub in ["run", "mon.a", "osd.0", "mgr.x"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("make the cluster's directories");
        }
        let conf = dir.path().join("ceph.conf");
        std::fs::write(&conf, config(dir.path(), fsid.trim(), port)).expect("write ceph.conf");
        let mut ceph = Ceph {
            daemons: Vec::new(),
            conf,
            dir,
        };
        let monmap = ceph.dir.path().join("monmap");
        let mon_addr = format!("v1:127.0.0.1:{port}");
        run(
            "monmaptool",
            &["--create", "--add", "a", &mon_addr, "--fsid", fsid.trim()],
            &[&monmap],
        );
        ceph.daemon_run("ceph-mon", &["--mkfs", "-i", "a", "--monmap"], &[&monmap]);
        ceph.spawn("ceph-mon", &["-i", "a"]);
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("a uuid");
        let id = ceph
            .setup_command(&["osd", "create", uuid.trim()])
            .trim()
            .to_owned();
        ceph.daemon_run(
            "ceph-osd",
            &["-i", &id, "--mkfs", "--osd-uuid", uuid.trim()],
            &[],
        );
        ceph.setup_command(&["osd", "crush", "add-bucket", "localhost", "host"]);
        ceph.setup_command(&["osd", "crush", "move", "localhost", "root=default"]);
        ceph.setup_command(&[
            "osd",
            "crush",
            "add",
            &format!("osd.{id}"),
            "1.0",
            "host=localhost",
        ]);
        ceph.spawn("ceph-mgr", &["-i", "x"]);
        ceph.start_osd(&id);
        ceph.setup_command(&["osd", "pool", "create", "rbd", "8", "8"]);
        ceph.setup_command(&[
            "osd",
            "pool",
            "set",
            "rbd",
            "size",
            "1",
            "--yes-i-really-mean-it",
        ]);
        ceph.rbd(&["pool", "init", "rbd"]);
        ceph
    }

    /// Starts OSD `id` and waits until the monitor has it up; one that is not up in 60 s is
    /// started again, up to three times, its log's end printed. (One in three or four OSDs
    /// used to stall in its init: its first monitor command, `osd crush set-device-class`,
    /// raced the monitor map and came back `wrong fsid`. The config now has the OSD send no
    /// crush command at start: the cluster places it by hand.)
    fn start_osd(&mut self, id: &str) {
        let mut last = String::new();
        for _ in 0..3 {
            self.spawn("ceph-osd", &["-i", id]);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                match self.try_ceph(&["osd", "stat"]) {
                    Ok(stat) if stat.contains("1 up") => return,
                    other => last = format!("{other:?}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!(
                "ceph: osd.{id} not up after 60 s ({last}); starting it again; its log ends:\n{}",
                self.log_tail(&format!("osd.{id}"))
            );
            if let Some(mut osd) = self.daemons.pop() {
                let _ = osd.kill();
                let _ = osd.wait();
            }
        }
        panic!(
            "osd.{id} never came up: {last}; its log ends: {}",
            self.log_tail(&format!("osd.{id}"))
        );
    }

    /// `ceph ARGS` while the cluster is being set up. A monitor that has just started once
    /// answered its first command (in CI, 0.5 s after its start) with `EPERM: problem getting
    /// command descriptions`, and later, in another CI run, the fourth (`osd crush add`,
    /// 3 s after its start, while another test's Ceph ran beside it): tried again until it
    /// works, for up to 60 s. Only for commands that may be repeated (`osd create UUID`
    /// gives the same id again; adding or moving a bucket or an OSD to where it is, creating
    /// a pool that exists and setting a pool's size again all succeed). Fails at once, with
    /// the monitor's log, if the monitor has exited.
    fn setup_command(&mut self, args: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.daemons[0].try_wait() {
                panic!(
                    "ceph-mon exited ({status}); its log ends:\n{}",
                    self.log_tail("mon.a")
                );
            }
            match self.try_ceph(args) {
                Ok(out) => return out,
                Err(e) if std::time::Instant::now() > deadline => panic!(
                    "ceph {args:?}: {e}; the monitor's log ends:\n{}",
                    self.log_tail("mon.a")
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The directory the cluster keeps its files (and logs) in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of daemon `name`'s log.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `ceph ARGS` against this cluster; its output, or a panic naming why not.
    pub fn ceph(&self, args: &[&str]) -> String {
        self.try_ceph(args)
            .unwrap_or_else(|e| panic!("ceph {args:?}: {e}"))
    }

    pub fn try_ceph(&self, args: &[&str]) -> Result<String, String> {
        self.tool("ceph", args)
    }

    /// `rbd ARGS` against this cluster; its output, or a panic naming why not.
    pub fn rbd(&self, args: &[&str]) -> String {
        self.tool("rbd", args)
            .unwrap_or_else(|e| panic!("rbd {args:?}: {e}"))
    }

    /// QEMU's name of image `image` in pool `rbd`.
    pub fn qemu_name(&self, image: &str) -> String {
        format!("rbd:rbd/{image}:conf={}", self.conf.display())
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let output = Command::new(tool)
            .arg("-c")
            .arg(&self.conf)
            .args(
                ["--connect-timeout", "20"]
                    .iter()
                    .filter(|_| tool == "ceph"),
            )
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {tool} (scripts/test.sh installs ceph-common): {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.success() {
            true => Ok(text),
            false => Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr))),
        }
    }

    /// Runs daemon program `program` once with this cluster's config (`--mkfs`, say).
    fn daemon_run(&self, program: &str, args: &[&str], paths: &[&Path]) {
        let mut all: Vec<&std::ffi::OsStr> = vec!["-c".as_ref(), self.conf.as_os_str()];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        all.extend(paths.iter().map(|p| p.as_os_str()));
        let output = Command::new(program)
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts daemon `program` in the foreground, as a child killed on drop.
    fn spawn(&mut self, program: &str, args: &[&str]) {
        let child = Command::new(program)
            .arg("-f")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} (scripts/test.sh installs it): {e}"));
        self.daemons.push(child);
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `program ARGS PATHS`, panicking with its error output if it fails.
fn run(program: &str, args: &[&str], paths: &[&Path]) {
    let output = Command::new(program)
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} (scripts/test.sh installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The cluster's config: one monitor at 127.0.0.1:`port`, no cephx, a memstore OSD of
/// 2 GiB that changes no crush setting when it starts, pools of one copy, everything under
/// `dir`. The monitor starts on a nearly full disk too (a CI machine's had 1 % free, and a
/// monitor refuses to run below 5 % by default), since its data here is a few MiB.
fn config(dir: &Path, fsid: &str, port: u16) -> String {
    let dir = dir.display();
    format!(
        "[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{port}
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon data avail crit = 0
mon data avail warn = 0
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 2147483648
run dir = {dir}/run
log file = {dir}/$name.log
admin socket = {dir}/run/$name.asok
mon data = {dir}/mon.$id
osd data = {dir}/osd.$id
mgr data = {dir}/mgr.$id
osd class update on start = false
osd crush update on start = false
"
    )
}
