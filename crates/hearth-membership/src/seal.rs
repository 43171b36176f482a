//! Sealing of every gossip datagram with XChaCha20-Poly1305, and the keyring that lets the
//! cluster secret rotate without downtime.
//!
//! Wire format of a sealed datagram:
//! `magic "HG" | version 1 | key id (4 bytes) | nonce (24 bytes) | ciphertext + tag (16 bytes)`.
//! The key is derived with HKDF-SHA256 from the 32-byte cluster secret, with the cluster name
//! as HKDF info, and the cluster name is also the AEAD's associated data: a datagram sealed for
//! another cluster or with another secret fails authentication. The key id is a hash of the
//! derived key, so a receiver picks the right key without trial decryption and learns nothing
//! about the secret from it.
//!
//! A worker may hold only a *worker key* (the derived gossip key, `hearth keygen --worker`)
//! instead of the secret: it gossips, streams and derives the live-move and replica keys
//! as before, but it cannot derive the *server key* (HKDF of the secret itself, another
//! label), which alone opens a stream of the `Full` tier between servers: Raft votes,
//! replication and writes of any command. See `stream::Tier`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

/// Length of a cluster secret, in bytes.
pub const SECRET_LEN: usize = 32;
const MAGIC: &[u8; 2] = b"HG";
const VERSION: u8 = 1;
pub const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN + NONCE_LEN;
/// Bytes a sealed datagram carries beyond its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// A cluster secret. Its `Debug` never shows the bytes, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        Secret(bytes)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a datagram was dropped before reaching the protocol. Each reason is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag, or without hearth's magic bytes.
    #[error("not a hearth datagram")]
    NotHearth,
    /// A hearth datagram of a version this agent does not speak.
    #[error("unsupported gossip version")]
    BadVersion,
    /// Sealed with a key that is not in the keyring (another secret, or another cluster).
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    /// The key matched but the datagram was forged or corrupted.
    #[error("authentication failed")]
    AuthFailed,
}

impl OpenError {
    pub const ALL: [OpenError; 4] = [
        OpenError::NotHearth,
        OpenError::BadVersion,
        OpenError::UnknownKey,
        OpenError::AuthFailed,
    ];

    /// The `reason` label of the dropped-packets metric.
    pub fn label(self) -> &'static str {
        match self {
            OpenError::NotHearth => "not_hearth",
            OpenError::BadVersion => "bad_version",
            OpenError::UnknownKey => "unknown_key",
            OpenError::AuthFailed => "auth_failed",
        }
    }
}

struct Key {
    id: [u8; KEY_ID_LEN],
    /// The derived key itself, kept for deriving per-connection keys (see `session_key`).
    material: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn derive(secret: &Secret, cluster: &str) -> Key {
        Key::derive_labelled(secret, cluster, b"hearth gossip v1")
    }

    /// The server key of `secret`: what only holders of the secret itself derive.
    fn derive_server(secret: &Secret, cluster: &str) -> Key {
        Key::derive_labelled(secret, cluster, b"hearth servers v1")
    }

    fn derive_labelled(secret: &Secret, cluster: &str, label: &[u8]) -> Key {
        let hkdf = Hkdf::<Sha256>::new(Some(label), &secret.0);
        let mut key = [0u8; 32];
        // Expanding 32 bytes from SHA-256 HKDF cannot fail: the limit is 255 * 32 bytes.
        hkdf.expand(cluster.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Key::from_material(key)
    }

    fn from_material(key: [u8; 32]) -> Key {
        let digest = Sha256::digest(key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let cipher = XChaCha20Poly1305::new(&key.into());
        Key {
            id,
            material: key,
            cipher,
        }
    }
}

/// The key a stream hello named, with the tier it gives the connection and, for a worker's
/// identity, the worker's name.
pub struct StreamKey {
    material: [u8; 32],
    pub tier: crate::stream::Tier,
    pub name: Option<String>,
}

/// The keys a node accepts, and the one it seals with.
pub struct Keyring {
    cluster: String,
    /// `keys[0]` seals outgoing datagrams; every key opens incoming ones.
    keys: Vec<Key>,
    /// The server keys, in the same order; empty on a worker that holds only worker keys.
    servers: Vec<Key>,
    /// A worker's own identity (its node name and key), with which it opens its streams to
    /// servers so they know which worker speaks; servers derive any worker's from their
    /// server key.
    identity: Option<(String, Key)>,
}

/// The prefix of a worker key as `hearth keygen --worker` writes it, before 64 hex digits.
pub const WORKER_KEY_PREFIX: &str = "hearth-worker-key-v1:";
/// The prefix of a worker's identity line, before `NAME:` and 64 hex digits.
pub const WORKER_IDENTITY_PREFIX: &str = "hearth-worker-identity-v1:";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn worker_line(key: &Key) -> String {
    format!("{WORKER_KEY_PREFIX}{}", hex(&key.material))
}

impl Keyring {
    /// `primary` seals; `primary` and every one of `accepted` open.
    pub fn new(cluster: &str, primary: &Secret, accepted: &[Secret]) -> Keyring {
        let secrets = || std::iter::once(primary).chain(accepted.iter());
        Keyring {
            cluster: cluster.to_owned(),
            keys: secrets().map(|s| Key::derive(s, cluster)).collect(),
            servers: secrets().map(|s| Key::derive_server(s, cluster)).collect(),
            identity: None,
        }
    }

    /// A worker's keyring, from worker keys (what [`Keyring::worker_key`] gives): the first
    /// seals. It holds no server key; `identity` is its name and identity key (what
    /// [`Keyring::worker_identity`] gives for that name).
    pub fn for_worker(
        cluster: &str,
        primary: [u8; 32],
        accepted: &[[u8; 32]],
        identity: Option<(String, [u8; 32])>,
    ) -> Keyring {
        Keyring {
            cluster: cluster.to_owned(),
            keys: std::iter::once(primary)
                .chain(accepted.iter().copied())
                .map(Key::from_material)
                .collect(),
            servers: Vec::new(),
            identity: identity.map(|(name, key)| (name, Key::from_material(key))),
        }
    }

    /// Worker `name`'s identity key, derived from the sealing server key; `None` on a worker.
    fn identity_of(&self, name: &str) -> Option<Key> {
        let server = self.servers.first()?;
        let hkdf = Hkdf::<Sha256>::new(Some(b"hearth worker identity v1"), &server.material);
        let mut key = [0u8; 32];
        hkdf.expand(name.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Some(Key::from_material(key))
    }

    /// Worker `name`'s identity line for its `secret_file`; `None` on a worker.
    pub fn worker_identity(&self, name: &str) -> Option<String> {
        let key = self.identity_of(name)?;
        Some(format!(
            "{WORKER_IDENTITY_PREFIX}{name}:{}",
            hex(&key.material)
        ))
    }

    /// The name this keyring's worker identity is for, if it has one.
    pub fn identity_name(&self) -> Option<&str> {
        self.identity.as_ref().map(|(name, _)| name.as_str())
    }

    /// The worker key of the sealing secret, as a worker's `secret_file` holds it.
    pub fn worker_key(&self) -> String {
        worker_line(&self.keys[0])
    }

    /// The worker keys of every secret, the sealing one first: a worker's `secret_file`.
    pub fn worker_keys(&self) -> Vec<String> {
        self.keys.iter().map(worker_line).collect()
    }

    /// Whether this keyring holds the secret itself (a server's), not only worker keys.
    pub fn holds_servers_key(&self) -> bool {
        !self.servers.is_empty()
    }

    /// The key id a stream client of `tier` announces: the server key for `Full` (`None`
    /// on a worker), the worker's identity for `Named` (`None` without one), the worker key
    /// for `Worker`.
    pub fn stream_key_id(&self, tier: crate::stream::Tier) -> Option<[u8; KEY_ID_LEN]> {
        match tier {
            crate::stream::Tier::Full => self.servers.first().map(|k| k.id),
            crate::stream::Tier::Named => self.identity.as_ref().map(|(_, k)| k.id),
            crate::stream::Tier::Worker => Some(self.keys[0].id),
        }
    }

    /// A 32-byte key for another use of the cluster secret (`label` names the use), from the
    /// sealing key: every node with the same primary secret derives the same one.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let hkdf = Hkdf::<Sha256>::new(Some(label), &self.keys[0].material);
        let mut key = [0u8; 32];
        hkdf.expand(self.cluster.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }

    /// How many keys open datagrams (the sealing key included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let payload = Payload {
            msg: plaintext,
            aad: self.cluster.as_bytes(),
        };
        // Encryption only fails for plaintexts beyond the cipher's ~256 GiB limit.
        let ciphertext = key
            .cipher
            .encrypt(&XNonce::from(nonce), payload)
            .expect("a datagram is far below the AEAD's length limit");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// The id of the key that seals, for a stream's hello message.
    pub fn sealing_key_id(&self) -> [u8; KEY_ID_LEN] {
        self.keys[0].id
    }

    /// Which key of this ring (or of a worker among `workers`, on a server) has id
    /// `key_id`, and the tier and worker name it gives a stream.
    pub fn stream_key(&self, key_id: &[u8], workers: &[String]) -> Option<StreamKey> {
        use crate::stream::Tier;
        let found = |key: &Key, tier, name: Option<String>| StreamKey {
            material: key.material,
            tier,
            name,
        };
        if let Some(key) = self.servers.iter().find(|key| key.id == key_id) {
            return Some(found(key, Tier::Full, None));
        }
        if let Some((name, key)) = &self.identity
            && key.id == key_id
        {
            return Some(found(key, Tier::Named, Some(name.clone())));
        }
        if let Some(key) = self.keys.iter().find(|key| key.id == key_id) {
            return Some(found(key, Tier::Worker, None));
        }
        workers.iter().find_map(|name| {
            let key = self.identity_of(name)?;
            (key.id == key_id).then(|| found(&key, Tier::Named, Some(name.clone())))
        })
    }

    /// Derives a 32-byte key for one stream connection from `key` and the connection's
    /// `transcript` (both sides' random nonces and the direction), so that every connection
    /// and direction gets its own key and a recorded connection cannot be replayed.
    pub fn session_key(key: &StreamKey, transcript: &[u8]) -> [u8; 32] {
        let hkdf = Hkdf::<Sha256>::new(Some(transcript), &key.material);
        let mut session = [0u8; 32];
        hkdf.expand(b"hearth stream v1", &mut session)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        session
    }

    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < OVERHEAD || &datagram[..MAGIC.len()] != MAGIC {
            return Err(OpenError::NotHearth);
        }
        if datagram[MAGIC.len()] != VERSION {
            return Err(OpenError::BadVersion);
        }
        let id_start = MAGIC.len() + 1;
        let key_id = &datagram[id_start..id_start + KEY_ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|key| key.id == key_id)
            .ok_or(OpenError::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[id_start + KEY_ID_LEN..HEADER_LEN]);
        let payload = Payload {
            msg: &datagram[HEADER_LEN..],
            aad: self.cluster.as_bytes(),
        };
        key.cipher
            .decrypt(&XNonce::from(nonce), payload)
            .map_err(|_| OpenError::AuthFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret::new([byte; SECRET_LEN])
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::new("coop", &secret(1), &[]);
        let sealed = ring.seal(b"hello");
        assert_ne!(&sealed[HEADER_LEN..HEADER_LEN + 5], b"hello");
        assert_eq!(ring.open(&sealed).unwrap(), b"hello");
    }

    #[test]
    fn wrong_secret_is_unknown_key() {
        let ours = Keyring::new("coop", &secret(1), &[]);
        let theirs = Keyring::new("coop", &secret(2), &[]);
        assert_eq!(ours.open(&theirs.seal(b"x")), Err(OpenError::UnknownKey));
    }

    #[test]
    fn other_cluster_name_cannot_open() {
        let ours = Keyring::new("coop", &secret(1), &[]);
        let theirs = Keyring::new("other", &secret(1), &[]);
        assert_eq!(ours.open(&theirs.seal(b"x")), Err(OpenError::UnknownKey));
    }

    #[test]
    fn tampering_fails_authentication() {
        let ring = Keyring::new("coop", &secret(1), &[]);
        let mut sealed = ring.seal(b"hello world");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(ring.open(&sealed), Err(OpenError::AuthFailed));
        let mut sealed = ring.seal(b"hello world");
        sealed[HEADER_LEN - 1] ^= 1; // the nonce
        assert_eq!(ring.open(&sealed), Err(OpenError::AuthFailed));
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        // During rotation every node accepts both keys; some still seal with the old one.
        let old_sender = Keyring::new("coop", &secret(1), &[]);
        let rotating = Keyring::new("coop", &secret(2), &[secret(1)]);
        let new_sender = Keyring::new("coop", &secret(2), &[]);
        assert_eq!(rotating.open(&old_sender.seal(b"a")).unwrap(), b"a");
        assert_eq!(rotating.open(&new_sender.seal(b"b")).unwrap(), b"b");
        assert_eq!(
            old_sender.open(&new_sender.seal(b"c")),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        let ring = Keyring::new("coop", &secret(1), &[]);
        assert_eq!(ring.open(b""), Err(OpenError::NotHearth));
        assert_eq!(ring.open(&[0u8; 100]), Err(OpenError::NotHearth));
        let mut bad_version = ring.seal(b"x");
        bad_version[2] = 9;
        assert_eq!(ring.open(&bad_version), Err(OpenError::BadVersion));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes: Vec<u8> = (0..len % 200)
                .map(|i| (state >> (i % 8 * 8)) as u8)
                .collect();
            if len % 2 == 0 && bytes.len() > 3 {
                bytes[..3].copy_from_slice(b"HG\x01");
            }
            assert!(ring.open(&bytes).is_err());
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(format!("{:?}", secret(7)), "Secret(<redacted>)");
    }
}
