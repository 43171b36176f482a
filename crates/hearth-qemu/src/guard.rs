//! Anti-spoofing and bandwidth limits for a bridged VM, as libvirt's `clean-traffic` filter
//! does: bridge-family nftables rules on frames entering the bridge from the VM's tap let
//! through only its own MAC, its own IPv4 and IPv6 addresses and routed networks (and IPv6
//! link-local, and the unspecified address of DHCP and duplicate address detection), ARP and
//! neighbour advertisements only for its own addresses, and never a DHCP server's, a router
//! advertisement's or a redirect's packets. Everything else is counted and dropped. Above its
//! outbound limit frames are dropped too; its inbound limit is a token bucket (`tbf`) on the
//! tap. One table (`bridge hearth`) holds a chain per tap, reached through a verdict map, so
//! the rules of one VM are replaced or removed without touching the others'. What was
//! applied is kept beside the VM's disk (`guard.json`, and the listing it gave in
//! `guard.seen`), so each pass of the reconciler can see a rule or shaper missing or altered.

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

const TABLE: &str = "bridge hearth";
/// What was applied to a VM's tap, beside its disk.
const APPLIED: &str = "guard.json";
/// The listing of the tap's rules and shaper right after they were applied.
const SEEN: &str = "guard.seen";

/// The table, its map of taps and the base chain that looks each frame's port up in it.
fn base() -> String {
    format!(
        "add table {TABLE}\n\
         add map {TABLE} taps {{ type ifname : verdict ; }}\n\
         add chain {TABLE} prerouting {{ type filter hook prerouting priority -200 ; policy accept ; }}\n\
         add rule {TABLE} prerouting iifname vmap @taps\n"
    )
}

/// What a bridged VM's tap lets through, and how fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub tap: String,
    pub mac: String,
    /// Its addresses and routed networks, as (address, prefix length): a full-length prefix
    /// (32 or 128) is one address, a shorter one a network routed to the VM.
    pub allowed: Vec<(IpAddr, u8)>,
    /// Bytes per second into the guest (shaped) and out of it (dropped above).
    #[serde(default)]
    pub in_bytes_per_sec: Option<u64>,
    #[serde(default)]
    pub out_bytes_per_sec: Option<u64>,
}

/// The IPv6 link-local address a guest derives from `mac` (modified EUI-64), if it is one.
pub fn link_local(mac: &str) -> Option<Ipv6Addr> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b, c, d, e, f] = bytes[..] else {
        return None;
    };
    let eui = [a ^ 0x02, b, c, 0xff, 0xfe, d, e, f];
    let mut octets = [0u8; 16];
    octets[0] = 0xfe;
    octets[1] = 0x80;
    octets[8..].copy_from_slice(&eui);
    Some(Ipv6Addr::from(octets))
}

fn bits(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `address` as nft writes a set element: the address, or its network when `prefix` is short.
fn element(address: &IpAddr, prefix: u8) -> String {
    if prefix >= bits(address) {
        return address.to_string();
    }
    let network = match address {
        IpAddr::V4(v4) => {
            let n = u32::from(*v4) & (u32::MAX << (32 - prefix));
            IpAddr::V4(n.into())
        }
        IpAddr::V6(v6) => {
            let n = u128::from(*v6) & (u128::MAX << (128 - prefix));
            IpAddr::V6(n.into())
        }
    };
    format!("{network}/{prefix}")
}

impl Guard {
    /// The nft set of its allowed IPv4 (`v4`) or IPv6 sources, `None` when it has none.
    fn set(&self, v4: bool) -> Option<String> {
        let list: Vec<String> = self
            .allowed
            .iter()
            .filter(|(a, _)| a.is_ipv4() == v4)
            .map(|(a, p)| element(a, *p))
            .collect();
        (!list.is_empty()).then(|| format!("{{ {} }}", list.join(", ")))
    }

    /// The matches a neighbour advertisement's target must fail all of to be dropped: one
    /// per IPv6 address or network of its own, and its link-local address.
    fn foreign_targets(&self) -> String {
        let mut own: Vec<(u128, u8)> = self
            .allowed
            .iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V6(v6) => Some((u128::from(*v6), (*p).clamp(1, 128))),
                IpAddr::V4(_) => None,
            })
            .collect();
        own.extend(link_local(&self.mac).map(|ll| (u128::from(ll), 128)));
        // The target is the 16 bytes after the ICMPv6 header's first 8 (RFC 4861 4.4).
        own.iter()
            .map(|(n, p)| format!("@th,64,{p} != 0x{:x}", n >> (128 - u32::from(*p))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The script that (re)loads its tap's chain.
    pub fn rules(&self) -> String {
        let (tap, mac) = (&self.tap, &self.mac);
        let chain = format!("{TABLE} {tap}");
        let mut script = format!("add chain {chain}\nflush chain {chain}\n");
        let mut rule = |text: &str| script.push_str(&format!("add rule {chain} {text}\n"));
        rule(&format!("ether saddr != {mac} counter drop"));
        // QEMU's announcement after a live move (RARP from the VM's own MAC), so switches
        // learn where it is now.
        rule("ether type 0x8035 accept");
        rule(&format!(
            "ether type arp arp saddr ether {mac} arp saddr ip {{ 0.0.0.0 }} accept"
        ));
        if let Some(v4) = self.set(true) {
            rule(&format!(
                "ether type arp arp saddr ether {mac} arp saddr ip {v4} accept"
            ));
        }
        rule("ether type arp counter drop");
        rule("udp sport 67 counter drop");
        rule("icmpv6 type { nd-router-advert, nd-redirect } counter drop");
        rule(&format!(
            "icmpv6 type nd-neighbor-advert {} counter drop",
            self.foreign_targets()
        ));
        // Above its outbound limit, uncounted (the counters are the spoofed frames).
        if let Some(rate) = self.out_bytes_per_sec {
            rule(&format!(
                "limit rate over {rate} bytes/second burst {} bytes drop",
                burst(rate)
            ));
        }
        rule("ip saddr 0.0.0.0 udp dport 67 accept");
        if let Some(v4) = self.set(true) {
            rule(&format!("ip saddr {v4} accept"));
        }
        rule("ip6 saddr { ::, fe80::/10 } accept");
        if let Some(v6) = self.set(false) {
            rule(&format!("ip6 saddr {v6} accept"));
        }
        rule("counter drop");
        script.push_str(&format!(
            "add element {TABLE} taps {{ \"{tap}\" : jump {tap} }}\n"
        ));
        script
    }

    /// Loads its rules (making the table first if it is not there) and its shaper, then
    /// keeps what it applied and the listing that gave beside the VM's disk in `dir`.
    pub fn apply(&self, dir: &Path) -> Result<(), String> {
        if listed(&format!("table {TABLE}")).is_none() {
            nft(&base())?;
        }
        nft(&self.rules())?;
        shape(&self.tap, self.in_bytes_per_sec)?;
        let text = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let seen = Listing::take().of(&self.tap);
        for (name, content) in [(APPLIED, text), (SEEN, seen)] {
            crate::files::write_atomically(&dir.join(name), content.as_bytes())
                .map_err(|e| format!("{}: {e}", dir.join(name).display()))?;
        }
        Ok(())
    }

    /// What was last applied for the VM in `dir`.
    pub fn applied(dir: &Path) -> Option<Guard> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(APPLIED)).ok()?).ok()
    }
}

/// The token bucket's depth for `rate` bytes per second: 40 ms of it, at least 16 KiB (ten
/// full frames), so a slow limit still passes whole frames.
fn burst(rate: u64) -> u64 {
    (rate / 25).max(16 * 1024)
}

/// Puts a token bucket of `rate` bytes per second on `tap`'s way to the guest, or takes it
/// away with no rate.
fn shape(tap: &str, rate: Option<u64>) -> Result<(), String> {
    let Some(rate) = rate else {
        // Nothing to delete is fine: the default queue stays.
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", tap, "root"])
            .output();
        return Ok(());
    };
    let (rate, burst) = (format!("{rate}bps"), burst(rate).to_string());
    let args = [
        "qdisc", "replace", "dev", tap, "root", "tbf", "rate", &rate, "burst", &burst, "latency",
        "50ms",
    ];
    crate::tap::run_tool("tc", &args)
}

/// The whole table and every queue, read once per pass of the reconciler.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    table: String,
    qdiscs: String,
}

impl Listing {
    pub fn take() -> Listing {
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        Listing {
            table: run("nft", &["-s", "list", "table", "bridge", "hearth"]),
            qdiscs: run("tc", &["qdisc", "show"]),
        }
    }

    /// What holds `tap`'s traffic: its chain, whether the base chain and the map send its
    /// frames there, and its root queue (without handles and reference counts).
    pub fn of(&self, tap: &str) -> String {
        of(&self.table, &self.qdiscs, tap)
    }

    /// Whether the rules and shaper of the VM in `dir` are as they were applied. A VM with
    /// nothing applied has lost them too.
    pub fn intact(&self, dir: &Path) -> bool {
        let (Some(guard), Ok(seen)) =
            (Guard::applied(dir), std::fs::read_to_string(dir.join(SEEN)))
        else {
            return false;
        };
        self.of(&guard.tap) == seen
    }
}

fn of(table: &str, qdiscs: &str, tap: &str) -> String {
    let block = |head: &str| -> String {
        let mut lines = table.lines().skip_while(|l| l.trim() != head);
        let mut out = String::new();
        for line in lines.by_ref() {
            out.push_str(line.trim());
            out.push('\n');
            if line.trim() == "}" {
                break;
            }
        }
        out
    };
    let chain = block(&format!("chain {tap} {{"));
    let routed = block("chain prerouting {").contains("iifname vmap @taps")
        && block("map taps {").contains(&format!("\"{tap}\" : jump {tap}"));
    let queue = qdiscs
        .lines()
        .find(|l| l.contains(&format!(" dev {tap} root ")))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let mut kept = vec![words.get(1).copied().unwrap_or("")];
            let mut rest = words.iter().skip_while(|w| **w != "root").skip(1);
            while let Some(word) = rest.next() {
                match *word {
                    "refcnt" => {
                        rest.next();
                    }
                    other => kept.push(other),
                }
            }
            kept.join(" ")
        })
        .unwrap_or_default();
    format!("{chain}routed {routed}\nqueue {queue}\n")
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

    fn guard(allowed: &[(&str, u8)]) -> Guard {
        Guard {
            tap: "hvm-1".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            allowed: allowed
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
            in_bytes_per_sec: None,
            out_bytes_per_sec: None,
        }
    }

    #[test]
    fn a_guest_may_send_only_as_itself() {
        let script = guard(&[("192.0.2.2", 32), ("2001:db8::2", 128)]).rules();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "add chain bridge hearth hvm-1");
        assert_eq!(lines[1], "flush chain bridge hearth hvm-1");
        assert_eq!(
            lines[2],
            "add rule bridge hearth hvm-1 ether saddr != 52:54:00:aa:bb:cc counter drop"
        );
        assert_eq!(
            lines[3],
            "add rule bridge hearth hvm-1 ether type 0x8035 accept"
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
        // Neighbour advertisements only for its own address and its own link-local one.
        assert!(
            script.contains(
                "icmpv6 type nd-neighbor-advert @th,64,128 != 0x20010db8000000000000000000000002 @th,64,128 != 0xfe80000000000000505400fffeaabbcc counter drop"
            ),
            "{script}"
        );
        // No DHCP server, router advertisements or redirects, before anything is accepted.
        let server = script.find("udp sport 67 counter drop").unwrap();
        let advert = script.find("nd-router-advert, nd-redirect").unwrap();
        let first_ip_accept = script.find("ip saddr { 192.0.2.2 }").unwrap();
        assert!(server < first_ip_accept && advert < first_ip_accept);
        assert!(lines[lines.len() - 2].ends_with("counter drop"), "{script}");
        assert_eq!(
            lines[lines.len() - 1],
            "add element bridge hearth taps { \"hvm-1\" : jump hvm-1 }"
        );
        assert!(!script.contains("limit rate"), "{script}");
        // With no IPv4 address, ARP may only probe.
        let none = guard(&[]).rules();
        assert!(!none.contains("ip saddr {"), "{none}");
        assert!(none.contains("arp saddr ip { 0.0.0.0 } accept"), "{none}");
    }

    #[test]
    fn a_routed_network_is_the_guests_to_send_from_and_advertise() {
        let script = guard(&[("2001:db8:0:5::1", 64)]).rules();
        assert!(
            script.contains("ip6 saddr { 2001:db8:0:5::/64 } accept"),
            "{script}"
        );
        assert!(
            script.contains("@th,64,64 != 0x20010db800000005 "),
            "{script}"
        );
    }

    #[test]
    fn the_outbound_limit_drops_uncounted_before_any_accept() {
        let mut limited = guard(&[("192.0.2.2", 32)]);
        limited.out_bytes_per_sec = Some(125_000);
        let script = limited.rules();
        let limit = script
            .find("limit rate over 125000 bytes/second burst 16384 bytes drop\n")
            .unwrap();
        assert!(limit < script.find("ip saddr { 192.0.2.2 } accept").unwrap());
        assert_eq!(burst(10_000_000), 400_000);
    }

    #[test]
    fn link_local_is_the_modified_eui64_of_the_mac() {
        assert_eq!(
            link_local("52:54:00:aa:bb:cc").unwrap().to_string(),
            "fe80::5054:ff:feaa:bbcc"
        );
        assert_eq!(link_local("not a mac"), None);
    }

    #[test]
    fn a_listing_shows_one_taps_chain_map_entry_and_queue() {
        let table = "table bridge hearth {\n\tmap taps {\n\t\ttype ifname : verdict\n\t\telements = { \"hvm-1\" : jump hvm-1,\n\t\t\t     \"hvm-2\" : jump hvm-2 }\n\t}\n\n\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n\t\tiifname vmap @taps\n\t}\n\n\tchain hvm-1 {\n\t\tether saddr != 52:54:00:aa:bb:cc counter drop\n\t}\n\n\tchain hvm-2 {\n\t\tcounter drop\n\t}\n}\n";
        let qdiscs = "qdisc tbf 8001: dev hvm-1 root refcnt 2 rate 1Mbit burst 16Kb lat 50ms\nqdisc pfifo_fast 0: dev hvm-2 root refcnt 2 bands 3\n";
        let one = of(table, qdiscs, "hvm-1");
        assert_eq!(
            one,
            "chain hvm-1 {\nether saddr != 52:54:00:aa:bb:cc counter drop\n}\nrouted true\nqueue tbf rate 1Mbit burst 16Kb lat 50ms\n"
        );
        // A rule gone, the map entry gone, or another queue: each changes the listing.
        let altered = table.replace("\t\tether saddr != 52:54:00:aa:bb:cc counter drop\n", "");
        assert_ne!(of(&altered, qdiscs, "hvm-1"), one);
        let unmapped = table.replace("\"hvm-1\" : jump hvm-1,", "");
        assert_ne!(of(&unmapped, qdiscs, "hvm-1"), one);
        let requeued = qdiscs.replace("tbf 8001:", "tbf 8002:");
        assert_eq!(of(table, &requeued, "hvm-1"), one, "handles do not count");
        assert_ne!(of(table, &qdiscs.replace("1Mbit", "2Mbit"), "hvm-1"), one);
        assert_ne!(of("", qdiscs, "hvm-1"), one);
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
