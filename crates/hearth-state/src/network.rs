//! Raft RPC between servers over sealed TCP streams (see `hearth_membership::stream`):
//! the openraft network client, the server that feeds requests to the local Raft, and the
//! two application RPCs: a write forwarded to the leader, and a linearizable read index.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hearth_membership::Keyring;
use hearth_membership::stream::{SealedStream, StreamError};
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
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

use crate::model::{Command, Outcome};
use crate::types::{Raft, RaftNode, TypeConfig};

/// The keyring shared with the gossip layer; replaced on SIGHUP.
pub type SharedKeyring = Arc<RwLock<Arc<Keyring>>>;

fn current_keyring(shared: &SharedKeyring) -> Arc<Keyring> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a committed write returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub index: u64,
    pub outcome: Outcome,
}

/// Why a write or a linearizable read could not be done. Serializable: it crosses the wire
/// from the leader back to the node that forwarded the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<RaftNode> },
    #[error("the replicated state is not formed yet: {0}")]
    NotFormed(String),
    #[error("cannot reach the leader: {0}")]
    Unreachable(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Write(Command),
    /// Asks the leader to confirm its leadership and return the index to read at.
    ReadIndex,
    /// Asks a node for its own view of the group (role, applied index).
    Status,
    /// Asks for up to [`BLOB_CHUNK`] bytes of a verified image file, from `offset`.
    FetchBlob {
        sha256: String,
        offset: u64,
    },
    /// Asks the VM's host for up to [`CONSOLE_CHUNK`] bytes of its serial console log.
    Console {
        vm: String,
        /// From this byte; `None` is the last [`CONSOLE_CHUNK`] bytes.
        offset: Option<u64>,
    },
}

/// The most bytes of a console log one answer carries.
pub const CONSOLE_CHUNK: u64 = 64 * 1024;

/// Part of a VM's serial console log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleChunk {
    /// Where `text` starts in the log.
    pub offset: u64,
    /// Where the next read starts.
    pub next: u64,
    /// The log's size now.
    pub total: u64,
    /// The bytes, as UTF-8 (invalid sequences replaced).
    pub text: String,
}

/// Reads part of `dir/VM/console.log`. The id is checked, so a request cannot reach outside
/// `dir`. A VM with no log yet has an empty one.
pub async fn read_console(
    dir: Option<&std::path::Path>,
    vm: &str,
    offset: Option<u64>,
) -> Result<ConsoleChunk, String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let valid = !vm.is_empty()
        && vm.len() <= 64
        && vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!("`{vm}` is not a VM id"));
    }
    let dir = dir.ok_or("this node runs no VMs")?;
    let path = dir.join(vm).join("console.log");
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleChunk {
                offset: 0,
                next: 0,
                total: 0,
                text: String::new(),
            });
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let total = file.metadata().await.map_err(|e| e.to_string())?.len();
    let from = offset
        .unwrap_or(total.saturating_sub(CONSOLE_CHUNK))
        .min(total);
    file.seek(std::io::SeekFrom::Start(from))
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(CONSOLE_CHUNK)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ConsoleChunk {
        offset: from,
        next: from + bytes.len() as u64,
        total,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The most bytes one `FetchBlob` answer carries.
pub const BLOB_CHUNK: usize = 1 << 20;

/// Part of an image file.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlobChunk {
    /// The whole file's size.
    pub total: u64,
    /// Base64 of the bytes from the requested offset.
    pub data: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Write(Result<WriteResult, StateError>),
    ReadIndex(Result<u64, StateError>),
    Status(crate::node::StateStatus),
    Blob(Result<BlobChunk, String>),
    Console(Result<ConsoleChunk, String>),
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

    async fn connect(&self) -> Result<SealedStream, CallError> {
        let connect = |source| CallError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect)?;
        let keyring = current_keyring(&self.keyring);
        let sealed =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, SealedStream::client(stream, &keyring))
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

/// Turns openraft's write error into ours.
pub fn write_error(error: RaftError<u64, ClientWriteError<u64, RaftNode>>) -> StateError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => StateError::NotLeader {
            leader: forward.leader_node,
        },
        RaftError::APIError(other) => StateError::NoQuorum(other.to_string()),
        RaftError::Fatal(fatal) => StateError::Fatal(fatal.to_string()),
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
    fn status(&self) -> crate::node::StateStatus;
    /// Where this node keeps verified image files, if it serves them.
    fn blob_dir(&self) -> Option<&std::path::Path>;
    /// Where this node keeps its VMs' directories, if it is a worker.
    fn vms_dir(&self) -> Option<&std::path::Path>;
}

/// Reads one chunk of the verified file `sha256` under `dir`. The name is checked to be a
/// hash, so a request can never reach outside `dir`.
async fn read_blob_chunk(
    dir: Option<&std::path::Path>,
    sha256: &str,
    offset: u64,
) -> Result<BlobChunk, String> {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let valid = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let dir = dir.ok_or("this node keeps no image files")?;
    if !valid {
        return Err("not a sha256".into());
    }
    let mut file = tokio::fs::File::open(dir.join(sha256))
        .await
        .map_err(|_| format!("no copy of {sha256} here"))?;
    let total = file.metadata().await.map_err(|e| e.to_string())?.len();
    file.seek(std::io::SeekFrom::Start(offset.min(total)))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; BLOB_CHUNK.min((total.saturating_sub(offset)) as usize)];
    file.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(BlobChunk {
        total,
        data: base64::engine::general_purpose::STANDARD.encode(&buf),
    })
}

/// Accepts sealed connections and answers their requests until `shutdown`.
pub async fn serve<A: Application>(
    listener: TcpListener,
    raft: Raft,
    app: A,
    keyring: SharedKeyring,
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
        let (raft, app, keyring, shutdown) =
            (raft.clone(), app.clone(), keyring.clone(), shutdown.clone());
        connections.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, raft, app, keyring) => {
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
) -> Result<(), CallError> {
    let keyring = current_keyring(&keyring);
    let mut conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, SealedStream::server(stream, &keyring))
        .await
        .map_err(|_| CallError::Timeout)??;
    loop {
        let request: RpcRequest = serde_json::from_slice(&conn.recv().await?)?;
        let response = match request {
            RpcRequest::AppendEntries(rpc) => {
                RpcResponse::AppendEntries(raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
            RpcRequest::InstallSnapshot(rpc) => {
                RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            RpcRequest::Write(command) => RpcResponse::Write(app.write(command).await),
            RpcRequest::ReadIndex => RpcResponse::ReadIndex(app.read_index().await),
            RpcRequest::Status => RpcResponse::Status(app.status()),
            RpcRequest::FetchBlob { sha256, offset } => {
                RpcResponse::Blob(read_blob_chunk(app.blob_dir(), &sha256, offset).await)
            }
            RpcRequest::Console { vm, offset } => {
                RpcResponse::Console(read_console(app.vms_dir(), &vm, offset).await)
            }
        };
        conn.send(&serde_json::to_vec(&response)?).await?;
    }
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
                    let Ok(mut conn) = SealedStream::server(stream, &keys).await else {
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
