//! The JSON shapes of the control API, shared by its handlers and its client.

use std::collections::BTreeMap;

use pinmesh_protocol::{Cid, Comparison, PinMode, Version, winner};
use serde::{Deserialize, Serialize};

use super::ApiError;

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/pins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    pub cid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mode: Option<PinMode>,
    #[serde(default)]
    pub replication_min: Option<i32>,
    #[serde(default)]
    pub replication_max: Option<i32>,
    /// Unix seconds.
    #[serde(default)]
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub origins: Vec<String>,
    /// Peers to allocate first (peer ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<String>,
    /// Allocate to the live peers there are when fewer than `replication_min`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_under_replication: bool,
}

impl PinRequest {
    /// A request for `cid` with a name and every other option at its default.
    pub fn new(cid: impl ToString, name: impl Into<String>) -> Self {
        PinRequest {
            cid: cid.to_string(),
            name: name.into(),
            mode: None,
            replication_min: None,
            replication_max: None,
            expire_at: None,
            metadata: BTreeMap::new(),
            origins: Vec::new(),
            allocations: Vec::new(),
            allow_under_replication: false,
        }
    }
}

/// The answer to a pin or unpin: durable locally once returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpReceipt {
    pub cid: String,
    /// The operation's dot, `actor.counter`.
    pub dot: String,
}

/// One line of `GET /v1/pins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinInfo {
    pub cid: String,
    pub name: String,
    pub mode: PinMode,
    pub replication_min: i32,
    pub replication_max: i32,
    /// The peers that hold it; empty: every peer.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub allocations: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expire_at: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub origins: Vec<String>,
    /// Unix milliseconds of the winning write.
    pub updated_ms: u64,
    /// More than one concurrent version survives (the winner is shown).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub conflict: bool,
}

impl PinInfo {
    pub(super) fn from_versions(cid: &Cid, versions: &[Version]) -> Option<Self> {
        let w = winner(versions)?;
        Some(PinInfo {
            cid: cid.to_string(),
            name: w.spec.name.clone(),
            mode: w.spec.mode,
            replication_min: w.spec.replication_min,
            replication_max: w.spec.replication_max,
            allocations: w.spec.allocations.clone(),
            expire_at: w.spec.expire_at,
            metadata: w.spec.metadata.clone(),
            origins: w.spec.origins.clone(),
            updated_ms: w.at,
            conflict: versions.len() > 1,
        })
    }
}

/// `GET /v1/id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub cluster: String,
    pub version: String,
    pub actor: String,
    /// Whether this agent may write the pinset (older agents do not say: they may).
    #[serde(default = "yes")]
    pub writer: bool,
}

fn yes() -> bool {
    true
}

/// `GET /v1/debug/digest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestInfo {
    pub peer_id: String,
    pub actor: String,
    pub pins: u64,
    pub applied_digest: String,
    pub state_digest: String,
    pub synced: bool,
    pub snapshots_joined: u64,
    /// Bytes of sync answers and of gossip received since start.
    pub sync_bytes_in: u64,
    pub gossip_bytes_in: u64,
}

/// `?wait=DURATION` on `GET /v1/pins/{cid}`; `?pins=N&synced=true&wait=DURATION` on
/// `GET /v1/debug/digest`: answer once the condition holds, or when the wait ends.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WaitQuery {
    pub wait: Option<String>,
    pub pins: Option<u64>,
    pub synced: Option<bool>,
}

/// Longest a request may wait.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl WaitQuery {
    pub(super) fn deadline(&self) -> Result<tokio::time::Instant, ApiError> {
        let wait = match &self.wait {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| ApiError::BadRequest(format!("wait {text:?}: {e}")))?
                .min(MAX_WAIT),
            None => std::time::Duration::ZERO,
        };
        Ok(tokio::time::Instant::now() + wait)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub addr: String,
}

/// `GET /v1/debug/state`: the head and the delta log's ranges per origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDump {
    pub actor: String,
    pub incarnation: String,
    pub counter: u64,
    pub pins: u64,
    pub state_digest: String,
    pub applied_digest: String,
    /// Origin -> applied counter ranges.
    pub applied: BTreeMap<String, Vec<(u64, u64)>>,
    /// Actor -> causal-context counter ranges.
    pub context: BTreeMap<String, Vec<(u64, u64)>>,
    /// Origin -> (first, last, batches) held in the delta log.
    pub log: BTreeMap<String, (u64, u64, u64)>,
}

/// `GET /v1/debug/peers`: how every known peer compares with this agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersReport {
    pub me: DigestInfo,
    pub peers: Vec<PeerReport>,
    /// Every connected peer reported this agent's applied and state digests.
    pub converged: bool,
    /// Connected peers that differ or never reported.
    pub diverged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    pub peer_id: String,
    pub connected: bool,
    pub last_heard_ms: Option<u64>,
    pub pins: Option<u64>,
    pub synced: Option<bool>,
    pub applied_match: bool,
    pub state_match: bool,
    /// Origin -> how this agent's applied deltas compare with the peer's (when it sent them).
    pub origins: BTreeMap<String, Comparison>,
}

/// `POST /v1/debug/cut` body: connections with `peers` refused (`cut`) or allowed again.
#[derive(Debug, Serialize, Deserialize)]
pub struct CutRequest {
    #[serde(with = "crate::text::list")]
    pub peers: Vec<libp2p::PeerId>,
    pub cut: bool,
}
