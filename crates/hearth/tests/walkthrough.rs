//! The README's three-server walk-through, run as written: `hearth init` on the first server,
//! the secret copied, `hearth init --join` on the others, the user made, and the shipped
//! unit started. Each "server" is a network namespace of a lab, with one private mount
//! namespace (held open by a process of the test's, and entered by every command) whose
//! `/etc`, `/var/lib` and `/usr/local/bin` are overlays of the test's own, so the commands
//! write `/etc/hearth` and `/var/lib/hearth` as on a real machine without
//! touching this one. There is no systemd here: `systemctl enable --now hearth` is replaced
//! by the unit's `ExecStart`, run as the unit says (its `User=`, `UMask=`, `StateDirectory=`,
//! ambient capabilities and no new privileges). The cluster must then answer DNS from every
//! server, take a write, and keep doing both with one server killed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth_testkit::netns::NetnsLab;
use hearth_testkit::{TempDir, eventually};

const DEADLINE: Duration = Duration::from_secs(90);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The README's addresses, in the order of its servers n1, n2, n3.
const README_IPS: [&str; 3] = ["203.0.113.10", "203.0.113.11", "203.0.113.12"];

/// A process of the test's own, killed (by its PID) and reaped when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One server: a lab namespace, the upper and work directories of its overlays, and the
/// process that holds its mount namespace (one per server: two overlay mounts sharing an
/// upper directory may refuse each other).
struct Server {
    ns: String,
    ip: Ipv4Addr,
    root: PathBuf,
    holder: Owned,
}

impl Server {
    fn new(lab: &NetnsLab, idx: usize, root: &Path, binary: &Path) -> Server {
        let root = root.join(format!("n{}", idx + 1));
        for dir in ["etc.up", "etc.work", "var.up", "var.work", "bin"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy(binary, root.join("bin/hearth")).unwrap();
        let ns = lab.netns(idx);
        let r = root.display();
        let ready = root.join("mounted");
        let holder = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-ec"])
            .arg(format!(
                "mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc.up,workdir={r}/etc.work /etc\n\
                 mount -t overlay overlay -o lowerdir=/var/lib,upperdir={r}/var.up,workdir={r}/var.work /var/lib\n\
                 mount --bind {r}/bin /usr/local/bin\n\
                 touch {ready}\n\
                 exec sleep 100000\n",
                ready = ready.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec unshare");
        let mut holder = Owned(holder);
        eventually(&format!("{ns}'s mounts"), DEADLINE, || {
            if ready.exists() {
                return Ok(());
            }
            match holder.0.try_wait() {
                Ok(Some(status)) => panic!("{ns}'s mounts failed: {status}"),
                _ => Err("not yet".to_owned()),
            }
        });
        Server {
            ns,
            ip: lab.data_ip(idx),
            root,
            holder,
        }
    }

    /// `sh -ec SCRIPT` on this server: in its network namespace, with its own `/etc`,
    /// `/var/lib` and `/usr/local/bin` (nsenter enters both namespaces of the holder, and
    /// execs without a fork).
    fn command(&self, script: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args([
                "--target",
                &self.holder.0.id().to_string(),
                "--mount",
                "--net",
            ])
            .args(["sh", "-ec", script])
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            // The CLI's token: the agent's, not a dev agent's this machine may have.
            .env("HEARTH_TOKEN_FILE", "/var/lib/hearth/api-token")
            .stdin(Stdio::null());
        command
    }

    /// Runs `script` to its end; its standard output, or why it failed.
    fn sh(&self, script: &str) -> Result<String, String> {
        let output = self
            .command(script)
            .output()
            .map_err(|e| format!("ip netns exec: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "`{script}` on {}: {stdout}{}",
                self.ns,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Starts `script` and leaves it running (it ends by exec'ing the agent, whose PID the
    /// child's is, through `nsenter`, `sh` and `setpriv`).
    fn spawn(&self, script: &str) -> Owned {
        let log = std::fs::File::create(self.root.join("agent.log")).unwrap();
        let child = self
            .command(script)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ip netns exec");
        Owned(child)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }

    /// `dig +short` from this server to `server`.
    fn dig(&self, server: Ipv4Addr, name: &str) -> Result<Vec<String>, String> {
        let out = self.sh(&format!("dig @{server} {name} A +short +time=2 +tries=1"))?;
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    }
}

/// The README's shell blocks of its three-server section, in order.
fn readme_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let start = readme
        .find("## Three servers")
        .expect("README: ## Three servers");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let end = section
        .find("By hand instead")
        .expect("README: the walk-through ends before `By hand instead`");
    section[..end]
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::to_owned)
        .collect()
}

/// What `systemctl enable --now hearth` would run, from the shipped unit: its one-time
/// `StateDirectory=`, its `UMask=`, then `ExecStart=` as `User=`/`Group=`, with the unit's
/// ambient capabilities and bounding set, and no new privileges.
fn unit_start_script() -> String {
    let unit = std::fs::read_to_string(repo_file("dist/hearth.service")).unwrap();
    let key = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("dist/hearth.service: no {name}="))
            .trim()
            .to_owned()
    };
    let caps = |list: String| {
        let names: Vec<String> = list
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        names.join(",")
    };
    assert_eq!(key("NoNewPrivileges"), "yes");
    let (user, group) = (key("User"), key("Group"));
    let ambient = caps(key("AmbientCapabilities"));
    let bounding = caps(key("CapabilityBoundingSet"));
    format!(
        "install -d -o {user} -g {group} -m {mode} /var/lib/{state}\n\
         umask {umask}\n\
         exec setpriv --reuid={user} --regid={group} --init-groups --inh-caps={ambient} \
         --ambient-caps={ambient} --bounding-set=-all,{bounding} --no-new-privs -- {exec}\n",
        mode = key("StateDirectoryMode"),
        state = key("StateDirectory"),
        umask = key("UMask"),
        exec = key("ExecStart"),
    )
}

/// The README's text for server `idx`: its name and address in place of n2's (the README
/// shows n2 and says "the same on n3"), and every README address in place of the lab's.
fn for_server(text: &str, idx: usize, servers: &[Server]) -> String {
    let mut text = text.to_owned();
    if idx == 2 {
        text = text.replace("--name n2", "--name n3").replace(
            &format!("--advertise {}", README_IPS[1]),
            &format!("--advertise {}", README_IPS[2]),
        );
    }
    for (readme_ip, server) in README_IPS.iter().zip(servers) {
        text = text.replace(readme_ip, &server.ip.to_string());
    }
    text
}

#[test]
fn the_readme_three_server_walkthrough_gives_a_working_cluster() {
    let lab = NetnsLab::new(3).expect("network namespaces (run as root)");
    let root = TempDir::new("walkthrough");
    let binary = Path::new(env!("CARGO_BIN_EXE_hearth"));
    let servers: Vec<Server> = (0..3)
        .map(|idx| Server::new(&lab, idx, root.path(), binary))
        .collect();
    let blocks = readme_blocks();
    assert_eq!(blocks.len(), 3, "README walk-through blocks: {blocks:?}");
    assert!(
        blocks[2].contains("systemctl enable --now hearth"),
        "{}",
        blocks[2]
    );

    // n1 starts the cluster: a config and a new secret.
    let out = servers[0].sh(&for_server(&blocks[0], 0, &servers)).unwrap();
    assert!(out.contains("a new cluster secret"), "{out}");
    // The secret, copied to n2 and n3 with its mode (scp -p).
    let secret = servers[0].root.join("etc.up/hearth/secret");
    for server in &servers[1..] {
        let dir = server.root.join("etc.up/hearth");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&secret, dir.join("secret")).unwrap();
    }
    for idx in 1..3 {
        let out = servers[idx]
            .sh(&for_server(&blocks[1], idx, &servers))
            .unwrap();
        assert!(
            out.contains(&format!("wrote /etc/hearth/hearth.toml for n{}", idx + 1)),
            "{out}"
        );
    }

    // On every server: the user, the secret's owner, and the unit started.
    let start = unit_start_script();
    let mut agents = Vec::new();
    for (idx, server) in servers.iter().enumerate() {
        let mut setup = String::new();
        for line in for_server(&blocks[2], idx, &servers).lines() {
            if line.trim() == "systemctl enable --now hearth" {
                break;
            }
            setup.push_str(line);
            setup.push('\n');
        }
        agents.push(server.spawn(&(setup + &start)));
    }

    // Three members alive, seen from each server.
    for server in &servers {
        eventually(
            &format!("{} to see three members alive", server.ns),
            DEADLINE,
            || {
                let out = server.sh("hearth members").map_err(|e| e + &server.log())?;
                let alive = out.lines().filter(|l| l.contains(" alive ")).count();
                if alive == 3 { Ok(()) } else { Err(out) }
            },
        );
    }
    // Each server answers for each node's name.
    for (idx, server) in servers.iter().enumerate() {
        let asker = &servers[(idx + 1) % 3];
        let name = format!("n{}.coop.example", idx + 1);
        let want = vec![server.ip.to_string()];
        eventually(
            &format!("{name} from {}", server.ns),
            DEADLINE,
            || match asker.dig(server.ip, &name)? {
                got if got == want => Ok(()),
                got => Err(format!("{got:?}")),
            },
        );
    }
    // The agent runs as the unit's user, which owns its data.
    let owner = servers[0]
        .sh("stat -c %U /var/lib/hearth /var/lib/hearth/api-token")
        .unwrap();
    assert_eq!(
        owner.lines().collect::<Vec<_>>(),
        ["hearth", "hearth"],
        "{owner}"
    );

    // A write through Raft, once the three have formed the group (until then the agent
    // answers 503, saying so): a cluster service every server runs, checked on its own API.
    eventually("the first write", DEADLINE, || {
        servers[0].sh("hearth services add www --tcp 127.0.0.1:7480")
    });
    let all: Vec<String> = {
        let mut ips: Vec<String> = servers.iter().map(|s| s.ip.to_string()).collect();
        ips.sort();
        ips
    };
    eventually("www on every server", DEADLINE, || {
        match servers[1].dig(servers[2].ip, "www.coop.example")? {
            got if got == all => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });

    // One server killed: the others answer without it, and still take writes.
    drop(agents.pop());
    let two = all[..]
        .iter()
        .filter(|ip| **ip != servers[2].ip.to_string())
        .cloned()
        .collect::<Vec<_>>();
    eventually("www without n3", DEADLINE, || {
        match servers[0].dig(servers[1].ip, "www.coop.example")? {
            got if got == two => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    servers[1]
        .sh("hearth services add api --tcp 127.0.0.1:7480")
        .unwrap();
    eventually("api on the two left", DEADLINE, || {
        match servers[0].dig(servers[0].ip, "api.coop.example")? {
            got if got == two => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    drop(agents);
}
