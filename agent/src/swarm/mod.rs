//! libp2p: the transport, the behaviours and the event loop that owns the `Swarm`.
//!
//! Transport: TCP, then the cluster's pre-shared key (pnet), then noise and yamux. Nothing else:
//! QUIC, websocket or relay would bypass the secret. Behaviours: gossipsub (delta batches and
//! beacons on the cluster topic, every message validated before it is forwarded), Kademlia under
//! a private protocol name in server mode, identify (feeds Kademlia), ping, and the sync
//! request-response protocol.
//!
//! Receives: [`SwarmCommand`]s from the API, [`Output`]s from the replica. Emits: verified
//! batches to the replica; sync answers to peers (read from the store off the event loop).

mod codec;
mod membership;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::{Keypair, ed25519};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, identify, kad, noise, ping, tcp, yamux,
};
use pinmesh_protocol::codec::{self as wire, MAX_BEACON};
use pinmesh_protocol::message::MAX_STATUS_CIDS;
use pinmesh_protocol::{
    ActorId, AppliedVector, Cid, DeltaBatch, Gossip, PinStatusEntry, RangeSet, Request, Response,
    Summary,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::codec::{SyncCodec, cluster_id, sync_protocol};
use self::membership::{Membership, Verdict};
use crate::api::status::StatusLine;
use crate::fatal::Fatal;
use crate::ipfs::peering::{self, Peering};
use crate::replica::{Output, ReplicaHandle};
use crate::store::{PeerRecord, ServeError, Snapshots, Store, StoreError};
use pinmesh_protocol::snapshot::Progress;

/// Commands queued to the swarm from the API. Small: each carries a reply and callers await it.
pub const COMMAND_CAPACITY: usize = 64;
/// Largest GetDeltas answer we assemble; well under the response limit.
const DELTAS_ANSWER_BYTES: usize = 4 << 20;
/// A repair request without an answer is retried after this.
const REPAIR_PATIENCE: Duration = Duration::from_secs(5);
/// Behind by more deltas than this (or empty), a peer catches up by snapshot, not deltas.
const SNAPSHOT_THRESHOLD: u64 = 10_000;
/// Entries and bytes per snapshot chunk.
const SNAPSHOT_CHUNK_ENTRIES: u32 = 20_000;
const SNAPSHOT_CHUNK_BYTES: usize = 2 << 20;
/// Sync answers read from the store at once; more are refused as busy. Each may hold a few MiB.
const MAX_SERVING: usize = 8;
/// A snapshot fetch with no chunk for this long is abandoned.
const SNAPSHOT_STALL: Duration = Duration::from_secs(60);
/// A peer whose snapshot this agent refused (it did not match its own digest) is not asked for
/// another for this long: its store is likely damaged, and each try moves the whole pinset.
const SNAPSHOT_REFUSED_BACKOFF: Duration = Duration::from_secs(600);
/// How the staging of a snapshot says its entries do not add up to its head.
const MISMATCH: &str = "does not match its head";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
}

impl Behaviour {
    /// The gossipsub behaviour (tests use it to speak to agents as a peer would).
    pub fn gossipsub_mut(&mut self) -> &mut gossipsub::Behaviour {
        &mut self.gossipsub
    }
}

/// Builds the swarm for `keypair` in the network of `secret`, speaking the sync and Kademlia
/// protocols of `cluster`; sync answers received are counted in `flags`.
pub fn build(
    keypair: Keypair,
    secret: [u8; 32],
    cluster: &str,
    flags: &Flags,
) -> anyhow::Result<Swarm<Behaviour>> {
    let sync_name = sync_protocol(cluster);
    let kad_name = codec::kad_protocol(cluster);
    let codec = SyncCodec::counting(flags.sync_bytes_in.clone());
    let psk = PreSharedKey::new(secret);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    // The secret first: a peer without it never reaches multistream-select.
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)),
            )
        })?
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                // The default message id (source + sequence number): an unchanged beacon must
                // not be dropped as a duplicate of the previous one.
                .max_transmit_size(wire::MAX_DELTA_BATCH + (64 << 10))
                .heartbeat_interval(Duration::from_millis(500))
                // Publishing floods every subscribed peer, so the mesh only adds redundancy; each
                // extra copy costs a signature check. A mesh of 4 instead of 6 cut single-pin
                // convergence in a 10-agent cluster on 2 cores from 5.5 to 4.7 ms (p50).
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(8)
                .mesh_outbound_min(2)
                .build()?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(kad_name);
            kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            // Server mode: without autonat an address is never confirmed, and a client-mode
            // DHT of private peers would answer nobody.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new(
                "/pinmesh/id/1.0.0".into(),
                key.public(),
            ));
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(sync_name, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            );
            Ok(Behaviour {
                gossipsub,
                kad,
                identify,
                ping: ping::Behaviour::new(ping::Config::new()),
                sync,
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// The gossip topic of a cluster.
pub fn topic(cluster: &str) -> IdentTopic {
    IdentTopic::new(format!("pinmesh/{cluster}/v1"))
}

/// What the API can ask the swarm.
#[derive(Debug)]
pub enum SwarmCommand {
    /// Dial `addr` (ending in `/p2p/<id>`); resolves when connected or failed.
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    Info {
        reply: oneshot::Sender<SwarmInfo>,
    },
    /// Ask every connected peer for a fresh status (for `debug converge`).
    Refresh,
    /// Ask `peer` where `cids` stand on its IPFS node.
    PinStatus {
        peer: PeerId,
        cids: Vec<Cid>,
        reply: oneshot::Sender<Result<Vec<PinStatusEntry>, String>>,
    },
}

/// A snapshot of the swarm for `id`, `peers` and `debug`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInfo {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub peers: Vec<PeerView>,
    pub rejected_messages: u64,
    /// Peers of another cluster (same secret, another name) refused since start.
    #[serde(default)]
    pub foreign_peers: u64,
}

/// What this agent knows of one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub connected: bool,
    pub addrs: Vec<String>,
    /// Milliseconds since its last beacon or status answer.
    pub last_heard_ms: Option<u64>,
    pub summary: Option<Summary>,
}

#[derive(Default)]
struct PeerState {
    connections: usize,
    addrs: HashSet<Multiaddr>,
    heard: Option<Instant>,
    summary: Option<Summary>,
}

/// Shared flags the API reads.
#[derive(Debug, Default)]
pub struct Flags {
    /// Caught up with the peers asked at start (or alone).
    pub synced: AtomicBool,
    pub rejected: AtomicU64,
    /// Bytes of sync answers received (deltas, snapshot chunks, status), before decoding.
    pub sync_bytes_in: Arc<AtomicU64>,
    /// Bytes of gossip messages received.
    pub gossip_bytes_in: AtomicU64,
    /// Peers found to belong to another cluster (sharing the secret) and cut off.
    pub foreign_peers: AtomicU64,
}

/// A sync answer read from the store off the event loop.
struct Served {
    channel: request_response::ResponseChannel<Response>,
    response: Response,
}

/// A snapshot this agent is fetching.
struct Fetch {
    peer: PeerId,
    last_progress: Instant,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    cluster: String,
    trusted_writers: HashSet<PeerId>,
    topic: IdentTopic,
    replica: ReplicaHandle,
    store: Store,
    flags: Arc<Flags>,
    outputs: mpsc::Receiver<Output>,
    commands: mpsc::Receiver<SwarmCommand>,
    served_tx: mpsc::Sender<Served>,
    served_rx: mpsc::Receiver<Served>,
    /// Answers of the replica about snapshot chunks, relayed by small tasks.
    progress_tx: mpsc::Sender<(PeerId, Result<Progress, String>)>,
    progress_rx: mpsc::Receiver<(PeerId, Result<Progress, String>)>,
    snapshots: Arc<Snapshots>,
    serving: Arc<tokio::sync::Semaphore>,
    fetch: Option<Fetch>,
    /// Which peer is which origin's author (from batches it published, signature checked):
    /// the origin itself holds all its deltas, so repairs go there first.
    origin_peers: HashMap<ActorId, PeerId>,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    beacon_interval: Duration,
    repair_delay: Duration,
    peers: HashMap<PeerId, PeerState>,
    pending_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<PeerId, String>>>>,
    /// (due, peer, origin, counters wanted).
    repairs: Vec<(Instant, PeerId, ActorId, RangeSet)>,
    /// Origin -> when we last asked for it.
    in_flight: HashMap<ActorId, Instant>,
    /// The union of the applied vectors peers reported at start; synced once we hold it and
    /// every connected peer has answered.
    sync_target: Option<AppliedVector>,
    /// With `cluster.trusted_writers` set, what untrusted members reported: a target only
    /// while no trusted writer has answered (a member could report counters nobody trusted
    /// wrote).
    untrusted_target: Option<AppliedVector>,
    /// Synced was given up for a `join`: if the joined peer leaves (or turns out not to be a
    /// member) before anyone answered, the agent is synced as it was.
    rejoining: bool,
    /// Peers that answered a Status request.
    answered: HashSet<PeerId>,
    /// Which peers are members of this cluster, of another one, or of none.
    membership: Membership,
    /// Origins whose author is not a trusted writer (learned from their signed batches): their
    /// deltas are never pulled, and `synced` does not wait for them.
    untrusted_origins: HashSet<ActorId>,
    /// Peers whose snapshot was refused, until when they are not asked again.
    snapshot_refused: HashMap<PeerId, Instant>,
    /// Stops the agent when serving finds the store damaged.
    fatal: Fatal,
    flush_ticks: u64,
    ipfs: bool,
    peering: Option<Peering>,
    /// `PinStatus` requests made for the API, by request id.
    pending_status: HashMap<OutboundRequestId, StatusReply>,
}

type StatusReply = oneshot::Sender<Result<Vec<PinStatusEntry>, String>>;

/// Everything the event loop needs besides the swarm.
pub struct Wiring {
    pub cluster: String,
    /// Empty: every member may write.
    pub trusted_writers: HashSet<PeerId>,
    pub replica: ReplicaHandle,
    pub store: Store,
    pub flags: Arc<Flags>,
    pub outputs: mpsc::Receiver<Output>,
    pub commands: mpsc::Receiver<SwarmCommand>,
    pub listen_tx: watch::Sender<Vec<Multiaddr>>,
    pub beacon_interval: Duration,
    pub repair_delay: Duration,
    /// This agent drives an IPFS node, so it can answer `PinStatus`.
    pub ipfs: bool,
    /// Where this agent's IPFS node's addresses come from and where peers' go.
    pub peering: Option<Peering>,
    /// Stops the agent (a damaged store found while serving a snapshot).
    pub fatal: Fatal,
}

impl EventLoop {
    pub fn new(mut swarm: Swarm<Behaviour>, wiring: Wiring) -> anyhow::Result<Self> {
        let topic = topic(&wiring.cluster);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        // Capacity: sync answers in progress; each holds at most one response.
        let (served_tx, served_rx) = mpsc::channel(64);
        // Capacity: one snapshot fetch at a time; each chunk yields one answer.
        let (progress_tx, progress_rx) = mpsc::channel(4);
        Ok(EventLoop {
            cluster: wiring.cluster.clone(),
            trusted_writers: wiring.trusted_writers,
            swarm,
            topic,
            replica: wiring.replica,
            store: wiring.store,
            flags: wiring.flags,
            outputs: wiring.outputs,
            commands: wiring.commands,
            served_tx,
            served_rx,
            progress_tx,
            progress_rx,
            snapshots: Arc::new(Snapshots::default()),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_SERVING)),
            fetch: None,
            origin_peers: HashMap::new(),
            listen_tx: wiring.listen_tx,
            beacon_interval: wiring.beacon_interval,
            repair_delay: wiring.repair_delay,
            peers: HashMap::new(),
            pending_dials: HashMap::new(),
            repairs: Vec::new(),
            in_flight: HashMap::new(),
            sync_target: None,
            answered: HashSet::new(),
            untrusted_target: None,
            rejoining: false,
            membership: Membership::new(sync_protocol(&wiring.cluster)),
            untrusted_origins: HashSet::new(),
            snapshot_refused: HashMap::new(),
            fatal: wiring.fatal,
            flush_ticks: 0,
            ipfs: wiring.ipfs,
            peering: wiring.peering,
            pending_status: HashMap::new(),
        })
    }

    /// Runs until `cancel`. Dropping the future drops the swarm and its connections.
    pub async fn run(mut self, dial: Vec<Multiaddr>, cancel: CancellationToken) {
        if dial.is_empty() {
            // Alone: nothing to catch up with.
            self.flags.synced.store(true, Ordering::Relaxed);
        }
        for addr in dial {
            if let Err(err) = self.swarm.dial(addr.clone()) {
                warn!(%addr, error = %err, "cannot dial bootstrap peer");
            }
        }
        let mut beacon = tokio::time::interval(self.beacon_interval);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut reask = tokio::time::interval(peering::REASK);
        reask.tick().await; // connecting asks already
        let mut state = self.replica.watch();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(output) = self.outputs.recv() => self.on_output(output),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some((peer, progress)) = self.progress_rx.recv() => self.on_snapshot_progress(peer, progress),
                Some(served) = self.served_rx.recv() => {
                    if self.swarm.behaviour_mut().sync.send_response(served.channel, served.response).is_err() {
                        debug!("sync answer dropped: the requester went away");
                    }
                }
                _ = beacon.tick() => self.send_beacon(),
                // A node that came up late, a link between nodes that was dropped.
                _ = reask.tick(), if self.peering.is_some() => self.ask_all(Request::IpfsNode),
                _ = tick.tick() => {
                    self.run_repairs();
                    self.snapshots.sweep();
                    self.flush_ticks += 1;
                    if self.flush_ticks.is_multiple_of(4) {
                        self.replica.flush(); // remote-only commits durable within ~200 ms
                    }
                }
                Ok(()) = state.changed() => self.check_synced(),
            }
        }
        info!("swarm stopped");
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
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
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let peer = self.peers.entry(peer_id).or_default();
                peer.connections = num_established.get() as usize;
                if endpoint.is_dialer() {
                    peer.addrs.insert(endpoint.get_remote_address().clone());
                }
                let joined = self.pending_dials.remove(&peer_id).unwrap_or_default();
                if !joined.is_empty() && self.flags.synced.swap(false, Ordering::Relaxed) {
                    // Joined a peer at runtime (maybe a whole other part of the cluster): synced
                    // again only once it answered. A join that never connects changes nothing.
                    info!(%peer_id, "joined a peer: catching up before reporting synced");
                    self.sync_target = None;
                    self.untrusted_target = None;
                    self.rejoining = true;
                    self.answered.clear();
                }
                for reply in joined {
                    let _ = reply.send(Ok(peer_id));
                }
                if num_established.get() == 1 {
                    debug!(%peer_id, "connected");
                    let sync = &mut self.swarm.behaviour_mut().sync;
                    sync.send_request(&peer_id, Request::Status);
                    if self.peering.is_some() {
                        sync.send_request(&peer_id, Request::IpfsNode);
                    }
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
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
                    if !self.membership.disconnected(&peer_id) {
                        // Never shown to be a member: nothing to list or to remember.
                        self.peers.remove(&peer_id);
                    }
                    self.check_synced();
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                warn!(peer = ?peer_id, error = %error, "connection failed");
                if let Some(peer_id) = peer_id {
                    for reply in self.pending_dials.remove(&peer_id).unwrap_or_default() {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
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
                let verdict = self.on_gossip(message.source, &message.data);
                if !matches!(verdict, MessageAcceptance::Accept) {
                    self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            // A peer of another cluster is cut off once it has had our identify.
            BehaviourEvent::Identify(identify::Event::Sent { peer_id, .. })
                if self.membership.identify_sent(peer_id) =>
            {
                let _ = self.swarm.disconnect_peer_id(peer_id);
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if !self.is_member(peer_id, &info.protocols) {
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
                                Response::Refused { reason } => Err(reason),
                                _ => Err("answered something else".into()),
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
                    self.check_synced();
                }
                if let Some(reply) = self.pending_status.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
                if self.fetch.as_ref().is_some_and(|f| f.peer == peer) {
                    warn!(%peer, error = %error, "snapshot fetch failed; will retry");
                    self.fetch = None;
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
                if !self.may_write(source) {
                    if self.mark_untrusted(batch.origin) {
                        warn!(%source, origin = %batch.origin, "batches by an untrusted writer are rejected");
                    }
                    return MessageAcceptance::Reject;
                }
                // Authenticated: this peer is the origin's author, and holds all its deltas.
                self.origin_peers.insert(batch.origin, source);
                if !self.replica.remote(source, vec![batch]) {
                    warn!("replica queue full: batch dropped, beacons will repair");
                }
                MessageAcceptance::Accept
            }
            Ok(Gossip::Beacon(summary)) => {
                self.on_summary(source, summary, false);
                MessageAcceptance::Accept
            }
        }
    }

    /// A peer's beacon or status answer: remember it, pull what it has that we lack.
    fn on_summary(&mut self, peer_id: PeerId, summary: Summary, is_status: bool) {
        let mine = self.replica.state();
        let differs = summary.applied_digest != mine.summary.applied_digest;

        match &summary.applied {
            Some(theirs) => {
                if is_status && !self.flags.synced.load(Ordering::Relaxed) {
                    // Origins found untrusted are left out when the target is checked.
                    let target = if self.trusted_writers.is_empty()
                        || self.trusted_writers.contains(&peer_id)
                    {
                        &mut self.sync_target
                    } else {
                        &mut self.untrusted_target
                    };
                    target.get_or_insert_with(AppliedVector::new).union(theirs);
                    self.answered.insert(peer_id);
                }
                let own = mine.summary.actor;
                let missing: Vec<_> = mine
                    .head
                    .applied
                    .missing_from(theirs)
                    .into_iter()
                    .filter(|(origin, _, _)| {
                        *origin != own && !self.untrusted_origins.contains(origin)
                    })
                    .collect();
                let behind = missing.iter().fold(0u64, |n, (_, s, e)| {
                    n.saturating_add((e - s).saturating_add(1))
                });
                // A snapshot carries others' writes without their signatures: only from a peer
                // trusted to write. From any other, signed deltas (whose authors are checked).
                let wants_snapshot = (mine.head.applied.is_empty() && summary.pins > 0)
                    || behind > SNAPSHOT_THRESHOLD;
                if wants_snapshot && self.may_write(peer_id) && !self.refused_lately(peer_id) {
                    // Deltas for the same gap would be redundant; the tail follows the snapshot.
                    self.start_snapshot(peer_id);
                } else {
                    for (origin, start, end) in missing {
                        let mut wanted = RangeSet::new();
                        wanted.insert_range(start, end);
                        self.schedule_repair(Instant::now(), peer_id, origin, wanted);
                    }
                }
            }
            None if differs => {
                self.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer_id, Request::Status);
            }
            None => {}
        }
        let peer = self.peers.entry(peer_id).or_default();
        peer.heard = Some(Instant::now());
        peer.summary = Some(summary);
        self.check_synced();
    }

    fn check_synced(&mut self) {
        if self.flags.synced.load(Ordering::Relaxed) {
            return;
        }
        // One peer that is itself behind must not make us synced: wait for every connected
        // peer's answer (each is asked on connecting and again on every beacon).
        let members: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| self.membership.counts(p))
            .copied()
            .collect();
        if self.rejoining
            && members.is_empty()
            && self.sync_target.is_none()
            && self.untrusted_target.is_none()
        {
            info!("the joined peer left without answering; synced as before the join");
            self.rejoining = false;
            self.flags.synced.store(true, Ordering::Relaxed);
            return;
        }
        let all_answered = members.iter().all(|p| self.answered.contains(p));
        // Every origin of the target held, except those of untrusted writers (never applied).
        let caught_up = |target: &AppliedVector| {
            self.replica
                .state()
                .head
                .applied
                .missing_from(target)
                .iter()
                .all(|(origin, _, _)| self.untrusted_origins.contains(origin))
        };
        let target = self.sync_target.as_ref().or(self.untrusted_target.as_ref());
        if let Some(target) = target
            && all_answered
            && caught_up(target)
        {
            info!("synced with the cluster");
            self.flags.synced.store(true, Ordering::Relaxed);
            self.rejoining = false;
            self.answered.clear();
            self.send_beacon();
        }
    }

    fn on_output(&mut self, output: Output) {
        match output {
            Output::Publish(batch) => {
                // If it cannot go out now, it is stored and logged: peers pull it after the
                // next beacon.
                self.publish(wire::encode_gossip(&Gossip::DeltaBatch(batch)), "batch");
            }
            Output::Repair {
                peer,
                origin,
                ranges,
            } => {
                let mut wanted = RangeSet::new();
                for (s, e) in ranges {
                    wanted.insert_range(s, e);
                }
                self.schedule_repair(Instant::now() + self.repair_delay, peer, origin, wanted);
            }
        }
    }

    /// Records that `origin`'s author is not a trusted writer (its signed batch showed it):
    /// nothing more is pulled for it, and `synced` stops waiting for it. True the first time.
    fn mark_untrusted(&mut self, origin: ActorId) -> bool {
        self.in_flight.remove(&origin);
        self.repairs.retain(|(_, _, o, _)| *o != origin);
        let new = self.untrusted_origins.insert(origin);
        if new {
            self.check_synced();
        }
        new
    }

    /// Adds a repair, merged into the one already pending for `origin` if any.
    fn schedule_repair(&mut self, due: Instant, peer: PeerId, origin: ActorId, wanted: RangeSet) {
        if self.untrusted_origins.contains(&origin) {
            return;
        }
        if let Some(existing) = self.repairs.iter_mut().find(|(_, _, o, _)| *o == origin) {
            existing.0 = existing.0.min(due);
            existing.3.union(&wanted);
            return;
        }
        self.repairs.push((due, peer, origin, wanted));
    }

    /// Sends the repairs that are due and still needed.
    fn run_repairs(&mut self) {
        let now = Instant::now();
        self.in_flight
            .retain(|_, at| now.duration_since(*at) < REPAIR_PATIENCE);
        match &self.fetch {
            Some(f) if f.last_progress.elapsed() < SNAPSHOT_STALL => {
                return; // the snapshot brings it all; what it lacks is asked for after
            }
            Some(f) => {
                warn!(peer = %f.peer, "snapshot fetch stalled; back to deltas");
                self.fetch = None;
            }
            None => {}
        }
        if self.repairs.iter().all(|(due, ..)| *due > now) {
            return;
        }
        let applied = self.replica.state().head.applied.clone();
        let (due, later): (Vec<_>, Vec<_>) =
            self.repairs.drain(..).partition(|(at, ..)| *at <= now);
        self.repairs = later;
        for (_, peer, origin, wanted) in due {
            let empty = RangeSet::new();
            let missing = applied
                .actor(origin)
                .unwrap_or(&empty)
                .missing_from(&wanted);
            let Some(&(from, _)) = missing.first() else {
                continue;
            };
            let to = missing.last().map_or(from, |&(_, e)| e);
            // The origin itself holds all its deltas; ask it when connected.
            let peer = self
                .origin_peers
                .get(&origin)
                .copied()
                .filter(|p| self.swarm.is_connected(p))
                .unwrap_or(peer);
            if self
                .in_flight
                .get(&origin)
                .is_some_and(|at| now.duration_since(*at) < REPAIR_PATIENCE)
            {
                // Asked recently; check again once the answer had time to arrive.
                self.schedule_repair(now + REPAIR_PATIENCE, peer, origin, wanted);
                continue;
            }
            self.in_flight.insert(origin, now);
            debug!(%peer, %origin, from, to, "requesting deltas");
            self.swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, Request::GetDeltas { origin, from, to });
        }
    }

    fn on_response(&mut self, peer: PeerId, response: Response) {
        match response {
            Response::Status(summary) => self.on_summary(peer, summary, true),
            Response::Deltas { batches } => {
                let mut valid = Vec::with_capacity(batches.len());
                let mut origin = None;
                for batch in batches {
                    let trusted = author_peer(&batch).is_some_and(|a| self.may_write(a));
                    match batch.verify(&self.cluster) {
                        Ok(()) if !trusted => {
                            // Signed by its author, whose key the origin derives from: that
                            // origin is never pulled again.
                            self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                            if self.mark_untrusted(batch.origin) {
                                warn!(%peer, origin = %batch.origin, "repair answer holds batches by an untrusted writer; not asking for that origin again");
                            }
                        }
                        Ok(()) => {
                            origin = Some(batch.origin);
                            valid.push(batch);
                        }
                        Err(err) => {
                            self.flags.rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, error = %err, "invalid batch in a repair answer dropped");
                        }
                    }
                }
                if let Some(origin) = origin {
                    self.in_flight.remove(&origin);
                    let last = valid.iter().filter_map(DeltaBatch::last).max().unwrap_or(0);
                    // The answer may stop short (size cap): ask for the rest at once if the peer
                    // holds more.
                    let theirs = self
                        .peers
                        .get(&peer)
                        .and_then(|p| p.summary.as_ref())
                        .and_then(|s| s.applied.as_ref())
                        .map_or(0, |a| a.max(origin));
                    if theirs > last {
                        let mut wanted = RangeSet::new();
                        wanted.insert_range(last + 1, theirs);
                        self.schedule_repair(Instant::now(), peer, origin, wanted);
                    }
                }
                if !valid.is_empty() && !self.replica.remote(peer, valid) {
                    warn!("replica queue full: repair answer dropped");
                }
            }
            Response::Truncated {
                origin,
                first_available,
            } => {
                info!(%peer, %origin, first_available, "peer's log no longer holds the deltas we lack; fetching a snapshot");
                self.in_flight.remove(&origin);
                self.start_snapshot(peer);
            }
            Response::SnapshotChunk(chunk) => {
                let Some(fetch) = self.fetch.as_mut().filter(|f| f.peer == peer) else {
                    debug!(%peer, "unexpected snapshot chunk dropped");
                    return;
                };
                fetch.last_progress = Instant::now();
                let replica = self.replica.clone();
                let progress = self.progress_tx.clone();
                tokio::spawn(async move {
                    let outcome = replica.snapshot(chunk).await;
                    let _ = progress.send((peer, outcome)).await;
                });
            }
            Response::Refused { reason } => {
                debug!(%peer, %reason, "sync request refused");
                if self.fetch.as_ref().is_some_and(|f| f.peer == peer) {
                    // Try again later (from whichever peer shows us behind next).
                    self.fetch = None;
                }
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

    /// Answers a sync request; store reads run off the event loop.
    fn serve(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let permit = match &request {
            Request::Status | Request::IpfsNode => None,
            _ => match self.serving.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let busy = Response::Refused {
                        reason: "busy serving other peers; try later".into(),
                    };
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, busy);
                    return;
                }
            },
        };
        match request {
            Request::Status => {
                let summary = self.summary(true);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Response::Status(summary));
            }
            Request::GetDeltas { origin, from, to } => {
                let store = self.store.clone();
                let served = self.served_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let response = match store.batches(origin.0, from, to, DELTAS_ANSWER_BYTES) {
                        // The log cannot serve `from` (pruned, or we hold it from a snapshot).
                        Ok((batches, low)) if batches.first().is_none_or(|b| b.first > from) => {
                            Response::Truncated {
                                origin,
                                first_available: low.unwrap_or(0),
                            }
                        }
                        Ok((batches, _)) => Response::Deltas { batches },
                        Err(err) => {
                            warn!(%peer, error = %err, "cannot read the delta log");
                            Response::Refused {
                                reason: "storage error".into(),
                            }
                        }
                    };
                    let _ = served.blocking_send(Served { channel, response });
                });
            }
            Request::Snapshot {
                snapshot_id,
                after,
                limit,
            } => {
                let store = self.store.clone();
                let snapshots = self.snapshots.clone();
                let served = self.served_tx.clone();
                let fatal = self.fatal.clone();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let limit = limit.clamp(1, SNAPSHOT_CHUNK_ENTRIES) as usize;
                    let chunk = store.snapshot_chunk(
                        &snapshots,
                        &peer.to_string(),
                        snapshot_id,
                        after.as_deref().map(|a| a.as_slice()),
                        limit,
                        SNAPSHOT_CHUNK_BYTES,
                    );
                    let response = match chunk {
                        Ok(chunk) => Response::SnapshotChunk(chunk),
                        Err(err @ (ServeError::Busy | ServeError::Unknown(_))) => {
                            Response::Refused {
                                reason: err.to_string(),
                            }
                        }
                        Err(ServeError::Store(err @ StoreError::Damaged(_))) => {
                            fatal.damaged(&err.to_string());
                            Response::Refused {
                                reason: "storage error".into(),
                            }
                        }
                        Err(ServeError::Store(err)) => {
                            warn!(%peer, error = %err, "cannot read a snapshot");
                            Response::Refused {
                                reason: "storage error".into(),
                            }
                        }
                    };
                    let _ = served.blocking_send(Served { channel, response });
                });
            }
            Request::IpfsNode => {
                let addrs = match &self.peering {
                    Some(peering) => peering.own.borrow().clone(),
                    None => Vec::new(),
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, Response::IpfsNode { addrs });
            }
            Request::PinStatus { cids } => {
                let refuse = if !self.ipfs {
                    Some(crate::api::status::NO_IPFS.to_string())
                } else if cids.len() > MAX_STATUS_CIDS {
                    Some(format!("at most {MAX_STATUS_CIDS} CIDs per request"))
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    let refused = Response::Refused { reason };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, refused);
                    return;
                }
                let store = self.store.clone();
                let served = self.served_tx.clone();
                let me = self.swarm.local_peer_id().to_string();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let response = match crate::api::status::lines_for(&store, &me, &cids) {
                        Ok(lines) => Response::PinStatus {
                            entries: lines.into_iter().map(StatusLine::into_entry).collect(),
                        },
                        Err(err) => {
                            warn!(%peer, error = %err, "cannot read pin statuses");
                            Response::Refused {
                                reason: "storage error".into(),
                            }
                        }
                    };
                    let _ = served.blocking_send(Served { channel, response });
                });
            }
        }
    }

    /// Whether `peer` may write the pinset (always, when no list is configured).
    fn may_write(&self, peer: PeerId) -> bool {
        self.trusted_writers.is_empty() || self.trusted_writers.contains(&peer)
    }

    /// Whether a snapshot of `peer`'s was refused within [`SNAPSHOT_REFUSED_BACKOFF`].
    fn refused_lately(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        self.snapshot_refused.retain(|_, until| *until > now);
        self.snapshot_refused.contains_key(&peer)
    }

    /// Starts fetching a snapshot from `peer`, unless one is under way.
    fn start_snapshot(&mut self, peer: PeerId) {
        if !self.may_write(peer) {
            // A snapshot carries others' writes without their signatures: take it only from
            // a peer trusted to write.
            debug!(%peer, "not taking a snapshot from an untrusted peer");
            return;
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|f| f.last_progress.elapsed() < SNAPSHOT_STALL)
        {
            return;
        }
        if self.refused_lately(peer) {
            debug!(%peer, "not asking again for a snapshot refused lately");
            return;
        }
        info!(%peer, "fetching a snapshot");
        self.fetch = Some(Fetch {
            peer,
            last_progress: Instant::now(),
        });
        self.swarm.behaviour_mut().sync.send_request(
            &peer,
            Request::Snapshot {
                snapshot_id: None,
                after: None,
                limit: SNAPSHOT_CHUNK_ENTRIES,
            },
        );
    }

    fn on_snapshot_progress(&mut self, peer: PeerId, progress: Result<Progress, String>) {
        if self.fetch.as_ref().is_none_or(|f| f.peer != peer) {
            return;
        }
        match progress {
            Ok(Progress::Continue { snapshot_id, after }) => {
                self.swarm.behaviour_mut().sync.send_request(
                    &peer,
                    Request::Snapshot {
                        snapshot_id: Some(snapshot_id),
                        after: Some(after),
                        limit: SNAPSHOT_CHUNK_ENTRIES,
                    },
                );
            }
            Ok(Progress::Complete) => {
                info!(%peer, pins = self.replica.state().summary.pins, "snapshot joined");
                self.fetch = None;
                // The tail: whatever the peer applied since its snapshot began.
                self.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, Request::Status);
                self.check_synced();
            }
            Err(err) if err.contains(MISMATCH) => {
                // Its entries do not add up to its own head: its store is likely damaged.
                warn!(%peer, error = %err, "snapshot refused; that peer is asked for deltas only for 10 minutes");
                self.snapshot_refused
                    .insert(peer, Instant::now() + SNAPSHOT_REFUSED_BACKOFF);
                self.fetch = None;
            }
            Err(err) => {
                warn!(%peer, error = %err, "snapshot not joined; will retry");
                self.fetch = None;
            }
        }
    }

    fn summary(&self, with_applied: bool) -> Summary {
        let state = self.replica.state();
        let mut summary = state.summary.clone();
        summary.synced = self.flags.synced.load(Ordering::Relaxed);
        if !with_applied {
            summary.applied = None;
        }
        summary
    }

    fn send_beacon(&mut self) {
        if !self.flags.synced.load(Ordering::Relaxed) {
            // Until synced, keep asking: a lost Status answer must not leave us unsynced.
            self.ask_all(Request::Status);
        }
        let mut summary = self.summary(true);
        let mut data = wire::encode_gossip(&Gossip::Beacon(summary.clone()));
        if data.len() > MAX_BEACON {
            // Too many gaps to carry: peers whose digest differs ask with Status.
            summary.applied = None;
            data = wire::encode_gossip(&Gossip::Beacon(summary));
        }
        self.publish(data, "beacon");
    }

    /// Sends `request` to every connected peer.
    fn ask_all(&mut self, request: Request) {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            self.swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, request.clone());
        }
    }

    /// Publishes on the cluster topic; failing to (no peer subscribed yet, queues full) is
    /// not an error: anti-entropy covers it.
    fn publish(&mut self, data: Vec<u8>, what: &str) {
        let topic = self.topic.clone();
        if let Err(err) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            debug!(error = %err, what, "not published now");
        }
    }

    fn on_command(&mut self, command: SwarmCommand) {
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
                    let _ = reply.send(Ok(peer_id));
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
            SwarmCommand::Refresh => self.ask_all(Request::Status),
            SwarmCommand::PinStatus { peer, cids, reply } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err("not connected".into()));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, Request::PinStatus { cids });
                self.pending_status.insert(id, reply);
            }
            SwarmCommand::Info { reply } => {
                let now = Instant::now();
                let peers = self
                    .peers
                    .iter()
                    .map(|(id, p)| PeerView {
                        peer_id: id.to_string(),
                        connected: p.connections > 0,
                        addrs: p.addrs.iter().map(ToString::to_string).collect(),
                        last_heard_ms: p.heard.map(|h| now.duration_since(h).as_millis() as u64),
                        summary: p.summary.clone(),
                    })
                    .collect();
                let _ = reply.send(SwarmInfo {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen: self.swarm.listeners().map(ToString::to_string).collect(),
                    peers,
                    rejected_messages: self.flags.rejected.load(Ordering::Relaxed),
                    foreign_peers: self.flags.foreign_peers.load(Ordering::Relaxed),
                });
            }
        }
    }

    /// Whether a peer that identified itself with `protocols` is a member of this cluster
    /// (see the `membership` module). A peer of another cluster is logged once, cut off and forgotten;
    /// one that speaks no sync protocol of this release stays connected but is not waited for.
    fn is_member(&mut self, peer_id: PeerId, protocols: &[StreamProtocol]) -> bool {
        match self.membership.identified(peer_id, protocols) {
            Verdict::Member => return true,
            Verdict::Foreign { first } => {
                if first {
                    self.flags.foreign_peers.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer_id, "peer belongs to another cluster (same secret, another cluster name); disconnecting and forgetting it");
                }
                self.peers.remove(&peer_id);
                self.answered.remove(&peer_id);
                let behaviour = self.swarm.behaviour_mut();
                behaviour.kad.remove_peer(&peer_id);
                behaviour.gossipsub.blacklist_peer(&peer_id);
                self.replica.forget_peer(peer_id.to_string());
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
        self.check_synced();
        false
    }

    /// Stores a peer's addresses (through the replica, the only writer) so a restart can dial
    /// it. At most 16 addresses are kept per peer.
    fn remember(&self, peer_id: PeerId) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let record = PeerRecord {
            addrs: peer
                .addrs
                .iter()
                .take(16)
                .map(ToString::to_string)
                .collect(),
            last_seen: crate::replica::now_ms() / 1000,
        };
        self.replica.remember_peer(peer_id.to_string(), record);
    }
}

/// The peer id of a batch's author key.
fn author_peer(batch: &DeltaBatch) -> Option<PeerId> {
    let key = ed25519::PublicKey::try_from_bytes(&batch.author.0).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}
