//! Connects this agent's IPFS node to the IPFS nodes of its cluster peers.
//!
//! Bitswap fetches blocks from the nodes a node is connected to, and two IPFS nodes of one
//! cluster have no other way to find each other (the embedded node runs no DHT; a private Kubo
//! may not either). So agents ask each other for their nodes' addresses (the sync protocol's
//! `IpfsNode` request: on connecting, and every [`REASK`] after, in case a node came up late or
//! a link was dropped), and this task dials what they answer through the backend. It also keeps
//! this node's own addresses current for the swarm to answer with.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::message::{MAX_IPFS_ADDR_LEN, MAX_IPFS_ADDRS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::PinBackend;

/// How often agents ask their connected peers for their nodes' addresses again.
pub const REASK: Duration = Duration::from_secs(300);
/// How often this node's own addresses are read again (interfaces come and go).
const REFRESH: Duration = Duration::from_secs(60);
/// How long to wait before asking a node that is down for its addresses again.
const ID_RETRY: Duration = Duration::from_secs(5);
/// Answers not handled yet; more are dropped (and come again with the next ask).
const FOUND_CAPACITY: usize = 256;
/// Dials in flight at once; answers beyond it wait for the next ask.
const MAX_DIALS: usize = 16;

/// The swarm's side: where it reads this node's addresses to answer `IpfsNode`, and where it
/// reports what peers answered.
#[derive(Debug, Clone)]
pub struct Peering {
    pub own: watch::Receiver<Vec<Multiaddr>>,
    pub found: mpsc::Sender<(PeerId, Vec<String>)>,
}

/// What a peer answered (text, from the wire): the addresses that parse, then [`dialable`].
pub fn sanitize(addrs: Vec<String>) -> Vec<Multiaddr> {
    dialable(
        addrs
            .into_iter()
            .filter(|a| a.len() <= MAX_IPFS_ADDR_LEN)
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .collect(),
    )
}

/// Keeps only addresses a node can be dialed at: multiaddrs ending in `/p2p/<id>` and short
/// enough for the wire, TCP before other transports and loopback last (a remote peer's loopback
/// address is this machine), at most [`MAX_IPFS_ADDRS`] of them.
pub fn dialable(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = addrs
        .into_iter()
        .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))))
        .filter(|a| a.to_string().len() <= MAX_IPFS_ADDR_LEN)
        .collect();
    out.sort_by_key(|a| (!is_tcp(a), is_loopback(a)));
    out.dedup();
    out.truncate(MAX_IPFS_ADDRS);
    out
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Plain TCP (what every node speaks, the embedded one only).
fn is_tcp(addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    matches!(
        (it.next(), it.next(), it.next()),
        (
            Some(
                Protocol::Ip4(_)
                    | Protocol::Ip6(_)
                    | Protocol::Dns(_)
                    | Protocol::Dns4(_)
                    | Protocol::Dns6(_)
            ),
            Some(Protocol::Tcp(_)),
            Some(Protocol::P2p(_))
        )
    )
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
    own_tx: watch::Sender<Vec<Multiaddr>>,
    mut found: mpsc::Receiver<(PeerId, Vec<String>)>,
    cancel: CancellationToken,
) {
    let mut own_id: Option<PeerId> = None;
    let mut next_id = tokio::time::Instant::now();
    // Dials run beside the loop (each address may take the backend's call timeout); dropping
    // the set at shutdown aborts them.
    let mut dials = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next_id) => match backend.id().await {
                Ok(info) => {
                    let addrs = dialable(info.addresses);
                    if own_id.is_none() {
                        info!(node = %info.id, addresses = addrs.len(), "IPFS node identified");
                    }
                    own_id = Some(info.id);
                    own_tx.send_if_modified(|own| {
                        let changed = *own != addrs;
                        *own = addrs;
                        changed
                    });
                    next_id = tokio::time::Instant::now() + REFRESH;
                }
                Err(err) => {
                    debug!(error = %err, "IPFS node not identified");
                    next_id = tokio::time::Instant::now() + ID_RETRY;
                }
            },
            Some((agent, addrs)) = found.recv() => {
                let addrs = sanitize(addrs);
                let Some(node) = node_of(&addrs) else { continue };
                if own_id == Some(node) {
                    continue; // another agent on the same IPFS node
                }
                if dials.len() >= MAX_DIALS {
                    debug!(%agent, %node, "too many IPFS dials in flight; skipped until the next ask");
                    continue;
                }
                let backend = backend.clone();
                dials.spawn(async move { dial(backend.as_ref(), agent, node, &addrs).await });
            }
            Some(_) = dials.join_next(), if !dials.is_empty() => {}
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
async fn dial(backend: &dyn PinBackend, agent: PeerId, node: PeerId, addrs: &[Multiaddr]) {
    let mut last = None;
    for addr in addrs {
        match backend.connect(addr).await {
            Ok(()) => {
                debug!(%agent, %node, %addr, "connected to a cluster peer's IPFS node");
                return;
            }
            Err(err) => last = Some(err),
        }
    }
    if let Some(err) = last {
        warn!(%agent, %node, error = %err, "cannot connect to a cluster peer's IPFS node");
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
        // Many QUIC addresses do not crowd out the TCP one; the cap holds.
        let mut many: Vec<String> = (0..40)
            .map(|i| format!("/ip4/10.0.1.{i}/udp/4001/quic-v1/p2p/{id}"))
            .collect();
        many.push(format!("/ip4/10.0.0.9/tcp/4001/p2p/{id}"));
        let kept = sanitize(many);
        assert_eq!(kept.len(), MAX_IPFS_ADDRS);
        assert_eq!(
            kept[0].to_string(),
            format!("/ip4/10.0.0.9/tcp/4001/p2p/{id}")
        );
    }
}
