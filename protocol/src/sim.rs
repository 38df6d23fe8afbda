//! A seeded, deterministic simulator of many replicas and a hostile network, driving the same
//! catch-up state machine ([`CatchUp`]) the agent runs.
//!
//! Replicas issue random pin, update and unpin operations and publish them as signed batches
//! (gossip: lost, duplicated, delayed and reordered). Everything else is what the agent does,
//! decided by [`CatchUp`] and carried out here as the agent's swarm carries it out:
//!
//! - replicas start and dial the ones started before them; each connection asks for a status;
//! - beacons (encoded as the agent encodes them, the applied vector left out when too large)
//!   and status answers show what a peer holds that a replica lacks; holes below a received
//!   batch are asked for after `repair_delay`; the origin itself is asked first;
//! - sync requests travel reliably unless they fail (`rpc_loss`, a partition, an isolated
//!   replica), which the asker learns after `request_timeout` ticks;
//! - a replica's log keeps `log_keep` deltas per origin, so peers further behind are answered
//!   `Truncated` ([`deltas_answer`], as the agent answers) and fetch a snapshot; empty replicas
//!   and those behind by more than `snapshot_threshold` do so at once. Snapshots are served in
//!   encoded chunks, staged and checked, then joined;
//! - a late joiner is cut off from everyone until `join_at` but writes all the same, then
//!   starts, dials everyone and catches up; its writes spread by repair;
//! - every `full_join_every` ticks one replica joins a snapshot of another directly
//!   (anti-entropy), so full-state joins run between states that both hold writes of their own.
//!
//! During `partition` the two halves of the replicas cannot reach each other. Time is a tick
//! counter, one millisecond of [`CatchUp`] time per tick; nothing here reads a clock. A run
//! converges when every replica applied every delta and every catch-up machine says synced.
//!
//! [`oracle`] computes the expected final pinset from the history alone, without the join and
//! without the deltas' own `observed` lists: a pinned version survives iff no later operation
//! on its CID was made by a replica that had applied it (recorded in [`Sim::seen`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::catchup::{self, CatchUp, Event, Input, Local, Output, Staged, deltas_answer};
use crate::codec;
use crate::delta::{Delta, Op};
use crate::dot::{ActorId, Dot, DotSet};
use crate::entry::Version;
use crate::message::{
    DeltaBatch, Gossip, Refusal, Request, Response, Signer, SnapshotChunk, Summary,
};
use crate::pinset::{MemEntries, MemPinset};
use crate::snapshot::{Progress, SnapshotStage};
use crate::spec::{PinMode, PinSpec};

/// The shape of one simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: usize,
    /// Replicas (the last ones) cut off from all others until `join_at`, then started.
    pub late_joiners: usize,
    pub join_at: u64,
    /// Every this many ticks, one replica joins a snapshot of another (0: never).
    pub full_join_every: u64,
    /// Total operations to issue, spread over all replicas.
    pub ops: usize,
    pub ops_per_tick: usize,
    /// Distinct CIDs operated on; fewer means more conflicts.
    pub cids: usize,
    /// Probability that a gossip message is lost.
    pub loss: f64,
    /// Probability that a delivered gossip message is delivered a second time.
    pub duplicate: f64,
    /// Each delivery takes 1..=max_delay ticks.
    pub max_delay: u64,
    /// Ticks `[start, end)` during which the two halves of the replicas cannot reach each other.
    pub partition: Option<(u64, u64)>,
    pub beacon_interval: u64,
    pub repair_delay: u64,
    /// Most deltas per published batch.
    pub max_batch: usize,
    /// Replicas publish what they wrote every this many ticks (1: every tick).
    pub flush_every: u64,
    /// Probability that a sync request fails (no answer).
    pub rpc_loss: f64,
    /// Ticks after which a request that failed is reported failed; also the repair patience.
    pub request_timeout: u64,
    /// Behind by more deltas than this, a replica catches up by snapshot.
    pub snapshot_threshold: u64,
    /// Bytes per snapshot chunk (small, so a snapshot takes several requests).
    pub snapshot_chunk_bytes: usize,
    /// Newest deltas each replica's log keeps per origin (0: all); peers further behind are
    /// answered `Truncated`.
    pub log_keep: u64,
    /// Most batches per `GetDeltas` answer.
    pub answer_batches: usize,
    /// Ticks allowed after the last operation (and the end of the partition) to converge.
    pub settle_ticks: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            replicas: 8,
            late_joiners: 0,
            join_at: 0,
            full_join_every: 0,
            ops: 1000,
            ops_per_tick: 10,
            cids: 200,
            loss: 0.1,
            duplicate: 0.05,
            max_delay: 4,
            partition: None,
            beacon_interval: 10,
            repair_delay: 3,
            max_batch: 64,
            flush_every: 1,
            rpc_loss: 0.05,
            request_timeout: 12,
            snapshot_threshold: 10_000,
            snapshot_chunk_bytes: 16 << 10,
            log_keep: 0,
            answer_batches: 8,
            settle_ticks: 2000,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Tick at which every replica had applied every delta and was synced; `None` if never.
    pub converged_at: Option<u64>,
    pub last_op_at: u64,
    /// Messages sent (gossip copies and sync requests).
    pub sent: u64,
    /// Gossip lost and sync requests failed.
    pub dropped: u64,
    pub duplicated: u64,
    /// `GetDeltas` requests sent.
    pub repair_requests: u64,
    /// Anti-entropy joins (`full_join_every`).
    pub snapshots: u64,
    /// Snapshots fetched and joined by catch-up.
    pub snapshot_catchups: u64,
    /// `Truncated` answers received.
    pub truncated: u64,
    /// Snapshots that did not add up to their head, or could not be staged: none expected.
    pub snapshot_failures: u64,
}

/// The cluster name the simulator signs batches for.
const CLUSTER: &str = "sim";

#[derive(Debug, Clone)]
enum Msg {
    /// Encoded gossip: a signed batch or a beacon.
    Gossip(Arc<Vec<u8>>),
    Request(Request),
    /// An encoded answer to a request.
    Response(Arc<Vec<u8>>),
    /// The request sent to this peer failed.
    Failed,
}

/// One simulated replica.
#[derive(Debug)]
pub struct SimReplica {
    pub actor: ActorId,
    key: SigningKey,
    pub pinset: MemPinset,
    /// The catch-up machine, as the agent runs it.
    pub catchup: CatchUp<usize, usize>,
    counter: u64,
    /// The delta log: per origin, signed batches by their first counter.
    log: BTreeMap<ActorId, BTreeMap<u64, Arc<DeltaBatch>>>,
    outbox: Vec<Delta>,
    /// Tick at which catch-up asked to be woken.
    wake: Option<u64>,
    started: bool,
    /// Peers with a connection.
    connected: HashSet<usize>,
    /// Cut off from every other replica before this tick, and not started.
    isolated_until: u64,
    /// Snapshots being served, by id: their chunks in order.
    serving: BTreeMap<u64, Vec<SnapshotChunk>>,
    /// The snapshot being received.
    stage: Option<(SnapshotStage, MemEntries)>,
}

/// The simulation: replicas, the network between them, and the history of operations.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    tick: u64,
    pub replicas: Vec<SimReplica>,
    /// (delivery tick, sequence) -> (from, to, message).
    in_flight: BTreeMap<(u64, u64), (usize, usize, Msg)>,
    next_seq: u64,
    next_snapshot_id: u64,
    issued: usize,
    /// Every operation, in issue order.
    pub history: Vec<Arc<Delta>>,
    /// The dots of the whole history, once every operation was issued.
    everything: Option<DotSet>,
    /// For each operation, the earlier pins of its CID its replica had applied when making it.
    pub seen: Vec<Vec<Dot>>,
    /// CID bytes -> dots of every pin of it so far.
    pins_of: HashMap<Vec<u8>, Vec<Dot>>,
    /// Signatures of batches already verified: each distinct batch is verified once per run
    /// (every receiver still decodes it). The simulator models replication, not CPU.
    verified: HashSet<[u8; 64]>,
    pub report: Report,
}

fn ms(ticks: u64) -> Duration {
    Duration::from_millis(ticks)
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let first_late = cfg.replicas.saturating_sub(cfg.late_joiners);
        let mut catchup_cfg = catchup::Config::agent(ms(cfg.beacon_interval), ms(cfg.repair_delay));
        catchup_cfg.repair_patience = ms(cfg.request_timeout);
        catchup_cfg.snapshot_threshold = cfg.snapshot_threshold;
        catchup_cfg.snapshot_stall = ms(4 * cfg.request_timeout);
        catchup_cfg.snapshot_refused_backoff = ms(10 * cfg.beacon_interval);
        let replicas = (0..cfg.replicas)
            .map(|i| {
                let seed =
                    blake3::hash(&[cfg.seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
                let key = SigningKey::from_bytes(seed.as_bytes());
                SimReplica {
                    actor: ActorId::derive(&key.public_key(), cfg.seed),
                    key,
                    pinset: MemPinset::new(),
                    catchup: CatchUp::new(catchup_cfg.clone(), []),
                    counter: 0,
                    log: BTreeMap::new(),
                    outbox: Vec::new(),
                    wake: None,
                    started: false,
                    connected: HashSet::new(),
                    isolated_until: if i >= first_late { cfg.join_at } else { 0 },
                    serving: BTreeMap::new(),
                    stage: None,
                }
            })
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            tick: 0,
            replicas,
            in_flight: BTreeMap::new(),
            next_seq: 0,
            next_snapshot_id: 0,
            issued: 0,
            history: Vec::new(),
            everything: None,
            seen: Vec::new(),
            pins_of: HashMap::new(),
            verified: HashSet::new(),
            report: Report::default(),
        }
    }

    /// Runs until every replica applied every delta and is synced, or the settle time runs out.
    pub fn run(&mut self) -> &Report {
        let partition_end = self.cfg.partition.map_or(0, |(_, end)| end);
        loop {
            self.step();
            let quiet_since = self
                .report
                .last_op_at
                .max(partition_end)
                .max(self.cfg.join_at);
            if self.issued == self.cfg.ops && self.tick >= quiet_since && self.converged() {
                self.report.converged_at = Some(self.tick);
                break;
            }
            if self.issued == self.cfg.ops && self.tick > quiet_since + self.cfg.settle_ticks {
                break;
            }
        }
        &self.report
    }

    /// Every replica has applied exactly the dots of the history, and is synced. Asked only
    /// once every operation was issued: the history's dots are collected once.
    fn converged(&mut self) -> bool {
        let history = &self.history;
        let everything = self.everything.get_or_insert_with(|| {
            let mut dots = DotSet::new();
            for d in history {
                dots.insert(d.dot);
            }
            dots
        });
        self.replicas
            .iter()
            .all(|r| r.catchup.synced() && r.pinset.head().applied == *everything)
    }

    fn isolated(&self, r: usize) -> bool {
        self.tick < self.replicas[r].isolated_until
    }

    fn now(&self) -> Duration {
        ms(self.tick)
    }

    /// One tick: start replicas, anti-entropy, issue operations, publish, deliver, fire timers.
    pub fn step(&mut self) {
        self.tick += 1;
        for r in 0..self.replicas.len() {
            if !self.replicas[r].started && !self.isolated(r) {
                self.start(r);
            }
        }
        if self.cfg.full_join_every > 0 && self.tick.is_multiple_of(self.cfg.full_join_every) {
            let r = self.rng.gen_range(0..self.replicas.len());
            self.snapshot_join(r);
        }
        self.issue_ops();
        if self.tick.is_multiple_of(self.cfg.flush_every.max(1)) || self.issued == self.cfg.ops {
            for r in 0..self.replicas.len() {
                self.flush(r);
            }
        }
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.tick {
                break;
            }
            let (from, to, msg) = entry.remove();
            self.deliver(from, to, msg);
        }
        for r in 0..self.replicas.len() {
            if self.replicas[r].wake.is_some_and(|at| at <= self.tick) {
                self.replicas[r].wake = None;
                self.feed(r, Input::Timer);
            }
        }
    }

    /// Starts replica `r`: it dials every replica started before it.
    fn start(&mut self, r: usize) {
        self.replicas[r].started = true;
        let dial = (0..self.replicas.len())
            .filter(|&p| p != r && self.replicas[p].started)
            .collect();
        self.feed(r, Input::Start { dial });
    }

    /// Hands `input` to replica `r`'s catch-up machine and carries out what it asks.
    fn feed(&mut self, r: usize, input: Input<usize, usize>) {
        let now = self.now();
        let replica = &mut self.replicas[r];
        let local = Local {
            actor: replica.actor,
            applied: &replica.pinset.head().applied,
        };
        replica.catchup.handle(now, &local, input);
        while let Some(output) = self.replicas[r].catchup.poll() {
            self.carry_out(r, output);
        }
    }

    fn carry_out(&mut self, r: usize, output: Output<usize, usize>) {
        match output {
            Output::Send { peer, request } => self.request(r, peer, request),
            Output::Beacon => {
                let mut summary = self.summary(r);
                let mut bytes = codec::encode_gossip(&Gossip::Beacon(summary.clone()));
                if bytes.len() > codec::MAX_BEACON {
                    summary.applied = None;
                    bytes = codec::encode_gossip(&Gossip::Beacon(summary));
                }
                self.broadcast(r, Msg::Gossip(Arc::new(bytes)));
            }
            Output::Stage { peer, chunk } => {
                let outcome = self.stage(r, chunk);
                let joined = outcome == Staged::Progress(Progress::Complete);
                self.feed(r, Input::Staged { peer, outcome });
                if joined {
                    self.feed(r, Input::LocalChanged);
                }
            }
            Output::Dial(peer) => self.connect(r, peer),
            Output::Bootstrap | Output::Synced(_) => {}
            Output::Timer(at) => {
                self.replicas[r].wake = Some(at.as_millis() as u64);
            }
            Output::Event(event) => match event {
                Event::SnapshotJoined(_) => self.report.snapshot_catchups += 1,
                Event::Truncated { .. } => self.report.truncated += 1,
                Event::SnapshotMismatch(..) | Event::SnapshotFailed(..) => {
                    self.report.snapshot_failures += 1
                }
                _ => {}
            },
        }
    }

    /// `r` dials `peer`: both sides see the connection, unless they cannot reach each other.
    fn connect(&mut self, r: usize, peer: usize) {
        if self.cut(r, peer) || !self.replicas[peer].started {
            return;
        }
        if self.replicas[r].connected.insert(peer) {
            self.feed(r, Input::Connected(peer));
        }
        if self.replicas[peer].connected.insert(r) {
            self.feed(peer, Input::Connected(r));
        }
    }

    fn summary(&self, r: usize) -> Summary {
        let replica = &self.replicas[r];
        let mut summary = Summary::of(replica.actor, replica.pinset.head());
        summary.synced = replica.catchup.synced();
        summary
    }

    /// Stages a snapshot chunk received by `r`, joining the snapshot when it is complete.
    fn stage(&mut self, r: usize, chunk: SnapshotChunk) -> Staged {
        let replica = &mut self.replicas[r];
        if chunk.head.is_some() {
            replica.stage = Some((SnapshotStage::new(), MemEntries::default()));
        }
        let Some((stage, entries)) = replica.stage.as_mut() else {
            return Staged::Failed("a snapshot chunk arrived with no snapshot under way".into());
        };
        match stage.accept(entries, chunk) {
            Ok(progress @ Progress::Continue { .. }) => Staged::Progress(progress),
            Ok(Progress::Complete) => {
                let (stage, entries) = replica.stage.take().expect("staged above");
                match stage.finish::<std::convert::Infallible>() {
                    Ok(head) => {
                        replica.pinset.join(&MemPinset::from_parts(entries, head));
                        Staged::Progress(Progress::Complete)
                    }
                    Err(err) => Staged::refused(&err),
                }
            }
            Err(err) => {
                replica.stage = None;
                Staged::refused(&err)
            }
        }
    }

    /// Replica `r` joins a snapshot of a random peer it can reach, directly (anti-entropy).
    fn snapshot_join(&mut self, r: usize) {
        if self.isolated(r) {
            return;
        }
        let online: Vec<usize> = (0..self.replicas.len())
            .filter(|&p| p != r && !self.cut(r, p))
            .collect();
        if online.is_empty() {
            return;
        }
        let peer = online[self.rng.gen_range(0..online.len())];
        let (left, right) = self.replicas.split_at_mut(r.max(peer));
        let (joiner, source) = if r < peer {
            (&mut left[r], &right[0])
        } else {
            (&mut right[0], &left[peer])
        };
        // Through the wire format and the staging checks, as the agent receives it.
        let mut stage = SnapshotStage::new();
        let mut entries = MemEntries::default();
        for chunk in source.pinset.snapshot(self.tick, 4096) {
            let bytes =
                codec::encode_response(codec::WIRE_VERSION, &Response::SnapshotChunk(chunk));
            let Ok(Response::SnapshotChunk(chunk)) = codec::decode_response(&bytes) else {
                panic!("snapshot chunk does not round-trip");
            };
            stage
                .accept(&mut entries, chunk)
                .expect("snapshot chunk is valid");
        }
        let head = stage
            .finish::<std::convert::Infallible>()
            .expect("snapshot matches its head");
        joiner.pinset.join(&MemPinset::from_parts(entries, head));
        self.report.snapshots += 1;
        if joiner.started {
            self.feed(r, Input::LocalChanged);
        }
    }

    fn issue_ops(&mut self) {
        for _ in 0..self.cfg.ops_per_tick {
            if self.issued == self.cfg.ops {
                return;
            }
            let r = self.rng.gen_range(0..self.replicas.len());
            let cid = sim_cid(self.rng.gen_range(0..self.cfg.cids) as u64);
            let present = self.replicas[r].pinset.contains(&cid);
            let op = if present && self.rng.gen_bool(0.5) {
                Op::Unpin
            } else {
                Op::Pin {
                    at: self.tick * 1000 + self.rng.gen_range(0..1000),
                    spec: self.random_spec(),
                }
            };
            let replica = &mut self.replicas[r];
            let pins_of = self.pins_of.entry(cid.to_bytes()).or_default();
            let applied = &replica.pinset.head().applied;
            self.seen.push(
                pins_of
                    .iter()
                    .copied()
                    .filter(|d| applied.contains(*d))
                    .collect(),
            );
            replica.counter += 1;
            let dot = Dot::new(replica.actor, replica.counter);
            let delta = Arc::new(replica.pinset.local(dot, cid, op));
            if !delta.is_unpin() {
                pins_of.push(dot);
            }
            replica.outbox.push(Delta::clone(&delta));
            self.history.push(delta);
            self.issued += 1;
            self.report.last_op_at = self.tick;
        }
    }

    fn random_spec(&mut self) -> PinSpec {
        let mut spec = PinSpec::named(format!("pin-{}", self.rng.gen_range(0..1_000_000)));
        if self.rng.gen_bool(0.2) {
            spec.mode = PinMode::Direct;
        }
        if self.rng.gen_bool(0.2) {
            spec.replication_min = self.rng.gen_range(1..3);
            spec.replication_max = spec.replication_min + self.rng.gen_range(0..3);
        }
        if self.rng.gen_bool(0.1) {
            spec.metadata.insert("k".into(), format!("{}", self.tick));
        }
        spec
    }

    /// Publishes what `r` wrote as signed batches, logged first as the agent logs them.
    fn flush(&mut self, r: usize) {
        if self.replicas[r].outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.replicas[r].outbox);
        for deltas in outbox.chunks(self.cfg.max_batch) {
            let batch = DeltaBatch::sign(&self.replicas[r].key, CLUSTER, self.cfg.seed, deltas);
            let bytes = codec::encode_gossip(&Gossip::DeltaBatch(batch.clone()));
            self.log(r, Arc::new(batch));
            self.broadcast(r, Msg::Gossip(Arc::new(bytes)));
        }
    }

    /// Adds a batch to `r`'s log and drops what lies wholly below the newest `log_keep` deltas
    /// of its origin (the batch straddling the cutoff stays), as the agent prunes.
    fn log(&mut self, r: usize, batch: Arc<DeltaBatch>) {
        let replica = &mut self.replicas[r];
        let origin = batch.origin;
        let newest = replica.pinset.head().applied.max(origin);
        let log = replica.log.entry(origin).or_default();
        log.entry(batch.first).or_insert(batch);
        if self.cfg.log_keep == 0 {
            return;
        }
        let Some(cutoff) = newest.checked_sub(self.cfg.log_keep).map(|c| c + 1) else {
            return;
        };
        if let Some(&first_kept) = log.range(..=cutoff).next_back().map(|(k, _)| k) {
            *log = log.split_off(&first_kept);
        }
    }

    fn broadcast(&mut self, from: usize, msg: Msg) {
        for to in 0..self.replicas.len() {
            if to != from {
                self.gossip(from, to, msg.clone());
            }
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        let half = self.replicas.len() / 2;
        match self.cfg.partition {
            Some((start, end)) if (start..end).contains(&self.tick) => (a < half) != (b < half),
            _ => false,
        }
    }

    /// Whether `a` and `b` cannot reach each other now.
    fn cut(&self, a: usize, b: usize) -> bool {
        self.isolated(a) || self.isolated(b) || self.partitioned(a, b)
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(1..=self.cfg.max_delay)
    }

    fn enqueue(&mut self, at: u64, from: usize, to: usize, msg: Msg) {
        self.next_seq += 1;
        self.in_flight.insert((at, self.next_seq), (from, to, msg));
    }

    /// Gossip: lost, duplicated, delayed.
    fn gossip(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.sent += 1;
        if self.cut(from, to) || self.rng.gen_bool(self.cfg.loss) {
            self.report.dropped += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.cfg.duplicate) {
            self.report.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.tick + self.delay();
            self.enqueue(at, from, to, msg.clone());
        }
    }

    /// A sync request: delivered, or reported failed to the asker after `request_timeout`.
    fn request(&mut self, from: usize, to: usize, request: Request) {
        self.report.sent += 1;
        if matches!(request, Request::GetDeltas { .. }) {
            self.report.repair_requests += 1;
        }
        if self.cut(from, to) || self.rng.gen_bool(self.cfg.rpc_loss) {
            self.report.dropped += 1;
            let at = self.tick + self.cfg.request_timeout;
            self.enqueue(at, to, from, Msg::Failed);
            return;
        }
        let at = self.tick + self.delay();
        self.enqueue(at, from, to, Msg::Request(request));
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.replicas[to].started {
            return;
        }
        match msg {
            Msg::Gossip(bytes) => match codec::decode_gossip(&bytes) {
                Ok(Gossip::DeltaBatch(batch)) => {
                    self.verify(&batch);
                    self.feed(
                        to,
                        Input::Authored {
                            origin: batch.origin,
                            peer: from,
                        },
                    );
                    self.apply(to, from, batch);
                }
                Ok(Gossip::Beacon(summary)) => self.feed(
                    to,
                    Input::Summary {
                        peer: from,
                        summary,
                        is_status: false,
                    },
                ),
                Err(err) => panic!("simulated gossip does not decode: {err}"),
            },
            Msg::Request(request) => {
                let response = self.serve(to, from, request);
                let bytes = Arc::new(codec::encode_response(codec::WIRE_VERSION, &response));
                if self.cut(from, to) {
                    self.report.dropped += 1;
                    let at = self.tick + self.cfg.request_timeout;
                    self.enqueue(at, to, from, Msg::Failed);
                } else {
                    let at = self.tick + self.delay();
                    self.enqueue(at, to, from, Msg::Response(bytes));
                }
            }
            Msg::Response(bytes) => {
                let response = codec::decode_response(&bytes).expect("simulated answer decodes");
                self.on_response(to, from, response);
            }
            Msg::Failed => self.feed(to, Input::RequestFailed { peer: from }),
        }
    }

    fn verify(&mut self, batch: &DeltaBatch) {
        if self.verified.insert(batch.signature.0) {
            batch.verify(CLUSTER).expect("simulated batch verifies");
        }
    }

    /// Applies a verified batch received by `r` from `peer`, as the agent's replica does: new
    /// deltas are logged, and holes left below them are reported.
    fn apply(&mut self, r: usize, peer: usize, batch: DeltaBatch) {
        let replica = &mut self.replicas[r];
        if batch.origin == replica.actor {
            return;
        }
        let mut new = false;
        for delta in batch.deltas() {
            new |= replica.pinset.apply(&delta).new;
        }
        if !new {
            return;
        }
        let origin = batch.origin;
        self.log(r, Arc::new(batch));
        let gaps = self.replicas[r]
            .pinset
            .head()
            .applied
            .actor(origin)
            .map(|ranges| ranges.gaps())
            .unwrap_or_default();
        if !gaps.is_empty() {
            self.feed(
                r,
                Input::Gap {
                    peer,
                    origin,
                    ranges: gaps,
                },
            );
        }
        self.feed(r, Input::LocalChanged);
    }

    /// `r` answers `peer`'s request.
    fn serve(&mut self, r: usize, peer: usize, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.summary(r)),
            Request::GetDeltas { origin, from, to } => {
                let empty = BTreeMap::new();
                let log = self.replicas[r].log.get(&origin).unwrap_or(&empty);
                let low = log.keys().next().copied();
                // The batch holding `from` starts at or before it.
                let start = log.range(..=from).next_back().map_or(from, |(k, _)| *k);
                let batches = log
                    .range(start..=to)
                    .map(|(_, b)| b)
                    .filter(|b| b.last().is_some_and(|last| last >= from))
                    .take(self.cfg.answer_batches)
                    .map(|b| DeltaBatch::clone(b))
                    .collect();
                deltas_answer(origin, from, batches, low)
            }
            Request::Snapshot {
                snapshot_id, after, ..
            } => {
                let replica = &mut self.replicas[r];
                let id = match snapshot_id {
                    Some(id) => id,
                    None => {
                        self.next_snapshot_id += 1;
                        let id = self.next_snapshot_id;
                        let chunks = replica.pinset.snapshot(id, self.cfg.snapshot_chunk_bytes);
                        replica.serving.insert(id, chunks);
                        id
                    }
                };
                let Some(chunks) = replica.serving.get(&id) else {
                    return Response::refused(
                        Refusal::SnapshotGone,
                        format!("unknown snapshot {id} for {peer}"),
                    );
                };
                let at = match &after {
                    None => 0,
                    Some(after) => match chunks.iter().position(|c| c.next.as_ref() == Some(after))
                    {
                        Some(i) => i + 1,
                        None => {
                            return Response::refused(Refusal::SnapshotGone, "unknown cursor");
                        }
                    },
                };
                let chunk = chunks[at].clone();
                if chunk.next.is_none() {
                    replica.serving.remove(&id);
                }
                Response::SnapshotChunk(chunk)
            }
            Request::PinStatus { .. } | Request::IpfsNode => {
                Response::refused(Refusal::NoIpfs, "no IPFS node")
            }
        }
    }

    /// `r` received `response` from `peer`.
    fn on_response(&mut self, r: usize, peer: usize, response: Response) {
        match response {
            Response::Status(summary) => self.feed(
                r,
                Input::Summary {
                    peer,
                    summary,
                    is_status: true,
                },
            ),
            Response::Deltas { batches } => {
                let Some(origin) = batches.first().map(|b| b.origin) else {
                    return;
                };
                let last = batches
                    .iter()
                    .filter_map(DeltaBatch::last)
                    .max()
                    .unwrap_or(0);
                for batch in batches {
                    self.verify(&batch);
                    self.apply(r, peer, batch);
                }
                self.feed(r, Input::Deltas { peer, origin, last });
            }
            Response::Truncated {
                origin,
                first_available,
            } => self.feed(
                r,
                Input::Truncated {
                    peer,
                    origin,
                    first_available,
                },
            ),
            Response::SnapshotChunk(chunk) => self.feed(r, Input::Chunk { peer, chunk }),
            Response::Refused { .. } => self.feed(r, Input::Refused { peer }),
            Response::PinStatus { .. } | Response::IpfsNode { .. } => {}
        }
    }
}

/// A deterministic CIDv1 (raw, sha2-256 shaped) for simulator CID number `n`.
pub fn sim_cid(n: u64) -> Cid {
    let digest = blake3::hash(&n.to_le_bytes());
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, digest.as_bytes())
        .expect("32-byte digest fits");
    Cid::new_v1(0x55, mh)
}

/// The final pinset every replica must reach, from the history and what each operation's
/// replica had applied of its CID's earlier pins (`seen`, parallel to `history`): per CID, the
/// pinned versions that no operation saw, sorted by dot. This is the add-wins rule stated
/// directly, independent of the deltas' `observed` lists and of the join.
pub fn oracle(history: &[Arc<Delta>], seen: &[Vec<Dot>]) -> BTreeMap<Vec<u8>, Vec<Version>> {
    assert_eq!(history.len(), seen.len(), "one seen list per operation");
    let mut observed = DotSet::new();
    for dots in seen {
        for dot in dots {
            observed.insert(*dot);
        }
    }
    let mut expected: BTreeMap<Vec<u8>, Vec<Version>> = BTreeMap::new();
    for d in history {
        if !observed.contains(d.dot) {
            for v in d.versions() {
                expected.entry(d.cid().to_bytes()).or_default().push(v);
            }
        }
    }
    for versions in expected.values_mut() {
        versions.sort_by_key(|v| v.dot);
    }
    expected
}
