//! `hearth plan`: members' plans (quotas), and which plan an account is on, through the
//! local agent's API.

use clap::Subcommand;
use hearth_types::api::{AccountRow, PlanRow, PutPlan, SetPlan};
use hearth_types::money::{Amount, Prices};
use hearth_types::quota::{Plan, Quota};
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table};

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Create or replace a plan. A limit left out is no limit. The plan named `default`
    /// applies to members on no plan; without one, members get 5 VMs, 8 vCPUs, 16 GiB of
    /// memory, 200 GiB of disk and 5 addresses.
    ///
    /// Prices are exact decimals (at most 6 places, no floats) in --currency; a price left
    /// out is free, and a plan with no --currency bills nothing.
    Set {
        name: String,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        prices: PriceArgs,
        #[command(flatten)]
        backup: Box<PlanBackupArgs>,
        /// Where its members' new VMs keep their disks, unless one of a VM's pools says:
        /// `local` (a qcow2 file on the worker) or `rbd:POOL` (an image in that pool of the
        /// co-op's Ceph cluster) [default: local].
        #[arg(long, value_name = "STORAGE", value_parser = crate::compute_cli::parse_storage)]
        storage: Option<hearth_types::compute::Storage>,
    },
    /// List the plans.
    List,
    /// Remove a plan; its members fall back to `default`.
    Rm { name: String },
    /// Put an account on a plan (none: `default`), with limits of its own in place of the
    /// plan's; and show what it uses.
    Assign {
        account: String,
        /// The plan; leave it out for `default`.
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        limits: Limits,
    },
}

/// A plan's backup schedule as flags.
#[derive(clap::Args)]
pub struct PlanBackupArgs {
    /// Back up its members' VMs every day at this time of day (HH:MM, 24 hours, in
    /// --time-zone), unless a VM has a schedule of its own (`hearth backup schedule`).
    #[arg(long, value_name = "HH:MM", requires = "backup_target")]
    backup_at: Option<String>,
    /// The backup target of the schedule.
    #[arg(long, value_name = "NAME", requires = "backup_at")]
    backup_target: Option<String>,
    #[command(flatten)]
    keep: crate::backups_cli::KeepArgs,
}

/// A plan's prices as flags.
#[derive(clap::Args)]
pub struct PriceArgs {
    /// The currency of the prices: an ISO 4217 code such as EUR.
    #[arg(long, value_name = "CODE")]
    currency: Option<String>,
    /// Per vCPU per hour a VM runs.
    #[arg(long, value_name = "AMOUNT", requires = "currency")]
    price_vcpu_hour: Option<Amount>,
    /// Per GiB of memory per hour a VM runs.
    #[arg(long, value_name = "AMOUNT", requires = "currency")]
    price_gib_ram_hour: Option<Amount>,
    /// Per GiB of disk per month, running or stopped.
    #[arg(long, value_name = "AMOUNT", requires = "currency")]
    price_gib_disk_month: Option<Amount>,
    /// Per address per month, running or stopped.
    #[arg(long, value_name = "AMOUNT", requires = "currency")]
    price_address_month: Option<Amount>,
    /// Per GiB of backups kept per month.
    #[arg(long, value_name = "AMOUNT", requires = "currency")]
    price_backup_gib_month: Option<Amount>,
}

impl PriceArgs {
    fn prices(&self) -> Option<Prices> {
        Some(Prices {
            currency: self.currency.clone()?,
            vcpu_hour: self.price_vcpu_hour,
            gib_ram_hour: self.price_gib_ram_hour,
            gib_disk_month: self.price_gib_disk_month,
            address_month: self.price_address_month,
            backup_gib_month: self.price_backup_gib_month,
        })
    }
}

/// A plan's prices in one cell: the currency, then each price set.
fn price_list(prices: Option<&Prices>) -> String {
    let Some(prices) = prices else {
        return "-".into();
    };
    let set: Vec<String> = prices
        .each()
        .iter()
        .filter_map(|(field, price)| Some(format!("{field} {}", (*price)?)))
        .collect();
    format!("{} {}", prices.currency, set.join(", "))
}

/// A quota's limits as flags.
#[derive(clap::Args)]
pub struct Limits {
    /// VMs in all.
    #[arg(long, value_name = "N")]
    vms: Option<u64>,
    /// vCPUs of all VMs together.
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// Memory of all VMs together, in MiB.
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// Disk of all VMs together, in GiB.
    #[arg(long, value_name = "GIB")]
    disk_gib: Option<u64>,
    /// Addresses from pools, all VMs together.
    #[arg(long, value_name = "N")]
    addresses: Option<u64>,
    /// The IOPS limit each VM gets (members cannot change it).
    #[arg(long, value_name = "N")]
    iops: Option<u64>,
    /// The disk bytes/s limit each VM gets.
    #[arg(long, value_name = "N")]
    bytes_per_sec: Option<u64>,
    /// The network bytes/s into each bridged VM (12500000 is 100 Mbit/s).
    #[arg(long, value_name = "N")]
    net_in_bytes_per_sec: Option<u64>,
    /// The network bytes/s out of each bridged VM.
    #[arg(long, value_name = "N")]
    net_out_bytes_per_sec: Option<u64>,
    /// DNS zones of their own (`hearth zone add`).
    #[arg(long, value_name = "N")]
    zones: Option<u64>,
    /// Backups a member may ask for of each VM per day (`hearth backup now`; scheduled
    /// backups do not count).
    #[arg(long, value_name = "N")]
    backups_per_day: Option<u64>,
}

impl Limits {
    fn quota(&self) -> Quota {
        Quota {
            vms: self.vms,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            addresses: self.addresses,
            iops: self.iops,
            bytes_per_sec: self.bytes_per_sec,
            net_in_bytes_per_sec: self.net_in_bytes_per_sec,
            net_out_bytes_per_sec: self.net_out_bytes_per_sec,
            zones: self.zones,
            backups_per_day: self.backups_per_day,
        }
    }
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `hearth plan list`.
fn list(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let rows: Vec<PlanRow> = client.get("/v1/plans")?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    print_table(
        &[
            "PLAN",
            "VMS",
            "VCPUS",
            "MEMORY MIB",
            "DISK GIB",
            "ADDRESSES",
            "IOPS",
            "BYTES/S",
            "NET IN B/S",
            "NET OUT B/S",
            "BACKUPS/DAY",
            "PRICES",
            "BACKUP SCHEDULE",
        ],
        rows.iter().map(|r| {
            let q = &r.plan.quota;
            vec![
                r.plan.name.clone(),
                limit(q.vms),
                limit(q.vcpus),
                limit(q.memory_mib),
                limit(q.disk_gib),
                limit(q.addresses),
                limit(q.iops),
                limit(q.bytes_per_sec),
                limit(q.net_in_bytes_per_sec),
                limit(q.net_out_bytes_per_sec),
                limit(q.backups_per_day),
                price_list(r.plan.prices.as_ref()),
                crate::backups_cli::schedule_cell(r.plan.backup.as_ref()),
            ]
        }),
    );
    Ok(())
}

pub fn plan(client: &ApiClient, json: bool, command: PlanCommand) -> Result<(), ClientError> {
    match command {
        PlanCommand::Set {
            name,
            limits,
            prices,
            backup,
            storage,
        } => {
            let PlanBackupArgs {
                backup_at,
                backup_target,
                keep,
            } = *backup;
            let policy = match (backup_target, backup_at) {
                (Some(target), Some(at)) => Some(keep.policy(target, at)),
                _ => None,
            };
            let body = PutPlan {
                plan: Plan {
                    name: name.clone(),
                    quota: limits.quota(),
                    prices: prices.prices(),
                    backup: policy,
                    storage,
                },
                expect: Default::default(),
            };
            let answer: Value = client.put("/v1/plans", &body)?;
            done(json, &answer, &format!("plan {name} set"))
        }
        PlanCommand::List => list(client, json),
        PlanCommand::Rm { name } => {
            let answer: Value = client.delete(&format!("/v1/plans/{name}"))?;
            done(json, &answer, &format!("plan {name} removed"))
        }
        PlanCommand::Assign {
            account,
            plan,
            limits,
        } => {
            let body = SetPlan {
                plan,
                quota: limits.quota(),
            };
            let _: Value = client.put(&format!("/v1/accounts/{account}/plan"), &body)?;
            let rows: Vec<AccountRow> = client.get("/v1/accounts")?;
            let row = rows.into_iter().find(|r| r.name == account);
            if json {
                print_json(&row);
            } else if let Some(row) = row {
                print_quota(&row);
            }
            Ok(())
        }
    }
}

fn done(json: bool, answer: &Value, message: &str) -> Result<(), ClientError> {
    if json {
        print_json(answer);
    } else {
        println!("{message}");
    }
    Ok(())
}

/// An account's plan, and per limit what it uses of what it may.
pub fn print_quota(row: &AccountRow) {
    let (Some(quota), Some(usage)) = (row.quota, row.usage) else {
        println!("{}: an admin; no quota", row.name);
        return;
    };
    println!(
        "{} on plan {}",
        row.name,
        row.plan.as_deref().unwrap_or("default")
    );
    print_table(
        &["LIMIT", "USED", "ALLOWED"],
        [
            ("vms", usage.vms, quota.vms),
            ("vcpus", usage.vcpus, quota.vcpus),
            ("memory_mib", usage.memory_mib, quota.memory_mib),
            ("disk_gib", usage.disk_gib, quota.disk_gib),
            ("addresses", usage.addresses, quota.addresses),
        ]
        .into_iter()
        .map(|(name, used, allowed)| vec![name.to_owned(), used.to_string(), limit(allowed)]),
    );
}
