//! Sending UPDATE messages to the primary over one TCP connection (an UPDATE can outgrow a
//! datagram), each signed, each answer checked: same id, a verified TSIG, NOERROR.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::tsig::TsigError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::tsig::{self, TsigFailure, TsigKey, tsig_error_name};

/// Why a push did not go through. Messages name the primary and say what to check; none
/// carries the key's secret.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect to the primary {server}: {source}")]
    Connect {
        server: SocketAddr,
        source: io::Error,
    },
    #[error("the primary {server} did not answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("talking to the primary {server}: {source}")]
    Io {
        server: SocketAddr,
        source: io::Error,
    },
    #[error("cannot encode an UPDATE: {0}")]
    Encode(String),
    #[error("the primary {server} sent something that is not the answer to our UPDATE: {reason}")]
    BadAnswer { server: SocketAddr, reason: String },
    #[error("the primary {server}'s answer does not verify: {failure}; check dns.push.key_file")]
    Unverified {
        server: SocketAddr,
        failure: TsigFailure,
    },
    #[error("the primary {server} refused the update with {}{}: {}", rcode_name(*.rcode), .tsig_error.map(|e| format!(" ({})", tsig_error_name(e))).unwrap_or_default(), refusal_hint(*.rcode))]
    Refused {
        server: SocketAddr,
        rcode: ResponseCode,
        /// The TSIG error the primary reported (BADKEY, BADSIG, BADTIME), if any.
        tsig_error: Option<TsigError>,
    },
}

/// Sends `messages` in order to `server` over one TCP connection, each with a fresh id and
/// signed with `key`, and stops at the first that is not accepted. Each step (connecting,
/// one UPDATE and its answer) fails after `step_timeout`. Returns once every message was
/// accepted; the messages before a failure may have been applied.
pub async fn send_updates(
    server: SocketAddr,
    key: &TsigKey,
    messages: &[Message],
    step_timeout: Duration,
) -> Result<(), PushError> {
    let timed_out = |_| PushError::Timeout {
        server,
        timeout: step_timeout,
    };
    let connect = timeout(step_timeout, TcpStream::connect(server)).await;
    let mut stream = connect
        .map_err(timed_out)?
        .map_err(|source| PushError::Connect { server, source })?;
    let _ = stream.set_nodelay(true);
    for message in messages {
        let mut message = message.clone();
        message.metadata.id = rand::random();
        let exchange = exchange(&mut stream, server, key, &message);
        timeout(step_timeout, exchange).await.map_err(timed_out)??;
    }
    Ok(())
}

/// One signed UPDATE and its checked answer.
async fn exchange(
    stream: &mut TcpStream,
    server: SocketAddr,
    key: &TsigKey,
    message: &Message,
) -> Result<(), PushError> {
    let signed = tsig::sign(message, key, unix_now(), None)
        .map_err(|error| PushError::Encode(error.to_string()))?;
    let io_error = |source| PushError::Io { server, source };
    write_frame(stream, &signed.wire).await.map_err(io_error)?;
    let answer = read_frame(stream).await.map_err(io_error)?;
    check_answer(server, key, message, &signed.mac, &answer)
}

/// Accepts an answer only when it answers `request`, is NOERROR, and carries a TSIG that
/// verifies. A refusal is reported with its rcode even when unsigned, as a primary sends its
/// BADKEY and BADSIG answers (RFC 8945 §5.3.2).
fn check_answer(
    server: SocketAddr,
    key: &TsigKey,
    request: &Message,
    request_mac: &[u8],
    answer: &[u8],
) -> Result<(), PushError> {
    let bad_answer = |reason: String| PushError::BadAnswer { server, reason };
    let decoded = Message::from_vec(answer).map_err(|error| bad_answer(error.to_string()))?;
    if decoded.metadata.id != request.metadata.id
        || decoded.metadata.message_type != MessageType::Response
        || decoded.metadata.op_code != request.metadata.op_code
    {
        return Err(bad_answer(format!(
            "id {}, {:?} {:?}",
            decoded.metadata.id, decoded.metadata.message_type, decoded.metadata.op_code
        )));
    }
    let verified = tsig::verify(answer, key, unix_now(), Some(request_mac));
    let rcode = decoded.metadata.response_code;
    match (rcode, verified) {
        (ResponseCode::NoError, Ok(_)) => Ok(()),
        (ResponseCode::NoError, Err(failure)) => Err(PushError::Unverified { server, failure }),
        (rcode, _) => Err(PushError::Refused {
            server,
            rcode,
            tsig_error: answer_tsig_error(&decoded),
        }),
    }
}

/// The error field of the answer's TSIG record, if it has one.
fn answer_tsig_error(answer: &Message) -> Option<TsigError> {
    let tsig = answer
        .additionals
        .iter()
        .rev()
        .find_map(|record| match &record.data {
            RData::TSIG(tsig) => Some(tsig),
            _ => None,
        });
    tsig.and_then(|tsig| tsig.error)
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "UPDATE over 64 KiB"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

fn unix_now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |elapsed| elapsed.as_secs())
}

/// The rcode's mnemonic, as `dig` prints it.
pub(crate) fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("RCODE{}", u16::from(other)),
    };
    name.into()
}

/// What an operator should look at for each refusal.
fn refusal_hint(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NotAuth => {
            "the primary does not accept the key: check that dns.push.key_name and dns.push.key_file \
             match a key it holds, and that the clocks agree"
        }
        ResponseCode::Refused => {
            "the primary does not allow this key to update the zone: check its ACL or update-policy"
        }
        ResponseCode::NotZone | ResponseCode::NotImp => {
            "the primary does not serve dns.zone as a primary zone that accepts updates"
        }
        _ => "see the primary's log",
    }
}
