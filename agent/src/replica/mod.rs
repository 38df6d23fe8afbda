//! The replica: the only writer of the CRDT state.
//!
//! Runs on its own thread (redb commits block) and receives [`Command`]s: local operations from
//! the API, verified batches from the swarm. It drains whatever is queued into one write
//! transaction (group commit), applies everything, appends to the delta log, writes the head and
//! commits; only then does it answer the API and hand new local batches to the swarm. A local
//! write is therefore acknowledged only once durable.
//!
//! Emits [`Output`]s to the swarm (batches to publish, holes to repair) with `try_send`: a full
//! channel drops the message and counts it, and beacons repair the loss. Publishes its
//! [`ReplicaState`] on a watch channel after each commit, and the CIDs whose entries changed on
//! the [`ChangeFeed`] (the reconciler's work list).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use pinmesh_protocol::catchup::Staged;
use pinmesh_protocol::pinset::{self, join_encoded_entry, local_op, prune_entry};
use pinmesh_protocol::snapshot::{Progress, SnapshotError, SnapshotStage};
use pinmesh_protocol::{
    ActorId, Cid, Delta, DeltaBatch, Dot, Head, Op, Signer, SnapshotChunk, Summary, codec,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::store::{Group, PinsTable, Store, StoreError, TableError};

mod feed;
mod handle;

pub use self::feed::{CHANGE_CAPACITY, ChangeFeed, Changes, change_feed};
pub use self::handle::{
    Command, LocalError, LocalOp, NodeSigner, Output, Receipt, ReplicaHandle, ReplicaState,
    flush_periodically,
};

/// Commands queued to the replica. Capacity: enough for bursts of API calls and gossip; the
/// swarm uses `try_send` and drops when full (anti-entropy repairs drops).
pub const COMMAND_CAPACITY: usize = 4096;
/// Outputs queued to the swarm.
pub const OUTPUT_CAPACITY: usize = 1024;
/// Most commands folded into one write transaction.
const GROUP_MAX: usize = 512;
/// Most changes per published batch.
const BATCH_CHANGES: usize = 1024;
/// Most encoded bytes of changes per published batch: well under the gossip size limit.
const BATCH_BYTES: usize = 512 << 10;
/// Remote-only groups commit without fsync; [`flush_periodically`] asks for a durable flush this
/// often, and any group this long after the last durable commit is durable itself.
const DURABLE_EVERY: Duration = Duration::from_millis(200);

struct Replica {
    /// Signed into every batch: a batch replayed into another cluster does not verify.
    cluster: String,
    /// Deltas kept per origin in the log; older batches are deleted (peers further behind
    /// get `Truncated` and fetch a snapshot).
    log_retention: u64,
    /// Refuses every local operation (a follower).
    read_only: bool,
    store: Store,
    signer: NodeSigner,
    actor: ActorId,
    incarnation: u64,
    counter: u64,
    head: Head,
    /// This peer's id as text, and how many pins of the state are allocated to it (kept on
    /// every write, recorded with the head).
    me: String,
    allocated: u64,
    outputs: mpsc::Sender<Output>,
    state: watch::Sender<Arc<ReplicaState>>,
    last_durable: Instant,
    dropped_outputs: u64,
    /// The snapshot being received, if any.
    stage: Option<SnapshotStage>,
    snapshots_joined: u64,
    /// A commit without fsync is not yet followed by a durable one.
    dirty: bool,
    changes: ChangeFeed,
}

/// What a replica is told at start.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// Signed into every batch.
    pub cluster: String,
    /// Deltas kept per origin in the log.
    pub log_retention: u64,
    /// A follower's: every local operation is refused, so it never signs a batch.
    pub read_only: bool,
}

/// Starts the replica thread. It stops when every handle is dropped.
pub fn spawn(
    settings: ReplicaSettings,
    store: Store,
    persisted: crate::store::Persisted,
    signer: NodeSigner,
    outputs: mpsc::Sender<Output>,
    changes: ChangeFeed,
) -> std::io::Result<(ReplicaHandle, std::thread::JoinHandle<Result<(), String>>)> {
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let actor = ActorId::derive(&signer.public_key(), persisted.incarnation);
    let me = PeerId::from_public_key(&signer.0.public().into()).to_string();
    let allocated = store
        .allocated_count(&persisted, &me)
        .map_err(std::io::Error::other)?;
    let initial = state_of(
        actor,
        &persisted.head,
        (persisted.counter, persisted.incarnation),
        allocated,
    );
    let (state_tx, state_rx) = watch::channel(Arc::new(initial));
    let replica = Replica {
        cluster: settings.cluster,
        log_retention: settings.log_retention,
        read_only: settings.read_only,
        store,
        signer,
        actor,
        incarnation: persisted.incarnation,
        counter: persisted.counter,
        head: persisted.head,
        me,
        allocated,
        outputs,
        state: state_tx,
        last_durable: Instant::now(),
        dropped_outputs: 0,
        stage: None,
        snapshots_joined: 0,
        dirty: false,
        changes,
    };
    let thread = std::thread::Builder::new()
        .name("replica".into())
        .spawn(move || replica.run(rx))?;
    Ok((
        ReplicaHandle {
            tx,
            state: state_rx,
        },
        thread,
    ))
}

fn state_of(
    actor: ActorId,
    head: &Head,
    (counter, incarnation): (u64, u64),
    allocated: u64,
) -> ReplicaState {
    ReplicaState {
        snapshots_joined: 0,
        allocated,
        summary: Summary::of(actor, head),
        head: head.clone(),
        counter,
        incarnation,
    }
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Reply = oneshot::Sender<Result<Vec<Receipt>, LocalError>>;
type SnapshotReply = oneshot::Sender<Staged>;
type PeerReply = oneshot::Sender<Result<(), LocalError>>;

/// What one group produced, released only after its commit.
#[derive(Default)]
struct GroupResult {
    replies: Vec<(Reply, Result<Vec<Receipt>, LocalError>)>,
    snapshot_replies: Vec<(SnapshotReply, Staged)>,
    /// Removals of peers recorded (or undone).
    peer_replies: Vec<PeerReply>,
    publish: Vec<DeltaBatch>,
    repairs: Vec<Output>,
    /// Origins whose log grew in this group.
    logged: std::collections::BTreeSet<ActorId>,
    local: bool,
    changed: bool,
    /// CIDs whose entries changed, for the reconciler.
    touched: Vec<Cid>,
    /// A snapshot was joined: every entry may have changed.
    rescan: bool,
}

impl Replica {
    /// Runs until every handle is dropped (`Ok`), or until the database file cannot be written
    /// (`Err` with why): redb refuses all writes after an I/O error, so carrying on would leave
    /// an agent that looks alive and can never write again. Its caller stops the agent.
    fn run(mut self, mut rx: mpsc::Receiver<Command>) -> Result<(), String> {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            if let Err(fatal) = self.run_group(group) {
                // Everything still queued is refused; the handles see `Stopped`.
                rx.close();
                return Err(fatal);
            }
        }
        debug!("replica stopped: every handle dropped");
        Ok(())
    }

    /// `Err`: the database failed with an I/O error and no further write can succeed.
    fn run_group(&mut self, group: Vec<Command>) -> Result<(), String> {
        let flush = group.iter().any(|c| matches!(c, Command::Flush));
        if flush && group.len() == 1 && !self.dirty {
            return Ok(()); // nothing to make durable
        }
        let saved = (self.head.clone(), self.counter, self.allocated);
        let (result, committed) = self.apply_group(group);
        let err = match committed {
            Ok(()) => {
                self.release(result);
                return Ok(());
            }
            Err(err) => err,
        };
        // Nothing was committed: forget the in-memory changes too.
        (self.head, self.counter, self.allocated) = saved;
        self.stage = None;
        error!(error = %err, "write transaction failed; the group is dropped");
        let io_failure = err.io_failure();
        let refusal = match io_failure {
            Some(true) => LocalError::DiskFull(err.to_string()),
            _ => LocalError::Store(err.to_string()),
        };
        for (reply, _) in result.replies {
            let _ = reply.send(Err(refusal.clone()));
        }
        for (reply, _) in result.snapshot_replies {
            let _ = reply.send(Staged::Failed(format!("storage failed: {err}")));
        }
        for reply in result.peer_replies {
            let _ = reply.send(Err(refusal.clone()));
        }
        match io_failure {
            Some(true) => Err(format!(
                "the disk is full ({err}); free space and start the agent again: every \
                 acknowledged write is kept"
            )),
            Some(false) => Err(format!(
                "the database file cannot be written ({err}); start the agent again once the \
                 disk is fixed: every acknowledged write is kept"
            )),
            None => Ok(()),
        }
    }

    /// Applies a group in one write transaction. Returns what to release and whether the
    /// commit happened; on failure the replies are answered with the error instead.
    fn apply_group(&mut self, group: Vec<Command>) -> (GroupResult, Result<(), StoreError>) {
        let mut result = GroupResult::default();
        let mut pending_replies = Vec::new();
        let mut pending_snapshot = Vec::new();
        let mut pending_peers = Vec::new();
        let store = self.store.clone();
        let outcome = store.write_group(|g: &mut Group<'_>| {
            g.count_allocated(&self.me, self.allocated);
            let mut local_deltas: Vec<Delta> = Vec::new();
            for cmd in group {
                match cmd {
                    Command::Local { ops, reply } => {
                        result.local = true;
                        // A failed group answers every reply with its error: keep this one.
                        let outcome = match self.apply_local(&mut g.pins, ops, &mut local_deltas) {
                            Ok(outcome) => outcome,
                            Err(err) => {
                                pending_replies.push((reply, Err(LocalError::Stopped)));
                                return Err(err);
                            }
                        };
                        if let Ok(receipts) = &outcome {
                            result.touched.extend(receipts.iter().map(|r| r.cid));
                        }
                        pending_replies.push((reply, outcome));
                    }
                    Command::Remote { from, batches } => {
                        for batch in batches {
                            self.apply_remote(g, from, batch, &mut result)?;
                        }
                    }
                    Command::Flush => result.local = true, // commit durably
                    Command::RememberPeer { peer, record } => g.remember_peer(&peer, &record)?,
                    Command::ForgetPeer { peer } => g.forget_peer(&peer)?,
                    Command::PeerMetric { peer, record } => match record {
                        Some(record) => g.remember_metric(&peer, &record)?,
                        None => g.forget_metric(&peer)?,
                    },
                    Command::PeerRemoved {
                        peer,
                        removed,
                        reply,
                    } => {
                        result.local = true; // answered once durable
                        pending_peers.push(reply);
                        g.forget_metric(&peer)?;
                        if removed {
                            let record = crate::store::PeerRecord {
                                addrs: Vec::new(),
                                last_seen: now_ms() / 1000,
                                removed: true,
                            };
                            g.remember_peer(&peer, &record)?;
                        } else {
                            g.forget_peer(&peer)?;
                        }
                    }
                    Command::Snapshot { chunk, reply } => {
                        result.local = true; // a finished snapshot is worth a durable commit
                        let outcome = match self.apply_snapshot(g, chunk) {
                            Ok(outcome) => outcome,
                            Err(err) => {
                                let failed = Staged::Failed(err.to_string());
                                pending_snapshot.push((reply, failed));
                                return Err(err);
                            }
                        };
                        let joined = outcome == Staged::Progress(Progress::Complete);
                        result.changed |= joined;
                        result.rescan |= joined;
                        pending_snapshot.push((reply, outcome));
                    }
                }
            }
            for chunk in batch_chunks(&local_deltas) {
                let batch = DeltaBatch::sign(&self.signer, &self.cluster, self.incarnation, chunk);
                g.log_batch(&batch)?;
                result.logged.insert(batch.origin);
                result.publish.push(batch);
            }
            for origin in std::mem::take(&mut result.logged) {
                self.prune_log(g, origin)?;
            }
            self.allocated = g.allocated().unwrap_or(self.allocated);
            g.set_head(self.counter, &self.head)?;
            Ok(result.local || self.last_durable.elapsed() >= DURABLE_EVERY)
        });
        let outcome = outcome.map(|durable| {
            if durable {
                self.last_durable = Instant::now();
            }
            self.dirty = !durable;
        });
        result.replies = pending_replies;
        result.snapshot_replies = pending_snapshot;
        result.peer_replies = pending_peers;
        (result, outcome)
    }

    /// Applies one API request's operations; all or nothing on validation, so a refused
    /// operation takes no dot.
    fn apply_local(
        &mut self,
        pins: &mut PinsTable<'_>,
        ops: Vec<LocalOp>,
        deltas: &mut Vec<Delta>,
    ) -> Result<Result<Vec<Receipt>, LocalError>, StoreError> {
        if self.read_only {
            return Ok(Err(LocalError::ReadOnly));
        }
        for op in &ops {
            match op {
                LocalOp::Pin { spec, .. } => {
                    if let Err(e) = spec.validate() {
                        return Ok(Err(e.into()));
                    }
                }
                LocalOp::Unpin { cid } => {
                    if pins_get(pins, cid)?.is_none() {
                        return Ok(Err(LocalError::NotPinned(*cid)));
                    }
                }
            }
        }
        let mut receipts = Vec::with_capacity(ops.len());
        for op in ops {
            self.counter += 1;
            let dot = Dot::new(self.actor, self.counter);
            let (cid, op) = match op {
                LocalOp::Pin { cid, spec } => (cid, Op::Pin { at: now_ms(), spec }),
                LocalOp::Unpin { cid } => (cid, Op::Unpin),
            };
            let delta = local_op(pins, &mut self.head, dot, cid, op).map_err(join_error)?;
            receipts.push(Receipt { cid, dot });
            deltas.push(delta);
        }
        Ok(Ok(receipts))
    }

    /// Stages one snapshot chunk; on the last, checks the snapshot against its head and joins
    /// it: staged entries joined, local entries it lacks pruned, contexts absorbed. The outer
    /// `Result` is a storage failure (the group aborts); the inner one a refused snapshot.
    fn apply_snapshot(
        &mut self,
        g: &mut Group<'_>,
        chunk: SnapshotChunk,
    ) -> Result<Staged, StoreError> {
        if chunk.head.is_some() {
            g.clear_staged()?;
            self.stage = Some(SnapshotStage::new());
        }
        let Some(stage) = self.stage.as_mut() else {
            return Ok(Staged::Failed(
                "a snapshot chunk arrived with no snapshot under way".into(),
            ));
        };
        let outcome = stage.accept(&mut g.staged, chunk);
        let refused = |this: &mut Self, g: &mut Group<'_>, err: Staged| {
            this.stage = None;
            g.clear_staged().map(|_| err)
        };
        match outcome {
            Err(SnapshotError::Store(e)) => Err(StoreError::Db(e.into())),
            Err(e) => Ok(refused(self, g, Staged::refused(&e))?),
            Ok(progress @ Progress::Continue { .. }) => {
                if let Some(stage) = &self.stage {
                    info!(
                        staged = stage.staged(),
                        of = stage.expected().unwrap_or(0),
                        "receiving a snapshot"
                    );
                }
                Ok(Staged::Progress(progress))
            }
            Ok(Progress::Complete) => {
                let stage = self.stage.take().unwrap_or_default();
                let remote = match stage.finish::<TableError>() {
                    Ok(head) => head,
                    Err(e) => return refused(self, g, Staged::refused(&e)),
                };
                let local_only = g.unstaged_keys()?;
                let head = &mut self.head;
                g.join_staged(|pins, cid, entry| {
                    join_encoded_entry(pins, head, cid, entry, &remote.context)
                        .map(|_| ())
                        .map_err(join_error)
                })?;
                for cid in local_only {
                    prune_entry(&mut g.pins, &mut self.head, &cid, &remote.context)
                        .map_err(join_error)?;
                }
                self.head.absorb(&remote.context, &remote.applied);
                // Dots of ours the snapshot knows (we were restored from an old backup, or the
                // sender lies) must never be issued again.
                let ours = self.head.context.max(self.actor);
                if ours > self.counter {
                    warn!(
                        counter = self.counter,
                        ours, "snapshot holds dots of ours we had forgotten; skipping past them"
                    );
                    self.counter = ours;
                }
                g.clear_staged()?;
                Ok(Staged::Progress(Progress::Complete))
            }
        }
    }

    /// Deletes `origin`'s batches that lie wholly below its newest `log_retention` deltas.
    fn prune_log(&self, g: &mut Group<'_>, origin: ActorId) -> Result<(), StoreError> {
        let newest = self.head.applied.max(origin);
        match newest.checked_sub(self.log_retention) {
            Some(c) => g.prune_log(origin, c + 1),
            None => Ok(()),
        }
    }

    fn apply_remote(
        &mut self,
        g: &mut Group<'_>,
        from: PeerId,
        batch: DeltaBatch,
        result: &mut GroupResult,
    ) -> Result<(), StoreError> {
        if batch.origin == self.actor {
            // Our own deltas coming back (repair from a peer after a restore): already applied
            // or, if the database was restored from backup, unknowable; skip.
            return Ok(());
        }
        let mut any_new = false;
        for delta in batch.deltas() {
            let outcome =
                pinset::apply_delta(&mut g.pins, &mut self.head, &delta).map_err(join_error)?;
            any_new |= outcome.new;
            result.changed |= outcome.changed;
            if outcome.changed {
                result.touched.push(delta.change.cid);
            }
        }
        if any_new {
            if g.log_batch(&batch)? {
                result.logged.insert(batch.origin);
            }
            // A hole below this batch: ask the sender (who had it) after the repair delay.
            if let Some(ranges) = self.head.applied.actor(batch.origin) {
                let gaps = ranges.gaps();
                if !gaps.is_empty() {
                    result.repairs.push(Output::Repair {
                        peer: from,
                        origin: batch.origin,
                        ranges: gaps,
                    });
                }
            }
        }
        Ok(())
    }

    fn release(&mut self, result: GroupResult) {
        // What the group did is visible (state, batches queued, changes) before anyone is told
        // it is done: a writer that reads after its acknowledgement sees its write.
        self.snapshots_joined += result
            .snapshot_replies
            .iter()
            .filter(|(_, outcome)| *outcome == Staged::Progress(Progress::Complete))
            .count() as u64;
        let mut state = state_of(
            self.actor,
            &self.head,
            (self.counter, self.incarnation),
            self.allocated,
        );
        state.snapshots_joined = self.snapshots_joined;
        self.state.send_replace(Arc::new(state));
        for batch in result.publish {
            self.emit(Output::Publish(batch));
        }
        for repair in result.repairs {
            self.emit(repair);
        }
        self.changes.send(result.touched, result.rescan);
        for (reply, outcome) in result.replies {
            let _ = reply.send(outcome);
        }
        for (reply, outcome) in result.snapshot_replies {
            let _ = reply.send(outcome);
        }
        for reply in result.peer_replies {
            let _ = reply.send(Ok(()));
        }
    }

    fn emit(&mut self, output: Output) {
        if self.outputs.try_send(output).is_err() {
            self.dropped_outputs += 1;
            warn!(
                dropped = self.dropped_outputs,
                "swarm output queue full; beacons will repair"
            );
        }
    }
}

/// Consecutive runs of `deltas` that fit one batch by count and encoded size.
fn batch_chunks(deltas: &[Delta]) -> Vec<&[Delta]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, delta) in deltas.iter().enumerate() {
        let len = codec::encoded_len(&delta.change);
        if i > start && (i - start == BATCH_CHANGES || bytes + len > BATCH_BYTES) {
            chunks.push(&deltas[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < deltas.len() {
        chunks.push(&deltas[start..]);
    }
    chunks
}

fn pins_get(pins: &PinsTable<'_>, cid: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
    use pinmesh_protocol::EntryStore;
    Ok(pins.get(&cid.to_bytes())?)
}

fn join_error(err: pinmesh_protocol::JoinError<TableError>) -> StoreError {
    err.into()
}

#[cfg(test)]
mod tests;
