//! Fuzz target `gossip`: arbitrary bytes through `hearth_membership::fuzzing::gossip_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_membership::fuzzing::gossip_datagram(data);
});
