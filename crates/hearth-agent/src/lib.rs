//! The hearth agent: reads the config, binds its sockets, and runs membership, health
//! checks, DNS, event handlers and the API until it is told to stop.

pub mod api;
pub mod auth;
pub mod backup_schedule;
pub mod checks;
pub mod cluster_events;
pub mod config;
pub mod dev;
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod host_metrics;
pub mod http;
pub mod invoice_mail;
pub mod listener;
pub mod login_limit;
pub mod mail;
pub mod metering;
pub mod metrics;
pub mod reach;
pub mod services;
pub mod state_backups;
pub mod ticks;
pub mod uptime;
pub mod vm_stats;
pub mod web;
pub mod webhook;

pub(crate) use hearth_compute::unix_ms;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use hearth_dns::{DnsMetrics, Zone};
use hearth_membership::{Keyring, Membership, MembershipConfig};
use hearth_state::network::SharedKeyring;
use hearth_state::node::{StartStateError, StateConfig, StateNode};
use hearth_types::{NodeMeta, Role};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Resolved};

/// Why the agent could not start. Each message names the key or path to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartAgentError {
    #[error("{key} {addr}: cannot listen: {source}{hint}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("api_token_file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dns.zone: {0}")]
    Zone(String),
    #[error("{0}")]
    Membership(#[from] hearth_membership::StartError),
    #[error("{0}")]
    State(#[from] StartStateError),
    #[error("compute: {0}")]
    Compute(String),
}

/// The VM driver of a worker, as `[compute]` says.
fn worker_driver(
    config: &Config,
    resolved: &Resolved,
) -> Result<hearth_qemu::fake::VmDriver, StartAgentError> {
    use hearth_qemu::accel::{self, Accel};
    use hearth_qemu::driver::{Driver, Launcher, Network};
    use hearth_qemu::fake::{FakeDriver, VmDriver};
    let root = config.data_dir.join("vms");
    std::fs::create_dir_all(&root).map_err(|source| StartAgentError::DataDir {
        path: root.clone(),
        source,
    })?;
    if config.compute.driver == "fake" {
        tracing::warn!("compute.driver = \"fake\": VMs only pretend to run");
        return Ok(VmDriver::Fake(FakeDriver::new(root)));
    }
    let accel = match config.compute.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => {
            let (accel, reason) = accel::detect();
            tracing::info!(%accel, %reason, "QEMU accelerator");
            accel
        }
    };
    let network = match config.compute.network.strip_prefix("bridge:") {
        Some(bridge) => Network::Bridge(bridge.to_owned()),
        None => Network::User,
    };
    let launcher = Launcher::detect();
    tracing::info!(
        ?launcher,
        "QEMU launcher (a systemd scope per VM keeps VMs alive across agent restarts)"
    );
    Ok(VmDriver::Qemu(
        Driver::new(root, accel, network)
            .with_launcher(launcher)
            .with_ceph(resolved.ceph.clone()),
    ))
}

/// What a worker offers: `[compute]`'s figures, else the machine's.
fn worker_capacity(
    section: &config::ComputeSection,
    ceph: bool,
) -> hearth_types::compute::Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1024, |kib| (kib / 1024).saturating_sub(1024).max(256));
    hearth_types::compute::Capacity {
        vcpus: section.vcpus.unwrap_or(cpus),
        memory_mib: section.memory_mib.unwrap_or(memory_mib),
        disk_gib: section.disk_gib,
        live_migration: section.driver == "qemu",
        rbd: ceph,
    }
}

/// A running agent.
pub struct Agent {
    pub api_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    membership: Membership,
    state_keyring: SharedKeyring,
    /// The replicated state, on nodes that hold it.
    state: Option<hearth_state::node::StateNode>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

fn bind_error(
    key: &'static str,
    addr: SocketAddr,
) -> impl FnOnce(std::io::Error) -> StartAgentError {
    move |source| {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            std::io::ErrorKind::AddrInUse => " (another program uses it; pick another port)",
            _ => "",
        };
        StartAgentError::Bind {
            key,
            addr,
            source,
            hint,
        }
    }
}

impl Agent {
    /// Binds every socket, then starts membership, the replicated state (on servers and
    /// witnesses), compute, checks, handlers, DNS and the API, in that order.
    pub async fn start(config: Config, resolved: Resolved) -> Result<Agent, StartAgentError> {
        let token = prepare_data_dir(&config)?;
        let sockets = Sockets::bind(&config).await?;
        let rpc_addr = sockets
            .rpc
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| SocketAddr::new(resolved.advertise, a.port()));
        let gossip_addr = local_addr(&sockets.gossip, config.gossip_addr);
        let dns_addr = sockets.dns_udp.local_addr().unwrap_or(config.dns_addr);
        let api_addr = sockets.api.local_addr().unwrap_or(config.api_addr);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let meta = node_meta(&config, &resolved, gossip_addr, rpc_addr);
        let state_keyring: SharedKeyring = Arc::new(std::sync::RwLock::new(Arc::new(keyring(
            &config, &resolved,
        ))));
        let (membership, events_rx) = start_membership(
            &config,
            &resolved,
            &meta,
            sockets.gossip,
            &shutdown,
            &mut tasks,
        )?;
        let driver = match config.is_worker() {
            true => Some(Arc::new(worker_driver(&config, &resolved)?)),
            false => None,
        };
        let state = match (sockets.rpc, rpc_addr) {
            (Some(listener), Some(rpc_advertise)) => {
                let state = start_state(
                    &config,
                    (listener, rpc_advertise),
                    driver.as_ref(),
                    &state_keyring,
                    &membership,
                    &shutdown,
                    &mut tasks,
                )
                .await?;
                let on = (&config, resolved.webhook.as_ref(), resolved.smtp.as_ref());
                spawn_state_tasks(&state, &membership, meta, on, &shutdown, &mut tasks);
                Some(state)
            }
            _ => None,
        };
        let started = Started {
            membership,
            state,
            driver,
            shutdown,
        };
        let api_state = spawn_work(
            &config,
            &resolved,
            &started,
            events_rx,
            (sockets.dns_udp, sockets.dns_tcp),
            token,
            &mut tasks,
        )?;
        let limit = api_state.api_connections.clone();
        let router = http::router(api_state);
        let api = listener::LimitedListener::new(sockets.api, limit);
        serve_api(api, router, &started.shutdown, &mut tasks);
        tracing::info!(%gossip_addr, %dns_addr, %api_addr, node = %config.node_name, "agent started");
        Ok(Agent {
            api_addr,
            dns_addr,
            gossip_addr,
            membership: started.membership,
            state_keyring,
            state: started.state,
            data_dir: config.data_dir.clone(),
            shutdown: started.shutdown,
            tasks,
        })
    }

    /// Re-reads the secrets from `config_path` and swaps the keyring, so the cluster secret
    /// rotates without a restart. Other changes in the file need a restart and are ignored.
    pub async fn reload_secrets(&self, config_path: &Path) -> Result<usize, config::ConfigError> {
        let (config, resolved) = Config::load(config_path)?;
        let for_gossip = keyring(&config, &resolved);
        let n_keys = for_gossip.len();
        self.membership.set_keyring(for_gossip).await;
        let for_state = keyring(&config, &resolved);
        *self
            .state_keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(for_state);
        Ok(n_keys)
    }

    /// A token that stops the agent when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Leaves the cluster gracefully, then stops.
    pub async fn leave(&self) {
        self.membership.leave().await;
        self.shutdown.cancel();
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The names of the VMs in this node's copy of the desired state, by id.
    pub fn vm_names(&self) -> std::collections::BTreeMap<String, String> {
        self.state.as_ref().map_or_else(Default::default, |state| {
            let desired = state.reader().current();
            desired
                .compute
                .vms
                .values()
                .map(|vm| (vm.value.id.clone(), vm.value.request.name.clone()))
                .collect()
        })
    }

    /// Waits until the agent has been stopped and every task has ended.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Makes the data directory and reads (or makes) the API token in it. The directory, and
/// those of the state and the VMs in it, are the agent user's alone (mode 0700); so is
/// everything the agent and its QEMUs make from now on (umask 077: a VM's directory 0700,
/// its disk, console and sockets 0600).
fn prepare_data_dir(config: &Config) -> Result<String, StartAgentError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for dir in [
        config.data_dir.clone(),
        config.data_dir.join("state"),
        config.data_dir.join("vms"),
    ] {
        let wrap = |source| StartAgentError::DataDir {
            path: dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(wrap)?;
        let mode = std::fs::metadata(&dir).map_err(wrap)?.permissions().mode();
        if mode & 0o1000 != 0 {
            // A shared directory such as /tmp: never made private by hearth.
            return Err(wrap(std::io::Error::other(
                "is a shared directory (sticky bit, like /tmp); name a directory of hearth's own",
            )));
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap)?;
    }
    load_or_create_token(&config.token_path())
}

/// What this node gossips about itself at start.
fn node_meta(
    config: &Config,
    resolved: &Resolved,
    gossip_addr: SocketAddr,
    rpc_addr: Option<SocketAddr>,
) -> NodeMeta {
    NodeMeta {
        name: config.node_name.clone(),
        gossip_addr: SocketAddr::new(resolved.advertise, gossip_addr.port()),
        address: resolved.advertise,
        roles: config.roles.clone(),
        tags: tags_with_version(&config.tags),
        rpc_addr,
        in_group: false,
    }
}

/// The tag every node gossips with its release (`version`, over any the config set), so a
/// mixed cluster shows in `hearth members --json` and `hearth doctor`. Beside it goes the
/// state level it reads (`hearth_state::model::LEVEL_TAG`), which holds back new kinds of
/// writes until every node can read them.
pub const VERSION_TAG: &str = "version";

fn tags_with_version(
    tags: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut tags = tags.clone();
    tags.insert(VERSION_TAG.into(), env!("CARGO_PKG_VERSION").into());
    tags.insert(
        hearth_state::model::LEVEL_TAG.into(),
        hearth_state::model::STATE_LEVEL.to_string(),
    );
    tags
}

/// What is running once membership and the state node are up.
struct Started {
    membership: Membership,
    state: Option<StateNode>,
    /// A worker's VM driver, shared by its host loop and the files it serves its peers.
    driver: Option<Arc<hearth_qemu::fake::VmDriver>>,
    shutdown: CancellationToken,
}

/// Starts compute, the service checks, the event handlers and DNS, and returns what the API
/// shares with them.
fn spawn_work(
    config: &Config,
    resolved: &Resolved,
    started: &Started,
    events_rx: mpsc::Receiver<hearth_types::ClusterEvent>,
    dns_sockets: (UdpSocket, TcpListener),
    token: String,
    tasks: &mut JoinSet<()>,
) -> Result<api::ApiState, StartAgentError> {
    let Started {
        membership,
        state,
        driver,
        shutdown,
    } = started;
    let compute_metrics = Arc::new(hearth_compute::ComputeMetrics::default());
    let blobs = hearth_compute::blobs::BlobStore::new(config.data_dir.join("images"));
    spawn_compute(
        config,
        resolved,
        state.as_ref(),
        driver.as_ref(),
        &blobs,
        &compute_metrics,
        shutdown,
        tasks,
    );
    let instances = spawn_services(
        config,
        resolved,
        state.as_ref(),
        membership,
        shutdown,
        tasks,
    );
    let handler_metrics = spawn_handlers(config, state.as_ref(), events_rx, shutdown, tasks);
    let dns_metrics = Arc::new(DnsMetrics::default());
    tasks.spawn(reach::watch(
        membership.clone(),
        config.dns_addr.port(),
        config.dns.zone.clone(),
        shutdown.clone(),
    ));
    spawn_dns(
        config,
        resolved,
        state.as_ref(),
        membership,
        dns_sockets,
        &dns_metrics,
        shutdown,
        tasks,
    )?;
    Ok(api::ApiState {
        token: token.into(),
        membership: membership.clone(),
        instances,
        dns_metrics,
        handler_metrics,
        state: state.clone(),
        blobs,
        compute_metrics,
        vms_dir: config.data_dir.join("vms"),
        shutdown: shutdown.clone(),
        mail: resolved.smtp.clone().map(Arc::new),
        logins: Arc::new(login_limit::Logins::new(config.trusted_proxies.clone())),
        audit: Default::default(),
        secret_files: secret_files(config),
        max_token_secs: config.max_token_lifetime.map(|d| d.as_secs().max(1)),
        worker_only: worker_only(config),
        api_connections: hearth_types::limits::ConnLimit::with_exempt(
            listener::MAX_CONNECTIONS,
            listener::MAX_PER_CLIENT,
            config.trusted_proxies.clone(),
        ),
        dns_origin: config.dns.zone.as_str().into(),
        verify_resolver: config.dns.verify_resolver.unwrap_or_else(system_resolver),
    })
}

/// Whether this node is a worker only (neither server nor witness).
fn worker_only(config: &Config) -> bool {
    !config
        .roles
        .iter()
        .any(|r| matches!(r, hearth_types::Role::Server | hearth_types::Role::Witness))
}

/// The first `nameserver` of /etc/resolv.conf on port 53; 127.0.0.1:53 without one.
fn system_resolver() -> std::net::SocketAddr {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let first = text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<std::net::IpAddr>().ok())
            .flatten()
    });
    std::net::SocketAddr::new(first.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), 53)
}

/// The files holding the node's secrets by key: the config's, and the API token.
fn secret_files(config: &Config) -> Arc<[(&'static str, PathBuf)]> {
    let named = config.secret_files().into_iter();
    let mut files: Vec<_> = named.map(|(key, path)| (key, path.to_owned())).collect();
    files.push(("api_token_file", config.token_path()));
    files.into()
}

/// The sockets an agent listens on, bound before anything starts, so that a port in use
/// fails the start with the key at fault.
struct Sockets {
    gossip: UdpSocket,
    dns_udp: UdpSocket,
    dns_tcp: TcpListener,
    api: TcpListener,
    /// Raft RPC, on nodes that hold the replicated state.
    rpc: Option<TcpListener>,
}

impl Sockets {
    async fn bind(config: &Config) -> Result<Sockets, StartAgentError> {
        let gossip = UdpSocket::bind(config.gossip_addr)
            .await
            .map_err(bind_error("gossip_addr", config.gossip_addr))?;
        let dns_udp = UdpSocket::bind(config.dns_addr)
            .await
            .map_err(bind_error("dns_addr", config.dns_addr))?;
        let dns_tcp = TcpListener::bind(config.dns_addr)
            .await
            .map_err(bind_error("dns_addr", config.dns_addr))?;
        let api = TcpListener::bind(config.api_addr)
            .await
            .map_err(bind_error("api_addr", config.api_addr))?;
        let rpc = match config.holds_state() {
            true => Some(
                TcpListener::bind(config.rpc_addr)
                    .await
                    .map_err(bind_error("rpc_addr", config.rpc_addr))?,
            ),
            false => None,
        };
        Ok(Sockets {
            gossip,
            dns_udp,
            dns_tcp,
            api,
            rpc,
        })
    }
}

/// The tasks of a node that holds the replicated state: cluster events, uptime samples, the
/// leader's placement, closing months and sending invoices to the webhook and to members by
/// email (`on`: the config, its webhook and its `[smtp]`), and announcing its group
/// membership by gossip.
fn spawn_state_tasks(
    state: &StateNode,
    membership: &Membership,
    meta: NodeMeta,
    (config, webhook, smtp): (
        &Config,
        Option<&config::Webhook>,
        Option<&mail::MailSettings>,
    ),
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if let Some(smtp) = smtp {
        tasks.spawn(invoice_mail::deliver(
            state.clone(),
            Arc::new(smtp.clone()),
            shutdown.clone(),
        ));
    }
    if let Some(webhook) = webhook {
        tasks.spawn(webhook::deliver(
            state.clone(),
            webhook.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(backup_schedule::run(state.clone(), shutdown.clone()));
    tasks.spawn(state_backups::run(
        state.clone(),
        config.data_dir.clone(),
        config.state.backup_interval,
        shutdown.clone(),
    ));
    tasks.spawn(uptime::sample(
        state.clone(),
        membership.views(),
        config.state.uptime_interval,
        shutdown.clone(),
    ));
    tasks.spawn(metering::close_months(
        state.clone(),
        config.billing.close_after,
        config
            .billing
            .meter_interval
            .max(std::time::Duration::from_secs(1)),
        shutdown.clone(),
    ));
    tasks.spawn(cluster_events::observe(
        state.clone(),
        membership.views(),
        shutdown.clone(),
    ));
    tasks.spawn(hearth_compute::leader::run(
        state.clone(),
        membership.views(),
        shutdown.clone(),
    ));
    tasks.spawn(announce_group_membership(
        state.clone(),
        membership.clone(),
        meta,
        shutdown.clone(),
    ));
}

/// VMs: a worker's host loop, a server's copies of image files, and every state holder's
/// image file collector.
#[allow(clippy::too_many_arguments)]
fn spawn_compute(
    config: &Config,
    resolved: &Resolved,
    state: Option<&StateNode>,
    driver: Option<&Arc<hearth_qemu::fake::VmDriver>>,
    blobs: &hearth_compute::blobs::BlobStore,
    metrics: &Arc<hearth_compute::ComputeMetrics>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let Some(state) = state else {
        return;
    };
    if let Some(driver) = driver {
        tasks.spawn(metering::run(
            metering::Metering {
                host: config.node_name.clone(),
                vms_dir: driver.root().to_path_buf(),
                file: config.data_dir.join("metering.json"),
                state: state.clone(),
                period: config.billing.meter_period,
                every: config.billing.meter_interval,
                metrics: metrics.clone(),
            },
            shutdown.clone(),
        ));
        tasks.spawn(vm_stats::sample(
            driver.root().to_path_buf(),
            config.compute.stats_interval,
            shutdown.clone(),
        ));
        tasks.spawn(hearth_compute::host::run(
            hearth_compute::host::Host {
                name: config.node_name.clone(),
                capacity: worker_capacity(&config.compute, resolved.ceph.is_some()),
                driver: driver.clone(),
                blobs: blobs.clone(),
                state: state.clone(),
                metrics: metrics.clone(),
                move_key: keyring(config, resolved).derive(b"hearth live migration v1"),
                advertise: resolved.advertise,
                move_speed: config
                    .compute
                    .migration_mib_per_sec
                    .map_or(0, |mib| mib.saturating_mul(1 << 20)),
                lease_timeout: std::time::Duration::from_secs(config.compute.lease_secs),
                lease: metrics.lease.clone(),
                watchdog: config.compute.watchdog.clone(),
            },
            shutdown.clone(),
        ));
    }
    if config.roles.contains(&Role::Server) {
        tasks.spawn(hearth_compute::images::replicate_images(
            state.clone(),
            blobs.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(hearth_compute::images::collect_image_garbage(
        state.clone(),
        blobs.clone(),
        config.data_dir.join("vms"),
        shutdown.clone(),
    ));
}

/// The cluster keyring from the config's secrets.
fn keyring(config: &Config, resolved: &Resolved) -> Keyring {
    resolved.keys.keyring(&config.cluster)
}

/// The gossip layer on its socket; returns its handle and its stream of cluster events.
fn start_membership(
    config: &Config,
    resolved: &Resolved,
    meta: &NodeMeta,
    gossip: UdpSocket,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Membership, mpsc::Receiver<hearth_types::ClusterEvent>), StartAgentError> {
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (membership, membership_task) = Membership::start(
        MembershipConfig {
            cluster: config.cluster.clone(),
            keyring: keyring(config, resolved),
            meta: meta.clone(),
            join: resolved.join.clone(),
            timing: config.gossip_timing(),
            services: Vec::new(),
        },
        gossip,
        events_tx,
        shutdown.clone(),
    )?;
    tasks.spawn(async move {
        let _ = membership_task.await;
    });
    Ok((membership, events_rx))
}

/// The replicated state of a server or witness, on its Raft RPC listener.
async fn start_state(
    config: &Config,
    (listener, rpc_advertise): (TcpListener, SocketAddr),
    driver: Option<&Arc<hearth_qemu::fake::VmDriver>>,
    keyring: &SharedKeyring,
    membership: &Membership,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<StateNode, StartAgentError> {
    let state_config = StateConfig {
        node_name: config.node_name.clone(),
        data_dir: config.data_dir.join("state"),
        rpc_advertise,
        bootstrap_expect: config.state.bootstrap_expect,
        replace_voter_after: config.state.replace_voter_after,
        write_timeout: config.state.write_timeout,
        heartbeat: config.state.heartbeat,
        election_timeout: config.state.election_timeout,
        snapshot_every: config.state.snapshot_every,
        files: Some(Arc::new(hearth_compute::files::HostFiles {
            blobs: hearth_compute::blobs::BlobStore::new(config.data_dir.join("images")),
            driver: driver.cloned(),
            consoles: Default::default(),
        })),
    };
    Ok(StateNode::start(
        state_config,
        listener,
        keyring.clone(),
        membership.views(),
        shutdown.clone(),
        tasks,
    )
    .await?)
}

/// The health checks of this node's service instances: the configured ones, and on state
/// holders the cluster-wide services assigned to this node. Returns the instances' shared
/// table.
fn spawn_services(
    config: &Config,
    resolved: &Resolved,
    state: Option<&StateNode>,
    membership: &Membership,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> checks::Instances {
    let wanted = services::wanted_instances(
        &config.service,
        &hearth_types::desired::DesiredState::default(),
        &config.node_name,
        resolved.advertise,
    );
    let (wanted_tx, wanted_rx) = tokio::sync::watch::channel(wanted);
    match state {
        Some(state) => {
            tasks.spawn(follow_desired_services(
                state.reader().subscribe(),
                wanted_tx,
                config.service.clone(),
                config.node_name.clone(),
                resolved.advertise,
                shutdown.clone(),
            ));
        }
        None => {
            // Nothing else will change what this node runs; keep the channel open.
            tasks.spawn(async move {
                let _keep = wanted_tx;
            });
        }
    }
    let instances: checks::Instances = Arc::new(Mutex::new(Default::default()));
    tasks.spawn(services::supervise(
        wanted_rx,
        instances.clone(),
        membership.clone(),
        shutdown.clone(),
    ));
    instances
}

/// The event handlers: node-local ones on every node, cluster-wide ones through the log on
/// state holders. Returns their counters.
fn spawn_handlers(
    config: &Config,
    state: Option<&StateNode>,
    events: mpsc::Receiver<hearth_types::ClusterEvent>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Arc<handlers::HandlerMetrics> {
    let metrics = Arc::new(handlers::HandlerMetrics::default());
    if let Some(state) = state {
        let cluster_handlers = config
            .handler
            .iter()
            .filter(|h| h.scope == config::HandlerScope::Cluster)
            .cloned()
            .collect();
        tasks.spawn(cluster_events::deliver(
            state.clone(),
            config.node_name.clone(),
            cluster_handlers,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(handlers::run_handlers(
        config.node_name.clone(),
        config.handler.clone(),
        events,
        metrics.clone(),
        shutdown.clone(),
    ));
    metrics
}

/// Serves the API, the panel and `/metrics` until shutdown.
fn serve_api(
    listener: listener::LimitedListener,
    router: axum::Router,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        use axum::serve::ListenerExt;
        let served = axum::serve(
            // `tap_io` gives the limited listener the peer address as `ConnectInfo`.
            listener.tap_io(|_| {}),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "API server stopped");
        }
    });
}

/// The authoritative DNS server, and on state holders the pusher to an external primary.
#[allow(clippy::too_many_arguments)]
fn spawn_dns(
    config: &Config,
    resolved: &Resolved,
    state: Option<&StateNode>,
    membership: &Membership,
    (dns_udp, dns_tcp): (UdpSocket, TcpListener),
    dns_metrics: &Arc<DnsMetrics>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), StartAgentError> {
    let origin = hearth_dns::Name::from_ascii(&resolved.zone)
        .map_err(|error| StartAgentError::Zone(error.to_string()))?;
    let zone = Zone::new(origin, config.dns.ttl, config.dns.none_healthy);
    let desired = match state {
        Some(state) => state.reader().subscribe(),
        // Nodes without the replicated state serve gossip names only.
        None => tokio::sync::watch::channel(Arc::default()).1,
    };
    match (state, resolved.dns_push.clone()) {
        (Some(state), Some(push)) => {
            let leader = state.clone();
            tasks.spawn(hearth_dns::push::run_pusher(
                push,
                zone.clone(),
                membership.views(),
                state.reader().subscribe(),
                move || leader.is_leader(),
                dns_metrics.clone(),
                shutdown.clone(),
            ));
        }
        (None, Some(_)) => tracing::warn!(
            "dns.push is ignored: only servers and witnesses (which hold the replicated state) push"
        ),
        (_, None) => {}
    }
    tasks.spawn(hearth_dns::serve(
        zone,
        dns_udp,
        dns_tcp,
        membership.views(),
        desired,
        dns_metrics.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// Recomputes this node's wanted instances whenever the desired state changes.
async fn follow_desired_services(
    mut desired: tokio::sync::watch::Receiver<Arc<hearth_types::desired::DesiredState>>,
    wanted: tokio::sync::watch::Sender<std::collections::BTreeMap<String, services::InstanceDef>>,
    configured: Vec<config::ServiceConfig>,
    node_name: String,
    address: std::net::IpAddr,
    shutdown: CancellationToken,
) {
    loop {
        let current = desired.borrow_and_update().clone();
        let next = services::wanted_instances(&configured, &current, &node_name, address);
        wanted.send_if_modified(|old| {
            let changed = *old != next;
            *old = next;
            changed
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = desired.changed() => if changed.is_err() { return },
        }
    }
}

/// Tells the cluster, once, that this node belongs to the Raft group, so that no other node
/// ever forms a second group.
async fn announce_group_membership(
    state: StateNode,
    membership: Membership,
    mut meta: NodeMeta,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if state.in_group() {
            meta.in_group = true;
            membership.set_meta(meta).await;
            return;
        }
    }
}

fn local_addr(socket: &UdpSocket, fallback: SocketAddr) -> SocketAddr {
    socket.local_addr().unwrap_or(fallback)
}

/// Reads the API token, or creates the file (mode 0600) with a fresh random one.
fn load_or_create_token(path: &Path) -> Result<String, StartAgentError> {
    let wrap = |source| StartAgentError::Token {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(wrap(error)),
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    // The prefix keeps the token from starting with `-`, which a command line would take
    // for an option (`--token -x...`).
    let token = format!(
        "hnt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(wrap)?;
    }
    write_private(path, &token).map_err(wrap)?;
    Ok(token)
}

/// Writes a file only its owner can read, atomically (temporary file, then rename).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
