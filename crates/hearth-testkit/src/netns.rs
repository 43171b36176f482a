//! Network namespaces for partition tests: a hub namespace with a bridge, one namespace per
//! node joined to the bridge by a veth pair (the data link, for gossip and Raft), and a
//! point-to-point control link from the test's own namespace to each node (for the API), so
//! the test can always talk to every agent while cutting their data links. Everything is
//! deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    run(
        Command::new("ip").args(args),
        &[],
        &format!("ip {}", args.join(" ")),
    )
}

/// Runs a command to its end, `input` on its stdin; its stderr becomes the error, after
/// `what`.
fn run(command: &mut Command, input: &[u8], what: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input)
        .map_err(|e| format!("{what}: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A lab of `n` node namespaces around a hub bridge.
pub struct NetnsLab {
    id: String,
    n: usize,
    /// Second octet of the data subnet 10.X.Y.0/24 and the control subnet 10.X.(Y+1).0/24.
    x: u8,
    y: u8,
}

impl NetnsLab {
    /// Whether this machine lets us create namespaces (root, iproute2 present).
    pub fn available() -> bool {
        let probe = format!("hth-probe-{}", std::process::id());
        let ok = ip(&["netns", "add", &probe]).is_ok();
        let _ = ip(&["netns", "del", &probe]);
        ok
    }

    pub fn new(n: usize) -> Result<NetnsLab, String> {
        let id = format!("{:04x}", rand::random::<u16>());
        let lab = NetnsLab {
            id,
            n,
            x: rand::random_range(100..=199u8),
            y: rand::random_range(0..=127u8) * 2,
        };
        lab.build()?;
        Ok(lab)
    }

    fn hub(&self) -> String {
        format!("hth{}hub", self.id)
    }

    /// The namespace of node `idx`.
    pub fn netns(&self, idx: usize) -> String {
        format!("hth{}n{idx}", self.id)
    }

    /// Node `idx`'s address on the bridge (gossip, Raft, DNS).
    pub fn data_ip(&self, idx: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.x, self.y, idx as u8 + 1)
    }

    /// Node `idx`'s address on its control link (the API).
    pub fn control_ip(&self, idx: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.x, self.y + 1, idx as u8 * 4 + 2)
    }

    fn control_root_ip(&self, idx: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.x, self.y + 1, idx as u8 * 4 + 1)
    }

    fn hub_veth(&self, idx: usize) -> String {
        format!("h{}d{idx}h", self.id)
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for idx in 0..self.n {
            self.build_node(idx)?;
        }
        Ok(())
    }

    fn build_node(&self, idx: usize) -> Result<(), String> {
        let (hub, ns) = (self.hub(), self.netns(idx));
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // Data link: node <-> bridge.
        let (hub_end, node_end) = (self.hub_veth(idx), format!("h{}d{idx}n", self.id));
        ip(&[
            "link", "add", &hub_end, "type", "veth", "peer", "name", &node_end,
        ])?;
        ip(&["link", "set", &hub_end, "netns", &hub])?;
        ip(&["link", "set", &node_end, "netns", &ns])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
        let data = format!("{}/24", self.data_ip(idx));
        ip(&["-n", &ns, "addr", "add", &data, "dev", &node_end])?;
        ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
        // Control link: the test's namespace <-> node.
        let (root_end, ctl_end) = (
            format!("h{}c{idx}r", self.id),
            format!("h{}c{idx}n", self.id),
        );
        ip(&[
            "link", "add", &root_end, "type", "veth", "peer", "name", &ctl_end,
        ])?;
        ip(&["link", "set", &ctl_end, "netns", &ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", self.control_root_ip(idx)),
            "dev",
            &root_end,
        ])?;
        ip(&["link", "set", &root_end, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/30", self.control_ip(idx)),
            "dev",
            &ctl_end,
        ])?;
        ip(&["-n", &ns, "link", "set", &ctl_end, "up"])?;
        Ok(())
    }

    /// The hub's namespace (an "upstream router" for bridged VMs' networks).
    pub fn hub_netns(&self) -> String {
        self.hub()
    }

    /// Joins bridge `node_bridge` in node `idx`'s namespace to bridge `hub_bridge` in the
    /// hub's (made if absent) with a veth pair of their own: a worker's VM bridge on its
    /// uplink. Both bridges must exist in the node's namespace first.
    pub fn uplink(&self, idx: usize, node_bridge: &str, hub_bridge: &str) -> Result<(), String> {
        let (hub, ns) = (self.hub(), self.netns(idx));
        if ip(&["-n", &hub, "link", "show", hub_bridge]).is_err() {
            ip(&["-n", &hub, "link", "add", hub_bridge, "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", hub_bridge, "up"])?;
        }
        let (hub_end, node_end) = (
            format!("h{}u{idx}h", self.id),
            format!("h{}u{idx}n", self.id),
        );
        ip(&[
            "link", "add", &hub_end, "type", "veth", "peer", "name", &node_end,
        ])?;
        ip(&["link", "set", &hub_end, "netns", &hub])?;
        ip(&["link", "set", &node_end, "netns", &ns])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "master", hub_bridge])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
        ip(&["-n", &ns, "link", "set", &node_end, "master", node_bridge])?;
        ip(&["-n", &ns, "link", "set", &node_end, "up"])
    }

    /// Cuts node `idx` off the bridge (its data link goes down at the hub).
    pub fn cut(&self, idx: usize) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &self.hub_veth(idx),
            "down",
        ])
        .expect("cut link");
    }

    /// Reconnects node `idx` to the bridge.
    pub fn heal(&self, idx: usize) {
        ip(&["-n", &self.hub(), "link", "set", &self.hub_veth(idx), "up"]).expect("heal link");
    }

    fn node_veth(&self, idx: usize) -> String {
        format!("h{}d{idx}n", self.id)
    }

    /// Sets the hub bridge's filter (nftables, bridge family) to drop what goes from node
    /// `from` to node `to` for each pair in `blocked` (one direction each, so asymmetric
    /// partitions are possible), and `loss_percent` of everything else at random. Replaces
    /// the previous filter in one transaction.
    pub fn set_filter(&self, blocked: &[(usize, usize)], loss_percent: u8) -> Result<(), String> {
        let mut rules = String::from(
            "table bridge hearth_chaos {}\ndelete table bridge hearth_chaos\n\
             table bridge hearth_chaos {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n",
        );
        for &(from, to) in blocked {
            rules.push_str(&format!(
                "    iifname \"{}\" oifname \"{}\" drop\n",
                self.hub_veth(from),
                self.hub_veth(to)
            ));
        }
        if loss_percent > 0 {
            rules.push_str(&format!(
                "    numgen random mod 100 < {} drop\n",
                loss_percent.min(100)
            ));
        }
        rules.push_str("  }\n}\n");
        nft(&self.hub(), &rules)
    }

    /// Drops node `idx`'s outgoing data packets inside its own namespace (`true`), or lets
    /// them go again: its sends fail locally, so it can tell it is the one cut off.
    pub fn set_egress_blocked(&self, idx: usize, blocked: bool) -> Result<(), String> {
        let mut rules =
            String::from("table inet hearth_chaos {}\ndelete table inet hearth_chaos\n");
        if blocked {
            rules.push_str(&format!(
                "table inet hearth_chaos {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    oifname \"{}\" drop\n  }}\n}}\n",
                self.node_veth(idx)
            ));
        }
        nft(&self.netns(idx), &rules)
    }
}

impl NetnsLab {
    /// How many node namespaces the lab has.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Sends node `idx`'s outgoing data packets to NFQUEUE `queue` (`--queue-bypass`:
    /// straight through when nobody listens), or stops doing so (`None`). See
    /// `delay::DelayRelay`. This kernel has the xtables NFQUEUE target but not nftables'
    /// own `queue`, so the rule goes in with `iptables-nft` (Debian package iptables).
    pub fn set_egress_queue(&self, idx: usize, queue: Option<u16>) -> Result<(), String> {
        let ns = self.netns(idx);
        iptables(&ns, &["-t", "mangle", "-F", "OUTPUT"])?;
        if let Some(num) = queue {
            iptables(
                &ns,
                &[
                    "-t",
                    "mangle",
                    "-A",
                    "OUTPUT",
                    "-o",
                    &self.node_veth(idx),
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &num.to_string(),
                    "--queue-bypass",
                ],
            )?;
        }
        Ok(())
    }
}

fn iptables(ns: &str, args: &[&str]) -> Result<(), String> {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, "iptables-nft"])
            .args(args)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
        &[],
        &format!(
            "iptables-nft {} in {ns} (apt-get install iptables)",
            args.join(" ")
        ),
    )
}

/// Runs `f` on a thread that has entered network namespace `ns` (the caller's own
/// namespace is untouched).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    use std::os::fd::AsFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {ns}: {e}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| format!("the thread in {ns} panicked"))?
    })
}

/// Runs an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
        script.as_bytes(),
        &format!("nft in {ns}"),
    )
    .map_err(|e| format!("{e}\n{script}"))
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for idx in 0..self.n {
            let _ = ip(&["netns", "del", &self.netns(idx)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}
