//! What the rest of the agent holds of the replica: the [`ReplicaHandle`] that queues
//! [`Command`]s, the [`Output`]s it emits, the [`ReplicaState`] it publishes after each
//! commit, and the signer of its batches.

use std::sync::Arc;

use libp2p::PeerId;
use libp2p::identity::ed25519;
use pinmesh_protocol::catchup::Staged;
use pinmesh_protocol::{
    ActorId, Cid, DeltaBatch, Dot, Head, PinSpec, Signer, SnapshotChunk, Summary,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::DURABLE_EVERY;

/// A local operation requested through the API.
#[derive(Debug, Clone)]
pub enum LocalOp {
    Pin { cid: Cid, spec: PinSpec },
    Unpin { cid: Cid },
}

/// Why a local operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalError {
    #[error("{0} is not pinned")]
    NotPinned(Cid),
    #[error("invalid pin options: {0}")]
    Spec(#[from] pinmesh_protocol::SpecError),
    #[error("storage failed: {0}")]
    Store(String),
    #[error("the disk is full: {0}; the agent is stopping (free space, then start it again)")]
    DiskFull(String),
    #[error("the replica has stopped")]
    Stopped,
    #[error("this agent follows the cluster read-only: it writes nothing")]
    ReadOnly,
}

/// The outcome of one accepted local operation.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub cid: Cid,
    pub dot: Dot,
}

#[derive(Debug)]
pub enum Command {
    Local {
        ops: Vec<LocalOp>,
        reply: oneshot::Sender<Result<Vec<Receipt>, LocalError>>,
    },
    /// Verified batches (signature and origin checked) from `from`.
    Remote {
        from: PeerId,
        batches: Vec<DeltaBatch>,
    },
    /// A snapshot chunk; a chunk with a head starts a new snapshot. The last one is checked
    /// against its head and joined.
    Snapshot {
        chunk: SnapshotChunk,
        reply: oneshot::Sender<Staged>,
    },
    /// Make any non-durable commit durable (sent on a timer).
    Flush,
    /// Remember where a peer can be dialled (written with the next group).
    RememberPeer {
        peer: PeerId,
        record: crate::store::PeerRecord,
    },
    /// Forget a peer's record (it belongs to another cluster).
    ForgetPeer { peer: PeerId },
    /// Remember a peer's latest metric, or (`None`) forget it; written with the next group.
    PeerMetric {
        peer: PeerId,
        record: Option<crate::store::StoredMetric>,
    },
    /// Record that `peer` was removed with `peers rm`, or (`removed` false) drop its record
    /// (it is added again); answered once durable.
    PeerRemoved {
        peer: PeerId,
        removed: bool,
        reply: oneshot::Sender<Result<(), LocalError>>,
    },
}

#[derive(Debug, Clone)]
pub enum Output {
    /// A committed local batch to publish.
    Publish(DeltaBatch),
    /// `peer` showed deltas of `origin` we lack: `ranges` of counters.
    Repair {
        peer: PeerId,
        origin: ActorId,
        ranges: Vec<(u64, u64)>,
    },
}

/// What the replica last committed, for the API, beacons and sync answers.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    pub summary: Summary,
    /// Snapshots joined since start.
    pub snapshots_joined: u64,
    /// Pins allocated to this peer (every pin without allocations counts): a counter kept on
    /// each write, published in its metric.
    pub allocated: u64,
    /// The full head (context and applied vector are small: O(actors + gaps)).
    pub head: Head,
    pub counter: u64,
    pub incarnation: u64,
}

/// A handle to send commands to the replica.
#[derive(Debug, Clone)]
pub struct ReplicaHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) state: watch::Receiver<Arc<ReplicaState>>,
}

impl ReplicaHandle {
    /// Applies local operations; resolves once they are durable. Dropping the future does not
    /// cancel the operations once queued.
    pub async fn local(&self, ops: Vec<LocalOp>) -> Result<Vec<Receipt>, LocalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Local { ops, reply })
            .await
            .map_err(|_| LocalError::Stopped)?;
        rx.await.map_err(|_| LocalError::Stopped)?
    }

    /// Stages a snapshot chunk; resolves once it is written (and, for the last, joined).
    pub async fn snapshot(&self, chunk: SnapshotChunk) -> Staged {
        let stopped = || Staged::Failed("the replica has stopped".into());
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Snapshot { chunk, reply })
            .await
            .is_err()
        {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Queues a peer record for the next commit; never waits (dropped if the queue is full).
    pub fn remember_peer(&self, peer: PeerId, record: crate::store::PeerRecord) {
        let _ = self.tx.try_send(Command::RememberPeer { peer, record });
    }

    /// Queues a peer's metric for the next commit; never waits. False when the queue is full
    /// (nothing queued).
    pub fn remember_metric(&self, peer: PeerId, record: crate::store::StoredMetric) -> bool {
        let record = Some(record);
        self.tx
            .try_send(Command::PeerMetric { peer, record })
            .is_ok()
    }

    /// Queues the removal of a peer's stored metric for the next commit; never waits.
    pub fn forget_metric(&self, peer: PeerId) {
        let _ = self.tx.try_send(Command::PeerMetric { peer, record: None });
    }

    /// Queues the removal of a peer's record for the next commit; never waits.
    pub fn forget_peer(&self, peer: PeerId) {
        let _ = self.tx.try_send(Command::ForgetPeer { peer });
    }

    /// Records that `peer` was removed with `peers rm` (not dialled at start, refused), or,
    /// with `removed` false, drops its record, so that it is known again like any new peer
    /// once it connects. Resolves once durable; dropping the future does not cancel the write
    /// once queued.
    pub async fn set_peer_removed(&self, peer: PeerId, removed: bool) -> Result<(), LocalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::PeerRemoved {
                peer,
                removed,
                reply,
            })
            .await
            .map_err(|_| LocalError::Stopped)?;
        rx.await.map_err(|_| LocalError::Stopped)?
    }

    /// Asks for pending non-durable commits to be made durable; never waits.
    pub fn flush(&self) {
        let _ = self.tx.try_send(Command::Flush);
    }

    /// Queues remote batches without waiting; false if the queue is full or the replica stopped.
    pub fn remote(&self, from: PeerId, batches: Vec<DeltaBatch>) -> bool {
        self.tx.try_send(Command::Remote { from, batches }).is_ok()
    }

    pub fn state(&self) -> Arc<ReplicaState> {
        self.state.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<ReplicaState>> {
        self.state.clone()
    }
}

/// Signs batches with the node's ed25519 identity.
#[derive(Clone)]
pub struct NodeSigner(pub ed25519::Keypair);

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSigner({})", hex::encode(self.0.public().to_bytes()))
    }
}

impl Signer for NodeSigner {
    fn public_key(&self) -> [u8; 32] {
        self.0.public().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig = self.0.sign(message);
        sig.try_into().expect("ed25519 signatures are 64 bytes")
    }
}

/// Makes remote-only commits durable within [`DURABLE_EVERY`] (they commit without fsync, and a
/// replica that receives nothing more would keep the last ones in memory). Runs until `cancel`.
pub async fn flush_periodically(replica: ReplicaHandle, cancel: CancellationToken) {
    let mut every = tokio::time::interval(DURABLE_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => replica.flush(),
        }
    }
}
