//! Prometheus text rendering of the agent's counters and of its local view.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use hearth_dns::DnsMetrics;
use hearth_membership::GossipMetrics;
use hearth_state::node::StateStatus;
use hearth_types::compute::Phase;
use hearth_types::{CheckStatus, MemberState, ServiceInstance, View};

use crate::handlers::HandlerMetrics;

/// Everything `/metrics` shows.
pub struct MetricsSources<'a> {
    pub view: &'a View,
    pub local_instances: &'a [ServiceInstance],
    pub gossip: &'a GossipMetrics,
    pub dns: &'a DnsMetrics,
    pub handlers: &'a HandlerMetrics,
    pub compute: &'a hearth_compute::ComputeMetrics,
    /// The desired state's VMs (empty on a node that holds no state).
    pub vms: &'a hearth_types::compute::Compute,
    pub logins: &'a crate::login_limit::LoginMetrics,
    /// Anonymous audit entries over the node's budget, not recorded.
    pub audit_dropped: u64,
    /// Raft RPC connections closed at once for being over a cap.
    pub rpc_refused: u64,
    /// API connections closed at once for being over a cap.
    pub api_refused: u64,
    /// This machine's CPU, memory and data directory.
    pub host: &'a crate::host_metrics::HostFacts,
    /// The CPU and memory of this host's VMs.
    pub vm_usage: &'a crate::host_metrics::VmUsage,
    /// This node's view of Raft, on servers and witnesses.
    pub raft: Option<&'a StateStatus>,
    /// Each secret file by its config key: 1 when the agent cannot read it or every user may.
    pub secret_files: &'a [(String, u64)],
    /// Closed invoices the webhook has not taken yet, by whether attempts are left
    /// (`waiting`) or all were spent (`failed`); none on a node that holds no state.
    pub webhook: (u64, u64),
    /// Per backup target: the failed attempts to back the state up since the last stored
    /// one, and when that was (Unix seconds; 0: never); none on a node without the state.
    pub state_backups: &'a [(String, u64, u64)],
}

/// One metric family: its name, type, help text and label, and how to read its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// The label that tells samples apart; `None` for a single unlabeled sample, `Some("")`
    /// when each sample carries its own label set (`vm="...",owner="..."`).
    label: Option<&'static str>,
    samples: fn(&MetricsSources<'_>) -> Vec<(String, u64)>,
}

/// A single unlabeled sample.
fn one(n: u64) -> Vec<(String, u64)> {
    vec![(String::new(), n)]
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Every family `/metrics` shows, in order.
const FAMILIES: &[Family] = &[
    Family {
        name: "hearth_host_cpu_seconds_total",
        kind: "counter",
        help: "CPU time of this machine, all CPUs together, by mode (from /proc/stat).",
        label: Some("mode"),
        samples: |src| src.host.cpu_seconds.clone(),
    },
    Family {
        name: "hearth_host_memory_bytes",
        kind: "gauge",
        help: "This machine's memory: total, and available to new work.",
        label: Some("kind"),
        samples: |src| src.host.memory.clone(),
    },
    Family {
        name: "hearth_data_dir_bytes",
        kind: "gauge",
        help: "The data directory's file system: size, and free for the agent.",
        label: Some("kind"),
        samples: |src| src.host.data_dir.clone(),
    },
    Family {
        name: "hearth_vm_cpu_seconds_total",
        kind: "counter",
        help: "CPU time of each VM's QEMU on this host, by VM name and owner.",
        label: Some(""),
        samples: |src| src.vm_usage.cpu_seconds.clone(),
    },
    Family {
        name: "hearth_vm_memory_bytes",
        kind: "gauge",
        help: "Resident memory of each VM's QEMU on this host, by VM name and owner.",
        label: Some(""),
        samples: |src| src.vm_usage.memory.clone(),
    },
    Family {
        name: "hearth_data_dir_io_bytes_total",
        kind: "counter",
        help: "Bytes read and written on the block device holding the data directory (none on tmpfs or overlay).",
        label: Some("direction"),
        samples: |src| src.host.io_bytes.clone(),
    },
    Family {
        name: "hearth_data_dir_io_operations_total",
        kind: "counter",
        help: "Reads and writes completed on the block device holding the data directory.",
        label: Some("direction"),
        samples: |src| src.host.io_operations.clone(),
    },
    Family {
        name: "hearth_vm_disk_bytes_total",
        kind: "counter",
        help: "Bytes each VM's guest read from and wrote to its disk (QMP query-blockstats), by VM name, owner and direction.",
        label: Some(""),
        samples: |src| src.vm_usage.disk_bytes.clone(),
    },
    Family {
        name: "hearth_vm_disk_operations_total",
        kind: "counter",
        help: "Reads and writes each VM's guest completed on its disk, by VM name, owner and direction.",
        label: Some(""),
        samples: |src| src.vm_usage.disk_operations.clone(),
    },
    Family {
        name: "hearth_vm_network_bytes_total",
        kind: "counter",
        help: "Bytes each bridged VM received and sent through its tap, by VM name, owner and direction (none on QEMU's user-mode network).",
        label: Some(""),
        samples: |src| src.vm_usage.network_bytes.clone(),
    },
    Family {
        name: "hearth_vm_spoofed_frames_total",
        kind: "counter",
        help: "Frames a bridged VM sent as another MAC or address (or as a DHCP server or router), which its tap's rules dropped, by VM name and owner.",
        label: Some(""),
        samples: |src| src.vm_usage.spoofed.clone(),
    },
    Family {
        name: "hearth_host_offered",
        kind: "gauge",
        help: "What this worker offers to VMs (vCPUs, MiB of memory, GiB of disk).",
        label: Some("resource"),
        samples: |src| crate::host_metrics::offered(src.vms, &src.view.self_name),
    },
    Family {
        name: "hearth_host_placed",
        kind: "gauge",
        help: "What the VMs placed on this worker ask for (vCPUs, MiB of memory, GiB of disk).",
        label: Some("resource"),
        samples: |src| crate::host_metrics::placed(src.vms, &src.view.self_name),
    },
    Family {
        name: "hearth_vms",
        kind: "gauge",
        help: "VMs in the cluster by phase, as this node's copy of the desired state has them (servers and witnesses only).",
        label: Some("phase"),
        samples: |src| {
            if src.raft.is_none() {
                return Vec::new();
            }
            let vms = || src.vms.vms.values().map(|v| &v.value);
            Phase::ALL
                .into_iter()
                .map(|phase| {
                    let n = vms().filter(|vm| vm.phase == phase).count();
                    (phase.as_str().to_owned(), n as u64)
                })
                .collect()
        },
    },
    Family {
        name: "hearth_raft_term",
        kind: "gauge",
        help: "The Raft term this node is in; it grows by one at each election.",
        label: None,
        samples: |src| src.raft.map_or_else(Vec::new, |r| one(r.term)),
    },
    Family {
        name: "hearth_raft_leader_known",
        kind: "gauge",
        help: "1 when this node knows a Raft leader (writes can be committed), 0 when none is elected.",
        label: None,
        samples: |src| {
            src.raft
                .map_or_else(Vec::new, |r| one(u64::from(r.leader.is_some())))
        },
    },
    Family {
        name: "hearth_raft_is_leader",
        kind: "gauge",
        help: "1 on the Raft leader.",
        label: None,
        samples: |src| {
            src.raft.map_or_else(Vec::new, |r| {
                one(u64::from(r.leader.as_deref() == Some(r.node.as_str())))
            })
        },
    },
    Family {
        name: "hearth_raft_voters",
        kind: "gauge",
        help: "Voters in the Raft group, as this node knows it.",
        label: None,
        samples: |src| {
            src.raft
                .map_or_else(Vec::new, |r| one(r.voters.len() as u64))
        },
    },
    Family {
        name: "hearth_raft_applied_index",
        kind: "gauge",
        help: "The last Raft log index this node applied to its copy of the desired state.",
        label: None,
        samples: |src| src.raft.map_or_else(Vec::new, |r| one(r.applied_index)),
    },
    Family {
        name: "hearth_secret_file_problem",
        kind: "gauge",
        help: "1 when the agent cannot read the secret file named by this config key, or every user of the machine may.",
        label: Some("key"),
        samples: |src| src.secret_files.to_vec(),
    },
    Family {
        name: "hearth_reconcile_passes_total",
        kind: "counter",
        help: "Reconciliation passes of this host's VMs.",
        label: None,
        samples: |src| one(load(&src.compute.passes)),
    },
    Family {
        name: "hearth_vm_starts_total",
        kind: "counter",
        help: "QEMU processes this host started.",
        label: None,
        samples: |src| one(load(&src.compute.starts)),
    },
    Family {
        name: "hearth_vm_crashes_total",
        kind: "counter",
        help: "QEMU processes on this host that exited without being asked to.",
        label: None,
        samples: |src| one(load(&src.compute.crashes)),
    },
    Family {
        name: "hearth_usage_rows_written_total",
        kind: "counter",
        help: "Metering: usage rows (one VM, one period) the desired state took from this worker.",
        label: None,
        samples: |src| one(load(&src.compute.usage_rows_written)),
    },
    Family {
        name: "hearth_usage_rows_waiting",
        kind: "gauge",
        help: "Metering: usage rows of ended periods this worker keeps until a write of them succeeds.",
        label: None,
        samples: |src| one(load(&src.compute.usage_rows_waiting)),
    },
    Family {
        name: "hearth_usage_write_failures_total",
        kind: "counter",
        help: "Metering: writes of usage rows that failed (no quorum, no leader) and were kept for the next try.",
        label: None,
        samples: |src| one(load(&src.compute.usage_write_failures)),
    },
    Family {
        name: "hearth_backups_stored_total",
        kind: "counter",
        help: "Backups of VMs whose disk is on this worker, stored in their restic repository.",
        label: None,
        samples: |src| one(load(&src.compute.backups_stored)),
    },
    Family {
        name: "hearth_backup_failures_total",
        kind: "counter",
        help: "Backup attempts that failed on this worker (each is retried, 3 attempts in all; hearth backups says why).",
        label: None,
        samples: |src| one(load(&src.compute.backup_failures)),
    },
    Family {
        name: "hearth_state_backup_failures",
        kind: "gauge",
        help: "Failed attempts to back the cluster's state up into this target since the last stored one (servers and witnesses; hearth backups --state says why).",
        label: Some("target"),
        samples: |src| {
            (src.state_backups.iter())
                .map(|(t, failures, _)| (t.clone(), *failures))
                .collect()
        },
    },
    Family {
        name: "hearth_state_backup_last_stored_seconds",
        kind: "gauge",
        help: "When the cluster's state was last stored into this target, Unix seconds (0: never); alert on time() minus it.",
        label: Some("target"),
        samples: |src| {
            (src.state_backups.iter())
                .map(|(t, _, last)| (t.clone(), *last))
                .collect()
        },
    },
    Family {
        name: "hearth_invoice_webhooks",
        kind: "gauge",
        help: "Closed invoices [billing] webhook_url did not take when tried: `waiting` (being retried) or `failed` (every attempt spent; hearth invoice redeliver sends one again).",
        label: Some("state"),
        samples: |src| {
            vec![
                ("waiting".to_owned(), src.webhook.0),
                ("failed".to_owned(), src.webhook.1),
            ]
        },
    },
    Family {
        name: "hearth_worker_lease_valid",
        kind: "gauge",
        help: "1 while this worker's lease (renewed through the Raft group) holds; at 0 it stops its VMs with two disk copies, for their replica host to take over. Only on workers.",
        label: None,
        samples: |src| match src.vms.hosts.contains_key(&src.view.self_name) {
            true => one(u64::from(
                src.compute.lease.valid(std::time::Instant::now()),
            )),
            false => Vec::new(),
        },
    },
    Family {
        name: "hearth_vm_replicas",
        kind: "gauge",
        help: "Replicas of VMs that ask for two disk copies, by state (missing: none placed), as this node's copy of the desired state has them.",
        label: Some("state"),
        samples: |src| {
            use hearth_types::compute::ReplicaState as S;
            let wanting = || {
                src.vms
                    .vms
                    .values()
                    .map(|v| &v.value)
                    .filter(|vm| vm.request.replicas > 1 && !vm.deleting)
            };
            let mut samples: Vec<(String, u64)> =
                [S::Preparing, S::Syncing, S::InSync, S::Degraded]
                    .into_iter()
                    .map(|state| {
                        let n = wanting()
                            .filter(|vm| vm.replica.as_ref().is_some_and(|r| r.state == state))
                            .count();
                        (state.as_str().to_owned(), n as u64)
                    })
                    .collect();
            let missing = wanting().filter(|vm| vm.replica.is_none()).count();
            samples.push(("missing".to_owned(), missing as u64));
            samples
        },
    },
    Family {
        name: "hearth_members",
        kind: "gauge",
        help: "Members of the cluster by state, as this node sees them.",
        label: Some("state"),
        samples: |src| {
            MemberState::ALL
                .into_iter()
                .map(|state| {
                    let members = src.view.members.values();
                    let n = members.filter(|m| m.state == state).count();
                    (state.to_string(), n as u64)
                })
                .collect()
        },
    },
    Family {
        name: "hearth_member_up",
        kind: "gauge",
        help: "Each member this node knows, by name: 1 while alive or suspect, 0 once declared dead (members that left are not shown).",
        label: Some("member"),
        samples: |src| {
            let known = src.view.members.iter();
            let staying = known.filter(|(_, m)| m.state != MemberState::Left);
            staying
                .map(|(name, m)| (name.clone(), u64::from(m.state.is_up())))
                .collect()
        },
    },
    Family {
        name: "hearth_checks",
        kind: "gauge",
        help: "This node's service checks by status.",
        label: Some("status"),
        samples: |src| by_status(src.local_instances.iter()),
    },
    Family {
        name: "hearth_service_instances",
        kind: "gauge",
        help: "Service instances in the cluster by check status, as this node sees them.",
        label: Some("status"),
        samples: |src| by_status(src.view.members.values().flat_map(|m| m.services.iter())),
    },
    Family {
        name: "hearth_gossip_packets_received_total",
        kind: "counter",
        help: "Gossip datagrams received.",
        label: None,
        samples: |src| one(load(&src.gossip.received)),
    },
    Family {
        name: "hearth_gossip_packets_sent_total",
        kind: "counter",
        help: "Gossip datagrams sent.",
        label: None,
        samples: |src| one(load(&src.gossip.sent)),
    },
    Family {
        name: "hearth_gossip_packets_dropped_total",
        kind: "counter",
        help: "Gossip datagrams dropped, by reason.",
        label: Some("reason"),
        samples: |src| {
            let dropped = src.gossip.dropped().into_iter();
            dropped.map(|(reason, n)| (reason.to_string(), n)).collect()
        },
    },
    Family {
        name: "hearth_dns_queries_total",
        kind: "counter",
        help: "DNS queries answered, by response code.",
        label: Some("rcode"),
        samples: |src| {
            let answered = src.dns.answered_by_rcode().into_iter();
            answered.map(|(rcode, n)| (rcode.to_string(), n)).collect()
        },
    },
    Family {
        name: "hearth_dns_packets_dropped_total",
        kind: "counter",
        help: "DNS packets dropped unanswered (malformed, a response, a bad TCP frame, a UDP datagram over 4 KiB).",
        label: None,
        samples: |src| one(src.dns.dropped_malformed()),
    },
    Family {
        name: "hearth_dns_tcp_refused_total",
        kind: "counter",
        help: "DNS TCP connections closed at once, over the total or the per-client cap.",
        label: None,
        samples: |src| one(src.dns.tcp_refused()),
    },
    Family {
        name: "hearth_dns_push_updates_total",
        kind: "counter",
        help: "UPDATE messages the external primary accepted ([dns.push], on the Raft leader).",
        label: None,
        samples: |src| one(src.dns.push().updates_accepted()),
    },
    Family {
        name: "hearth_dns_push_failures_total",
        kind: "counter",
        help: "Pushes to the external primary that failed (each is retried as a full resync).",
        label: None,
        samples: |src| one(src.dns.push().failures()),
    },
    Family {
        name: "hearth_event_handler_runs_total",
        kind: "counter",
        help: "Event handler runs by outcome.",
        label: Some("outcome"),
        samples: |src| {
            let handlers = src.handlers;
            vec![
                ("success".into(), load(&handlers.succeeded)),
                ("failure".into(), load(&handlers.failed)),
                ("timeout".into(), load(&handlers.timed_out)),
            ]
        },
    },
    Family {
        name: "hearth_logins_total",
        kind: "counter",
        help: "Web panel logins by outcome (limited: refused by the rate limit before hashing; busy: every hashing permit taken).",
        label: Some("outcome"),
        samples: |src| {
            let logins = src.logins;
            vec![
                ("success".into(), load(&logins.succeeded)),
                ("failure".into(), load(&logins.failed)),
                ("limited".into(), load(&logins.limited)),
                ("busy".into(), load(&logins.busy)),
            ]
        },
    },
    Family {
        name: "hearth_login_password_checks_total",
        kind: "counter",
        help: "Password hashes (argon2id) computed for logins.",
        label: None,
        samples: |src| one(load(&src.logins.checks)),
    },
    Family {
        name: "hearth_audit_dropped_total",
        kind: "counter",
        help: "Audit entries with no credential behind them over the node's budget per minute, not recorded.",
        label: None,
        samples: |src| one(src.audit_dropped),
    },
    Family {
        name: "hearth_rpc_connections_refused_total",
        kind: "counter",
        help: "Raft RPC connections closed at once: too many still in their handshake (from one address or in all), or too many established.",
        label: None,
        samples: |src| one(src.rpc_refused),
    },
    Family {
        name: "hearth_api_connections_refused_total",
        kind: "counter",
        help: "HTTP API connections closed at once, over the total or the per-client cap.",
        label: None,
        samples: |src| one(src.api_refused),
    },
    Family {
        name: "hearth_events_dropped_total",
        kind: "counter",
        help: "Events dropped because handlers fell too far behind.",
        label: None,
        samples: |src| one(load(&src.gossip.events_dropped)),
    },
];

/// Counts service instances by check status, every status included.
fn by_status<'a>(
    instances: impl Iterator<Item = &'a ServiceInstance> + Clone,
) -> Vec<(String, u64)> {
    CheckStatus::ALL
        .into_iter()
        .map(|status| {
            let n = instances.clone().filter(|i| i.status == status).count();
            (status.to_string(), n as u64)
        })
        .collect()
}

/// The Prometheus text of every family.
pub fn render(src: &MetricsSources<'_>) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let name = family.name;
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for (value, n) in (family.samples)(src) {
            match family.label {
                Some("") => writeln!(out, "{name}{{{value}}} {n}"),
                Some(label) => writeln!(out, "{name}{{{label}=\"{value}\"}} {n}"),
                None => writeln!(out, "{name} {n}"),
            }
            .expect("writing to a String");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family is announced once with its help and type, followed by its samples.
    #[test]
    fn each_family_has_its_header_and_its_samples() {
        let (gossip, dns) = (GossipMetrics::default(), DnsMetrics::default());
        let (handlers, compute) = (
            HandlerMetrics::default(),
            hearth_compute::ComputeMetrics::default(),
        );
        compute.starts.store(3, Ordering::Relaxed);
        handlers.timed_out.store(2, Ordering::Relaxed);
        let text = render(&MetricsSources {
            view: &View::default(),
            local_instances: &[],
            gossip: &gossip,
            dns: &dns,
            handlers: &handlers,
            compute: &compute,
            vms: &Default::default(),
            logins: &Default::default(),
            audit_dropped: 0,
            rpc_refused: 0,
            api_refused: 0,
            host: &crate::host_metrics::HostFacts {
                memory: vec![("total".into(), 4096)],
                ..Default::default()
            },
            vm_usage: &crate::host_metrics::VmUsage {
                cpu_seconds: vec![("vm=\"web\",owner=\"ann\"".into(), 7)],
                ..Default::default()
            },
            raft: Some(&StateStatus {
                node: "n1".into(),
                leader: Some("n1".into()),
                term: 4,
                voters: vec!["n1".into(), "n2".into(), "n3".into()],
                ..Default::default()
            }),
            secret_files: &[("secret_file".into(), 1)],
            webhook: (2, 1),
            state_backups: &[("local".into(), 2, 1_700_000_000)],
        });
        assert!(text.contains("hearth_state_backup_failures{target=\"local\"} 2\n"));
        assert!(
            text.contains("hearth_state_backup_last_stored_seconds{target=\"local\"} 1700000000\n")
        );
        assert!(text.contains("hearth_invoice_webhooks{state=\"waiting\"} 2\n"));
        assert!(text.contains("hearth_invoice_webhooks{state=\"failed\"} 1\n"));
        for family in FAMILIES {
            let help = format!(
                "# HELP {} {}\n# TYPE {} {}\n",
                family.name, family.help, family.name, family.kind
            );
            assert_eq!(text.matches(&help).count(), 1, "{}", family.name);
        }
        for line in [
            "hearth_vm_starts_total 3",
            "hearth_vm_replicas{state=\"degraded\"} 0",
            "hearth_event_handler_runs_total{outcome=\"timeout\"} 2",
            "hearth_members{state=\"alive\"} 0",
            "hearth_checks{status=\"passing\"} 0",
            "hearth_dns_queries_total{rcode=\"noerror\"} 0",
            "hearth_events_dropped_total 0",
            "hearth_host_memory_bytes{kind=\"total\"} 4096",
            "hearth_vm_cpu_seconds_total{vm=\"web\",owner=\"ann\"} 7",
            "hearth_raft_term 4",
            "hearth_raft_is_leader 1",
            "hearth_raft_leader_known 1",
            "hearth_raft_voters 3",
            "hearth_vms{phase=\"lost\"} 0",
            "hearth_secret_file_problem{key=\"secret_file\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    /// docs/metrics.md describes every family, in its table.
    #[test]
    fn the_metrics_doc_describes_every_family() {
        let doc = include_str!("../../../docs/metrics.md");
        for family in FAMILIES {
            assert!(
                doc.contains(&format!("| `{}` | {} |", family.name, family.kind)),
                "docs/metrics.md does not describe {} as a {}",
                family.name,
                family.kind
            );
        }
    }
}
