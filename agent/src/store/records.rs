//! The records of `status-1`: where each CID stands on this peer's IPFS node, written only by
//! the reconciler, read by the status read model. Their encoding is the store's business.

use pinmesh_protocol::codec;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where a CID stands on this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Status {
    /// Wanted here, waiting for a worker.
    Queued,
    /// `pin/add` in progress.
    Pinning,
    /// The node holds the pin.
    Pinned,
    /// The last `pin/add` failed; retried with backoff.
    PinError,
    /// `pin/rm` in progress.
    Unpinning,
    /// Not wanted any more, and not pinned by this agent.
    Unpinned,
    /// The last `pin/rm` failed; retried with backoff.
    UnpinError,
    /// Wanted in the cluster, but allocated to other peers.
    Remote,
    /// Was pinned, and a listing found it gone: someone unpinned it behind the agent's back.
    /// Pinned again.
    UnexpectedlyUnpinned,
}

impl Status {
    pub fn is_error(self) -> bool {
        matches!(self, Status::PinError | Status::UnpinError)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self).ok();
        f.write_str(text.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// One CID's record in `status-1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinState {
    pub status: Status,
    /// This agent added the pin to the node, so it may remove it.
    pub owned: bool,
    /// Failed attempts since the last success.
    pub attempts: u32,
    pub error: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_ms: u64,
}

pub(super) fn decode_state(bytes: &[u8]) -> Result<PinState, StoreError> {
    codec::decode_stored(bytes).map_err(|source| StoreError::Corrupt {
        what: "pin status",
        source,
    })
}

pub(super) fn encode_state(state: &PinState) -> Vec<u8> {
    codec::encode_stored(state)
}
