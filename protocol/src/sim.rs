//! A seeded, deterministic simulator of many replicas and a hostile network.
//!
//! Replicas issue random pin, update and unpin operations, flush them as batches to every peer,
//! and repair what the network loses the way the agent does (DESIGN.md, Flows):
//!
//! - a batch whose counters leave a hole in an origin's applied set schedules a `GetDeltas` to
//!   its sender after `repair_delay` ticks, if the hole is still there;
//! - every `beacon_interval` ticks each replica sends its applied vector; a receiver that lacks
//!   some of it asks that peer for the missing ranges;
//! - a late joiner is cut off from everyone until `join_at` but writes all the same; then it
//!   joins a snapshot from a peer (encoded chunks, staged and checked) into its own state, and
//!   its writes spread by repair;
//! - every `full_join_every` ticks one replica joins a snapshot of another (anti-entropy), so
//!   full-state joins run between states that both hold writes of their own.
//!
//! Batches travel as the agent sends them: signed by their origin, encoded, decoded and
//! verified by every receiver.
//!
//! The network drops (`loss`), duplicates (`duplicate`) and delays by 1..=`max_delay` ticks,
//! which reorders, every message (repair traffic included), and during `partition` cuts the
//! replicas into two halves. Time is a tick counter; nothing here reads a clock.
//!
//! [`oracle`] computes the expected final pinset from the history alone, without the join and
//! without the deltas' own `observed` lists: a pinned version survives iff no later operation
//! on its CID was made by a replica that had applied it (recorded in [`Sim::seen`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cid::Cid;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::codec;
use crate::delta::{Delta, Op};
use crate::dot::{ActorId, AppliedVector, Dot, DotSet};
use crate::entry::Version;
use crate::message::{DeltaBatch, Gossip, Response, Signer};
use crate::pinset::{MemEntries, MemPinset};
use crate::snapshot::{Progress, SnapshotStage};
use crate::spec::{PinMode, PinSpec};

/// The shape of one simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: usize,
    /// Replicas (the last ones) cut off from all others until `join_at`, then joined by snapshot.
    pub late_joiners: usize,
    pub join_at: u64,
    /// Every this many ticks, one replica joins a snapshot of another (0: never).
    pub full_join_every: u64,
    /// Total operations to issue, spread over online replicas.
    pub ops: usize,
    pub ops_per_tick: usize,
    /// Distinct CIDs operated on; fewer means more conflicts.
    pub cids: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a delivered message is delivered a second time.
    pub duplicate: f64,
    /// Each delivery takes 1..=max_delay ticks.
    pub max_delay: u64,
    /// Ticks `[start, end)` during which the two halves of the replicas cannot reach each other.
    pub partition: Option<(u64, u64)>,
    pub beacon_interval: u64,
    pub repair_delay: u64,
    /// Most deltas per batch, and per repair response.
    pub max_batch: usize,
    /// Replicas publish what they wrote every this many ticks (1: every tick).
    pub flush_every: u64,
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
            settle_ticks: 2000,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Tick at which every replica had applied every delta; `None` if it never happened.
    pub converged_at: Option<u64>,
    pub last_op_at: u64,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub repair_requests: u64,
    pub snapshots: u64,
}

/// The cluster name the simulator signs batches for.
const CLUSTER: &str = "sim";

#[derive(Debug, Clone)]
enum Msg {
    /// An encoded gossip message holding a signed batch.
    Batch(Arc<Vec<u8>>),
    Beacon(AppliedVector),
    GetDeltas(Vec<(ActorId, u64, u64)>),
    Deltas(Vec<Arc<Delta>>),
}

/// One simulated replica.
#[derive(Debug)]
pub struct SimReplica {
    pub actor: ActorId,
    key: SigningKey,
    pub pinset: MemPinset,
    counter: u64,
    /// Every delta applied, by dot: what this replica can serve to others.
    log: BTreeMap<Dot, Arc<Delta>>,
    outbox: Vec<Arc<Delta>>,
    /// Origin -> tick of the last repair request for it (one in flight per origin).
    requested: HashMap<ActorId, u64>,
    /// (due tick, peer, origin): re-check a hole seen in a batch from `peer`.
    gap_checks: Vec<(u64, usize, ActorId)>,
    /// Cut off from every other replica before this tick.
    isolated_until: u64,
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
    issued: usize,
    /// Every operation, in issue order.
    pub history: Vec<Arc<Delta>>,
    /// For each operation, the earlier pins of its CID its replica had applied when making it.
    pub seen: Vec<Vec<Dot>>,
    /// CID bytes -> dots of every pin of it so far.
    pins_of: HashMap<Vec<u8>, Vec<Dot>>,
    /// Hashes of batches already verified: each distinct batch is verified once per run (every
    /// receiver still decodes it). The simulator models replication, not CPU.
    verified: std::collections::HashSet<[u8; 32]>,
    pub report: Report,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let first_late = cfg.replicas.saturating_sub(cfg.late_joiners);
        let replicas = (0..cfg.replicas)
            .map(|i| {
                let seed =
                    blake3::hash(&[cfg.seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
                let key = SigningKey::from_bytes(seed.as_bytes());
                SimReplica {
                    actor: ActorId::derive(&key.public_key(), cfg.seed),
                    key,
                    pinset: MemPinset::new(),
                    counter: 0,
                    log: BTreeMap::new(),
                    outbox: Vec::new(),
                    requested: HashMap::new(),
                    gap_checks: Vec::new(),
                    isolated_until: if i >= first_late { cfg.join_at } else { 0 },
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
            issued: 0,
            history: Vec::new(),
            seen: Vec::new(),
            pins_of: HashMap::new(),
            verified: std::collections::HashSet::new(),
            report: Report::default(),
        }
    }

    /// Runs until every replica applied every delta, or the settle time runs out.
    pub fn run(&mut self) -> &Report {
        let partition_end = self.cfg.partition.map_or(0, |(_, end)| end);
        loop {
            self.step();
            let quiet_since = self
                .report
                .last_op_at
                .max(partition_end)
                .max(self.cfg.join_at);
            if self.issued == self.cfg.ops && self.tick >= quiet_since && self.all_applied() {
                self.report.converged_at = Some(self.tick);
                break;
            }
            if self.issued == self.cfg.ops && self.tick > quiet_since + self.cfg.settle_ticks {
                break;
            }
        }
        &self.report
    }

    /// Every online replica has applied exactly the dots of the history.
    fn all_applied(&self) -> bool {
        let everything = self.history_dots();
        self.replicas
            .iter()
            .all(|r| r.pinset.head().applied == everything)
    }

    fn history_dots(&self) -> DotSet {
        let mut dots = DotSet::new();
        for d in &self.history {
            dots.insert(d.dot);
        }
        dots
    }

    fn isolated(&self, r: usize) -> bool {
        self.tick < self.replicas[r].isolated_until
    }

    /// One tick: join late joiners, anti-entropy, issue operations, flush, beacon, deliver,
    /// re-check holes.
    pub fn step(&mut self) {
        self.tick += 1;
        for r in 0..self.replicas.len() {
            if self.replicas[r].isolated_until == self.tick {
                self.snapshot_join(r);
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
        for r in 0..self.replicas.len() {
            if (self.tick + r as u64).is_multiple_of(self.cfg.beacon_interval) {
                let applied = self.replicas[r].pinset.head().applied.clone();
                self.broadcast(r, Msg::Beacon(applied));
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
            self.check_gaps(r);
        }
    }

    /// Replica `r` joins a snapshot of a random peer it can reach.
    fn snapshot_join(&mut self, r: usize) {
        if self.isolated(r) {
            return;
        }
        let online: Vec<usize> = (0..self.replicas.len())
            .filter(|&p| p != r && !self.isolated(p) && !self.partitioned(r, p))
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
            let bytes = codec::encode_response(&Response::SnapshotChunk(chunk));
            let Ok(Response::SnapshotChunk(chunk)) = codec::decode_response(&bytes) else {
                panic!("snapshot chunk does not round-trip");
            };
            let progress = stage
                .accept(&mut entries, chunk)
                .expect("snapshot chunk is valid");
            debug_assert!(matches!(
                progress,
                Progress::Continue { .. } | Progress::Complete
            ));
        }
        let head = stage
            .finish::<std::convert::Infallible>()
            .expect("snapshot matches its head");
        joiner.pinset.join(&MemPinset::from_parts(entries, head));
        self.report.snapshots += 1;
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
            replica.log.insert(dot, delta.clone());
            replica.outbox.push(delta.clone());
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

    fn flush(&mut self, r: usize) {
        if self.replicas[r].outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.replicas[r].outbox);
        for chunk in outbox.chunks(self.cfg.max_batch) {
            let deltas: Vec<Delta> = chunk.iter().map(|d| Delta::clone(d)).collect();
            let batch = DeltaBatch::sign(&self.replicas[r].key, CLUSTER, self.cfg.seed, &deltas);
            let bytes = codec::encode_gossip(&Gossip::DeltaBatch(batch));
            self.broadcast(r, Msg::Batch(Arc::new(bytes)));
        }
    }

    fn broadcast(&mut self, from: usize, msg: Msg) {
        for to in 0..self.replicas.len() {
            if to != from {
                self.send(from, to, msg.clone());
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

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.sent += 1;
        let cut = self.isolated(from) || self.isolated(to) || self.partitioned(from, to);
        if cut || self.rng.gen_bool(self.cfg.loss) {
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
            let at = self.tick + self.rng.gen_range(1..=self.cfg.max_delay);
            self.next_seq += 1;
            self.in_flight
                .insert((at, self.next_seq), (from, to, msg.clone()));
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        match msg {
            Msg::Batch(bytes) => {
                let batch = match codec::decode_gossip(&bytes) {
                    Ok(Gossip::DeltaBatch(batch)) => batch,
                    other => panic!("simulated batch does not decode: {other:?}"),
                };
                if self.verified.insert(*blake3::hash(&bytes).as_bytes()) {
                    batch.verify(CLUSTER).expect("simulated batch verifies");
                }
                let deltas: Vec<Arc<Delta>> = batch.deltas().map(Arc::new).collect();
                self.apply_all(to, &deltas);
                let replica = &mut self.replicas[to];
                let due = self.tick + self.cfg.repair_delay;
                if let Some(origin) = deltas.first().map(|d| d.dot.actor) {
                    let has_gap = replica
                        .pinset
                        .head()
                        .applied
                        .actor(origin)
                        .is_some_and(|r| r.range_count() > 1 || r.contiguous() == 0);
                    if has_gap {
                        replica.gap_checks.push((due, from, origin));
                    }
                }
            }
            Msg::Deltas(deltas) => self.apply_all(to, &deltas),
            Msg::Beacon(theirs) => {
                let missing = self.replicas[to]
                    .pinset
                    .head()
                    .applied
                    .missing_from(&theirs);
                self.request(to, from, missing);
            }
            Msg::GetDeltas(ranges) => {
                let log = &self.replicas[to].log;
                let found: Vec<Arc<Delta>> = ranges
                    .iter()
                    .flat_map(|&(actor, s, e)| {
                        log.range(Dot::new(actor, s)..=Dot::new(actor, e))
                            .map(|(_, d)| d.clone())
                    })
                    .take(self.cfg.max_batch * 8)
                    .collect();
                if !found.is_empty() {
                    self.send(to, from, Msg::Deltas(found));
                }
            }
        }
    }

    fn apply_all(&mut self, r: usize, deltas: &[Arc<Delta>]) {
        let replica = &mut self.replicas[r];
        for delta in deltas {
            if replica.pinset.apply(delta).new {
                replica.log.insert(delta.dot, delta.clone());
            }
        }
    }

    /// Asks `peer` for `missing`, skipping origins with a request still in flight.
    fn request(&mut self, r: usize, peer: usize, missing: Vec<(ActorId, u64, u64)>) {
        let patience = 2 * self.cfg.max_delay + 2;
        let tick = self.tick;
        let replica = &mut self.replicas[r];
        let wanted: Vec<_> = missing
            .into_iter()
            .filter(|(origin, _, _)| {
                replica
                    .requested
                    .get(origin)
                    .is_none_or(|&at| tick >= at + patience)
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        for (origin, _, _) in &wanted {
            replica.requested.insert(*origin, tick);
        }
        self.report.repair_requests += 1;
        self.send(r, peer, Msg::GetDeltas(wanted));
    }

    fn check_gaps(&mut self, r: usize) {
        let tick = self.tick;
        let due: Vec<(u64, usize, ActorId)>;
        {
            let checks = &mut self.replicas[r].gap_checks;
            let (now, later) = checks.drain(..).partition(|(at, _, _)| *at <= tick);
            *checks = later;
            due = now;
        }
        for (_, peer, origin) in due {
            let gaps: Vec<(ActorId, u64, u64)> = self.replicas[r]
                .pinset
                .head()
                .applied
                .actor(origin)
                .map(|ranges| ranges.gaps())
                .unwrap_or_default()
                .into_iter()
                .map(|(s, e)| (origin, s, e))
                .collect();
            self.request(r, peer, gaps);
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
