//! Test harness: starts real `hearth agent` processes on distinct 127.x.y.z addresses,
//! queries them with real `dig` and HTTP, and kills every process it started (by PID) when
//! dropped, even when the test fails.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

pub const GOSSIP_PORT: u16 = 7946;
pub const API_PORT: u16 = 7480;
pub const RPC_PORT: u16 = 7947;
pub const DNS_PORT: u16 = 8053;
pub mod ceph;
pub mod clock;
pub mod delay;
pub mod netns;
pub mod restic;
pub mod smtp;
pub mod vms;
pub mod webdriver;

pub const ZONE: &str = "coop.test.";

/// Polls `probe` until it returns `Ok`, or panics with the last error after `timeout`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The test guest built by `scripts/build-test-guest.sh` (`HEARTH_TEST_GUEST`, else
/// `target/test-guest`); panics (the test fails, it does not skip) when it was not built.
pub fn test_guest() -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-guest"));
    for file in ["vmlinux", "initramfs.cpio.gz", "base.qcow2"] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: run ./scripts/build-test-guest.sh {} (scripts/test.sh does)",
            dir.join(file).display(),
            dir.display()
        );
    }
    dir
}

/// A free TCP port on 127.0.0.1: the kernel's choice, released for a server to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An S3 server on loopback (moto's, installed by `scripts/test.sh` in `target/moto`),
/// stopped on drop: a restic backend other than a directory. Any key is accepted.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/moto/bin/moto_server");
        assert!(
            bin.is_file(),
            "{} is missing: run ./scripts/test.sh, which installs moto there",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        eventually("the S3 server to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "hearth-{label}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    /// Removes the directory, unless `HEARTH_TEST_KEEP` is set (to read agents' logs after a
    /// run).
    fn drop(&mut self) {
        if std::env::var_os("HEARTH_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes a file only its owner may read (mode 0600), as the agent wants its secret files.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// One node's config, before it is written out.
#[derive(Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub secret: String,
    /// When set, the config names this file instead of carrying `secret` inline.
    pub secret_file: Option<PathBuf>,
    pub cluster: String,
    /// The `roles` value, TOML syntax.
    pub roles: String,
    pub join: Vec<SocketAddr>,
    /// Extra TOML appended to the generated config (services, handlers, ...).
    pub extra: String,
    /// Extra top-level keys, written before the first section.
    pub top: String,
    /// Where the API listens, when not on `ip` (agents inside a network namespace keep their
    /// API on a control link the test can always reach).
    pub api_ip: Option<Ipv4Addr>,
    /// Run the agent inside this network namespace.
    pub netns: Option<String>,
    /// DNS on this port instead of [`DNS_PORT`] (53, where clients that cannot be told
    /// another port ask).
    pub dns_port: Option<u16>,
    /// Run the agent as this unprivileged user (through `setpriv`, with no new privileges,
    /// as the shipped unit's `User=` and `NoNewPrivileges=` do); its directory becomes that
    /// user's.
    pub run_as: Option<String>,
    /// More environment for the agent (a [`clock::FakeClock`]'s, say).
    pub env: Vec<(String, String)>,
    /// Run the agent in the mount namespace of this process (see [`MountNs`]).
    pub mount_ns: Option<u32>,
}

impl NodeSpec {
    pub fn toml(&self, data_dir: &Path) -> String {
        let join: Vec<String> = self.join.iter().map(|a| format!("\"{a}\"")).collect();
        let mut text = String::new();
        let _ = write!(
            text,
            r#"node_name   = "{name}"
data_dir    = "{data}"
cluster     = "{cluster}"
{secret}
roles       = {roles}
gossip_addr = "{ip}:{GOSSIP_PORT}"
rpc_addr    = "{ip}:{RPC_PORT}"
api_addr    = "{api_ip}:{API_PORT}"
dns_addr    = "{ip}:{dns_port}"
join        = [{join}]
{top}

[dns]
zone = "{ZONE}"
ttl  = 1
{extra}
"#,
            name = self.name,
            data = data_dir.display(),
            cluster = self.cluster,
            secret = match &self.secret_file {
                Some(path) => format!("secret_file = \"{}\"", path.display()),
                None => format!("secret      = \"{}\"", self.secret),
            },
            ip = self.ip,
            dns_port = self.dns_port.unwrap_or(DNS_PORT),
            api_ip = self.api_ip.unwrap_or(self.ip),
            roles = self.roles,
            join = join.join(", "),
            extra = self.extra,
            top = self.top,
        );
        text
    }
}

/// A private mount namespace for the commands a README tells an admin to run as written
/// (`/etc/hearth/...`, `/srv/...`): `/etc` is an overlay of this machine's whose changes go
/// to a directory of the test's (with an empty `/etc/hearth` in it), and `/srv` an empty
/// tmpfs. A process of the test's holds it (killed, by its PID, on drop); agents
/// ([`NodeSpec::mount_ns`]) and commands ([`MountNs::bash`]) enter it with `nsenter`.
pub struct MountNs {
    holder: Child,
    _dir: TempDir,
}

impl MountNs {
    pub fn new() -> MountNs {
        let dir = TempDir::new("mount-ns");
        let d = dir.path().display();
        for sub in ["etc.up", "etc.work"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("overlay directories");
        }
        let ready = dir.path().join("mounted");
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(format!(
                "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc.up,workdir={d}/etc.work /etc\n\
                 mkdir -p /etc/hearth\n\
                 mount -t tmpfs tmpfs /srv\n\
                 touch {ready}\n\
                 exec sleep 100000\n",
                ready = ready.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --mount");
        let mut ns = MountNs { holder, _dir: dir };
        eventually("the private mounts", Duration::from_secs(30), || {
            if ready.exists() {
                return Ok(());
            }
            match ns.holder.try_wait() {
                Ok(Some(status)) => panic!("the private mounts failed: {status}"),
                _ => Err("not yet".to_owned()),
            }
        });
        ns
    }

    /// The PID to give [`NodeSpec::mount_ns`].
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// Runs `script` with `bash -e` in the namespace, as `agent`'s admin: `hearth` on its
    /// PATH is `bin`, and HEARTH_API and HEARTH_TOKEN name `agent`. (exit code, stdout,
    /// stderr).
    pub fn bash(&self, agent: &TestAgent, script: &str) -> (Option<i32>, String, String) {
        let bin_dir = agent.bin.parent().expect("the binary's directory");
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir.display()
        );
        let output = Command::new("nsenter")
            .args(["--target", &self.pid().to_string(), "--mount", "--"])
            .args(["bash", "-ec", script])
            .env("PATH", path)
            .env("HEARTH_API", agent.api_addr().to_string())
            .env("HEARTH_TOKEN", agent.token())
            .stdin(Stdio::null())
            .output()
            .expect("nsenter");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Default for MountNs {
    fn default() -> Self {
        MountNs::new()
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A running (or stopped) agent process.
pub struct TestAgent {
    pub spec: NodeSpec,
    pub dir: PathBuf,
    child: Option<Child>,
    bin: PathBuf,
}

impl TestAgent {
    /// Writes the config and starts `hearth agent --config`.
    pub fn start(bin: &Path, root: &Path, spec: NodeSpec) -> TestAgent {
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir).expect("create node dir");
        let mut agent = TestAgent {
            spec,
            dir,
            child: None,
            bin: bin.to_owned(),
        };
        agent.restart();
        agent
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("hearth.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The command that runs the agent: in its network namespace, or as its user (see
    /// [`NodeSpec::run_as`]), or plainly. `ip netns exec` and `setpriv` exec the agent in
    /// place, so the PID is the agent's own.
    fn command(&self) -> Command {
        if let Some(holder) = self.spec.mount_ns {
            let mut command = Command::new("nsenter");
            command
                .args(["--target", &holder.to_string(), "--mount", "--"])
                .arg(&self.bin);
            return command;
        }
        match (&self.spec.netns, &self.spec.run_as) {
            (Some(netns), _) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.bin);
                command
            }
            (None, Some(user)) => {
                // The user must reach the binary, wherever the checkout is (a home directory
                // of mode 0700, say): a copy goes in the agent's directory, under a root the
                // user may traverse.
                use std::os::unix::fs::PermissionsExt;
                if let Some(root) = self.dir.parent() {
                    let open = std::fs::Permissions::from_mode(0o755);
                    std::fs::set_permissions(root, open).expect("open the cluster root");
                }
                let copy = self.dir.join("hearth-bin");
                if !copy.exists() {
                    std::fs::copy(&self.bin, &copy).expect("copy the agent binary");
                }
                let status = Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(&self.dir)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown {user}: {}", self.dir.display());
                let gid = Command::new("id")
                    .args(["-g", user])
                    .output()
                    .expect("id -g");
                let gid = String::from_utf8_lossy(&gid.stdout).trim().to_owned();
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={user}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--no-new-privs", "--"])
                    .arg(&copy);
                command
            }
            (None, None) => Command::new(&self.bin),
        }
    }

    /// (Re)starts the process with the current spec.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "agent {} is still running",
            self.spec.name
        );
        std::fs::write(self.config_path(), self.spec.toml(&self.dir.join("data")))
            .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        let mut command = self.command();
        let child = command
            .args(["agent", "--config"])
            .arg(self.config_path())
            .env(
                "HEARTH_LOG",
                std::env::var("HEARTH_TEST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,hearth_membership=debug".into()),
            )
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hearth agent");
        self.child = Some(child);
        let api = self.api_addr();
        eventually(
            &format!("{} API to listen", self.spec.name),
            Duration::from_secs(30),
            || {
                if let Some(status) = self.try_exit_status() {
                    panic!(
                        "agent {} exited with {status}: {}",
                        self.spec.name,
                        self.log_tail()
                    );
                }
                TcpStream::connect(api)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
    }

    fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `bin` from the next (re)start on: an upgrade in place, same directory and data.
    pub fn set_bin(&mut self, bin: &Path) {
        bin.clone_into(&mut self.bin);
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Adds image `name` through the CLI: a small raw disk of zeros, all the fake VM
    /// driver needs.
    pub fn add_fake_image(&self, name: &str) {
        let image = self.dir.join(format!("{name}.img"));
        std::fs::write(&image, [0u8; 4096]).expect("write the fake disk");
        self.cli(&[
            "image",
            "add",
            name,
            "--format",
            "raw",
            "--file",
            image.to_str().expect("a UTF-8 path"),
        ]);
    }

    /// Sends a signal to the agent's PID with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, signal);
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let name = self.spec.name.clone();
        let status = eventually(&format!("{name} to exit"), timeout, || {
            self.try_exit_status()
                .ok_or_else(|| "still running".to_string())
        });
        self.child = None;
        status.code()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit_status().is_none()
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.api_ip.unwrap_or(self.spec.ip), API_PORT))
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, GOSSIP_PORT))
    }

    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.spec.dns_port.unwrap_or(DNS_PORT)))
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/api-token"))
            .expect("read api token")
            .trim()
            .to_owned()
    }

    /// GET with the agent's token; returns (status, body).
    pub fn http_get(&self, path: &str, with_token: bool) -> Result<(u16, String), String> {
        let auth = if with_token {
            format!("Authorization: Bearer {}\r\n", self.token())
        } else {
            String::new()
        };
        http_request(
            self.api_addr(),
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
        )
    }

    /// `GET /v1/...` parsed as JSON.
    pub fn api_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let (status, body) = self.http_get(path, true)?;
        if status != 200 {
            return Err(format!("{path}: HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{path}: bad JSON {e}: {body}"))
    }

    /// name -> state, from this agent's `/v1/members`.
    pub fn member_states(&self) -> Result<Vec<(String, String)>, String> {
        let members = self.api_json("/v1/members")?;
        let rows = members.as_array().ok_or("members is not an array")?;
        Ok(rows
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_owned(),
                    m["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Sends a request with a JSON body and the agent's token; returns (status, body).
    pub fn http_send(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
        http_request(
            self.api_addr(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                self.token(),
                body.len()
            ),
        )
    }

    /// Makes admin account `name` (a VM's owner must be an account) unless it exists.
    pub fn ensure_account(&self, name: &str) {
        let body =
            format!(r#"{{"name":"{name}","role":"admin","password":"{name}'s test password"}}"#);
        let (status, answer) = self
            .http_send("POST", "/v1/accounts", &body)
            .unwrap_or_else(|e| panic!("account {name}: {e}"));
        assert!(
            matches!(status, 200 | 201 | 409),
            "account {name}: {status} {answer}"
        );
    }

    /// Makes member account `name` (password `NAME's long password`) and returns a new API
    /// token of theirs.
    pub fn make_member(&self, name: &str) -> String {
        let body =
            format!(r#"{{"name":"{name}","role":"member","password":"{name}'s long password"}}"#);
        let (status, answer) = self
            .http_send("POST", "/v1/accounts", &body)
            .unwrap_or_else(|e| panic!("account {name}: {e}"));
        assert!(matches!(status, 200 | 201), "{status} {answer}");
        let out = self.cli(&["token", "create", "--account", name]);
        out.split_whitespace()
            .find(|w| w.starts_with("hth_"))
            .unwrap_or_else(|| panic!("no token in {out}"))
            .to_owned()
    }

    /// The value of metric `name` (without labels) in this agent's `/metrics`; 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.http_get("/metrics", false).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many worker hosts have registered their capacity (`/v1/hosts`).
    pub fn host_count(&self) -> Result<usize, String> {
        let hosts = self.api_json("/v1/hosts")?;
        hosts
            .as_array()
            .map(Vec::len)
            .ok_or_else(|| hosts.to_string())
    }

    /// Declares the test guest built by `scripts/build-test-guest.sh` in `guest` as image
    /// `tiny` (direct kernel boot), and the pool `lan` (192.0.2.0/24, gateway .1).
    pub fn add_test_guest(&self, guest: &Path) {
        let args = test_guest_image_args(guest, "tiny", &guest.join("base.qcow2"), "qcow2");
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.cli(&[
            "pool",
            "add",
            "lan",
            "192.0.2.0/24",
            "--gateway",
            "192.0.2.1",
        ]);
    }

    /// Runs `hearth ARGS --api <this agent> --token <its token>`; panics unless it succeeds,
    /// and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_ok_as(&self.token(), args)
    }

    /// Like [`TestAgent::cli`], as the account of `token`.
    pub fn cli_ok_as(&self, token: &str, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.cli_as(token, args);
        assert!(code == Some(0), "hearth {args:?}: {stdout}{stderr}");
        stdout
    }

    /// Runs `hearth ARGS --api <this agent> --token <its token>`, whatever its outcome: the
    /// exit code, standard output and standard error.
    pub fn cli_result(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.cli_as(&self.token(), args)
    }

    /// [`TestAgent::cli_result`] with a deadline, for a command that waits on the cluster
    /// (`vm migrate`, `node evacuate`): the process is ended by its pid if it outlives
    /// `within`, and the test fails with what it printed.
    pub fn cli_within(&self, args: &[&str], within: Duration) -> (Option<i32>, String, String) {
        let mut child = Command::new(&self.bin)
            .args(args)
            .arg(format!("--api={}", self.api_addr()))
            .arg(format!("--token={}", self.token()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hearth");
        let pid = child.id();
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(
                &format!("hearth {args:?} to finish"),
                within,
                || match child.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("still running".into()),
                    Err(e) => Err(e.to_string()),
                },
            )
        }));
        if finished.is_err() {
            kill_pid(pid);
        }
        let output = child.wait_with_output().expect("hearth's output");
        let result = (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        if let Err(panic) = finished {
            eprintln!("{result:?}");
            std::panic::resume_unwind(panic);
        }
        result
    }

    /// Like [`TestAgent::cli_result`], with another account's `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let output = Command::new(&self.bin)
            .args(args)
            // `--token=…`: a token may start with `-`.
            .arg(format!("--api={}", self.api_addr()))
            .arg(format!("--token={token}"))
            .output()
            .expect("run hearth");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// This agent's `/v1/state`.
    pub fn state(&self) -> Result<serde_json::Value, String> {
        self.api_json("/v1/state")
    }

    /// `dig +short` against this agent's DNS, sorted.
    pub fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>, String> {
        dig_short(self.dns_addr(), name, rtype)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.spec.name,
                self.log_path().display(),
                self.log_tail()
            );
        }
        self.kill9();
        // QEMU processes and storage daemons the agent started outlive it by design; they
        // are the test's too.
        for pid in qemu_pids_under(&self.dir)
            .into_iter()
            .chain(storage_daemon_pids_under(&self.dir))
        {
            kill_pid(pid);
        }
    }
}

/// `hearth image add NAME ...` of the test guest built in `guest`, with `disk` (of `format`)
/// as its base image: direct kernel boot of its kernel and initramfs.
pub fn test_guest_image_args(guest: &Path, name: &str, disk: &Path, format: &str) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    [
        "image",
        "add",
        name,
        "--format",
        format,
        "--file",
        &path(disk),
        "--kernel",
        &path(&guest.join("vmlinux")),
        "--initrd",
        &path(&guest.join("initramfs.cpio.gz")),
        "--append",
        "console=ttyS0 quiet panic=-1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// PIDs of QEMU processes whose command line mentions a path under `dir`.
pub fn qemu_pids_under(dir: &Path) -> Vec<u32> {
    pids_under(dir, |name| name.starts_with("qemu-system-"))
}

/// The `qemu-storage-daemon` processes (replica exports) whose command line names a path
/// under `dir`.
pub fn storage_daemon_pids_under(dir: &Path) -> Vec<u32> {
    pids_under(dir, |name| name == "qemu-storage-daemon")
}

/// The processes whose program's file name passes `program` and whose command line names a
/// path under `dir`.
fn pids_under(dir: &Path, program: impl Fn(&str) -> bool) -> Vec<u32> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let named = args.first().is_some_and(|a| {
                Path::new(a)
                    .file_name()
                    .is_some_and(|n| program(&n.to_string_lossy()))
            });
            named && args.iter().any(|a| a.contains(&needle))
        })
        .collect()
}

/// SIGKILL to one PID this test started (directly or through an agent).
/// Sends `signal` (a name such as `TERM`) to `pid` with `kill(1)`; panics if that fails.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// A raw HTTP/1.1 exchange; returns (status, body).
pub fn http_request(addr: SocketAddr, request: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Runs real `dig +short` and returns the sorted answer lines.
pub fn dig_short(server: SocketAddr, name: &str, rtype: &str) -> Result<Vec<String>, String> {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+short",
            "+time=2",
            "+tries=1",
            name,
            rtype,
        ])
        .output()
        .map_err(|e| format!("cannot run dig (apt-get install dnsutils): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "dig failed: {}",
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    lines.sort();
    Ok(lines)
}

/// Runs `dig` and returns its full output (for status, flags and sections).
pub fn dig_full(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A block of loopback addresses no other test run is likely to use: 127.a.b.1, .2, ...
pub fn loopback_block() -> impl Fn(u8) -> Ipv4Addr {
    let a = rand::random_range(1..=250u8);
    let b = rand::random_range(1..=250u8);
    move |host| Ipv4Addr::new(127, a, b, host)
}

/// A cluster of agents with one secret, each on its own loopback address.
pub struct TestCluster {
    pub agents: Vec<TestAgent>,
    pub secret: String,
    pub root: TempDir,
    ip: Box<dyn Fn(u8) -> Ipv4Addr>,
    bin: PathBuf,
}

impl TestCluster {
    /// Starts `n` agents; every one joins through the first. `extra(i)` adds TOML to node i.
    pub fn start(bin: &Path, n: usize, extra: impl Fn(usize) -> String) -> TestCluster {
        let mut cluster = TestCluster {
            agents: Vec::new(),
            secret: random_secret(),
            root: TempDir::new("cluster"),
            ip: Box::new(loopback_block()),
            bin: bin.to_owned(),
        };
        for idx in 0..n {
            let spec = cluster.spec(idx, extra(idx));
            cluster.add(spec);
        }
        cluster
    }

    /// Like [`TestCluster::start`], with each node's spec adjusted by `configure` (roles,
    /// extra TOML) before it starts.
    pub fn start_with(bin: &Path, n: usize, configure: impl Fn(&mut NodeSpec)) -> TestCluster {
        let mut cluster = TestCluster::start(bin, 0, |_| String::new());
        for idx in 0..n {
            let mut spec = cluster.spec(idx, String::new());
            configure(&mut spec);
            cluster.add(spec);
        }
        cluster
    }

    /// The spec node `idx` would get: name `n{idx+1}`, address 127.a.b.{idx+1}.
    pub fn spec(&self, idx: usize, extra: String) -> NodeSpec {
        let seed = SocketAddr::from(((self.ip)(1), GOSSIP_PORT));
        NodeSpec {
            name: format!("n{}", idx + 1),
            ip: (self.ip)(idx as u8 + 1),
            secret: self.secret.clone(),
            secret_file: None,
            cluster: "test".into(),
            roles: "[\"server\"]".into(),
            api_ip: None,
            netns: None,
            dns_port: None,
            run_as: None,
            env: vec![],
            mount_ns: None,
            join: if idx == 0 { vec![] } else { vec![seed] },
            extra,
            top: String::new(),
        }
    }

    pub fn add(&mut self, spec: NodeSpec) -> &mut TestAgent {
        let agent = TestAgent::start(&self.bin, self.root.path(), spec);
        self.agents.push(agent);
        self.agents.last_mut().expect("just pushed")
    }

    /// Waits until every running agent sees exactly `expected` (name, state) pairs.
    pub fn wait_for_members(&self, expected: &[(&str, &str)], timeout: Duration) {
        let mut want: Vec<(String, String)> = expected
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        want.sort();
        for agent in &self.agents {
            if agent.child.is_none() {
                continue;
            }
            eventually(
                &format!("{} to see members {want:?}", agent.spec.name),
                timeout,
                || {
                    let mut got = agent.member_states()?;
                    got.sort();
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("{got:?}"))
                    }
                },
            );
        }
    }
}

/// Starts one agent in each node namespace of `lab` (see [`lab_spec`]).
pub fn start_in_lab(
    bin: &Path,
    root: &Path,
    lab: &netns::NetnsLab,
    cluster: &str,
    roles: &str,
    extra: &str,
) -> Vec<TestAgent> {
    let secret = random_secret();
    (0..lab.len())
        .map(|idx| {
            let spec = lab_spec(lab, idx, &secret, cluster, roles, extra);
            TestAgent::start(bin, root, spec)
        })
        .collect()
}

/// Node `idx` of `lab`: `n{idx+1}` on the data link, joined through `n1`, its API on the
/// control link, with `secret`, `roles` (TOML) and `extra` TOML.
pub fn lab_spec(
    lab: &netns::NetnsLab,
    idx: usize,
    secret: &str,
    cluster: &str,
    roles: &str,
    extra: &str,
) -> NodeSpec {
    let seed = SocketAddr::from((lab.data_ip(0), GOSSIP_PORT));
    NodeSpec {
        name: format!("n{}", idx + 1),
        ip: lab.data_ip(idx),
        secret: secret.to_owned(),
        secret_file: None,
        cluster: cluster.into(),
        roles: roles.into(),
        join: if idx == 0 { vec![] } else { vec![seed] },
        extra: extra.into(),
        top: String::new(),
        api_ip: Some(lab.control_ip(idx)),
        netns: Some(lab.netns(idx)),
        dns_port: None,
        run_as: None,
        env: vec![],
        mount_ns: None,
    }
}
