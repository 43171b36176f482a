//! A worker restarted right after deleting a VM must not start it again. Its desired state is
//! restored from disk, which may be older than what it already did; before the fix its first
//! reconcile pass acted on that old copy and resurrected the deleted VM, orphaned (found by
//! the 30-minute chaos run). The VMs here run on the fake driver, so a "VM" is a marker file.

use std::path::Path;
use std::time::Duration;

use hearth_testkit::{TestCluster, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hearth"))
}

fn passes(agent: &hearth_testkit::TestAgent) -> Result<u64, String> {
    let (_, text) = agent.http_get("/metrics", false)?;
    text.lines()
        .find_map(|l| l.strip_prefix("hearth_reconcile_passes_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no pass counter".to_owned())
}

#[test]
fn a_vm_deleted_just_before_a_crash_stays_deleted() {
    let mut cluster = TestCluster::start_with(bin(), 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = "[state]\nbootstrap_expect = 1\n[compute]\ndriver = \"fake\"\nvcpus = 64\nmemory_mib = 65536\ndisk_gib = 1000\n".into();
    });
    let agent = &mut cluster.agents[0];
    eventually("the worker registered", DEADLINE, || {
        match agent.host_count()? {
            1 => Ok(()),
            n => Err(format!("{n} hosts")),
        }
    });
    agent.add_fake_image("fake");
    agent.ensure_account("t");
    // A few rounds, since the crash must land before the state on disk catches up.
    for round in 0..6 {
        let agent = &cluster.agents[0];
        let body = format!(
            r#"{{"name":"r{round}","owner":"t","vcpus":1,"memory_mib":64,"disk_gib":1,"image":"fake"}}"#
        );
        let (status, answer) = agent.http_send("POST", "/v1/vms", &body).unwrap();
        assert_eq!(status, 201, "{answer}");
        let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["result"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let host = eventually("the VM running", DEADLINE, || {
            let row = agent.api_json(&format!("/v1/vms/{id}"))?;
            let host = row["host"].as_str().unwrap_or_default().to_owned();
            let idx = cluster
                .agents
                .iter()
                .position(|a| a.spec.name == host)
                .ok_or(format!("not placed: {row}"))?;
            let marker = cluster.agents[idx]
                .dir
                .join("data/vms")
                .join(&id)
                .join("running");
            marker.is_file().then_some(idx).ok_or("not yet".to_owned())
        });
        let vms = cluster.agents[host].dir.join("data").join("vms");
        let agent = &cluster.agents[0];
        let (status, answer) = agent
            .http_send("DELETE", &format!("/v1/vms/{id}"), "")
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        // The moment the host has removed it, the agent dies.
        eventually("the VM removed", DEADLINE, || {
            (!vms.join(&id).exists())
                .then_some(())
                .ok_or("not yet".to_owned())
        });
        cluster.agents[host].kill9();
        cluster.agents[host].restart();
        // Once the restarted host has made a few passes and the VM is forgotten, it must
        // not be running again.
        let restarted = &cluster.agents[host];
        eventually(
            "the VM forgotten and the host reconciling",
            DEADLINE,
            || {
                let (status, _) = restarted.http_get(&format!("/v1/vms/{id}"), true)?;
                let passes = passes(restarted)?;
                if status == 404 && passes >= 3 {
                    Ok(())
                } else {
                    Err(format!("{status}, {passes} passes"))
                }
            },
        );
        assert!(
            !vms.join(&id).exists(),
            "round {round}: {id} was started again after the restart"
        );
    }
}
