//! Publishing the zone to an external primary DNS server with RFC 2136 UPDATE messages signed
//! with TSIG (RFC 8945), for co-ops whose zone lives on a BIND or Knot they already run.
//!
//! The pure half lives in `records`: `rrsets` computes what to publish from the same index the
//! agent answers from, so the primary holds exactly what `answer` would say; `updates` and
//! `resync` turn that into UPDATE messages. `tsig` signs and verifies, `exchange` talks to the
//! primary over TCP, and `task` is the pusher that runs on the Raft leader. This module only
//! declares them and re-exports what the rest of the crate and the agent use.
//!
//! What is published: every name's A and AAAA (services after their health filter, nodes,
//! static addresses), and the other static sets (CNAME, TXT, MX, SRV). Never the SOA or NS,
//! which belong to the primary.

pub(crate) mod exchange;
mod records;
mod task;
pub(crate) mod tsig;

pub use exchange::{PushError, send_updates};
pub use records::{MAX_UPDATE_BYTES, Rrset, RrsetMap, resync, rrsets, updates};
pub use task::{PushSettings, run_pusher};
pub use tsig::{TsigFailure, TsigKey};
