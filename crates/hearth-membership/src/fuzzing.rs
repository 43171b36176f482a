//! Entry points for the fuzz targets (`fuzz/`) and their regression tests: each takes
//! arbitrary bytes, runs them through the same code a received datagram goes through, and
//! panics only on a real bug.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_types::{NodeMeta, Role};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::core::{Core, Input, KIND_ANNOUNCEMENT, KIND_FOCA, MembershipConfig, Now};
use crate::{GossipMetrics, GossipTiming, Keyring, Secret};

fn keyring() -> Keyring {
    Keyring::new("fuzz", &Secret::new([7; crate::SECRET_LEN]), &[])
}

fn core() -> Core {
    let addr = SocketAddr::from(([127, 0, 0, 1], 7946));
    let meta = NodeMeta {
        name: "fuzz".into(),
        gossip_addr: addr,
        address: addr.ip(),
        roles: vec![Role::Server],
        tags: Default::default(),
        rpc_addr: None,
        in_group: false,
    };
    let config = MembershipConfig {
        cluster: "fuzz".into(),
        keyring: keyring(),
        meta,
        join: Vec::new(),
        timing: GossipTiming::default(),
        services: Vec::new(),
    };
    let metrics = Arc::new(GossipMetrics::default());
    Core::new(config, 1, StdRng::seed_from_u64(1), metrics).expect("a small announcement")
}

/// A gossip datagram as the network delivers it, through the membership core: as it is
/// (almost always refused, since it is not sealed with the key); then sealed, so that its
/// plaintext reaches foca or the announcement decoder; and, when its first byte is no known
/// kind, sealed as foca data, so that foca sees every input. Also checks that sealing the
/// bytes and opening them gives them back.
pub fn gossip_datagram(data: &[u8]) {
    let ring = keyring();
    let sealed = ring.seal(data);
    assert_eq!(
        ring.open(&sealed).ok().as_deref(),
        Some(data),
        "seal/open must round-trip"
    );
    let mut core = core();
    let now = Now {
        elapsed: Duration::ZERO,
        unix_micros: 1,
    };
    core.handle(now, Input::Datagram(data));
    core.handle(now, Input::Datagram(&sealed));
    if !matches!(data.first(), Some(&(KIND_FOCA | KIND_ANNOUNCEMENT))) {
        let as_foca = [&[KIND_FOCA][..], data].concat();
        core.handle(now, Input::Datagram(&ring.seal(&as_foca)));
    }
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
