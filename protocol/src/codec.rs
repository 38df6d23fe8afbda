//! The one place bytes are made: CBOR (serde_cbor, packed: struct fields as integers, defaults
//! omitted) for wire messages, stored entries and signing input.
//!
//! Wire messages travel in an envelope `[version, body]`, a two-element CBOR array whose first
//! element is the protocol version. Decoding checks the size limit of the message family first,
//! then the envelope, then the body; anything malformed, truncated, oversized or of another
//! version is a [`DecodeError`], never a panic. Golden-bytes tests (`tests/golden.rs`) fail on
//! any change of encoding.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::announce::Announcement;
use crate::entry::Version;
use crate::message::{DeltaBatch, Gossip, Request, Response};
use crate::metric::Metric;

/// The wire version this build writes where the peer reads it: on streams that negotiated
/// it (see the README's "Upgrading").
pub const WIRE_VERSION: u64 = 2;
/// The oldest wire version this build reads, and writes to peers that speak only it. Gossip
/// is the same in both versions and goes out as this one, so every member reads it.
pub const OLDEST_WIRE_VERSION: u64 = 1;

/// Largest gossip message: a delta batch. Gossipsub's transmit limit is set above this.
pub const MAX_DELTA_BATCH: usize = 1 << 20;
/// Largest beacon.
pub const MAX_BEACON: usize = 64 << 10;
/// Largest request: a `PinStatus` of [`MAX_STATUS_CIDS`](crate::message::MAX_STATUS_CIDS)
/// CIDs of up to 64 bytes each.
pub const MAX_REQUEST: usize = 68 << 10;
/// Largest metric: one with the most tags, each at the longest name and value, fits.
pub const MAX_METRIC: usize = 4 << 10;
pub use crate::announce::MAX_ANNOUNCEMENT;
/// Largest response (a snapshot chunk or a run of batches); senders cut chunks well below it.
pub const MAX_RESPONSE: usize = 8 << 20;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message is truncated")]
    Truncated,
    #[error("not a pinmesh message envelope")]
    NotAnEnvelope,
    #[error("unsupported protocol version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u64),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl From<serde_cbor::Error> for DecodeError {
    fn from(err: serde_cbor::Error) -> Self {
        if err.is_eof() {
            DecodeError::Truncated
        } else {
            DecodeError::Malformed(err.to_string())
        }
    }
}

fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising these types into memory has no failure mode: no maps with non-string keys of
    // unsupported types, no I/O.
    let mut out = Vec::new();
    let mut serializer = serde_cbor::Serializer::new(&mut out).packed_format();
    value
        .serialize(&mut serializer)
        .expect("CBOR encoding into memory cannot fail");
    out
}

fn encode_envelope<T: Serialize>(version: u64, body: &T) -> Vec<u8> {
    to_vec(&(version, body))
}

/// Reads the envelope's version without decoding the body.
fn envelope_version(bytes: &[u8]) -> Result<u64, DecodeError> {
    let (&head, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
    if head != 0x82 {
        return Err(DecodeError::NotAnEnvelope);
    }
    let (&initial, rest) = rest.split_first().ok_or(DecodeError::Truncated)?;
    if initial >> 5 != 0 {
        return Err(DecodeError::NotAnEnvelope);
    }
    let width = match initial & 0x1f {
        n @ 0..=23 => return Ok(u64::from(n)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return Err(DecodeError::NotAnEnvelope),
    };
    let digits = rest.get(..width).ok_or(DecodeError::Truncated)?;
    Ok(digits
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Checks the size limit and the envelope; returns the version the body is in.
fn check_envelope(bytes: &[u8], max: usize) -> Result<u64, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let version = envelope_version(bytes)?;
    if !(OLDEST_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    Ok(version)
}

fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (_, body): (u64, T) = serde_cbor::from_slice(bytes)?;
    Ok(body)
}

/// Encodes gossip, in the oldest version this build reads (gossip cannot be negotiated per
/// peer; its bodies did not change in version 2).
pub fn encode_gossip(message: &Gossip) -> Vec<u8> {
    encode_envelope(OLDEST_WIRE_VERSION, message)
}

/// Decodes gossip: at most [`MAX_DELTA_BATCH`] bytes, and a beacon at most [`MAX_BEACON`].
pub fn decode_gossip(bytes: &[u8]) -> Result<Gossip, DecodeError> {
    check_envelope(bytes, MAX_DELTA_BATCH)?;
    let message = decode_body(bytes)?;
    if matches!(message, Gossip::Beacon(_)) && bytes.len() > MAX_BEACON {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_BEACON,
        });
    }
    Ok(message)
}

/// Encodes a metric (in the current wire version: only agents that read it subscribe to the
/// metrics topic).
pub fn encode_metric(metric: &Metric) -> Vec<u8> {
    encode_envelope(WIRE_VERSION, metric)
}

/// Decodes a metric: at most [`MAX_METRIC`] bytes.
pub fn decode_metric(bytes: &[u8]) -> Result<Metric, DecodeError> {
    check_envelope(bytes, MAX_METRIC)?;
    decode_body(bytes)
}

/// Encodes a request in wire `version` (the one its stream negotiated).
pub fn encode_request(version: u64, request: &Request) -> Vec<u8> {
    encode_envelope(version, request)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    check_envelope(bytes, MAX_REQUEST)?;
    decode_body(bytes)
}

/// Encodes a response in wire `version` (the one its stream negotiated).
pub fn encode_response(version: u64, response: &Response) -> Vec<u8> {
    if version == 1 {
        return encode_envelope(1, &crate::message::v1::ResponseRef::from(response));
    }
    encode_envelope(version, response)
}

/// Decodes a response of either version into this version's form.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    if check_envelope(bytes, MAX_RESPONSE)? == 1 {
        return Ok(decode_body::<crate::message::v1::Response>(bytes)?.into());
    }
    decode_body(bytes)
}

/// The canonical encoding of a CID's versions, as stored and as hashed into the state digest.
/// `versions` must be canonical (sorted by dot, no repeats).
pub fn encode_entry(versions: &[Version]) -> Vec<u8> {
    to_vec(versions)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Vec<Version>, DecodeError> {
    Ok(serde_cbor::from_slice(bytes)?)
}

/// The storage encoding of any protocol value (no envelope: the agent versions its table names).
pub fn encode_stored<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    to_vec(value)
}

/// Decodes a value written by [`encode_stored`].
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(serde_cbor::from_slice(bytes)?)
}

/// Encoded size of any protocol value, without envelope (for sizing batches and chunks).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    to_vec(value).len()
}

/// What a batch's author signs: a domain tag, the cluster name, then every field but the
/// signature.
pub fn batch_signing_bytes(cluster: &str, batch: &DeltaBatch) -> Vec<u8> {
    let fields = (
        batch.origin,
        batch.author,
        batch.incarnation,
        batch.first,
        &batch.changes,
    );
    signing_bytes(b"pinmesh delta batch v1\0", cluster, &fields)
}

/// Encodes a follower's announcement.
pub fn encode_announcement(announcement: &Announcement) -> Vec<u8> {
    encode_envelope(WIRE_VERSION, announcement)
}

/// Decodes a follower's announcement: at most [`MAX_ANNOUNCEMENT`] bytes.
pub fn decode_announcement(bytes: &[u8]) -> Result<Announcement, DecodeError> {
    check_envelope(bytes, MAX_ANNOUNCEMENT)?;
    decode_body(bytes)
}

/// A domain tag, the cluster name (length first), then the encoded fields: a signature made
/// for one kind of message or one cluster verifies for no other.
fn signing_bytes<T: Serialize>(domain: &[u8], cluster: &str, fields: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend((cluster.len() as u64).to_le_bytes());
    out.extend(cluster.as_bytes());
    out.extend(to_vec(fields));
    out
}

/// What an agent signs in its metric: a domain tag, the cluster name, then every field but
/// the signature.
pub fn metric_signing_bytes(cluster: &str, metric: &Metric) -> Vec<u8> {
    let fields = (
        metric.peer,
        metric.seq,
        metric.ttl_ms,
        metric.free,
        metric.pins,
        &metric.tags,
    );
    signing_bytes(b"pinmesh metric v1\0", cluster, &fields)
}

/// What a follower signs in its announcement: a domain tag, the cluster name, then every field
/// but the signature.
pub fn announcement_signing_bytes(cluster: &str, a: &Announcement) -> Vec<u8> {
    let fields = (a.peer, a.seq, a.ttl_ms, a.share, a.pins, a.bytes, a.skipped);
    signing_bytes(b"pinmesh follower v1\0", cluster, &fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_versions() {
        assert_eq!(envelope_version(&[0x82, 0x01]), Ok(1));
        assert_eq!(envelope_version(&[0x82, 0x18, 0x30]), Ok(0x30));
        assert_eq!(
            envelope_version(&[0x82, 0x19, 0x01]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            envelope_version(&[0x83, 0x01]),
            Err(DecodeError::NotAnEnvelope)
        );
        assert_eq!(envelope_version(&[]), Err(DecodeError::Truncated));
        assert!(matches!(
            decode_request(&encode_envelope(WIRE_VERSION, &(7u8, "x"))),
            Err(DecodeError::Malformed(_))
        ));
        for version in OLDEST_WIRE_VERSION..=WIRE_VERSION {
            let bytes = encode_request(version, &Request::Status);
            assert_eq!(decode_request(&bytes), Ok(Request::Status));
        }
        let future = to_vec(&(WIRE_VERSION + 1, &Request::Status));
        assert_eq!(
            decode_request(&future),
            Err(DecodeError::UnsupportedVersion(WIRE_VERSION + 1))
        );
        let past = to_vec(&(0u64, &Request::Status));
        assert_eq!(
            decode_request(&past),
            Err(DecodeError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn limits_apply_before_parsing() {
        let big = vec![0u8; MAX_REQUEST + 1];
        assert_eq!(
            decode_request(&big),
            Err(DecodeError::TooLarge {
                len: MAX_REQUEST + 1,
                max: MAX_REQUEST
            })
        );
    }
}
