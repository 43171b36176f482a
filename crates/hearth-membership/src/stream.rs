//! Encrypted, authenticated TCP streams between agents (Raft RPC), keyed from the cluster
//! secret.
//!
//! Handshake: the client sends `"HRS1" | key id | 32 random bytes`; the server answers with
//! 32 random bytes of its own. Each direction then has its own key, derived from the cluster
//! key and both nonces, so no recorded connection can be replayed and no frame can be
//! reflected. Frames are `length (u32 BE) | XChaCha20-Poly1305 ciphertext`, with a counter as
//! nonce; a frame that does not authenticate ends the connection. A peer without the secret
//! can neither read a frame nor write one the other side accepts.
//!
//! The key id in the hello says the connection's [`Tier`]: a server key (derived from the
//! secret itself) opens a `Full` connection, a worker key (the derived gossip key, all a
//! worker may hold) a `Worker` one; the server side tells which, and decides what to answer.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::seal::{KEY_ID_LEN, Keyring};

const HELLO_MAGIC: &[u8; 4] = b"HRS1";
const NONCE_LEN: usize = 32;
/// Large enough for any snapshot chunk hearth sends; a bigger length is an attack or a bug.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Which key a connection was opened with: what its client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// A server key: the client holds the cluster secret.
    Full,
    /// A worker's identity key: the client is that worker (`SealedStream::peer_name`).
    Named,
    /// A worker key: the client may hold only that, and says not who it is.
    Worker,
}

/// Why a stream failed. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer is not a hearth agent of this cluster")]
    NotHearth,
    #[error("the peer's key is not in this node's keyring (wrong secret or cluster name)")]
    UnknownKey,
    #[error("a frame failed authentication")]
    AuthFailed,
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

struct Direction {
    cipher: XChaCha20Poly1305,
    counter: u64,
}

impl Direction {
    fn new(key: [u8; 32]) -> Self {
        Direction {
            cipher: XChaCha20Poly1305::new(&key.into()),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        XNonce::from(nonce)
    }
}

/// One side of an established encrypted connection.
pub struct SealedStream {
    stream: TcpStream,
    send: Direction,
    recv: Direction,
    tier: Tier,
    peer_name: Option<String>,
}

struct Opened {
    c2s: Direction,
    s2c: Direction,
    tier: Tier,
    name: Option<String>,
}

fn directions(
    keyring: &Keyring,
    key_id: &[u8],
    workers: &[String],
    client: &[u8],
    server: &[u8],
) -> Option<Opened> {
    let key = keyring.stream_key(key_id, workers)?;
    let transcript = |label: &[u8]| [label, client, server].concat();
    Some(Opened {
        c2s: Direction::new(Keyring::session_key(&key, &transcript(b"c2s"))),
        s2c: Direction::new(Keyring::session_key(&key, &transcript(b"s2c"))),
        tier: key.tier,
        name: key.name,
    })
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce[..]);
    nonce
}

impl SealedStream {
    /// Opens the client side over a connected TCP stream, with the key of `tier` (a
    /// keyring without a server key cannot open a `Full` connection: `UnknownKey`).
    pub async fn client(
        mut stream: TcpStream,
        keyring: &Keyring,
        tier: Tier,
    ) -> Result<SealedStream, StreamError> {
        stream.set_nodelay(true)?;
        let key_id = keyring.stream_key_id(tier).ok_or(StreamError::UnknownKey)?;
        let client_nonce = random_nonce();
        let hello = [&HELLO_MAGIC[..], &key_id, &client_nonce].concat();
        stream.write_all(&hello).await?;
        let mut server_nonce = [0u8; NONCE_LEN];
        stream.read_exact(&mut server_nonce).await?;
        let opened = directions(keyring, &key_id, &[], &client_nonce, &server_nonce)
            .ok_or(StreamError::UnknownKey)?;
        Ok(SealedStream {
            stream,
            send: opened.c2s,
            recv: opened.s2c,
            tier: opened.tier,
            peer_name: None,
        })
    }

    /// The key the connection was opened with.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// On the server side of a `Named` connection, the worker that opened it.
    pub fn peer_name(&self) -> Option<&str> {
        self.peer_name.as_deref()
    }

    /// Accepts the server side of a freshly accepted TCP stream. A server recognises the
    /// identity of any worker named in `workers`.
    pub async fn server(
        mut stream: TcpStream,
        keyring: &Keyring,
        workers: &[String],
    ) -> Result<SealedStream, StreamError> {
        stream.set_nodelay(true)?;
        let mut hello = [0u8; 4 + KEY_ID_LEN + NONCE_LEN];
        stream.read_exact(&mut hello).await?;
        if &hello[..4] != HELLO_MAGIC {
            return Err(StreamError::NotHearth);
        }
        let key_id = &hello[4..4 + KEY_ID_LEN];
        let client_nonce = &hello[4 + KEY_ID_LEN..];
        let server_nonce = random_nonce();
        let opened = directions(keyring, key_id, workers, client_nonce, &server_nonce)
            .ok_or(StreamError::UnknownKey)?;
        stream.write_all(&server_nonce).await?;
        Ok(SealedStream {
            stream,
            send: opened.s2c,
            recv: opened.c2s,
            tier: opened.tier,
            peer_name: opened.name,
        })
    }

    pub async fn send(&mut self, message: &[u8]) -> Result<(), StreamError> {
        send_frame(&mut self.stream, &mut self.send, message).await
    }

    pub async fn recv(&mut self) -> Result<Vec<u8>, StreamError> {
        recv_frame(&mut self.stream, &mut self.recv).await
    }

    /// Splits the connection into a half that only reads and one that only writes, so two
    /// tasks can use it at once (a console session streams both ways).
    pub fn split(self) -> (SealedReader, SealedWriter) {
        let (read, write) = self.stream.into_split();
        (
            SealedReader {
                stream: read,
                recv: self.recv,
            },
            SealedWriter {
                stream: write,
                send: self.send,
            },
        )
    }
}

/// The reading half of a split [`SealedStream`].
pub struct SealedReader {
    stream: OwnedReadHalf,
    recv: Direction,
}

impl SealedReader {
    pub async fn recv(&mut self) -> Result<Vec<u8>, StreamError> {
        recv_frame(&mut self.stream, &mut self.recv).await
    }
}

/// The writing half of a split [`SealedStream`].
pub struct SealedWriter {
    stream: OwnedWriteHalf,
    send: Direction,
}

impl SealedWriter {
    pub async fn send(&mut self, message: &[u8]) -> Result<(), StreamError> {
        send_frame(&mut self.stream, &mut self.send, message).await
    }
}

async fn send_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    send: &mut Direction,
    message: &[u8],
) -> Result<(), StreamError> {
    let nonce = send.next_nonce();
    let ciphertext = send
        .cipher
        .encrypt(&nonce, message)
        .map_err(|_| StreamError::TooLarge(message.len()))?;
    if ciphertext.len() > MAX_FRAME {
        return Err(StreamError::TooLarge(ciphertext.len()));
    }
    let mut frame = Vec::with_capacity(4 + ciphertext.len());
    frame.extend_from_slice(&(ciphertext.len() as u32).to_be_bytes());
    frame.extend_from_slice(&ciphertext);
    stream.write_all(&frame).await?;
    Ok(())
}

async fn recv_frame(
    stream: &mut (impl AsyncRead + Unpin),
    recv: &mut Direction,
) -> Result<Vec<u8>, StreamError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(StreamError::TooLarge(len));
    }
    let mut ciphertext = vec![0u8; len];
    stream.read_exact(&mut ciphertext).await?;
    let nonce = recv.next_nonce();
    recv.cipher
        .decrypt(&nonce, ciphertext.as_slice())
        .map_err(|_| StreamError::AuthFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Secret;
    use tokio::net::TcpListener;

    fn ring(byte: u8, cluster: &str) -> Keyring {
        Keyring::new(cluster, &Secret::new([byte; 32]), &[])
    }

    async fn pair(
        client_ring: Keyring,
        server_ring: Keyring,
    ) -> (
        Result<SealedStream, StreamError>,
        Result<SealedStream, StreamError>,
    ) {
        pair_of(client_ring, server_ring, Tier::Full).await
    }

    async fn pair_of(
        client_ring: Keyring,
        server_ring: Keyring,
        tier: Tier,
    ) -> (
        Result<SealedStream, StreamError>,
        Result<SealedStream, StreamError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            SealedStream::server(stream, &server_ring, &["w1".to_owned()]).await
        });
        let client =
            SealedStream::client(TcpStream::connect(addr).await.unwrap(), &client_ring, tier).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_server_knows_which_key_the_client_holds() {
        let server_key = || ring(1, "c");
        // A server connects with its server key: a full connection.
        let (client, server) = pair_of(server_key(), server_key(), Tier::Full).await;
        assert_eq!(server.unwrap().tier(), Tier::Full);
        assert_eq!(client.unwrap().tier(), Tier::Full);
        // A worker holding only the worker key: a worker connection, and no full one.
        let worker = || Keyring::for_worker("c", worker_material(&server_key()), &[], None);
        let (client, server) = pair_of(worker(), server_key(), Tier::Worker).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(server.tier(), Tier::Worker);
        client.send(b"report").await.unwrap();
        assert_eq!(server.recv().await.unwrap(), b"report");
        assert!(!worker().holds_servers_key());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let only_worker = worker();
        let full = SealedStream::client(
            TcpStream::connect(addr).await.unwrap(),
            &only_worker,
            Tier::Full,
        );
        assert!(matches!(full.await, Err(StreamError::UnknownKey)));
        // A server talks to a worker with the worker key.
        let (client, server) = pair_of(server_key(), worker(), Tier::Worker).await;
        assert_eq!(server.unwrap().tier(), Tier::Worker);
        assert!(client.is_ok());
    }

    #[tokio::test]
    async fn a_workers_identity_names_it_to_servers_only() {
        let server = ring(1, "c");
        let identity = |name: &str| {
            let line = server.worker_identity(name).unwrap();
            let hex = line.rsplit(':').next().unwrap().to_owned();
            let mut key = [0u8; 32];
            for (i, byte) in key.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            (name.to_owned(), key)
        };
        let worker = |name: &str| {
            Keyring::for_worker("c", worker_material(&server), &[], Some(identity(name)))
        };
        // The server knows w1 (its `workers`): a named connection from w1.
        let (client, accepted) = pair_of(worker("w1"), ring(1, "c"), Tier::Named).await;
        assert!(client.is_ok());
        let accepted = accepted.unwrap();
        assert_eq!(accepted.tier(), Tier::Named);
        assert_eq!(accepted.peer_name(), Some("w1"));
        // A name the server does not list is not recognised; nor is one by another worker.
        let (_, accepted) = pair_of(worker("w9"), ring(1, "c"), Tier::Named).await;
        assert!(matches!(accepted, Err(StreamError::UnknownKey)));
        let (_, accepted) = pair_of(worker("w1"), worker("w2"), Tier::Named).await;
        assert!(matches!(accepted, Err(StreamError::UnknownKey)));
        assert_eq!(worker("w1").identity_name(), Some("w1"));
        assert_eq!(
            worker("w1").worker_identity("w1"),
            None,
            "a worker derives none"
        );
    }

    /// The 32 bytes of a keyring's worker key, as a worker's config would read them.
    fn worker_material(ring: &Keyring) -> [u8; 32] {
        let hex = ring.worker_key();
        let hex = hex.strip_prefix(crate::seal::WORKER_KEY_PREFIX).unwrap();
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn frames_round_trip_both_ways() {
        let (client, server) = pair(ring(1, "c"), ring(1, "c")).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        for i in 0..3u8 {
            client.send(&[i; 100]).await.unwrap();
            assert_eq!(server.recv().await.unwrap(), [i; 100]);
            server.send(b"pong").await.unwrap();
            assert_eq!(client.recv().await.unwrap(), b"pong");
        }
    }

    #[tokio::test]
    async fn split_halves_go_on_where_the_whole_stream_left_off() {
        let (client, server) = pair(ring(1, "c"), ring(1, "c")).await;
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        client.send(b"before").await.unwrap();
        assert_eq!(server.recv().await.unwrap(), b"before");
        let (mut reader, mut writer) = server.split();
        // Both halves at once: one task writes while the other reads.
        let echo = tokio::spawn(async move {
            let got = reader.recv().await.unwrap();
            writer.send(&[got, b"!".to_vec()].concat()).await.unwrap();
            reader.recv().await.unwrap()
        });
        writer_side(&mut client).await;
        assert_eq!(echo.await.unwrap(), b"last");
    }

    async fn writer_side(client: &mut SealedStream) {
        client.send(b"after").await.unwrap();
        assert_eq!(client.recv().await.unwrap(), b"after!");
        client.send(b"last").await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_secret_or_cluster_cannot_connect() {
        for server_ring in [ring(2, "c"), ring(1, "other")] {
            let (_client, server) = pair(ring(1, "c"), server_ring).await;
            assert!(matches!(server, Err(StreamError::UnknownKey)));
        }
    }

    #[tokio::test]
    async fn tampered_frames_fail_authentication() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut sealed = SealedStream::server(stream, &ring(1, "c"), &[])
                .await
                .unwrap();
            sealed.recv().await
        });
        // A raw client that knows the handshake format but not the key.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let key_id = ring(1, "c").stream_key_id(Tier::Full).unwrap();
        raw.write_all(&[&HELLO_MAGIC[..], &key_id, &[7u8; 32]].concat())
            .await
            .unwrap();
        let mut server_nonce = [0u8; 32];
        raw.read_exact(&mut server_nonce).await.unwrap();
        raw.write_all(&[0, 0, 0, 20]).await.unwrap();
        raw.write_all(&[0xAB; 20]).await.unwrap();
        assert!(matches!(
            server.await.unwrap(),
            Err(StreamError::AuthFailed)
        ));
    }

    #[tokio::test]
    async fn garbage_hello_and_huge_frames_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            SealedStream::server(stream, &ring(1, "c"), &[]).await.err()
        });
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0x55; 40]).await.unwrap();
        assert!(matches!(
            server.await.unwrap(),
            Some(StreamError::NotHearth)
        ));
    }
}
