//! Prometheus text rendering of the agent's counters and of its local view.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use hearth_dns::DnsMetrics;
use hearth_membership::GossipMetrics;
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
}

pub fn render(src: &MetricsSources<'_>) -> String {
    let mut out = String::new();
    for (name, help, counter) in [
        (
            "hearth_reconcile_passes_total",
            "Reconciliation passes of this host's VMs.",
            &src.compute.passes,
        ),
        (
            "hearth_vm_starts_total",
            "QEMU processes this host started.",
            &src.compute.starts,
        ),
        (
            "hearth_vm_crashes_total",
            "QEMU processes on this host that exited without being asked to.",
            &src.compute.crashes,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let n = counter.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "{name} {n}");
    }
    header(
        &mut out,
        "hearth_members",
        "gauge",
        "Members of the cluster by state, as this node sees them.",
    );
    for state in MemberState::ALL {
        let n = src
            .view
            .members
            .values()
            .filter(|m| m.state == state)
            .count();
        let _ = writeln!(out, "hearth_members{{state=\"{state}\"}} {n}");
    }
    header(
        &mut out,
        "hearth_checks",
        "gauge",
        "This node's service checks by status.",
    );
    for status in CheckStatus::ALL {
        let n = src
            .local_instances
            .iter()
            .filter(|i| i.status == status)
            .count();
        let _ = writeln!(out, "hearth_checks{{status=\"{status}\"}} {n}");
    }
    header(
        &mut out,
        "hearth_service_instances",
        "gauge",
        "Service instances in the cluster by check status, as this node sees them.",
    );
    for status in CheckStatus::ALL {
        let n = src
            .view
            .members
            .values()
            .flat_map(|m| m.services.iter())
            .filter(|i| i.status == status)
            .count();
        let _ = writeln!(out, "hearth_service_instances{{status=\"{status}\"}} {n}");
    }
    header(
        &mut out,
        "hearth_gossip_packets_received_total",
        "counter",
        "Gossip datagrams received.",
    );
    let _ = writeln!(
        out,
        "hearth_gossip_packets_received_total {}",
        src.gossip.received.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "hearth_gossip_packets_sent_total",
        "counter",
        "Gossip datagrams sent.",
    );
    let _ = writeln!(
        out,
        "hearth_gossip_packets_sent_total {}",
        src.gossip.sent.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "hearth_gossip_packets_dropped_total",
        "counter",
        "Gossip datagrams dropped, by reason.",
    );
    for (reason, n) in src.gossip.dropped() {
        let _ = writeln!(
            out,
            "hearth_gossip_packets_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "hearth_dns_queries_total",
        "counter",
        "DNS queries answered, by response code.",
    );
    for (rcode, n) in src.dns.answered_by_rcode() {
        let _ = writeln!(out, "hearth_dns_queries_total{{rcode=\"{rcode}\"}} {n}");
    }
    header(
        &mut out,
        "hearth_dns_packets_dropped_total",
        "counter",
        "DNS packets dropped as malformed.",
    );
    let _ = writeln!(
        out,
        "hearth_dns_packets_dropped_total {}",
        src.dns.dropped_malformed()
    );
    header(
        &mut out,
        "hearth_dns_push_updates_total",
        "counter",
        "UPDATE messages the external primary accepted ([dns.push], on the Raft leader).",
    );
    let _ = writeln!(
        out,
        "hearth_dns_push_updates_total {}",
        src.dns.push().updates_accepted()
    );
    header(
        &mut out,
        "hearth_dns_push_failures_total",
        "counter",
        "Pushes to the external primary that failed (each is retried as a full resync).",
    );
    let _ = writeln!(
        out,
        "hearth_dns_push_failures_total {}",
        src.dns.push().failures()
    );
    header(
        &mut out,
        "hearth_event_handler_runs_total",
        "counter",
        "Event handler runs by outcome.",
    );
    for (outcome, counter) in [
        ("success", &src.handlers.succeeded),
        ("failure", &src.handlers.failed),
        ("timeout", &src.handlers.timed_out),
    ] {
        let _ = writeln!(
            out,
            "hearth_event_handler_runs_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    header(
        &mut out,
        "hearth_events_dropped_total",
        "counter",
        "Events dropped because handlers fell too far behind.",
    );
    let _ = writeln!(
        out,
        "hearth_events_dropped_total {}",
        src.gossip.events_dropped.load(Ordering::Relaxed)
    );
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
