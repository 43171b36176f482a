//! The authoritative DNS every hearth agent serves for the co-op's zone, answered from its
//! local gossip view and its copy of the desired state (static records, drain flags).
//!
//! Code map:
//! - `settings`: the zone's settings (`Zone`: origin, TTL, `NoneHealthy` policy).
//! - `zone`: `ZoneSnapshot`, the view and the desired state indexed by name, rebuilt once per
//!   change of either; it re-exports `Zone` for the modules that answer and publish.
//! - `index`: the name index inside a snapshot: what each name holds (service, node and static
//!   records, empty non-terminals) after the precedence rules, and the allocation-free lookup.
//! - `answer`: the pure function from a decoded request and a snapshot to a response; every
//!   rule of what a response holds (rcodes, SOA, NS, aliases, additionals) lives here.
//! - `packet`: wire bytes in, wire bytes out: decoding, dropping garbage, UDP truncation.
//! - `cache`: UDP answers remembered per snapshot, keyed by the query's bytes after its ID.
//! - `metrics`: counters of answers by rcode and of dropped packets.
//! - `lookup`: a stub TXT lookup, for the proof of a member's domain.
//! - `server`: the TCP server, the snapshot-rebuilding task and the `Responder` every server
//!   loop answers with, all stopped by one cancellation token.
//! - `udp`: the UDP server, a thread taking and answering queries in batches
//!   (`recvmmsg`/`sendmmsg`).
//! - `push`: publishing the same records to an external primary with TSIG-signed RFC 2136
//!   UPDATEs: the pure computation of what to publish and of the messages, the TCP sender, and
//!   the pusher task that runs on the Raft leader.
//!
//! Architecture invariant: answering never waits: not on the network, Raft, or a lock. Each
//! server loop holds an `Arc` of the current snapshot and swaps it when a new one is published.
//!
//! Architecture invariant: nothing a peer sends can crash or stop the server; undecodable input
//! is counted and dropped.

mod answer;
mod cache;
#[doc(hidden)]
pub mod fuzzing;
mod index;
pub mod lookup;
mod metrics;
mod packet;
pub mod push;
mod server;
mod settings;
mod tracked;
mod udp;
mod zone;

#[cfg(test)]
mod tests;

pub use answer::{EDNS_PAYLOAD, answer};
/// Re-exported so that callers can build a `Zone` without depending on hickory themselves.
pub use hickory_proto::rr::Name;
pub use metrics::{DnsMetrics, PushMetrics};
pub use packet::{Transport, handle_packet};
pub use server::serve;
pub use settings::{NoneHealthy, Zone};
pub use zone::ZoneSnapshot;
