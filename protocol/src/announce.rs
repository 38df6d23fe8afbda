//! What a follower says about itself: an [`Announcement`], published on the cluster's
//! followers topic every few seconds. It is the one thing a follower publishes, and carries no
//! pin data: the share of the pins it holds (none: all of them), how many pins its IPFS node
//! holds, the bytes its node's repo uses, and how many it skipped (a storage cap). The
//! numbers are the node's as a whole (a node shared with other uses counts those too) and the
//! follower's own word. Members accept it from
//! peers that may not write, so it is small (a fixed layout, [`MAX_ANNOUNCEMENT`] bytes) and
//! a receiver keeps one per follower. From the shares, a member tells how many followers cover
//! a CID without asking them.
//!
//! Signed like a [`Metric`](crate::metric::Metric) (the follower's key, the cluster's name in
//! the signed bytes, a growing `seq`, a time to live counted by the receiver). Encoded as
//! `[peer, seq, ttl_ms, share, pins, bytes, skipped, signature]`; fields come in a new topic
//! version.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::codec;
use crate::message::{Key, Sig, Signer};
use crate::metric::{MAX_TTL_MS, MIN_TTL_MS};
use crate::share::{SHARES_MAX, Share};

/// Largest encoded announcement.
pub const MAX_ANNOUNCEMENT: usize = 512;

/// One follower's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The follower's ed25519 public key, which signs it.
    pub peer: Key,
    pub seq: u64,
    pub ttl_ms: u64,
    /// `None`: every pin.
    pub share: Option<Share>,
    /// Pins its IPFS node holds (recursive and direct, as its reconciler knows them).
    pub pins: u64,
    /// Bytes its IPFS node's repo uses.
    pub bytes: u64,
    /// Pins of its share it does not take (its storage cap is reached).
    pub skipped: u64,
    pub signature: Sig,
}

crate::serde_as_tuple!(Announcement {
    peer: Key,
    seq: u64,
    ttl_ms: u64,
    share: Option<Share>,
    pins: u64,
    bytes: u64,
    skipped: u64,
    signature: Sig,
});

/// What an announcement says, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Standing {
    pub seq: u64,
    pub ttl_ms: u64,
    pub share: Option<Share>,
    pub pins: u64,
    pub bytes: u64,
    pub skipped: u64,
}

/// Why an [`Announcement`] is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    #[error("announced share {0} is not K/N with K < N <= {SHARES_MAX}")]
    BadShare(Share),
    #[error("announcement time to live of {0} ms is outside {MIN_TTL_MS}..={MAX_TTL_MS}")]
    BadTtl(u64),
    #[error("signature does not verify")]
    BadSignature,
}

impl Announcement {
    /// Signs `standing` for `cluster` as the follower whose key `signer` holds.
    pub fn sign(signer: &impl Signer, cluster: &str, standing: Standing) -> Self {
        let mut announcement = Announcement {
            peer: Key(signer.public_key()),
            seq: standing.seq,
            ttl_ms: standing.ttl_ms,
            share: standing.share,
            pins: standing.pins,
            bytes: standing.bytes,
            skipped: standing.skipped,
            signature: Sig([0; 64]),
        };
        let bytes = codec::announcement_signing_bytes(cluster, &announcement);
        announcement.signature = Sig(signer.sign(&bytes));
        announcement
    }

    /// Checks the limits and the signature for `cluster`. That `peer` sent it, and that `seq`
    /// is new, is the receiver's to check.
    pub fn verify(&self, cluster: &str) -> Result<(), AnnouncementError> {
        if let Some(share) = self.share
            && (share.of == 0 || share.of > SHARES_MAX || share.index >= share.of)
        {
            return Err(AnnouncementError::BadShare(share));
        }
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&self.ttl_ms) {
            return Err(AnnouncementError::BadTtl(self.ttl_ms));
        }
        let key =
            VerifyingKey::from_bytes(&self.peer.0).map_err(|_| AnnouncementError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature.0);
        key.verify_strict(
            &codec::announcement_signing_bytes(cluster, self),
            &signature,
        )
        .map_err(|_| AnnouncementError::BadSignature)
    }

    /// Whether the follower holds `cid` (its share has it, or it holds every pin).
    pub fn covers(&self, cid: &crate::Cid) -> bool {
        self.share.is_none_or(|share| share.contains(cid))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    fn standing() -> Standing {
        Standing {
            seq: 9,
            ttl_ms: 30_000,
            share: Some(Share { index: 1, of: 4 }),
            pins: 250,
            bytes: 1 << 30,
            skipped: 3,
        }
    }

    #[test]
    fn a_signed_announcement_verifies_in_its_cluster_only_and_round_trips() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let announcement = Announcement::sign(&key, "alpha", standing());
        assert_eq!(announcement.verify("alpha"), Ok(()));
        assert_eq!(
            announcement.verify("beta"),
            Err(AnnouncementError::BadSignature)
        );
        let bytes = codec::encode_announcement(&announcement);
        assert!(bytes.len() <= MAX_ANNOUNCEMENT, "{} bytes", bytes.len());
        assert_eq!(codec::decode_announcement(&bytes), Ok(announcement));
        let whole = Announcement::sign(
            &key,
            "alpha",
            Standing {
                share: None,
                ..standing()
            },
        );
        let bytes = codec::encode_announcement(&whole);
        assert_eq!(codec::decode_announcement(&bytes), Ok(whole));
    }

    #[test]
    fn a_changed_field_or_another_key_fails_the_signature() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let signed = Announcement::sign(&key, "alpha", standing());
        let changes: [fn(&mut Announcement); 5] = [
            |a| a.pins += 1,
            |a| a.seq += 1,
            |a| a.share = None,
            |a| a.skipped = 0,
            |a| a.peer = Key(SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes()),
        ];
        for change in changes {
            let mut forged = signed.clone();
            change(&mut forged);
            assert_eq!(forged.verify("alpha"), Err(AnnouncementError::BadSignature));
        }
    }

    #[test]
    fn limits_are_checked_and_oversized_bytes_refused() {
        let key = SigningKey::from_bytes(&[5; 32]);
        for share in [Share { index: 2, of: 2 }, Share { index: 0, of: 0 }] {
            let bad = Announcement::sign(
                &key,
                "a",
                Standing {
                    share: Some(share),
                    ..standing()
                },
            );
            assert_eq!(bad.verify("a"), Err(AnnouncementError::BadShare(share)));
        }
        let short = Announcement::sign(
            &key,
            "a",
            Standing {
                ttl_ms: 10,
                ..standing()
            },
        );
        assert_eq!(short.verify("a"), Err(AnnouncementError::BadTtl(10)));
        let mut big = codec::encode_announcement(&Announcement::sign(&key, "a", standing()));
        big.resize(MAX_ANNOUNCEMENT + 1, 0);
        assert!(matches!(
            codec::decode_announcement(&big),
            Err(codec::DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_announcement_covers_its_share_or_everything() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let share = Share { index: 1, of: 4 };
        let some = Announcement::sign(&key, "a", standing());
        let all = Announcement::sign(
            &key,
            "a",
            Standing {
                share: None,
                ..standing()
            },
        );
        for n in 0..50 {
            let cid = crate::sim::sim_cid(n);
            assert_eq!(some.covers(&cid), share.contains(&cid));
            assert!(all.covers(&cid));
        }
    }
}
