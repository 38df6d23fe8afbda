//! The reconciler: drives the IPFS node until its pins match what the pinset wants here.
//!
//! Owns the records of `status-1` (written through the store) and its view of the node's
//! pins. Receives the CIDs whose entries changed from the replica's [`Changes`] feed,
//! `recover` commands from the API, and the results of its workers; emits calls to the
//! [`PinBackend`] and status records.
//!
//! - **Desired**: pinned in the pinset, not expired, and held by this peer's [`Role`]: a
//!   member holds what is allocated to it
//!   ([`PinSpec::allocated_to`](pinmesh_protocol::PinSpec::allocated_to): named in the pin's
//!   allocations, or the pin has none), a follower every pin or those of its share. An expiry
//!   is a timer: the pin is looked at again at its `expire_at`, and handed to the [`Cluster`]
//!   (whose keeper removes it from the pinset).
//! - **Release**: this agent's own copy of a pin now allocated to other peers only is kept
//!   until the pin's minimum of them answer `pinned` ([`Cluster::pinned_on`]), asked again
//!   every [`RELEASE_RETRY`]: a re-allocation never lowers the copies on disk below it.
//! - **Actual**: one streamed listing of the node's recursive and direct pins per cycle (at
//!   start, every `ipfs.relist_interval`, when the node comes back, when the change feed
//!   overflowed or a snapshot was joined), then updated from its own calls.
//! - **Ownership**: a pin this agent adds to the node is recorded as its own (durably, before
//!   the call) and named `pinmesh:<cluster>` where the node keeps names. It removes its own pins
//!   that the pinset no longer wants, never anyone else's, and removes nothing before the agent
//!   is `synced` (a stale replica must not unpin what the cluster still wants). Whether the node
//!   already had a pin is decided by a listing begun after the CID was queued, or else by
//!   asking the node about that CID; when many new pins wait, one listing is cheaper than
//!   asking about each, so the node is listed again first. A pin made by hand between that
//!   look and the agent's own `pin/add` is the one case taken for the agent's.
//! - **Pace**: at most `ipfs.concurrency` calls at once, new pins ahead of retries, exponential
//!   backoff per CID, one call per second after ten failures in a row, and when the node is
//!   down nothing but a health check every [`PROBE_INTERVAL`] until it answers.
//!
//! Every status survives restarts; a status that was in flight (`pinning`, `unpinning`) is
//! settled by the first listing after the restart.
//!
//! The parts, each in its module:
//!
//! - [`decide`]: the decisions, pure functions tested by table (what to do about a CID; its
//!   status after a job, while the node is down, once claimed).
//! - [`queue`]: where each CID is (queued, waiting out a backoff, running, waiting for
//!   `synced`): one map, so a CID is in exactly one place.
//! - [`worker`]: one call to the node for one CID.
//! - [`cycle`]: the listing of the node and the full comparison with the pinset.
//! - [`actor`]: the task that owns the state, turns events into decisions and decisions into
//!   calls and status records. Store reads and commits run on blocking threads.
//! - [`status`]: the status read model (`GET /v1/status`, peers' `PinStatus`).

mod actor;
mod cycle;
mod decide;
mod health;
mod queue;
mod records;
pub mod status;
#[cfg(test)]
mod tests;
mod worker;

use std::time::Duration;

use pinmesh_protocol::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::ipfs::{PinBackend, PinLimits};
use crate::replica::Changes;
pub use crate::store::{PinState, Status};
use crate::store::{Store, StoreError};

/// How often a node that is down is asked whether it is back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How soon a pin handed over to other peers is looked at again while they do not hold it.
pub const RELEASE_RETRY: Duration = Duration::from_secs(5);
/// First retry delay; doubles per failure up to `ipfs.retry_max`.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Recover requests in flight from the API.
const COMMAND_CAPACITY: usize = 64;
/// How long an `unpinned` record of a CID the pinset no longer has stays in `status-1` (shown
/// by `status`); full comparisons remove older ones.
pub const UNPINNED_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Reads one CID's status.
pub fn read_status(store: &Store, cid: &Cid) -> Result<Option<PinState>, StoreError> {
    store.reader()?.status(cid)
}

/// What the reconciler asks of and tells the rest of the cluster.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The unpin guard's question: how many of `peers` report `cid` pinned on their IPFS
    /// node. A peer that does not answer counts as not holding it.
    async fn pinned_on(&self, cid: &Cid, peers: &[libp2p::PeerId]) -> usize;
    /// Pins whose expiry has come (as the reconciler's timers and full comparisons find
    /// them): one peer of the cluster removes each from the pinset. Never blocks.
    fn expired(&self, cids: Vec<Cid>);
}

/// Which pins this peer's node holds: a member those allocated to it (and every pin without
/// allocations), a follower every pin whatever its allocations, or its share of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub peer: libp2p::PeerId,
    /// The peer id as pins' allocations name it.
    text: String,
    /// `Some`: a follower, with its share (`None`: every pin).
    follower: Option<Option<pinmesh_protocol::share::Share>>,
}

impl Role {
    pub fn member(peer: libp2p::PeerId) -> Role {
        Role {
            peer,
            text: peer.to_base58(),
            follower: None,
        }
    }

    pub fn follower(peer: libp2p::PeerId, share: Option<pinmesh_protocol::share::Share>) -> Role {
        Role {
            follower: Some(share),
            ..Role::member(peer)
        }
    }

    pub fn is_follower(&self) -> bool {
        self.follower.is_some()
    }

    /// A follower's share (`Some(None)`: every pin); `None` for a member.
    pub fn share(&self) -> Option<Option<pinmesh_protocol::share::Share>> {
        self.follower
    }

    /// Whether this node should hold `cid`, pinned with `spec` (expiry aside).
    pub fn holds(&self, cid: &Cid, spec: &pinmesh_protocol::PinSpec) -> bool {
        match &self.follower {
            None => spec.allocated_to(&self.text),
            Some(share) => share.is_none_or(|s| s.contains(cid)),
        }
    }
}

/// How the reconciler paces itself; from `[ipfs]` in the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    /// This agent, and which pins it holds.
    pub role: Role,
    pub concurrency: usize,
    pub limits: PinLimits,
    pub relist_interval: Duration,
    pub retry_max: Duration,
    /// The first retry's delay ([`RETRY_BASE`]).
    pub retry_base: Duration,
    /// How often a node that is down is asked whether it is back ([`PROBE_INTERVAL`]).
    pub probe_interval: Duration,
    /// How soon a pin allocated elsewhere is looked at again while its new peers do not hold
    /// it yet ([`RELEASE_RETRY`]).
    pub release_retry: Duration,
    /// A follower's storage cap in bytes (`follower.max_storage`): new pins are skipped once
    /// the node holds this much.
    pub storage_cap: Option<u64>,
}

/// Commands from the API.
#[derive(Debug)]
enum Command {
    /// Retry errors now: one CID, or every CID in an error status. Answers how many.
    Recover {
        cid: Option<Cid>,
        reply: oneshot::Sender<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    tx: mpsc::Sender<Command>,
    report: watch::Receiver<Report>,
}

/// What the reconciler is doing, for `debug reconciler` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node_down: bool,
    /// Pins the node holds, as far as the reconciler knows.
    pub node_pins: u64,
    /// Full comparisons done since start.
    pub cycles: u64,
    /// The last one: how long listing the node took, and comparing the listing with the
    /// pinset and the statuses.
    pub last_listed_ms: u64,
    pub last_compared_ms: u64,
    /// CIDs the last one found to look at.
    pub last_to_check: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    /// Unpins waiting for the agent to be synced (0 from an agent that does not report it).
    #[serde(default)]
    pub waiting_for_sync: u64,
    /// Pins a follower with a storage cap did not take (0 from an agent that does not report
    /// it).
    #[serde(default)]
    pub skipped: u64,
}

impl ReconcilerHandle {
    pub fn report(&self) -> Report {
        self.report.borrow().clone()
    }

    /// A receiver that sees every change of the report.
    pub fn watch_report(&self) -> watch::Receiver<Report> {
        self.report.clone()
    }

    /// Retries errors now. Returns how many CIDs were queued.
    pub async fn recover(&self, cid: Option<Cid>) -> Option<usize> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Recover { cid, reply }).await.ok()?;
        rx.await.ok()
    }
}

/// Starts the reconciler: returns its handle and the task to run (it ends when `cancel` fires
/// or the change feed closes).
pub fn spawn(
    store: Store,
    backend: std::sync::Arc<dyn PinBackend>,
    changes: Changes,
    synced: watch::Receiver<bool>,
    settings: Settings,
    cluster: std::sync::Arc<dyn Cluster>,
    cancel: CancellationToken,
) -> (ReconcilerHandle, impl Future<Output = ()> + Send + 'static) {
    let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (report_tx, report) = watch::channel(Report::default());
    let handle = ReconcilerHandle { tx, report };
    let run = actor::Reconciler::new(store, backend, synced, settings, cluster, report_tx)
        .run(changes, commands, cancel);
    (handle, run)
}
