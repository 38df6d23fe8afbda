//! What an agent says about itself for allocation: a [`Metric`], published on the cluster's
//! metrics topic every few seconds by each agent that drives an IPFS node.
//!
//! A metric carries the free space the agent's node has for pins, how many pins are allocated
//! to it, and its tags (`region = "eu"`, ...). It is signed by the agent it describes, with the
//! cluster's name in the signed bytes (like a [`DeltaBatch`](crate::DeltaBatch)), so a peer
//! cannot speak for another and a metric cannot be replayed into another cluster. `seq` grows
//! with each metric of one agent (its clock in milliseconds); a receiver keeps the highest, so
//! a replayed old metric cannot keep a dead agent alive. The receiver times a metric out `ttl_ms`
//! after it arrived, by its own clock: clocks need not agree.
//!
//! Encoded as `[peer, seq, ttl_ms, free, pins, tags, signature]`. The layout is fixed for the
//! topic's version (`.../metrics/1`); fields come in a new topic version, published beside the
//! old one for a release.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::codec;
use crate::message::{Key, Sig, Signer};

/// Most tags one metric carries.
pub const MAX_TAGS: usize = 16;
/// Longest tag name, in bytes.
pub const MAX_TAG_NAME: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE: usize = 128;
/// Shortest time to live a metric may ask for.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest time to live a metric may ask for.
pub const MAX_TTL_MS: u64 = 3_600_000;

/// One agent's allocation metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// The ed25519 public key of the agent it describes, which signs it.
    pub peer: Key,
    /// Grows with each metric the agent publishes; a lower or equal one is stale.
    pub seq: u64,
    /// How long after its arrival the metric holds.
    pub ttl_ms: u64,
    /// Bytes the agent's IPFS node has free for pins.
    pub free: u64,
    /// Pins allocated to the agent.
    pub pins: u64,
    /// `(name, value)`, sorted by name, names unique.
    pub tags: Vec<(String, String)>,
    pub signature: Sig,
}

crate::serde_as_tuple!(Metric {
    peer: Key,
    seq: u64,
    ttl_ms: u64,
    free: u64,
    pins: u64,
    tags: Vec<(String, String)>,
    signature: Sig,
});

/// What a metric says, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reading {
    pub seq: u64,
    pub ttl_ms: u64,
    pub free: u64,
    pub pins: u64,
    /// In any order; signing sorts them.
    pub tags: Vec<(String, String)>,
}

/// Why a [`Metric`] is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("metric has {0} tags; the limit is {MAX_TAGS}")]
    TooManyTags(usize),
    #[error("tag {0:?} is empty, too long or repeated, or the tags are not sorted")]
    BadTag(String),
    #[error("metric time to live of {0} ms is outside {MIN_TTL_MS}..={MAX_TTL_MS}")]
    BadTtl(u64),
    #[error("signature does not verify")]
    BadSignature,
}

impl Metric {
    /// Signs `reading` for `cluster` as the agent whose key `signer` holds.
    pub fn sign(signer: &impl Signer, cluster: &str, reading: Reading) -> Self {
        let mut tags = reading.tags;
        tags.sort();
        let mut metric = Metric {
            peer: Key(signer.public_key()),
            seq: reading.seq,
            ttl_ms: reading.ttl_ms,
            free: reading.free,
            pins: reading.pins,
            tags,
            signature: Sig([0; 64]),
        };
        metric.signature = Sig(signer.sign(&codec::metric_signing_bytes(cluster, &metric)));
        metric
    }

    /// Checks the limits and the signature for `cluster`. That `peer` is the agent that sent
    /// it, and that `seq` is new, is the receiver's to check.
    pub fn verify(&self, cluster: &str) -> Result<(), MetricError> {
        if self.tags.len() > MAX_TAGS {
            return Err(MetricError::TooManyTags(self.tags.len()));
        }
        for (i, (name, value)) in self.tags.iter().enumerate() {
            let sorted = i == 0 || self.tags[i - 1].0 < *name;
            if name.is_empty()
                || name.len() > MAX_TAG_NAME
                || value.len() > MAX_TAG_VALUE
                || !sorted
            {
                return Err(MetricError::BadTag(name.clone()));
            }
        }
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&self.ttl_ms) {
            return Err(MetricError::BadTtl(self.ttl_ms));
        }
        let key = VerifyingKey::from_bytes(&self.peer.0).map_err(|_| MetricError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature.0);
        key.verify_strict(&codec::metric_signing_bytes(cluster, self), &signature)
            .map_err(|_| MetricError::BadSignature)
    }

    /// The value of tag `name`, if the metric has it.
    pub fn tag(&self, name: &str) -> Option<&str> {
        let i = self
            .tags
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        Some(&self.tags[i].1)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    fn reading() -> Reading {
        Reading {
            seq: 7,
            ttl_ms: 30_000,
            free: 5 << 30,
            pins: 12,
            tags: vec![("region".into(), "eu".into()), ("rack".into(), "b2".into())],
        }
    }

    #[test]
    fn a_signed_metric_verifies_in_its_cluster_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let metric = Metric::sign(&key, "alpha", reading());
        assert_eq!(metric.verify("alpha"), Ok(()));
        assert_eq!(metric.verify("beta"), Err(MetricError::BadSignature));
        assert_eq!(metric.tag("region"), Some("eu"));
        assert_eq!(metric.tag("rack"), Some("b2"));
        assert_eq!(metric.tag("zone"), None);
        let bytes = codec::encode_metric(&metric);
        assert_eq!(codec::decode_metric(&bytes), Ok(metric));
    }

    #[test]
    fn a_changed_field_or_another_key_fails_the_signature() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let metric = Metric::sign(&key, "alpha", reading());
        let mut more_free = metric.clone();
        more_free.free += 1;
        let mut newer = metric.clone();
        newer.seq += 1;
        let mut other_peer = metric.clone();
        other_peer.peer = Key(SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());
        for forged in [more_free, newer, other_peer] {
            assert_eq!(forged.verify("alpha"), Err(MetricError::BadSignature));
        }
    }

    #[test]
    fn limits_are_checked() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let too_many = Reading {
            tags: (0..=MAX_TAGS)
                .map(|i| (format!("t{i:02}"), "v".into()))
                .collect(),
            ..reading()
        };
        assert_eq!(
            Metric::sign(&key, "a", too_many).verify("a"),
            Err(MetricError::TooManyTags(MAX_TAGS + 1))
        );
        for tags in [
            vec![(String::new(), "v".into())],
            vec![("x".repeat(MAX_TAG_NAME + 1), "v".into())],
            vec![("n".into(), "v".repeat(MAX_TAG_VALUE + 1))],
            vec![("n".into(), "a".into()), ("n".into(), "b".into())],
        ] {
            let metric = Metric::sign(&key, "a", Reading { tags, ..reading() });
            assert!(matches!(metric.verify("a"), Err(MetricError::BadTag(_))));
        }
        // Unsorted tags as sent (signing sorts them; a hand-made metric may not be).
        let mut unsorted = Metric::sign(&key, "a", reading());
        unsorted.tags.reverse();
        assert!(matches!(unsorted.verify("a"), Err(MetricError::BadTag(_))));
        for ttl_ms in [0, MIN_TTL_MS - 1, MAX_TTL_MS + 1] {
            let metric = Metric::sign(
                &key,
                "a",
                Reading {
                    ttl_ms,
                    ..reading()
                },
            );
            assert_eq!(metric.verify("a"), Err(MetricError::BadTtl(ttl_ms)));
        }
    }

    #[test]
    fn malformed_or_oversized_bytes_are_errors() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let bytes = codec::encode_metric(&Metric::sign(&key, "a", reading()));
        for cut in 0..bytes.len() {
            assert!(codec::decode_metric(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let big = vec![0u8; codec::MAX_METRIC + 1];
        assert!(matches!(
            codec::decode_metric(&big),
            Err(codec::DecodeError::TooLarge { .. })
        ));
    }
}
