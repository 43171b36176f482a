//! The API's OpenAPI description checked against the API itself: Schemathesis (from PyPI,
//! installed by `scripts/test.sh` in `target/schemathesis`) runs every check, in every phase
//! (coverage, fuzzing, stateful along the description's links), against a live agent, and
//! must find nothing: no server error, no undocumented status, no schema-valid body refused
//! (but for the few rules `tests/schemathesis.toml` names), no invalid body accepted, and no
//! answer that breaks its schema. `POST /v1/leave` is left out: it stops the agent.

use hearth_testkit::TestCluster;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The seed of the run: fixed, so that CI explores the same cases each time; set
/// `HEARTH_SCHEMATHESIS_SEED` to explore others.
const SEED: &str = "20261204";

#[test]
fn schemathesis_finds_nothing_against_a_live_agent() {
    let st = repo().join("target/schemathesis/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run ./scripts/test.sh, which installs Schemathesis there",
        st.display()
    );
    let cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 8\nmemory_mib = 8192\ndisk_gib = 100\n".into();
    });
    let agent = &cluster.agents[0];
    hearth_testkit::vms::wait_for_hosts(agent, 1);
    agent.ensure_account("alice");
    let url = format!("http://{}/v1/openapi.json", agent.api_addr());
    let seed = std::env::var("HEARTH_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    // Schemathesis and Hypothesis leave files in the directory they run in.
    let scratch = hearth_testkit::TempDir::new("schemathesis");
    let output = Command::new(&st)
        .current_dir(scratch.path())
        .arg("--config-file")
        .arg(repo().join("crates/hearth/tests/schemathesis.toml"))
        .arg("--no-color")
        .args([
            "run",
            &url,
            "--checks",
            "all",
            "--exclude-path",
            "/v1/leave",
            // It fills an empty cluster with a whole state, replacing what the other
            // operations set up; tests/backups.rs drives it for real.
            "--exclude-path",
            "/v1/restore",
        ])
        .args(["--seed", &seed, "--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", agent.token()))
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems (seed {seed}):\n{text}"
    );
    // It did run: every phase, and many cases.
    assert!(text.contains("✅ Stateful"), "{text}");
    let generated = text
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ")?.0.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(generated > 1000, "only {generated} cases:\n{text}");
    // And the agent is still up, and still the only worker host: a fence or unfence of a
    // name that is no host (a typo) made one, once.
    let (status, _) = agent.http_get("/v1/members", true).unwrap();
    assert_eq!(status, 200);
    assert_eq!(agent.host_count(), Ok(1));
}
