//! Entry points for the fuzz targets (`fuzz/`) and their regression tests: each takes
//! arbitrary bytes, runs them through the same code a received datagram goes through, and
//! panics only on a real bug.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::identity::AnnouncementHandler;
use crate::node::{GossipTiming, KIND_ANNOUNCEMENT, KIND_FOCA, swim_config};
use crate::{Keyring, NodeId, Secret};

fn keyring() -> Keyring {
    Keyring::new("fuzz", &Secret::new([7; crate::SECRET_LEN]), &[])
}

/// A gossip datagram as the network delivers it: opened (and almost always refused, since it
/// is not sealed with the key); then, as if it had been, its plaintext handed to foca and to
/// the announcement decoder, exactly as the membership task does. Also checks that sealing
/// the bytes and opening them gives them back.
pub fn gossip_datagram(data: &[u8]) {
    let ring = keyring();
    let _ = ring.open(data);
    let sealed = ring.seal(data);
    assert_eq!(
        ring.open(&sealed).ok().as_deref(),
        Some(data),
        "seal/open must round-trip"
    );
    let me = NodeId {
        name: "fuzz".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
        bump: 1,
    };
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let mut swim = Foca::with_custom_broadcast(
        me,
        swim_config(&GossipTiming::default()),
        StdRng::seed_from_u64(1),
        PostcardCodec,
        AnnouncementHandler::new(inbox),
    );
    let mut runtime = AccumulatingRuntime::new();
    match data.split_first() {
        Some((&KIND_FOCA, body)) => {
            let _ = swim.handle_data(body, &mut runtime);
        }
        Some((&KIND_ANNOUNCEMENT, body)) => {
            let _ = swim.add_broadcast(body);
        }
        _ => {
            let _ = swim.handle_data(data, &mut runtime);
        }
    }
    while runtime.to_send().is_some() {}
    while runtime.to_schedule().is_some() {}
    while runtime.to_notify().is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_datagrams_are_harmless() {
        for data in [
            &b""[..],
            &[KIND_FOCA],
            &[KIND_ANNOUNCEMENT, 0xff, 0xff],
            &[0u8; 300],
        ] {
            gossip_datagram(data);
        }
    }
}
