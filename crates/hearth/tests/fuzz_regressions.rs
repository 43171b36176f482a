//! Replays every input kept under `fuzz/regressions/<target>/` (crashes the fuzzers found,
//! and seed inputs) through the same entry points the cargo-fuzz targets call, so a fixed
//! crash stays fixed. The fuzzers themselves run with `scripts/fuzz.sh`.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        run(&data);
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}

#[test]
fn gossip_regressions() {
    replay("gossip", hearth_membership::fuzzing::gossip_datagram);
}

#[test]
fn dns_regressions() {
    replay("dns", hearth_dns::fuzzing::dns_request);
}

#[test]
fn api_json_regressions() {
    replay("api_json", hearth_agent::fuzzing::api_body);
}

#[test]
fn config_regressions() {
    replay("config", hearth_agent::fuzzing::config_text);
}
