//! The files a node serves its peers over the sealed RPC, as an application interface: image
//! files by hash, VM consoles and recent load by id, and a stopped VM's disk to the host it moves to. The compute layer implements `PeerFiles`; this crate
//! knows no paths.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// The most bytes of a console log one answer carries.
pub const CONSOLE_CHUNK: u64 = 64 * 1024;

/// The most bytes one `FetchBlob` answer carries.
pub const BLOB_CHUNK: usize = 1 << 20;

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

/// Part of an image file.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlobChunk {
    /// The whole file's size.
    pub total: u64,
    /// Base64 of the bytes from the requested offset.
    pub data: String,
}

/// Part of a VM's disk, served to the host it moves to while the VM is stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiskChunk {
    /// The whole file's size.
    pub total: u64,
    /// Base64 of the bytes from the requested offset (at most [`BLOB_CHUNK`]).
    pub data: String,
    /// With the chunk that ends the file: the sha256 of the whole file as it is now, which
    /// the receiver checks its copy against.
    pub sha256: Option<String>,
}

/// Why a node did not serve a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FileError {
    /// The name is not a VM id or not a sha256: it could reach outside the node's files.
    #[error("{0}")]
    BadName(String),
    /// The VM runs, or its disk here is not the generation asked for: it is not served.
    #[error("{0}")]
    NotAtRest(String),
    /// This node keeps no files of that kind (no image store, or no VMs).
    #[error("{0}")]
    NotServed(String),
    /// This node has no copy of the file.
    #[error("{0}")]
    NotFound(String),
    /// Reading failed.
    #[error("{0}")]
    Io(String),
}

/// A boxed future, as the trait object needs.
pub type FileFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FileError>> + Send + 'a>>;

/// What a node serves its peers. The state node holds one and answers `FetchBlob` and
/// `Console` requests from it.
pub trait PeerFiles: std::fmt::Debug + Send + Sync + 'static {
    /// Up to [`BLOB_CHUNK`] bytes of the verified file `sha256`, from `offset`.
    fn blob_chunk<'a>(&'a self, sha256: &'a str, offset: u64) -> FileFuture<'a, BlobChunk>;
    /// Up to [`CONSOLE_CHUNK`] bytes of the console log of `vm`, from `offset` (`None`: the
    /// last [`CONSOLE_CHUNK`] bytes).
    fn console_chunk<'a>(
        &'a self,
        vm: &'a str,
        offset: Option<u64>,
    ) -> FileFuture<'a, ConsoleChunk>;
    /// VM `vm`'s recent load, as its host recorded it (empty when it has none yet).
    fn vm_stats<'a>(&'a self, vm: &'a str) -> FileFuture<'a, hearth_types::vmstats::VmHistory>;
    /// Up to [`BLOB_CHUNK`] bytes of VM `vm`'s disk of `generation`, from `offset`, served
    /// only while nothing runs on it.
    fn disk_chunk<'a>(
        &'a self,
        vm: &'a str,
        generation: u64,
        offset: u64,
    ) -> FileFuture<'a, DiskChunk>;
    /// Attaches to the serial console of a VM that runs here.
    fn console_attach(&self, attach: ConsoleAttach) -> FileFuture<'_, ConsoleSession> {
        let vm = attach.vm;
        Box::pin(async move {
            Err(FileError::NotServed(format!(
                "this node has no interactive console for {vm}"
            )))
        })
    }
}

/// What one attachment to a VM's serial console hears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleEvent {
    /// Bytes the guest wrote (and, first, the end of the log so far).
    Output(Vec<u8>),
    /// Who holds the keyboard now (`None`: nobody); `you` when this attachment does.
    Writer { name: Option<String>, you: bool },
    /// The console ended, and why.
    Closed(String),
}

/// Who attaches to which VM's console, and whether they may type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAttach {
    pub vm: String,
    /// Shown to the others attached while this one types.
    pub who: String,
    /// A read-only caller watches, never types.
    pub may_write: bool,
}

/// One attachment to a VM's serial console: its events, and where its keystrokes go. Only
/// one attachment at a time holds the keyboard; the keys of the others are dropped. Dropping
/// both ends detaches.
#[derive(Debug)]
pub struct ConsoleSession {
    pub events: tokio::sync::mpsc::Receiver<ConsoleEvent>,
    pub input: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// Why a file could not be had from a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is not a member of the state group")]
    NotMember(String),
    #[error("{host} cannot be reached: {error}")]
    Unreachable { host: String, error: String },
    #[error("{host}: {error}")]
    Refused { host: String, error: FileError },
    #[error("{host}: {message}")]
    Protocol { host: String, message: String },
    /// No member had a copy; each one's answer.
    #[error("no member has a copy ({})", .0.join("; "))]
    NoCopy(Vec<String>),
    /// The caller's sink refused the bytes.
    #[error("{0}")]
    Sink(String),
}
