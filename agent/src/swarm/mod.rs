//! The swarm's event loop: owns the libp2p `Swarm` ([`behaviour`]), validates gossip, answers
//! peers ([`serve`]) and carries out catch-up.
//!
//! Catch-up, what to ask of whom and when this agent is synced, is decided by the pure state
//! machine [`pinmesh_protocol::catchup`], the same one the simulator runs. This loop only turns
//! what happens on the network into its inputs and its outputs into I/O: requests, beacons,
//! dials, Kademlia bootstraps, the `synced` watch channel, and one timer it asks for.
//!
//! Peers removed with `peers rm` are on the behaviour's block list: no connection to or from
//! them, their metrics and beacons relayed by others are ignored, and they are left out of
//! Kademlia and of every view; the API records the removal in the store, and the node hands
//! the recorded ones back at start ([`Wiring::removed`]).
//!
//! Receives: [`SwarmCommand`]s from the API, [`Output`]s from the replica. Emits: verified
//! batches and snapshot chunks to the replica; sync answers to peers.

mod behaviour;
mod codec;
mod commands;
mod events;
mod followers;
mod handle;
mod membership;
mod metrics;
mod serve;
mod snapshots;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::IdentTopic;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{Multiaddr, PeerId, Swarm};
use pinmesh_protocol::catchup::{self, CatchUp, Event, Input, Local, Staged};
use pinmesh_protocol::codec::{self as wire, MAX_BEACON};
use pinmesh_protocol::{Cid, Gossip, PinStatusEntry, Request, Response, Summary};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::behaviour::{Behaviour, BehaviourEvent, build, topic};
pub use self::codec::{SyncCodec, cluster_id, sync_protocols};
use self::followers::Followers;
pub use self::followers::{Announcement, FollowerView, coverage, topic as followers_topic};
pub use self::handle::{SwarmError, SwarmHandle};
use self::membership::Membership;
use self::metrics::Metrics;
pub use self::metrics::{Allocatable, PeerMetric, Repinning, topic as metrics_topic};
use self::serve::{SNAPSHOT_CHUNK_ENTRIES, Served, Server};
use crate::fatal::Fatal;
use crate::ipfs::peering::{self, Peering};
use crate::replica::{Output, ReplicaHandle};
use crate::store::Store;

/// Snapshot sessions past their time are released this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the API can ask the swarm (through a [`SwarmHandle`]).
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
    /// Refuse (`cut`) or allow again connections with `peers`: a network split, for tests.
    Cut {
        peers: Vec<PeerId>,
        cut: bool,
    },
    /// Publish this agent's metric (and hold it as its own).
    PublishMetric(pinmesh_protocol::metric::Metric),
    /// Publish this follower's announcement.
    Announce(Announcement),
    /// The peers with a live metric, this agent included.
    Live {
        reply: oneshot::Sender<Vec<(PeerId, PeerMetric)>>,
    },
    /// The live peers and those down but not forgotten.
    Allocatable {
        reply: oneshot::Sender<Allocatable>,
    },
    /// Remove `peer`: cut it off and refuse it from now on, drop its metric, forget it.
    Remove {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    /// Ask `peer` where `cids` stand on its IPFS node.
    PinStatus {
        peer: PeerId,
        cids: Vec<Cid>,
        reply: oneshot::Sender<Result<Vec<PinStatusEntry>, SwarmError>>,
    },
}

/// A snapshot of the swarm for `id`, `peers` and `debug`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInfo {
    #[serde(with = "crate::text")]
    pub peer_id: PeerId,
    #[serde(with = "crate::text::lenient_list")]
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<PeerView>,
    /// This agent's own latest metric (none without an IPFS node).
    #[serde(default)]
    pub metric: Option<PeerMetric>,
    pub rejected_messages: u64,
    /// Peers of another cluster (same secret, another name) refused since start.
    #[serde(default)]
    pub foreign_peers: u64,
    /// Peers removed with `peers rm` (left out of `peers`).
    #[serde(
        default,
        with = "crate::text::lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub removed: Vec<PeerId>,
    /// Connections to or from removed peers refused since start.
    #[serde(default)]
    pub refused_removed: u64,
    /// What this agent's keeper last saw (filled by the API; none without an IPFS node, with
    /// repinning off, on an agent that may not write, or before its first look).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repinning: Option<Repinning>,
    /// Followers that announced themselves (a follower holds none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerView>,
}

/// What this agent knows of one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    #[serde(with = "crate::text")]
    pub peer_id: PeerId,
    pub connected: bool,
    #[serde(with = "crate::text::lenient_list")]
    pub addrs: Vec<Multiaddr>,
    /// Milliseconds since its last beacon or status answer.
    pub last_heard_ms: Option<u64>,
    pub summary: Option<Summary>,
    /// Its latest allocation metric, live or expired.
    #[serde(default)]
    pub metric: Option<PeerMetric>,
    /// Its latest announcement, when it announced itself as a follower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follower: Option<FollowerView>,
}

/// What the event loop knows of a peer's connections (catch-up knows what it said).
#[derive(Default)]
struct PeerState {
    connections: usize,
    addrs: HashSet<Multiaddr>,
}

/// Counters the API reads.
#[derive(Debug, Default)]
pub struct Flags {
    pub rejected: AtomicU64,
    /// Bytes of sync answers received (deltas, snapshot chunks, status), before decoding.
    pub sync_bytes_in: Arc<AtomicU64>,
    /// Bytes of gossip messages received.
    pub gossip_bytes_in: AtomicU64,
    /// Peers found to belong to another cluster (sharing the secret) and cut off.
    pub foreign_peers: AtomicU64,
    /// Connections to or from peers removed with `peers rm` refused.
    pub refused_removed: AtomicU64,
}

type StatusReply = oneshot::Sender<Result<Vec<PinStatusEntry>, SwarmError>>;

/// Everything the event loop needs besides the swarm.
pub struct Wiring {
    pub cluster: String,
    /// Empty: every member may write.
    pub trusted_writers: HashSet<PeerId>,
    pub replica: ReplicaHandle,
    pub store: Store,
    pub flags: Arc<Flags>,
    /// Whether this agent is synced, as catch-up decides.
    pub synced: watch::Sender<bool>,
    pub outputs: mpsc::Receiver<Output>,
    pub commands: mpsc::Receiver<SwarmCommand>,
    pub listen_tx: watch::Sender<Vec<Multiaddr>>,
    pub beacon_interval: Duration,
    pub repair_delay: Duration,
    /// This agent drives an IPFS node, so it can answer `PinStatus`.
    pub ipfs: bool,
    /// Which pins it holds (a follower: all, or its share).
    pub role: crate::reconcile::Role,
    /// Where this agent's IPFS node's addresses come from and where peers' go.
    pub peering: Option<Peering>,
    /// Stops the agent (a damaged store found while serving a snapshot).
    pub fatal: Fatal,
    /// A peer whose metric expired this long ago is no longer allocatable.
    pub peer_forget_after: Duration,
    /// Peers removed with `peers rm`, as the store recorded them: refused from the start.
    pub removed: HashSet<PeerId>,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    cluster: String,
    topic: IdentTopic,
    metrics_topic: IdentTopic,
    /// Every peer's latest metric.
    metrics: Metrics,
    /// Where followers announce themselves, and every follower's latest announcement.
    followers_topic: IdentTopic,
    followers: Followers,
    /// Their announcements are ignored: a trusted writer is no follower.
    trusted_writers: HashSet<PeerId>,
    replica: ReplicaHandle,
    flags: Arc<Flags>,
    synced: watch::Sender<bool>,
    outputs: mpsc::Receiver<Output>,
    commands: mpsc::Receiver<SwarmCommand>,
    catchup: CatchUp<PeerId, Multiaddr>,
    /// Catch-up's clock starts here.
    started: Instant,
    /// When catch-up asked to be woken.
    wake: Option<Instant>,
    server: Server,
    served: mpsc::Receiver<Served>,
    /// How staging snapshot chunks in the replica ended, relayed by small tasks.
    staged_tx: mpsc::Sender<(PeerId, Staged)>,
    staged_rx: mpsc::Receiver<(PeerId, Staged)>,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    peers: HashMap<PeerId, PeerState>,
    pending_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<PeerId, String>>>>,
    /// Joins whose peer connected and has not identified itself yet: answered once it shows
    /// whether it is of this cluster, or with an error if it hangs up first.
    pending_joins: HashMap<PeerId, Vec<oneshot::Sender<Result<PeerId, String>>>>,
    /// Which peers are members of this cluster, of another one, or of none.
    membership: Membership,
    peering: Option<Peering>,
    /// `PinStatus` requests made for the API, by request id.
    pending_status: HashMap<OutboundRequestId, StatusReply>,
}

impl EventLoop {
    pub fn new(mut swarm: Swarm<Behaviour>, wiring: Wiring) -> anyhow::Result<Self> {
        let topic = topic(&wiring.cluster);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        let metrics_topic = metrics::topic(&wiring.cluster);
        swarm.behaviour_mut().gossipsub.subscribe(&metrics_topic)?;
        // Members listen to followers; a follower only publishes there.
        let followers_topic = followers::topic(&wiring.cluster);
        if !wiring.role.is_follower() {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&followers_topic)?;
        }
        for peer in &wiring.removed {
            swarm.behaviour_mut().blocked.block_peer(*peer);
        }
        let mut cfg = catchup::Config::agent(wiring.beacon_interval, wiring.repair_delay);
        cfg.snapshot_chunk_entries = SNAPSHOT_CHUNK_ENTRIES;
        let mut metrics = Metrics::new(&wiring.cluster, wiring.peer_forget_after);
        let me = *swarm.local_peer_id();
        match wiring.store.metrics() {
            Ok(stored) => {
                let (kept, dropped) = metrics
                    .restore_all(stored, |peer| *peer != me && !wiring.removed.contains(peer));
                debug!(
                    peers = kept,
                    "peers' metrics restored, down until heard from"
                );
                for peer in dropped {
                    wiring.replica.forget_metric(peer); // forgotten, or never to be read
                }
            }
            Err(err) => warn!(error = %err, "cannot read the stored metrics; starting without"),
        }
        let (server, served) = Server::new(wiring.store, wiring.fatal, wiring.ipfs, wiring.role);
        // Capacity: one snapshot fetch at a time; each chunk yields one answer.
        let (staged_tx, staged_rx) = mpsc::channel(4);
        Ok(EventLoop {
            trusted_writers: wiring.trusted_writers.clone(),
            catchup: CatchUp::new(cfg, wiring.trusted_writers),
            started: Instant::now(),
            wake: None,
            membership: Membership::new(sync_protocols(&wiring.cluster)),
            metrics,
            metrics_topic,
            followers: Followers::new(&wiring.cluster),
            followers_topic,
            cluster: wiring.cluster,
            swarm,
            topic,
            replica: wiring.replica,
            flags: wiring.flags,
            synced: wiring.synced,
            outputs: wiring.outputs,
            commands: wiring.commands,
            server,
            served,
            staged_tx,
            staged_rx,
            listen_tx: wiring.listen_tx,
            peers: HashMap::new(),
            pending_dials: HashMap::new(),
            pending_joins: HashMap::new(),
            peering: wiring.peering,
            pending_status: HashMap::new(),
        })
    }

    /// Runs until `cancel`. Dropping the future drops the swarm and its connections.
    pub async fn run(mut self, dial: Vec<Multiaddr>, cancel: CancellationToken) {
        self.feed(Input::Start { dial });
        let mut reask = tokio::time::interval(peering::REASK);
        reask.tick().await; // connecting asks already
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut state = self.replica.watch();
        loop {
            // Far off when no timer is asked for; the branch is disabled then anyway.
            let wake = self.wake.unwrap_or_else(|| Instant::now() + SWEEP_EVERY);
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(output) = self.outputs.recv() => self.on_output(output),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some((peer, outcome)) = self.staged_rx.recv() => self.feed(Input::Staged { peer, outcome }),
                Some(served) = self.served.recv() => {
                    if self.swarm.behaviour_mut().sync.send_response(served.channel, served.response).is_err() {
                        debug!("sync answer dropped: the requester went away");
                    }
                }
                () = tokio::time::sleep_until(wake), if self.wake.is_some() => {
                    self.wake = None;
                    self.feed(Input::Timer);
                }
                // A node that came up late, a link between nodes that was dropped.
                _ = reask.tick(), if self.peering.is_some() => self.ask_all(Request::IpfsNode),
                _ = sweep.tick() => {
                    self.server.sweep();
                    self.followers.forget_old(Instant::now());
                }
                Ok(()) = state.changed() => self.feed(Input::LocalChanged),
            }
        }
        info!("swarm stopped");
    }

    /// Hands `input` to catch-up and carries out what it asks.
    fn feed(&mut self, input: Input<PeerId, Multiaddr>) {
        let state = self.replica.state();
        let local = Local {
            actor: state.summary.actor,
            applied: &state.head.applied,
        };
        self.catchup.handle(self.started.elapsed(), &local, input);
        while let Some(output) = self.catchup.poll() {
            self.carry_out(output);
        }
    }

    fn carry_out(&mut self, output: catchup::Output<PeerId, Multiaddr>) {
        use catchup::Output as Do;
        match output {
            Do::Send { peer, request } => {
                if let Request::GetDeltas { origin, from, to } = &request {
                    debug!(%peer, %origin, from, to, "requesting deltas");
                }
                self.swarm.behaviour_mut().sync.send_request(&peer, request);
            }
            Do::Beacon => self.send_beacon(),
            Do::Stage { peer, chunk } => {
                let replica = self.replica.clone();
                let staged = self.staged_tx.clone();
                tokio::spawn(async move {
                    let outcome = replica.snapshot(chunk).await;
                    let _ = staged.send((peer, outcome)).await;
                });
            }
            Do::Dial(addr) => {
                if let Err(err) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, error = %err, "cannot dial bootstrap peer");
                }
            }
            Do::Bootstrap => {
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            Do::Synced(synced) => {
                self.synced.send_replace(synced);
            }
            Do::Timer(at) => self.wake = Some(self.started + at),
            Do::Event(event) => self.log(event),
        }
    }

    fn log(&self, event: Event<PeerId>) {
        match event {
            Event::Synced => info!("synced with the cluster"),
            Event::Rejoining(peer) => {
                info!(%peer, "joined a peer: catching up before reporting synced")
            }
            Event::JoinAbandoned => {
                info!("the joined peer left without answering; synced as before the join")
            }
            Event::SnapshotStarted(peer) => info!(%peer, "fetching a snapshot"),
            Event::SnapshotJoined(peer) => {
                info!(%peer, pins = self.replica.state().summary.pins, "snapshot joined")
            }
            Event::SnapshotStalled(peer) => {
                warn!(%peer, "snapshot fetch stalled; back to deltas")
            }
            Event::SnapshotMismatch(peer, error) => warn!(
                %peer, %error,
                "snapshot refused; that peer is asked for deltas only for 10 minutes"
            ),
            Event::SnapshotFailed(peer, error) => {
                warn!(%peer, %error, "snapshot not joined; will retry")
            }
            Event::SnapshotAborted(peer) => warn!(%peer, "snapshot fetch failed; will retry"),
            Event::Truncated {
                peer,
                origin,
                first_available,
            } => info!(
                %peer, %origin, first_available,
                "peer's log no longer holds the deltas we lack; fetching a snapshot"
            ),
            Event::UntrustedOrigin(origin) => warn!(
                %origin,
                "batches by an untrusted writer are rejected; that origin is not pulled"
            ),
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
            } => self.feed(Input::Gap {
                peer,
                origin,
                ranges,
            }),
        }
    }

    /// Answers a sync request: at once when nothing is read from the store.
    fn serve(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let now = match request {
            Request::Status => Some((channel, Response::Status(self.summary(true)))),
            Request::IpfsNode => {
                let addrs = match &self.peering {
                    Some(peering) => peering
                        .own
                        .borrow()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    None => Vec::new(),
                };
                Some((channel, Response::IpfsNode { addrs }))
            }
            request => self.server.serve(peer, request, channel),
        };
        if let Some((channel, response)) = now {
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, response);
        }
    }

    fn summary(&self, with_applied: bool) -> Summary {
        let state = self.replica.state();
        let mut summary = state.summary.clone();
        summary.synced = self.catchup.synced();
        if !with_applied {
            summary.applied = None;
        }
        summary
    }

    fn send_beacon(&mut self) {
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
        self.publish_on(topic, data, what);
    }

    fn publish_on(&mut self, topic: IdentTopic, data: Vec<u8>, what: &str) {
        if let Err(err) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            debug!(error = %err, what, "not published now");
        }
    }

    /// Whether `peer` was removed with `peers rm` (and not added again).
    fn is_removed(&self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .contains(peer)
    }

    /// Publishes this agent's metric and holds it as its own; a lost one is replaced by the
    /// next.
    fn publish_metric(&mut self, metric: pinmesh_protocol::metric::Metric) {
        let data = wire::encode_metric(&metric);
        let me = *self.swarm.local_peer_id();
        self.metrics.own(me, metric, Instant::now());
        self.publish_on(self.metrics_topic.clone(), data, "metric");
    }

    /// Publishes this follower's announcement; a lost one is replaced by the next.
    fn announce(&mut self, announcement: Announcement) {
        let data = wire::encode_announcement(&announcement);
        self.publish_on(self.followers_topic.clone(), data, "announcement");
    }
}
