//! Counters of DNS outcomes (answers by rcode, malformed packets dropped), read by the agent's
//! Prometheus endpoint.

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

    /// Packets dropped unanswered: undecodable, a response rather than a query, or a bad TCP frame.
    pub fn dropped_malformed(&self) -> u64 {
        self.dropped_malformed.load(Ordering::Relaxed)
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
