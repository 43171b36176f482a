//! Entry points for the fuzz targets (`fuzz/`) and their regression tests: the API's JSON
//! bodies (and the log's own command encoding) decoded and applied to a desired state, and
//! the config file parsed and validated. They panic only on a real bug.

use hearth_state::model::{Command, ComputeCommand, Expect, apply};
use hearth_types::compute::VmRequest;
use hearth_types::desired::DesiredState;

use hearth_types::api::{PutImage, PutNotice, PutPool, PutRecords, PutService, SetIo};

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// The command a body becomes, as its handler builds it; the first byte picks the endpoint.
fn command(selector: u8, body: &[u8]) -> Option<Command> {
    let compute = |command| Command::Compute { command };
    Some(match selector % 9 {
        0 => {
            let PutRecords { records, expect } = decode(body)?;
            Command::PutRecords { records, expect }
        }
        1 => {
            let PutService { service, expect } = decode(body)?;
            Command::PutService { service, expect }
        }
        2 => {
            let PutNotice { notice, expect } = decode(body)?;
            Command::PutNotice { notice, expect }
        }
        3 => {
            let PutImage { image, expect } = decode(body)?;
            compute(ComputeCommand::PutImage { image, expect })
        }
        4 => {
            let PutPool { pool, expect } = decode(body)?;
            compute(ComputeCommand::PutPool { pool, expect })
        }
        5 => compute(ComputeCommand::CreateVm {
            request: decode::<VmRequest>(body)?,
        }),
        6 => {
            let SetIo { io } = decode(body)?;
            compute(ComputeCommand::SetIo {
                vm: "vm-3".into(),
                io,
                expect: Expect::Any,
            })
        }
        // A Raft log entry as a peer sends it.
        _ => decode::<Command>(body)?,
    })
}

/// A state with a pool, an image and a VM, so commands meet existing objects.
fn seeded() -> DesiredState {
    use hearth_types::compute::{Arch, Blob, Image, IpPool, Power};
    let mut state = DesiredState::default();
    let commands = [
        ComputeCommand::PutPool {
            pool: IpPool {
                name: "lan".into(),
                cidr: "192.0.2.0/24".into(),
                gateway: "192.0.2.1".parse().ok(),
                resolvers: vec![],
                first: None,
                last: None,
                replicas: None,
                delegate: None,
                storage: None,
            },
            expect: Expect::Any,
        },
        ComputeCommand::PutImage {
            image: Image {
                name: "tiny".into(),
                format: "qcow2".into(),
                arch: Arch::X86_64,
                disk: Blob {
                    sha256: "0".repeat(64),
                    size_bytes: 1,
                },
                kernel: None,
                initrd: None,
                append: None,
            },
            expect: Expect::Any,
        },
        ComputeCommand::CreateVm {
            request: VmRequest {
                name: "web1".into(),
                owner: "alice".into(),
                arch: Arch::X86_64,
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 1,
                image: "tiny".into(),
                ssh_keys: vec![],
                pools: vec!["lan".into()],
                io: Default::default(),
                power: Power::Running,
                replicas: 1,
            },
        },
    ];
    // The owners the bodies name (admins: no quota to meet).
    for name in ["alice", "bob"] {
        let account = hearth_types::account::Account {
            name: name.into(),
            role: hearth_types::account::AccountRole::Admin,
            email: String::new(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .into(),
            ssh_keys: Default::default(),
            disabled: false,
            plan: None,
            quota: Default::default(),
            unverified: false,
            awaiting_approval: false,
        };
        let command = Command::PutAccount {
            account,
            expect: Expect::Absent,
            revoke_tokens: false,
        };
        // Index 0: the VM's id stays `vm-3`, as the fuzz corpus has it.
        apply(&mut state, &command, 0);
    }
    for (index, command) in commands.into_iter().enumerate() {
        apply(&mut state, &Command::Compute { command }, index as u64 + 1);
    }
    state
}

/// An API body: decoded as its endpoint does, then applied to a state twice (on two
/// replicas): both must end the same, and a second application must not panic either.
pub fn api_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Some(command) = command(selector, body) else {
        return;
    };
    let mut one = seeded();
    let mut two = one.clone();
    let first = apply(&mut one, &command, 100);
    let second = apply(&mut two, &command, 100);
    assert_eq!(first, second, "apply is deterministic");
    assert_eq!(one, two, "replicas end the same");
    apply(&mut one, &command, 101);
    // What the log stores must decode to the same command.
    let encoded = serde_json::to_vec(&command).expect("commands encode");
    let decoded: Command = serde_json::from_slice(&encoded).expect("commands decode");
    assert_eq!(decoded, command);
}

/// A config file: parsed, and validated when it parses. Validation may read the files it
/// names; it must name a key in every problem and never panic.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::config::Config::parse(text)
        && let Err(problems) = config.validate()
    {
        for problem in problems {
            assert!(problem.contains(':'), "a problem names its key: {problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeded_state_has_its_objects() {
        let state = seeded();
        assert!(state.compute.vms.contains_key("vm-3"), "{state:?}");
        assert_eq!(state.compute.pools.len(), 1);
    }

    #[test]
    fn bodies_and_configs_go_through() {
        api_body(b"\x05{\"name\":\"db\",\"owner\":\"bob\",\"vcpus\":1,\"memory_mib\":64,\"disk_gib\":1,\"image\":\"tiny\",\"pools\":[\"lan\"]}");
        api_body(b"\x00{\"records\":{\"name\":\"www\",\"values\":[{\"type\":\"A\",\"address\":\"192.0.2.9\"}]}}");
        api_body(b"\x08{\"op\":\"batch\",\"commands\":[]}");
        api_body(b"\x03garbage");
        config_text(b"node_name = \"n1\"\ncluster = \"c\"\nsecret = \"AAAA\"\n");
        config_text(b"[[[");
    }
}
