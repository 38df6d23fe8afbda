//! The IPFS node an agent drives: the [`PinBackend`] trait and its implementations.
//!
//! - [`kubo::KuboBackend`]: Kubo's HTTP RPC API (`/api/v0`), what production runs beside a Kubo
//!   daemon; also spoken by js-ipfs, which the tests use as an independent implementation.
//! - [`embedded::EmbeddedBackend`]: an IPFS node inside the agent, the default.
//!
//! [`peering`] connects the node to the IPFS nodes of the agent's cluster peers.
//!
//! Backends answer in parsed types: CIDs are [`Cid`]s whatever base or version the node printed
//! (compare them with [`same_content`]), sizes are numbers whether the node sent numbers or
//! strings. Every call is bounded in time; a pin is also cancelled when it stops making progress.

pub mod embedded;
pub mod kubo;
pub mod peering;

use std::time::Duration;

use async_trait::async_trait;
use cid::Cid;
use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::PinMode;

/// Why a call to the IPFS node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpfsError {
    /// No answer at all: the node is down, or the address is wrong.
    #[error("IPFS node unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The call took longer than its limit.
    #[error("IPFS call {call} timed out after {}", humantime::format_duration(*.after))]
    Timeout { call: &'static str, after: Duration },
    /// A pin made no progress for this long and was abandoned.
    #[error("pin made no progress for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    /// The node answered with an error.
    #[error("IPFS refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    /// The node answered something this agent cannot read.
    #[error("unexpected answer to {call}: {message}")]
    Protocol { call: &'static str, message: String },
}

impl IpfsError {
    /// The node itself is unavailable (as opposed to refusing one CID): every queued operation
    /// would fail the same way, so the reconciler waits for the node instead of counting
    /// attempts against each CID.
    pub fn node_down(&self) -> bool {
        matches!(self, IpfsError::Unreachable { .. })
    }
}

/// `id`: who the node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: PeerId,
    /// What the node reports, as far as this build can parse it (not yet filtered for
    /// dialling: see [`peering::dialable`]).
    pub addresses: Vec<Multiaddr>,
    pub agent_version: String,
}

/// `repo/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoStat {
    pub repo_size: u64,
    /// The node's storage limit (Kubo's `Datastore.StorageMax`, a garbage-collection
    /// watermark, not the disk); 0 when it has none.
    pub storage_max: u64,
    /// Where the repo is, as the node says (on the node's machine, which may be another).
    pub path: Option<std::path::PathBuf>,
}

/// One file or directory `add` stored, in the order the node reported them (the root last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Added {
    /// Path relative to what was added (`""` for the wrapping directory).
    pub name: String,
    pub cid: Cid,
    /// Bytes of the DAG below it, as the node reports them.
    pub size: u64,
}

/// Content to add: a `multipart/form-data` body in Kubo's `add` layout (one part per file,
/// `filename` the URL-escaped relative path, directories as `application/x-directory` parts
/// before their contents), streamed.
pub struct AddInput {
    /// `multipart/form-data; boundary=...`
    pub content_type: String,
    pub body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    /// Wrap everything in one directory (several paths were given).
    pub wrap: bool,
}

impl std::fmt::Debug for dyn PinBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// File content as it is read.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, IpfsError>>;

/// Limits on one pin.
#[derive(Debug, Clone, Copy)]
pub struct PinLimits {
    /// Abandon the pin when no progress arrives for this long.
    pub stall: Duration,
    /// Longest a pin may take in all; also sent to the node as its own timeout.
    pub total: Duration,
}

#[async_trait]
pub trait PinBackend: Send + Sync + 'static {
    /// A short description for logs and `status`: which node, where.
    fn describe(&self) -> String;

    /// The node's identity; also the health check.
    async fn id(&self) -> Result<NodeInfo, IpfsError>;

    /// Pins `cid` and returns once the node holds it. `name` marks the pin as this agent's
    /// where the node keeps pin names.
    async fn pin(
        &self,
        cid: &Cid,
        mode: PinMode,
        name: &str,
        limits: PinLimits,
    ) -> Result<(), IpfsError>;

    /// How the node pins `cid` itself (not as part of another pin), if it does.
    async fn pinned(&self, cid: &Cid) -> Result<Option<PinMode>, IpfsError>;

    /// Removes the pin on `cid`, recursive or direct. A CID that is not pinned counts as done.
    async fn unpin(&self, cid: &Cid) -> Result<(), IpfsError>;

    /// Every pin of one mode, streamed into `sink` (never `type=all`, which walks every DAG).
    /// Returns how many were listed.
    async fn list(
        &self,
        mode: PinMode,
        sink: &mut (dyn FnMut(Cid) + Send),
    ) -> Result<u64, IpfsError>;

    /// `repo/stat`.
    async fn repo_stat(&self) -> Result<RepoStat, IpfsError>;

    /// Stores content (CIDv1, not pinned: the reconciler pins what the pinset wants). Bounded
    /// by `limit` in all.
    async fn add(&self, input: AddInput, limit: Duration) -> Result<Vec<Added>, IpfsError>;

    /// Dials a peer that has the content (a pin's origins). Best effort.
    async fn connect(&self, addr: &Multiaddr) -> Result<(), IpfsError>;

    /// The bytes of the UnixFS file `cid`, from this node's blockstore only (a block the node
    /// does not hold ends the stream with an error instead of being fetched).
    async fn cat(&self, cid: &Cid) -> Result<ByteStream, IpfsError>;

    /// Releases what the backend holds (an embedded node's repo); called once, at shutdown.
    async fn stop(&self) {}
}

/// The CID with the version ignored: a CIDv0 and the CIDv1 `dag-pb` of the same hash name the
/// same content, and nodes print either.
pub fn content_key(cid: &Cid) -> Cid {
    if cid.version() == cid::Version::V0 {
        Cid::new_v1(0x70, *cid.hash())
    } else {
        *cid
    }
}

/// The other spelling of the same content, when there is one: the CIDv1 `dag-pb` of a CIDv0,
/// or the CIDv0 of a CIDv1 `dag-pb` sha2-256 CID.
pub fn twin(cid: &Cid) -> Option<Cid> {
    match cid.version() {
        cid::Version::V0 => Some(content_key(cid)),
        cid::Version::V1 if cid.codec() == 0x70 => Cid::new_v0(*cid.hash()).ok(),
        cid::Version::V1 => None,
    }
}

/// Whether two CIDs name the same content, whatever base or version they were written in.
pub fn same_content(a: &Cid, b: &Cid) -> bool {
    content_key(a) == content_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_versions_of_the_same_hash_are_the_same_content() {
        let v0: Cid = "QmeCaRmZ3KyqZQkMnpybyCMqwyrCZhBmzyUkJv3xNxaA9T"
            .parse()
            .expect("cid");
        let v1 = Cid::new_v1(0x70, *v0.hash());
        assert!(same_content(&v0, &v1));
        // The same hash under another codec is other content.
        let raw = Cid::new_v1(0x55, *v0.hash());
        assert!(!same_content(&v0, &raw));
        assert_eq!(twin(&v0), Some(v1));
        assert_eq!(twin(&v1), Some(v0));
        assert_eq!(twin(&raw), None);
        // The same CID in another base parses to the same value.
        let b58 = v1
            .to_string_of_base(cid::multibase::Base::Base58Btc)
            .expect("base58");
        assert_eq!(b58.parse::<Cid>().expect("cid"), v1);
    }
}
