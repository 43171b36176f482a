//! Members' quotas: a `Quota` of VMs, vCPUs, memory, disk, addresses and IO per VM, named
//! plans of them, what a member uses (`Usage`), and `check`, the pure decision whether one
//! more VM fits. Admins have none.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::compute::{IoLimits, VmRequest};
use crate::names::check_name;

/// The plan a member without one, or with one that no longer exists, is on.
pub const DEFAULT_PLAN: &str = "default";

/// QEMU's throttling accepts values up to 10^15 (`THROTTLE_VALUE_MAX`).
pub const IO_MAX: u64 = 1_000_000_000_000_000;

/// Limits on what one member's VMs may hold together, and IO per VM. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    /// Addresses from pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<u64>,
    /// The IO limits every VM of the member gets (members cannot change them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = IO_MAX))]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = IO_MAX))]
    pub bytes_per_sec: Option<u64>,
    /// Network bytes per second into and out of each bridged VM of the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = IO_MAX))]
    pub net_in_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = IO_MAX))]
    pub net_out_bytes_per_sec: Option<u64>,
    /// DNS zones of the member's own (`hearth zone add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<u64>,
    /// Backups the member may ask for of each VM per day (`hearth backup now`); scheduled
    /// ones do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups_per_day: Option<u64>,
}

impl Quota {
    /// The quota of a member on the built-in default plan (when the co-op defined none):
    /// enough for a few small VMs, so one member cannot take a whole worker or pool.
    pub const BUILT_IN: Quota = Quota {
        vms: Some(5),
        vcpus: Some(8),
        memory_mib: Some(16 * 1024),
        disk_gib: Some(200),
        addresses: Some(5),
        iops: None,
        bytes_per_sec: None,
        net_in_bytes_per_sec: None,
        net_out_bytes_per_sec: None,
        zones: Some(crate::zones::DEFAULT_ZONES),
        backups_per_day: Some(6),
    };

    /// `self`, with each limit `over` sets taking its place.
    pub fn overridden_by(self, over: &Quota) -> Quota {
        Quota {
            vms: over.vms.or(self.vms),
            vcpus: over.vcpus.or(self.vcpus),
            memory_mib: over.memory_mib.or(self.memory_mib),
            disk_gib: over.disk_gib.or(self.disk_gib),
            addresses: over.addresses.or(self.addresses),
            iops: over.iops.or(self.iops),
            bytes_per_sec: over.bytes_per_sec.or(self.bytes_per_sec),
            net_in_bytes_per_sec: over.net_in_bytes_per_sec.or(self.net_in_bytes_per_sec),
            net_out_bytes_per_sec: over.net_out_bytes_per_sec.or(self.net_out_bytes_per_sec),
            zones: over.zones.or(self.zones),
            backups_per_day: over.backups_per_day.or(self.backups_per_day),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.io().validate()
    }

    /// Whether no limit is set.
    pub fn is_unset(&self) -> bool {
        *self == Quota::default()
    }

    /// The IO limits this quota gives each VM.
    pub fn io(&self) -> IoLimits {
        IoLimits {
            iops: self.iops,
            bytes_per_sec: self.bytes_per_sec,
            net_in_bytes_per_sec: self.net_in_bytes_per_sec,
            net_out_bytes_per_sec: self.net_out_bytes_per_sec,
        }
    }
}

/// A named quota that accounts may be put on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    /// What its members are charged; none: nothing is billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<crate::money::Prices>,
    /// The backup schedule of its members' VMs (a VM may have its own, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::BackupPolicy>,
    /// Where its members' new VMs keep their disks, unless one of a VM's pools says; local
    /// qcow2 files when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::compute::Storage>,
}

impl Plan {
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        self.quota.validate().map_err(|e| format!("quota.{e}"))?;
        if let Some(prices) = &self.prices {
            prices.validate().map_err(|e| format!("prices.{e}"))?;
        }
        if let Some(storage) = &self.storage {
            storage.validate()?;
        }
        match &self.backup {
            Some(policy) => policy.validate().map_err(|e| format!("backup.{e}")),
            None => Ok(()),
        }
    }
}

/// What a member's VMs hold together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub vms: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub addresses: u64,
}

impl Usage {
    /// What `requests` (with how many addresses each holds) add up to.
    pub fn of<'a>(requests: impl IntoIterator<Item = (&'a VmRequest, usize)>) -> Usage {
        requests
            .into_iter()
            .fold(Usage::default(), |mut usage, (request, addresses)| {
                usage.vms += 1;
                usage.vcpus += u64::from(request.vcpus);
                usage.memory_mib += request.memory_mib;
                usage.disk_gib += request.disk_gib;
                usage.addresses += addresses as u64;
                usage
            })
    }
}

/// What the VMs `owner` owns in `compute` hold together, leaving out VM `except`.
pub fn usage(compute: &crate::compute::Compute, owner: &str, except: Option<&str>) -> Usage {
    Usage::of(
        compute
            .vms
            .values()
            .map(|vm| &vm.value)
            .filter(|vm| vm.request.owner == owner && Some(vm.id.as_str()) != except)
            .map(|vm| (&vm.request, vm.ips.len())),
    )
}

/// What the VMs placed on host `host` ask for together (those being deleted left out): its
/// load against its declared capacity.
pub fn placed(compute: &crate::compute::Compute, host: &str) -> Usage {
    Usage::of(
        compute
            .vms
            .values()
            .map(|vm| &vm.value)
            .filter(|vm| vm.host.as_deref() == Some(host) && !vm.deleting)
            .map(|vm| (&vm.request, vm.ips.len())),
    )
}

/// Whether one more VM asking `request` fits `quota` beside `used`: the error names the
/// first limit it would pass, with what is left.
pub fn check(quota: &Quota, used: &Usage, request: &VmRequest) -> Result<(), String> {
    let asks = [
        ("vms", quota.vms, used.vms, 1, ""),
        (
            "vcpus",
            quota.vcpus,
            used.vcpus,
            u64::from(request.vcpus),
            "",
        ),
        (
            "memory_mib",
            quota.memory_mib,
            used.memory_mib,
            request.memory_mib,
            " MiB",
        ),
        (
            "disk_gib",
            quota.disk_gib,
            used.disk_gib,
            request.disk_gib,
            " GiB",
        ),
        (
            "addresses",
            quota.addresses,
            used.addresses,
            request.pools.len() as u64,
            "",
        ),
    ];
    for (field, limit, used, asked, unit) in asks {
        if let Some(limit) = limit
            && used.saturating_add(asked) > limit
        {
            let left = limit.saturating_sub(used);
            return Err(format!(
                "{field}: over quota: {limit}{unit} allowed, {used}{unit} in use, {left}{unit} left; this VM asks {asked}{unit}"
            ));
        }
    }
    Ok(())
}

/// The quota of each plan by name, as the desired state keeps them.
pub type Plans = crate::shared_map::OrdMap<String, crate::desired::Versioned<Plan>>;

/// The quota of an account on plan `plan` (or the default) with its own `overrides`: the
/// named plan, else the co-op's `default` plan, else `Quota::BUILT_IN`.
pub fn quota_of(plans: &Plans, plan: Option<&str>, overrides: &Quota) -> Quota {
    let base = plan
        .and_then(|name| plans.get(name))
        .or_else(|| plans.get(DEFAULT_PLAN))
        .map_or(Quota::BUILT_IN, |p| p.value.quota);
    base.overridden_by(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::{Arch, Power};

    fn request(vcpus: u32, memory_mib: u64, pools: usize) -> VmRequest {
        VmRequest {
            name: "web".into(),
            owner: "alice".into(),
            arch: Arch::X86_64,
            vcpus,
            memory_mib,
            disk_gib: 10,
            image: "tiny".into(),
            ssh_keys: vec![],
            pools: (0..pools).map(|i| format!("p{i}")).collect(),
            io: Default::default(),
            power: Power::Running,
            replicas: 1,
        }
    }

    #[test]
    fn a_vm_fits_until_a_limit_would_pass_and_the_refusal_says_what_is_left() {
        let quota = Quota::BUILT_IN;
        let a = request(4, 1024, 1);
        let used = Usage::of([(&a, 1), (&a, 1)]);
        assert_eq!(used.vcpus, 8);
        let why = check(&quota, &used, &request(1, 64, 0)).unwrap_err();
        assert_eq!(
            why,
            "vcpus: over quota: 8 allowed, 8 in use, 0 left; this VM asks 1"
        );
        let used = Usage::of([(&request(1, 64, 1), 1)]);
        assert!(check(&quota, &used, &request(1, 64, 4)).is_ok());
        let why = check(&quota, &used, &request(1, 64, 5)).unwrap_err();
        assert!(
            why.starts_with("addresses: over quota: 5 allowed, 1 in use, 4 left"),
            "{why}"
        );
        let huge = request(256, 64, 0);
        assert!(check(&quota, &Usage::default(), &huge).is_err());
        assert!(
            check(&Quota::default(), &Usage::default(), &huge).is_ok(),
            "no limits"
        );
    }

    #[test]
    fn an_accounts_quota_is_its_plan_or_the_default_with_its_overrides() {
        let mut plans = Plans::new();
        assert_eq!(quota_of(&plans, None, &Quota::default()), Quota::BUILT_IN);
        let plan = |name: &str, vms| crate::desired::Versioned {
            version: 1,
            value: Plan {
                name: name.into(),
                quota: Quota {
                    vms: Some(vms),
                    ..Quota::default()
                },
                prices: None,
                backup: None,
                storage: None,
            },
        };
        plans.insert(DEFAULT_PLAN.into(), plan(DEFAULT_PLAN, 2));
        plans.insert("big".into(), plan("big", 50));
        assert_eq!(quota_of(&plans, None, &Quota::default()).vms, Some(2));
        assert_eq!(
            quota_of(&plans, Some("big"), &Quota::default()).vms,
            Some(50)
        );
        assert_eq!(
            quota_of(&plans, Some("gone"), &Quota::default()).vms,
            Some(2)
        );
        let mine = Quota {
            vms: Some(3),
            vcpus: Some(1),
            ..Quota::default()
        };
        let q = quota_of(&plans, Some("big"), &mine);
        assert_eq!((q.vms, q.vcpus, q.memory_mib), (Some(3), Some(1), None));
    }
}
