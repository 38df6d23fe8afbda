//! What the API asks of the swarm ([`SwarmCommand`]) and the view of it the API shows.

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use pinmesh_protocol::Request;
use pinmesh_protocol::catchup::Input;
use tracing::info;

use super::{EventLoop, PeerView, SwarmCommand, SwarmError, SwarmInfo};

impl EventLoop {
    pub(super) fn on_command(&mut self, command: SwarmCommand) {
        match command {
            SwarmCommand::Dial { addr, reply } => {
                let Some(Protocol::P2p(peer_id)) = addr.iter().last() else {
                    let _ = reply.send(Err(format!("{addr} does not end with /p2p/<peer id>")));
                    return;
                };
                if peer_id == *self.swarm.local_peer_id() {
                    let _ = reply.send(Err(format!("{addr} is this agent's own address")));
                    return;
                }
                if self.membership.is_foreign(&peer_id) {
                    let _ = reply.send(Err(format!(
                        "{peer_id} belongs to another cluster (it shares the secret, not the \
                         cluster name)"
                    )));
                    return;
                }
                // Naming a removed peer again undoes its removal (the API dropped its record).
                if self.swarm.behaviour_mut().blocked.unblock_peer(peer_id) {
                    info!(%peer_id, "removed peer added again");
                }
                if self.swarm.is_connected(&peer_id) {
                    if self.membership.is_identified(&peer_id) {
                        let _ = reply.send(Ok(peer_id));
                    } else {
                        // Answered once it identifies itself (or hangs up).
                        self.pending_joins.entry(peer_id).or_default().push(reply);
                    }
                    return;
                }
                // The peer becomes known once connected (its address is then recorded), so a
                // join that fails leaves no peer behind to list or to dial again.
                match self.swarm.dial(addr) {
                    Ok(()) => {
                        self.pending_dials.entry(peer_id).or_default().push(reply);
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err.to_string()));
                    }
                }
            }
            SwarmCommand::Refresh => self.feed(Input::Refresh),
            SwarmCommand::Cut { peers, cut } => {
                let list = &mut self.swarm.behaviour_mut().cut;
                for peer in peers {
                    if cut {
                        list.block_peer(peer);
                    } else {
                        list.unblock_peer(peer);
                    }
                }
            }
            SwarmCommand::Remove { peer, reply } => {
                self.remove(peer);
                let _ = reply.send(());
            }
            SwarmCommand::PinStatus { peer, cids, reply } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(SwarmError::NotConnected));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, Request::PinStatus { cids });
                self.pending_status.insert(id, reply);
            }
            SwarmCommand::PublishMetric(metric) => self.publish_metric(metric),
            SwarmCommand::Announce(announcement) => self.announce(announcement),
            SwarmCommand::Live { reply } => {
                let _ = reply.send(self.metrics.live(tokio::time::Instant::now()));
            }
            SwarmCommand::Allocatable { reply } => {
                let mut peers = self.metrics.allocatable(tokio::time::Instant::now());
                peers.removed = (self.swarm.behaviour().blocked.blocked_peers().iter())
                    .copied()
                    .collect();
                let _ = reply.send(peers);
            }
            SwarmCommand::Info { reply } => {
                let _ = reply.send(self.info());
            }
        }
    }

    /// Removes `peer` (`peers rm`): the block list closes its connections and refuses every
    /// later one, dialled by anyone (Kademlia included); its metric goes, so allocation no
    /// longer sees it; and it is forgotten by catch-up, Kademlia and the views.
    fn remove(&mut self, peer: PeerId) {
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.block_peer(peer);
        behaviour.kad.remove_peer(&peer);
        self.metrics.forget(&peer);
        self.followers.forget(&peer);
        self.peers.remove(&peer);
        let waiting = (self.pending_dials.remove(&peer).into_iter())
            .chain(self.pending_joins.remove(&peer))
            .flatten();
        for reply in waiting {
            let _ = reply.send(Err(format!("{peer} was removed")));
        }
        self.feed(Input::Forget(peer));
        info!(%peer, "peer removed: disconnected and refused, its metrics ignored");
    }

    fn info(&self) -> SwarmInfo {
        let now = self.started.elapsed();
        let clock = tokio::time::Instant::now();
        let me = *self.swarm.local_peer_id();
        let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
        ids.extend(self.catchup.known().filter(|p| !self.peers.contains_key(p)));
        // Peers heard of only through their metrics (gossip relayed by others).
        let unseen: Vec<PeerId> = (self.metrics.peers())
            .filter(|p| **p != me && !ids.contains(p))
            .copied()
            .collect();
        ids.extend(unseen);
        // Followers heard of only through their announcements.
        let announced: Vec<PeerId> = (self.followers.peers())
            .filter(|p| !ids.contains(p))
            .copied()
            .collect();
        ids.extend(announced);
        let removed: Vec<PeerId> = (self.swarm.behaviour().blocked.blocked_peers().iter())
            .copied()
            .collect();
        let peers = ids
            .into_iter()
            // None should be left anywhere; a removed peer is never shown all the same.
            .filter(|id| !removed.contains(id))
            .map(|id| {
                let state = self.peers.get(&id);
                let heard = self.catchup.heard_from(&id);
                PeerView {
                    peer_id: id,
                    connected: state.is_some_and(|p| p.connections > 0),
                    addrs: state
                        .map(|p| p.addrs.iter().cloned().collect())
                        .unwrap_or_default(),
                    last_heard_ms: heard.map(|(at, _)| now.saturating_sub(at).as_millis() as u64),
                    summary: heard.map(|(_, s)| s.clone()),
                    metric: self.metrics.view(&id, clock),
                    follower: self.followers.view(&id, clock),
                }
            })
            .collect();
        SwarmInfo {
            peer_id: me,
            listen: self.swarm.listeners().cloned().collect(),
            peers,
            metric: self.metrics.view(&me, clock),
            rejected_messages: self.flags.rejected.load(Ordering::Relaxed),
            foreign_peers: self.flags.foreign_peers.load(Ordering::Relaxed),
            removed,
            refused_removed: self.flags.refused_removed.load(Ordering::Relaxed),
            repinning: None,
            followers: self.followers.views(clock),
        }
    }
}
