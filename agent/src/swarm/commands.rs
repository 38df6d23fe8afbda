//! What the API asks of the swarm ([`SwarmCommand`]) and the view of it the API shows.

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use pinmesh_protocol::Request;
use pinmesh_protocol::catchup::Input;

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
            SwarmCommand::Live { reply } => {
                let _ = reply.send(self.metrics.live(tokio::time::Instant::now()));
            }
            SwarmCommand::Allocatable { reply } => {
                let _ = reply.send(self.metrics.allocatable(tokio::time::Instant::now()));
            }
            SwarmCommand::Info { reply } => {
                let _ = reply.send(self.info());
            }
        }
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
        let peers = ids
            .into_iter()
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
        }
    }
}
