//! [`SwarmHandle`]: what the rest of the agent may ask of the swarm, as typed async methods.
//! Each sends a [`SwarmCommand`] to the event loop and waits for its answer.

use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::{Cid, PinStatusEntry};
use tokio::sync::{mpsc, oneshot};

use super::{SwarmCommand, SwarmInfo};

/// How long a join waits for the peer to connect and identify itself.
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Commands queued to the swarm. Small: each carries a reply and callers await it.
const COMMAND_CAPACITY: usize = 64;

/// Why the swarm could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmError {
    /// The event loop has stopped (the agent is stopping).
    #[error("the network has stopped")]
    Stopped,
    /// The peer is not connected.
    #[error("not connected")]
    NotConnected,
    /// The peer drives no IPFS node, so it has no pin statuses to tell.
    #[error("the peer drives no IPFS node")]
    NoIpfs,
    /// The peer refused, or the request failed (the text says which).
    #[error("{0}")]
    Failed(String),
}

/// The swarm's side of the agent: cheap to clone.
#[derive(Debug, Clone)]
pub struct SwarmHandle {
    tx: mpsc::Sender<SwarmCommand>,
}

impl SwarmHandle {
    /// A handle and the receiver the event loop takes.
    pub fn new() -> (SwarmHandle, mpsc::Receiver<SwarmCommand>) {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        (SwarmHandle { tx }, rx)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> SwarmCommand,
    ) -> Result<T, SwarmError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| SwarmError::Stopped)?;
        rx.await.map_err(|_| SwarmError::Stopped)
    }

    /// What the swarm knows of itself and its peers.
    pub async fn info(&self) -> Result<SwarmInfo, SwarmError> {
        self.ask(|reply| SwarmCommand::Info { reply }).await
    }

    /// Dials `addr` (ending in `/p2p/<id>`); resolves once the peer is connected and has
    /// identified itself, with its id (an error for a peer of another cluster), or after
    /// [`JOIN_TIMEOUT`]. A removed peer is no longer refused from then on.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, SwarmError> {
        let asked = self.ask(|reply| SwarmCommand::Dial { addr, reply });
        match tokio::time::timeout(JOIN_TIMEOUT, asked).await {
            Ok(answer) => answer?.map_err(SwarmError::Failed),
            Err(_) => Err(SwarmError::Failed(format!(
                "no answer within {} s: the peer did not connect or did not identify itself",
                JOIN_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Removes `peer` from this agent's view of the cluster: disconnected, refused, its metric
    /// dropped (recording the removal in the store is the caller's part). Dialling it again
    /// ([`dial`](Self::dial)) undoes it.
    pub async fn remove(&self, peer: PeerId) -> Result<(), SwarmError> {
        self.ask(|reply| SwarmCommand::Remove { peer, reply }).await
    }

    /// Asks every connected peer for a fresh status.
    pub async fn refresh(&self) -> Result<(), SwarmError> {
        self.tx
            .send(SwarmCommand::Refresh)
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Refuses (`cut`) or allows again connections with `peers`: a network split, for tests.
    pub async fn cut(&self, peers: Vec<PeerId>, cut: bool) -> Result<(), SwarmError> {
        self.tx
            .send(SwarmCommand::Cut { peers, cut })
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Publishes this agent's allocation metric.
    pub async fn publish_metric(
        &self,
        metric: pinmesh_protocol::metric::Metric,
    ) -> Result<(), SwarmError> {
        self.tx
            .send(SwarmCommand::PublishMetric(metric))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Publishes this follower's announcement.
    pub async fn announce(&self, announcement: super::Announcement) -> Result<(), SwarmError> {
        self.tx
            .send(SwarmCommand::Announce(announcement))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// The peers with a live metric (this agent included when it has one): those allocation
    /// may choose.
    pub async fn live_peers(&self) -> Result<Vec<(PeerId, super::PeerMetric)>, SwarmError> {
        self.ask(|reply| SwarmCommand::Live { reply }).await
    }

    /// The live peers and those down but not forgotten, with how long they have been down.
    pub async fn allocatable(&self) -> Result<super::Allocatable, SwarmError> {
        self.ask(|reply| SwarmCommand::Allocatable { reply }).await
    }

    /// Where `cids` stand on `peer`'s IPFS node.
    pub async fn pin_status(
        &self,
        peer: PeerId,
        cids: Vec<Cid>,
    ) -> Result<Vec<PinStatusEntry>, SwarmError> {
        self.ask(|reply| SwarmCommand::PinStatus { peer, cids, reply })
            .await?
    }
}
