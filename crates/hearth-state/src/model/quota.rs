//! Owners and members' quotas at the moment a VM is created: a `CreateVm` for a name with no
//! account is refused; one of a VM a member owns is
//! refused when it would pass the member's quota or could never be placed, and otherwise gets
//! the IO limits of the member's plan. Applied inside `apply`, so two creations racing each
//! other are counted one after the other on every replica.

use std::borrow::Cow;

use hearth_types::account::AccountRole;
use hearth_types::compute::{Compute, Storage, VmRequest};
use hearth_types::desired::DesiredState;
use hearth_types::quota::{DEFAULT_PLAN, check, quota_of, usage};

use super::compute::ComputeCommand;

/// `command` as it may be applied (a member's new VM with its plan's IO limits), or why it
/// is refused.
pub(super) fn admit<'c>(
    state: &DesiredState,
    command: &'c ComputeCommand,
) -> Result<Cow<'c, ComputeCommand>, String> {
    if let ComputeCommand::SetOwner { vm, owner, .. } = command {
        return given(state, vm, owner).map(|()| Cow::Borrowed(command));
    }
    let ComputeCommand::CreateVm { request } = command else {
        return Ok(Cow::Borrowed(command));
    };
    // Made for a name with no account, it would pass to whoever made that account next.
    let Some(account) = state.accounts.get(&request.owner).map(|a| &a.value) else {
        return Err(format!(
            "owner: no account named {}; make it first (hearth account add {})",
            request.owner, request.owner
        ));
    };
    if account.role != AccountRole::Member {
        return Ok(Cow::Borrowed(command));
    }
    let quota = quota_of(&state.plans, account.plan.as_deref(), &account.quota);
    check(
        &quota,
        &usage(&state.compute, &request.owner, None),
        request,
    )?;
    placeable(&state.compute, request)?;
    let mut request = request.clone();
    request.io = quota.io();
    Ok(Cow::Owned(ComputeCommand::CreateVm { request }))
}

/// The storage the plan of `owner` gives new VMs (the default plan's for an account with
/// none), if it says.
pub(super) fn plan_storage(state: &DesiredState, owner: &str) -> Option<Storage> {
    let account = &state.accounts.get(owner)?.value;
    let plan = account.plan.as_deref().unwrap_or(DEFAULT_PLAN);
    let plan = state
        .plans
        .get(plan)
        .or_else(|| state.plans.get(DEFAULT_PLAN))?;
    plan.value.storage.clone()
}

/// A VM is given only to an existing account, and must fit a member's quota as if they
/// created it.
fn given(state: &DesiredState, vm: &str, owner: &str) -> Result<(), String> {
    let Some(vm) = state.compute.vms.get(vm).map(|v| &v.value) else {
        return Ok(());
    };
    // Given to a name with no account, it would pass to whoever made that account next.
    let Some(account) = state.accounts.get(owner).map(|a| &a.value) else {
        return Err(format!("owner: no account named {owner}"));
    };
    if account.role != AccountRole::Member {
        return Ok(());
    }
    let quota = quota_of(&state.plans, account.plan.as_deref(), &account.quota);
    let mut request = vm.request.clone();
    request.pools = vm.ips.iter().map(|ip| ip.pool.clone()).collect();
    check(
        &quota,
        &usage(&state.compute, owner, Some(&vm.id)),
        &request,
    )
}

/// A VM larger than every worker could never run, and would hold its addresses forever.
fn placeable(compute: &Compute, request: &VmRequest) -> Result<(), String> {
    let hosts: Vec<_> = compute.hosts.values().map(|h| h.capacity).collect();
    let fits = |c: &hearth_types::compute::Capacity| {
        c.vcpus >= request.vcpus
            && c.memory_mib >= request.memory_mib
            && c.disk_gib >= request.disk_gib
    };
    if hosts.is_empty() || hosts.iter().any(fits) {
        return Ok(());
    }
    let most =
        |f: fn(&hearth_types::compute::Capacity) -> u64| hosts.iter().map(f).max().unwrap_or(0);
    Err(format!(
        "size: no worker could ever run it: the largest offer {} vCPUs, {} MiB and {} GiB",
        most(|c| u64::from(c.vcpus)),
        most(|c| c.memory_mib),
        most(|c| c.disk_gib),
    ))
}
