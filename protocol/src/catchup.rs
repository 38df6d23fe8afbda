//! Catch-up: how a replica learns what its peers hold that it lacks, fetches it, and knows when it
//! has caught up. A sans-I/O state machine: the agent's swarm and the [`sim`](crate::sim)
//! simulator drive the same [`CatchUp`] and carry out what it asks.
//!
//! Inputs ([`Input`], each with the time `now` and a view of the local state, [`Local`]): a
//! connection opened or closed, a peer's beacon or status answer, a hole found in an origin's
//! deltas, a sync answer (deltas, `Truncated`, a snapshot chunk, a refusal, a failure), a local
//! commit, a timer. Outputs ([`Output`]): requests to send, beacons to publish, chunks to stage,
//! addresses to dial, the `synced` flag, the next time to be woken, and events to log. Nothing
//! here reads a clock or does I/O; time is a [`Duration`] since the driver's start.
//!
//! The rules:
//!
//! - **Repair.** A hole below a received batch is asked for after `repair_delay`, of the peer that
//!   sent the batch; a beacon or status showing counters we lack is asked for at once. Requests
//!   are per origin, one in flight per origin for `repair_patience`; an answer that stops short
//!   of what the peer holds is followed at once by a request for the rest. The origin itself,
//!   when connected, is asked first: it holds all its own deltas.
//! - **Snapshots.** Empty while the peer has pins, or behind by more than `snapshot_threshold`
//!   deltas, or told `Truncated` (the peer's log no longer holds what we lack): the replica
//!   fetches the peer's whole state in chunks instead, one fetch at a time, and holds its repairs
//!   meanwhile. A fetch with no chunk for `snapshot_stall` is abandoned. A snapshot carries
//!   others' writes without their signatures, so it is taken only from trusted writers; one whose
//!   entries did not add up to its head makes that peer asked for deltas only, for
//!   `snapshot_refused_backoff`.
//! - **Trust.** With trusted writers set, an origin whose signed batch showed an untrusted author
//!   is never pulled, and `synced` does not wait for it.
//! - **Synced.** Alone at start: synced. Otherwise synced once every connected member answered a
//!   status request and the replica holds the union of the applied vectors they reported (the
//!   trusted writers' reports; untrusted members' only while no trusted writer answered). Joining
//!   a peer at runtime makes it unsynced until that peer answered (or left without answering).
//!   Until synced, every beacon round asks every connected peer for its status again.
//! - **Dialling.** The bootstrap addresses are dialled once at start; the peer-discovery
//!   bootstrap runs on every new connection and every `bootstrap_interval`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::Duration;

use crate::dot::{ActorId, AppliedVector, RangeSet};
use crate::message::{DeltaBatch, Request, Response, SnapshotChunk, Summary};
use crate::snapshot::{Progress, SnapshotError};

/// The agent's settings (the beacon interval and repair delay come from its configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// How often a beacon is published.
    pub beacon_interval: Duration,
    /// How long a hole below a received batch may stay before it is asked for.
    pub repair_delay: Duration,
    /// A repair request without an answer is sent again after this.
    pub repair_patience: Duration,
    /// Behind by more deltas than this, catch up by snapshot.
    pub snapshot_threshold: u64,
    /// Entries asked for per snapshot chunk.
    pub snapshot_chunk_entries: u32,
    /// A snapshot fetch with no chunk for this long is abandoned.
    pub snapshot_stall: Duration,
    /// A peer whose snapshot did not match its head is not asked for another for this long.
    pub snapshot_refused_backoff: Duration,
    /// How often peer discovery bootstraps again.
    pub bootstrap_interval: Duration,
}

impl Config {
    /// The agent's constants around its configured beacon interval and repair delay.
    pub fn agent(beacon_interval: Duration, repair_delay: Duration) -> Self {
        Config {
            beacon_interval,
            repair_delay,
            repair_patience: Duration::from_secs(5),
            snapshot_threshold: 10_000,
            snapshot_chunk_entries: 20_000,
            snapshot_stall: Duration::from_secs(60),
            snapshot_refused_backoff: Duration::from_secs(600),
            bootstrap_interval: Duration::from_secs(300),
        }
    }
}

/// What the machine needs to know of the local replica at each input.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub actor: ActorId,
    pub applied: &'a AppliedVector,
}

/// How staging a snapshot chunk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Staged: ask for the next chunk, or the snapshot was joined.
    Progress(Progress),
    /// The staged entries do not add up to the peer's head: its store is likely damaged.
    Mismatch(String),
    /// Any other failure (an invalid chunk, a local storage error).
    Failed(String),
}

impl Staged {
    /// How a chunk that could not be staged is reported: a snapshot that does not add up to its
    /// head apart from every other failure.
    pub fn refused<E: std::error::Error>(err: &SnapshotError<E>) -> Self {
        match err {
            SnapshotError::Mismatch { .. } => Staged::Mismatch(err.to_string()),
            _ => Staged::Failed(err.to_string()),
        }
    }
}

/// The answer to `GetDeltas { origin, from, .. }` from the batches of `origin`'s log that hold
/// counters from `from` on, in order (the first may start before `from`), and the first counter
/// of the oldest batch the log holds (`low`). A log that cannot serve `from` (pruned, or held
/// from a snapshot) answers `Truncated`, which sends the asker to a snapshot.
pub fn deltas_answer(
    origin: ActorId,
    from: u64,
    batches: Vec<DeltaBatch>,
    low: Option<u64>,
) -> Response {
    if batches.first().is_none_or(|b| b.first > from) {
        Response::Truncated {
            origin,
            first_available: low.unwrap_or(0),
        }
    } else {
        Response::Deltas { batches }
    }
}

/// Something that happened to the replica or its network.
#[derive(Debug, Clone)]
pub enum Input<P, A> {
    /// The driver started; `dial` are the bootstrap addresses (none: alone, so synced).
    Start { dial: Vec<A> },
    /// The first connection to `peer` opened.
    Connected(P),
    /// The last connection to `peer` closed.
    Disconnected(P),
    /// A dial asked for at runtime (a join) reached `peer`.
    Joined(P),
    /// Whether `peer` is a member of this cluster, as far as known (a connected peer is, until
    /// shown otherwise): `synced` waits only for members' answers.
    Member { peer: P, member: bool },
    /// Forget everything about `peer`.
    Forget(P),
    /// A beacon (`is_status: false`) or a status answer from `peer`.
    Summary {
        peer: P,
        summary: Summary,
        is_status: bool,
    },
    /// Applying a batch from `peer` left holes (`ranges`) below it in `origin`'s deltas.
    Gap {
        peer: P,
        origin: ActorId,
        ranges: Vec<(u64, u64)>,
    },
    /// `peer` published a verified batch of `origin` signed by itself: it is the origin's author.
    Authored { origin: ActorId, peer: P },
    /// A verified batch of `origin` was signed by an author not trusted to write.
    Untrusted { origin: ActorId },
    /// `peer` answered a `GetDeltas` with valid batches of `origin`, the last counter `last`.
    Deltas { peer: P, origin: ActorId, last: u64 },
    /// `peer` answered that its log starts at `first_available` for `origin`.
    Truncated {
        peer: P,
        origin: ActorId,
        first_available: u64,
    },
    /// `peer` sent a snapshot chunk.
    Chunk { peer: P, chunk: SnapshotChunk },
    /// A chunk from `peer` was staged (see [`Output::Stage`]).
    Staged { peer: P, outcome: Staged },
    /// `peer` refused a request.
    Refused { peer: P },
    /// A request to `peer` failed (no answer, connection lost).
    RequestFailed { peer: P },
    /// The local replica committed something.
    LocalChanged,
    /// Ask every connected peer for a fresh status.
    Refresh,
    /// The time asked for by the last [`Output::Timer`] has come (or any later time).
    Timer,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P, A> {
    /// Send `request` to `peer` on the sync protocol.
    Send { peer: P, request: Request },
    /// Publish a beacon (the local summary, with [`CatchUp::synced`]).
    Beacon,
    /// Stage this snapshot chunk, then report with [`Input::Staged`].
    Stage { peer: P, chunk: SnapshotChunk },
    /// Dial this address.
    Dial(A),
    /// Run a peer-discovery bootstrap.
    Bootstrap,
    /// The `synced` flag changed.
    Synced(bool),
    /// Deliver [`Input::Timer`] at this time (replaces any earlier timer).
    Timer(Duration),
    /// Something worth a log line.
    Event(Event<P>),
}

/// What the driver may log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    Synced,
    /// A runtime join made the replica unsynced until `peer` answers.
    Rejoining(P),
    /// The joined peer left without answering; synced as before.
    JoinAbandoned,
    SnapshotStarted(P),
    SnapshotJoined(P),
    SnapshotStalled(P),
    /// The peer's snapshot did not add up; deltas only from it for a while.
    SnapshotMismatch(P, String),
    SnapshotFailed(P, String),
    /// A request to the peer we fetch a snapshot from failed or was refused.
    SnapshotAborted(P),
    Truncated {
        peer: P,
        origin: ActorId,
        first_available: u64,
    },
    /// An origin was found to be written by an untrusted author (first time only).
    UntrustedOrigin(ActorId),
}

#[derive(Debug, Default)]
struct Peer {
    connected: bool,
    /// Whether `synced` waits for its answer (a member, as far as known).
    counts: bool,
    summary: Option<Summary>,
    heard: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Repair<P> {
    due: Duration,
    peer: P,
    wanted: RangeSet,
}

#[derive(Debug, Clone)]
struct Fetch<P> {
    peer: P,
    /// The peer's id of the snapshot, from its first chunk: a late chunk of an earlier fetch
    /// from the same peer is not taken for one of this fetch.
    snapshot_id: Option<u64>,
    last_progress: Duration,
}

/// The catch-up state of one replica. `P` names peers, `A` addresses.
#[derive(Debug)]
pub struct CatchUp<P, A> {
    cfg: Config,
    /// Empty: every member may write.
    trusted: BTreeSet<P>,
    peers: BTreeMap<P, Peer>,
    synced: bool,
    /// The union of the applied vectors trusted members reported since unsynced.
    sync_target: Option<AppliedVector>,
    /// What untrusted members reported: a target only while no trusted writer answered.
    untrusted_target: Option<AppliedVector>,
    /// Peers that answered a status request since unsynced.
    answered: BTreeSet<P>,
    /// Unsynced by a runtime join: if the joined peer leaves before anyone answered, synced again.
    rejoining: bool,
    /// One pending repair per origin.
    repairs: BTreeMap<ActorId, Repair<P>>,
    /// Origin -> when it was last asked for.
    in_flight: BTreeMap<ActorId, Duration>,
    /// Which peer authored which origin: asked first for its deltas.
    origin_peers: BTreeMap<ActorId, P>,
    untrusted_origins: BTreeSet<ActorId>,
    fetch: Option<Fetch<P>>,
    /// Peer -> until when its snapshots are not asked for.
    snapshot_refused: BTreeMap<P, Duration>,
    next_beacon: Duration,
    next_bootstrap: Duration,
    /// The last timer asked for.
    timer: Option<Duration>,
    outputs: VecDeque<Output<P, A>>,
}

impl<P, A> CatchUp<P, A>
where
    P: Copy + Ord + Debug,
{
    /// A replica that trusts `trusted` to write (empty: every member).
    pub fn new(cfg: Config, trusted: impl IntoIterator<Item = P>) -> Self {
        CatchUp {
            cfg,
            trusted: trusted.into_iter().collect(),
            peers: BTreeMap::new(),
            synced: false,
            sync_target: None,
            untrusted_target: None,
            answered: BTreeSet::new(),
            rejoining: false,
            repairs: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            origin_peers: BTreeMap::new(),
            untrusted_origins: BTreeSet::new(),
            fetch: None,
            snapshot_refused: BTreeMap::new(),
            next_beacon: Duration::ZERO,
            next_bootstrap: Duration::ZERO,
            timer: None,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the replica has caught up (see the module docs).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether `peer` may write the pinset.
    pub fn may_write(&self, peer: &P) -> bool {
        self.trusted.is_empty() || self.trusted.contains(peer)
    }

    /// The last summary `peer` sent and when (for `peers ls`).
    pub fn heard_from(&self, peer: &P) -> Option<(Duration, &Summary)> {
        let p = self.peers.get(peer)?;
        Some((p.heard?, p.summary.as_ref()?))
    }

    /// Every peer heard from or connected to, and not forgotten.
    pub fn known(&self) -> impl Iterator<Item = P> + '_ {
        self.peers.keys().copied()
    }

    /// The peer a snapshot is being fetched from.
    pub fn fetching_from(&self) -> Option<P> {
        self.fetch.as_ref().map(|f| f.peer)
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output<P, A>> {
        self.outputs.pop_front()
    }

    /// Every pending output.
    pub fn drain(&mut self) -> impl Iterator<Item = Output<P, A>> + '_ {
        self.outputs.drain(..)
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Duration, local: &Local<'_>, input: Input<P, A>) {
        match input {
            Input::Start { dial } => {
                self.next_beacon = now;
                self.next_bootstrap = now + self.cfg.bootstrap_interval;
                if dial.is_empty() {
                    self.set_synced(true);
                }
                self.outputs.extend(dial.into_iter().map(Output::Dial));
                self.on_timer(now, local);
            }
            Input::Connected(peer) => {
                let p = self.peers.entry(peer).or_default();
                p.connected = true;
                p.counts = true;
                self.send(peer, Request::Status);
                self.outputs.push_back(Output::Bootstrap);
            }
            Input::Disconnected(peer) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.connected = false;
                    p.counts = false;
                }
                self.check_synced(local);
            }
            Input::Joined(peer) => {
                if self.synced {
                    // Maybe a whole other part of the cluster: synced again once it answered.
                    self.set_synced(false);
                    self.event(Event::Rejoining(peer));
                    self.sync_target = None;
                    self.untrusted_target = None;
                    self.rejoining = true;
                    self.answered.clear();
                }
            }
            Input::Member { peer, member } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.counts = member && p.connected;
                }
                if !member {
                    self.answered.remove(&peer);
                }
                self.check_synced(local);
            }
            Input::Forget(peer) => {
                self.peers.remove(&peer);
                self.answered.remove(&peer);
                if self.fetching_from() == Some(peer) {
                    self.fetch = None;
                }
                self.check_synced(local);
            }
            Input::Summary {
                peer,
                summary,
                is_status,
            } => self.on_summary(now, local, peer, summary, is_status),
            Input::Gap {
                peer,
                origin,
                ranges,
            } => {
                let mut wanted = RangeSet::new();
                for (s, e) in ranges {
                    wanted.insert_range(s, e);
                }
                self.schedule(now + self.cfg.repair_delay, peer, origin, wanted);
            }
            Input::Authored { origin, peer } => {
                self.origin_peers.insert(origin, peer);
            }
            Input::Untrusted { origin } => {
                self.in_flight.remove(&origin);
                self.repairs.remove(&origin);
                if self.untrusted_origins.insert(origin) {
                    self.event(Event::UntrustedOrigin(origin));
                    self.check_synced(local);
                }
            }
            Input::Deltas { peer, origin, last } => {
                self.in_flight.remove(&origin);
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
                    self.schedule(now, peer, origin, wanted);
                }
            }
            Input::Truncated {
                peer,
                origin,
                first_available,
            } => {
                self.event(Event::Truncated {
                    peer,
                    origin,
                    first_available,
                });
                self.in_flight.remove(&origin);
                self.start_snapshot(now, peer);
            }
            Input::Chunk { peer, chunk } => match &mut self.fetch {
                Some(fetch)
                    if fetch.peer == peer
                        && fetch
                            .snapshot_id
                            .map_or(chunk.head.is_some(), |id| id == chunk.snapshot_id) =>
                {
                    fetch.snapshot_id = Some(chunk.snapshot_id);
                    fetch.last_progress = now;
                    self.outputs.push_back(Output::Stage { peer, chunk });
                }
                _ => {} // not asked for (any more)
            },
            Input::Staged { peer, outcome } => self.on_staged(now, local, peer, outcome),
            Input::Refused { peer } | Input::RequestFailed { peer } => {
                if self.fetching_from() == Some(peer) {
                    // Try again later, from whichever peer shows us behind next.
                    self.event(Event::SnapshotAborted(peer));
                    self.fetch = None;
                }
            }
            Input::LocalChanged => self.check_synced(local),
            Input::Refresh => self.ask_all(Request::Status),
            Input::Timer => {
                self.timer = None; // fired
                self.on_timer(now, local);
            }
        }
        self.set_timer();
    }

    fn on_timer(&mut self, now: Duration, local: &Local<'_>) {
        if now >= self.next_beacon {
            self.next_beacon = now + self.cfg.beacon_interval;
            if !self.synced {
                // Until synced, keep asking: a lost status answer must not leave us unsynced.
                self.ask_all(Request::Status);
            }
            self.outputs.push_back(Output::Beacon);
        }
        if now >= self.next_bootstrap {
            self.next_bootstrap = now + self.cfg.bootstrap_interval;
            self.outputs.push_back(Output::Bootstrap);
        }
        self.run_repairs(now, local);
    }

    /// Asks for a timer at the earliest time something is due, if that changed.
    fn set_timer(&mut self) {
        let mut due = self.next_beacon.min(self.next_bootstrap);
        match &self.fetch {
            // Repairs wait for the snapshot; only its stall is due.
            Some(f) => due = due.min(f.last_progress + self.cfg.snapshot_stall),
            None => {
                if let Some(first) = self.repairs.values().map(|r| r.due).min() {
                    due = due.min(first);
                }
            }
        }
        if self.timer != Some(due) {
            self.timer = Some(due);
            self.outputs.push_back(Output::Timer(due));
        }
    }

    fn on_summary(
        &mut self,
        now: Duration,
        local: &Local<'_>,
        peer: P,
        summary: Summary,
        is_status: bool,
    ) {
        match &summary.applied {
            Some(theirs) => {
                if is_status && !self.synced {
                    let target = if self.may_write(&peer) {
                        &mut self.sync_target
                    } else {
                        &mut self.untrusted_target
                    };
                    target.get_or_insert_with(AppliedVector::new).union(theirs);
                    self.answered.insert(peer);
                }
                let missing: Vec<_> = local
                    .applied
                    .missing_from(theirs)
                    .into_iter()
                    .filter(|(origin, _, _)| {
                        *origin != local.actor && !self.untrusted_origins.contains(origin)
                    })
                    .collect();
                let behind = missing.iter().fold(0u64, |n, (_, s, e)| {
                    n.saturating_add((e - s).saturating_add(1))
                });
                let wants_snapshot = (local.applied.is_empty() && summary.pins > 0)
                    || behind > self.cfg.snapshot_threshold;
                if wants_snapshot && self.may_write(&peer) && !self.refused_lately(now, &peer) {
                    // Deltas for the same gap would be redundant; the tail follows the snapshot.
                    self.start_snapshot(now, peer);
                } else {
                    for (origin, start, end) in missing {
                        let mut wanted = RangeSet::new();
                        wanted.insert_range(start, end);
                        self.schedule(now, peer, origin, wanted);
                    }
                    self.run_repairs(now, local);
                }
            }
            // Too many gaps for a beacon: ask for the whole status.
            None if summary.applied_digest != local.applied.digest() => {
                self.send(peer, Request::Status);
            }
            None => {}
        }
        let p = self.peers.entry(peer).or_default();
        p.heard = Some(now);
        p.summary = Some(summary);
        self.check_synced(local);
    }

    fn check_synced(&mut self, local: &Local<'_>) {
        if self.synced {
            return;
        }
        // One peer that is itself behind must not make us synced: wait for every connected
        // member's answer (each is asked on connecting and again every beacon round).
        let mut members = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected && p.counts)
            .map(|(id, _)| id);
        if self.rejoining
            && members.clone().next().is_none()
            && self.sync_target.is_none()
            && self.untrusted_target.is_none()
        {
            self.event(Event::JoinAbandoned);
            self.rejoining = false;
            self.set_synced(true);
            return;
        }
        let all_answered = members.all(|p| self.answered.contains(p));
        let Some(target) = self.sync_target.as_ref().or(self.untrusted_target.as_ref()) else {
            return;
        };
        // Every origin of the target held, except those of untrusted writers (never applied).
        let caught_up = local
            .applied
            .missing_from(target)
            .iter()
            .all(|(origin, _, _)| self.untrusted_origins.contains(origin));
        if all_answered && caught_up {
            self.event(Event::Synced);
            self.set_synced(true);
            self.rejoining = false;
            self.answered.clear();
            self.outputs.push_back(Output::Beacon);
        }
    }

    fn set_synced(&mut self, synced: bool) {
        if self.synced != synced {
            self.synced = synced;
            self.outputs.push_back(Output::Synced(synced));
        }
    }

    /// Adds a repair, merged into the one pending for `origin` if any.
    fn schedule(&mut self, due: Duration, peer: P, origin: ActorId, wanted: RangeSet) {
        if self.untrusted_origins.contains(&origin) {
            return;
        }
        match self.repairs.get_mut(&origin) {
            Some(existing) => {
                existing.due = existing.due.min(due);
                existing.wanted.union(&wanted);
            }
            None => {
                self.repairs.insert(origin, Repair { due, peer, wanted });
            }
        }
    }

    /// Sends the repairs that are due and still needed.
    fn run_repairs(&mut self, now: Duration, local: &Local<'_>) {
        let patience = self.cfg.repair_patience;
        self.in_flight
            .retain(|_, at| now.saturating_sub(*at) < patience);
        match &self.fetch {
            Some(f) if now.saturating_sub(f.last_progress) < self.cfg.snapshot_stall => {
                return; // the snapshot brings it all; what it lacks is asked for after
            }
            Some(f) => {
                self.event(Event::SnapshotStalled(f.peer));
                self.fetch = None;
            }
            None => {}
        }
        let due: Vec<ActorId> = self
            .repairs
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(origin, _)| *origin)
            .collect();
        for origin in due {
            let Some(repair) = self.repairs.remove(&origin) else {
                continue;
            };
            let empty = RangeSet::new();
            let missing = local
                .applied
                .actor(origin)
                .unwrap_or(&empty)
                .missing_from(&repair.wanted);
            let Some(&(from, _)) = missing.first() else {
                continue;
            };
            let to = missing.last().map_or(from, |&(_, e)| e);
            // The origin itself holds all its deltas; ask it when connected.
            let peer = self
                .origin_peers
                .get(&origin)
                .copied()
                .filter(|p| self.peers.get(p).is_some_and(|p| p.connected))
                .unwrap_or(repair.peer);
            if self.in_flight.contains_key(&origin) {
                // Asked recently; check again once the answer had time to arrive.
                self.schedule(now + patience, peer, origin, repair.wanted);
                continue;
            }
            self.in_flight.insert(origin, now);
            self.send(peer, Request::GetDeltas { origin, from, to });
        }
    }

    /// Whether a snapshot of `peer`'s was refused within the backoff.
    fn refused_lately(&mut self, now: Duration, peer: &P) -> bool {
        self.snapshot_refused.retain(|_, until| *until > now);
        self.snapshot_refused.contains_key(peer)
    }

    /// Starts fetching a snapshot from `peer`, unless one is under way.
    fn start_snapshot(&mut self, now: Duration, peer: P) {
        if !self.may_write(&peer) {
            // A snapshot carries others' writes without their signatures.
            return;
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|f| now.saturating_sub(f.last_progress) < self.cfg.snapshot_stall)
        {
            return;
        }
        if self.refused_lately(now, &peer) {
            return;
        }
        self.event(Event::SnapshotStarted(peer));
        self.fetch = Some(Fetch {
            peer,
            snapshot_id: None,
            last_progress: now,
        });
        let limit = self.cfg.snapshot_chunk_entries;
        self.send(
            peer,
            Request::Snapshot {
                snapshot_id: None,
                after: None,
                limit,
            },
        );
    }

    fn on_staged(&mut self, now: Duration, local: &Local<'_>, peer: P, outcome: Staged) {
        if self.fetching_from() != Some(peer) {
            return;
        }
        match outcome {
            Staged::Progress(Progress::Continue { snapshot_id, after }) => {
                let limit = self.cfg.snapshot_chunk_entries;
                self.send(
                    peer,
                    Request::Snapshot {
                        snapshot_id: Some(snapshot_id),
                        after: Some(after),
                        limit,
                    },
                );
            }
            Staged::Progress(Progress::Complete) => {
                self.event(Event::SnapshotJoined(peer));
                self.fetch = None;
                // The tail: whatever the peer applied since its snapshot began.
                self.send(peer, Request::Status);
                self.check_synced(local);
            }
            Staged::Mismatch(why) => {
                self.event(Event::SnapshotMismatch(peer, why));
                self.snapshot_refused
                    .insert(peer, now + self.cfg.snapshot_refused_backoff);
                self.fetch = None;
            }
            Staged::Failed(why) => {
                self.event(Event::SnapshotFailed(peer, why));
                self.fetch = None;
            }
        }
    }

    fn ask_all(&mut self, request: Request) {
        let connected: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| *id)
            .collect();
        for peer in connected {
            self.send(peer, request.clone());
        }
    }

    fn send(&mut self, peer: P, request: Request) {
        self.outputs.push_back(Output::Send { peer, request });
    }

    fn event(&mut self, event: Event<P>) {
        self.outputs.push_back(Output::Event(event));
    }
}

#[cfg(test)]
mod tests;
