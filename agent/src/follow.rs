//! The follow configuration: what a follower needs to join a cluster read-only, published by
//! the cluster and signed by one of its trusted writers.
//!
//! It names the cluster and its secret, members to dial first, and the trusted writers whose
//! batches and snapshots a follower takes. A cluster without `cluster.trusted_writers` has
//! none to publish: there anyone with the secret may write, so a follower would be read-only
//! for nobody. The signature is by a trusted writer's node key, over a domain tag and the CBOR
//! encoding of every other field. A follower checks it against a writer it was told of out of
//! band (`follow NAME init SOURCE --writer PEER`, or `#writer=PEER` at the end of the URL),
//! never only against the writers the file lists: whoever could change the file could change
//! that list too.
//!
//! A follower may hold only a [`Share`] of the pins: `K/N` splits the CIDs into N shares by a
//! hash, the same on every machine, so N followers with shares 0/N .. N-1/N cover each pin once.

use libp2p::identity::ed25519;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

pub use pinmesh_protocol::share::Share;

/// The format this release writes and reads.
pub const FORMAT: u32 = 1;
/// Prefixed to the signed bytes, so that no other signed message of a node key can pass for
/// a follow configuration.
const DOMAIN: &[u8] = b"pinmesh follow-config v1\0";
/// Bootstrap addresses published at most.
pub const BOOTSTRAP_MAX: usize = 32;

/// A signed follow configuration, as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowConfig {
    pub format: u32,
    pub cluster: String,
    /// The cluster's secret, 64 hex digits: publishing the configuration publishes it.
    pub secret: String,
    /// Members' addresses, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    pub trusted_writers: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// The trusted writer that signed it.
    pub signer: String,
    /// ed25519, hex.
    pub signature: String,
}

/// What a checked follow configuration says, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    pub cluster: String,
    pub secret: String,
    pub bootstrap: Vec<Multiaddr>,
    pub trusted_writers: Vec<PeerId>,
    pub signer: PeerId,
    pub issued_at: u64,
}

/// Why a follow configuration is not taken. Each is one line for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FollowError {
    #[error(
        "the follow configuration is of format {0}; this release reads format {FORMAT}: \
         run a newer pinmesh"
    )]
    Format(u32),
    #[error(
        "the follow configuration is signed by {signer}, not by the writer {expected} you named"
    )]
    NotTheWriter { signer: String, expected: PeerId },
    #[error(
        "the follow configuration does not list {0} among its trusted writers, so it cannot \
         vouch for it"
    )]
    WriterNotListed(PeerId),
    #[error("the follow configuration's signature does not verify: it was changed after signing")]
    BadSignature,
    #[error("the follow configuration is malformed: {0}")]
    Malformed(String),
}

/// The bytes a signature covers.
fn signed_bytes(c: &FollowConfig) -> Vec<u8> {
    let body = (
        c.format,
        &c.cluster,
        &c.secret,
        &c.bootstrap,
        &c.trusted_writers,
        c.issued_at,
        &c.signer,
    );
    let mut bytes = DOMAIN.to_vec();
    bytes.extend(pinmesh_protocol::codec::encode_stored(&body));
    bytes
}

/// The ed25519 key a peer id holds inline (every pinmesh node key is one).
fn key_of(peer: &PeerId) -> Option<ed25519::PublicKey> {
    let hash = peer.as_ref();
    if hash.code() != 0 {
        return None; // not an identity hash: the key is not in the id
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    key.try_into_ed25519().ok()
}

impl FollowConfig {
    /// A configuration signed by `key`, the node key of a trusted writer.
    pub fn issue(
        key: &ed25519::Keypair,
        cluster: &str,
        secret: &str,
        bootstrap: &[Multiaddr],
        trusted_writers: &[PeerId],
        issued_at: u64,
    ) -> FollowConfig {
        let signer = libp2p::identity::PublicKey::from(key.public()).to_peer_id();
        let mut config = FollowConfig {
            format: FORMAT,
            cluster: cluster.to_string(),
            secret: secret.to_string(),
            bootstrap: (bootstrap.iter().take(BOOTSTRAP_MAX))
                .map(ToString::to_string)
                .collect(),
            trusted_writers: trusted_writers.iter().map(ToString::to_string).collect(),
            issued_at,
            signer: signer.to_string(),
            signature: String::new(),
        };
        config.signature = hex::encode(key.sign(&signed_bytes(&config)));
        config
    }

    /// Checks that `writer`, named out of band, signed this configuration and is one of its
    /// trusted writers, and that every field parses.
    pub fn verify(&self, writer: &PeerId) -> Result<Following, FollowError> {
        if self.format != FORMAT {
            return Err(FollowError::Format(self.format));
        }
        if self.signer != writer.to_string() {
            return Err(FollowError::NotTheWriter {
                signer: self.signer.clone(),
                expected: *writer,
            });
        }
        let key = key_of(writer).ok_or_else(|| {
            FollowError::Malformed(format!("{writer} does not hold an ed25519 key"))
        })?;
        let signature = hex::decode(&self.signature).map_err(|_| FollowError::BadSignature)?;
        if !key.verify(&signed_bytes(self), &signature) {
            return Err(FollowError::BadSignature);
        }
        let malformed = FollowError::Malformed;
        let trusted_writers = (self.trusted_writers.iter())
            .map(|p| {
                p.parse::<PeerId>()
                    .map_err(|_| malformed(format!("{p:?} is not a peer id")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !trusted_writers.contains(writer) {
            return Err(FollowError::WriterNotListed(*writer));
        }
        let bootstrap = (self.bootstrap.iter())
            .map(|a| crate::config::parse_peer_addr(a).map_err(malformed))
            .collect::<Result<Vec<_>, _>>()?;
        if bootstrap.is_empty() {
            return Err(malformed("it names no member to dial".into()));
        }
        crate::config::parse_secret(&self.secret).map_err(|e| malformed(e.to_string()))?;
        if self.cluster.is_empty() {
            return Err(malformed("it names no cluster".into()));
        }
        Ok(Following {
            cluster: self.cluster.clone(),
            secret: self.secret.clone(),
            bootstrap,
            trusted_writers,
            signer: *writer,
            issued_at: self.issued_at,
        })
    }
}

#[cfg(test)]
mod tests;
