//! Wire messages. Encoding lives in [`codec`](crate::codec); every message travels in a
//! versioned envelope, and this module holds the version-1 bodies.
//!
//! - gossip ([`Gossip`]): signed [`DeltaBatch`]es and periodic [`Beacon`]s on the cluster topic;
//! - request-response ([`Request`] / [`Response`]): `Status`, `GetDeltas` (answered `Deltas` or
//!   `Truncated` below the retained log), `Snapshot` chunks, `PinStatus` (where CIDs stand
//!   on the peer's IPFS node) and `IpfsNode` (the addresses of the peer's IPFS node, so agents
//!   can connect their nodes to each other).
//!
//! A [`DeltaBatch`] carries an application-level ed25519 signature by its author, so any peer
//! can serve it again during repair and the receiver still knows who wrote it.

use cid::Cid;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec;
use crate::delta::{Change, Delta};
use crate::digest::Digest;
use crate::dot::{ActorId, AppliedVector, CausalContext, Dot};
use crate::entry::Version;
use crate::spec::SpecError;

/// Most changes in one batch. With the per-pin limits of [`spec::limits`](crate::spec::limits)
/// a batch of small pins stays well under [`codec::MAX_DELTA_BATCH`]; the sender also cuts
/// batches by encoded size.
pub const MAX_BATCH_CHANGES: usize = 4096;

/// Consecutive deltas of one origin, `first ..= first + changes.len() - 1`, signed by their
/// author. Encoded as `[origin, author, incarnation, first, changes, signature]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaBatch {
    pub origin: ActorId,
    /// The author's ed25519 public key. `origin` must equal
    /// `ActorId::derive(author, incarnation)`.
    pub author: Key,
    pub incarnation: u64,
    /// The counter of the first change's dot.
    pub first: u64,
    pub changes: Vec<Change>,
    pub signature: Sig,
}

crate::serde_as_tuple!(DeltaBatch {
    origin: ActorId,
    author: Key,
    incarnation: u64,
    first: u64,
    changes: Vec<Change>,
    signature: Sig,
});

/// A 32-byte public key, encoded as a CBOR byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(#[serde(with = "serde_bytes")] pub [u8; 32]);

/// A 64-byte signature, encoded as a CBOR byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sig(#[serde(with = "serde_bytes")] pub [u8; 64]);

/// Something that signs batches with an ed25519 key: a test key here, the node's libp2p
/// identity in the agent.
pub trait Signer {
    fn public_key(&self) -> [u8; 32];
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

impl Signer for SigningKey {
    fn public_key(&self) -> [u8; 32] {
        self.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(self, message).to_bytes()
    }
}

/// Why a [`DeltaBatch`] is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch has no changes")]
    Empty,
    #[error("batch has {0} changes; the limit is {MAX_BATCH_CHANGES}")]
    TooManyChanges(usize),
    #[error("batch counters start at {first} and overflow or start at 0")]
    BadRange { first: u64 },
    #[error("origin {origin} is not the actor of the signing key's incarnation {incarnation}")]
    OriginMismatch { origin: ActorId, incarnation: u64 },
    #[error("signature does not verify")]
    BadSignature,
    #[error("change {counter} observes {dot}, which its own origin cannot have made before it")]
    BadObserved { counter: u64, dot: Dot },
    #[error("invalid pin options for {cid}: {source}")]
    Spec {
        cid: String,
        #[source]
        source: SpecError,
    },
}

impl DeltaBatch {
    /// Signs consecutive local `deltas` (all of one origin, ascending and dense) for `cluster`.
    /// The cluster name is signed, not sent: a batch replayed into another cluster fails to
    /// verify there.
    ///
    /// # Panics
    /// If `deltas` is empty, mixes origins or skips a counter: that is a bug in the caller.
    pub fn sign(signer: &impl Signer, cluster: &str, incarnation: u64, deltas: &[Delta]) -> Self {
        let first = deltas
            .first()
            .expect("a batch needs at least one delta")
            .dot;
        for (i, d) in deltas.iter().enumerate() {
            assert_eq!(d.dot, Dot::new(first.actor, first.counter + i as u64));
        }
        let mut batch = DeltaBatch {
            origin: first.actor,
            author: Key(signer.public_key()),
            incarnation,
            first: first.counter,
            changes: deltas.iter().map(|d| d.change.clone()).collect(),
            signature: Sig([0; 64]),
        };
        batch.signature = Sig(signer.sign(&codec::batch_signing_bytes(cluster, &batch)));
        batch
    }

    /// Checks everything that needs no state: shape, limits, origin binding, that each change
    /// observes no dot its origin made at or after it, and the signature for `cluster`.
    /// Whether `author` may write is the receiver's decision.
    pub fn verify(&self, cluster: &str) -> Result<(), BatchError> {
        if self.changes.is_empty() {
            return Err(BatchError::Empty);
        }
        if self.changes.len() > MAX_BATCH_CHANGES {
            return Err(BatchError::TooManyChanges(self.changes.len()));
        }
        if self.first == 0 || self.last().is_none() {
            return Err(BatchError::BadRange { first: self.first });
        }
        if ActorId::derive(&self.author.0, self.incarnation) != self.origin {
            return Err(BatchError::OriginMismatch {
                origin: self.origin,
                incarnation: self.incarnation,
            });
        }
        for (i, change) in self.changes.iter().enumerate() {
            let counter = self.first + i as u64;
            for (j, dot) in change.observed.iter().enumerate() {
                let future = dot.actor == self.origin && dot.counter >= counter;
                if future || change.observed[..j].contains(dot) {
                    return Err(BatchError::BadObserved { counter, dot: *dot });
                }
            }
            if let Some((_, spec)) = &change.pin {
                spec.validate().map_err(|source| BatchError::Spec {
                    cid: change.cid.to_string(),
                    source,
                })?;
            }
        }
        let key = VerifyingKey::from_bytes(&self.author.0).map_err(|_| BatchError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature.0);
        key.verify_strict(&codec::batch_signing_bytes(cluster, self), &signature)
            .map_err(|_| BatchError::BadSignature)
    }

    /// The counter of the last change; `None` if the range overflows.
    pub fn last(&self) -> Option<u64> {
        (self.changes.len() as u64)
            .checked_sub(1)
            .and_then(|n| self.first.checked_add(n))
    }

    /// The batch as deltas with their dots. Stops short, rather than overflow, on a batch
    /// whose counters would pass `u64::MAX` (such a batch does not verify).
    pub fn deltas(&self) -> impl Iterator<Item = Delta> + '_ {
        self.changes.iter().enumerate().map_while(|(i, change)| {
            let counter = self.first.checked_add(i as u64)?;
            Some(Delta {
                dot: Dot::new(self.origin, counter),
                change: change.clone(),
            })
        })
    }
}

/// A replica's convergence summary: sent periodically as a beacon and as the answer to
/// `Status`. Two replicas with equal `applied_digest` hold equal states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub actor: ActorId,
    pub pins: u64,
    pub state_digest: Digest,
    pub applied_digest: Digest,
    /// The applied vector itself; a beacon may leave it out when it is large, and the receiver
    /// asks with `Status` when the digests differ.
    pub applied: Option<AppliedVector>,
    /// Per origin, the lowest counter whose delta this replica still serves.
    pub low_water: Vec<(ActorId, u64)>,
    /// Whether the replica has caught up with the peers it asked at start.
    pub synced: bool,
}

impl Summary {
    /// The summary of `actor`'s replica at `head`, with its applied vector, not yet synced.
    pub fn of(actor: ActorId, head: &crate::pinset::Head) -> Self {
        Summary {
            actor,
            pins: head.pins,
            state_digest: head.digest,
            applied_digest: head.applied.digest(),
            applied: Some(head.applied.clone()),
            low_water: Vec::new(),
            synced: false,
        }
    }
}

/// Gossip on the cluster topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    DeltaBatch(DeltaBatch),
    Beacon(Summary),
}

/// A request on the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Ask for the peer's [`Summary`] with its applied vector.
    Status,
    /// Ask for the deltas `from ..= to` of `origin`, as the signed batches holding them.
    GetDeltas { origin: ActorId, from: u64, to: u64 },
    /// Ask for the next chunk of the peer's state: the first chunk with `snapshot_id: None`,
    /// the following ones with the id and the `next` cursor of the previous chunk.
    Snapshot {
        snapshot_id: Option<u64>,
        after: Option<ByteBuf>,
        limit: u32,
    },
    /// Ask where these CIDs stand on the peer's IPFS node; at most [`MAX_STATUS_CIDS`].
    PinStatus { cids: Vec<Cid> },
    /// Ask for the addresses of the peer's IPFS node.
    IpfsNode,
}

/// Most addresses an `IpfsNode` answer carries; receivers ignore the rest.
pub const MAX_IPFS_ADDRS: usize = 16;
/// Longest address an `IpfsNode` answer carries; receivers ignore longer ones.
pub const MAX_IPFS_ADDR_LEN: usize = 256;

/// Longest refusal text sent; longer ones are cut.
pub const MAX_REFUSAL_MESSAGE: usize = 256;

/// Most CIDs one `PinStatus` request may ask about.
pub const MAX_STATUS_CIDS: usize = 1000;
/// Longest error text a `PinStatus` answer carries per CID; longer ones are cut.
pub const MAX_STATUS_ERROR: usize = 256;

/// One CID's status on the answering peer's IPFS node. Encoded as
/// `[cid, status, error, attempts, updated_ms]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinStatusEntry {
    pub cid: Cid,
    pub status: PinStatus,
    pub error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the last change; 0 when not looked at yet.
    pub updated_ms: u64,
}

crate::serde_as_tuple!(PinStatusEntry {
    cid: Cid,
    status: PinStatus,
    error: Option<String>,
    attempts: u32,
    updated_ms: u64,
});

/// Where a CID stands on a peer's IPFS node, as peers tell each other. Encoded as its
/// snake_case name; a name this release does not know decodes as `Unknown`, so a newer peer's
/// statuses still show.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PinStatus {
    Queued,
    Pinning,
    Pinned,
    PinError,
    Unpinning,
    Unpinned,
    UnpinError,
    Remote,
    UnexpectedlyUnpinned,
    Unknown(String),
}

impl PinStatus {
    const KNOWN: [(PinStatus, &'static str); 9] = [
        (PinStatus::Queued, "queued"),
        (PinStatus::Pinning, "pinning"),
        (PinStatus::Pinned, "pinned"),
        (PinStatus::PinError, "pin_error"),
        (PinStatus::Unpinning, "unpinning"),
        (PinStatus::Unpinned, "unpinned"),
        (PinStatus::UnpinError, "unpin_error"),
        (PinStatus::Remote, "remote"),
        (PinStatus::UnexpectedlyUnpinned, "unexpectedly_unpinned"),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            PinStatus::Unknown(name) => name,
            known => Self::KNOWN
                .iter()
                .find(|(status, _)| status == known)
                .map_or("unknown", |(_, name)| name),
        }
    }
}

impl std::str::FromStr for PinStatus {
    type Err = std::convert::Infallible;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(Self::KNOWN
            .iter()
            .find(|(_, known)| *known == name)
            .map_or_else(|| PinStatus::Unknown(name.to_string()), |(s, _)| s.clone()))
    }
}

impl std::fmt::Display for PinStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PinStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PinStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(name.parse().unwrap_or_else(|never| match never {}))
    }
}

/// Why a peer declined a request. Encoded as its code; a code this release does not know
/// decodes as `Unknown`, and the answer's text says what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Busy serving other peers (or too many snapshots open); try later.
    Busy,
    /// The snapshot asked for expired, is unknown, or was not continued in order.
    SnapshotGone,
    /// The peer drives no IPFS node, so it has no pin statuses or node addresses to give.
    NoIpfs,
    /// The request asks for more than the peer answers at once.
    TooLarge,
    /// The peer cannot read its storage.
    Storage,
    /// The peer does not answer this request on this protocol.
    Unsupported,
    Unknown(u64),
}

impl Refusal {
    const CODES: [(Refusal, u64); 6] = [
        (Refusal::Busy, 1),
        (Refusal::SnapshotGone, 2),
        (Refusal::NoIpfs, 3),
        (Refusal::TooLarge, 4),
        (Refusal::Storage, 5),
        (Refusal::Unsupported, 6),
    ];

    pub fn code(self) -> u64 {
        match self {
            Refusal::Unknown(code) => code,
            known => Self::CODES
                .iter()
                .find(|(r, _)| *r == known)
                .map_or(0, |(_, code)| *code),
        }
    }

    pub fn from_code(code: u64) -> Self {
        Self::CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map_or(Refusal::Unknown(code), |(r, _)| *r)
    }
}

impl Serialize for Refusal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.code())
    }
}

impl<'de> Deserialize<'de> for Refusal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Refusal::from_code(u64::deserialize(d)?))
    }
}

/// One CID and its versions, as a snapshot carries it. Encoded as `[cid, versions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinEntry {
    pub cid: Cid,
    pub versions: Vec<Version>,
}

crate::serde_as_tuple!(PinEntry {
    cid: Cid,
    versions: Vec<Version>
});

/// The head of a snapshot, sent with its first chunk. The receiver joins it only after staging
/// every chunk: a partial chunk's context would mask dots the chunk omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    pub context: CausalContext,
    pub applied: AppliedVector,
    pub pins: u64,
    pub state_digest: Digest,
}

/// A chunk of a snapshot, entries ascending by CID bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub snapshot_id: u64,
    pub head: Option<SnapshotHead>,
    pub entries: Vec<PinEntry>,
    /// Cursor for the next chunk; `None` on the last one.
    pub next: Option<ByteBuf>,
}

/// A response on the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Summary),
    Deltas {
        batches: Vec<DeltaBatch>,
    },
    /// The log no longer holds the asked range; ask for a snapshot.
    Truncated {
        origin: ActorId,
        first_available: u64,
    },
    SnapshotChunk(SnapshotChunk),
    /// The request was understood and declined: why, and a sentence for people (wire 2; wire
    /// 1 carried the sentence alone, see [`v1`]).
    Refused {
        reason: Refusal,
        message: String,
    },
    /// The answer to `PinStatus`: one entry per CID asked, in the order asked.
    PinStatus {
        entries: Vec<PinStatusEntry>,
    },
    /// The answer to `IpfsNode`: multiaddrs ending in `/p2p/<node id>`; empty when the peer
    /// drives no IPFS node or does not know its addresses yet.
    IpfsNode {
        addrs: Vec<String>,
    },
}

impl Response {
    /// A refusal, its text cut to [`MAX_REFUSAL_MESSAGE`].
    pub fn refused(reason: Refusal, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_REFUSAL_MESSAGE {
            let mut cut = MAX_REFUSAL_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Response::Refused { reason, message }
    }
}

/// The bodies of wire version 1 that version 2 changed: only [`Response::Refused`], which
/// carried a sentence and no reason. Requests and gossip are the same in both versions.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use super::{DeltaBatch, PinStatusEntry, Refusal, SnapshotChunk, Summary};
    use crate::dot::ActorId;

    /// A response as version 1 encodes it (variants in the same order as [`super::Response`]).
    #[derive(Serialize)]
    pub(crate) enum ResponseRef<'a> {
        Status(&'a Summary),
        Deltas {
            batches: &'a [DeltaBatch],
        },
        Truncated {
            origin: ActorId,
            first_available: u64,
        },
        SnapshotChunk(&'a SnapshotChunk),
        Refused {
            reason: &'a str,
        },
        PinStatus {
            entries: &'a [PinStatusEntry],
        },
        IpfsNode {
            addrs: &'a [String],
        },
    }

    #[derive(Deserialize)]
    pub(crate) enum Response {
        Status(Summary),
        Deltas {
            batches: Vec<DeltaBatch>,
        },
        Truncated {
            origin: ActorId,
            first_available: u64,
        },
        SnapshotChunk(SnapshotChunk),
        Refused {
            reason: String,
        },
        PinStatus {
            entries: Vec<PinStatusEntry>,
        },
        IpfsNode {
            addrs: Vec<String>,
        },
    }

    /// The sentences with which release 1 agents refused, by reason.
    const SENTENCES: [(&str, Refusal); 6] = [
        ("this agent drives no IPFS node", Refusal::NoIpfs),
        ("busy", Refusal::Busy),
        ("serving", Refusal::Busy),
        ("snapshot", Refusal::SnapshotGone),
        ("storage error", Refusal::Storage),
        ("at most", Refusal::TooLarge),
    ];

    impl<'a> From<&'a super::Response> for ResponseRef<'a> {
        fn from(response: &'a super::Response) -> Self {
            use super::Response as R;
            match response {
                R::Status(summary) => ResponseRef::Status(summary),
                R::Deltas { batches } => ResponseRef::Deltas { batches },
                R::Truncated {
                    origin,
                    first_available,
                } => ResponseRef::Truncated {
                    origin: *origin,
                    first_available: *first_available,
                },
                R::SnapshotChunk(chunk) => ResponseRef::SnapshotChunk(chunk),
                R::Refused { message, .. } => ResponseRef::Refused { reason: message },
                R::PinStatus { entries } => ResponseRef::PinStatus { entries },
                R::IpfsNode { addrs } => ResponseRef::IpfsNode { addrs },
            }
        }
    }

    impl From<Response> for super::Response {
        fn from(response: Response) -> Self {
            use super::Response as R;
            match response {
                Response::Status(summary) => R::Status(summary),
                Response::Deltas { batches } => R::Deltas { batches },
                Response::Truncated {
                    origin,
                    first_available,
                } => R::Truncated {
                    origin,
                    first_available,
                },
                Response::SnapshotChunk(chunk) => R::SnapshotChunk(chunk),
                Response::Refused { reason } => {
                    // Version 1 sent a sentence only; its reason is read off the sentences
                    // release 1 used, once, here at the edge.
                    let known = SENTENCES
                        .iter()
                        .find(|(start, _)| reason.starts_with(start))
                        .map_or(Refusal::Unknown(0), |(_, r)| *r);
                    R::refused(known, reason)
                }
                Response::PinStatus { entries } => R::PinStatus { entries },
                Response::IpfsNode { addrs } => R::IpfsNode { addrs },
            }
        }
    }
}
