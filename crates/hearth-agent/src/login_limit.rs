//! The login rate limit of one node, as a plain structure with time passed in: the web
//! panel's login form asks it before checking a password.

use std::collections::{HashMap, VecDeque};

/// Failed logins allowed per key within `LOGIN_WINDOW_SECS` before the key must wait.
pub const LOGIN_FAILURES: usize = 5;
pub const LOGIN_WINDOW_SECS: u64 = 300;
/// Keys remembered at most; the limiter forgets the quietest ones beyond that.
const MAX_KEYS: usize = 10_000;

/// The login rate limit of one node, by key (the client's address, the account name): at
/// most `LOGIN_FAILURES` failures in `LOGIN_WINDOW_SECS`, then the key waits until the oldest
/// failure ages out. Time is passed in (unix seconds), so tests drive it.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<String, VecDeque<u64>>,
}

impl LoginLimiter {
    /// Seconds to wait before `keys` may try again; `None` when they may try now.
    pub fn wait(&mut self, keys: &[String], now: u64) -> Option<u64> {
        keys.iter()
            .filter_map(|key| {
                let times = self.failures.get_mut(key)?;
                while times.front().is_some_and(|t| t + LOGIN_WINDOW_SECS <= now) {
                    times.pop_front();
                }
                (times.len() >= LOGIN_FAILURES)
                    .then(|| times.front().map_or(1, |t| t + LOGIN_WINDOW_SECS - now))
            })
            .max()
    }

    pub fn failed(&mut self, keys: &[String], now: u64) {
        if self.failures.len() >= MAX_KEYS {
            self.failures
                .retain(|_, times| times.back().is_some_and(|t| t + LOGIN_WINDOW_SECS > now));
        }
        for key in keys {
            let times = self.failures.entry(key.clone()).or_default();
            times.push_back(now);
            if times.len() > LOGIN_FAILURES {
                times.pop_front();
            }
        }
    }

    /// A successful login clears its account's failures (not its address's).
    pub fn succeeded(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_limited_per_key_until_failures_age_out() {
        let mut limiter = LoginLimiter::default();
        let keys = vec!["ip:192.0.2.7".to_owned(), "name:alice".to_owned()];
        for t in 0..LOGIN_FAILURES as u64 {
            assert_eq!(limiter.wait(&keys, 100 + t), None);
            limiter.failed(&keys, 100 + t);
        }
        // The sixth try waits until the first failure (at 100) is a window old.
        assert_eq!(
            limiter.wait(&keys, 110),
            Some(100 + LOGIN_WINDOW_SECS - 110)
        );
        // Another address is still blocked for alice, and alice's address for others.
        assert!(
            limiter
                .wait(&["ip:198.51.100.1".into(), "name:alice".into()], 110)
                .is_some()
        );
        assert!(
            limiter
                .wait(&["ip:192.0.2.7".into(), "name:bob".into()], 110)
                .is_some()
        );
        assert_eq!(limiter.wait(&keys, 100 + LOGIN_WINDOW_SECS), None);
        // A success clears the account, not the address.
        limiter.failed(&keys, 500);
        limiter.succeeded("name:alice");
        assert_eq!(limiter.wait(&["name:alice".into()], 501), None);
    }
}
