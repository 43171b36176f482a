//! `hearth init`: writes a commented config, and the cluster secret for a new cluster, from
//! flags or from answers on a terminal; checks the result as the agent would load it, and
//! prints the next commands.

use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::Args;
use hearth_agent::config::Config;

#[derive(Args)]
pub struct InitArgs {
    /// This node's name, unique in the cluster and one DNS label (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The address the other nodes reach this one at (asked on a terminal when missing).
    #[arg(long, value_name = "IP")]
    advertise: Option<IpAddr>,
    /// The zone the servers answer for, like `coop.example.` (asked on a terminal when
    /// missing).
    #[arg(long)]
    zone: Option<String>,
    /// The cluster's name; every node of it says the same.
    #[arg(long, default_value = "hearth")]
    cluster: String,
    /// This node's roles, comma-separated: server, witness, worker.
    #[arg(long, default_value = "server", value_delimiter = ',')]
    roles: Vec<String>,
    /// How many servers and witnesses start the cluster together (`[state]
    /// bootstrap_expect`): 1 for a one-node cluster, 3 for the usual three servers.
    #[arg(long, default_value_t = 3)]
    servers: u32,
    /// A node of the cluster to join, `IP[:port]`; repeat for more. Without it, this node
    /// starts a new cluster and gets a new secret.
    #[arg(long, value_name = "ADDR")]
    join: Vec<String>,
    /// The cluster secret: made (mode 0600) for a new cluster; for joining, a copy of the
    /// first node's file.
    #[arg(long, value_name = "FILE", default_value = "/etc/hearth/secret")]
    secret_file: PathBuf,
    /// Where the config goes.
    #[arg(long, value_name = "FILE", default_value = "/etc/hearth/hearth.toml")]
    config: PathBuf,
    /// The agent's data directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/hearth")]
    data_dir: PathBuf,
    /// The address gossip, Raft RPC and DNS listen on (all of this machine's by default).
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    listen: IpAddr,
    /// The API's address (only this machine's by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
    api: SocketAddr,
    /// Replace a config file that exists.
    #[arg(long)]
    force: bool,
}

/// What `hearth init` could not do: exit code 2, with the message naming the flag.
struct Refusal(String);

/// `hearth init`.
pub fn run(args: InitArgs) -> ExitCode {
    match init(args) {
        Ok(next) => {
            println!("{next}");
            ExitCode::SUCCESS
        }
        Err(Refusal(message)) => {
            eprintln!("hearth init: {message}");
            ExitCode::from(2)
        }
    }
}

fn init(args: InitArgs) -> Result<String, Refusal> {
    if args.config.exists() && !args.force {
        return Err(Refusal(format!(
            "--config: {} exists; pass --force to replace it",
            args.config.display()
        )));
    }
    let name = match args.name.clone() {
        Some(name) => name,
        None => ask("node name", host_name().as_deref(), "--name")?,
    };
    let advertise = match args.advertise {
        Some(ip) => ip,
        None => ask(
            "address the other nodes reach this one at",
            None,
            "--advertise",
        )?
        .parse()
        .map_err(|e| Refusal(format!("--advertise: {e}")))?,
    };
    let zone = match args.zone.clone() {
        Some(zone) => zone,
        None => ask("DNS zone (like coop.example.)", None, "--zone")?,
    };
    let new_cluster = ensure_secret(&args)?;
    let text = config_text(&args, &name, advertise, &zone);
    write_checked(&args.config, &text)?;
    Ok(next_steps(&args, &name, advertise, new_cluster))
}

/// Asks `question` on the terminal (with `default`), or refuses naming `flag` when there is
/// none to ask on.
fn ask(question: &str, default: Option<&str>, flag: &str) -> Result<String, Refusal> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Refusal(format!("{flag}: required (no terminal to ask on)")));
    }
    match default {
        Some(default) => print!("{question} [{default}]: "),
        None => print!("{question}: "),
    }
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Refusal(format!("{flag}: {e}")))?;
    match (line.trim(), default) {
        ("", Some(default)) => Ok(default.to_owned()),
        ("", None) => Err(Refusal(format!("{flag}: required"))),
        (answer, _) => Ok(answer.to_owned()),
    }
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().split('.').next()?.to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// Makes the secret file for a new cluster; for joining, it must be there. True when made.
fn ensure_secret(args: &InitArgs) -> Result<bool, Refusal> {
    let path = &args.secret_file;
    if path.exists() {
        return Ok(false);
    }
    if !args.join.is_empty() {
        return Err(Refusal(format!(
            "--secret-file: {} does not exist; copy it (mode 0600) from a node of the cluster you join",
            path.display()
        )));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Refusal(format!("--secret-file: {}: {e}", dir.display())))?;
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret[..]);
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    write_private(path, &text).map_err(|e| Refusal(format!("--secret-file: {e}")))?;
    Ok(true)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The config file's text: every key this node needs, each with what it means.
fn config_text(args: &InitArgs, name: &str, advertise: IpAddr, zone: &str) -> String {
    let quote = |s: &str| format!("{s:?}");
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let join: Vec<String> = args
        .join
        .iter()
        .map(|j| match j.contains(':') {
            true => j.clone(),
            false => format!("{j}:7946"),
        })
        .collect();
    let listen = args.listen;
    let at = |port: u16| quote(&format!("{listen}:{port}"));
    // (key, value, comment); an empty key starts a section named by the value.
    let keys: [(&str, String, &str); 16] = [
        (
            "node_name",
            quote(name),
            "unique; <node_name>.<zone> is advertise",
        ),
        ("cluster", quote(&args.cluster), "the same on every node"),
        (
            "secret_file",
            quote(&args.secret_file.display().to_string()),
            "the same file on every node, mode 0600",
        ),
        (
            "data_dir",
            quote(&args.data_dir.display().to_string()),
            "state, API token, VMs (mode 0700)",
        ),
        ("roles", list(&args.roles), "server, witness, worker"),
        ("gossip_addr", at(7946), "UDP, between all nodes"),
        (
            "advertise",
            quote(&advertise.to_string()),
            "where the others reach this node",
        ),
        ("join", list(&join), "any one reachable is enough"),
        ("rpc_addr", at(7947), "Raft RPC, TCP, encrypted"),
        ("dns_addr", at(53), "authoritative DNS, UDP and TCP"),
        (
            "api_addr",
            quote(&args.api.to_string()),
            "HTTP API, CLI, web panel",
        ),
        ("", "dns".into(), ""),
        ("zone", quote(zone), "delegate it to the servers"),
        ("ttl", "5".into(), "seconds"),
        ("", "state".into(), ""),
        (
            "bootstrap_expect",
            args.servers.to_string(),
            "servers and witnesses starting together",
        ),
    ];
    let mut text = String::from(
        "# hearth agent config, written by `hearth init`. Every key is in the README's\n\
         # config reference; unknown keys are errors.\n\n",
    );
    for (key, value, comment) in keys {
        match key {
            "" => text += &format!("\n[{value}]\n"),
            // `key = value`, its comment aligned beside it.
            _ => text += &format!("{:<40}# {comment}\n", format!("{key:<11} = {value}")),
        }
    }
    text
}

/// Writes the config beside its final name, loads it as the agent would, and only then
/// gives it that name: a config `hearth init` leaves is one the agent starts with.
fn write_checked(path: &Path, text: &str) -> Result<(), Refusal> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Refusal(format!("--config: {}: {e}", dir.display())))?;
    }
    let draft = path.with_extension("toml.new");
    // It holds no secret (that is in secret_file): readable by the agent's user.
    std::fs::write(&draft, text)
        .map_err(|e| Refusal(format!("--config: {}: {e}", draft.display())))?;
    if let Err(error) = Config::load(&draft) {
        let _ = std::fs::remove_file(&draft);
        return Err(Refusal(error.to_string()));
    }
    std::fs::rename(&draft, path).map_err(|e| Refusal(format!("--config: {e}")))
}

fn next_steps(args: &InitArgs, name: &str, advertise: IpAddr, new_cluster: bool) -> String {
    let (config, secret) = (args.config.display(), args.secret_file.display());
    let mut text = format!("hearth init: wrote {config} for {name}");
    match new_cluster {
        true => text.push_str(&format!(" and a new cluster secret in {secret}.\n")),
        false => text.push_str(".\n"),
    }
    text.push_str(&format!(
        "\nUnder the shipped unit the agent runs as user hearth, which must read the secret:\n  chown hearth: {secret}\n"
    ));
    if new_cluster {
        text.push_str(&format!(
            "\nOn each other node, copy that file (mode 0600), then:\n  hearth init --name NAME --advertise IP --zone ZONE --cluster {} --servers {} --join {advertise} --secret-file {secret}\nA node that is only a worker is better given a worker key than the secret (once this\nagent runs): hearth keygen --worker --name NAME --config {config} > worker-key\n",
            args.cluster, args.servers,
        ));
    }
    text.push_str(&format!(
        "\nThen start the agent and check it:\n  systemctl enable --now hearth        # or: hearth agent --config {config}\n  hearth doctor --config {config}"
    ));
    text
}
