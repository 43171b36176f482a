//! The billing commands' `apply`: a worker's usage rows, a month's close, and a credit (the
//! decisions themselves are `hearth_types::metering` and `hearth_types::invoice`).

use hearth_types::desired::DesiredState;
use hearth_types::invoice::{Credit, WebhookDelivery};
use hearth_types::metering::{MAX_ROWS_PER_WRITE, UsageRow};
use hearth_types::money::Prices;

use super::Outcome;

/// Keeps the rows the state does not have yet; all are checked first, so a bad row refuses
/// the whole command.
pub(super) fn record_usage(
    state: &mut DesiredState,
    host: &str,
    rows: &[UsageRow],
    index: u64,
) -> Outcome {
    if rows.len() > MAX_ROWS_PER_WRITE {
        return Outcome::Invalid {
            message: format!("rows: at most {MAX_ROWS_PER_WRITE} in one write"),
        };
    }
    if let Some(message) = rows.iter().find_map(|row| row.validate(host).err()) {
        return Outcome::Invalid { message };
    }
    // The owner and name of a VM the state still holds are the state's, not the worker's:
    // a worker cannot bill a VM to someone else, and a VM given to another member during a
    // period is billed to its new owner.
    let rows: Vec<UsageRow> = rows
        .iter()
        .map(|row| match state.compute.vms.get(&row.vm) {
            Some(vm) => UsageRow {
                owner: vm.value.request.owner.clone(),
                name: vm.value.request.name.clone(),
                ..row.clone()
            },
            None => row.clone(),
        })
        .collect();
    match hearth_types::metering::record(&mut state.billing.usage, &rows) {
        0 => Outcome::Nothing,
        _ => Outcome::Applied { version: index },
    }
}

/// The prices of `member`'s plan (or the default plan's).
pub fn prices_of(state: &DesiredState, member: &str) -> Option<Prices> {
    prices_in(&state.accounts, &state.plans, member)
}

fn prices_in(
    accounts: &Accounts,
    plans: &hearth_types::quota::Plans,
    member: &str,
) -> Option<Prices> {
    let plan = accounts
        .get(member)
        .and_then(|account| account.value.plan.as_deref());
    plan.and_then(|name| plans.get(name))
        .or_else(|| plans.get(hearth_types::quota::DEFAULT_PLAN))
        .and_then(|plan| plan.value.prices.clone())
}

type Accounts = hearth_types::shared_map::OrdMap<
    String,
    hearth_types::desired::Versioned<hearth_types::account::Account>,
>;

pub(super) fn close_month(
    state: &mut DesiredState,
    month: &str,
    at_ms: u64,
    index: u64,
) -> Outcome {
    let (accounts, plans) = (&state.accounts, &state.plans);
    let prices = |member: &str| prices_in(accounts, plans, member);
    match hearth_types::invoice::close(&mut state.billing, month, at_ms, prices) {
        Ok(Some(_)) => Outcome::Applied { version: index },
        Ok(None) => Outcome::Nothing,
        Err(message) => Outcome::Refused { message },
    }
}

pub(super) fn add_credit(state: &mut DesiredState, credit: &Credit, index: u64) -> Outcome {
    let credit = Credit {
        id: index,
        billed_in: None,
        ..credit.clone()
    };
    if let Err(message) = credit.validate() {
        return Outcome::Invalid { message };
    }
    if !state.accounts.contains_key(&credit.member) {
        return Outcome::Invalid {
            message: format!("member: there is no account {}", credit.member),
        };
    }
    state.billing.credits.insert(index, credit);
    Outcome::Applied { version: index }
}

/// Records a webhook delivery of a closed invoice; one already delivered stays so unless
/// the record is an admin's reset (no attempts).
/// Records an attempt to deliver closed invoice `key` to the webhook.
pub(super) fn record_webhook(
    state: &mut DesiredState,
    key: &str,
    delivery: &WebhookDelivery,
    index: u64,
) -> Outcome {
    let billing = &mut state.billing;
    record_delivery(
        &billing.invoices,
        &mut billing.deliveries,
        key,
        delivery,
        index,
    )
}

/// Records an attempt to email closed invoice `key` to its member.
pub(super) fn record_mail(
    state: &mut DesiredState,
    key: &str,
    delivery: &WebhookDelivery,
    index: u64,
) -> Outcome {
    let billing = &mut state.billing;
    record_delivery(&billing.invoices, &mut billing.mails, key, delivery, index)
}

/// Records an attempt to deliver closed invoice `key` (to the webhook, or by email) in
/// `deliveries`; a delivered invoice takes only an admin's reset (no attempts) after.
fn record_delivery(
    invoices: &hearth_types::shared_map::OrdMap<String, hearth_types::invoice::Invoice>,
    deliveries: &mut std::collections::BTreeMap<String, WebhookDelivery>,
    key: &str,
    delivery: &WebhookDelivery,
    index: u64,
) -> Outcome {
    if !invoices.contains_key(key) {
        return Outcome::NotFound;
    }
    let delivered = deliveries.get(key).is_some_and(|d| d.delivered);
    if delivered && delivery.attempts > 0 {
        return Outcome::Nothing;
    }
    deliveries.insert(key.to_owned(), delivery.clone());
    Outcome::Applied { version: index }
}

#[cfg(test)]
mod tests {
    use super::super::{Command, Outcome, apply};
    use hearth_types::desired::DesiredState;
    use hearth_types::invoice::{Credit, month_bounds};
    use hearth_types::metering::UsageRow;

    fn row(host: &str) -> UsageRow {
        UsageRow {
            vm: "vm-1".into(),
            name: "web".into(),
            owner: "alice".into(),
            host: host.into(),
            start_s: month_bounds("2026-11").unwrap().0,
            period_s: 3600,
            seen_s: 3600,
            running_s: 1800,
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 1,
            addresses: 1,
            billed_in: None,
        }
    }

    #[test]
    fn usage_is_kept_once_and_only_from_its_own_host() {
        let mut state = DesiredState::default();
        let record = |host: &str, rows| Command::RecordUsage {
            host: host.into(),
            rows,
        };
        assert_eq!(
            apply(&mut state, &record("w1", vec![row("w1")]), 5),
            Outcome::Applied { version: 5 }
        );
        assert_eq!(
            apply(&mut state, &record("w1", vec![row("w1")]), 6),
            Outcome::Nothing
        );
        // One bad row refuses the whole write.
        let outcome = apply(&mut state, &record("w1", vec![row("w1"), row("w2")]), 7);
        assert!(matches!(outcome, Outcome::Invalid { .. }), "{outcome:?}");
        assert_eq!(state.billing.usage.len(), 1);
        assert!(record("w1", vec![]).is_a_workers());
        assert_eq!(record("w1", vec![]).level(), 4);
    }

    #[test]
    fn a_vm_the_state_holds_is_billed_to_its_owner_whatever_the_worker_says() {
        let mut state = DesiredState::default();
        let mut vm = super::super::migration::tests::vm_on_w1();
        vm.request.owner = "bob".into();
        state.compute.vms.insert(
            "vm-1".into(),
            hearth_types::desired::Versioned {
                value: vm,
                version: 1,
            },
        );
        let mut other = row("w1");
        other.vm = "vm-2".into();
        let command = Command::RecordUsage {
            host: "w1".into(),
            rows: vec![row("w1"), other],
        };
        apply(&mut state, &command, 2);
        let owners: Vec<(&str, &str, &str)> = state
            .billing
            .usage
            .values()
            .map(|r| (r.vm.as_str(), r.owner.as_str(), r.name.as_str()))
            .collect();
        // vm-1 is bob's db1; vm-2 is gone from the state, so its late row stands as sent.
        assert_eq!(owners, [("vm-1", "bob", "db1"), ("vm-2", "alice", "web")]);
    }

    #[test]
    fn a_month_closes_once_after_it_ends_and_credits_need_an_account() {
        let mut state = DesiredState::default();
        apply(
            &mut state,
            &Command::RecordUsage {
                host: "w1".into(),
                rows: vec![row("w1")],
            },
            1,
        );
        let (_, end) = month_bounds("2026-11").unwrap();
        let close = |at_s: u64| Command::CloseMonth {
            month: "2026-11".into(),
            at_ms: at_s * 1000,
        };
        assert!(matches!(
            apply(&mut state, &close(end - 1), 2),
            Outcome::Refused { .. }
        ));
        assert_eq!(
            apply(&mut state, &close(end), 3),
            Outcome::Applied { version: 3 }
        );
        assert_eq!(apply(&mut state, &close(end + 5), 4), Outcome::Nothing);
        assert_eq!(
            state.billing.invoices["2026-11/alice"].closed_at_ms,
            Some(end * 1000)
        );
        let credit = Command::AddCredit {
            credit: Credit {
                id: 0,
                member: "alice".into(),
                amount: "2.00".parse().unwrap(),
                reason: "sorry".into(),
                at_ms: 0,
                billed_in: None,
            },
        };
        let outcome = apply(&mut state, &credit, 9);
        assert!(
            matches!(outcome, Outcome::Invalid { ref message } if message.starts_with("member:")),
            "{outcome:?}"
        );
    }
}
