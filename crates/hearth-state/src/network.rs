//! Raft RPC between servers over sealed TCP streams (see `hearth_membership::stream`):
//! the openraft network client, the server that feeds requests to the local Raft, and the
//! two application RPCs: a write forwarded to the leader, and a linearizable read index.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hearth_membership::Keyring;
use hearth_membership::stream::{SealedStream, StreamError, Tier};
use hearth_types::limits::{ConnLimit, ConnSlot};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::files::{
    BlobChunk, ConsoleAttach, ConsoleChunk, ConsoleEvent, ConsoleSession, DiskChunk, FileError,
    PeerFiles,
};
use crate::model::Command;
use crate::reply::StateStatus;
use crate::types::{Raft, RaftNode, TypeConfig};

pub use crate::reply::{StateError, WriteResult, write_error};

/// The keyring shared with the gossip layer; replaced on SIGHUP.
pub type SharedKeyring = Arc<RwLock<Arc<Keyring>>>;

pub(crate) fn current_keyring(shared: &SharedKeyring) -> Arc<Keyring> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their handshake (whose sender has proved nothing yet): in all, and
/// from one address. Beyond them a new connection is closed at once.
pub const MAX_HANDSHAKING: usize = 64;
pub const MAX_HANDSHAKING_PER_CLIENT: usize = 16;
/// Connections past the handshake, whose peers hold the cluster secret.
pub const MAX_ESTABLISHED: usize = 1024;

/// The caps on one node's RPC connections, and how many they refused.
#[derive(Debug, Clone)]
pub struct RpcLimits {
    handshaking: Arc<ConnLimit>,
    established: Arc<ConnLimit>,
}

impl Default for RpcLimits {
    fn default() -> RpcLimits {
        RpcLimits {
            handshaking: ConnLimit::new(MAX_HANDSHAKING, MAX_HANDSHAKING_PER_CLIENT),
            established: ConnLimit::new(MAX_ESTABLISHED, MAX_ESTABLISHED),
        }
    }
}

impl RpcLimits {
    /// Connections closed at once for being over a cap.
    pub fn refused(&self) -> u64 {
        self.handshaking.refused() + self.established.refused()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader (boxed: a command is the largest request).
    Write(Box<Command>),
    /// Asks the leader to confirm its leadership and return the index to read at.
    ReadIndex,
    /// Asks a node for its own view of the group (role, applied index).
    Status,
    /// Asks for up to [`BLOB_CHUNK`](crate::files::BLOB_CHUNK) bytes of a verified image file, from `offset`.
    FetchBlob {
        sha256: String,
        offset: u64,
    },
    /// Asks the VM's host for up to [`CONSOLE_CHUNK`](crate::files::CONSOLE_CHUNK) bytes of its serial console log.
    Console {
        vm: String,
        /// From this byte; `None` is the last [`CONSOLE_CHUNK`](crate::files::CONSOLE_CHUNK) bytes.
        offset: Option<u64>,
    },
    /// Asks a VM's source host for part of its stopped disk, for a move.
    Disk {
        vm: String,
        generation: u64,
        offset: u64,
    },
    /// Asks the VM's host for its recent load.
    VmStats {
        vm: String,
    },
    /// Attaches to the serial console of a VM the peer runs. After an `Ok` answer the
    /// connection carries the session: [`ConsoleFrame`]s to the caller, keystrokes (JSON
    /// byte arrays) from it, until either side closes.
    ConsoleAttach(ConsoleAttach),
}

/// What the host sends on an attached console connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum ConsoleFrame {
    Event(ConsoleEvent),
    /// Sent when nothing else was for [`CONSOLE_KEEPALIVE`], so a caller whose host went
    /// away finds out.
    Keepalive,
}

/// How often an idle console connection says it is still there.
pub const CONSOLE_KEEPALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Write(Result<WriteResult, StateError>),
    ReadIndex(Result<u64, StateError>),
    Status(StateStatus),
    Blob(Result<BlobChunk, FileError>),
    Console(Result<ConsoleChunk, FileError>),
    Disk(Result<DiskChunk, FileError>),
    VmStats(Box<Result<hearth_types::vmstats::VmHistory, FileError>>),
    ConsoleAttach(Result<(), FileError>),
}

/// One connection to one peer, reopened when it breaks.
pub struct PeerClient {
    addr: String,
    keyring: SharedKeyring,
    conn: Option<SealedStream>,
    /// Set from sending a request until its answer is read. Still set when a call starts
    /// means the previous call was cancelled midway (a caller's timeout dropped its future,
    /// as openraft's do): its answer may still be on the way, and would be taken for this
    /// call's. The connection is then dropped and a fresh one opened.
    in_flight: bool,
}

/// Why one RPC failed before any answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("timed out")]
    Timeout,
    #[error("undecodable message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("connection refused: {0}")]
    Refused(&'static str),
}

impl PeerClient {
    pub fn new(addr: String, keyring: SharedKeyring) -> Self {
        PeerClient {
            addr,
            keyring,
            conn: None,
            in_flight: false,
        }
    }

    /// The peer's RPC address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits for its answer, within `timeout`.
    pub async fn call(
        &mut self,
        request: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        let result = tokio::time::timeout(timeout, self.call_inner(request))
            .await
            .unwrap_or(Err(CallError::Timeout));
        if result.is_err() {
            // The stream's counters may be out of step after a failure: start afresh.
            self.conn = None;
        }
        result
    }

    async fn call_inner(&mut self, request: &RpcRequest) -> Result<RpcResponse, CallError> {
        if self.in_flight {
            self.conn = None;
            self.in_flight = false;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().ok_or(CallError::Timeout)?;
        self.in_flight = true;
        conn.send(&serde_json::to_vec(request)?).await?;
        let answer = conn.recv().await?;
        self.in_flight = false;
        Ok(serde_json::from_slice(&answer)?)
    }

    /// Opens a connection with the server key when this node holds one, else with its
    /// worker identity when it has one, and failing those (the peer is a worker, or of an
    /// older release) with the worker key.
    async fn connect(&self) -> Result<SealedStream, CallError> {
        let keyring = current_keyring(&self.keyring);
        let tiers = [
            (Tier::Full, keyring.holds_servers_key()),
            (Tier::Named, keyring.identity_name().is_some()),
        ];
        for (tier, _) in tiers.into_iter().filter(|(_, held)| *held) {
            match self.connect_as(&keyring, tier).await {
                Ok(sealed) => return Ok(sealed),
                // The peer is not there at all: another key would not reach it either.
                Err(unreachable @ CallError::Connect { .. }) => return Err(unreachable),
                Err(_) => continue,
            }
        }
        self.connect_as(&keyring, Tier::Worker).await
    }

    async fn connect_as(&self, keyring: &Keyring, tier: Tier) -> Result<SealedStream, CallError> {
        let connect = |source| CallError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect)?;
        let sealed = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            SealedStream::client(stream, keyring, tier),
        )
        .await
        .map_err(|_| CallError::Timeout)??;
        Ok(sealed)
    }
}

/// openraft's view of the network: one `PeerClient` per target.
pub struct Network {
    pub keyring: SharedKeyring,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> RaftPeer {
        RaftPeer {
            target,
            client: PeerClient::new(node.rpc_addr.clone(), self.keyring.clone()),
        }
    }
}

pub struct RaftPeer {
    target: u64,
    client: PeerClient,
}

type RaftRpcError<E = openraft::error::Infallible> = RPCError<u64, RaftNode, RaftError<u64, E>>;

fn call_error<E: std::error::Error>(error: CallError) -> RPCError<u64, RaftNode, E> {
    match error {
        CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<u64, RaftNode, E> {
    let error = std::io::Error::other("the peer answered a different RPC");
    RPCError::Network(NetworkError::new(&error))
}

impl RaftPeer {
    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<u64, E>,
    ) -> RPCError<u64, RaftNode, RaftError<u64, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RaftRpcError> {
        let request = RpcRequest::AppendEntries(rpc);
        match self.client.call(&request, option.hard_ttl()).await {
            Ok(RpcResponse::AppendEntries(result)) => result.map_err(|e| self.remote(e)),
            Ok(_) => Err(unexpected()),
            Err(error) => Err(call_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RaftRpcError<InstallSnapshotError>> {
        let request = RpcRequest::InstallSnapshot(rpc);
        match self.client.call(&request, option.hard_ttl()).await {
            Ok(RpcResponse::InstallSnapshot(result)) => result.map_err(|e| self.remote(e)),
            Ok(_) => Err(unexpected()),
            Err(error) => Err(call_error(error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RaftRpcError> {
        let request = RpcRequest::Vote(rpc);
        match self.client.call(&request, option.hard_ttl()).await {
            Ok(RpcResponse::Vote(result)) => result.map_err(|e| self.remote(e)),
            Ok(_) => Err(unexpected()),
            Err(error) => Err(call_error(error)),
        }
    }
}

/// The application side of the server: writes and read indexes, which need more than Raft
/// (a quorum check, a timeout). Implemented by the state node.
pub trait Application: Clone + Send + Sync + 'static {
    fn write(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<WriteResult, StateError>> + Send;
    fn read_index(&self) -> impl std::future::Future<Output = Result<u64, StateError>> + Send;
    fn status(&self) -> StateStatus;
    /// The files this node serves its peers, if any.
    fn files(&self) -> Option<&dyn PeerFiles>;
    /// Whether a worker-key connection is held to what a worker may ask (see
    /// [`worker_may`]): once every live node runs a release that opens server-key
    /// connections, so that an older server's Raft traffic is never refused mid-upgrade.
    fn holds_workers_to_their_part(&self) -> bool;
    /// The members a server recognises a worker's identity for (see `Tier::Named`).
    fn worker_names(&self) -> Vec<String>;
    /// Whether VM `vm` is on host `name`, or moving to it.
    fn vm_is_at(&self, vm: &str, name: &str) -> bool;
}

/// Whether a connection opened with a worker key may make `request` of a node that holds the
/// cluster secret: never a Raft vote, replication or snapshot, and a write only of what a
/// worker reports (`Command::is_a_workers`), about itself (`worker`, the name its identity
/// gave; none, no write). Reads and file chunks are a worker's too. `vm_is_at` tells
/// whether a VM is on a host or moving to it.
pub fn worker_may(
    request: &RpcRequest,
    worker: Option<&str>,
    vm_is_at: impl Fn(&str, &str) -> bool,
) -> Result<(), String> {
    use crate::model::Speaker;
    let command = match request {
        RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::InstallSnapshot(_) => {
            return Err("a worker key takes no part in Raft".into());
        }
        RpcRequest::Write(command) => command,
        _ => return Ok(()),
    };
    let refused = |why: &str| {
        Err(format!(
            "a worker key may not write {}: {why}",
            command.object_key()
        ))
    };
    if !command.is_a_workers() {
        return refused("only a server's may; send it to a server");
    }
    let Some(worker) = worker else {
        return refused("it says not which worker it is (no identity)");
    };
    match command.speaks_for() {
        Some(Speaker::Host(host)) if host == worker => Ok(()),
        Some(Speaker::HostOfVm(vm)) if vm_is_at(vm, worker) => Ok(()),
        _ => refused(&format!("it is not about {worker}")),
    }
}

/// Answers a file request from the node's `PeerFiles`, or says it serves none.
async fn serve_files<A: Application>(app: &A, request: FileRequest) -> RpcResponse {
    let none = |what: &str| FileError::NotServed(format!("this node serves no {what}"));
    match (request, app.files()) {
        (FileRequest::Blob { sha256, offset }, Some(files)) => {
            RpcResponse::Blob(files.blob_chunk(&sha256, offset).await)
        }
        (FileRequest::Blob { .. }, None) => RpcResponse::Blob(Err(none("image files"))),
        (FileRequest::Console { vm, offset }, Some(files)) => {
            RpcResponse::Console(files.console_chunk(&vm, offset).await)
        }
        (FileRequest::Console { .. }, None) => RpcResponse::Console(Err(none("VMs"))),
        (
            FileRequest::Disk {
                vm,
                generation,
                offset,
            },
            Some(files),
        ) => RpcResponse::Disk(files.disk_chunk(&vm, generation, offset).await),
        (FileRequest::Disk { .. }, None) => RpcResponse::Disk(Err(none("VMs"))),
        (FileRequest::VmStats { vm }, Some(files)) => {
            RpcResponse::VmStats(Box::new(files.vm_stats(&vm).await))
        }
        (FileRequest::VmStats { .. }, None) => RpcResponse::VmStats(Box::new(Err(none("VMs")))),
    }
}

/// A request for a file chunk, taken out of `RpcRequest`.
enum FileRequest {
    Blob {
        sha256: String,
        offset: u64,
    },
    Console {
        vm: String,
        offset: Option<u64>,
    },
    Disk {
        vm: String,
        generation: u64,
        offset: u64,
    },
    VmStats {
        vm: String,
    },
}

/// Accepts sealed connections and answers their requests until `shutdown`.
pub async fn serve<A: Application>(
    listener: TcpListener,
    raft: Raft,
    app: A,
    keyring: SharedKeyring,
    limits: RpcLimits,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(handshaking) = limits.handshaking.admit(peer.ip()) else {
            tracing::debug!(%peer, "raft connection refused: too many in their handshake");
            continue;
        };
        let (raft, app, keyring, shutdown, limits) = (
            raft.clone(),
            app.clone(),
            keyring.clone(),
            shutdown.clone(),
            limits.clone(),
        );
        connections.spawn(async move {
            let served = serve_connection(stream, raft, app, keyring, handshaking, &limits);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = served => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "raft connection closed");
                    }
                }
            }
        });
    }
    connections.shutdown().await;
}

async fn serve_connection<A: Application>(
    stream: TcpStream,
    raft: Raft,
    app: A,
    keyring: SharedKeyring,
    handshaking: ConnSlot,
    limits: &RpcLimits,
) -> Result<(), CallError> {
    let keyring = current_keyring(&keyring);
    let peer = stream
        .peer_addr()
        .map_err(|_| CallError::Refused("no peer address"))?
        .ip();
    let workers = match keyring.holds_servers_key() {
        true => app.worker_names(),
        false => Vec::new(),
    };
    let mut conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        SealedStream::server(stream, &keyring, &workers),
    )
    .await
    .map_err(|_| CallError::Timeout)??;
    drop(handshaking);
    let Some(_established) = limits.established.admit(peer) else {
        return Err(CallError::Refused("too many established connections"));
    };
    let held = conn.tier() != Tier::Full && keyring.holds_servers_key();
    let worker = conn.peer_name().map(str::to_owned);
    loop {
        let request: RpcRequest = serde_json::from_slice(&conn.recv().await?)?;
        if held
            && app.holds_workers_to_their_part()
            && let Err(why) = worker_may(&request, worker.as_deref(), |vm, host| {
                app.vm_is_at(vm, host)
            })
        {
            tracing::warn!(%peer, %why, "refused a worker key's request");
            let RpcRequest::Write(_) = request else {
                return Err(CallError::Refused("a worker key takes no part in Raft"));
            };
            let answer = RpcResponse::Write(Err(StateError::Forbidden(why)));
            conn.send(&serde_json::to_vec(&answer)?).await?;
            continue;
        }
        if let RpcRequest::ConsoleAttach(attach) = request {
            let answer = match app.files() {
                Some(files) => files.console_attach(attach).await,
                None => Err(FileError::NotServed("this node runs no VMs".into())),
            };
            let session = match answer {
                Ok(session) => session,
                Err(error) => {
                    let answer = RpcResponse::ConsoleAttach(Err(error));
                    conn.send(&serde_json::to_vec(&answer)?).await?;
                    continue;
                }
            };
            let answer = RpcResponse::ConsoleAttach(Ok(()));
            conn.send(&serde_json::to_vec(&answer)?).await?;
            serve_console(conn, session).await;
            return Ok(());
        }
        let response = respond(&raft, &app, request).await;
        conn.send(&serde_json::to_vec(&response)?).await?;
    }
}

/// The answer to one request (a console attachment is handled before, as it takes over
/// the connection).
async fn respond<A: Application>(raft: &Raft, app: &A, request: RpcRequest) -> RpcResponse {
    match request {
        RpcRequest::AppendEntries(rpc) => {
            RpcResponse::AppendEntries(raft.append_entries(rpc).await)
        }
        RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcRequest::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        RpcRequest::Write(command) => RpcResponse::Write(app.write(*command).await),
        RpcRequest::ReadIndex => RpcResponse::ReadIndex(app.read_index().await),
        RpcRequest::Status => RpcResponse::Status(app.status()),
        RpcRequest::FetchBlob { sha256, offset } => {
            serve_files(app, FileRequest::Blob { sha256, offset }).await
        }
        RpcRequest::Console { vm, offset } => {
            serve_files(app, FileRequest::Console { vm, offset }).await
        }
        RpcRequest::Disk {
            vm,
            generation,
            offset,
        } => {
            let request = FileRequest::Disk {
                vm,
                generation,
                offset,
            };
            serve_files(app, request).await
        }
        RpcRequest::VmStats { vm } => serve_files(app, FileRequest::VmStats { vm }).await,
        RpcRequest::ConsoleAttach(_) => RpcResponse::ConsoleAttach(Err(FileError::NotServed(
            "a console attachment takes a connection of its own".into(),
        ))),
    }
}

/// Carries an attached console session over the connection until either side ends it.
async fn serve_console(conn: SealedStream, session: ConsoleSession) {
    let (mut reader, mut writer) = conn.split();
    let ConsoleSession { mut events, input } = session;
    let to_caller = async move {
        let mut keepalive = tokio::time::interval(CONSOLE_KEEPALIVE);
        loop {
            let frame = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => ConsoleFrame::Event(event),
                    None => break,
                },
                _ = keepalive.tick() => ConsoleFrame::Keepalive,
            };
            let Ok(bytes) = serde_json::to_vec(&frame) else {
                break;
            };
            if writer.send(&bytes).await.is_err() {
                break;
            }
        }
    };
    let from_caller = async move {
        while let Ok(bytes) = reader.recv().await {
            let Ok(keys) = serde_json::from_slice::<Vec<u8>>(&bytes) else {
                break;
            };
            if input.send(keys).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_caller => {}
        _ = from_caller => {}
    }
}

/// Attaches to a console on the peer at `addr`: the session's ends, fed by two tasks that
/// carry it over the connection. A host silent for three keepalives ends it.
pub async fn open_console(
    addr: String,
    keyring: SharedKeyring,
    attach: ConsoleAttach,
) -> Result<ConsoleSession, Result<FileError, CallError>> {
    let mut client = PeerClient::new(addr, keyring);
    let request = RpcRequest::ConsoleAttach(attach);
    match client.call(&request, Duration::from_secs(5)).await {
        Ok(RpcResponse::ConsoleAttach(Ok(()))) => {}
        Ok(RpcResponse::ConsoleAttach(Err(error))) => return Err(Ok(error)),
        Ok(_) => return Err(Err(CallError::Refused("answered another RPC"))),
        Err(error) => return Err(Err(error)),
    }
    let conn = client.conn.take().ok_or(Err(CallError::Timeout))?;
    let (mut reader, mut writer) = conn.split();
    let (events_tx, events) = tokio::sync::mpsc::channel(64);
    let (input, mut input_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        let why = loop {
            let frame = match tokio::time::timeout(3 * CONSOLE_KEEPALIVE, reader.recv()).await {
                Ok(Ok(bytes)) => serde_json::from_slice::<ConsoleFrame>(&bytes),
                Ok(Err(error)) => break format!("the connection to the VM's host broke: {error}"),
                Err(_) => break "the VM's host stopped answering".to_owned(),
            };
            match frame {
                Ok(ConsoleFrame::Event(event)) => {
                    if events_tx.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(ConsoleFrame::Keepalive) if events_tx.is_closed() => return,
                Ok(ConsoleFrame::Keepalive) => {}
                Err(error) => break format!("the VM's host sent an undecodable frame: {error}"),
            }
        };
        let _ = events_tx.send(ConsoleEvent::Closed(why)).await;
    });
    tokio::spawn(async move {
        while let Some(keys) = input_rx.recv().await {
            let Ok(bytes) = serde_json::to_vec(&keys) else {
                break;
            };
            if writer.send(&bytes).await.is_err() {
                break;
            }
        }
    });
    Ok(ConsoleSession { events, input })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_membership::{Keyring, Secret};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Found by the chaos runner: a call cancelled by its caller's timeout (openraft wraps
    /// every RPC in one) left its answer in flight on the connection, and the next call on
    /// that client read it as its own: a stale read index, or an acknowledgement meant for
    /// another write. The next call must open a fresh connection instead.

    #[test]
    fn a_worker_writes_only_its_own_reports() {
        use crate::model::compute::ComputeCommand as C;
        let write = |command| RpcRequest::Write(Box::new(Command::Compute { command }));
        let lease = |host: &str| write(C::RenewLease { host: host.into() });
        let abort = write(C::AbortMigration {
            vm: "vm-1".into(),
            why: "stuck".into(),
        });
        let on_w1 = |vm: &str, host: &str| vm == "vm-1" && host == "w1";
        assert!(worker_may(&lease("w1"), Some("w1"), on_w1).is_ok());
        assert!(worker_may(&lease("w2"), Some("w1"), on_w1).is_err());
        assert!(
            worker_may(&lease("w1"), None, on_w1).is_err(),
            "no identity, no write"
        );
        assert!(worker_may(&abort, Some("w1"), on_w1).is_ok());
        assert!(worker_may(&abort, Some("w2"), on_w1).is_err());
        let drain = RpcRequest::Write(Box::new(Command::SetDrain {
            node: "w1".into(),
            drained: true,
            expect: Default::default(),
        }));
        let why = worker_may(&drain, Some("w1"), on_w1).unwrap_err();
        assert!(why.contains("send it to a server"), "{why}");
        // Reads and file chunks are anyone's with a key; Raft is not.
        assert!(worker_may(&RpcRequest::ReadIndex, None, on_w1).is_ok());
        let status = worker_may(&RpcRequest::Status, None, on_w1);
        assert!(status.is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_call_never_hands_its_answer_to_the_next_one() {
        let keyring: SharedKeyring = Arc::new(RwLock::new(Arc::new(Keyring::new(
            "test",
            &Secret::new([3; hearth_membership::SECRET_LEN]),
            &[],
        ))));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counter = Arc::new(AtomicU64::new(0));
        let (server_keys, served) = (keyring.clone(), counter.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (keys, served) = (current_keyring(&server_keys), served.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = SealedStream::server(stream, &keys, &[]).await else {
                        return;
                    };
                    // Each request is answered with its number among all requests; the
                    // first answer comes late.
                    while conn.recv().await.is_ok() {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == 1 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let answer = serde_json::to_vec(&RpcResponse::ReadIndex(Ok(n))).unwrap();
                        if conn.send(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut client = PeerClient::new(addr, keyring);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            client.call(&RpcRequest::ReadIndex, Duration::from_secs(5)),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "the first call is cut short by its caller"
        );
        let answer = client
            .call(&RpcRequest::ReadIndex, Duration::from_secs(5))
            .await
            .unwrap();
        match answer {
            RpcResponse::ReadIndex(Ok(n)) => assert_eq!(n, 2, "the answer to this request"),
            other => panic!("{other:?}"),
        }
    }
}
