//! Fuzz target `api_json`: arbitrary bytes through `hearth_agent::fuzzing::api_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_agent::fuzzing::api_body(data);
});
