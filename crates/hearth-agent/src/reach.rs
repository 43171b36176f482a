//! Reachability between members: every [`INTERVAL`] each agent tries the Raft RPC port (a
//! TCP connect) and the DNS port (an SOA query) of every other live member, and gossips the
//! ones it cannot reach in its [`UNREACHABLE_TAG`] tag (`n2:rpc n3:dns`; no tag when all
//! answer). So `hearth doctor` on any node shows which pairs of members cannot talk, which a
//! check from one node alone cannot.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use hearth_membership::Membership;
use hearth_types::MemberState;
use tokio_util::sync::CancellationToken;

/// The tag listing the members this node cannot reach, and on which port.
pub const UNREACHABLE_TAG: &str = "unreachable";
/// How often each agent tries its peers.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How long a port has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The tag's value for what failed, (member, `rpc` or `dns`); `None` when nothing did.
pub fn tag_value(failed: &BTreeSet<(String, &'static str)>) -> Option<String> {
    let items: Vec<String> = failed
        .iter()
        .map(|(member, port)| format!("{member}:{port}"))
        .collect();
    (!items.is_empty()).then(|| items.join(" "))
}

/// The (member, port) pairs a tag value names; anything malformed is skipped.
pub fn parse_tag(value: &str) -> Vec<(String, String)> {
    value
        .split_whitespace()
        .filter_map(|item| {
            let (member, port) = item.split_once(':')?;
            Some((member.to_owned(), port.to_owned()))
        })
        .collect()
}

/// Runs until `shutdown`: tries every other live member's RPC and DNS ports (DNS at
/// `dns_port`, the one port the cluster's agents share) and gossips what failed.
pub async fn watch(
    membership: Membership,
    dns_port: u16,
    zone: String,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::ticks::Ticks::new(INTERVAL, shutdown);
    while ticks.next().await {
        let view = membership.views().borrow().clone();
        let mut failed = BTreeSet::new();
        for member in view.members.values() {
            if member.meta.name == view.self_name || member.state != MemberState::Alive {
                continue;
            }
            let name = member.meta.name.clone();
            if let Some(rpc) = member.meta.rpc_addr
                && !tcp_answers(rpc).await
            {
                failed.insert((name.clone(), "rpc"));
            }
            let dns = SocketAddr::new(member.meta.address, dns_port);
            let zone = zone.clone();
            let answered = tokio::task::spawn_blocking(move || soa_over_udp(dns, &zone, TIMEOUT));
            if !matches!(answered.await, Ok(Ok(()))) {
                failed.insert((name, "dns"));
            }
        }
        membership
            .set_tag(UNREACHABLE_TAG, tag_value(&failed))
            .await;
    }
}

async fn tcp_answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Asks `addr` for `zone`'s SOA over UDP; Ok once an authoritative NOERROR answer comes
/// within `timeout`.
pub fn soa_over_udp(addr: SocketAddr, zone: &str, timeout: Duration) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(match addr {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })
    .map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let id: u16 = rand::random();
    socket
        .send_to(&soa_query(id, zone), addr)
        .map_err(|e| e.to_string())?;
    let mut reply = [0u8; 4096];
    let (len, _) = socket
        .recv_from(&mut reply)
        .map_err(|e| format!("no answer ({e})"))?;
    answer_ok(id, &reply[..len])
}

/// A DNS query for `zone`'s SOA, recursion not desired.
pub fn soa_query(id: u16, zone: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    // Flags 0 (a standard query), one question, no other records.
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in zone
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        packet.push(label.len().min(63) as u8);
        packet.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    packet.push(0);
    packet.extend_from_slice(&[0, 6, 0, 1]); // SOA, IN
    packet
}

/// Whether `reply` answers query `id` authoritatively with NOERROR and at least one record.
pub fn answer_ok(id: u16, reply: &[u8]) -> Result<(), String> {
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return Err("not an answer to the question".into());
    }
    let rcode = reply[3] & 0x0f;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    match (reply[2] & 0x04 != 0, rcode, answers) {
        (true, 0, 1..) => Ok(()),
        (false, _, _) => Err("answered, but not as authoritative for the zone".into()),
        (_, rcode, _) => Err(format!("answered with rcode {rcode} and {answers} records")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_lists_each_failure_and_reads_back() {
        assert_eq!(tag_value(&BTreeSet::new()), None);
        let failed = BTreeSet::from([("n3".to_owned(), "dns"), ("n2".to_owned(), "rpc")]);
        let value = tag_value(&failed).unwrap();
        assert_eq!(value, "n2:rpc n3:dns");
        assert_eq!(
            parse_tag(&value),
            [("n2".into(), "rpc".into()), ("n3".into(), "dns".into())]
        );
        assert!(parse_tag("garbage n4:dns").len() == 1);
    }
}
