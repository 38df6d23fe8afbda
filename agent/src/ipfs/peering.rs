//! Connects this agent's IPFS node to the IPFS nodes of its cluster peers.
//!
//! Bitswap fetches blocks from the nodes a node is connected to, and two IPFS nodes of one
//! cluster have no other way to find each other (the embedded node runs no DHT; a private Kubo
//! may not either). So when two agents connect, each asks the other for its node's addresses
//! (the sync protocol's `IpfsNode` request), and this task dials them through the backend. It
//! dials every known node again every [`REDIAL`], in case the link was dropped (Kubo's
//! connection manager trims idle connections).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::message::{MAX_IPFS_ADDR_LEN, MAX_IPFS_ADDRS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::PinBackend;

/// How often the known nodes are dialed again.
pub const REDIAL: Duration = Duration::from_secs(300);
/// How long to wait before asking a node that is down for its addresses again.
const ID_RETRY: Duration = Duration::from_secs(5);
/// Nodes learned but not dialed yet; more are dropped (and learned again on the next connect).
const FOUND_CAPACITY: usize = 256;

/// The swarm's side: where it reads this node's addresses to answer `IpfsNode`, and where it
/// reports what peers answered.
#[derive(Debug, Clone)]
pub struct Peering {
    pub own: watch::Receiver<Vec<String>>,
    pub found: mpsc::Sender<(PeerId, Vec<String>)>,
}

/// Keeps only addresses a node can be dialed at: valid multiaddrs ending in `/p2p/<id>`, at
/// most [`MAX_IPFS_ADDRS`] of them; loopback last, since a remote peer's loopback address is
/// this machine.
pub fn sanitize(addrs: Vec<String>) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = addrs
        .into_iter()
        .take(MAX_IPFS_ADDRS)
        .filter(|a| a.len() <= MAX_IPFS_ADDR_LEN)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))))
        .collect();
    out.sort_by_key(is_loopback);
    out
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Starts the peering task; returns the swarm's side and the task.
pub fn spawn(
    backend: Arc<dyn PinBackend>,
    cancel: CancellationToken,
) -> (Peering, impl std::future::Future<Output = ()>) {
    let (own_tx, own) = watch::channel(Vec::new());
    let (found, found_rx) = mpsc::channel(FOUND_CAPACITY);
    (
        Peering { own, found },
        run(backend, own_tx, found_rx, cancel),
    )
}

async fn run(
    backend: Arc<dyn PinBackend>,
    own_tx: watch::Sender<Vec<String>>,
    mut found: mpsc::Receiver<(PeerId, Vec<String>)>,
    cancel: CancellationToken,
) {
    // Node id (of the IPFS node) -> its addresses, by the agent that told us.
    let mut known: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    let mut own_id: Option<String> = None;
    let mut next_id = tokio::time::Instant::now();
    let mut redial = tokio::time::interval(REDIAL);
    redial.tick().await;
    loop {
        let learn_own = async {
            if own_id.is_some() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(next_id).await;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = learn_own => match backend.id().await {
                Ok(info) => {
                    let addrs: Vec<String> = sanitize(info.addresses)
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                    info!(node = %info.id, addresses = addrs.len(), "IPFS node identified");
                    own_id = Some(info.id);
                    own_tx.send_replace(addrs);
                }
                Err(err) => {
                    debug!(error = %err, "IPFS node not identified yet");
                    next_id = tokio::time::Instant::now() + ID_RETRY;
                }
            },
            Some((agent, addrs)) = found.recv() => {
                let addrs = sanitize(addrs);
                let Some(node) = node_of(&addrs) else { continue };
                if own_id.as_deref() == Some(node.to_string().as_str()) {
                    continue; // another agent on the same IPFS node
                }
                debug!(%agent, %node, "connecting to a cluster peer's IPFS node");
                dial(backend.as_ref(), node, &addrs).await;
                known.insert(node, addrs);
            }
            _ = redial.tick() => {
                for (node, addrs) in &known {
                    dial(backend.as_ref(), *node, addrs).await;
                }
            }
        }
    }
}

/// The node the addresses lead to (the `/p2p/` of the first).
fn node_of(addrs: &[Multiaddr]) -> Option<PeerId> {
    match addrs.first()?.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// Tries the addresses in order until one connects.
async fn dial(backend: &dyn PinBackend, node: PeerId, addrs: &[Multiaddr]) {
    let mut last = None;
    for addr in addrs {
        match backend.connect(&addr.to_string()).await {
            Ok(()) => return,
            Err(err) => last = Some(err),
        }
    }
    if let Some(err) = last {
        warn!(%node, error = %err, "cannot connect to a cluster peer's IPFS node");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dialable_addresses_are_kept_loopback_last() {
        let id = PeerId::random();
        let addrs = vec![
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}"),
            "not an address".to_string(),
            "/ip4/10.0.0.2/tcp/4001".to_string(), // no /p2p/
            format!("/ip4/10.0.0.2/tcp/4001/p2p/{id}"),
            format!("/dns4/{}.example/tcp/4001/p2p/{id}", "x".repeat(300)),
        ];
        let kept: Vec<String> = sanitize(addrs).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            kept,
            vec![
                format!("/ip4/10.0.0.2/tcp/4001/p2p/{id}"),
                format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}"),
            ]
        );
        assert_eq!(
            sanitize(vec![format!("/p2p/{id}"); 40]).len(),
            MAX_IPFS_ADDRS
        );
    }
}
