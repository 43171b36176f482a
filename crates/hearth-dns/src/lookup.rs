//! A stub lookup for the agent: the TXT strings at a name, asked of one resolver over UDP
//! (the proof a member owns a domain sits in a TXT record at their current DNS host).

use std::net::SocketAddr;
use std::time::Duration;

/// The TXT strings at `name`, asked of `resolver` over UDP (one query, 3 s).
pub async fn txt_records(resolver: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    use hickory_proto::op::{Message, Query as DnsQuery};
    use hickory_proto::rr::{Name, RData, RecordType};
    let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
    let mut query = Message::query();
    query.metadata.id = rand::random();
    query.metadata.recursion_desired = true;
    query.add_query(DnsQuery::query(name, RecordType::TXT));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = match resolver {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(|_| "bind")?,
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|_| "bind")?,
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, resolver)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
            .await
            .map_err(|_| format!("{resolver} did not answer"))?
            .map_err(|e| e.to_string())?;
        let Ok(message) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if from == resolver && message.metadata.id == query.metadata.id {
            break message;
        }
    };
    Ok(answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}
