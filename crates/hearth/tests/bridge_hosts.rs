//! Two workers, each in a network namespace with its own VM bridge, joined through a hub (the
//! co-op's uplink and router) by veth "uplinks", with real QEMU: two members' VMs on different
//! workers reach each other and the gateway over IPv4, IPv6 on the link's /64, and each one's
//! routed /64, as the guests themselves report (they ping on their own and say so on the
//! console), from the pools the README's bridged section adds, run as written there; their
//! names answer AAAA. A third guest that takes its neighbour's addresses does not get them: the hub
//! still finds the owner behind each, and the attempts are counted. The bandwidth limits of
//! one VM hold in both directions while a VM without limits goes much faster. Rules removed
//! by hand come back as drift; deleted VMs leave no tap and no rule.

use std::path::Path;
use std::process::Command;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::vms::{BOOT, console, create_with as create, wait_phase};
use hearth_testkit::{TempDir, TestAgent, eventually, lab_spec, random_secret};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// `ip -n NS ARGS`, panicking with its error.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `CMD ARGS` run in namespace `ns`: its status and output.
fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Sends to, or takes from, guests over TCP in the hub for a while, and prints the steady
/// rate (bytes per second after a 2-second warm-up) per guest address as JSON.
const TRAFFIC: &str = r#"
import json, socket, sys, threading, time
mode, seconds = sys.argv[1], float(sys.argv[2])
counts, lock = {}, threading.Lock()
def pump(conn, key, sending):
    chunk = bytes(65536)
    try:
        while True:
            n = conn.send(chunk) if sending else len(conn.recv(65536))
            if n == 0:
                return
            with lock:
                counts[key] = counts.get(key, 0) + n
    except OSError:
        return
if mode == "receive":
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", int(sys.argv[3])))
    server.listen(8)
    def accept():
        while True:
            conn, peer = server.accept()
            threading.Thread(target=pump, args=(conn, peer[0], False), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
else:
    for target in sys.argv[3:]:
        host, port = target.rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.settimeout(None)
        threading.Thread(target=pump, args=(conn, host, True), daemon=True).start()
time.sleep(2)
with lock:
    before = dict(counts)
time.sleep(seconds)
with lock:
    after = dict(counts)
print(json.dumps({k: (after[k] - before.get(k, 0)) / seconds for k in after}))
"#;

fn rates(hub: &str, args: &[&str]) -> Value {
    let mut command = vec!["python3", "-c", TRAFFIC];
    command.extend_from_slice(args);
    let (ok, text) = in_ns(hub, &command);
    assert!(ok, "traffic: {text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Adds the test guest as image `name` with `extra` on the kernel command line.
fn guest_image(agent: &TestAgent, name: &str, extra: &str) {
    let guest = hearth_testkit::test_guest();
    let mut args =
        hearth_testkit::test_guest_image_args(&guest, name, &guest.join("base.qcow2"), "qcow2");
    if let Some(append) = args.last_mut() {
        append.push_str(&format!(" {extra}"));
    }
    agent.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The index of the worker `row` (a VM's row) is placed on (nodes are named n1, n2).
fn worker(row: &Value) -> usize {
    let host = row["host"].as_str().unwrap();
    host.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

/// The agent of the worker `row` is placed on.
fn host_of<'a>(agents: &'a [TestAgent], row: &Value) -> &'a TestAgent {
    &agents[worker(row)]
}

/// A counter of `vm` in `/metrics` of `agent`.
fn metric(agent: &TestAgent, family: &str, vm: &str) -> Option<u64> {
    let (_, text) = agent.http_get("/metrics", false).ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(&format!("vm=\"{vm}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Low enough that an unlimited TCG guest on a loaded two-core machine still moves three
/// times as much (one CI run saw a free guest at 514 kB/s).
const LIMIT: u64 = 100_000;

/// The `hearth pool add` lines of the README's bridged section.
fn readme_pool_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("### Bridged VMs")
        .nth(1)
        .expect("README: ### Bridged VMs")
        .split("\n### ")
        .next()
        .unwrap();
    let lines: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("hearth pool add "))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "README: three pools in the bridged section");
    lines
}

#[test]
fn vms_on_two_workers_reach_each_other_and_keep_their_addresses_and_limits() {
    let lab = NetnsLab::new(2).expect("network namespaces (run as root)");
    let hub = lab.hub_netns();
    for idx in 0..2 {
        let ns = lab.netns(idx);
        ip_in(&ns, &["link", "add", "vmbr", "type", "bridge"]);
        ip_in(&ns, &["link", "set", "vmbr", "up"]);
        lab.uplink(idx, "vmbr", "vmnet").unwrap();
    }
    // The hub is the co-op's router: the gateways, and the /48 of routed networks on the link.
    ip_in(&hub, &["addr", "add", "203.0.113.1/24", "dev", "vmnet"]);
    ip_in(
        &hub,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:100::1/64",
            "dev",
            "vmnet",
            "nodad",
        ],
    );
    ip_in(
        &hub,
        &["-6", "route", "add", "2001:db8:100::/48", "dev", "vmnet"],
    );
    in_ns(&hub, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    let secret = random_secret();
    let roots = [TempDir::new("bridge-a"), TempDir::new("bridge-b")];
    let extra = "[state]\nbootstrap_expect = 1\n[compute]\nnetwork = \"bridge:vmbr\"\nvcpus = 4\nmemory_mib = 2048\ndisk_gib = 10\n";
    let agents: Vec<TestAgent> = (0..2)
        .map(|idx| {
            let roles = if idx == 0 {
                "[\"server\", \"worker\"]"
            } else {
                "[\"worker\"]"
            };
            let spec = lab_spec(&lab, idx, &secret, "bridges", roles, extra);
            TestAgent::start(bin(), roots[idx].path(), spec)
        })
        .collect();
    let admin = &agents[0];
    eventually("both workers registered", BOOT, || {
        match admin.host_count()? {
            2 => Ok(()),
            n => Err(format!("{n} hosts")),
        }
    });
    admin.add_test_guest(&hearth_testkit::test_guest());
    // The README's pools for a co-op with a public /24 and a /48, as written there.
    for line in readme_pool_commands() {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        admin.cli(&args);
    }
    // Addresses are given lowest first, so each guest knows its neighbour's in advance.
    let (a4, a6, a64) = ("203.0.113.10", "2001:db8:100::10", "2001:db8:100:1::1");
    let (b4, b6, b64) = ("203.0.113.11", "2001:db8:100::11", "2001:db8:100:2::1");
    let sink = "hearth.sink=5002 hearth.source=203.0.113.1:5001";
    guest_image(
        admin,
        "guest-a",
        &format!("hearth.ping={b4},{b6},{b64},203.0.113.1,2001:db8:100::1 {sink}"),
    );
    guest_image(
        admin,
        "guest-b",
        &format!("hearth.ping={a4},{a6},{a64},203.0.113.1,2001:db8:100::1 {sink}"),
    );
    let pools = ["--pool", "public", "--pool", "public6", "--pool", "routed6"];
    let limits = [
        "--net-in-bytes-per-sec",
        &LIMIT.to_string(),
        "--net-out-bytes-per-sec",
        &LIMIT.to_string(),
    ]
    .map(str::to_owned);
    let mut a_args: Vec<&str> = pools.to_vec();
    a_args.extend(limits.iter().map(String::as_str));
    create(admin, "vma", "guest-a", &a_args);
    let a = wait_phase(admin, "vma", "running");
    create(admin, "vmb", "guest-b", &pools);
    // Two members' VMs: vmb is bob's.
    admin.ensure_account("bob");
    admin.cli(&["vm", "reassign", "vmb", "--owner", "bob"]);
    let b = wait_phase(admin, "vmb", "running");
    assert_eq!(b["owner"], "bob", "{b}");
    assert_ne!(a["host"], b["host"], "the two VMs share a worker");
    let addresses = |row: &Value| -> Vec<String> {
        row["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(addresses(&a), [a4, a6, a64]);
    assert_eq!(addresses(&b), [b4, b6, b64]);
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // Each guest reaches the other on all three addresses, and both gateways.
    for (id, row, targets) in [(a_id, &a, [b4, b6, b64]), (b_id, &b, [a4, a6, a64])] {
        let host = host_of(&agents, row);
        for target in targets.iter().chain(&["203.0.113.1", "2001:db8:100::1"]) {
            eventually(&format!("{id} reaches {target}"), BOOT, || {
                let text = console(host, id);
                match text.contains(&format!("HEARTH-GUEST-PING ip={target} ok=1")) {
                    true => Ok(()),
                    false => Err(text
                        .lines()
                        .filter(|l| l.contains("PING") || l.contains("ADDRESSES"))
                        .collect::<Vec<_>>()
                        .join("\n")),
                }
            });
        }
    }
    // The router reaches each routed network's first address.
    for target in [a64, b64] {
        eventually(&format!("the hub reaches {target}"), BOOT, || {
            match in_ns(&hub, &["ping", "-c", "1", "-W", "1", target]) {
                (true, _) => Ok(()),
                (false, text) => Err(text),
            }
        });
    }

    // Its name answers AAAA with both of its IPv6 addresses, through a real resolver client.
    let dns = admin.dns_addr();
    eventually("vma's name answers AAAA", BOOT, || {
        let (_, text) = in_ns(
            &lab.netns(0),
            &[
                "dig",
                "+short",
                "-p",
                &dns.port().to_string(),
                &format!("@{}", dns.ip()),
                &format!("vma.vm.{}", hearth_testkit::ZONE),
                "AAAA",
            ],
        );
        let mut answers: Vec<&str> = text.lines().collect();
        answers.sort();
        let mut expected = [a6, a64];
        expected.sort();
        match answers == expected {
            true => Ok(()),
            false => Err(text.clone()),
        }
    });
    a_neighbour_keeps_its_addresses(&lab, admin, &agents, &a);
    limits_hold(&hub, &a, &b);
    altered_rules_come_back(&lab, admin, &a);
    a_stolen_mac_gets_nothing_through(&lab, admin, &agents, &a);
    limits_change_on_the_running_vm(&lab, admin, &b);
    moved_live_it_keeps_its_addresses(&lab, admin, &b, &a);

    // Deleted, the VMs leave no tap and no rule on either worker.
    for name in ["vma", "vmb", "sneaky", "mimic"] {
        admin.cli(&["vm", "delete", name]);
    }
    for idx in 0..2 {
        let ns = lab.netns(idx);
        eventually(&format!("no taps on n{}", idx + 1), BOOT, || {
            let links = ip_in(&ns, &["-o", "link", "show", "master", "vmbr"]);
            let chains = in_ns(&ns, &["nft", "list", "table", "bridge", "hearth"]).1;
            let taps: Vec<&str> = links.lines().filter(|l| !l.contains("@")).collect();
            match (taps.is_empty(), chains.contains("chain hvm-")) {
                (true, false) => Ok(()),
                _ => Err(format!("{links}\n{chains}")),
            }
        });
    }
}

/// Waits until the guest `row` is on has said it is ready.
fn wait_ready(agents: &[TestAgent], row: &Value) {
    let (host, id) = (host_of(agents, row), row["id"].as_str().unwrap());
    eventually(&format!("{id} booted"), BOOT, || {
        match console(host, id).contains("HEARTH-GUEST-READY") {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
}

/// `hub` pings `address` once: whether it answered.
fn pings(hub: &str, address: &str) -> Result<(), String> {
    match in_ns(hub, &["ping", "-c", "1", "-W", "1", address]) {
        (true, _) => Ok(()),
        (false, text) => Err(text),
    }
}

/// A guest that takes `vma`'s MAC is heard on nothing, not even its own address, and every
/// frame it sends is counted.
fn a_stolen_mac_gets_nothing_through(
    lab: &NetnsLab,
    admin: &TestAgent,
    agents: &[TestAgent],
    a: &Value,
) {
    let a_mac = hearth_qemu::driver::mac_for(a["id"].as_str().unwrap());
    guest_image(admin, "mimic-image", &format!("hearth.mac={a_mac}"));
    create(admin, "mimic", "mimic-image", &["--pool", "public"]);
    let mimic = wait_phase(admin, "mimic", "running");
    wait_ready(agents, &mimic);
    let own = mimic["ips"][0]["address"].as_str().unwrap().to_owned();
    let hub = lab.hub_netns();
    for _ in 0..3 {
        assert!(
            pings(&hub, &own).is_err(),
            "a guest with another's MAC answered"
        );
    }
    eventually("the mimic's frames counted", BOOT, || {
        match metric(
            host_of(agents, &mimic),
            "hearth_vm_spoofed_frames_total",
            "mimic",
        ) {
            Some(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Its namesake is unharmed.
    pings(&hub, a["ips"][0]["address"].as_str().unwrap()).unwrap();
}

/// `hearth vm limits` shapes the running `vmb` at once, and lifts it again.
fn limits_change_on_the_running_vm(lab: &NetnsLab, admin: &TestAgent, b: &Value) {
    let ns = lab.netns(worker(b));
    let tap = format!("h{}", b["id"].as_str().unwrap());
    let tbf = |ns: &str| {
        let (_, text) = in_ns(ns, &["tc", "qdisc", "show", "dev", &tap]);
        text
    };
    admin.cli(&["vm", "limits", "vmb", "--net-in-bytes-per-sec", "300000"]);
    eventually("vmb shaped", BOOT, || {
        let text = tbf(&ns);
        match text.contains("tbf") && text.contains("2400Kbit") {
            true => Ok(()),
            false => Err(text),
        }
    });
    admin.cli(&["vm", "limits", "vmb"]);
    eventually("vmb unshaped", BOOT, || {
        let text = tbf(&ns);
        match text.contains("tbf") {
            false => Ok(()),
            true => Err(text),
        }
    });
}

/// `vmb` moved live to `vma`'s worker: its tap and rules go with it, nothing of it stays on
/// its old worker, and the router still reaches it on every address.
fn moved_live_it_keeps_its_addresses(lab: &NetnsLab, admin: &TestAgent, b: &Value, a: &Value) {
    let (from, to) = (worker(b), worker(a));
    admin.cli(&["vm", "migrate", "vmb", "--to", a["host"].as_str().unwrap()]);
    let moved = wait_phase(admin, "vmb", "running");
    assert_eq!(moved["host"], a["host"], "{moved}");
    let tap = format!("h{}", b["id"].as_str().unwrap());
    eventually("vmb's tap gone from its old worker", BOOT, || {
        let links = ip_in(&lab.netns(from), &["-o", "link", "show"]);
        match links.contains(&format!(" {tap}:")) {
            false => Ok(()),
            true => Err(links),
        }
    });
    let chain = in_ns(
        &lab.netns(to),
        &["nft", "list", "chain", "bridge", "hearth", &tap],
    )
    .1;
    assert!(chain.contains("ip saddr 203.0.113.11 accept"), "{chain}");
    let hub = lab.hub_netns();
    for ip in b["ips"].as_array().unwrap() {
        let address = ip["address"].as_str().unwrap();
        eventually(
            &format!("the hub reaches moved vmb at {address}"),
            BOOT,
            || pings(&hub, address),
        );
    }
}

/// A guest that also takes `vma`'s addresses: the router, asking who holds each, still finds
/// `vma`'s MAC every time, and the tries are counted.
fn a_neighbour_keeps_its_addresses(
    lab: &NetnsLab,
    admin: &TestAgent,
    agents: &[TestAgent],
    a: &Value,
) {
    let hub = lab.hub_netns();
    guest_image(
        admin,
        "spoofer",
        "hearth.extra_ip=203.0.113.10/24,2001:db8:100::10/64",
    );
    create(
        admin,
        "sneaky",
        "spoofer",
        &["--pool", "public", "--pool", "public6"],
    );
    let sneaky = wait_phase(admin, "sneaky", "running");
    let host = host_of(agents, &sneaky);
    let a_mac = hearth_qemu::driver::mac_for(a["id"].as_str().unwrap());
    eventually("the spoofer booted", BOOT, || {
        match console(host, sneaky["id"].as_str().unwrap()).contains("HEARTH-GUEST-READY") {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    for round in 0..3 {
        for address in ["203.0.113.10", "2001:db8:100::10"] {
            in_ns(&hub, &["ip", "neigh", "flush", "dev", "vmnet"]);
            eventually(
                &format!("round {round}: the hub finds {address}"),
                BOOT,
                || {
                    let (ok, text) = in_ns(&hub, &["ping", "-c", "1", "-W", "1", address]);
                    match ok {
                        true => Ok(()),
                        false => Err(text),
                    }
                },
            );
            let neigh = ip_in(&hub, &["neigh", "show", "to", address, "dev", "vmnet"]);
            assert!(
                neigh.contains(&a_mac),
                "round {round}: {address} is at {neigh}, not {a_mac}"
            );
        }
    }
    eventually("the spoofer's tries counted", BOOT, || {
        match metric(host, "hearth_vm_spoofed_frames_total", "sneaky") {
            Some(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// `vma` is limited to LIMIT bytes/s each way; `vmb` is not, and goes at least three times
/// as fast, so the measurement can tell.
fn limits_hold(hub: &str, a: &Value, b: &Value) {
    let (a4, b4) = (
        a["ips"][0]["address"].as_str().unwrap(),
        b["ips"][0]["address"].as_str().unwrap(),
    );
    // Out of the guests: each sends to the hub, reconnecting once a second.
    let out = rates(hub, &["receive", "4", "5001"]);
    limited_and_free(&out, a4, b4, "out of the guests");
    // Into the guests.
    let into = rates(
        hub,
        &["send", "4", &format!("{a4}:5002"), &format!("{b4}:5002")],
    );
    limited_and_free(&into, a4, b4, "into the guests");
}

/// In `rates` (bytes/s by guest address), the limited guest at `limited` stays within
/// LIMIT (and moves something), and the free one at `free` goes at least three times as fast.
fn limited_and_free(rates: &Value, limited: &str, free: &str, way: &str) {
    eprintln!("{way}, bytes/s: {rates}");
    let rate = |ip: &str| rates[ip].as_f64().unwrap_or(0.0);
    let (slow, fast) = (rate(limited), rate(free));
    assert!(
        slow > 0.0 && slow <= LIMIT as f64 * 1.2,
        "{way}: the limited VM moved {slow} B/s: {rates}"
    );
    assert!(
        fast >= LIMIT as f64 * 3.0,
        "{way}: the free VM moved only {fast} B/s: {rates}"
    );
}

/// Someone on `vma`'s host flushes its tap's chain: the rules come back, and the repair is
/// listed as drift until acknowledged.
fn altered_rules_come_back(lab: &NetnsLab, admin: &TestAgent, a: &Value) {
    let ns = lab.netns(worker(a));
    let tap = format!("h{}", a["id"].as_str().unwrap());
    let (ok, text) = in_ns(&ns, &["nft", "flush", "chain", "bridge", "hearth", &tap]);
    assert!(ok, "{text}");
    eventually("the rules are back", BOOT, || {
        let (_, chain) = in_ns(&ns, &["nft", "list", "chain", "bridge", "hearth", &tap]);
        match chain.contains("ip saddr 203.0.113.10 accept") {
            true => Ok(()),
            false => Err(chain),
        }
    });
    let drift = eventually("the repair listed as drift", BOOT, || {
        let entries = admin.api_json("/v1/drift")?;
        entries
            .as_array()
            .and_then(|list| list.iter().find(|d| d["kind"] == "guard-altered").cloned())
            .ok_or_else(|| entries.to_string())
    });
    assert_eq!(drift["vm"], a["id"]);
    let id = drift["id"].as_str().unwrap().to_owned();
    admin.cli(&["fix", &id]);
    eventually("the drift acknowledged", BOOT, || {
        let entries = admin.api_json("/v1/drift")?;
        match entries
            .as_array()
            .is_some_and(|l| l.iter().all(|d| d["kind"] != "guard-altered"))
        {
            true => Ok(()),
            false => Err(entries.to_string()),
        }
    });
}
