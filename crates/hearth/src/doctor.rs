//! `hearth doctor`: checks of this node (its data directory, KVM, QEMU, its bridge) and of
//! the cluster as its agent sees it (members up, one release, clocks, Raft RPC ports and DNS
//! answers reachable from here), each saying what is wrong and how to fix it.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hearth_agent::config::Config;
use hearth_types::{MemberRow, MemberState, Role};
use serde::Serialize;

use hearth_agent::reach::{UNREACHABLE_TAG, parse_tag, soa_over_udp};

use crate::client::{ApiClient, ClientArgs};
use crate::output::{print_json, print_table};

/// Below this much free space in the data directory, VMs and the Raft store are at risk.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// ... or below this share of the file system.
const MIN_FREE_PERCENT: u64 = 5;
/// Clocks further apart than this confuse leases, tokens' expiry and logs.
const MAX_CLOCK_OFFSET_MS: i64 = 1_000;
/// How long a port has to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct DoctorArgs {
    /// The node's config (the agent's `--config`).
    #[arg(long, value_name = "FILE", default_value = "/etc/hearth/hearth.toml")]
    config: std::path::PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One finding: what was checked, how it stands, and what to do when it is not ok.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

fn check(name: &str, status: Status, detail: String, fix: &str) -> Check {
    Check {
        check: name.to_owned(),
        status,
        detail,
        fix: fix.to_owned(),
    }
}

/// `hearth doctor`: exit 0 when every check is ok, 1 when one is not, 2 for a bad config.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let (config, _) = match Config::load(&args.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("hearth: {error}");
            return ExitCode::from(2);
        }
    };
    let mut checks = local_checks(&config);
    checks.extend(cluster_checks(&config));
    if args.json {
        print_json(&checks);
    } else {
        let rows = checks.iter().map(|c| {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            let detail = match c.fix.is_empty() {
                true => c.detail.clone(),
                false => format!("{} (fix: {})", c.detail, c.fix),
            };
            vec![c.check.clone(), status.to_owned(), detail]
        });
        print_table(&["CHECK", "STATUS", "DETAIL"], rows);
    }
    match checks.iter().all(|c| c.status == Status::Ok) {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// The data directory, and on a worker KVM, QEMU and the bridge.
fn local_checks(config: &Config) -> Vec<Check> {
    let mut checks = vec![data_dir(&config.data_dir)];
    if config.roles.contains(&Role::Worker) {
        checks.push(kvm());
        checks.push(qemu());
        if let Some(bridge) = config.compute.network.strip_prefix("bridge:") {
            checks.push(bridge_present(Path::new("/sys/class/net"), bridge));
            checks.push(tool(
                "nftables",
                "nft",
                "a bridged VM's anti-spoofing rules",
                "nftables",
            ));
            checks.push(tool("iproute2", "ip", "a bridged VM's tap", "iproute2"));
        }
    }
    checks
}

fn data_dir(dir: &Path) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let name = "data_dir";
    let mode = match std::fs::metadata(dir) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(error) => {
            return check(
                name,
                Status::Fail,
                format!("{}: {error}", dir.display()),
                "start the agent once (it makes the directory), or fix data_dir in the config",
            );
        }
    };
    if mode & 0o077 != 0 {
        return check(
            name,
            Status::Fail,
            format!(
                "{} is mode {mode:04o}: other users may read it",
                dir.display()
            ),
            &format!("chmod 700 {}", dir.display()),
        );
    }
    match hearth_agent::host_metrics::disk_space(dir) {
        Ok((total, free)) => space(dir, free, total),
        Err(error) => check(
            name,
            Status::Warn,
            format!("cannot read the free space of {}: {error}", dir.display()),
            "",
        ),
    }
}

/// Whether `free` of `total` bytes is enough room for disks and the Raft store.
fn space(dir: &Path, free: u64, total: u64) -> Check {
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let detail = format!(
        "{}: {:.1} GiB free of {:.1} GiB",
        dir.display(),
        gib(free),
        gib(total)
    );
    let low = free < MIN_FREE_BYTES || free.saturating_mul(100) < total * MIN_FREE_PERCENT;
    match low {
        true => check(
            "data_dir",
            Status::Fail,
            detail,
            "free space there (old archives in vms-archive/, images no VM uses), or grow the file system",
        ),
        false => check("data_dir", Status::Ok, detail, ""),
    }
}

fn kvm() -> Check {
    match hearth_qemu::accel::detect() {
        (hearth_qemu::accel::Accel::Kvm, why) => check("kvm", Status::Ok, why, ""),
        (_, why) => check(
            "kvm",
            Status::Warn,
            why,
            "load kvm_intel or kvm_amd (or enable nested virtualisation at the provider), and add the agent's user to group kvm",
        ),
    }
}

fn qemu() -> Check {
    let found = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = ["qemu-system-x86_64", "qemu-img"]
        .into_iter()
        .filter(|p| !found(p))
        .collect();
    match missing.as_slice() {
        [] => check(
            "qemu",
            Status::Ok,
            "qemu-system-x86_64 and qemu-img run".into(),
            "",
        ),
        _ => check(
            "qemu",
            Status::Fail,
            format!("not found: {}", missing.join(", ")),
            "apt-get install qemu-system-x86 qemu-utils",
        ),
    }
}

/// Whether interface `bridge` under `sys_net` (`/sys/class/net`) is a bridge.
fn bridge_present(sys_net: &Path, bridge: &str) -> Check {
    match sys_net.join(bridge).join("bridge").is_dir() {
        true => check("bridge", Status::Ok, format!("{bridge} is a bridge"), ""),
        false => check(
            "bridge",
            Status::Fail,
            format!("no bridge named {bridge} ([compute] network = \"bridge:{bridge}\")"),
            &format!(
                "ip link add {bridge} type bridge && ip link set {bridge} up, or in /etc/network/interfaces"
            ),
        ),
    }
}

/// Whether `program` runs here (`--version`), which a bridged worker needs for `what`.
fn tool(name: &str, program: &str, what: &str, package: &str) -> Check {
    let ran = std::process::Command::new(program)
        .arg("-V")
        .output()
        .map_err(|e| e.to_string())
        .and_then(|out| match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    match ran {
        Ok(version) => check(name, Status::Ok, version, ""),
        Err(error) => check(
            name,
            Status::Fail,
            format!("cannot run {program}, which makes {what}: {error}"),
            &format!("apt-get install {package}"),
        ),
    }
}

/// The agent answering, its members up, and their Raft RPC ports reachable from here.
fn cluster_checks(config: &Config) -> Vec<Check> {
    let mut api = config.api_addr;
    if api.ip().is_unspecified() {
        api.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let token = std::fs::read_to_string(config.token_path()).ok();
    let client = ClientArgs {
        api: api.to_string(),
        token: token.map(|t| t.trim().to_owned()),
        json: false,
    };
    let client = ApiClient::new(&client).map_err(|e| e.to_string());
    let rows: Result<Vec<MemberRow>, String> = client
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|c| c.get("/v1/members").map_err(|e| e.to_string()));
    match rows {
        Ok(rows) => {
            let mut checks = vec![check("agent", Status::Ok, format!("answers at {api}"), "")];
            checks.push(members(&rows));
            checks.push(versions(&rows));
            // The group's members, each asked its clock (nodes outside the group have none).
            if let Ok(state) = client.and_then(|c| {
                c.get::<serde_json::Value>("/v1/state")
                    .map_err(|e| e.to_string())
            }) {
                checks.push(clocks(&state["nodes"]));
            }
            checks.extend(ports(&rows, &config.node_name));
            checks.push(between(&rows));
            checks.extend(dns_answers(&rows, config.dns_addr.port(), &config.dns.zone));
            checks
        }
        Err(error) => vec![check(
            "agent",
            Status::Fail,
            format!("no answer at {api}: {error}"),
            "start it (systemctl start hearth), and run doctor as a user who can read its api-token",
        )],
    }
}

/// What every live member says it cannot reach (its `unreachable` tag): ports closed between
/// two members, which a check from this node alone does not see.
fn between(rows: &[MemberRow]) -> Check {
    let mut problems = Vec::new();
    for member in rows.iter().filter(|m| m.state == MemberState::Alive) {
        let Some(tag) = member.tags.get(UNREACHABLE_TAG) else {
            continue;
        };
        for (other, port) in parse_tag(tag) {
            problems.push(format!(
                "{} cannot reach {other}'s {port} port",
                member.name
            ));
        }
    }
    match problems.is_empty() {
        true => check(
            "between members",
            Status::Ok,
            "every live member reaches the others' RPC and DNS ports".into(),
            "",
        ),
        false => check(
            "between members",
            Status::Fail,
            problems.join("; "),
            "open TCP rpc_addr's port (Raft) and UDP+TCP dns_addr's port between every pair of members, and give every agent the same DNS port",
        ),
    }
}

/// Every member not gone on purpose is up.
fn members(rows: &[MemberRow]) -> Check {
    let down: Vec<String> = rows
        .iter()
        .filter(|m| matches!(m.state, MemberState::Dead | MemberState::Suspect))
        .map(|m| format!("{} ({}, {})", m.name, m.state, m.address))
        .collect();
    let up = rows
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count();
    match down.as_slice() {
        [] => check("members", Status::Ok, format!("{up} alive"), ""),
        _ => check(
            "members",
            Status::Fail,
            format!("{up} alive; down: {}", down.join(", ")),
            "start their agents, or `hearth node fence` a worker that is gone for good",
        ),
    }
}

/// Every member that is up runs the same release (the `version` tag it gossips; an agent
/// from before that tag says none).
fn versions(rows: &[MemberRow]) -> Check {
    let mut by_version: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in rows.iter().filter(|m| m.state == MemberState::Alive) {
        let version = m
            .tags
            .get(hearth_agent::VERSION_TAG)
            .map_or("unknown", String::as_str);
        by_version.entry(version).or_default().push(&m.name);
    }
    let list = || {
        by_version
            .iter()
            .map(|(version, names)| format!("{version}: {}", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match by_version.len() {
        0 | 1 => check("versions", Status::Ok, list(), ""),
        _ => check(
            "versions",
            Status::Warn,
            list(),
            "finish the upgrade: install the same release on every node, one at a time",
        ),
    }
}

/// Every group member's clock within [`MAX_CLOCK_OFFSET_MS`] of this one's (`nodes` as
/// `/v1/state` has them: name to report with `clock_offset_ms`).
fn clocks(nodes: &serde_json::Value) -> Check {
    let offsets: Vec<(&str, i64)> = nodes
        .as_object()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|(name, report)| {
                    Some((name.as_str(), report["clock_offset_ms"].as_i64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let far: Vec<String> = offsets
        .iter()
        .filter(|(_, offset)| offset.abs() > MAX_CLOCK_OFFSET_MS)
        .map(|(name, offset)| format!("{name} {:+.1} s", *offset as f64 / 1000.0))
        .collect();
    match far.as_slice() {
        [] => check(
            "clock",
            Status::Ok,
            format!("{} clocks within 1 s of this one", offsets.len()),
            "",
        ),
        _ => check(
            "clock",
            Status::Warn,
            format!("off from this node's clock: {}", far.join(", ")),
            "run an NTP client on every node (apt-get install chrony)",
        ),
    }
}

/// The Raft RPC port of every other member that is alive, reached from here.
fn ports(rows: &[MemberRow], me: &str) -> Vec<Check> {
    rows.iter()
        .filter(|m| m.state == MemberState::Alive && m.name != me)
        .filter_map(|m| m.rpc_addr.map(|addr| (m, addr)))
        .map(|(m, addr)| port(&m.name, addr))
        .collect()
}

/// Every member that is up answers the zone's SOA over UDP, at its address and this node's
/// DNS port (the port is not gossiped; clusters use one port, 53 in production).
fn dns_answers(rows: &[MemberRow], port: u16, zone: &str) -> Vec<Check> {
    rows.iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| {
            let addr = SocketAddr::new(m.address, port);
            let name = format!("dns {}", m.name);
            match soa_over_udp(addr, zone, CONNECT_TIMEOUT) {
                Ok(()) => check(&name, Status::Ok, format!("{addr} answers {zone} SOA"), ""),
                Err(error) => check(
                    &name,
                    Status::Fail,
                    format!("{addr}: {error}"),
                    &format!("open UDP and TCP {port} to the servers, and check that their agents listen there (dns_addr)"),
                ),
            }
        })
        .collect()
}

fn port(member: &str, addr: SocketAddr) -> Check {
    let name = format!("rpc {member}");
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(_) => check(&name, Status::Ok, format!("TCP {addr} reachable"), ""),
        Err(error) => check(
            &name,
            Status::Fail,
            format!("TCP {addr} (Raft RPC): {error}"),
            &format!("open TCP {} between the servers", addr.port()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_agent::reach::{answer_ok, soa_query};

    #[test]
    fn little_free_space_fails_and_enough_passes() {
        let dir = Path::new("/d");
        assert_eq!(space(dir, 512 << 20, 100 << 30).status, Status::Fail);
        assert_eq!(space(dir, 2 << 30, 100 << 30).status, Status::Fail);
        assert_eq!(space(dir, 20 << 30, 100 << 30).status, Status::Ok);
        assert!(
            space(dir, 20 << 30, 100 << 30)
                .detail
                .contains("20.0 GiB free")
        );
    }

    fn row(name: &str, version: Option<&str>) -> MemberRow {
        MemberRow {
            name: name.into(),
            address: [192, 0, 2, 1].into(),
            gossip_addr: "192.0.2.1:7946".parse().unwrap(),
            state: MemberState::Alive,
            roles: vec![Role::Server],
            tags: version
                .map(|v| (hearth_agent::VERSION_TAG.to_owned(), v.to_owned()))
                .into_iter()
                .collect(),
            rpc_addr: None,
        }
    }

    #[test]
    fn mixed_releases_are_named_and_warned_about() {
        let same = [row("n1", Some("0.2.0")), row("n2", Some("0.2.0"))];
        assert_eq!(versions(&same).status, Status::Ok);
        let mixed = [
            row("n1", Some("0.2.0")),
            row("n2", Some("0.1.0")),
            row("n3", None),
        ];
        let check = versions(&mixed);
        assert_eq!(check.status, Status::Warn);
        assert_eq!(check.detail, "0.1.0: n2; 0.2.0: n1; unknown: n3");
        let mut gone = row("n2", Some("0.1.0"));
        gone.state = MemberState::Left;
        assert_eq!(
            versions(&[row("n1", Some("0.2.0")), gone]).status,
            Status::Ok
        );
    }

    #[test]
    fn the_soa_question_is_well_formed_and_only_an_authoritative_answer_passes() {
        let query = soa_query(0x1234, "coop.example.");
        assert_eq!(&query[..4], &[0x12, 0x34, 0, 0]);
        assert_eq!(&query[12..], b"\x04coop\x07example\x00\x00\x06\x00\x01");
        let answer = |flags: u8, rcode: u8, count: u8| {
            let mut reply = query.clone();
            reply[2] = flags;
            reply[3] = rcode;
            reply[7] = count;
            reply
        };
        assert!(answer_ok(0x1234, &answer(0x84, 0, 1)).is_ok());
        assert!(
            answer_ok(0x1234, &answer(0x80, 0, 1)).is_err(),
            "not authoritative"
        );
        assert!(answer_ok(0x1234, &answer(0x84, 3, 0)).is_err(), "NXDOMAIN");
        assert!(
            answer_ok(0x9999, &answer(0x84, 0, 1)).is_err(),
            "another id"
        );
        assert!(
            answer_ok(0x1234, &query).is_err(),
            "a question, not an answer"
        );
    }

    #[test]
    fn a_clock_more_than_a_second_off_is_named() {
        let close = serde_json::json!({
            "n1": {"clock_offset_ms": 0},
            "n2": {"clock_offset_ms": -400},
            "n3": {"error": "timed out"},
        });
        assert_eq!(clocks(&close).status, Status::Ok);
        assert!(clocks(&close).detail.starts_with("2 clocks"));
        let far =
            serde_json::json!({"n1": {"clock_offset_ms": 0}, "n2": {"clock_offset_ms": 3200}});
        let check = clocks(&far);
        assert_eq!(check.status, Status::Warn);
        assert!(check.detail.contains("n2 +3.2 s"), "{check:?}");
    }

    #[test]
    fn a_missing_bridge_fails_with_the_command_that_makes_it() {
        let sys = hearth_testkit::TempDir::new("doctor");
        std::fs::create_dir_all(sys.path().join("br0/bridge")).unwrap();
        std::fs::create_dir_all(sys.path().join("eth0")).unwrap();
        assert_eq!(bridge_present(sys.path(), "br0").status, Status::Ok);
        let eth = bridge_present(sys.path(), "eth0");
        assert_eq!(eth.status, Status::Fail);
        assert!(eth.fix.contains("ip link add eth0 type bridge"), "{eth:?}");
    }
}
