//! Network namespaces for partition tests: a hub namespace with a bridge, one namespace per
//! node joined to the bridge by a veth pair (the data link, for gossip and Raft), and a
//! point-to-point control link from the test's own namespace to each node (for the API), so
//! the test can always talk to every agent while cutting their data links. Everything is
//! deleted on drop.

use std::net::Ipv4Addr;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
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
