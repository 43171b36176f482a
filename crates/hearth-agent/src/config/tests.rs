//! Unit tests of the config's checks: `validate_with` on parsed configs and in-memory file
//! contents, so that each problem's message (its key, then the fix) is pinned without files.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::*;

const SECRET_FILE: &str = "/etc/hearth/secret";
const KEY_FILE: &str = "/etc/hearth/tsig-key";
const PASSWORD_FILE: &str = "/etc/hearth/smtp-password";

/// A config that uses every section, with a file for each of its secrets.
const GOOD: &str = r#"
node_name   = "n1"
cluster     = "coop"
secret_file = "/etc/hearth/secret"
gossip_addr = "192.0.2.10:7946"
join        = ["192.0.2.11:7946", "192.0.2.12"]

[dns]
zone = "Coop.Example"

[dns.push]
server   = "192.0.2.53"
key_name = "hearth-update"
key_file = "/etc/hearth/tsig-key"

[smtp]
server        = "mail.example.org:587"
from          = "Co-op <noreply@example.org>"
username      = "hearth"
password_file = "/etc/hearth/smtp-password"

[[service]]
name = "www"
[service.check]
http = "http://127.0.0.1:8080/healthz"

[[service]]
name = "db"
[service.check]
tcp = "127.0.0.1:5432"

[[handler]]
scope   = "cluster"
name    = "pager"
events  = ["member-failed"]
command = ["/usr/local/bin/page"]
"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn good() -> Config {
    Config::parse(GOOD).expect("the good config parses")
}

/// What the good config's files hold: a secret with an older one still accepted, the TSIG key
/// and the SMTP password.
fn good_files() -> ConfigFiles {
    let mut files = ConfigFiles::default();
    let secrets = format!("{}\n# rotating out:\n{}\n", b64(&[1; 32]), b64(&[2; 32]));
    files.insert(SECRET_FILE, Ok(secrets));
    files.insert(KEY_FILE, Ok(format!("{}\n", b64(b"tsig key bytes"))));
    files.insert(PASSWORD_FILE, Ok("hunter2\n".into()));
    files
}

fn unreadable() -> io::Result<String> {
    Err(io::Error::new(io::ErrorKind::NotFound, "No such file"))
}

/// The problems of `config` with `files`; panics when there are none.
#[track_caller]
fn problems_with(config: &Config, files: &ConfigFiles) -> Vec<String> {
    match config.validate_with(files) {
        Ok(_) => panic!("the config passed: {config:?}"),
        Err(problems) => problems,
    }
}

/// Asserts that `config`, with the good files, has exactly the problem `expected`.
#[track_caller]
fn assert_problem(config: &Config, expected: &str) {
    assert_eq!(problems_with(config, &good_files()), [expected]);
}

/// Asserts that the good config, changed by `change`, has exactly the problem `expected`.
#[track_caller]
fn assert_change_gives(change: impl FnOnce(&mut Config), expected: &str) {
    let mut config = good();
    change(&mut config);
    assert_problem(&config, expected);
}

#[test]
fn the_good_config_passes_and_resolves() {
    let config = good();
    let resolved = config.validate_with(&good_files()).expect("valid");
    assert_eq!(resolved.advertise, "192.0.2.10".parse::<IpAddr>().unwrap());
    let join: Vec<String> = resolved.join.iter().map(ToString::to_string).collect();
    assert_eq!(join, ["192.0.2.11:7946", "192.0.2.12:7946"]);
    assert_eq!(resolved.zone, "coop.example.");
    assert_eq!(resolved.keys.accepted(), 1);
    assert!(resolved.dns_push.is_some());
    let smtp = resolved.smtp.expect("smtp settings");
    assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example.org", 587));
    assert_eq!(smtp.tls, SmtpTls::Starttls);
    assert_eq!(smtp.credentials, Some(("hearth".into(), "hunter2".into())));
}

#[test]
fn the_dev_defaults_validate_and_name_no_file() {
    let (config, resolved) = crate::dev::dev_config();
    assert_eq!(resolved.zone, "hearth.test.");
    assert!(resolved.dns_push.is_none() && resolved.smtp.is_none());
    // The embedded config holds its secret inline, so it needs no file at all.
    let checked = config.validate_with(&ConfigFiles::default());
    assert!(checked.is_ok(), "{:?}", checked.err());
}

#[test]
fn the_defaults_of_a_minimal_config_validate() {
    let text = "node_name = \"n1\"\ncluster = \"c\"\nsecret_file = \"/etc/hearth/secret\"\n\
                advertise = \"192.0.2.10\"\n";
    let config = Config::parse(text).unwrap();
    let mut files = ConfigFiles::default();
    files.insert(SECRET_FILE, Ok(b64(&[3; 32])));
    let resolved = config.validate_with(&files).expect("valid");
    assert_eq!(resolved.zone, "hearth.internal.");
    assert_eq!(resolved.keys.accepted(), 0);
    assert_eq!(config.token_path(), Path::new("/var/lib/hearth/api-token"));
}

#[test]
fn node_name_and_cluster() {
    assert_change_gives(
        |c| c.node_name = "-n1".into(),
        "node_name: `-n1` must be one DNS label: letters, digits and '-', at most 63 characters",
    );
    assert_change_gives(|c| c.cluster = " ".into(), "cluster: must not be empty");
}

#[test]
fn the_cluster_secret() {
    assert_change_gives(
        |c| c.secret = Some(b64(&[1; 32])),
        "secret, secret_file: set only one of them",
    );
    assert_change_gives(
        |c| c.secret_file = None,
        "secret_file: no cluster secret is set; create one with \
         `hearth keygen > /etc/hearth/secret` and copy it to every node",
    );
    assert_change_gives(
        |c| {
            c.secret_file = None;
            c.secret = Some("not a secret!".into());
        },
        "secret: is not base64; generate a secret with `hearth keygen`",
    );
    assert_change_gives(
        |c| {
            c.secret_file = None;
            c.secret = Some(b64(&[1; 16]));
        },
        "secret: decodes to 16 bytes but must be 32; generate a secret with `hearth keygen`",
    );
}

#[test]
fn the_secret_file_is_checked_from_its_text() {
    let config = good();
    let with_secret = |read: io::Result<String>| {
        let mut files = good_files();
        files.insert(SECRET_FILE, read);
        problems_with(&config, &files)
    };
    assert_eq!(
        with_secret(unreadable()),
        ["secret_file: cannot read /etc/hearth/secret: No such file"]
    );
    assert_eq!(
        with_secret(Ok("# only a comment\n\n".into())),
        ["secret_file: is empty; put `hearth keygen` output in it"]
    );
    let bad_second = format!("{}\nsecret words\n", b64(&[1; 32]));
    let problems = with_secret(Ok(bad_second));
    assert_eq!(
        problems,
        [
            "secret_file (line 2 of accepted secrets): is not base64; generate a secret with \
             `hearth keygen`"
        ]
    );
    // A file the config does not read is reported as such, not as an empty secret.
    let problems = problems_with(&config, &ConfigFiles::default());
    assert!(
        problems[0].starts_with("secret_file: cannot read /etc/hearth/secret:"),
        "{problems:?}"
    );
}

#[test]
fn addresses() {
    assert_change_gives(
        |c| c.advertise = Some("0.0.0.0".parse().unwrap()),
        "advertise: 0.0.0.0 is a wildcard; give this node's own address",
    );
    assert_change_gives(
        |c| c.gossip_addr = "0.0.0.0:7946".parse().unwrap(),
        "advertise: gossip_addr 0.0.0.0:7946 listens on every address, so set advertise to \
         the address other nodes reach this one at",
    );
    assert_change_gives(
        |c| c.join.push("seed.example:7946".into()),
        "join[2]: `seed.example:7946` is not an address; write IP:port, e.g. \"203.0.113.11:7946\"",
    );
}

#[test]
fn dns() {
    assert_change_gives(
        |c| c.dns.zone = "coop..example".into(),
        "dns.zone: `coop..example` is not a domain name; write e.g. \"coop.example.\"",
    );
    assert_change_gives(
        |c| c.dns.zone = ".".into(),
        "dns.zone: `.` is not a domain name; write e.g. \"coop.example.\"",
    );
    assert_change_gives(|c| c.dns.ttl = 86_401, "dns.ttl: at most 86400 seconds");
}

fn push(config: &mut Config) -> &mut DnsPushConfig {
    config.dns.push.as_mut().expect("the good config pushes")
}

#[test]
fn dns_push() {
    assert_change_gives(
        |c| push(c).server = "primary.example".into(),
        "dns.push.server: `primary.example` is not an address; write IP:port, e.g. \
         \"192.0.2.53:53\"",
    );
    assert_change_gives(
        |c| push(c).key_name = String::new(),
        "dns.push.key_name: `` is not a key name; write the name the primary knows the key by, \
         e.g. \"hearth-update\"",
    );
    assert_change_gives(
        |c| push(c).algorithm = "hmac-md5".into(),
        "dns.push.algorithm: `hmac-md5` is not supported; use \"hmac-sha256\"",
    );
    let config = good();
    let with_key = |read: io::Result<String>| {
        let mut files = good_files();
        files.insert(KEY_FILE, read);
        problems_with(&config, &files)
    };
    assert_eq!(
        with_key(unreadable()),
        ["dns.push.key_file: cannot read /etc/hearth/tsig-key: No such file"]
    );
    let secret_text = "this is not base64 but a secret all the same";
    let problems = with_key(Ok(secret_text.into()));
    assert_eq!(
        problems,
        ["dns.push.key_file: /etc/hearth/tsig-key does not hold a base64 secret"]
    );
    assert_eq!(
        with_key(Ok("\n".into())),
        ["dns.push.key_file: /etc/hearth/tsig-key is empty"]
    );
}

#[test]
fn smtp() {
    assert_change_gives(
        |c| c.smtp.as_mut().unwrap().server = "mail.example.org".into(),
        "smtp.server: `mail.example.org` is not host:port; write e.g. \"mail.example.org:587\"",
    );
    assert_change_gives(
        |c| c.smtp.as_mut().unwrap().username = None,
        "smtp.username, smtp.password_file: give both for SMTP AUTH, or neither",
    );
    let config = good();
    let mut files = good_files();
    files.insert(PASSWORD_FILE, unreadable());
    assert_eq!(
        problems_with(&config, &files),
        ["smtp.password_file: cannot read /etc/hearth/smtp-password: No such file"]
    );
}

#[test]
fn gossip_and_state_timing() {
    assert_change_gives(
        |c| c.gossip.probe_timeout = c.gossip.probe_interval,
        "gossip.probe_timeout: must be above zero and below gossip.probe_interval",
    );
    assert_change_gives(
        |c| c.gossip.suspicion_timeout = Duration::from_millis(1),
        "gossip.suspicion_timeout: must be at least gossip.probe_interval",
    );
    assert_change_gives(
        |c| c.state.bootstrap_expect = 0,
        "state.bootstrap_expect: at least 1",
    );
    assert_change_gives(
        |c| c.state.heartbeat = Duration::from_millis(101),
        "state.heartbeat: above zero and at most a third of state.election_timeout",
    );
    assert_change_gives(
        |c| c.state.write_timeout = Duration::from_millis(299),
        "state.write_timeout: at least state.election_timeout",
    );
}

#[test]
fn compute() {
    assert_change_gives(
        |c| c.compute.driver = "docker".into(),
        "compute.driver: `docker` is not qemu or fake",
    );
    assert_change_gives(
        |c| c.compute.accel = "hvf".into(),
        "compute.accel: `hvf` is not auto, kvm or tcg",
    );
    assert_change_gives(
        |c| c.compute.network = "bridge:".into(),
        "compute.network: `bridge:` is not `user` or `bridge:NAME`",
    );
    assert_change_gives(
        |c| c.compute.vcpus = Some(0),
        "compute: vcpus, memory_mib and disk_gib must be above zero",
    );
    assert_change_gives(
        |c| c.compute.lease_secs = 1,
        "compute.lease_secs: 1 is out of range; give 2 to 600 (default 15)",
    );
    assert_change_gives(
        |c| c.compute.migration_mib_per_sec = Some(0),
        "compute.migration_mib_per_sec: must be above zero; leave it out for no limit",
    );
}

#[test]
fn ceph() {
    let section = || CephSection {
        conf: "/etc/ceph/ceph.conf".into(),
        user: "hearth".into(),
        keyring: None,
    };
    let mut config = good();
    config.ceph = Some(section());
    let resolved = config.validate_with(&good_files()).expect("valid");
    let ceph = resolved.ceph.expect("the Ceph settings");
    assert_eq!(
        ceph.qemu_file("rbd", "x"),
        "rbd:rbd/x:id=hearth:conf=/etc/ceph/ceph.conf"
    );
    assert_change_gives(
        |c| {
            c.ceph = Some(CephSection {
                conf: "/etc/ceph/a:b.conf".into(),
                ..section()
            })
        },
        "ceph.conf: /etc/ceph/a:b.conf must be an absolute path without `:` or `,` (QEMU's rbd file name cannot carry them)",
    );
    assert_change_gives(
        |c| {
            c.ceph = Some(CephSection {
                user: "client.hearth".into(),
                ..section()
            })
        },
        "ceph.user: `client.hearth` is not a cephx user name; give it without `client.` (letters, digits, `_`, `.`, `-`), such as hearth",
    );
    assert_change_gives(
        |c| {
            c.ceph = Some(CephSection {
                keyring: Some("/nowhere/keyring".into()),
                ..section()
            })
        },
        "ceph.keyring: cannot read /nowhere/keyring: not read",
    );
    assert_change_gives(
        |c| {
            c.ceph = Some(section());
            c.compute.driver = "fake".into();
        },
        "ceph: only a worker whose compute.driver is qemu runs disks on RBD (it is fake); remove [ceph] or set compute.driver = \"qemu\"",
    );
}

fn check(config: &mut Config, idx: usize) -> &mut CheckConfig {
    config.service[idx]
        .check
        .as_mut()
        .expect("a checked service")
}

#[test]
fn services() {
    assert_change_gives(
        |c| c.service[1].name = "www".into(),
        "service[1].name: `www` is declared twice; service names must be unique",
    );
    assert_change_gives(
        |c| c.service[0].name = "w w".into(),
        "service[0].name: `w w` must be one DNS label: letters, digits and '-', at most 63 \
         characters",
    );
    let clone = |c: &mut Config| {
        let first = c.service[0].clone();
        c.service = (0..33)
            .map(|idx| ServiceConfig {
                name: format!("s{idx}"),
                ..first.clone()
            })
            .collect();
    };
    assert_change_gives(clone, "service: at most 32 services per node");
}

#[test]
fn service_checks() {
    assert_change_gives(
        |c| check(c, 0).tcp = Some("127.0.0.1:80".into()),
        "service[0].check: set exactly one of http, tcp, exec",
    );
    assert_change_gives(
        |c| check(c, 0).http = Some("https://127.0.0.1/".into()),
        "service[0].check.http: `https://127.0.0.1/` is not a plain http:// URL with an IP or \
         host and port, e.g. \"http://127.0.0.1:8080/healthz\"",
    );
    assert_change_gives(
        |c| check(c, 1).tcp = Some("localhost:5432".into()),
        "service[1].check.tcp: `localhost:5432` is not IP:port, e.g. \"127.0.0.1:80\"",
    );
    assert_change_gives(
        |c| {
            check(c, 1).tcp = None;
            check(c, 1).exec = Some(vec![String::new()]);
        },
        "service[1].check.exec: give the program and its arguments",
    );
    assert_change_gives(
        |c| check(c, 0).timeout = Duration::from_secs(2),
        "service[0].check.timeout: must be above zero and at most the interval",
    );
    assert_change_gives(
        |c| check(c, 0).fall = 0,
        "service[0].check.rise, service[0].check.fall: must be at least 1",
    );
}

#[test]
fn handlers() {
    assert_change_gives(
        |c| c.handler[0].events.clear(),
        "handler[0].events: list at least one event",
    );
    assert_change_gives(
        |c| c.handler[0].command.clear(),
        "handler[0].command: give the program and its arguments, e.g. \
         [\"/usr/local/bin/notify\", \"--quiet\"]",
    );
    assert_change_gives(
        |c| c.handler[0].timeout = Duration::ZERO,
        "handler[0].timeout: must be above zero",
    );
    assert_change_gives(
        |c| {
            c.handler[0].scope = HandlerScope::Node;
            c.handler[0].events = vec![
                hearth_types::EventKind::MemberFailed,
                hearth_types::EventKind::ReplicaDegraded,
            ];
        },
        "handler[0].events: replica-degraded events reach only cluster handlers; \
         set scope = \"cluster\" and a name",
    );
    assert_change_gives(
        |c| c.handler[0].name = None,
        "handler[0].name: a cluster handler needs a name, e.g. name = \"pager\"",
    );
    assert_change_gives(
        |c| c.handler.push(c.handler[0].clone()),
        "handler[1].name: `pager` is used twice; cluster handler names must be unique",
    );
    // A node handler needs no name, and two of them may share one.
    let mut config = good();
    config.handler[0].scope = HandlerScope::Node;
    config.handler[0].name = None;
    config.handler.push(config.handler[0].clone());
    assert!(config.validate_with(&good_files()).is_ok());
}

#[test]
fn every_problem_is_reported_in_key_order() {
    let mut config = good();
    config.node_name = String::new();
    config.join.push("nowhere".into());
    config.dns.ttl = 100_000;
    config.compute.driver = "docker".into();
    check(&mut config, 1).rise = 0;
    let mut files = good_files();
    files.insert(SECRET_FILE, unreadable());
    let keys: Vec<String> = problems_with(&config, &files)
        .iter()
        .map(|p| p.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "node_name",
            "secret_file",
            "join[2]",
            "dns.ttl",
            "compute.driver",
            "service[1].check.rise, service[1].check.fall"
        ]
    );
}

#[test]
fn serde_names_unknown_keys_and_bad_durations() {
    let unknown = Config::parse(&format!("{GOOD}\n[gossip]\nprobe_intervall = \"1s\"\n"));
    let message = unknown.unwrap_err();
    assert!(message.contains("probe_intervall"), "{message}");
    let bad = Config::parse(&format!("{GOOD}\n[gossip]\nprobe_interval = \"soon\"\n"));
    let message = bad.unwrap_err();
    assert!(
        message.contains("`soon` is not a duration") && message.contains("write e.g. \"500ms\""),
        "{message}"
    );
}

#[test]
fn reading_records_each_named_file_and_why_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b64(&[5; 32])).unwrap();
    let mut config = good();
    config.secret_file = Some(secret.clone());
    push(&mut config).key_file = dir.path().join("missing-key");
    config.smtp = None;
    // Regression: a secret file every user could read was used without a word.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = config.read_files();
    let why = refused.text(&secret).unwrap_err();
    assert!(
        why.contains("mode 0644") && why.contains(&format!("chmod 600 {}", secret.display())),
        "{why}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let files = config.read_files();
    assert_eq!(files.text(&secret), Ok(b64(&[5; 32]).as_str()));
    assert!(files.text(&dir.path().join("missing-key")).is_err());
    assert_eq!(files.text(Path::new(PASSWORD_FILE)), Err("not read"));
    // Debug shows the paths, never what the files hold.
    assert!(!format!("{files:?}").contains(&b64(&[5; 32])));
    let problems = config.validate().err().expect("the key file is missing");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("dns.push.key_file: cannot read "),
        "{problems:?}"
    );
}

fn load_error(path: &Path) -> String {
    match Config::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn load_reads_parses_and_checks_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hearth.toml");
    let message = load_error(&path);
    assert!(message.starts_with("cannot read config file "), "{message}");
    std::fs::write(&path, "node_name = [").unwrap();
    let message = load_error(&path);
    assert!(message.starts_with("config file "), "{message}");
    std::fs::write(&path, "node_name = \"\"\ncluster = \"\"\n").unwrap();
    let message = load_error(&path);
    assert!(
        message.ends_with(
            ":\n  - node_name: `` must be one DNS label: letters, digits and '-', \
             at most 63 characters\n  - cluster: must not be empty\n  - secret_file: no cluster \
             secret is set; create one with `hearth keygen > /etc/hearth/secret` and copy it to \
             every node\n  - advertise: gossip_addr 0.0.0.0:7946 listens on every address, so \
             set advertise to the address other nodes reach this one at"
        ),
        "{message}"
    );
}

/// `/metrics` re-reads each secret file: a missing one, or one every user may read, is a
/// problem; a private one is not.
#[test]
fn a_secret_file_is_a_problem_when_missing_or_open_to_all() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    assert!(crate::config::secret_file_problem(&secret).is_some());
    std::fs::write(&secret, b64(&[5; 32])).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(crate::config::secret_file_problem(&secret), None);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let problem = crate::config::secret_file_problem(&secret).unwrap();
    assert!(problem.contains("chmod 600"), "{problem}");
}

#[test]
fn a_worker_key_is_for_a_worker_alone_and_must_be_whole() {
    let text = |roles: &str| {
        format!(
            "node_name = \"w1\"\ncluster = \"c\"\nsecret_file = \"/etc/hearth/secret\"\n\
             advertise = \"192.0.2.10\"\nroles = {roles}\n"
        )
    };
    let server =
        hearth_membership::Keyring::new("c", &hearth_membership::Secret::new([3; 32]), &[]);
    let key = server.worker_key();
    let identity = |name: &str| server.worker_identity(name).unwrap();
    let with = |lines: &[&str]| {
        let mut files = ConfigFiles::default();
        files.insert(SECRET_FILE, Ok(lines.join("\n")));
        files
    };
    let worker = Config::parse(&text("[\"worker\"]")).unwrap();
    let resolved = worker
        .validate_with(&with(&[&key, &identity("w1")]))
        .expect("valid");
    let keyring = resolved.keys.keyring("c");
    assert!(!keyring.holds_servers_key());
    assert_eq!(keyring.worker_key(), key);
    assert_eq!(keyring.identity_name(), Some("w1"));
    for roles in ["[\"server\", \"worker\"]", "[\"witness\"]"] {
        let config = Config::parse(&text(roles)).unwrap();
        let problems = config
            .validate_with(&with(&[&key, &identity("w1")]))
            .err()
            .unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("secret_file: holds a worker key")),
            "{problems:?}"
        );
    }
    let short = format!(
        "{}{}",
        hearth_membership::WORKER_KEY_PREFIX,
        "ab".repeat(31)
    );
    let other = identity("w2");
    let mixed = b64(&[3; 32]);
    for (lines, says) in [
        (
            vec![short.as_str(), &identity("w1")],
            "hearth keygen --worker --name w1",
        ),
        (vec![key.as_str()], "one worker identity line"),
        (vec![key.as_str(), &other], "not one for node_name w1"),
        (vec![key.as_str(), &identity("w1"), &mixed], "mixes"),
    ] {
        let problems = worker.validate_with(&with(&lines)).err().unwrap();
        assert!(problems[0].contains(says), "{lines:?}: {problems:?}");
    }
}
