//! The holes a review found, each tried against a real agent over HTTP: racing login guesses,
//! a stranger locking an account out, `X-Forwarded-For` from anyone, refused requests missing
//! from the audit log, a member flooding it, sessions outliving a password change, and tokens
//! outliving the session that made them.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TestAgent, TestCluster, eventually, http_request};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

const WAIT: Duration = Duration::from_secs(60);

/// One agent that believes `X-Forwarded-For` from 127.0.0.1 only, with admin ann and
/// member alice.
fn agent() -> TestCluster {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.top = "trusted_proxies = [\"127.0.0.1\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n".into();
    });
    let agent = &cluster.agents[0];
    let root = agent.token();
    eventually("a writable group", WAIT, || {
        match api(agent, &root, "GET", "/v1/state", "") {
            (200, state) if state["leader"].is_string() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for (name, role) in [("ann", "admin"), ("alice", "member")] {
        let body =
            format!(r#"{{"name":"{name}","role":"{role}","password":"{name}'s long password"}}"#);
        let (status, answer) = api(agent, &root, "POST", "/v1/accounts", &body);
        assert_eq!(status, 200, "{answer}");
    }
    cluster
}

fn api(agent: &TestAgent, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let (status, text) = http_request(
        agent.api_addr(),
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A login form post from the local address `source`, with `X-Forwarded-For: forwarded`
/// when given: (status, the session token when one was set).
fn login_from(
    agent: &TestAgent,
    source: IpAddr,
    forwarded: Option<&str>,
    name: &str,
    password: &str,
) -> (u16, Option<String>) {
    let csrf = "a-double-submit-value-long-enough";
    let form = format!(
        "name={name}&password={}&csrf={csrf}",
        password.replace(' ', "+")
    );
    let xff = forwarded.map_or(String::new(), |f| format!("X-Forwarded-For: {f}\r\n"));
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nCookie: hearth_login={csrf}\r\n{xff}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    let raw = send_from(source, agent.api_addr(), &request);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let session = raw
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: hearth_session="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
        .find(|v| !v.is_empty());
    (status, session)
}

/// Sends `request` over a TCP connection whose local address is `source`; the raw answer.
fn send_from(source: IpAddr, to: SocketAddr, request: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
            .await
            .expect("connect in time")
            .expect("connected");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    })
}

/// A blocking TCP connection from the local address `source`; `None` when refused.
fn connect_from(source: IpAddr, to: SocketAddr) -> Option<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(source, 0)).ok()?;
        socket.connect(to).await.ok()?.into_std().ok()
    })?;
    stream.set_nonblocking(false).ok()?;
    Some(stream)
}

fn metric(agent: &TestAgent, name: &str) -> u64 {
    let (_, text) = agent.http_get("/metrics", false).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn local(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Regressions: 100 concurrent guesses from one address got 35 password checks (the limit
/// was checked before, and counted after, the hashing); five bad logins for a name locked
/// its owner out from everywhere; behind a proxy every client shared one address.
#[test]
fn racing_guesses_get_five_checks_and_a_stranger_cannot_lock_the_owner_out() {
    let cluster = agent();
    let agent = &cluster.agents[0];
    let proxy = local(1);
    let before = metric(agent, "hearth_login_password_checks_total");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..100)
            .map(|n| {
                scope.spawn(move || {
                    let guess = format!("guess number {n}");
                    login_from(agent, proxy, Some("203.0.113.9"), "ann", &guess).0
                })
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    // Guesses that found every hashing permit taken were never evaluated and do not count:
    // the stranger goes on, one at a time, until the limit answers.
    let mut statuses = statuses;
    for n in 0..10 {
        let guess = format!("late guess {n}");
        let (status, _) = login_from(agent, proxy, Some("203.0.113.9"), "ann", &guess);
        statuses.push(status);
        if status == 429 && metric(agent, "hearth_logins_total{outcome=\"limited\"}") > 0 {
            break;
        }
    }
    let checks = metric(agent, "hearth_login_password_checks_total") - before;
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(wrong + refused, statuses.len(), "{statuses:?}");
    assert_eq!(
        (checks, wrong),
        (5, 5),
        "password checks and 401s for one (account, client): {statuses:?}"
    );
    // The stranger waits, even with the right password; the owner, from elsewhere, does not.
    let (status, _) = login_from(
        agent,
        proxy,
        Some("203.0.113.9"),
        "ann",
        "ann's long password",
    );
    assert_eq!(status, 429);
    let (status, session) = login_from(
        agent,
        proxy,
        Some("192.0.2.7"),
        "ann",
        "ann's long password",
    );
    assert_eq!(status, 303);
    assert!(session.is_some());

    // From a peer that is no trusted proxy the header is ignored: the guesses count for the
    // peer's own address, which the audit log records.
    let untrusted = local(2);
    let (status, _) = login_from(agent, untrusted, Some("192.0.2.7"), "alice", "wrong one!!");
    assert_eq!(status, 401);
    let root = agent.token();
    eventually("the failed login audited with its client", WAIT, || {
        let (_, log) = api(agent, &root, "GET", "/v1/audit?who=anonymous", "");
        let entries = log.as_array().cloned().unwrap_or_default();
        let found = entries.iter().any(|e| {
            e["client"] == "127.0.0.2" && e["note"] == "failed login as alice" && e["status"] == 401
        });
        let via_proxy = entries.iter().any(|e| e["client"] == "203.0.113.9");
        if found && via_proxy {
            Ok(())
        } else {
            Err(log.to_string())
        }
    });
    let (_, log) = api(agent, &root, "GET", "/v1/audit?who=ann", "");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/login" && e["status"] == 200 && e["client"] == "192.0.2.7"),
        "{log}"
    );
}

/// Regressions: refused requests were not audited, and a member's 1 010 bad requests pushed
/// every admin entry out of the 1 000-entry log.
#[test]
fn refusals_are_audited_and_a_member_cannot_flush_the_log() {
    let cluster = agent();
    let agent = &cluster.agents[0];
    let root = agent.token();
    let alice = create_token(agent, &root, "alice");
    // Refused: a member on an admin endpoint, and no token at all.
    let (status, _) = api(agent, &alice, "POST", "/v1/accounts", "{}");
    assert_eq!(status, 403);
    let (status, _) = api(agent, "", "DELETE", "/v1/accounts/ann", "");
    assert_eq!(status, 401);
    for _ in 0..1010 {
        let (status, _) = api(
            agent,
            &alice,
            "PUT",
            "/v1/me/ssh-keys/x",
            r#"{"key":"bad"}"#,
        );
        assert_eq!(status, 400);
    }
    eventually("alice's last entries recorded", WAIT, || {
        let (_, log) = api(agent, &root, "GET", "/v1/audit?who=alice", "");
        let n = log.as_array().map_or(0, Vec::len);
        if n == hearth_types::account::AUDIT_KEEP {
            Ok(())
        } else {
            Err(format!("{n} entries of alice"))
        }
    });
    let (_, log) = api(agent, &root, "GET", "/v1/audit", "");
    let entries = log.as_array().unwrap();
    // The root's account creations survived the flood, and the refusals are there.
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "root" && e["path"] == "/v1/accounts" && e["status"] == 200),
        "the admin's entries were pushed out"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e["who"] == "alice" && e["path"] == "/v1/accounts" && e["status"] == 403),
        "alice's refusal is her oldest entry, and her own flood pushed it out"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "anonymous" && e["method"] == "DELETE" && e["status"] == 401),
        "the anonymous refusal is kept: {}",
        entries.len()
    );
    // The JSON lines export holds the same entries.
    let (status, text) = http_request(
        agent.api_addr(),
        &format!(
            "GET /v1/audit?format=jsonl HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {root}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(status, 200);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), entries.len());
    // A member cannot read it.
    let (status, _) = api(agent, &alice, "GET", "/v1/audit", "");
    assert_eq!(status, 403);
}

fn create_token(agent: &TestAgent, bearer: &str, account: &str) -> String {
    let body = format!(r#"{{"account":"{account}"}}"#);
    let (status, answer) = api(agent, bearer, "POST", "/v1/tokens", &body);
    assert_eq!(status, 201, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

/// Regressions: a password change left sessions and tokens valid, and a 12-hour session
/// could mint a token that never expired.
#[test]
fn a_password_change_ends_sessions_and_tokens_never_outlive_their_session() {
    let cluster = agent();
    let agent = &cluster.agents[0];
    let (status, session) = login_from(agent, local(1), None, "alice", "alice's long password");
    assert_eq!(status, 303);
    let session = session.expect("a session");
    let (status, me) = api(agent, &session, "GET", "/v1/me", "");
    assert_eq!((status, me["name"].as_str()), (200, Some("alice")));

    // A token the session makes expires with it at the latest.
    let (status, made) = api(agent, &session, "POST", "/v1/tokens", r#"{"note":"ci"}"#);
    assert_eq!(status, 201, "{made}");
    let (_, tokens) = api(agent, &session, "GET", "/v1/tokens", "");
    let expiry = |note: &str| {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["note"] == note)
            .and_then(|t| t["expires_at"].as_u64())
    };
    let session_end = expiry("web session").expect("the session expires");
    let made_end = expiry("ci").expect("a token from a session expires");
    assert!(made_end <= session_end, "{made_end} > {session_end}");
    let (status, asked) = api(
        agent,
        &session,
        "POST",
        "/v1/tokens",
        r#"{"note":"short","expires_in_secs":60}"#,
    );
    assert_eq!(status, 201, "{asked}");

    // A token from the node (no session) lives until revoked.
    let root = agent.token();
    let api_token = create_token(agent, &root, "alice");

    // A wrong current password changes nothing.
    let change = |current: &str, revoke: bool| {
        let body = format!(
            r#"{{"current":"{current}","new":"a brand new password","revoke_tokens":{revoke}}}"#
        );
        api(agent, &session, "POST", "/v1/me/password", &body)
    };
    let (status, answer) = change("not it at all", false);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = change("alice's long password", false);
    assert_eq!(status, 200, "{answer}");
    // The session ended with the password; the token it made and the API token did not.
    let (status, _) = api(agent, &session, "GET", "/v1/me", "");
    assert_eq!(status, 401);
    let made = made["token"].as_str().unwrap();
    assert_eq!(api(agent, made, "GET", "/v1/me", "").0, 200);
    assert_eq!(api(agent, &api_token, "GET", "/v1/me", "").0, 200);

    // With revoke_tokens, every token of the account goes too.
    let (status, session) = login_from(agent, local(1), None, "alice", "a brand new password");
    assert_eq!(status, 303);
    let session = session.unwrap();
    let body =
        r#"{"current":"a brand new password","new":"a newer password still","revoke_tokens":true}"#;
    let (status, answer) = api(agent, &session, "POST", "/v1/me/password", body);
    assert_eq!(status, 200, "{answer}");
    for token in [made, api_token.as_str(), session.as_str()] {
        assert_eq!(api(agent, token, "GET", "/v1/me", "").0, 401);
    }
}

/// Regression: `state.redb` was mode 0644 and `vms/` 0755, so any user of a server could read
/// the account and token hashes and the members' disks.
#[test]
fn the_state_and_the_vms_are_the_agent_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = agent();
    let data = cluster.agents[0].dir.join("data");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    for dir in [data.clone(), data.join("state"), data.join("vms")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in [data.join("state/state.redb"), data.join("api-token")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// Regression: Raft RPC took any number of idle connections, and 300 idle TCP connections
/// stopped every TCP DNS answer. Now a stranger's idle connections are capped per address
/// and closed when they say nothing, and the node goes on answering and writing.
#[test]
fn idle_connections_from_one_stranger_stop_neither_dns_nor_raft() {
    use std::io::Read;
    use std::net::TcpStream;
    let cluster = agent();
    let agent = &cluster.agents[0];
    let rpc = SocketAddr::from((agent.spec.ip, hearth_testkit::RPC_PORT));
    let closed = |stream: &mut TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        matches!(stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
    };
    let stranger = local(9);
    let mut idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| connect_from(stranger, rpc))
        .chain((0..300).filter_map(|_| connect_from(stranger, agent.dns_addr())))
        .chain((0..100).filter_map(|_| connect_from(stranger, agent.api_addr())))
        .collect();
    // DNS over TCP and the state still answer while they are open.
    let answers =
        hearth_testkit::dig_full(agent.dns_addr(), &["+tcp", "+short", "n1.coop.test.", "A"]);
    assert!(answers.contains(&agent.spec.ip.to_string()), "{answers}");
    let root = agent.token();
    let body = r#"{"name":"carol","role":"member","password":"carol's long password"}"#;
    assert_eq!(api(agent, &root, "POST", "/v1/accounts", body).0, 200);
    eventually("refusals counted", WAIT, || {
        let rpc = metric(agent, "hearth_rpc_connections_refused_total");
        let dns = metric(agent, "hearth_dns_tcp_refused_total");
        let api = metric(agent, "hearth_api_connections_refused_total");
        if rpc > 0 && dns > 0 && api > 0 {
            Ok(())
        } else {
            Err(format!("rpc {rpc}, dns {dns}, api {api}"))
        }
    });
    // Those that were let in and said nothing are closed by the node.
    assert!(idle.iter_mut().all(closed));
}

/// One server+worker agent with the fake driver (no guest runs; sizes and addresses are what
/// is tested), a 16-vCPU worker, an image and a /29 pool (five addresses after the gateway).
fn quota_agent() -> TestCluster {
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 16\nmemory_mib = 65536\ndisk_gib = 1000\n".into();
    });
    let agent = &cluster.agents[0];
    hearth_testkit::vms::wait_for_hosts(agent, 1);
    agent.add_fake_image("tiny");
    agent.cli(&[
        "pool",
        "add",
        "net",
        "192.0.2.0/29",
        "--gateway",
        "192.0.2.1",
    ]);
    let root = agent.token();
    for name in ["alice", "bob"] {
        let body =
            format!(r#"{{"name":"{name}","role":"member","password":"{name}'s long password"}}"#);
        assert_eq!(api(agent, &root, "POST", "/v1/accounts", &body).0, 200);
    }
    cluster
}

/// `POST /v1/vms` as `token`: a small VM of `vcpus` with one address from each of `pools`.
fn create_vm(
    agent: &TestAgent,
    token: &str,
    name: &str,
    owner: &str,
    vcpus: u32,
    pools: &[&str],
) -> (u16, Value) {
    let body = serde_json::json!({
        "name": name, "owner": owner, "vcpus": vcpus, "memory_mib": 256, "disk_gib": 5,
        "image": "tiny", "pools": pools,
    });
    api(agent, token, "POST", "/v1/vms", &body.to_string())
}

/// Regressions: one member created five unplaceable 256-vCPU VMs and took every address of
/// a /29, so the next member got "no free address"; a member removed the iops limit an
/// admin set, and `iops = 2^64-1` was accepted.
#[test]
fn members_stay_within_their_plan_and_cannot_hoard_addresses_or_lift_io_limits() {
    let cluster = quota_agent();
    let agent = &cluster.agents[0];
    let root = agent.token();
    let alice = create_token(agent, &root, "alice");
    let bob = create_token(agent, &root, "bob");
    // Larger than any worker: refused, and no address is taken.
    let (status, answer) = create_vm(agent, &alice, "huge", "alice", 256, &["net"]);
    assert_eq!(status, 403, "{answer}");
    // The co-op's default plan: two VMs, two addresses, small IO.
    let plan =
        r#"{"plan":{"name":"default","quota":{"vms":2,"addresses":2,"vcpus":4,"iops":500}}}"#;
    assert_eq!(api(agent, &root, "PUT", "/v1/plans", plan).0, 200);
    for name in ["a1", "a2"] {
        let (status, answer) = create_vm(agent, &alice, name, "alice", 2, &["net"]);
        assert_eq!(status, 201, "{answer}");
    }
    let (status, answer) = create_vm(agent, &alice, "a3", "alice", 1, &["net"]);
    assert_eq!(status, 403, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(
        why.contains("vms: over quota: 2 allowed, 2 in use, 0 left"),
        "{why}"
    );
    // Bob still gets an address.
    let (status, answer) = create_vm(agent, &bob, "b1", "bob", 1, &["net"]);
    assert_eq!(status, 201, "{answer}");
    // Her VMs carry the plan's IO limit, which she cannot lift; an admin can, within range.
    let (_, vm) = api(agent, &alice, "GET", "/v1/vms/a1", "");
    assert_eq!(vm["io"]["iops"], 500, "{vm}");
    let (status, _) = api(agent, &alice, "PUT", "/v1/vms/a1/io", r#"{"io":{}}"#);
    assert_eq!(status, 403);
    let (status, answer) = api(
        agent,
        &root,
        "PUT",
        "/v1/vms/a1/io",
        r#"{"io":{"iops":18446744073709551615}}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("io.iops"),
        "{answer}"
    );
    // She sees her plan and what is left; an account of her own limits raises hers.
    let (_, me) = api(agent, &alice, "GET", "/v1/me", "");
    assert_eq!(
        (me["plan"].as_str(), me["usage"]["vms"].as_u64()),
        (Some("default"), Some(2))
    );
    let raise = r#"{"quota":{"vms":3,"addresses":3,"vcpus":5}}"#;
    assert_eq!(
        api(agent, &root, "PUT", "/v1/accounts/alice/plan", raise).0,
        200
    );
    let (status, answer) = create_vm(agent, &alice, "a3", "alice", 1, &["net"]);
    assert_eq!(status, 201, "{answer}");
    // Plans are the admins' business.
    assert_eq!(api(agent, &alice, "PUT", "/v1/plans", plan).0, 403);

    // Regression: removing an account left its VMs, for whoever took the name next. The
    // removal is refused while it owns VMs; an admin gives them away, within the new
    // owner's quota, or deletes them.
    let (status, answer) = api(agent, &root, "DELETE", "/v1/accounts/alice", "");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("owns VMs"),
        "{answer}"
    );
    let give = |vm: &str, token: &str| {
        let path = format!("/v1/vms/{vm}/owner");
        api(agent, token, "POST", &path, r#"{"owner":"bob"}"#)
    };
    assert_eq!(give("a1", &alice).0, 403, "a member gives nothing away");
    assert_eq!(give("a3", &root).0, 200);
    let (status, answer) = give("a2", &root);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("vms: over quota: 2 allowed, 2 in use"),
        "{answer}"
    );
    let (_, vm) = api(agent, &bob, "GET", "/v1/vms/a3", "");
    assert_eq!(vm["owner"], "bob", "{vm}");
    // Never given to, nor made for, a name with no account: whoever made it next would get
    // the VM.
    let new_vm =
        r#"{"name":"a9","owner":"nobody","vcpus":1,"memory_mib":64,"disk_gib":1,"image":"tiny"}"#;
    for (path, body) in [
        ("/v1/vms/a1/owner", r#"{"owner":"nobody"}"#),
        ("/v1/vms", new_vm),
    ] {
        let (status, answer) = api(agent, &root, "POST", path, body);
        assert_eq!(status, 404, "{path}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("no account named nobody"), "{answer}");
    }
}

/// Regression: with a worker's `data_dir/api-token`, one `POST /v1/accounts` made a new
/// admin, and a `PUT /v1/cluster-services` with an exec check ran a command as root on a
/// server. A worker's own token now reads and leaves, nothing more.
#[test]
fn a_workers_own_token_reads_the_cluster_and_changes_nothing() {
    let mut cluster = TestCluster::start(bin(), 0, |_| String::new());
    let server = cluster.spec(0, "[state]\nbootstrap_expect = 1\n".into());
    cluster.add(server);
    let mut worker = cluster.spec(1, "[compute]\ndriver = \"fake\"\n".into());
    worker.roles = "[\"worker\"]".into();
    cluster.add(worker);
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], WAIT);
    let worker = &cluster.agents[1];
    let token = worker.token();
    // The matrix of a worker's node token, on the worker's own API.
    let cases = [
        ("GET", "/v1/members", "", 200),
        ("GET", "/v1/hosts", "", 200),
        ("GET", "/v1/accounts", "", 403),
        ("GET", "/v1/tokens", "", 403),
        ("GET", "/v1/audit", "", 403),
        ("GET", "/v1/desired", "", 403),
        (
            "POST",
            "/v1/accounts",
            r#"{"name":"mallory","role":"admin","password":"a long enough password"}"#,
            403,
        ),
        ("POST", "/v1/tokens", r#"{"account":"ann"}"#, 403),
        (
            "PUT",
            "/v1/cluster-services",
            r#"{"service":{"name":"x","nodes":["n1"],"check":{"exec":["/bin/true"]}}}"#,
            403,
        ),
        ("PUT", "/v1/records", "{}", 403),
        ("PUT", "/v1/pools", "{}", 403),
        ("POST", "/v1/nodes/n1/drain", "", 403),
        ("POST", "/v1/vms", "{}", 403),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = api(worker, &token, method, path, body);
        assert_eq!(status, want, "{method} {path}: {answer}");
    }
    // The server's own token is still root.
    let root = cluster.agents[0].token();
    let (status, _) = api(&cluster.agents[0], &root, "GET", "/v1/accounts", "");
    assert_eq!(status, 200);
}

/// A field of `/proc/PID/status` (`Uid`, `Seccomp`, `NoNewPrivs`), its first word.
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .to_owned()
}

/// Asks the QEMU behind `socket` to start a process (a migration to `exec:`); returns QEMU's
/// answer.
fn ask_qemu_to_spawn(socket: &Path, marker: &Path) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut qmp = hearth_qemu::qmp::Qmp::connect(socket).await.unwrap();
        let uri = format!("exec:touch {}", marker.display());
        match qmp
            .execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await
        {
            Ok(answer) => answer,
            Err(error) => Value::String(error.to_string()),
        }
    })
}

/// Regression: QEMU ran as root with no sandbox, so a guest escape owned the worker. Run the
/// way the shipped unit runs it (its own unprivileged user, here `nobody`, with no new
/// privileges), the agent starts QEMU as that user under a seccomp filter that denies new
/// processes: the test guest boots on its disk, the VM's files are that user's alone, and
/// QEMU asked to start a process (a migration to `exec:`) cannot.
#[test]
fn a_confined_qemu_boots_the_guest_and_cannot_start_a_process() {
    use hearth_testkit::vms::{BOOT, console, create_tiny, vm_dir, wait_phase};
    use std::os::unix::fs::MetadataExt;
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\nvcpus = 2\nmemory_mib = 1024\ndisk_gib = 10\n".into();
        spec.run_as = Some("nobody".into());
    });
    let agent = &cluster.agents[0];
    hearth_testkit::vms::wait_for_hosts(agent, 1);
    agent.add_test_guest(&hearth_testkit::test_guest());
    create_tiny(agent, "boxed", &[]);
    let row = wait_phase(agent, "boxed", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    eventually("the confined guest booted", BOOT, || {
        match console(agent, &id).contains("HEARTH-GUEST-READY") {
            true => Ok(()),
            false => Err(console(agent, &id)),
        }
    });
    let nobody = std::fs::metadata(&agent.dir).unwrap().uid();
    assert_ne!(nobody, 0);
    let pids = hearth_testkit::qemu_pids_under(&agent.dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let qemu = pids[0];
    assert_eq!(proc_status(qemu, "Uid"), nobody.to_string(), "QEMU's user");
    assert_eq!(proc_status(qemu, "Seccomp"), "2", "a seccomp filter");
    assert_eq!(proc_status(qemu, "NoNewPrivs"), "1");
    let dir = vm_dir(agent, &id);
    let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for name in ["disk.qcow2", "console.log", "qmp.sock"] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.uid(), nobody, "{name}");
        assert_eq!(meta.mode() & 0o077, 0, "{name} is its user's alone");
    }

    // Where QEMU's user could write, were it allowed to start `touch`.
    let marker = agent.dir.join("spawned");
    let answer = ask_qemu_to_spawn(&dir.join("qmp.sock"), &marker);
    assert!(!marker.exists(), "QEMU started a process: {answer}");
    assert!(
        answer.to_string().contains("Operation not permitted"),
        "{answer}"
    );
    // The guest runs on in the same QEMU.
    assert_eq!(hearth_testkit::qemu_pids_under(&agent.dir), [qemu]);
    assert_eq!(wait_phase(agent, "boxed", "running")["id"], id.as_str());
}

/// 32 bytes from 64 hex digits.
fn hex_bytes(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Sends `request` over a connection to `rpc` opened with `keyring`'s key of `tier`; the
/// answer, or why there was none.
fn rpc_call(
    rpc: SocketAddr,
    keyring: &hearth_membership::Keyring,
    tier: hearth_membership::stream::Tier,
    request: &hearth_state::network::RpcRequest,
) -> Result<hearth_state::network::RpcResponse, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(rpc)
            .await
            .map_err(|e| e.to_string())?;
        let mut sealed = hearth_membership::stream::SealedStream::client(stream, keyring, tier)
            .await
            .map_err(|e| e.to_string())?;
        sealed
            .send(&serde_json::to_vec(request).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(10), sealed.recv())
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&answer).map_err(|e| e.to_string())
    })
}

/// A worker given only a worker key (`hearth keygen --worker`) runs VMs and reports as
/// before; over Raft RPC its key neither votes nor writes anything but a worker's reports,
/// while the secret's server key still may; its API sends admins to a server.
#[test]
fn a_worker_key_runs_vms_but_cannot_vote_or_write_the_clusters_state() {
    use hearth_membership::stream::Tier;
    use hearth_state::model::{Command, Expect};
    use hearth_state::network::StateError;
    use hearth_state::network::{RpcRequest, RpcResponse};

    let mut cluster = TestCluster::start(bin(), 0, |_| String::new());
    let server = cluster.spec(0, "[state]\nbootstrap_expect = 1\n".into());
    cluster.add(server);
    let server = &cluster.agents[0];
    let config = server.config_path();
    let output = std::process::Command::new(bin())
        .args(["keygen", "--worker", "--name", "n2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    let worker_key = lines[0].to_owned();
    assert!(worker_key.starts_with(hearth_membership::WORKER_KEY_PREFIX));
    assert!(lines[1].starts_with(hearth_membership::WORKER_IDENTITY_PREFIX));
    let identity_key: [u8; 32] = hex_bytes(lines[1].rsplit(':').next().unwrap());
    let key_file = server.dir.join("worker-key");
    std::fs::write(&key_file, &printed).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut worker = cluster.spec(1, "[compute]\ndriver = \"fake\"\n".into());
    worker.roles = "[\"worker\"]".into();
    worker.secret_file = Some(key_file);
    cluster.add(worker);
    cluster.wait_for_members(&[("n1", "alive"), ("n2", "alive")], WAIT);
    let (server, worker) = (&cluster.agents[0], &cluster.agents[1]);
    eventually("the worker registered", WAIT, || {
        match server.host_count()? {
            1 => Ok(()),
            n => Err(format!("{n} hosts")),
        }
    });

    // Its reports go through: a VM placed on it runs.
    server.add_fake_image("fake");
    server.ensure_account("alice");
    server.cli(&[
        "vm",
        "create",
        "w1",
        "--image",
        "fake",
        "--owner",
        "alice",
        "--memory-mib",
        "64",
        "--disk-gib",
        "1",
    ]);
    eventually("the VM runs on the worker", WAIT, || {
        let row = server.api_json("/v1/vms/w1")?;
        match (row["host"].as_str(), row["shown_phase"].as_str()) {
            (Some("n2"), Some("running")) => Ok(()),
            _ => Err(row.to_string()),
        }
    });

    // An admin's change through the worker's API is sent to a server, with the reason.
    let root = server.token();
    let body = r#"{"name":"ann","role":"admin","password":"ann's long password"}"#;
    let (status, answer) = api(server, &root, "POST", "/v1/accounts", body);
    assert_eq!(status, 200, "{answer}");
    let ann = create_token(server, &root, "ann");
    // (Once the token has reached the worker, a learner.)
    let answer = eventually("the worker's API refuses the drain", WAIT, || {
        match api(worker, &ann, "POST", "/v1/nodes/n1/drain", "") {
            (403, answer) => Ok(answer),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(answer.to_string().contains("worker key"), "{answer}");

    // Raw RPC with the worker key: a write of the cluster's state is refused, a vote ends
    // the connection; the same write with the server key is taken.
    let spec = &server.spec;
    let rpc = SocketAddr::from((spec.ip, hearth_testkit::RPC_PORT));
    let material = hex_bytes(&worker_key[hearth_membership::WORKER_KEY_PREFIX.len()..]);
    let worker_ring = hearth_membership::Keyring::for_worker(&spec.cluster, material, &[], None);
    let named_ring = hearth_membership::Keyring::for_worker(
        &spec.cluster,
        material,
        &[],
        Some(("n2".to_owned(), identity_key)),
    );
    let drain = RpcRequest::Write(Box::new(Command::SetDrain {
        node: "n1".into(),
        drained: true,
        expect: Expect::Any,
    }));
    match rpc_call(rpc, &worker_ring, Tier::Worker, &drain) {
        Ok(RpcResponse::Write(Err(StateError::Forbidden(why)))) => {
            assert!(why.contains("worker key"), "{why}")
        }
        other => panic!("a worker key wrote the drain flag: {other:?}"),
    }
    let vote: RpcRequest = serde_json::from_value(serde_json::json!({"Vote": {
        "vote": {"leader_id": {"term": 99, "node_id": 7}, "committed": false},
        "last_log_id": null
    }}))
    .expect("a vote request");
    assert!(
        rpc_call(rpc, &worker_ring, Tier::Worker, &vote).is_err(),
        "a worker key's vote was answered"
    );
    // Named as n2, it may report about n2 only.
    let report = |host: &str| {
        RpcRequest::Write(Box::new(Command::Compute {
            command: hearth_state::model::ComputeCommand::RenewLease { host: host.into() },
        }))
    };
    match rpc_call(rpc, &named_ring, Tier::Named, &report("n2")) {
        Ok(RpcResponse::Write(Ok(_))) => {}
        other => panic!("n2's own lease was refused: {other:?}"),
    }
    for (ring, tier, host) in [
        (&named_ring, Tier::Named, "n1"),
        (&worker_ring, Tier::Worker, "n2"),
    ] {
        match rpc_call(rpc, ring, tier, &report(host)) {
            Ok(RpcResponse::Write(Err(StateError::Forbidden(_)))) => {}
            other => panic!("{tier:?} renewed {host}'s lease: {other:?}"),
        }
    }
    match rpc_call(rpc, &named_ring, Tier::Named, &drain) {
        Ok(RpcResponse::Write(Err(StateError::Forbidden(_)))) => {}
        other => panic!("a named worker wrote the drain flag: {other:?}"),
    }
    let desired = server.api_json("/v1/desired?consistent").unwrap();
    assert_eq!(desired["drained"], serde_json::json!({}), "{desired}");
    use base64::Engine;
    let secret: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&spec.secret)
        .unwrap()
        .try_into()
        .unwrap();
    let server_ring = hearth_membership::Keyring::new(
        &spec.cluster,
        &hearth_membership::Secret::new(secret),
        &[],
    );
    match rpc_call(rpc, &server_ring, Tier::Full, &drain) {
        Ok(RpcResponse::Write(Ok(_))) => {}
        other => panic!("the server key's write was not taken: {other:?}"),
    }
}
