//! Accounts, tokens and authorization with a real agent: the first admin from the node
//! token, members with tokens, every VM endpoint that takes an id answering 404 to another
//! member, admin-only endpoints answering 403, revocation, SSH keys, and no secret in the log.

use std::path::Path;

use hearth_testkit::{TestAgent, TestCluster, http_request};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// `hearth ARGS` with the node's API, a token and `stdin`; returns (success, stdout, stderr).
fn cli(agent: &TestAgent, token: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(args)
        .arg(format!("--api={}", agent.api_addr()))
        .arg(format!("--token={token}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn call(agent: &TestAgent, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http_request(
        agent.api_addr(),
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One agent, once its group takes writes.
fn writable_agent() -> TestCluster {
    let cluster = TestCluster::start(bin(), 1, |_| "[state]\nbootstrap_expect = 1\n".into());
    let (agent, root) = (&cluster.agents[0], cluster.agents[0].token());
    hearth_testkit::eventually(
        "a writable group",
        std::time::Duration::from_secs(60),
        || match call(agent, &root, "GET", "/v1/state", "") {
            (200, state) if state["leader"].is_string() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    cluster
}

fn new_token(agent: &TestAgent, token: &str, account: &str) -> String {
    let (ok, out, err) = cli(agent, token, &["token", "create", "--account", account], "");
    assert!(ok, "{err}");
    out.trim().to_owned()
}

#[test]
fn members_reach_only_their_own_things() {
    let cluster = writable_agent();
    let agent = &cluster.agents[0];
    let root = agent.token();

    // The first admin, made with the node's token; then everything through the admin's own.
    let password = "a long enough secret phrase";
    let (ok, _, err) = cli(agent, &root, &["admin", "create", "ann"], password);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(agent, &root, &["admin", "create", "shorty"], "short");
    assert!(!ok && err.contains("at least 10 characters"), "{err}");
    let ann = new_token(agent, &root, "ann");
    for member in ["alice", "bob"] {
        let (ok, _, err) = cli(agent, &ann, &["account", "add", member], password);
        assert!(ok, "{err}");
    }
    let alice = new_token(agent, &ann, "alice");
    let bob = new_token(agent, &ann, "bob");
    let (_, listed, _) = cli(agent, &ann, &["account", "list"], "");
    assert!(
        listed.contains("alice") && listed.contains("member"),
        "{listed}"
    );

    // An image and a pool (no worker: the VMs stay pending, which is all this needs).
    let disk = agent.dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (ok, _, err) = cli(
        agent,
        &ann,
        &[
            "image",
            "add",
            "tiny",
            "--file",
            &disk.display().to_string(),
            "--format",
            "raw",
        ],
        "",
    );
    assert!(ok, "{err}");
    let vm = |owner: &str, name: &str| {
        format!(
            r#"{{"name": "{name}", "owner": "{owner}", "vcpus": 1, "memory_mib": 256, "disk_gib": 1, "image": "tiny"}}"#
        )
    };
    assert_eq!(
        call(agent, &alice, "POST", "/v1/vms", &vm("alice", "a1")).0,
        201
    );
    assert_eq!(
        call(agent, &bob, "POST", "/v1/vms", &vm("bob", "b1")).0,
        201
    );
    let (status, body) = call(agent, &alice, "POST", "/v1/vms", &vm("bob", "sneaky"));
    assert_eq!(status, 403, "{body}");

    // Alice lists only her VM, even when asking for bob's.
    for path in ["/v1/vms", "/v1/vms?owner=bob"] {
        let (status, rows) = call(agent, &alice, "GET", path, "");
        assert_eq!(status, 200);
        let names: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.iter().all(|n| *n == "a1"), "{path}: {names:?}");
    }
    let b1_id = call(agent, &bob, "GET", "/v1/vms/b1", "").1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Every endpoint that takes a VM id or name: bob's VM does not exist for alice.
    for key in ["b1", b1_id.as_str()] {
        for (method, suffix, body) in [
            ("GET", "", ""),
            ("DELETE", "", ""),
            ("POST", "/start", ""),
            ("POST", "/stop", ""),
            ("POST", "/reboot", ""),
            ("GET", "/console", ""),
        ] {
            let (status, answer) = call(
                agent,
                &alice,
                method,
                &format!("/v1/vms/{key}{suffix}"),
                body,
            );
            assert_eq!(status, 404, "{method} /v1/vms/{key}{suffix}: {answer}");
            assert_eq!(answer["error"], format!("vm: no VM with id or name {key}"));
        }
    }
    assert_eq!(call(agent, &alice, "GET", "/v1/vms/a1", "").0, 200);
    // IO limits are the admins' (a member's plan sets them), on any VM alike, so the
    // answer tells nothing of whether another member's VM exists.
    for key in ["a1", "b1", "no-such-vm"] {
        let path = format!("/v1/vms/{key}/io");
        let (status, _) = call(agent, &alice, "PUT", &path, r#"{"io": {"iops": 5}}"#);
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(
        call(agent, &bob, "GET", "/v1/vms/b1", "").0,
        200,
        "bob's VM is still there"
    );

    // Admin-only endpoints.
    for (method, path) in [
        ("GET", "/v1/drift"),
        ("GET", "/v1/accounts"),
        ("GET", "/v1/desired"),
        ("GET", "/v1/hosts"),
        ("PUT", "/v1/records"),
        ("POST", "/v1/nodes/n1/drain"),
    ] {
        let (status, answer) = call(agent, &alice, method, path, "{}");
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    assert_eq!(call(agent, &alice, "GET", "/v1/images", "").0, 200);
    assert_eq!(call(agent, &ann, "GET", "/v1/drift", "").0, 200);

    // Her SSH keys.
    let key = r#"{"key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHearthTestKey alice@laptop"}"#;
    assert_eq!(
        call(agent, &alice, "PUT", "/v1/me/ssh-keys/laptop", key).0,
        200
    );
    let (status, me) = call(agent, &alice, "GET", "/v1/me", "");
    assert_eq!(status, 200);
    assert_eq!(me["role"], "member");
    assert!(
        me["ssh_keys"]["laptop"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519"),
        "{me}"
    );
    assert!(me.get("password_hash").is_none(), "{me}");
    assert_eq!(
        call(
            agent,
            &alice,
            "PUT",
            "/v1/me/ssh-keys/bad",
            r#"{"key": "nope"}"#
        )
        .0,
        400
    );

    // Hashes never leave through the API, even to admins.
    let (_, desired) = call(agent, &ann, "GET", "/v1/desired", "");
    assert_eq!(
        desired["accounts"]["alice"]["value"]["password_hash"], "(hidden)",
        "{desired}"
    );

    // Revoked: refused at once.
    let alice_id = alice
        .trim_start_matches("hth_")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let (status, _) = call(agent, &bob, "DELETE", &format!("/v1/tokens/{alice_id}"), "");
    assert_eq!(status, 404, "bob cannot see alice's token");
    let (ok, _, err) = cli(agent, &alice, &["token", "revoke", &alice_id], "");
    assert!(ok, "{err}");
    let (status, answer) = call(agent, &alice, "GET", "/v1/vms", "");
    assert_eq!(status, 401, "{answer}");

    // The audit log: who changed what; admins only.
    assert_eq!(call(agent, &bob, "GET", "/v1/audit", "").0, 403);
    let entries = hearth_testkit::eventually(
        "alice's VM creation audited",
        std::time::Duration::from_secs(30),
        || {
            let (status, entries) = call(agent, &ann, "GET", "/v1/audit", "");
            let found = entries.as_array().is_some_and(|list| {
                list.iter().any(|e| {
                    e["who"] == "alice"
                        && e["method"] == "POST"
                        && e["path"] == "/v1/vms"
                        && e["status"] == 201
                })
            });
            if status == 200 && found {
                Ok(entries)
            } else {
                Err(entries.to_string())
            }
        },
    );
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["who"] == "alice" && e["status"] == 403),
        "refused attempts are recorded too: {entries}"
    );
    let (ok, table, err) = cli(agent, &ann, &["audit"], "");
    assert!(
        ok && table.contains("POST /v1/accounts") && table.contains("root"),
        "{table}{err}"
    );

    // An account that owns VMs is not removed: the next account of that name would get them.
    let (status, answer) = call(agent, &ann, "DELETE", "/v1/accounts/alice", "");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("a1"), "{answer}");

    // No password or token secret in the agent's log.
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    for secret in [password, alice.as_str(), bob.as_str(), ann.as_str()] {
        let secret_part = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(secret_part), "a secret reached the log");
    }
}

/// A plan's prices go in and come out as the exact decimals typed, through the CLI and the
/// API; a float, too many decimals, a price without a currency or a bad currency are refused
/// with the field's name.
#[test]
fn a_plans_prices_are_exact_decimals() {
    let cluster = writable_agent();
    let agent = &cluster.agents[0];
    let root = agent.token();
    let set = [
        "plan",
        "set",
        "basic",
        "--vms",
        "3",
        "--currency",
        "EUR",
        "--price-vcpu-hour",
        "0.004",
        "--price-gib-disk-month",
        "0.05",
    ];
    let (ok, _, err) = cli(agent, &root, &set, "");
    assert!(ok, "{err}");
    let (ok, out, err) = cli(agent, &root, &["plan", "list", "--json"], "");
    assert!(ok, "{err}");
    let plans: Value = serde_json::from_str(&out).unwrap();
    let basic = plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plan"]["name"] == "basic")
        .unwrap_or_else(|| panic!("{plans}"));
    let prices = &basic["plan"]["prices"];
    assert_eq!(prices["currency"], "EUR", "{basic}");
    assert_eq!(prices["vcpu_hour"], "0.004", "{basic}");
    assert_eq!(prices["gib_disk_month"], "0.05", "{basic}");
    assert!(prices.get("address_month").is_none(), "{basic}");
    let (_, table, _) = cli(agent, &root, &["plan", "list"], "");
    assert!(
        table.contains("EUR vcpu_hour 0.004, gib_disk_month 0.05"),
        "{table}"
    );

    // Bad input: exit 2 from the CLI, 4xx naming the field from the API, nothing changed.
    for (args, says) in [
        (
            vec!["--currency", "EUR", "--price-vcpu-hour", "0.1234567"],
            "at most 6 decimals",
        ),
        (vec!["--price-vcpu-hour", "0.1"], "--currency"),
        (
            vec!["--currency", "euro", "--price-vcpu-hour", "0.1"],
            "prices.currency",
        ),
    ] {
        let mut bad = vec!["plan", "set", "basic"];
        bad.extend(args);
        let (ok, _, err) = cli(agent, &root, &bad, "");
        assert!(!ok && err.contains(says), "{bad:?}: {err}");
    }
    let float = r#"{"plan":{"name":"basic","prices":{"currency":"EUR","vcpu_hour":0.004}}}"#;
    let (status, answer) = call(agent, &root, "PUT", "/v1/plans", float);
    assert!((400..500).contains(&status), "{status} {answer}");
    let (_, out, _) = cli(agent, &root, &["plan", "list", "--json"], "");
    assert!(out.contains("\"0.004\""), "{out}");
}
