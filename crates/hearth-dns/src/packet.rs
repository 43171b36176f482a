//! From wire bytes to wire bytes: decode a request, answer it, and encode the response to fit
//! its transport.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use tracing::debug;

use crate::answer::{EDNS_PAYLOAD, answer};
use crate::metrics::DnsMetrics;
use crate::zone::{Zone, ZoneSnapshot};

/// The largest UDP response to a client without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;
const HEADER_LEN: usize = 12;
/// The shortest question on the wire: the root name (1 byte), then type and class (2 each).
const MIN_QUESTION_LEN: usize = 5;

/// How a request arrived, which bounds the size of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Decodes one wire request, answers it, and encodes the response, truncated with TC for UDP
/// when it does not fit 512 bytes or the EDNS payload size. Returns None for input that must be
/// dropped (undecodable, or a response rather than a query). Records the outcome in `metrics`.
pub fn handle_packet(
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    packet: &[u8],
    transport: Transport,
    metrics: &DnsMetrics,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    respond_into(zone, snapshot, packet, transport, metrics, &mut out).then_some(out)
}

/// `handle_packet` writing into a buffer the caller reuses; false when there is nothing to send.
pub(crate) fn respond_into(
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    packet: &[u8],
    transport: Transport,
    metrics: &DnsMetrics,
    out: &mut Vec<u8>,
) -> bool {
    let rcode = respond(zone, snapshot, packet, transport, out);
    count(metrics, rcode)
}

/// Records one outcome of `respond` in `metrics`; true when there is an answer to send.
pub(crate) fn count(metrics: &DnsMetrics, rcode: Option<ResponseCode>) -> bool {
    match rcode {
        Some(rcode) => metrics.record_answered(rcode),
        None => metrics.record_dropped(),
    }
    rcode.is_some()
}

/// Writes the response to `packet` into `out` and returns its rcode; None (and `out` empty)
/// for a packet that must be dropped.
pub(crate) fn respond(
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    packet: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<ResponseCode> {
    out.clear();
    let request = decode_query(packet)?;
    let mut response = answer(zone, snapshot, &request);
    encode_response(&mut response, size_limit(&request, transport), out)
}

/// Answering a response could loop two servers into a storm, so only queries go through.
fn decode_query(packet: &[u8]) -> Option<Message> {
    if !questions_fit(packet) {
        return None;
    }
    let message = Message::from_vec(packet).ok()?;
    (message.message_type == MessageType::Query).then_some(message)
}

/// Whether the packet is long enough for the questions its header claims. The decoder reserves
/// room for every claimed question before reading one, so without this check a 12-byte packet
/// claiming 65,535 questions would cost megabytes of allocation to reject.
fn questions_fit(packet: &[u8]) -> bool {
    let Some(&[high, low]) = packet.get(4..6) else {
        return false;
    };
    let questions = usize::from(u16::from_be_bytes([high, low]));
    questions * MIN_QUESTION_LEN <= packet.len().saturating_sub(HEADER_LEN)
}

fn size_limit(request: &Message, transport: Transport) -> usize {
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => u16::MAX,
        (Transport::Udp, None) => PLAIN_UDP_PAYLOAD,
        (Transport::Udp, Some(edns)) => edns.max_payload().clamp(PLAIN_UDP_PAYLOAD, EDNS_PAYLOAD),
    };
    usize::from(limit)
}

/// Encodes `response` into `out` and returns the rcode sent. A response over `limit` goes out
/// as its question alone with TC set, so the client retries over TCP rather than act on a
/// partial answer; one that cannot be encoded at all goes out as SERVFAIL. None (and `out`
/// empty) only if even that fails.
fn encode_response(
    response: &mut Message,
    limit: usize,
    out: &mut Vec<u8>,
) -> Option<ResponseCode> {
    match encode(response, out) {
        Ok(()) if out.len() <= limit => {}
        Ok(()) => {
            strip_records(response);
            response.metadata.truncation = true;
            encode(response, out).ok()?;
        }
        Err(error) => {
            debug!(%error, "cannot encode a DNS response; sending SERVFAIL");
            strip_records(response);
            response.metadata.response_code = ResponseCode::ServFail;
            encode(response, out).ok()?;
        }
    }
    Some(response.response_code)
}

fn strip_records(response: &mut Message) {
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
}

fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), hickory_proto::ProtoError> {
    out.clear();
    let result = message.emit(&mut BinEncoder::new(out));
    if result.is_err() {
        out.clear();
    }
    result
}
