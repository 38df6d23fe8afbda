//! The swarm's events: connections, identify (membership), gossip (validated before it is
//! forwarded or applied) and answers to this agent's sync requests, turned into catch-up inputs.
//! Connections the block list refused (removed peers) are counted; their gossip relayed by
//! others, beacons and metrics, is ignored.

use std::sync::atomic::Ordering;

use libp2p::allow_block_list::Blocked;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, StreamProtocol, gossipsub, identify};
use pinmesh_protocol::catchup::Input;
use pinmesh_protocol::codec as wire;
use pinmesh_protocol::{DeltaBatch, Gossip, Refusal, Request, Response};
use tracing::{debug, info, warn};

use super::behaviour::author_peer;
use super::followers::Rejected as FollowerRejected;
use super::membership::Verdict;
use super::metrics::Rejected;
use super::{BehaviourEvent, EventLoop, SwarmError};
use crate::store::{PeerRecord, StoredMetric};

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen_tx.send_modify(|addrs| addrs.push(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if self.membership.is_foreign(&peer_id) {
                    for reply in self.pending_dials.remove(&peer_id).unwrap_or_default() {
                        let _ = reply.send(Err(format!("{peer_id} belongs to another cluster")));
                    }
                    // Cut off once it has had our identify again (pushed now, in case it does
                    // not ask), so that a peer that comes back learns why rather than seeing a
                    // bare hang-up.
                    if self.membership.may_cut(&peer_id) {
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    } else {
                        self.swarm.behaviour_mut().identify.push([peer_id]);
                    }
                    return;
                }
                let peer = self.peers.entry(peer_id).or_default();
                peer.connections = num_established.get() as usize;
                if endpoint.is_dialer() {
                    peer.addrs.insert(endpoint.get_remote_address().clone());
                }
                if num_established.get() == 1 {
                    debug!(%peer_id, "connected");
                    self.feed(Input::Connected(peer_id));
                    if self.peering.is_some() {
                        let sync = &mut self.swarm.behaviour_mut().sync;
                        sync.send_request(&peer_id, Request::IpfsNode);
                    }
                }
                let joined = self.pending_dials.remove(&peer_id).unwrap_or_default();
                if !joined.is_empty() {
                    // Joined at runtime (maybe a whole other part of the cluster). A join that
                    // never connects changes nothing. Answered once identify shows the peer.
                    self.feed(Input::Joined(peer_id));
                    self.pending_joins
                        .entry(peer_id)
                        .or_default()
                        .extend(joined);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.connections = num_established as usize;
                }
                if num_established == 0 {
                    for reply in self.pending_joins.remove(&peer_id).unwrap_or_default() {
                        let _ = reply.send(Err(format!(
                            "{peer_id} hung up before identifying itself (as a peer of another \
                             cluster sharing the secret does)"
                        )));
                    }
                    if self.membership.disconnected(&peer_id) {
                        self.feed(Input::Disconnected(peer_id));
                    } else {
                        // Never shown to be a member: nothing to list or to remember.
                        self.peers.remove(&peer_id);
                        self.feed(Input::Forget(peer_id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error: libp2p::swarm::DialError::Denied { cause },
                ..
            } if cause.downcast_ref::<Blocked>().is_some() => {
                // Kademlia (or a peer's request) wanted a removed peer.
                self.flags.refused_removed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = ?peer_id, "dial of a removed peer refused");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                warn!(peer = ?peer_id, error = %error, "connection failed");
                if let Some(peer_id) = peer_id {
                    for reply in self.pending_dials.remove(&peer_id).unwrap_or_default() {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } if cause.downcast_ref::<Blocked>().is_some() => {
                self.flags.refused_removed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = ?peer_id, "connection from a removed peer refused");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!(error = %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = if message.topic == self.metrics_topic.hash() {
                    self.on_metric(message.source, &message.data)
                } else if message.topic == self.followers_topic.hash() {
                    self.on_announcement(message.source, &message.data)
                } else {
                    self.on_gossip(message.source, &message.data)
                };
                if matches!(verdict, MessageAcceptance::Reject) {
                    self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            // A peer of another cluster is cut off once it has had our identify.
            BehaviourEvent::Identify(
                identify::Event::Sent { peer_id, .. } | identify::Event::Pushed { peer_id, .. },
            ) if self.membership.identify_sent(peer_id) => {
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. }) => {
                debug!(%peer_id, %error, "identify failed");
                for reply in self.pending_joins.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Err(format!("{peer_id} did not identify itself: {error}")));
                }
                // Whether or not it had our identify, a peer of another cluster goes.
                if self.membership.is_foreign(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // One that arrived as the peer was removed: nothing of it goes to Kademlia or
                // the store.
                if self.is_removed(&peer_id) || !self.is_member(peer_id, &info.protocols) {
                    return;
                }
                let peer = self.peers.entry(peer_id).or_default();
                for addr in info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                    peer.addrs.insert(addr);
                }
                self.remember(peer_id);
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.serve(peer, request, channel),
                    request_response::Message::Response {
                        response,
                        request_id,
                    } => match self.pending_status.remove(&request_id) {
                        Some(reply) => {
                            let _ = reply.send(match response {
                                Response::PinStatus { entries } => Ok(entries),
                                Response::Refused {
                                    reason: Refusal::NoIpfs,
                                    ..
                                } => Err(SwarmError::NoIpfs),
                                Response::Refused { message, .. } => {
                                    Err(SwarmError::Failed(message))
                                }
                                _ => Err(SwarmError::Failed("answered something else".into())),
                            });
                        }
                        None => self.on_response(peer, response),
                    },
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            }) => {
                debug!(%peer, error = %error, "sync request failed");
                if matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                ) {
                    // Connected, but not to this cluster's protocol: it will never answer.
                    self.membership.unsupported(peer);
                    let member = self.membership.counts(&peer);
                    self.feed(Input::Member { peer, member });
                }
                match self.pending_status.remove(&request_id) {
                    Some(reply) => {
                        let _ = reply.send(Err(SwarmError::Failed(error.to_string())));
                    }
                    None => self.feed(Input::RequestFailed { peer }),
                }
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                debug!(%peer, error = %error, "sync request from peer failed");
            }
            _ => {}
        }
    }

    /// Validates one gossip message and hands it on.
    fn on_gossip(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        self.flags
            .gossip_bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let Some(source) = source else {
            return MessageAcceptance::Reject;
        };
        match wire::decode_gossip(data) {
            Err(err) => {
                warn!(%source, error = %err, "undecodable gossip rejected");
                MessageAcceptance::Reject
            }
            Ok(Gossip::DeltaBatch(batch)) => {
                if let Err(err) = batch.verify(&self.cluster) {
                    warn!(%source, error = %err, "invalid delta batch rejected");
                    return MessageAcceptance::Reject;
                }
                if author_peer(&batch) != Some(source) {
                    warn!(%source, origin = %batch.origin, "batch not signed by its publisher rejected");
                    return MessageAcceptance::Reject;
                }
                let origin = batch.origin;
                if !self.catchup.may_write(&source) {
                    self.feed(Input::Untrusted { origin });
                    return MessageAcceptance::Reject;
                }
                // Authenticated: this peer is the origin's author, and holds all its deltas.
                self.feed(Input::Authored {
                    origin,
                    peer: source,
                });
                if !self.replica.remote(source, vec![batch]) {
                    warn!("replica queue full: batch dropped, beacons will repair");
                }
                MessageAcceptance::Accept
            }
            // Relayed by another peer: a removed peer is not heard of again (its batches are
            // the pinset's, and are applied like any other writer's).
            Ok(Gossip::Beacon(_)) if self.is_removed(&source) => MessageAcceptance::Ignore,
            Ok(Gossip::Beacon(summary)) => {
                self.feed(Input::Summary {
                    peer: source,
                    summary,
                    is_status: false,
                });
                MessageAcceptance::Accept
            }
        }
    }

    /// Validates a peer's metric; a stale copy is ignored, not held against its sender.
    fn on_metric(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        self.flags
            .gossip_bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let Some(source) = source else {
            return MessageAcceptance::Reject;
        };
        if self.is_removed(&source) {
            // Relayed by another peer: a removed peer stays out of allocation.
            return MessageAcceptance::Ignore;
        }
        let now = tokio::time::Instant::now();
        match self.metrics.receive(source, data, now) {
            Ok(()) => {
                if self.metrics.due_for_storing(&source, now) {
                    let record = StoredMetric {
                        metric: data.to_vec(),
                        seen_ms: crate::replica::now_ms(),
                    };
                    if self.replica.remember_metric(source, record) {
                        self.metrics.stored(&source, now);
                    }
                }
                MessageAcceptance::Accept
            }
            Err(Rejected::Stale) => MessageAcceptance::Ignore,
            Err(err) => {
                warn!(%source, error = %err, "metric rejected");
                MessageAcceptance::Reject
            }
        }
    }

    /// Validates a follower's announcement; a replay, one too soon or one follower too many
    /// is ignored (and not forwarded), not held against its sender.
    fn on_announcement(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        self.flags
            .gossip_bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let Some(source) = source else {
            return MessageAcceptance::Reject;
        };
        // A trusted writer is no follower; a removed peer stays out.
        if self.is_removed(&source) || self.trusted_writers.contains(&source) {
            return MessageAcceptance::Ignore;
        }
        let (now, now_ms) = (tokio::time::Instant::now(), crate::replica::now_ms());
        match self.followers.receive(source, data, now, now_ms) {
            Ok(()) => MessageAcceptance::Accept,
            Err(FollowerRejected::Ignored) => MessageAcceptance::Ignore,
            Err(err) => {
                warn!(%source, error = %err, "follower announcement rejected");
                MessageAcceptance::Reject
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, response: Response) {
        match response {
            // Answered as it was being removed: it stays forgotten.
            Response::Status(_) if self.is_removed(&peer) => {}
            Response::Status(summary) => self.feed(Input::Summary {
                peer,
                summary,
                is_status: true,
            }),
            Response::Deltas { batches } => {
                let mut valid = Vec::with_capacity(batches.len());
                for batch in batches {
                    match batch.verify(&self.cluster) {
                        // Signed by its author, whose key the origin derives from: that origin
                        // is never pulled again.
                        Ok(())
                            if !author_peer(&batch).is_some_and(|a| self.catchup.may_write(&a)) =>
                        {
                            self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                            self.feed(Input::Untrusted {
                                origin: batch.origin,
                            });
                        }
                        Ok(()) => valid.push(batch),
                        Err(err) => {
                            self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, error = %err, "invalid batch in a repair answer dropped");
                        }
                    }
                }
                if let Some(origin) = valid.last().map(|b| b.origin) {
                    let last = valid.iter().filter_map(DeltaBatch::last).max().unwrap_or(0);
                    self.feed(Input::Deltas { peer, origin, last });
                }
                if !valid.is_empty() && !self.replica.remote(peer, valid) {
                    warn!("replica queue full: repair answer dropped");
                }
            }
            Response::Truncated {
                origin,
                first_available,
            } => self.feed(Input::Truncated {
                peer,
                origin,
                first_available,
            }),
            Response::SnapshotChunk(chunk) => self.feed(Input::Chunk { peer, chunk }),
            Response::Refused { reason, message } => {
                debug!(%peer, ?reason, %message, "sync request refused");
                self.feed(Input::Refused { peer });
            }
            Response::PinStatus { .. } => {
                debug!(%peer, "pin status answer nobody waits for any more");
            }
            Response::IpfsNode { addrs } => {
                if let Some(peering) = &self.peering
                    && !addrs.is_empty()
                    && peering.found.try_send((peer, addrs)).is_err()
                {
                    debug!(%peer, "IPFS peering busy; the peer's node is dialed on its next connect");
                }
            }
        }
    }

    /// Whether a peer that identified itself with `protocols` is a member of this cluster
    /// (see the `membership` module). A peer of another cluster is logged once, cut off and forgotten;
    /// one that speaks no sync protocol of this release stays connected but is not waited for.
    fn is_member(&mut self, peer_id: PeerId, protocols: &[StreamProtocol]) -> bool {
        let verdict = self.membership.identified(peer_id, protocols);
        for reply in self.pending_joins.remove(&peer_id).unwrap_or_default() {
            let _ = reply.send(match verdict {
                Verdict::Foreign { .. } => Err(format!("{peer_id} belongs to another cluster")),
                _ => Ok(peer_id),
            });
        }
        match verdict {
            Verdict::Member => {
                self.feed(Input::Member {
                    peer: peer_id,
                    member: true,
                });
                return true;
            }
            Verdict::Foreign { first } => {
                if first {
                    self.flags.foreign_peers.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer_id, "peer belongs to another cluster (same secret, another cluster name); disconnecting and forgetting it");
                }
                self.peers.remove(&peer_id);
                self.feed(Input::Forget(peer_id));
                let behaviour = self.swarm.behaviour_mut();
                behaviour.kad.remove_peer(&peer_id);
                behaviour.gossipsub.blacklist_peer(&peer_id);
                self.replica.forget_peer(peer_id);
                if self.membership.may_cut(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                } // else once it has had our identify
            }
            Verdict::Outsider {
                first: true,
                legacy,
            } => {
                if legacy {
                    warn!(%peer_id, "peer runs an older pinmesh that cannot sync with this one; upgrade it");
                } else {
                    debug!(%peer_id, "peer speaks no pinmesh sync protocol");
                }
            }
            Verdict::Outsider { first: false, .. } => {}
        }
        let member = self.membership.counts(&peer_id);
        self.feed(Input::Member {
            peer: peer_id,
            member,
        });
        false
    }

    /// Stores a peer's addresses (through the replica, the only writer) so a restart can dial
    /// it. At most 16 addresses are kept per peer.
    fn remember(&self, peer_id: PeerId) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let record = PeerRecord {
            addrs: peer.addrs.iter().take(16).cloned().collect(),
            last_seen: crate::replica::now_ms() / 1000,
            removed: false,
        };
        self.replica.remember_peer(peer_id, record);
    }
}
