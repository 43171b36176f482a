//! Processes the benchmarks start besides hearth agents (Serf, Knot, busy loops), which are
//! killed by PID when their guard drops, and the small `/proc`, `kill` and `taskset` helpers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process that is SIGKILLed and reaped when the guard drops, even on a panic.
pub struct ProcessGuard {
    label: String,
    child: Child,
}

impl ProcessGuard {
    /// Spawns `command` with stdout and stderr appended to `log` (or discarded).
    pub fn spawn(label: &str, mut command: Command, log: Option<&Path>) -> Result<ProcessGuard> {
        command.stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {label}: {command:?}"))?;
        Ok(ProcessGuard {
            label: label.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early with {status}", self.label),
            None => Ok(()),
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        // A stopped process would not die of SIGKILL any later, but make sure it is not
        // left stopped if killing fails for another reason.
        let _ = send_signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs each `(program, debian package)` whose program is not on the PATH.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {missing:?} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install()?.success() {
        Command::new("apt-get").args(["update", "-q"]).status()?;
        if !install()?.success() {
            bail!("apt-get install {missing:?} failed");
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// `kill -SIGNAL pid`.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Pins every thread of `pid` (and the threads it starts later) to `cpu`.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("run taskset")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpu} {pid} failed");
    }
    Ok(())
}

/// A shell busy loop, pinned to `cpu` when given, at real-time FIFO priority 1 when
/// `realtime`: one core's worth of CPU demand.
pub fn busy_loop(cpu: Option<usize>, realtime: bool) -> Result<ProcessGuard> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(cpu) = cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
    }
    if realtime {
        argv.extend(["chrt".into(), "--fifo".into(), "1".into()]);
    }
    argv.extend(["sh".into(), "-c".into(), "while :; do :; done".into()]);
    // Each wrapper execs the next, so the PID stays the busy loop's.
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    ProcessGuard::spawn("busy loop", command, None)
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} for {pid}"))?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("bad {field} {kib:?}"))
}

/// Proportional set size in KiB, from `/proc/PID/smaps_rollup`: each resident page divided
/// by the number of processes that map it (so the three agents of one machine share one
/// copy of the binary's text between them).
pub fn pss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .with_context(|| format!("no Pss for {pid}"))?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("bad Pss {kib:?}"))
}

/// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let (user, system) = user_and_system(&text)?;
    Ok(user + system)
}

/// User and system CPU time of one process or thread, from the text of its `stat` file.
fn user_and_system(stat: &str) -> Result<(Duration, Duration)> {
    // The command name may contain spaces; the fields after its closing parenthesis don't.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let tick = |idx: usize| -> Result<Duration> {
        let ticks: u64 = fields
            .get(idx)
            .and_then(|f| f.parse().ok())
            .context("bad stat fields")?;
        // USER_HZ is 100 on every Linux ABI this runs on.
        Ok(Duration::from_millis(ticks * 10))
    };
    Ok((tick(11)?, tick(12)?))
}

/// User and system CPU time per thread name of a process so far, from
/// `/proc/PID/task/*/stat` (threads of one name, a runtime's workers say, are summed; a
/// thread that ended is not counted).
pub fn thread_times(pid: u32) -> Result<BTreeMap<String, (Duration, Duration)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("read /proc/{pid}/task"))?;
    let mut times: BTreeMap<String, (Duration, Duration)> = BTreeMap::new();
    for task in tasks.flatten() {
        let (Ok(stat), Ok(name)) = (
            std::fs::read_to_string(task.path().join("stat")),
            std::fs::read_to_string(task.path().join("comm")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let (user, system) = user_and_system(&stat)?;
        let entry = times.entry(name.trim().to_owned()).or_default();
        entry.0 += user;
        entry.1 += system;
    }
    Ok(times)
}

/// Polls `probe` every `every` until it succeeds or `timeout` passes, then returns its last
/// error with `what` for context.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("timed out after {timeout:?}: {what}")));
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}
