//! Command-line parsing and the commands: `agent`, `members`, `services`, `leave`, `keygen`
//! (`doctor` and `init` in modules of their own).

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use hearth_agent::Agent;
use hearth_agent::config::Config;
use hearth_types::{MemberRow, ServiceRow};

use crate::client::{ApiClient, ClientArgs, ClientError};
use crate::output::{print_json, print_table};
use crate::{accounts_cli, billing_cli, compute_cli, plans_cli, state_cli};

/// Exit code for bad usage or bad config.
const EXIT_USAGE: u8 = 2;

/// hearth: a small, self-healing cloud for volunteer-run hosting.
///
/// One binary runs on every server. `hearth agent` joins the cluster, checks services,
/// and serves DNS that points only at healthy instances; the other commands talk to the
/// local agent's API.
#[derive(Parser)]
#[command(name = "hearth", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    ///
    /// With --config FILE, run as configured (see the README's config reference). With
    /// --dev, run a one-node cluster on loopback with embedded defaults: API on
    /// 127.0.0.1:7480, DNS on 127.0.0.1:8053 for zone hearth.test., a demo service `www`.
    /// SIGTERM or SIGINT makes the agent leave the cluster gracefully, then exit.
    Agent(AgentArgs),
    /// List the cluster's members as this node sees them.
    Members(ClientArgs),
    /// List every service instance in the cluster with its check status; with a
    /// subcommand, manage the cluster-wide service declarations.
    Services {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Option<state_cli::ServicesCommand>,
    },
    /// Show the replicated state: leader, term, voters, learners, each member's applied
    /// index; `state recover` repairs a permanent loss of quorum.
    State {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Option<StateCommand>,
    },
    /// Show recent cluster-wide events and the delivery state of cluster handlers.
    Events(ClientArgs),
    /// Manage the static DNS records kept in the replicated state.
    Records {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: state_cli::RecordsCommand,
    },
    /// Create admin accounts (`hearth admin create NAME` makes the first one).
    Admin {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: accounts_cli::AdminCommand,
    },
    /// Member and admin accounts.
    Account {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: accounts_cli::AccountCommand,
    },
    /// The public sign-up page (admins): closed, by invite code, or with an admin's
    /// approval; invite codes.
    Signup {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::signup_cli::SignupCommand,
    },
    /// DNS zones of your own: claim a domain, prove it, and edit its records; every
    /// server answers for it.
    Zone {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::zones_cli::ZoneCommand,
    },
    /// Back a VM up now into a restic repository; backup targets (admins).
    Backup {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::backups_cli::BackupCommand,
    },
    /// VMs' backups (members: their own), or one VM's snapshots.
    Backups {
        #[command(flatten)]
        client: ClientArgs,
        /// A VM's name or id: list its snapshots.
        #[arg(conflicts_with = "state")]
        vm: Option<String>,
        /// Admins: the backups of the cluster's own state (accounts, plans, VM definitions,
        /// records, …), which the leader stores into every target each `[state]
        /// backup_interval`, for disaster recovery.
        #[arg(long)]
        state: bool,
    },
    /// Rebuild the whole co-op from its backup repository, on servers installed afresh.
    ///
    /// Reads the newest backup of the cluster's state (or --snapshot's) from the restic
    /// repository REPO, puts back the image files it refers to, and fills this new, empty
    /// cluster with it: accounts, tokens, plans, images, pools, VM definitions with their
    /// addresses, records, zones, notices, backup targets and schedules. Each VM's disk is
    /// then recovered from its newest backup by the worker it is placed on, before it
    /// starts; a VM with no backup is `lost` (never given a blank disk). Run it on a server
    /// (the node's own token is enough), with the repository's password file.
    Restore(crate::restore_cli::RestoreArgs),
    /// Members' plans (admins): quotas of VMs, vCPUs, memory, disk, addresses and IO, and
    /// which plan an account is on.
    Plan {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Box<plans_cli::PlanCommand>,
    },
    /// Invoices from metered usage at each member's plan's prices: list, show, export as
    /// CSV, the usage rows behind them, closing a month, credits. Members see their own.
    Invoice {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: billing_cli::InvoiceCommand,
    },
    /// The audit log (admins): every change made or refused through the API, and logins,
    /// newest first.
    Audit(AuditArgs),
    /// API tokens of accounts: create, list, revoke.
    Token {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: accounts_cli::TokenCommand,
    },
    /// Post incidents and maintenance notes on the public status page (`/status` on every
    /// node, no login), resolve and remove them.
    Notice {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: state_cli::NoticeCommand,
    },
    /// Put a node in maintenance (drain, undrain), or confirm a dead worker is off (fence,
    /// unfence).
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: state_cli::NodeCommand,
    },
    /// Manage base images (VMs' disks are overlays on them).
    Image {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: compute_cli::ImageCommand,
    },
    /// Manage the IP pools VMs take static addresses from.
    Pool {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: compute_cli::PoolCommand,
    },
    /// Create, list and control members' virtual machines.
    Vm {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: compute_cli::VmCommand,
    },
    /// List what the hosts' reconcilers found and would not fix alone, with the proposed fix.
    Drift(ClientArgs),
    /// List the worker hosts: state, capacity, VMs, fence and evacuation, and the N+1 check
    /// (whether the other workers could hold all of each host's VMs).
    Hosts(ClientArgs),
    /// Apply the proposed fix of one drift entry (ID as `hearth drift` lists it).
    ///
    /// No fix deletes data: a stale copy of a VM is shut down and moved to the archive
    /// (DATA_DIR/vms-archive/). A missing disk has no fix; see `hearth vm recreate`.
    Fix {
        #[command(flatten)]
        client: ClientArgs,
        /// HOST/KIND/VM
        id: String,
        /// Remove the files of a VM that no longer exists instead of archiving them
        /// (unknown-vm entries only). This destroys that disk's data.
        #[arg(long)]
        destroy: bool,
    },
    /// Make the local agent leave the cluster gracefully and exit.
    Leave(ClientArgs),
    /// Check this node and the cluster as its agent sees it, saying what is wrong and how
    /// to fix it: the data directory (mode, free space); on a worker KVM (usable, or why
    /// not), QEMU and the configured bridge; the local agent answering, every member up,
    /// and each one's Raft RPC port reachable from here. Exit 0 when all is well, 1 when
    /// something is not, 2 for a bad config.
    Doctor(crate::doctor::DoctorArgs),
    /// Print a new random cluster secret (base64 of 32 bytes) for `secret_file`.
    ///
    /// With --worker, print instead the worker key of the cluster secret in --config's
    /// `secret_file` (a line per secret, during a rotation). A worker whose `secret_file`
    /// holds worker keys (roles = ["worker"] only) gossips, runs VMs, moves them and reports
    /// as before, but cannot derive the secret: over Raft RPC it cannot vote, replicate, or
    /// write anything but its own reports, and its API sends changes to a server's API.
    Keygen(KeygenArgs),
    /// Print a shell completion script: `hearth completions bash >
    /// /usr/share/bash-completion/completions/hearth` (the Debian package ships them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages, one per command (hearth.1, hearth-vm-create.1, ...), into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write this node's config (commented), and a secret for a new cluster.
    ///
    /// The first server: `hearth init --advertise IP --zone coop.example.`; it makes the
    /// secret file. Every other node: copy that file, then `hearth init --advertise IP
    /// --zone coop.example. --join FIRST_IP`. Flags not given are asked on a terminal. The
    /// config is checked as the agent loads it before it takes its name; an existing one is
    /// kept unless --force. Prints the next commands.
    Init(crate::init::InitArgs),
}

#[derive(Subcommand)]
enum StateCommand {
    /// Recover from a permanent loss of quorum: make this (stopped) node the only voter,
    /// keeping every write its log holds. Run it on the surviving server with the longest log
    /// while its agent is stopped; then remove `<data_dir>/state` on every other old member
    /// before starting it again, so it rejoins as a learner. Start this node's agent last.
    Recover {
        /// This node's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// `hearth audit`'s arguments.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// One JSON object per line, oldest first (an export for log tools).
    #[arg(long)]
    jsonl: bool,
}

#[derive(Args)]
struct AgentArgs {
    /// The TOML config file.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    config: Option<PathBuf>,
    /// Run a single-node cluster on loopback with embedded defaults, for trying hearth out.
    #[arg(long)]
    dev: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    dispatch(cli.command)
}

/// Runs one command.
fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Agent(args) => run_agent(args),
        Command::Members(args) => client_command(&args, members),
        Command::Services { client, command } => match command {
            None => client_command(&client, services),
            Some(command) => with_client(&client, |c, json| state_cli::services(c, json, command)),
        },
        Command::State { client, command } => match command {
            None => client_command(&client, state_cli::state),
            Some(StateCommand::Recover { config }) => recover(&config, client.json),
        },
        Command::Events(args) => client_command(&args, state_cli::events),
        Command::Records { client, command } => {
            with_client(&client, |c, json| state_cli::records(c, json, command))
        }
        Command::Admin { client, command } => {
            with_client(&client, |c, json| accounts_cli::admin(c, json, command))
        }
        Command::Account { client, command } => {
            with_client(&client, |c, json| accounts_cli::account(c, json, command))
        }
        Command::Signup { client, command } => with_client(&client, |c, json| {
            crate::signup_cli::signup(c, json, command)
        }),
        Command::Zone { client, command } => {
            with_client(&client, |c, json| crate::zones_cli::zone(c, json, command))
        }
        Command::Backup { client, command } => with_client(&client, |c, json| {
            crate::backups_cli::backup(c, json, command)
        }),
        Command::Backups { client, vm, state } => with_client(&client, |c, json| {
            crate::backups_cli::backups(c, json, vm, state)
        }),
        Command::Plan { client, command } => {
            with_client(&client, |c, json| plans_cli::plan(c, json, *command))
        }
        Command::Invoice { client, command } => {
            with_client(&client, |c, json| billing_cli::invoice(c, json, command))
        }
        Command::Audit(args) => with_client(&args.client, |c, json| {
            accounts_cli::audit(c, json, args.jsonl)
        }),
        Command::Token { client, command } => {
            with_client(&client, |c, json| accounts_cli::token(c, json, command))
        }
        Command::Notice { client, command } => {
            with_client(&client, |c, json| state_cli::notice(c, json, command))
        }
        Command::Node { client, command } => {
            with_client(&client, |c, json| state_cli::node(c, json, command))
        }
        Command::Image { client, command } => {
            with_client(&client, |c, json| compute_cli::image(c, json, command))
        }
        Command::Pool { client, command } => {
            with_client(&client, |c, json| compute_cli::pool(c, json, command))
        }
        Command::Vm { client, command } => {
            with_client(&client, |c, json| compute_cli::vm(c, json, command))
        }
        Command::Drift(args) => client_command(&args, compute_cli::drift),
        Command::Hosts(args) => client_command(&args, compute_cli::hosts),
        Command::Fix {
            client,
            id,
            destroy,
        } => with_client(&client, |c, json| compute_cli::fix(c, json, &id, destroy)),
        Command::Leave(args) => client_command(&args, leave),
        Command::Doctor(args) => crate::doctor::run(&args),
        Command::Keygen(args) => keygen_command(args),
        Command::Restore(args) => crate::restore_cli::restore(&args),
        Command::Init(args) => crate::init::run(args),
        Command::Completions { shell } => completions(shell),
        Command::Man { out } => man(&out),
    }
}

/// `hearth completions SHELL`: the completion script on standard output.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "hearth", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `hearth man --out DIR`: every command's man page.
fn man(out: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let written =
        std::fs::create_dir_all(out).and_then(|()| clap_mangen::generate_to(Cli::command(), out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hearth: --out: {}: {error}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// `hearth keygen`: a new random cluster secret, base64.
fn keygen() -> ExitCode {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret[..]);
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    ExitCode::SUCCESS
}

/// `hearth keygen [--worker --name NODE]`.
fn keygen_command(args: KeygenArgs) -> ExitCode {
    match (args.worker, args.name) {
        (true, Some(name)) => worker_keygen(&args.config, &name),
        _ => keygen(),
    }
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Print the worker key of this server's cluster secret, and the identity of worker
    /// --name.
    #[arg(long, requires = "name")]
    worker: bool,
    /// The worker's node_name: its identity tells servers which worker speaks, and it
    /// may write only reports about itself.
    #[arg(long, value_name = "NODE")]
    name: Option<String>,
    /// The server config whose secret to use, with --worker.
    #[arg(long, value_name = "FILE", default_value = "/etc/hearth/hearth.toml")]
    config: std::path::PathBuf,
}

/// `hearth keygen --worker`: the worker keys of a server's cluster secrets.
fn worker_keygen(path: &std::path::Path, name: &str) -> ExitCode {
    let (config, resolved) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("hearth: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let keyring = resolved.keys.keyring(&config.cluster);
    if !keyring.holds_servers_key() {
        eprintln!(
            "hearth: secret_file: {} holds worker keys already; run this with a server's config",
            path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    for line in keyring.worker_keys() {
        println!("{line}");
    }
    if let Some(identity) = keyring.worker_identity(name) {
        println!("{identity}");
    }
    ExitCode::SUCCESS
}

/// `hearth state recover`: offline, on a stopped agent's data dir.
fn recover(path: &std::path::Path, json: bool) -> ExitCode {
    let (config, resolved) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("hearth: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let store = config.data_dir.join("state").join("state.redb");
    let rpc_addr = std::net::SocketAddr::new(resolved.advertise, config.rpc_addr.port());
    match hearth_state::recover::recover_alone(&store, &config.node_name, rpc_addr) {
        Ok(report) if json => {
            print_json(&report);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hearth: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(args: AgentArgs) -> ExitCode {
    init_logging();
    let loaded = match (&args.config, args.dev) {
        (_, true) => Ok(hearth_agent::dev::dev_config()),
        (Some(path), false) => Config::load(path),
        (None, false) => unreachable!("clap requires --config or --dev"),
    };
    let (config, resolved) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("hearth: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hearth: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let agent = match Agent::start(config, resolved).await {
            Ok(agent) => agent,
            Err(error) => {
                eprintln!("hearth: {error}");
                return ExitCode::FAILURE;
            }
        };
        if args.dev {
            eprintln!(
                "hearth: dev agent running. Try:\n  dig @127.0.0.1 -p {} www.hearth.test\n  hearth members",
                agent.dns_addr.port()
            );
            let restarted = hearth_agent::dev::take_stopped_vms(agent.data_dir());
            if !restarted.is_empty() {
                eprintln!(
                    "hearth: starting again the VMs the last dev agent stopped: {}",
                    restarted.join(", ")
                );
            }
        }
        let shutdown = agent.shutdown_token();
        let mut hangup = signal_stream(tokio::signal::unix::SignalKind::hangup());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = termination_signal() => {
                    tracing::info!("leaving the cluster");
                    if tokio::time::timeout(std::time::Duration::from_secs(5), agent.leave()).await.is_err() {
                        tracing::warn!("leave did not finish in 5s; stopping anyway");
                        shutdown.cancel();
                    }
                    break;
                }
                Some(()) = recv_signal(&mut hangup) => reload(&agent, args.config.as_deref()).await,
            }
        }
        let (data_dir, vm_names) = (agent.data_dir().to_owned(), agent.vm_names());
        agent.wait().await;
        // Trying hearth leaves nothing behind: the dev agent's VMs stop with it (a real
        // worker's VMs outlive its agent), once its host loop can no longer restart them.
        if args.dev {
            for vm in hearth_agent::dev::stop_vms(&data_dir, &vm_names).await {
                eprintln!("hearth: stopped VM {vm}; the next `hearth agent --dev` starts it again");
            }
        }
        ExitCode::SUCCESS
    })
}

fn signal_stream(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).ok()
}

async fn recv_signal(stream: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP: re-read the cluster secrets (key rotation without a restart).
async fn reload(agent: &Agent, config: Option<&std::path::Path>) {
    let Some(path) = config else {
        tracing::info!("SIGHUP ignored: the dev agent has no config file");
        return;
    };
    match agent.reload_secrets(path).await {
        Ok(n_keys) => tracing::info!(n_keys, "SIGHUP: cluster secrets reloaded"),
        Err(error) => tracing::error!("SIGHUP: keeping the current secrets: {error}"),
    }
}

async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    // Colours only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn client_command(
    args: &ClientArgs,
    command: fn(&ApiClient, bool) -> Result<(), ClientError>,
) -> ExitCode {
    with_client(args, command)
}

pub(crate) fn with_client(
    args: &ClientArgs,
    command: impl FnOnce(&ApiClient, bool) -> Result<(), ClientError>,
) -> ExitCode {
    let client = match ApiClient::new(args) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("hearth: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command(&client, args.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Usage(message)) => {
            eprintln!("hearth: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            eprintln!("hearth: {error}");
            ExitCode::FAILURE
        }
    }
}

fn members(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let rows: Vec<MemberRow> = client.get("/v1/members")?;
    if json {
        print_json(&rows);
    } else {
        let table = rows.iter().map(|m| {
            let roles: Vec<&str> = m.roles.iter().map(|r| r.as_str()).collect();
            vec![
                m.name.clone(),
                m.address.to_string(),
                m.state.to_string(),
                roles.join(","),
            ]
        });
        print_table(&["NAME", "ADDRESS", "STATE", "ROLES"], table);
    }
    Ok(())
}

fn services(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let rows: Vec<ServiceRow> = client.get("/v1/services")?;
    if json {
        print_json(&rows);
    } else {
        let table = rows.iter().map(|s| {
            vec![
                s.service.clone(),
                s.node.clone(),
                s.address.to_string(),
                s.status.to_string(),
                s.node_state.to_string(),
            ]
        });
        print_table(
            &["SERVICE", "NODE", "ADDRESS", "CHECK", "NODE STATE"],
            table,
        );
    }
    Ok(())
}

fn leave(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let answer: serde_json::Value = client.post("/v1/leave")?;
    if json {
        print_json(&answer);
    } else {
        println!("left the cluster; the agent is stopping");
    }
    Ok(())
}
