//! `hearth-bench`: benchmarks of real hearth agents against Serf and Knot on loopback
//! addresses. They print and record figures; they assert nothing about speed.

mod backup;
mod disk_copy;
mod dns;
mod dns_qps;
mod failover;
mod false_positives;
mod ha_restart;
mod hearth;
mod live_move;
mod memory;
mod nbd;
mod procs;
mod qsd;
mod raft;
mod rbd_write;
mod reconcile;
mod replica_latency;
mod serf;
mod stats;
mod vm_boot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Benchmarks of hearth agents (real processes on 127.a.b.x addresses, started through
/// hearth-testkit) against HashiCorp Serf and Knot DNS. Every process a benchmark starts is
/// killed by PID when it ends, also on failure. Figures go to stdout; progress to stderr.
#[derive(Debug, Parser)]
#[command(name = "hearth-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Failure detection: time from SIGKILL of one node until its address is gone from the
    /// `www` DNS answers of every surviving hearth node, against the time until every
    /// surviving Serf agent (default settings) reports it `failed`. Prints p50/p99/min/max
    /// of both and their ratio.
    Failover(failover::Args),
    /// False positives: counts "dead" verdicts (member-failed handler runs and `dead` in
    /// /v1/members) in a healthy cluster while one core is saturated by a busy loop, then
    /// while one node at a time is paused with SIGSTOP for a second every 20 s.
    FalsePositives(false_positives::Args),
    /// Idle memory: VmRSS of each agent of a hearth cluster and of a Serf cluster of the
    /// same size after they have sat idle.
    Memory(memory::Args),
    /// DNS throughput: queries per second that one hearth agent and Knot DNS (serving the
    /// same names) answer on one pinned core, measured with dnsperf on the other core.
    DnsQps(dns_qps::Args),
    /// Replicated state: write latency (p50/p99, one client, sequential) and throughput
    /// (many clients) through a 3-server Raft group with fsync on, and the time from SIGKILL
    /// of the leader to the first successful write through a survivor.
    Raft(raft::Args),
    /// Reconciler cost: wall time of one pass of the per-host reconciler (a pure function)
    /// over 1,000 VMs against fake observations; no QEMU runs.
    Reconcile(reconcile::Args),
    /// VM start: from POST /v1/vms on a one-node server+worker agent to the test guest's
    /// console markers (p50/p90 over --runs), against the same guest booted by QEMU alone.
    /// Needs the test guest: ./scripts/build-test-guest.sh target/test-guest.
    VmBoot(vm_boot::Args),
    /// Live migration: a running test guest moved back and forth between two server+worker
    /// agents (POST /v1/vms/NAME/migrate); the whole move, QEMU's downtime, and the pause the
    /// guest sees (QEMU's stop on the source to the target's cont). Needs the test guest.
    LiveMove(live_move::Args),
    /// HA restart: a VM with replicas = 2 on three server+worker agents; its host killed
    /// (kill -9 of agent and QEMU) until the VM runs elsewhere and its guest is up there.
    /// Needs the test guest.
    HaRestart(ha_restart::Args),
    /// Disk copy: a 1 GiB qcow2 with half its clusters written, copied by `qemu-img convert`
    /// and by hearth's live-move mirror (`qemu-storage-daemon` on both ends, `blockdev-mirror`
    /// into an NBD export on 127.0.0.1: TLS-PSK as hearth has it, TLS-PSK without ChaCha20,
    /// no TLS) until the job is ready.
    DiskCopy(disk_copy::Args),
    /// Replica write latency: 4 KiB writes at queue depth 1 into a VM's disk held by
    /// `qemu-storage-daemon`, without a replica and with hearth's synchronous one (a
    /// write-blocking mirror into an NBD export under TLS-PSK with writethrough). No guest.
    ReplicaLatency(replica_latency::Args),
    /// Backups: a 1 GiB disk backed up hearth's way (a raw copy streamed into restic), in
    /// full and after 1 % of it changed, against `restic backup FILE`; and a restore (the
    /// latest snapshot dumped and written as a qcow2 overlay). No guest, no agent.
    Backup(backup::Args),
    /// RBD writes: 64 KiB sequential (depth 16) and 4 KiB flushed (depth 1) writes through
    /// QEMU's block layer (`qemu-img bench`) into a disk on a single-node Ceph made as hearth
    /// makes it, against a local qcow2 overlay. No guest, no agent.
    RbdWrite(rbd_write::Args),
}

/// Options every benchmark takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The hearth binary to run (build it with `cargo build --release -p hearth`).
    #[arg(long, default_value = DEFAULT_HEARTH)]
    pub hearth: PathBuf,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The release build of the workspace this benchmark was built in.
const DEFAULT_HEARTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/hearth");

/// What a benchmark prints: a human summary, and the same figures as JSON fields.
pub struct Report {
    pub bench: &'static str,
    pub text: String,
    pub fields: Value,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, json) = match &cli.command {
        Command::Failover(args) => (failover::run(args), args.common.json),
        Command::FalsePositives(args) => (false_positives::run(args), args.common.json),
        Command::Memory(args) => (memory::run(args), args.common.json),
        Command::DnsQps(args) => (dns_qps::run(args), args.common.json),
        Command::Raft(args) => (raft::run(args), args.common.json),
        Command::Reconcile(args) => (reconcile::run(args), args.json),
        Command::VmBoot(args) => (vm_boot::run(args), args.common.json),
        Command::LiveMove(args) => (live_move::run(args), args.common.json),
        Command::HaRestart(args) => (ha_restart::run(args), args.common.json),
        Command::DiskCopy(args) => (disk_copy::run(args), args.json),
        Command::ReplicaLatency(args) => (replica_latency::run(args), args.json),
        Command::Backup(args) => (backup::run(args), args.json),
        Command::RbdWrite(args) => (rbd_write::run(args), args.json),
    };
    match result {
        Ok(report) => {
            println!("== {} ==\n{}", report.bench, report.text.trim_end());
            if json {
                let mut fields = report.fields;
                fields["bench"] = Value::from(report.bench);
                println!("{fields}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hearth-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
