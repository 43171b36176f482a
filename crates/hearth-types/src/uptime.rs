//! Each service's availability per day, for the status page's 90-day bars: the Raft leader
//! samples whether each service has a passing instance, and each sample accounts for the
//! time since the previous one. Kept compactly (two numbers per service and day, 90 days).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Days of history kept per service.
pub const DAYS: u32 = 90;
/// A gap between two samples longer than this (no leader, say) is left unknown rather than
/// counted as up or down.
pub const MAX_GAP_MS: u64 = 5 * 60 * 1000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Milliseconds of one UTC day: known (sampled) and up of those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Day {
    pub known_ms: u64,
    pub up_ms: u64,
}

impl Day {
    /// The share of the known time the service was up; `None` with nothing known.
    pub fn ratio(&self) -> Option<f64> {
        (self.known_ms > 0).then(|| self.up_ms as f64 / self.known_ms as f64)
    }
}

/// One service's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceUptime {
    /// By day since the Unix epoch (UTC).
    pub days: BTreeMap<u64, Day>,
    /// The last sample: when (leader's clock, Unix ms) and whether the service was up.
    pub last_ms: u64,
    pub last_up: bool,
}

/// Accounts a sample taken at `at_ms` of every service (`up`: it had a passing instance):
/// the time since each one's previous sample counts as that sample said. A sample not after
/// the previous one changes nothing (a new leader whose clock lags, or a sample sent twice).
/// A service absent from `up` is not sampled; one seen for the first time only starts its
/// history. Days older than [`DAYS`] before the sample's day are dropped, and so is a
/// service not sampled for that long.
pub fn record(
    history: &mut BTreeMap<String, ServiceUptime>,
    at_ms: u64,
    up: &BTreeMap<String, bool>,
) -> bool {
    let mut changed = false;
    for (service, now_up) in up {
        let entry = history.entry(service.clone()).or_default();
        if entry.last_ms != 0 && at_ms <= entry.last_ms {
            continue;
        }
        if entry.last_ms != 0 && at_ms - entry.last_ms <= MAX_GAP_MS {
            account(&mut entry.days, entry.last_ms, at_ms, entry.last_up);
        }
        entry.last_ms = at_ms;
        entry.last_up = *now_up;
        let today = at_ms / DAY_MS;
        entry.days.retain(|day, _| day + u64::from(DAYS) > today);
        changed = true;
    }
    // A service gone (removed, or no instance anywhere) for the whole window is forgotten.
    let before = history.len();
    history.retain(|_, h| h.last_ms + u64::from(DAYS) * DAY_MS > at_ms);
    changed || history.len() != before
}

/// Adds `[from, to)` to the days it spans.
fn account(days: &mut BTreeMap<u64, Day>, from: u64, to: u64, up: bool) {
    let mut start = from;
    while start < to {
        let day = start / DAY_MS;
        let end = to.min((day + 1) * DAY_MS);
        let entry = days.entry(day).or_default();
        entry.known_ms += end - start;
        if up {
            entry.up_ms += end - start;
        }
        start = end;
    }
}

/// The day (since the epoch) of Unix milliseconds `ms`.
pub fn day_of(ms: u64) -> u64 {
    ms / DAY_MS
}

/// The civil (proleptic Gregorian) date `(year, month, day)` of a day since 1970-01-01,
/// by Howard Hinnant's algorithm.
pub fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `2026-12-04` for a day since the epoch.
pub fn date(days: u64) -> String {
    let (year, month, day) = civil(days);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(history: &mut BTreeMap<String, ServiceUptime>, at_ms: u64, up: bool) -> bool {
        record(history, at_ms, &BTreeMap::from([("www".to_owned(), up)]))
    }

    #[test]
    fn samples_count_the_time_since_the_last_one_as_it_said() {
        let mut history = BTreeMap::new();
        let t = 100 * DAY_MS;
        assert!(sample(&mut history, t, true));
        assert_eq!(history["www"].days.len(), 0, "the first sample only starts");
        sample(&mut history, t + 60_000, false);
        sample(&mut history, t + 120_000, true);
        let day = history["www"].days[&100];
        assert_eq!(
            day,
            Day {
                known_ms: 120_000,
                up_ms: 60_000
            }
        );
        assert_eq!(day.ratio(), Some(0.5));
        // Sent twice, or from a leader whose clock lags: nothing changes.
        assert!(!sample(&mut history, t + 120_000, false));
        assert!(!sample(&mut history, t + 90_000, false));
        assert_eq!(history["www"].days[&100], day);
        assert!(history["www"].last_up);
    }

    #[test]
    fn midnight_splits_a_sample_and_long_gaps_stay_unknown() {
        let mut history = BTreeMap::new();
        let midnight = 200 * DAY_MS;
        sample(&mut history, midnight - 30_000, true);
        sample(&mut history, midnight + 90_000, true);
        let days = &history["www"].days;
        assert_eq!(days[&199].up_ms, 30_000);
        assert_eq!(days[&200].up_ms, 90_000);
        // No leader for an hour: that hour is neither up nor down.
        sample(&mut history, midnight + 90_000 + 3_600_000, false);
        assert_eq!(history["www"].days[&200].known_ms, 90_000);
    }

    #[test]
    fn ninety_days_are_kept() {
        let mut history = BTreeMap::new();
        for day in 0..120u64 {
            sample(&mut history, day * DAY_MS + 1_000, true);
            sample(&mut history, day * DAY_MS + 61_000, true);
        }
        let days = &history["www"].days;
        assert_eq!(days.len(), DAYS as usize);
        assert_eq!(days.keys().next(), Some(&30));
        assert_eq!(day_of(119 * DAY_MS + 5), 119);
    }

    #[test]
    fn a_service_unsampled_for_ninety_days_is_forgotten() {
        let mut history = BTreeMap::new();
        sample(&mut history, DAY_MS, true);
        let db = BTreeMap::from([("db".to_owned(), true)]);
        record(&mut history, 50 * DAY_MS, &db);
        assert!(history.contains_key("www"));
        assert!(record(&mut history, 91 * DAY_MS, &db));
        assert!(!history.contains_key("www") && history.contains_key("db"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(19_782), "2024-02-29");
        assert_eq!(date(20_426), "2025-12-04");
    }
}
