//! The shipped monitoring against the real thing: `promtool` checks and unit-tests the
//! alerting rules in `dist/prometheus`, every metric the rules and the Grafana dashboard in
//! `dist/grafana` name is one an agent exports, and a real Prometheus (Debian's
//! `prometheus`) scraping a three-agent cluster runs every dashboard query and fires
//! `HearthNodeDown` when one agent is killed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_testkit::{TempDir, TestCluster, eventually, http_request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

const RULES: &str = "dist/prometheus/hearth-alerts.yml";
const RULE_TESTS: &str = "dist/prometheus/hearth-alerts.test.yml";
const DASHBOARD: &str = "dist/grafana/hearth.json";
const DEADLINE: Duration = Duration::from_secs(90);

/// A process of the test's own, killed (by its PID) and reaped when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (apt-get install prometheus)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = repo_file(RULES);
    let (ok, text) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules:\n{text}");
    let tests = repo_file(RULE_TESTS);
    let (ok, text) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok, "promtool test rules:\n{text}");
    // Every alert has at least one unit test case.
    let tested = std::fs::read_to_string(&tests).unwrap();
    for alert in alert_names() {
        assert!(
            tested.contains(&format!("alertname: {alert}\n")),
            "{alert} has no case in {RULE_TESTS}"
        );
    }
}

/// The alert names of the shipped rules.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file(RULES)).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// Every PromQL expression of the rules (one line each) and of the dashboard.
fn expressions() -> (Vec<String>, Vec<String>) {
    let rules = std::fs::read_to_string(repo_file(RULES)).unwrap();
    let rule_exprs = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(DASHBOARD)).unwrap())
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut dash_exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            dash_exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    (rule_exprs, dash_exprs)
}

/// The `hearth_*` metric names an expression uses.
fn hearth_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hearth_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// `%XX` for every byte but unreserved ones, for a query string.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prom_get(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) = http_request(addr, &request)?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(json["data"].clone())
}

/// Prometheus scraping `targets` every second, with the shipped rules evaluated every
/// second. The rules are the shipped file with each `for:` shortened to 5 s, so the test
/// waits seconds where an admin's Prometheus waits minutes; the expressions are unchanged.
fn start_prometheus(dir: &Path, listen: SocketAddr, targets: &[SocketAddr]) -> Owned {
    let rules = std::fs::read_to_string(repo_file(RULES)).unwrap();
    let quick: Vec<String> = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 5s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect();
    std::fs::write(dir.join("rules.yml"), quick.join("\n")).unwrap();
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: hearth\n    static_configs:\n      - targets: [{}]\n",
        dir.join("rules.yml").display(),
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    Owned(child)
}

/// Alerts Prometheus holds now, as (name, state, member or instance label).
fn alerts(prom: SocketAddr) -> Result<Vec<(String, String, String)>, String> {
    let data = prom_get(prom, "/api/v1/alerts")?;
    let list = data["alerts"].as_array().ok_or("no alerts list")?;
    Ok(list
        .iter()
        .map(|a| {
            let labels = &a["labels"];
            let subject = labels["member"]
                .as_str()
                .or(labels["instance"].as_str())
                .unwrap_or("");
            (
                labels["alertname"].as_str().unwrap_or("").to_owned(),
                a["state"].as_str().unwrap_or("").to_owned(),
                subject.to_owned(),
            )
        })
        .collect())
}

#[test]
fn prometheus_scraping_three_agents_runs_the_dashboard_and_pages_on_a_dead_node() {
    let mut cluster = TestCluster::start(bin(), 3, |_| String::new());
    cluster.wait_for_members(
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
        DEADLINE,
    );

    // Every metric the rules and the dashboard use is one the agents export.
    let (status, text) = cluster.agents[0].http_get("/metrics", false).unwrap();
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let (rule_exprs, dash_exprs) = expressions();
    for expr in rule_exprs.iter().chain(&dash_exprs) {
        for name in hearth_metrics(expr) {
            assert!(
                exported.contains(&name),
                "{name} (in `{expr}`) is not exported"
            );
        }
    }

    let dir = TempDir::new("prometheus");
    let first = cluster.agents[0].spec.ip.octets();
    let listen = SocketAddr::from(([first[0], first[1], first[2], 9], 9090));
    let targets: Vec<SocketAddr> = cluster.agents.iter().map(|a| a.api_addr()).collect();
    let _prometheus = start_prometheus(dir.path(), listen, &targets);
    let log = dir.path().join("prometheus.log");
    let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();

    eventually("Prometheus to scrape all three agents", DEADLINE, || {
        let data = prom_get(listen, "/api/v1/targets").map_err(|e| e + &log_tail())?;
        let active = data["activeTargets"].as_array().ok_or("no targets")?;
        let up = active.iter().filter(|t| t["health"] == "up").count();
        if up == 3 {
            Ok(())
        } else {
            Err(format!("{data}"))
        }
    });
    eventually("the dashboard to count three members up", DEADLINE, || {
        let query = url_encode("sum(max by (member) (hearth_member_up))");
        let data = prom_get(listen, &format!("/api/v1/query?query={query}"))?;
        let value = data["result"][0]["value"][1].as_str().unwrap_or("");
        if value == "3" {
            Ok(())
        } else {
            Err(format!("{data}"))
        }
    });
    // Every dashboard query is valid PromQL that Prometheus runs.
    for expr in &dash_exprs {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        if let Err(e) = prom_get(listen, &path) {
            panic!("dashboard query `{expr}` failed: {e}");
        }
    }
    let node_down = |alerts: &[(String, String, String)]| {
        alerts
            .iter()
            .filter(|(name, _, _)| name == "HearthNodeDown")
            .map(|(_, state, member)| (state.clone(), member.clone()))
            .collect::<Vec<_>>()
    };
    let before = alerts(listen).unwrap();
    assert_eq!(node_down(&before), vec![], "{before:?}");

    cluster.agents[2].kill9();
    eventually("HearthNodeDown to fire for n3", DEADLINE, || {
        let now = alerts(listen)?;
        let down = node_down(&now);
        if down == vec![("firing".to_owned(), "n3".to_owned())] {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let now = alerts(listen).unwrap();
    let n3_api = cluster.agents[2].api_addr().to_string();
    assert!(
        now.iter()
            .any(|(name, _, subject)| name == "HearthAgentNotScraped" && *subject == n3_api),
        "{now:?}"
    );
    // Only the dead node pages: two of three servers keep quorum.
    assert!(
        !now.iter().any(|(name, _, _)| name == "HearthQuorumLost"),
        "{now:?}"
    );
}
