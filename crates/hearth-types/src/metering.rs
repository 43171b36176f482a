//! Metering as plain data: a worker's `Meter` credits the time between two samples to each VM
//! it holds (`Meter::sample`, split at period boundaries), closes each period into a
//! `UsageRow`, and keeps closed rows until the desired state has them. Every row is keyed
//! by (period, VM, host), and the state keeps the first row of each key it gets, so a worker
//! may send a row again (after a timeout, a leader change or its own restart) without
//! counting it twice (`record`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most rows one `RecordUsage` command carries; a worker sends more in several.
pub const MAX_ROWS_PER_WRITE: usize = 500;

/// One VM's use of one metering period on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRow {
    /// The VM's id (`vm-N`).
    pub vm: String,
    /// Its name and owner when the period closed.
    pub name: String,
    pub owner: String,
    /// The worker that measured it.
    pub host: String,
    /// The period's start, Unix seconds (a multiple of `period_s`).
    pub start_s: u64,
    pub period_s: u32,
    /// Seconds of the period the VM was held on this host (its disk and addresses), running
    /// or not.
    pub seen_s: u32,
    /// Seconds of the period its QEMU ran.
    pub running_s: u32,
    /// Its size when the period closed.
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub addresses: u32,
    /// The month whose invoice counted it (`YYYY-MM`); set by the desired state when that
    /// month closes, never by a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_in: Option<String>,
}

impl UsageRow {
    /// Its key in the desired state: period start (zero-padded, so keys sort by time), VM,
    /// host.
    pub fn key(&self) -> String {
        usage_key(self.start_s, &self.vm, &self.host)
    }

    /// Whether the row is one a worker may send: its numbers fit its period, and it speaks
    /// for `host`.
    pub fn validate(&self, host: &str) -> Result<(), String> {
        if self.host != host {
            return Err(format!(
                "host: a row of {} sent by {host}; a worker sends only its own rows",
                self.host
            ));
        }
        if self.period_s == 0 || self.period_s > 86_400 {
            return Err(format!(
                "period_s: {} is not a period; give 1 to 86400 seconds",
                self.period_s
            ));
        }
        if self.running_s > self.seen_s || self.seen_s > self.period_s {
            return Err(format!(
                "running_s, seen_s: {} and {} do not fit a period of {} s",
                self.running_s, self.seen_s, self.period_s
            ));
        }
        if self.billed_in.is_some() {
            return Err("billed_in: only the desired state marks a row billed".into());
        }
        Ok(())
    }
}

/// The key of a usage row.
pub fn usage_key(start_s: u64, vm: &str, host: &str) -> String {
    format!("{start_s:012}/{vm}/{host}")
}

/// The usage rows the desired state keeps, by [`UsageRow::key`], behind an `Arc`: every
/// applied batch clones the desired state, and this map, the largest part of it, is then
/// shared rather than copied until a billing command changes it.
pub type Usage = std::sync::Arc<BTreeMap<String, UsageRow>>;

/// Adds the rows the state does not have yet (by key), each unbilled; returns how many
/// were new. A row already there stays as it is: the first of each key wins. A write of
/// rows the state has does not copy the map.
pub fn record(usage: &mut Usage, rows: &[UsageRow]) -> usize {
    if rows.iter().all(|row| usage.contains_key(&row.key())) {
        return 0;
    }
    let usage = std::sync::Arc::make_mut(usage);
    let mut added = 0;
    for row in rows {
        if let std::collections::btree_map::Entry::Vacant(entry) = usage.entry(row.key()) {
            entry.insert(UsageRow {
                billed_in: None,
                ..row.clone()
            });
            added += 1;
        }
    }
    added
}

/// What a worker sees of one VM it holds at a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub vm: String,
    pub name: String,
    pub owner: String,
    /// The QEMU process running it (its pid and start time, say), `None` when none runs. The
    /// time between two samples counts as running only when the same process ran at both:
    /// a host powered off and its VM started again after it came back did not run between.
    pub run: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub addresses: u32,
}

/// A period still open: its row, and the milliseconds its seconds are made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub row: UsageRow,
    pub seen_ms: u64,
    pub running_ms: u64,
}

/// A worker's meter, kept in a file between samples so that a restart neither forgets an
/// open period nor a closed row not yet written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// Unix milliseconds of the last sample.
    pub last_ms: Option<u64>,
    /// The process that ran each VM held at the last sample (`None`: none ran).
    pub held: BTreeMap<String, Option<String>>,
    /// Rows of periods still open, by key.
    pub open: BTreeMap<String, Open>,
    /// Rows of closed periods the desired state may not have yet, oldest first.
    pub closed: Vec<UsageRow>,
    /// The local copy of the desired state's applied log index at the last sample. After a
    /// restart the agent samples again only once its copy is back at least there, so a VM
    /// the log had placed here is not missed while the log replays.
    #[serde(default)]
    pub index: u64,
}

impl Meter {
    /// One sample at `now_ms` of the VMs `held` on `host`. The time since the last sample
    /// counts for each VM held at both (as running when one process ran it at both), unless it is
    /// longer than `max_gap_ms` (the agent was away too long to say) or the clock went
    /// back; then it counts for nothing. Periods that have ended move to `closed`.
    pub fn sample(
        &mut self,
        host: &str,
        period_s: u32,
        now_ms: u64,
        max_gap_ms: u64,
        held: &[Held],
    ) {
        let period_ms = u64::from(period_s.max(1)) * 1000;
        if let Some(last_ms) = self.last_ms
            && now_ms > last_ms
            && now_ms - last_ms <= max_gap_ms
        {
            for vm in held {
                let Some(before) = self.held.get(&vm.vm) else {
                    continue;
                };
                let running = vm.run.is_some() && *before == vm.run;
                let mut from = last_ms;
                while from < now_ms {
                    let start_ms = from - from % period_ms;
                    let until = now_ms.min(start_ms + period_ms);
                    self.credit(host, period_s, start_ms / 1000, vm, until - from, running);
                    from = until;
                }
            }
        }
        if self.last_ms.is_none_or(|last| now_ms > last) {
            self.last_ms = Some(now_ms);
            self.held = held
                .iter()
                .map(|vm| (vm.vm.clone(), vm.run.clone()))
                .collect();
        }
        let ended: Vec<String> = self
            .open
            .iter()
            .filter(|(_, open)| (open.row.start_s + u64::from(open.row.period_s)) * 1000 <= now_ms)
            .map(|(key, _)| key.clone())
            .collect();
        for key in ended {
            if let Some(open) = self.open.remove(&key) {
                self.closed.push(open.row);
            }
        }
    }

    /// Adds `ms` of period `start_s` to `vm`'s row. Seconds are whole seconds of the
    /// milliseconds counted, rounded down: a period counted in full is exactly `period_s`.
    fn credit(&mut self, host: &str, period_s: u32, start_s: u64, vm: &Held, ms: u64, run: bool) {
        let key = usage_key(start_s, &vm.vm, host);
        let open = self.open.entry(key).or_insert_with(|| Open {
            row: UsageRow {
                vm: vm.vm.clone(),
                name: vm.name.clone(),
                owner: vm.owner.clone(),
                host: host.to_owned(),
                start_s,
                period_s,
                seen_s: 0,
                running_s: 0,
                vcpus: 0,
                memory_mib: 0,
                disk_gib: 0,
                addresses: 0,
                billed_in: None,
            },
            seen_ms: 0,
            running_ms: 0,
        });
        let cap = u64::from(period_s) * 1000;
        open.seen_ms = (open.seen_ms + ms).min(cap);
        if run {
            open.running_ms = (open.running_ms + ms).min(cap);
        }
        let row = &mut open.row;
        row.name.clone_from(&vm.name);
        row.owner.clone_from(&vm.owner);
        row.vcpus = vm.vcpus;
        row.memory_mib = vm.memory_mib;
        row.disk_gib = vm.disk_gib;
        row.addresses = vm.addresses;
        row.seen_s = (open.seen_ms / 1000) as u32;
        row.running_s = (open.running_ms / 1000) as u32;
    }

    /// Forgets the closed rows the desired state now has.
    pub fn written(&mut self, keys: &[String]) {
        self.closed.retain(|row| !keys.contains(&row.key()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, running: bool) -> Held {
        Held {
            vm: id.into(),
            name: format!("{id}-name"),
            owner: "alice".into(),
            run: running.then(|| "100:5".to_owned()),
            vcpus: 2,
            memory_mib: 1024,
            disk_gib: 10,
            addresses: 1,
        }
    }

    #[test]
    fn samples_fill_each_period_exactly_and_close_it_when_it_ends() {
        let mut meter = Meter::default();
        let held = [vm("vm-1", true), vm("vm-2", false)];
        // Samples every 700 ms from 0.3 s to 25 s; periods of 10 s.
        let mut now = 300;
        while now <= 25_000 {
            meter.sample("w1", 10, now, 60_000, &held);
            now += 700;
        }
        let rows: Vec<_> = meter.closed.iter().filter(|r| r.vm == "vm-1").collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        // The first period is counted from the first sample, the second is whole.
        assert_eq!((rows[0].start_s, rows[0].seen_s), (0, 9));
        assert_eq!(rows[0].running_s, 9);
        assert_eq!(
            (rows[1].start_s, rows[1].seen_s, rows[1].running_s),
            (10, 10, 10)
        );
        let stopped: Vec<_> = meter.closed.iter().filter(|r| r.vm == "vm-2").collect();
        assert_eq!((stopped[1].seen_s, stopped[1].running_s), (10, 0));
        // The third period is still open.
        assert!(meter.open.values().all(|o| o.row.start_s == 20));
    }

    #[test]
    fn a_gap_too_long_counts_for_nothing_and_a_short_one_counts_in_full() {
        let mut meter = Meter::default();
        let held = [vm("vm-1", true)];
        meter.sample("w1", 10, 0, 5_000, &held);
        meter.sample("w1", 10, 4_000, 5_000, &held);
        // Away for 7 s: more than the 5 s allowed.
        meter.sample("w1", 10, 11_000, 5_000, &held);
        meter.sample("w1", 10, 15_000, 5_000, &held);
        assert_eq!(meter.closed.len(), 1);
        assert_eq!(meter.closed[0].seen_s, 4);
        assert_eq!(meter.open.values().next().unwrap().row.seen_s, 4);
        // A clock that went back counts nothing and keeps the later sample.
        meter.sample("w1", 10, 12_000, 5_000, &held);
        assert_eq!(meter.last_ms, Some(15_000));
        assert_eq!(meter.open.values().next().unwrap().row.seen_s, 4);
    }

    #[test]
    fn a_vm_counts_from_its_second_sample_and_runs_only_when_it_ran_at_both() {
        let mut meter = Meter::default();
        meter.sample("w1", 10, 0, 60_000, &[]);
        meter.sample("w1", 10, 2_000, 60_000, &[vm("vm-1", false)]);
        meter.sample("w1", 10, 4_000, 60_000, &[vm("vm-1", true)]);
        meter.sample("w1", 10, 6_000, 60_000, &[vm("vm-1", true)]);
        meter.sample("w1", 10, 10_000, 60_000, &[]);
        let row = &meter.closed[0];
        assert_eq!((row.seen_s, row.running_s), (4, 2));
    }

    #[test]
    fn a_vm_started_again_between_two_samples_did_not_run_between_them() {
        let mut meter = Meter::default();
        let mut held = vm("vm-1", true);
        meter.sample("w1", 10, 0, 600_000, std::slice::from_ref(&held));
        meter.sample("w1", 10, 2_000, 600_000, std::slice::from_ref(&held));
        // The host was off for 5 s; the VM runs again in a new process.
        held.run = Some("200:900".into());
        meter.sample("w1", 10, 7_000, 600_000, std::slice::from_ref(&held));
        meter.sample("w1", 10, 10_000, 600_000, std::slice::from_ref(&held));
        let row = &meter.closed[0];
        // Held (its disk) all along; running 2 s before and 3 s after.
        assert_eq!((row.seen_s, row.running_s), (10, 5));
    }

    #[test]
    fn the_state_keeps_the_first_row_of_each_key_so_a_resend_counts_once() {
        let mut meter = Meter::default();
        let held = [vm("vm-1", true)];
        for now in [0, 5_000, 10_000] {
            meter.sample("w1", 10, now, 60_000, &held);
        }
        let rows = meter.closed.clone();
        let mut usage = Usage::default();
        assert_eq!(record(&mut usage, &rows), 1);
        std::sync::Arc::make_mut(&mut usage)
            .values_mut()
            .for_each(|r| r.billed_in = Some("1970-01".into()));
        let shared = usage.clone();
        assert_eq!(record(&mut usage, &rows), 0);
        // A resend copies nothing: the map is still the one shared.
        assert!(std::sync::Arc::ptr_eq(&usage, &shared));
        assert_eq!(usage.len(), 1);
        assert_eq!(
            usage.values().next().unwrap().billed_in.as_deref(),
            Some("1970-01")
        );
        meter.written(&rows.iter().map(UsageRow::key).collect::<Vec<_>>());
        assert!(meter.closed.is_empty());
    }

    #[test]
    fn rows_that_do_not_fit_or_speak_for_another_host_are_refused() {
        let mut row = UsageRow {
            vm: "vm-1".into(),
            name: "web".into(),
            owner: "alice".into(),
            host: "w1".into(),
            start_s: 0,
            period_s: 3600,
            seen_s: 3600,
            running_s: 3600,
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 1,
            addresses: 0,
            billed_in: None,
        };
        assert!(row.validate("w1").is_ok());
        assert!(row.validate("w2").unwrap_err().starts_with("host:"));
        row.running_s = 3601;
        assert!(row.validate("w1").is_err());
        row.running_s = 0;
        row.billed_in = Some("2026-11".into());
        assert!(row.validate("w1").unwrap_err().starts_with("billed_in:"));
    }
}
