//! The command line as users meet it: config errors (exit 2, naming the key), the API
//! token, `members`/`services` tables and JSON, and `hearth agent --dev` with no flags.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hearth_testkit::{TempDir, TestCluster, eventually, random_secret};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run hearth")
}

fn agent_with_config(dir: &TempDir, text: &str) -> Output {
    let path = dir.path().join("hearth.toml");
    std::fs::write(&path, text).unwrap();
    run(&["agent", "--config", path.to_str().unwrap()])
}

fn base_config(secret: &str) -> String {
    format!(
        "node_name = \"n1\"\ncluster = \"c\"\nsecret = \"{secret}\"\ngossip_addr = \"127.0.0.1:0\"\n"
    )
}

fn assert_config_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = TempDir::new("config");
    let secret = random_secret();
    let base = base_config(&secret);
    // A secret file every user may read is refused, with the fix.
    let open_secret = dir.path().join("open-secret");
    std::fs::write(&open_secret, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(
        &open_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let open_secret = open_secret.display().to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("node_name = \"n1\"\ncluster = \"c\"\nsecret_file = \"{open_secret}\"\ngossip_addr = \"127.0.0.1:0\"\n"),
            vec!["secret_file", "mode 0644", "chmod 600"],
        ),
        (
            format!("{base}trusted_proxies = [\"proxy.example\"]\n"),
            vec!["trusted_proxies"],
        ),
        (
            format!("{base}max_token_lifetime = \"forever\"\n"),
            vec!["max_token_lifetime", "duration"],
        ),
        (format!("{base}colour = \"blue\"\n"), vec!["colour"]),
        (format!("{base}api_addr = \"localhost:99999\"\n"), vec!["api_addr"]),
        (format!("{base}join = [\"not an address\"]\n"), vec!["join[0]"]),
        (
            "node_name = \"n1\"\ncluster = \"c\"\ngossip_addr = \"127.0.0.1:0\"\n".into(),
            vec!["secret_file", "hearth keygen"],
        ),
        (
            base.replace(&secret, "c2hvcnQ="),
            vec!["secret", "5 bytes", "32"],
        ),
        (
            format!("{base}[[service]]\nname = \"www\"\n[[service]]\nname = \"WWW\"\n"),
            vec!["service[1].name", "twice"],
        ),
        (
            format!("{base}[[service]]\nname = \"www\"\n[service.check]\ntcp = \"127.0.0.1:80\"\nhttp = \"http://127.0.0.1/\"\n"),
            vec!["service[0].check", "exactly one"],
        ),
        (format!("{base}[dns]\nzone = \"bad zone\"\n"), vec!["dns.zone"]),
        (format!("{base}[gossip]\nprobe_interval = \"soon\"\n"), vec!["probe_interval", "duration"]),
        (
            "node_name = \"n1\"\ncluster = \"c\"\nsecret_file = \"/nonexistent/secret\"\ngossip_addr = \"127.0.0.1:0\"\n".into(),
            vec!["secret_file", "/nonexistent/secret"],
        ),
        (
            format!("node_name = \"n1\"\ncluster = \"c\"\nsecret = \"{secret}\"\n"),
            vec!["advertise"],
        ),
    ];
    for (text, needles) in cases {
        let output = agent_with_config(&dir, &text);
        assert_config_error(&output, &needles);
        // The secret never appears in any message.
        assert!(!String::from_utf8_lossy(&output.stderr).contains(&secret));
    }
    let output = run(&["agent", "--config", "/nonexistent/hearth.toml"]);
    assert_config_error(&output, &["/nonexistent/hearth.toml"]);
    let output = run(&["agent"]);
    assert_eq!(output.status.code(), Some(2));
    let output = run(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn api_needs_a_token_and_cli_prints_tables_and_json() {
    let cluster = TestCluster::start(bin(), 1, |_| {
        "[[service]]\nname = \"www\"\naddress = \"10.0.0.1\"\n".into()
    });
    let agent = &cluster.agents[0];
    let (status, body) = agent.http_get("/v1/members", false).unwrap();
    assert_eq!(status, 401, "{body}");
    let api = agent.api_addr().to_string();
    let token_file = agent.dir.join("data/api-token");
    let cli = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("HEARTH_API", &api)
            .env("HEARTH_TOKEN_FILE", &token_file)
            .env_remove("HEARTH_TOKEN")
            .output()
            .unwrap()
    };
    let output = eventually("members table", Duration::from_secs(30), || {
        let output = cli(&["members"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && text.contains("n1") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(output.starts_with("NAME"), "{output}");
    assert!(
        output.contains("alive") && output.contains("server"),
        "{output}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&cli(&["members", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["name"], "n1");
    assert_eq!(json[0]["state"], "alive");
    let json: serde_json::Value =
        serde_json::from_slice(&cli(&["services", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["service"], "www");
    assert_eq!(json[0]["address"], "10.0.0.1");
    assert_eq!(json[0]["status"], "passing");
    let table = String::from_utf8_lossy(&cli(&["services"]).stdout).into_owned();
    assert!(
        table.starts_with("SERVICE") && table.contains("10.0.0.1"),
        "{table}"
    );
    // A wrong token is refused with a clear message and exit code 1.
    let output = Command::new(bin())
        .args(["members", "--api", &api, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

/// `hearth ARGS` as a user of the dev agent runs it: no flags, the API and token found by
/// default (the dev data dir is under `tmp`, as `TMPDIR` says).
fn dev_cli(tmp: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("HEARTH_API")
        .env_remove("HEARTH_TOKEN")
        .env_remove("HEARTH_TOKEN_FILE")
        .output()
        .unwrap()
}

/// A dev agent, its standard error in `tmp/agent.log`; killed (and its VMs) on drop.
struct DevAgent {
    child: std::process::Child,
    tmp: std::path::PathBuf,
}

/// The README's quick-start section: from `## Quick start` to the next heading.
fn readme_quick_start() -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("README: a `## Quick start` section");
    let rest = &readme[start + 3..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
}

/// The one command of the quick start's first shell block: how the README says to run the
/// agent on embedded defaults.
fn readme_agent_command() -> String {
    let section = readme_quick_start();
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README: a ```sh block in the quick start");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "README quick start: one command, got {lines:?}"
    );
    lines[0].trim().to_owned()
}

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `sh -c COMMAND` from the workspace root with a user's environment, not the test
/// harness's: the variables cargo sets for a test (`CARGO_PKG_*` and the like) would make
/// `cargo run` see different build-script inputs and rebuild, which a user's shell does not.
fn user_shell(command: &str, tmp: &Path) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(workspace())
        .env_clear()
        .env("TMPDIR", tmp);
    for key in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME"] {
        if let Some(value) = std::env::var_os(key) {
            shell.env(key, value);
        }
    }
    shell
}

impl DevAgent {
    /// Runs the README's quick-start command exactly as written, from the workspace root, as
    /// a user pasting it would (`exec`, so the PID is the agent's and SIGTERM reaches it;
    /// `cargo run` replaces itself with the binary). The test build made that binary
    /// already, so cargo only checks that it is fresh.
    fn start(tmp: &Path) -> DevAgent {
        let command = readme_agent_command();
        assert!(
            command.ends_with("agent --dev"),
            "README quick start: {command}"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(tmp.join("agent.log"))
            .unwrap();
        let child = user_shell(&format!("exec {command}"), tmp)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        DevAgent {
            child,
            tmp: tmp.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.join("agent.log")).unwrap_or_default()
    }

    /// SIGTERM, as Ctrl-C or `kill` would, and waits for the agent to exit.
    fn stop(&mut self) {
        hearth_testkit::signal_pid(self.child.id(), "TERM");
        let status = eventually("the dev agent to exit", Duration::from_secs(60), || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_owned())
        });
        assert!(status.success(), "{status}: {}", self.log());
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in hearth_testkit::qemu_pids_under(&self.tmp) {
            hearth_testkit::kill_pid(pid);
        }
    }
}

#[test]
fn dev_agent_answers_dig_and_cli_without_flags_and_leaves_no_vm_behind() {
    let tmp = TempDir::new("dev");
    let mut agent = DevAgent::start(tmp.path());
    let dns: std::net::SocketAddr = "127.0.0.1:8053".parse().unwrap();
    // Generous: should cargo find the build stale (a variable a build script watches differs
    // in the user's environment), the README's command builds it first; normally seconds.
    let answer = eventually("dev DNS answer", Duration::from_secs(900), || {
        let got = hearth_testkit::dig_short(dns, "www.hearth.test", "A")?;
        if got == ["127.0.0.1"] {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert_eq!(answer, ["127.0.0.1"]);
    // The README's next command, as written: `cargo run -- members`.
    let members = readme_quick_start()
        .split('`')
        .find(|part| part.starts_with("cargo run") && part.ends_with(" members"))
        .expect("README quick start: the members command")
        .to_owned();
    let output = user_shell(&members, tmp.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("dev") && text.contains("alive"), "{text}");

    // A VM on the dev agent: it stops with the agent, and starts again, on its own disk,
    // with the next dev agent, which says so.
    eventually(
        "the dev agent's group formed",
        Duration::from_secs(60),
        || {
            let output = dev_cli(tmp.path(), &["state", "--json"]);
            let state: serde_json::Value =
                serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
            if state["leader"].is_string() {
                Ok(())
            } else {
                Err(state.to_string())
            }
        },
    );
    let guest = hearth_testkit::test_guest();
    let image =
        hearth_testkit::test_guest_image_args(&guest, "tiny", &guest.join("base.qcow2"), "qcow2");
    // The VM's owner is an account.
    let password = tmp.path().join("me.pass");
    std::fs::write(&password, "me's long password\n").unwrap();
    for args in [
        image.iter().map(String::as_str).collect(),
        vec![
            "account",
            "add",
            "me",
            "--password-file",
            password.to_str().unwrap(),
        ],
        vec![
            "vm",
            "create",
            "try1",
            "--image",
            "tiny",
            "--owner",
            "me",
            "--memory-mib",
            "256",
            "--disk-gib",
            "1",
        ],
    ] {
        let output = dev_cli(tmp.path(), &args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dev_dir = tmp.path().join(format!("hearth-dev-{}", uid()));
    let wait_boots = |expected: &[u64]| {
        eventually(
            &format!("try1 boots {expected:?}"),
            hearth_testkit::vms::BOOT,
            || {
                let consoles: Vec<String> = std::fs::read_dir(dev_dir.join("vms"))
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .map(|e| {
                        std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default()
                    })
                    .collect();
                let text = consoles.concat().replace('\r', "");
                if hearth_testkit::vms::boots(&text) == expected
                    && text.matches("HEARTH-GUEST-READY").count() == expected.len()
                {
                    Ok(())
                } else {
                    Err(text)
                }
            },
        )
    };
    wait_boots(&[1]);
    assert_eq!(hearth_testkit::qemu_pids_under(tmp.path()).len(), 1);

    agent.stop();
    assert!(agent.log().contains("stopped VM try1"), "{}", agent.log());
    assert!(
        hearth_testkit::qemu_pids_under(tmp.path()).is_empty(),
        "the VM stopped with the agent"
    );

    let agent = DevAgent::start(tmp.path());
    eventually("the restart said", Duration::from_secs(60), || {
        let log = agent.log();
        if log.contains("starting again the VMs the last dev agent stopped: try1") {
            Ok(())
        } else {
            Err(log)
        }
    });
    wait_boots(&[1, 2]);
}

/// This process's uid, as the dev data dir's name has it.
fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// The shipped unit passes `systemd-analyze verify`. This machine has no /usr/local/bin/hearth
/// (and PID 1 is not systemd), so the copy verified runs the binary under test instead; the
/// rest of the file is as shipped.
#[test]
fn the_shipped_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/hearth.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/hearth agent --config /etc/hearth/hearth.toml"),
        "{unit}"
    );
    // Stopping the agent stops no VM: only the agent's own process is signalled.
    assert!(unit.contains("KillMode=process"), "{unit}");
    // The agent (and its QEMUs) run as an unprivileged user of their own.
    assert!(unit.contains("User=hearth"), "{unit}");
    assert!(unit.contains("NoNewPrivileges=yes"), "{unit}");
    let dir = TempDir::new("unit");
    let path = dir.path().join("hearth.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/hearth", bin().to_str().unwrap()),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether the file system holding `dir` has less room than the doctor asks of a data
/// directory (1 GiB and 5 %), measured by `df`: on such a machine the doctor's `data_dir`
/// check rightly fails, whatever the test did.
fn disk_is_low(dir: &Path) -> bool {
    let output = Command::new("df")
        .args(["-B1", "--output=size,avail"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let numbers: Vec<u64> = text
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [size, avail] = numbers[..] else {
        panic!("df printed {text}");
    };
    avail < 1 << 30 || avail * 100 < size * 5
}

/// The doctor's `data_dir` status on this machine: ok, or fail when its disk is low.
fn expected_space_status(dir: &Path) -> &'static str {
    match disk_is_low(dir) {
        true => "fail",
        false => "ok",
    }
}

/// `hearth doctor --config` of a node of a two-server cluster: every check ok and exit 0;
/// with the other server killed, exit 1, the dead member named and the fix said.
#[test]
fn doctor_finds_a_dead_member_and_says_how_to_fix_it() {
    let mut cluster = TestCluster::start(bin(), 2, |_| String::new());
    let wait = Duration::from_secs(60);
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], wait);
    let config = cluster.agents[0].config_path();
    let doctor = |json: bool| {
        let mut command = Command::new(bin());
        command.args(["doctor", "--config"]).arg(&config);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let statuses = |output: &Output| -> Vec<(String, String, String)> {
        let checks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let field = |c: &serde_json::Value, f: &str| c[f].as_str().unwrap_or("").to_owned();
        checks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (field(c, "check"), field(c, "status"), field(c, "detail")))
            .collect()
    };
    let output = doctor(true);
    let all = statuses(&output);
    let space = expected_space_status(&cluster.agents[0].config_path());
    let code = if space == "ok" { 0 } else { 1 };
    assert_eq!(output.status.code(), Some(code), "{all:?}");
    assert!(
        all.iter()
            .any(|(check, status, _)| check == "data_dir" && status == space),
        "data_dir should be {space}: {all:?}"
    );
    for name in [
        "agent",
        "members",
        "versions",
        "clock",
        "rpc n2",
        "dns n1",
        "dns n2",
        "between members",
    ] {
        assert!(
            all.iter()
                .any(|(check, status, _)| check == name && status == "ok"),
            "{name}: {all:?}"
        );
    }

    cluster.agents[1].kill9();
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "dead")], wait);
    let output = doctor(true);
    let all = statuses(&output);
    assert_eq!(output.status.code(), Some(1), "{all:?}");
    let members = all.iter().find(|(check, _, _)| check == "members").unwrap();
    assert_eq!(members.1, "fail", "{all:?}");
    assert!(members.2.contains("n2 (dead"), "{all:?}");
    let table = String::from_utf8_lossy(&doctor(false).stdout).into_owned();
    assert!(table.contains("FAIL") && table.contains("fix: "), "{table}");
}

/// An agent process of the test's own, killed by its PID (and reaped) when dropped.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hearth init` on three servers, as its printed next steps say (the first makes the
/// secret, the others copy it and join): the three agents started on those configs form a
/// cluster that answers DNS, and `hearth doctor` finds nothing wrong. It never replaces a
/// config without --force, and a join without the secret names the flag.
#[test]
fn three_servers_from_hearth_init_form_a_cluster() {
    let tmp = TempDir::new("init");
    let base = format!(
        "127.{}.{}",
        rand::random_range(1..=250u8),
        rand::random_range(1..=250u8)
    );
    let ip = |n: usize| format!("{base}.{n}");
    let init = |n: usize, extra: &[&str]| {
        let dir = tmp.path().join(format!("n{n}"));
        let mut command = Command::new(bin());
        command
            .args(["init", "--name", &format!("n{n}"), "--advertise", &ip(n)])
            .args(["--listen", &ip(n), "--api", &format!("{}:7480", ip(n))])
            .args([
                "--zone",
                "init.test.",
                "--cluster",
                "init",
                "--servers",
                "3",
            ])
            .arg("--config")
            .arg(dir.join("hearth.toml"))
            .arg("--secret-file")
            .arg(dir.join("secret"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .stdin(std::process::Stdio::null());
        command.output().unwrap()
    };
    let first = init(1, &[]);
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(said.contains(&format!("--join {}", ip(1))), "{said}");
    // A join without the secret is refused, naming the flag.
    let refused = init(2, &["--join", &ip(1)]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--secret-file"));
    for n in [2, 3] {
        let dir = tmp.path().join(format!("n{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = std::fs::read_to_string(tmp.path().join("n1/secret")).unwrap();
        hearth_testkit::write_private(&dir.join("secret"), &secret);
        let joined = init(n, &["--join", &ip(1)]);
        assert!(
            joined.status.success(),
            "{}",
            String::from_utf8_lossy(&joined.stderr)
        );
    }
    let again = init(1, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let _agents: Vec<Spawned> = (1..=3)
        .map(|n| {
            let dir = tmp.path().join(format!("n{n}"));
            let log = std::fs::File::create(dir.join("agent.log")).unwrap();
            let child = Command::new(bin())
                .args(["agent", "--config"])
                .arg(dir.join("hearth.toml"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            Spawned(child)
        })
        .collect();
    let dns: std::net::SocketAddr = format!("{}:53", ip(1)).parse().unwrap();
    eventually(
        "n3 in n1's DNS",
        Duration::from_secs(60),
        || match hearth_testkit::dig_short(dns, "n3.init.test.", "A") {
            Ok(got) if got == [ip(3)] => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let doctor = || {
        Command::new(bin())
            .args(["doctor", "--json", "--config"])
            .arg(tmp.path().join("n1/hearth.toml"))
            .output()
            .unwrap()
    };
    let space = expected_space_status(tmp.path());
    eventually(
        "doctor finds nothing wrong",
        Duration::from_secs(60),
        || {
            let output = doctor();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let checks: serde_json::Value = serde_json::from_slice(&output.stdout)
                .map_err(|error| format!("{error}: {text}"))?;
            let wrong: Vec<&serde_json::Value> = checks
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| match c["check"].as_str() {
                    Some("data_dir") => c["status"] != space,
                    _ => c["status"] != "ok",
                })
                .collect();
            match wrong.is_empty() {
                true => Ok(()),
                false => Err(format!("{wrong:?}")),
            }
        },
    );
}

/// `hearth init` on a terminal (a pty, through util-linux's `script`) asks for what its
/// flags did not say, offers the host name as the node's name, and writes what was
/// answered; an empty answer where there is no default is refused, naming the flag.
#[test]
fn hearth_init_asks_on_a_terminal() {
    let tmp = TempDir::new("init-pty");
    let on_a_terminal = |dir: &str, answers: &str| {
        let dir = tmp.path().join(dir);
        let command = format!(
            "{} init --config {d}/hearth.toml --secret-file {d}/secret --data-dir {d}/data --servers 1",
            bin().display(),
            d = dir.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answers.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), said, dir)
    };
    let (code, said, dir) = on_a_terminal("asked", "n7\n192.0.2.7\ncoop.example.\n");
    assert_eq!(code, Some(0), "{said}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim().split('.').next().unwrap().to_lowercase();
    for prompt in [
        format!("node name [{host}]: "),
        "address the other nodes reach this one at: ".to_owned(),
        "DNS zone (like coop.example.): ".to_owned(),
    ] {
        assert!(said.contains(&prompt), "{prompt:?} not asked:\n{said}");
    }
    let config = std::fs::read_to_string(dir.join("hearth.toml")).unwrap();
    for line in [
        "node_name   = \"n7\"",
        "advertise   = \"192.0.2.7\"",
        "zone        = \"coop.example.\"",
    ] {
        assert!(config.contains(line), "{line} missing:\n{config}");
    }
    // The host name by default, and no zone: refused, naming the flag, nothing written.
    let (code, said, dir) = on_a_terminal("refused", "\n192.0.2.8\n\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--zone: required"), "{said}");
    assert!(!dir.join("hearth.toml").exists());
}

#[test]
fn doctor_sees_a_port_closed_between_two_other_members() {
    // n3's DNS listens on another port than the cluster's: n1 and n2 cannot reach it there,
    // nor can n3 reach them on its own. Every agent gossips what it cannot reach, so doctor
    // on n1 sees n3's side too.
    let cluster = TestCluster::start_with(bin(), 3, |spec| {
        if spec.name == "n3" {
            spec.dns_port = Some(hearth_testkit::DNS_PORT + 1);
        }
    });
    let wait = Duration::from_secs(60);
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive"), ("n3", "alive")], wait);
    let config = cluster.agents[0].config_path();
    let between = eventually("doctor to see the closed ports", wait, || {
        let output = Command::new(bin())
            .args(["doctor", "--json", "--config"])
            .arg(&config)
            .output()
            .map_err(|e| e.to_string())?;
        let checks: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
        let between = checks
            .as_array()
            .and_then(|all| all.iter().find(|c| c["check"] == "between members"))
            .cloned()
            .ok_or(checks.to_string())?;
        let detail = between["detail"].as_str().unwrap_or_default();
        if output.status.code() == Some(1)
            && between["status"] == "fail"
            && detail.contains("n1 cannot reach n3's dns port")
            && detail.contains("n3 cannot reach n2's dns port")
        {
            Ok(between)
        } else {
            Err(between.to_string())
        }
    });
    let detail = between["detail"].as_str().unwrap();
    assert!(!detail.contains("rpc"), "the RPC ports are open: {detail}");
    assert!(
        !detail.contains("n1 cannot reach n2") && !detail.contains("n2 cannot reach n1"),
        "n1 and n2 share the port: {detail}"
    );
    assert!(between["fix"].as_str().unwrap().contains("same DNS port"));
}
