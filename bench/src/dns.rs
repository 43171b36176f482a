//! A minimal UDP DNS client for polling: sends one A query to several servers at once and
//! collects the answers, so that one poll round costs a few hundred microseconds, not a `dig`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The UDP payload the poller's queries offer (EDNS).
const EDNS_PAYLOAD: u16 = 4096;

/// One server's answer to one poll: when the query left, and the A records (sorted), or None
/// when the server did not answer within the round's timeout or answered with an error.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    pub sent_at: Instant,
    pub addresses: Option<Vec<Ipv4Addr>>,
}

/// A socket bound to a loopback address, and the next query id.
pub struct DnsPoller {
    socket: UdpSocket,
    name: Name,
    next_id: u16,
}

impl DnsPoller {
    /// Queries will ask for the A records of `qname` (absolute, e.g. `www.coop.test.`).
    pub fn new(qname: &str) -> Result<DnsPoller> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("bind the DNS polling socket")?;
        let name = Name::from_ascii(qname).with_context(|| format!("bad name {qname}"))?;
        Ok(DnsPoller {
            socket,
            name,
            next_id: 1,
        })
    }

    /// Sends one query to each of `servers`, then waits up to `timeout` for the answers.
    pub fn poll(
        &mut self,
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<HashMap<SocketAddr, PollAnswer>> {
        let mut pending: HashMap<(SocketAddr, u16), Instant> = HashMap::new();
        let mut answers = HashMap::new();
        for &server in servers {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let wire = self.query(id)?;
            let sent_at = Instant::now();
            self.socket
                .send_to(&wire, server)
                .with_context(|| format!("send a DNS query to {server}"))?;
            pending.insert((server, id), sent_at);
            answers.insert(
                server,
                PollAnswer {
                    sent_at,
                    addresses: None,
                },
            );
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.socket.set_read_timeout(Some(left))?;
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                break;
            };
            let Ok(response) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            if pending.remove(&(from, response.metadata.id)).is_none() {
                // A late answer to an earlier round.
                continue;
            }
            if response.truncation {
                // Its address list is cut short: reading it would see any address "gone".
                bail!(
                    "{from} answered {} truncated, even with EDNS ({EDNS_PAYLOAD} bytes): \
                     too many addresses for one UDP answer",
                    self.name
                );
            }
            if response.metadata.response_code == ResponseCode::NoError
                && let Some(answer) = answers.get_mut(&from)
            {
                answer.addresses = Some(a_records(&response));
            }
        }
        Ok(answers)
    }

    fn query(&self, id: u16) -> Result<Vec<u8>> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(self.name.clone(), RecordType::A));
        // Without EDNS an answer stops at 512 bytes, about 28 addresses; the servers' own
        // limit (1 232 bytes) holds about 70.
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.edns = Some(edns);
        message.to_vec().context("encode a DNS query")
    }
}

fn a_records(response: &Message) -> Vec<Ipv4Addr> {
    let mut addresses: Vec<Ipv4Addr> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    addresses.sort();
    addresses
}
