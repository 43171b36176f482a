//! Counters of DNS outcomes (answers by rcode, malformed packets dropped, pushes to an external
//! primary), read by the agent's Prometheus endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;

/// Lock-free counters shared by every server task. Relaxed ordering suffices: each counter is
/// independent and only ever read for display.
#[derive(Debug, Default)]
pub struct DnsMetrics {
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    servfail: AtomicU64,
    badvers: AtomicU64,
    dropped_malformed: AtomicU64,
    tcp_refused: AtomicU64,
    push: PushMetrics,
}

impl DnsMetrics {
    /// Responses sent so far, as `(rcode label, count)` pairs in a fixed order. Labels are
    /// lowercase rcode mnemonics, ready for a Prometheus `rcode` label.
    pub fn answered_by_rcode(&self) -> [(&'static str, u64); 7] {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("noerror", read(&self.noerror)),
            ("nxdomain", read(&self.nxdomain)),
            ("refused", read(&self.refused)),
            ("formerr", read(&self.formerr)),
            ("notimp", read(&self.notimp)),
            ("servfail", read(&self.servfail)),
            ("badvers", read(&self.badvers)),
        ]
    }

    /// Packets dropped unanswered: undecodable, a response rather than a query, a bad TCP frame,
    /// or a UDP datagram longer than the 4 KiB a query may take.
    pub fn dropped_malformed(&self) -> u64 {
        self.dropped_malformed.load(Ordering::Relaxed)
    }

    /// TCP connections closed at once: over the total or the per-client cap.
    pub fn tcp_refused(&self) -> u64 {
        self.tcp_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn record_tcp_refused(&self) {
        self.tcp_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Outcomes of pushing the zone to an external primary (`push`).
    pub fn push(&self) -> &PushMetrics {
        &self.push
    }

    pub(crate) fn record_answered(&self, rcode: ResponseCode) {
        let counter = match rcode {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr => &self.formerr,
            ResponseCode::NotImp => &self.notimp,
            ResponseCode::BADVERS => &self.badvers,
            // `answer` produces none of the others; count a surprise as a server failure.
            _ => &self.servfail,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_dropped(&self) {
        self.dropped_malformed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of the pusher (`push::run_pusher`); all zero on an agent that does not push.
#[derive(Debug, Default)]
pub struct PushMetrics {
    updates_accepted: AtomicU64,
    failures: AtomicU64,
}

impl PushMetrics {
    /// UPDATE messages the primary accepted (NOERROR, with a verified TSIG).
    pub fn updates_accepted(&self) -> u64 {
        self.updates_accepted.load(Ordering::Relaxed)
    }

    /// Pushes that failed (no connection, no answer, a refusal, a bad signature); each is
    /// retried with backoff as a full resync.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_accepted(&self, n_updates: usize) {
        let n_updates = u64::try_from(n_updates).unwrap_or(u64::MAX);
        self.updates_accepted
            .fetch_add(n_updates, Ordering::Relaxed);
    }

    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}
