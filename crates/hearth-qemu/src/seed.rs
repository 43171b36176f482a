//! The cloud-init NoCloud seed: `meta-data`, `user-data` and a version 2 `network-config`,
//! written as text by pure functions and packed into an ISO 9660 image labelled `cidata`.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// What the guest learns from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub ssh_keys: Vec<String>,
    pub mac: String,
    /// CIDR strings, IPv4 and IPv6.
    pub addresses: Vec<String>,
    pub gateway4: Option<IpAddr>,
    pub gateway6: Option<IpAddr>,
    pub resolvers: Vec<IpAddr>,
}

/// A YAML double-quoted scalar: safe for any key comment or hostname.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Seed {
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            quoted(&self.instance_id),
            quoted(&self.hostname)
        )
    }

    pub fn user_data(&self) -> String {
        let mut out = format!("#cloud-config\nhostname: {}\n", quoted(&self.hostname));
        if !self.ssh_keys.is_empty() {
            out.push_str("ssh_authorized_keys:\n");
            for key in &self.ssh_keys {
                out.push_str(&format!("  - {}\n", quoted(key.trim())));
            }
        }
        out
    }

    /// Network config version 2: the NIC matched by its MAC, static addresses only (no DHCP,
    /// so no lease can expire and hand an address to another VM).
    pub fn network_config(&self) -> String {
        let mut out = format!(
            "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: {}\n    set-name: eth0\n    dhcp4: false\n    dhcp6: false\n",
            quoted(&self.mac)
        );
        if !self.addresses.is_empty() {
            out.push_str("    addresses:\n");
            for address in &self.addresses {
                out.push_str(&format!("      - {address}\n"));
            }
        }
        let routes: Vec<(&str, IpAddr)> = [("0.0.0.0/0", self.gateway4), ("::/0", self.gateway6)]
            .into_iter()
            .filter_map(|(to, via)| Some((to, via?)))
            .collect();
        if let Some(gw) = self.gateway4 {
            // Older cloud-init and simple parsers read gateway4; newer ones read routes.
            out.push_str(&format!("    gateway4: {gw}\n"));
        }
        if !routes.is_empty() {
            out.push_str("    routes:\n");
            for (to, via) in routes {
                out.push_str(&format!("      - to: {to}\n        via: {via}\n"));
            }
        }
        if !self.resolvers.is_empty() {
            let list: Vec<String> = self.resolvers.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "    nameservers:\n      addresses: [{}]\n",
                list.join(", ")
            ));
        }
        out
    }

    /// Writes the three files into `dir` and packs them into `iso` (written beside it, then
    /// renamed, so a half-written seed never boots).
    pub fn write_iso(&self, dir: &Path, iso: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = [
            ("meta-data", self.meta_data()),
            ("user-data", self.user_data()),
            ("network-config", self.network_config()),
        ];
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let partial = iso.with_extension("iso.partial");
        let names: Vec<_> = files.iter().map(|(n, _)| dir.join(n)).collect();
        let tools: [(&str, &[&str]); 2] = [("genisoimage", &[]), ("xorriso", &["-as", "mkisofs"])];
        let mut tried = Vec::new();
        for (tool, prefix) in tools {
            let output = Command::new(tool)
                .args(prefix)
                .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
                .arg(&partial)
                .args(&names)
                .output();
            match output {
                Ok(out) if out.status.success() => {
                    std::fs::rename(&partial, iso)
                        .map_err(|e| format!("{}: {e}", iso.display()))?;
                    return Ok(());
                }
                Ok(out) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(format!(
                        "{tool} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Err(error) => tried.push(format!("{tool}: {error}")),
            }
        }
        Err(format!(
            "cannot make the cloud-init seed: install genisoimage (apt-get install genisoimage) ({})",
            tried.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            instance_id: "vm-7".into(),
            hostname: "web1".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA alice@\"laptop\"".into()],
            mac: "52:54:00:aa:bb:cc".into(),
            addresses: vec!["192.0.2.2/24".into(), "2001:db8::2/64".into()],
            gateway4: Some("192.0.2.1".parse().unwrap()),
            gateway6: Some("2001:db8::1".parse().unwrap()),
            resolvers: vec!["192.0.2.53".parse().unwrap()],
        }
    }

    #[test]
    fn network_config_is_static_v2_with_both_families() {
        let text = seed().network_config();
        assert_eq!(
            text,
            "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: \"52:54:00:aa:bb:cc\"\n    set-name: eth0\n    dhcp4: false\n    dhcp6: false\n    addresses:\n      - 192.0.2.2/24\n      - 2001:db8::2/64\n    gateway4: 192.0.2.1\n    routes:\n      - to: 0.0.0.0/0\n        via: 192.0.2.1\n      - to: ::/0\n        via: 2001:db8::1\n    nameservers:\n      addresses: [192.0.2.53]\n"
        );
    }

    #[test]
    fn keys_and_names_are_quoted_yaml() {
        let user = seed().user_data();
        assert!(user.starts_with("#cloud-config\n"), "{user}");
        assert!(
            user.contains("  - \"ssh-ed25519 AAAA alice@\\\"laptop\\\"\"\n"),
            "{user}"
        );
        assert_eq!(
            seed().meta_data(),
            "instance-id: \"vm-7\"\nlocal-hostname: \"web1\"\n"
        );
    }
}
