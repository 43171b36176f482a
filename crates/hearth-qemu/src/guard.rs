//! Anti-spoofing for a bridged VM, as libvirt's `clean-traffic` filter does: bridge-family
//! nftables rules on frames entering the bridge from the VM's tap let through only its own
//! MAC, its own IPv4 and IPv6 addresses (and IPv6 link-local, and the unspecified address
//! of DHCP and duplicate address detection), ARP only for its own addresses, and never a
//! DHCP server's or a router advertisement's packets. Everything else is counted and dropped.
//! One table (`bridge hearth`) holds a chain per tap, reached through a verdict map, so the
//! rules of one VM are replaced or removed without touching the others'.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

const TABLE: &str = "bridge hearth";

/// The table, its map of taps and the base chain that looks each frame's port up in it.
fn base() -> String {
    format!(
        "add table {TABLE}\n\
         add map {TABLE} taps {{ type ifname : verdict ; }}\n\
         add chain {TABLE} prerouting {{ type filter hook prerouting priority -200 ; policy accept ; }}\n\
         add rule {TABLE} prerouting iifname vmap @taps\n"
    )
}

/// The script that (re)loads `tap`'s chain for a guest with `mac` and `addresses`.
pub fn rules(tap: &str, mac: &str, addresses: &[IpAddr]) -> String {
    let set = |v4: bool| {
        let list: Vec<String> = addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect();
        (!list.is_empty()).then(|| format!("{{ {} }}", list.join(", ")))
    };
    let chain = format!("{TABLE} {tap}");
    let mut script = format!("add chain {chain}\nflush chain {chain}\n");
    let mut rule = |text: &str| script.push_str(&format!("add rule {chain} {text}\n"));
    rule(&format!("ether saddr != {mac} counter drop"));
    match set(true) {
        Some(v4) => {
            rule(&format!(
                "ether type arp arp saddr ether {mac} arp saddr ip {{ 0.0.0.0 }} accept"
            ));
            rule(&format!(
                "ether type arp arp saddr ether {mac} arp saddr ip {v4} accept"
            ));
        }
        None => rule(&format!(
            "ether type arp arp saddr ether {mac} arp saddr ip {{ 0.0.0.0 }} accept"
        )),
    }
    rule("ether type arp counter drop");
    rule("udp sport 67 counter drop");
    rule("icmpv6 type nd-router-advert counter drop");
    rule("ip saddr 0.0.0.0 udp dport 67 accept");
    if let Some(v4) = set(true) {
        rule(&format!("ip saddr {v4} accept"));
    }
    rule("ip6 saddr { ::, fe80::/10 } accept");
    if let Some(v6) = set(false) {
        rule(&format!("ip6 saddr {v6} accept"));
    }
    rule("counter drop");
    script.push_str(&format!(
        "add element {TABLE} taps {{ \"{tap}\" : jump {tap} }}\n"
    ));
    script
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (apt-get install nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn listed(what: &str) -> Option<String> {
    let output = Command::new("nft")
        .args(["-j", "list"])
        .args(what.split(' '))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads `tap`'s rules (making the table first if it is not there), before its QEMU starts.
pub fn apply(tap: &str, mac: &str, addresses: &[IpAddr]) -> Result<(), String> {
    if listed(&format!("table {TABLE}")).is_none() {
        nft(&base())?;
    }
    nft(&rules(tap, mac, addresses))
}

/// Removes `tap`'s rules, if there are any.
pub fn remove(tap: &str) -> Result<(), String> {
    if listed(&format!("chain {TABLE} {tap}")).is_none() {
        return Ok(());
    }
    nft(&format!(
        "delete element {TABLE} taps {{ \"{tap}\" }}\ndelete chain {TABLE} {tap}\n"
    ))
}

/// The frames `tap`'s rules dropped; `None` without rules.
pub fn dropped(tap: &str) -> Option<u64> {
    let json: serde_json::Value =
        serde_json::from_str(&listed(&format!("chain {TABLE} {tap}"))?).ok()?;
    Some(counted(&json))
}

/// The packets of every counter in `nft -j` output.
fn counted(json: &serde_json::Value) -> u64 {
    match json {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(key, value)| match (key.as_str(), value) {
                ("counter", counter) => counter["packets"].as_u64().unwrap_or(0),
                _ => counted(value),
            })
            .sum(),
        serde_json::Value::Array(items) => items.iter().map(counted).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_may_send_only_as_itself() {
        let addresses: Vec<IpAddr> =
            vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        let script = rules("hvm-1", "52:54:00:aa:bb:cc", &addresses);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "add chain bridge hearth hvm-1");
        assert_eq!(lines[1], "flush chain bridge hearth hvm-1");
        assert_eq!(
            lines[2],
            "add rule bridge hearth hvm-1 ether saddr != 52:54:00:aa:bb:cc counter drop"
        );
        assert!(
            script.contains("arp saddr ip { 192.0.2.2 } accept"),
            "{script}"
        );
        assert!(script.contains("ip saddr { 192.0.2.2 } accept"), "{script}");
        assert!(
            script.contains("ip6 saddr { 2001:db8::2 } accept"),
            "{script}"
        );
        // No DHCP server and no router advertisements, before anything is accepted.
        let server = script.find("udp sport 67 counter drop").unwrap();
        let advert = script.find("nd-router-advert counter drop").unwrap();
        let first_ip_accept = script.find("ip saddr { 192.0.2.2 }").unwrap();
        assert!(server < first_ip_accept && advert < first_ip_accept);
        assert!(lines[lines.len() - 2].ends_with("counter drop"), "{script}");
        assert_eq!(
            lines[lines.len() - 1],
            "add element bridge hearth taps { \"hvm-1\" : jump hvm-1 }"
        );
        // With no IPv4 address, ARP may only probe.
        let none = rules("hvm-2", "52:54:00:aa:bb:cd", &[]);
        assert!(!none.contains("ip saddr {"), "{none}");
        assert!(none.contains("arp saddr ip { 0.0.0.0 } accept"), "{none}");
    }

    #[test]
    fn counters_are_summed_wherever_they_are() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
            {"rule": {"expr": [{"counter": {"packets": 4, "bytes": 240}}, {"drop": null}]}},
        ]});
        assert_eq!(counted(&json), 7);
    }
}
