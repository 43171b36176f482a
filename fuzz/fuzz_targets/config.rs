//! Fuzz target `config`: arbitrary bytes through `hearth_agent::fuzzing::config_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hearth_agent::fuzzing::config_text(data);
});
