//! A VM on a host bridge, with real QEMU in a network namespace: the agent makes the VM's
//! tap itself (no setuid helper), owned by its user, on the bridge and up; the guest's
//! address (from its seed) answers ping from the host side of the bridge; the bytes show in
//! `/metrics` and in the VM's load. A second guest that also takes an address not its own
//! is heard only on its own: the tap's rules drop the rest and count it. Deleting the VMs
//! removes their taps and rules.

use std::path::Path;
use std::process::Command;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::vms::{BOOT, create_from, create_tiny, wait_phase};
use hearth_testkit::{TempDir, TestAgent, eventually, lab_spec, random_secret};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

/// Whether `ip` answers one ping from namespace `ns`.
fn ping(ns: &str, ip: &str) -> Result<(), String> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
        .output()
        .map_err(|e| e.to_string())?;
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stdout).into_owned()),
    }
}

/// `ip -n NS ARGS`; its output, or why it failed.
fn ip_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[test]
fn a_bridged_vm_gets_its_own_tap_answers_on_the_bridge_and_leaves_no_tap() {
    let lab = NetnsLab::new(1).expect("network namespaces (run as root)");
    let ns = lab.netns(0);
    // The host's VM bridge, with the pool's gateway address on it.
    ip_in(&ns, &["link", "add", "vmbr", "type", "bridge"]).unwrap();
    ip_in(&ns, &["addr", "add", "192.0.2.1/24", "dev", "vmbr"]).unwrap();
    ip_in(&ns, &["link", "set", "vmbr", "up"]).unwrap();
    let root = TempDir::new("bridge");
    let extra = "[state]\nbootstrap_expect = 1\nuptime_interval = \"1s\"\n[compute]\nnetwork = \"bridge:vmbr\"\nvcpus = 2\nmemory_mib = 1024\ndisk_gib = 10\nstats_interval = \"200ms\"\n";
    let spec = lab_spec(
        &lab,
        0,
        &random_secret(),
        "bridge",
        "[\"server\", \"worker\"]",
        extra,
    );
    let agent = TestAgent::start(bin(), root.path(), spec);
    eventually("the worker registered", BOOT, || {
        match agent.host_count()? {
            1 => Ok(()),
            n => Err(format!("{n} hosts")),
        }
    });
    agent.add_test_guest(&hearth_testkit::test_guest());
    create_tiny(&agent, "web1", &[]);
    let row = wait_phase(&agent, "web1", "running");
    let id = row["id"].as_str().unwrap().to_owned();
    let tap = format!("h{id}");

    // The tap: on the bridge, up, and persistent under the agent's user (root here).
    let link = ip_in(&ns, &["-d", "link", "show", "dev", &tap]).unwrap();
    assert!(
        link.contains("master vmbr") && link.contains(",UP"),
        "{link}"
    );
    assert!(
        link.contains("tun type tap") && link.contains("persist on user root"),
        "{link}"
    );

    // The guest set its address from its seed; it answers on the bridge.
    eventually("the guest answers ping on the bridge", BOOT, || {
        ping(&ns, "192.0.2.2")
    });
    // Its bytes count, in /metrics and in its load.
    eventually("network bytes in /metrics", BOOT, || {
        let (_, text) = agent.http_get("/metrics", false)?;
        let sample = |direction: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("hearth_vm_network_bytes_total{")
                        && l.contains("vm=\"web1\"")
                        && l.contains(&format!("direction=\"{direction}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        match (sample("received"), sample("sent")) {
            (Some(rx), Some(tx)) if rx > 0 && tx > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eventually("network bytes in the VM's load", BOOT, || {
        let stats = agent.api_json("/v1/vms/web1/stats")?;
        let buckets = stats["day"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let received: u64 = buckets
            .iter()
            .filter_map(|b| b["net"]["rx_bytes"].as_u64())
            .sum();
        match received {
            0 => Err(stats.to_string()),
            _ => Ok(()),
        }
    });

    // doctor, run where the agent runs, finds the bridge and the tools a bridged worker needs.
    let doctor = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(bin())
        .args(["doctor", "--json", "--config"])
        .arg(agent.config_path())
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&doctor.stderr)));
    for name in ["bridge", "nftables", "iproute2"] {
        let found = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name);
        assert!(
            found.is_some_and(|c| c["status"] == "ok"),
            "{name}: {checks}"
        );
    }

    // A guest that also takes 192.0.2.99, an address not its own: heard on its own address
    // only. Its ARP answers for .99 and anything sent from .99 are dropped and counted.
    let guest = hearth_testkit::test_guest();
    let mut args = hearth_testkit::test_guest_image_args(
        &guest,
        "spoofer",
        &guest.join("base.qcow2"),
        "qcow2",
    );
    if let Some(append) = args.last_mut() {
        append.push_str(" hearth.extra_ip=192.0.2.99/24");
    }
    agent.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    create_from(&agent, "sneaky", "spoofer", &[]);
    let sneaky = wait_phase(&agent, "sneaky", "running");
    let own = sneaky["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(own, "192.0.2.3");
    eventually("the second guest answers on its own address", BOOT, || {
        ping(&ns, &own)
    });
    for _ in 0..3 {
        assert!(
            ping(&ns, "192.0.2.99").is_err(),
            "the spoofed address answered"
        );
    }
    eventually("the dropped frames counted", BOOT, || {
        let (_, text) = agent.http_get("/metrics", false)?;
        let dropped = text
            .lines()
            .find(|l| {
                l.starts_with("hearth_vm_spoofed_frames_total{") && l.contains("vm=\"sneaky\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        match dropped {
            Some(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let rules = Command::new("ip")
        .args([
            "netns", "exec", &ns, "nft", "list", "chain", "bridge", "hearth", &tap,
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(rules.contains("ip saddr 192.0.2.2 accept"), "{rules}");

    // Deleting the VMs removes their taps and rules with their files.
    agent.cli(&["vm", "delete", "web1"]);
    agent.cli(&["vm", "delete", "sneaky"]);
    for tap in [tap.clone(), format!("h{}", sneaky["id"].as_str().unwrap())] {
        eventually(&format!("{tap} gone"), BOOT, || {
            match ip_in(&ns, &["link", "show", "dev", &tap]) {
                Err(_) => Ok(()),
                Ok(link) => Err(link),
            }
        });
        let chain = Command::new("ip")
            .args([
                "netns", "exec", &ns, "nft", "list", "chain", "bridge", "hearth", &tap,
            ])
            .output()
            .unwrap();
        assert!(!chain.status.success(), "{tap}'s rules are left");
    }
}
