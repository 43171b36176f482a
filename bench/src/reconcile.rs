//! Reconciler cost: CPU time of one pass of the pure per-host reconciler over N VMs placed on
//! one host, against a fake driver's observations (no QEMU): most running as desired, some to
//! start, some to stop, some unknown processes, so every branch runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hearth_compute::reconcile::{Memory, reconcile};
use hearth_types::compute::ObservedVm;
use hearth_types::compute::{Compute, IoLimits, Phase, Power, Vm};
use hearth_types::desired::Versioned;
use serde_json::json;

use crate::Report;
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// VMs placed on the host.
    #[arg(long, default_value_t = 1000)]
    pub vms: usize,
    /// Timed passes.
    #[arg(long, default_value_t = 200)]
    pub passes: usize,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The `i`th member VM of the world, placed and running on `w1` with its disk there.
fn member_vm(i: usize, id: &str, power: Power) -> Vm {
    let mut vm = Vm::example(id, &format!("member-vm-{i}"), &format!("member-{}", i % 50));
    let request = &mut vm.request;
    (request.memory_mib, request.disk_gib) = (512, 10);
    request.image = "debian".into();
    request.ssh_keys = vec!["ssh-ed25519 AAAA key".into()];
    request.pools = vec!["lan".into()];
    request.io = IoLimits {
        iops: Some(1000),
        bytes_per_sec: None,
        ..IoLimits::default()
    };
    request.power = power;
    vm.ips = vec![hearth_types::compute::Assigned {
        pool: "lan".into(),
        address: std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        prefix: 8,
        routed: false,
    }];
    vm.host = Some("w1".into());
    vm.phase = Phase::Running;
    vm.phase_since = 1;
    vm.disk.host = Some("w1".into());
    vm
}

fn world(n: usize) -> (Compute, Vec<ObservedVm>, Memory) {
    let mut compute = Compute::default();
    let mut seen = Vec::new();
    let mut memory = Memory::default();
    for i in 0..n {
        let id = format!("vm-{}", i + 1);
        let power = if i % 10 == 9 {
            Power::Stopped
        } else {
            Power::Running
        };
        compute.vms.insert(
            id.clone(),
            Versioned {
                version: 1,
                value: member_vm(i, &id, power),
            },
        );
        // Every 20th VM's QEMU is gone (to start); the stopped ones still run (to stop).
        let running = i % 20 != 0;
        seen.push(ObservedVm {
            id: id.clone(),
            pid: running.then_some(1000 + i as u32),
            disk_present: true,
            generation: 1,
            foreign: false,
            held: false,
            mirroring: None,
            guard_altered: false,
        });
        memory.applied_io.insert(
            id,
            IoLimits {
                iops: Some(1000),
                bytes_per_sec: None,
                ..IoLimits::default()
            },
        );
    }
    for i in 0..n / 100 {
        seen.push(ObservedVm {
            id: format!("vm-stray-{i}"),
            pid: Some(9000 + i as u32),
            disk_present: true,
            generation: 1,
            foreign: false,
            held: false,
            mirroring: None,
            guard_altered: false,
        });
    }
    (compute, seen, memory)
}

pub fn run(args: &Args) -> Result<Report> {
    let (compute, seen, memory) = world(args.vms);
    let mut samples: Vec<Duration> = Vec::with_capacity(args.passes);
    let mut actions = 0;
    for _ in 0..args.passes {
        let started = Instant::now();
        let plan = reconcile("w1", &compute, &seen, &memory);
        samples.push(started.elapsed());
        actions = plan.actions.len() + plan.drift.len();
    }
    let summary = Summary::of(&samples).context("no passes")?;
    let text = format!(
        "one reconcile pass over {} VMs ({} actions and drift entries): {}\n",
        args.vms,
        actions,
        summary.line_ms()
    );
    Ok(Report {
        bench: "reconcile",
        text,
        fields: json!({ "vms": args.vms, "pass_ms": { "p50": summary.p50 * 1e3, "p99": summary.p99 * 1e3, "max": summary.max * 1e3 }, "actions": actions }),
    })
}
