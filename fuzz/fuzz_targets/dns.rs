//! Fuzz target `dns`: arbitrary bytes through `hearth_dns::fuzzing::dns_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_dns::fuzzing::dns_request(data);
});
