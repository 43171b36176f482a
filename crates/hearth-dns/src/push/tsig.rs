//! TSIG (RFC 8945) with HMAC-SHA256: signing a message and verifying a signed one, over wire
//! bytes so that the MAC covers exactly what travels.
//!
//! hickory-proto's own TSIG signer sits behind its DNSSEC features, which would build ring,
//! rustls-pki-types, time and all of hickory's DNSSEC code; the MAC is a few lines with the
//! RustCrypto `hmac` and `sha2` crates the cluster crypto already builds. hickory still provides
//! the TSIG record's wire format.

use std::fmt;

use hickory_proto::ProtoError;
use hickory_proto::op::{Header, Message, Query};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigAlgorithm, TsigError, make_tsig_record};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far apart the signer's and the verifier's clocks may be, in seconds (RFC 8945 §10
/// recommends 300).
pub(crate) const FUDGE: u16 = 300;
const HEADER_LEN: usize = 12;

/// A TSIG key for HMAC-SHA256: its name, as the primary knows it, and its secret. `Debug`
/// shows the name only: the secret never reaches a log.
#[derive(Clone)]
pub struct TsigKey {
    name: Name,
    secret: Vec<u8>,
}

impl TsigKey {
    /// A key named `name` (made fully qualified and lowercase, as it travels in canonical form).
    pub fn hmac_sha256(name: Name, secret: Vec<u8>) -> Self {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Self { name, secret }
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length")
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &"hmac-sha256")
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A signed message: its wire form and its MAC, which the answer's MAC covers in turn.
pub(crate) struct Signed {
    pub(crate) wire: Vec<u8>,
    pub(crate) mac: Vec<u8>,
}

/// Why a signed message did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsigFailure {
    #[error("it carries no TSIG record")]
    Unsigned,
    #[error("it cannot be decoded: {0}")]
    Malformed(String),
    #[error("it is signed with another key or algorithm ({0})")]
    OtherKey(Name),
    #[error("its TSIG reports {}", tsig_error_name(*.0))]
    Error(TsigError),
    #[error("its MAC does not match the key")]
    BadMac,
    #[error("it was signed at {signed}, more than {FUDGE} s away from this clock ({now})")]
    BadTime { signed: u64, now: u64 },
}

/// Signs `message` (which must not carry a signature yet) at `now` (Unix seconds). `prior_mac`
/// is the request's MAC when signing an answer to it, and None for a request.
pub(crate) fn sign(
    message: &Message,
    key: &TsigKey,
    now: u64,
    prior_mac: Option<&[u8]>,
) -> Result<Signed, ProtoError> {
    let unsigned = message.to_vec()?;
    let stub = TSIG::new(
        TsigAlgorithm::HmacSha256,
        now,
        FUDGE,
        Vec::new(),
        message.metadata.id,
        None,
        Vec::new(),
    );
    let mut mac = key.mac();
    mac.update(&prior(prior_mac));
    mac.update(&unsigned);
    mac.update(&variables(&stub, &key.name)?);
    let mac = mac.finalize().into_bytes().to_vec();
    // The signed message is the unsigned one with one more additional record: the TSIG.
    let tsig = make_tsig_record(key.name.clone(), stub.set_mac(mac.clone()));
    let mut wire = unsigned;
    let additionals = u16::from_be_bytes([wire[10], wire[11]]);
    let additionals = additionals
        .checked_add(1)
        .ok_or_else(|| ProtoError::from("too many additional records to add a TSIG"))?;
    wire[10..12].copy_from_slice(&additionals.to_be_bytes());
    wire.extend_from_slice(&tsig.to_bytes()?);
    Ok(Signed { wire, mac })
}

/// Verifies the TSIG that ends `wire` against `key` at `now` (Unix seconds), with `prior_mac`
/// as in `sign`; returns the verified MAC.
pub(crate) fn verify(
    wire: &[u8],
    key: &TsigKey,
    now: u64,
    prior_mac: Option<&[u8]>,
) -> Result<Vec<u8>, TsigFailure> {
    let (tsig_start, owner, tsig) = find_tsig(wire)?;
    if owner != key.name || tsig.algorithm != TsigAlgorithm::HmacSha256 {
        return Err(TsigFailure::OtherKey(owner));
    }
    if let Some(error) = tsig.error {
        return Err(TsigFailure::Error(error));
    }
    // The MAC covers the message as it was before the TSIG was added: the original id, one
    // additional record fewer, and nothing from the TSIG record but its variables.
    let mut unsigned = wire[..tsig_start].to_vec();
    unsigned[0..2].copy_from_slice(&tsig.oid.to_be_bytes());
    let additionals = u16::from_be_bytes([unsigned[10], unsigned[11]]) - 1;
    unsigned[10..12].copy_from_slice(&additionals.to_be_bytes());
    let variables = variables(&tsig, &owner).map_err(|e| TsigFailure::Malformed(e.to_string()))?;
    let mut mac = key.mac();
    mac.update(&prior(prior_mac));
    mac.update(&unsigned);
    mac.update(&variables);
    mac.verify_slice(&tsig.mac)
        .map_err(|_| TsigFailure::BadMac)?;
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Err(TsigFailure::BadTime {
            signed: tsig.time,
            now,
        });
    }
    Ok(tsig.mac)
}

/// The prior MAC as the digest covers it: its length, then its bytes (RFC 8945 §4.3.1).
fn prior(prior_mac: Option<&[u8]>) -> Vec<u8> {
    let Some(mac) = prior_mac else {
        return Vec::new();
    };
    let len = u16::try_from(mac.len()).unwrap_or(u16::MAX);
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(mac);
    bytes
}

/// The TSIG variables the digest covers (RFC 8945 §4.3.3), names in canonical form.
fn variables(tsig: &TSIG, key_name: &Name) -> Result<Vec<u8>, ProtoError> {
    let mut bytes = Vec::new();
    tsig.emit_tsig_for_mac(&mut BinEncoder::new(&mut bytes), key_name)?;
    Ok(bytes)
}

/// Where the final TSIG record of `wire` starts, its owner (the key name), and its data.
fn find_tsig(wire: &[u8]) -> Result<(usize, Name, TSIG), TsigFailure> {
    let malformed = |error: &dyn fmt::Display| TsigFailure::Malformed(error.to_string());
    let mut decoder = BinDecoder::new(wire);
    let header = Header::read(&mut decoder).map_err(|e| malformed(&e))?;
    let counts = header.counts;
    if counts.additionals == 0 {
        return Err(TsigFailure::Unsigned);
    }
    for _ in 0..counts.queries {
        Query::read(&mut decoder).map_err(|e| malformed(&e))?;
    }
    let n_before_tsig = usize::from(counts.answers)
        + usize::from(counts.authorities)
        + usize::from(counts.additionals - 1);
    for _ in 0..n_before_tsig {
        Record::read(&mut decoder).map_err(|e| malformed(&e))?;
    }
    let tsig_start = decoder.index();
    let record = Record::read(&mut decoder).map_err(|e| malformed(&e))?;
    if !decoder.is_empty() {
        return Err(malformed(&"bytes after the last record"));
    }
    debug_assert!(tsig_start >= HEADER_LEN);
    match record.data {
        RData::TSIG(tsig) => Ok((tsig_start, record.name, tsig)),
        _ => Err(TsigFailure::Unsigned),
    }
}

/// The mnemonic of a TSIG error (RFC 8945 §3), as `dig` prints it.
pub(crate) fn tsig_error_name(error: TsigError) -> String {
    match error {
        TsigError::BadSig => "BADSIG".into(),
        TsigError::BadKey => "BADKEY".into(),
        TsigError::BadTime => "BADTIME".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(code) => format!("TSIG error {code}"),
    }
}
