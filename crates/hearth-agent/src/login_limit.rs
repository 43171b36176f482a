//! The login rate limit of one node, as a plain structure with time passed in, and who the
//! client is behind a trusted reverse proxy: the web panel's login form reserves an attempt
//! here before it spends any hashing on a password.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hearth_types::limits::canonical;
use tokio::sync::Semaphore;

/// Failed logins allowed per (account, client) within `LOGIN_WINDOW_SECS`.
pub const LOGIN_FAILURES: usize = 5;
/// Failed logins allowed per client, whatever the accounts, within `LOGIN_WINDOW_SECS`.
pub const CLIENT_FAILURES: usize = 30;
pub const LOGIN_WINDOW_SECS: u64 = 300;
/// Keys remembered at most; the limiter forgets the quietest ones beyond that.
const MAX_KEYS: usize = 10_000;

/// Password hashes (argon2id, about 19 MiB each) run at once at most, on one node: logins,
/// new accounts and password changes share them. A login finding none free gets 429 at once.
pub const HASH_PERMITS: usize = 4;

/// What a node's logins share: the limiter, the hashing permits, the proxies whose
/// `X-Forwarded-For` is believed, and the counters `/metrics` shows.
#[derive(Debug)]
pub struct Logins {
    pub limiter: std::sync::Mutex<LoginLimiter>,
    pub hashing: Arc<Semaphore>,
    pub trusted_proxies: Vec<IpAddr>,
    pub metrics: LoginMetrics,
}

impl Logins {
    pub fn new(trusted_proxies: Vec<IpAddr>) -> Logins {
        Logins {
            limiter: Default::default(),
            hashing: Arc::new(Semaphore::new(HASH_PERMITS)),
            trusted_proxies: trusted_proxies.into_iter().map(canonical).collect(),
            metrics: LoginMetrics::default(),
        }
    }
}

/// Login attempts by how they ended, and the password checks actually run.
#[derive(Debug, Default)]
pub struct LoginMetrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Refused by the rate limit before any hashing.
    pub limited: AtomicU64,
    /// Refused because every hashing permit was taken.
    pub busy: AtomicU64,
    /// argon2 verifications run for logins.
    pub checks: AtomicU64,
}

/// One reserved login attempt: counted as a failure of its keys until it succeeds or is
/// withdrawn, so attempts racing each other count before any of them is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an attempt is settled with succeeded() or withdraw(), or stays a failure"]
pub struct Attempt {
    pair: String,
    client: String,
    at: u64,
}

/// The login rate limit of one node: at most `LOGIN_FAILURES` failures per (account, client)
/// and `CLIENT_FAILURES` per client in `LOGIN_WINDOW_SECS`, then that key waits until its
/// oldest failure ages out. Keying by the pair means a stranger's guesses never lock the
/// owner out: the owner logs in from another address. Time is passed in (unix seconds).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<String, VecDeque<u64>>,
}

impl LoginLimiter {
    /// Reserves an attempt of `account` from `client` at `now`, counted as a failure from
    /// this moment on; or the seconds to wait when either key is at its limit. Check and
    /// count are one step under the caller's lock, so concurrent guesses cannot all pass.
    pub fn reserve(&mut self, account: &str, client: IpAddr, now: u64) -> Result<Attempt, u64> {
        let attempt = Attempt {
            pair: format!("pair:{account}\n{client}"),
            client: format!("client:{client}"),
            at: now,
        };
        let wait = [
            (&attempt.pair, LOGIN_FAILURES),
            (&attempt.client, CLIENT_FAILURES),
        ]
        .into_iter()
        .filter_map(|(key, limit)| self.wait(key, limit, now))
        .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        if self.failures.len() >= MAX_KEYS {
            self.failures
                .retain(|_, times| times.back().is_some_and(|t| t + LOGIN_WINDOW_SECS > now));
        }
        for key in [&attempt.pair, &attempt.client] {
            self.failures.entry(key.clone()).or_default().push_back(now);
        }
        Ok(attempt)
    }

    fn wait(&mut self, key: &str, limit: usize, now: u64) -> Option<u64> {
        let times = self.failures.get_mut(key)?;
        while times.front().is_some_and(|t| t + LOGIN_WINDOW_SECS <= now) {
            times.pop_front();
        }
        (times.len() >= limit).then(|| {
            // The oldest failure that must age out for one more try.
            let oldest = times[times.len() - limit];
            (oldest + LOGIN_WINDOW_SECS).saturating_sub(now).max(1)
        })
    }

    /// The attempt was never evaluated (the node was too busy to hash): it does not count.
    pub fn withdraw(&mut self, attempt: Attempt) {
        for key in [&attempt.pair, &attempt.client] {
            if let Some(times) = self.failures.get_mut(key)
                && let Some(at) = times.iter().rposition(|t| *t == attempt.at)
            {
                times.remove(at);
            }
        }
    }

    /// The password was right: the pair's failures are cleared; the client's stay, less
    /// this attempt.
    pub fn succeeded(&mut self, attempt: Attempt) {
        self.failures.remove(&attempt.pair);
        self.withdraw(attempt);
    }
}

/// The client's address: the TCP peer, or, when the peer is one of `trusted` proxies, the
/// last address in `X-Forwarded-For` that is not itself a trusted proxy. A header from any
/// other peer is ignored, so a client cannot pick its own address.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded_for
        .unwrap_or("")
        .split(',')
        .map(|hop| hop.trim().parse::<IpAddr>().map(canonical))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    hops.into_iter()
        .rev()
        .find(|hop| !trusted.contains(hop))
        .unwrap_or(peer)
}

/// The client of a request as `client_address` decides it, from the connection's peer
/// (`ConnectInfo`) and its `X-Forwarded-For`; `None` for a request that came with no peer.
pub fn client_of(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    Some(client_address(peer, forwarded, trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn attempts_count_when_reserved_so_racing_guesses_cannot_pass_together() {
        let mut limiter = LoginLimiter::default();
        let client = ip("192.0.2.7");
        // A hundred guesses arrive before any is evaluated: five get through.
        let reserved: Vec<_> = (0..100)
            .filter_map(|_| limiter.reserve("alice", client, 100).ok())
            .collect();
        assert_eq!(reserved.len(), LOGIN_FAILURES);
        // The sixth waits until the first failure is a window old.
        assert_eq!(
            limiter.reserve("alice", client, 110),
            Err(100 + LOGIN_WINDOW_SECS - 110)
        );
        assert!(
            limiter
                .reserve("alice", client, 100 + LOGIN_WINDOW_SECS)
                .is_ok()
        );
    }

    #[test]
    fn a_stranger_cannot_lock_the_owner_out_and_success_clears_the_pair() {
        let mut limiter = LoginLimiter::default();
        let (stranger, owner) = (ip("198.51.100.9"), ip("192.0.2.7"));
        for _ in 0..LOGIN_FAILURES {
            let _failed = limiter.reserve("alice", stranger, 100).unwrap();
        }
        assert!(limiter.reserve("alice", stranger, 101).is_err());
        // The owner, from elsewhere, is not held up; nor is the stranger on another account.
        let attempt = limiter.reserve("alice", owner, 101).unwrap();
        limiter.succeeded(attempt);
        assert!(limiter.reserve("bob", stranger, 101).is_ok());
        // A success clears the pair, so a few typos later do not add up.
        for _ in 0..LOGIN_FAILURES - 1 {
            let _failed = limiter.reserve("carol", owner, 102).unwrap();
        }
        let attempt = limiter.reserve("carol", owner, 102).unwrap();
        limiter.succeeded(attempt);
        assert!(limiter.reserve("carol", owner, 103).is_ok());
    }

    #[test]
    fn one_client_guessing_many_accounts_is_limited_too() {
        let mut limiter = LoginLimiter::default();
        let client = ip("203.0.113.5");
        let passed = (0..200)
            .filter(|n| limiter.reserve(&format!("user{n}"), client, 50).is_ok())
            .count();
        assert_eq!(passed, CLIENT_FAILURES);
        assert!(limiter.reserve("user0", ip("203.0.113.6"), 50).is_ok());
    }

    #[test]
    fn withdrawn_attempts_do_not_count() {
        let mut limiter = LoginLimiter::default();
        let client = ip("192.0.2.7");
        for _ in 0..20 {
            let attempt = limiter.reserve("alice", client, 100).unwrap();
            limiter.withdraw(attempt);
        }
        assert!(limiter.reserve("alice", client, 100).is_ok());
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxy = ip("127.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        // Not a proxy: its header is ignored.
        assert_eq!(
            client_address(ip("192.0.2.7"), Some("203.0.113.1"), &trusted),
            ip("192.0.2.7")
        );
        // The proxy appends the address it saw: the last untrusted hop is the client, and
        // whatever the client wrote before it is ignored.
        assert_eq!(
            client_address(proxy, Some("6.6.6.6, 203.0.113.1"), &trusted),
            ip("203.0.113.1")
        );
        assert_eq!(
            client_address(proxy, Some("203.0.113.1, 10.0.0.2"), &trusted),
            ip("203.0.113.1")
        );
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), Some("2001:db8::1"), &trusted),
            ip("2001:db8::1")
        );
        // No header, or a garbled one: the proxy itself.
        assert_eq!(client_address(proxy, None, &trusted), proxy);
        assert_eq!(client_address(proxy, Some("nonsense"), &trusted), proxy);
    }
}
