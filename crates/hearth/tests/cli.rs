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
    let cases: Vec<(String, Vec<&str>)> = vec![
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

#[test]
fn dev_agent_answers_dig_and_cli_without_flags() {
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = KillOnDrop(
        Command::new(bin())
            .args(["agent", "--dev"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dns: std::net::SocketAddr = "127.0.0.1:8053".parse().unwrap();
    let answer = eventually("dev DNS answer", Duration::from_secs(60), || {
        let got = hearth_testkit::dig_short(dns, "www.hearth.test", "A")?;
        if got == ["127.0.0.1"] {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert_eq!(answer, ["127.0.0.1"]);
    let output = Command::new(bin())
        .arg("members")
        .env_remove("HEARTH_API")
        .env_remove("HEARTH_TOKEN")
        .env_remove("HEARTH_TOKEN_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("dev") && text.contains("alive"), "{text}");
}
