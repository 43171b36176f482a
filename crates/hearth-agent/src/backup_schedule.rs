//! Scheduled backups: the time slots of a schedule (`latest_slot`, `next_slot`: a time of
//! day in the schedule's time zone, with daylight saving time), which VMs' slots are due
//! (`due`, pure), and the leader's loop that asks for their runs through Raft
//! (`BackupCommand::Scheduled`). A slot missed while no leader ran is made up once, late;
//! a VM's first slot is the one just passed, so a new schedule backs up at once.

use std::time::Duration;

use hearth_state::model::backups::BackupCommand;
use hearth_state::model::{Command, Outcome};
use hearth_state::node::StateNode;
use hearth_types::backup::{BackupPolicy, policy_of};
use hearth_types::desired::DesiredState;
use jiff::tz::TimeZone;
use jiff::{Timestamp, civil::Date};
use tokio_util::sync::CancellationToken;

use crate::unix_ms;

/// The state level that reads backup commands.
const BACKUP_LEVEL: u32 = 8;
/// How often the leader looks for slots due.
const EVERY: Duration = Duration::from_secs(5);

/// The time zone `name`, or why not (for the API's check of a schedule).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!("time_zone: {name:?} is not a known IANA time zone (such as Europe/Berlin or UTC)")
    })
}

/// The instant (Unix ms) of `policy`'s time on `date`, in its zone (a time that daylight
/// saving skips is taken as the hour after; one it repeats, as the first).
fn slot_on(policy: &BackupPolicy, zone: &TimeZone, date: Date) -> Option<i64> {
    let (hour, minute) = policy.hour_minute()?;
    let time = date.at(hour as i8, minute as i8, 0, 0);
    let zoned = time.to_zoned_datetime(zone.clone()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

/// The slot of `policy` nearest `now_ms` in the direction `later` picks (`false`: the last
/// one at or before it; `true`: the first one after it), among today's and the two days
/// before or after in its zone.
fn slot_from(policy: &BackupPolicy, now_ms: u64, later: bool) -> Option<u64> {
    let zone = time_zone(&policy.time_zone).ok()?;
    let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
    let today = now.to_zoned_datetime(zone.clone()).date();
    let step = |date: Date| match later {
        true => date.tomorrow().ok(),
        false => date.yesterday().ok(),
    };
    let next = step(today);
    let after = next.and_then(step);
    let now = now.as_millisecond();
    [Some(today), next, after]
        .into_iter()
        .flatten()
        .filter_map(|date| slot_on(policy, &zone, date))
        .find(|slot| if later { *slot > now } else { *slot <= now })
        .and_then(|slot| u64::try_from(slot).ok())
}

/// The last slot of `policy` at or before `now_ms`.
pub fn latest_slot(policy: &BackupPolicy, now_ms: u64) -> Option<u64> {
    slot_from(policy, now_ms, false)
}

/// The first slot of `policy` after `now_ms`.
pub fn next_slot(policy: &BackupPolicy, now_ms: u64) -> Option<u64> {
    slot_from(policy, now_ms, true)
}

/// The VMs whose schedule has a slot due at `now_ms` that was not asked for yet, with the
/// slot: VMs that have a disk and are not being deleted.
pub fn due(desired: &DesiredState, now_ms: u64) -> Vec<(String, u64)> {
    desired
        .compute
        .vms
        .iter()
        .filter(|(_, vm)| !vm.value.deleting && vm.value.disk.host.is_some())
        .filter_map(|(id, _)| {
            let policy = policy_of(desired, id)?;
            let slot = latest_slot(policy, now_ms)?;
            let taken = desired.backups.vms.get(id).map_or(0, |b| b.scheduled_ms);
            (slot > taken).then(|| (id.clone(), slot))
        })
        .collect()
}

/// Runs until `shutdown`: the leader asks for the scheduled runs due.
pub async fn run(state: StateNode, shutdown: CancellationToken) {
    let mut ticks = crate::ticks::Ticks::new(EVERY, shutdown);
    while ticks.next().await {
        if !state.is_leader() || state.cluster_level() < BACKUP_LEVEL {
            continue;
        }
        let desired = state.reader().current();
        for (vm, slot_ms) in due(&desired, unix_ms()) {
            let command = Command::Backup {
                command: BackupCommand::Scheduled {
                    vm: vm.clone(),
                    slot_ms,
                },
            };
            match state.submit(command).await {
                Ok(written) if matches!(written.outcome, Outcome::Applied { .. }) => {
                    tracing::info!(%vm, slot_ms, "scheduled backup asked for");
                }
                Ok(written) => tracing::debug!(%vm, outcome = ?written.outcome, "scheduled backup"),
                Err(error) => {
                    tracing::debug!(%vm, %error, "asking for a scheduled backup");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::backup::Keep;

    fn policy(at: &str, zone: &str) -> BackupPolicy {
        BackupPolicy {
            target: "local".into(),
            at: at.into(),
            time_zone: zone.into(),
            keep: Keep::default(),
        }
    }

    fn ms(rfc3339: &str) -> u64 {
        let ts: Timestamp = rfc3339.parse().unwrap();
        ts.as_millisecond() as u64
    }

    #[test]
    fn slots_are_the_time_of_day_in_the_zone() {
        let berlin = policy("03:00", "Europe/Berlin");
        // 03:00 in Berlin in winter is 02:00 UTC.
        let now = ms("2026-12-04T10:00:00Z");
        assert_eq!(latest_slot(&berlin, now), Some(ms("2026-12-04T02:00:00Z")));
        assert_eq!(next_slot(&berlin, now), Some(ms("2026-12-05T02:00:00Z")));
        // Before today's time: yesterday's.
        let early = ms("2026-12-04T01:59:59Z");
        assert_eq!(
            latest_slot(&berlin, early),
            Some(ms("2026-12-03T02:00:00Z"))
        );
        assert_eq!(next_slot(&berlin, early), Some(ms("2026-12-04T02:00:00Z")));
        // Exactly at it: that one.
        let at = ms("2026-12-04T02:00:00Z");
        assert_eq!(latest_slot(&berlin, at), Some(at));
        // In summer, 01:00 UTC.
        let july = ms("2026-07-01T12:00:00Z");
        assert_eq!(latest_slot(&berlin, july), Some(ms("2026-07-01T01:00:00Z")));
        let utc = policy("23:30", "UTC");
        assert_eq!(latest_slot(&utc, now), Some(ms("2026-12-03T23:30:00Z")));
    }

    #[test]
    fn a_time_daylight_saving_skips_still_has_its_slot() {
        // Berlin skips 02:00–03:00 on 2026-03-29: 02:30 is taken as 03:30 CEST (01:30 UTC).
        let skipped = policy("02:30", "Europe/Berlin");
        let now = ms("2026-03-29T12:00:00Z");
        assert_eq!(latest_slot(&skipped, now), Some(ms("2026-03-29T01:30:00Z")));
        // And repeats 02:00–03:00 on 2026-10-25: the first 02:30 (CEST, 00:30 UTC).
        let now = ms("2026-10-25T12:00:00Z");
        assert_eq!(latest_slot(&skipped, now), Some(ms("2026-10-25T00:30:00Z")));
    }

    #[test]
    fn unknown_zones_and_times_have_no_slot() {
        assert_eq!(latest_slot(&policy("03:00", "Mars/Olympus"), 1), None);
        assert_eq!(next_slot(&policy("25:00", "UTC"), 1), None);
        assert!(
            time_zone("Mars/Olympus")
                .unwrap_err()
                .starts_with("time_zone:")
        );
        assert!(time_zone("Europe/Berlin").is_ok());
    }
}
