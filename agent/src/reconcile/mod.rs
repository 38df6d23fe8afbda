//! The reconciler: drives the IPFS node until its pins match what the pinset wants here.
//!
//! Owns the records of `status-1` (written through the store) and its view of the node's
//! pins. Receives the CIDs whose entries changed from the replica's [`Changes`] feed,
//! `recover` commands from the API, and the results of its workers; emits calls to the
//! [`PinBackend`] and status records.
//!
//! - **Desired**: pinned in the pinset, not expired, allocated to this peer
//!   ([`allocated_here`]; every peer holds every pin for now).
//! - **Actual**: one streamed listing of the node's recursive and direct pins per cycle (at
//!   start, every `ipfs.relist_interval`, when the node comes back, when the change feed
//!   overflowed or a snapshot was joined), then updated from its own calls.
//! - **Ownership**: a pin this agent adds to the node is recorded as its own (durably, before
//!   the call) and named `pinmesh:<cluster>` where the node keeps names. It removes its own pins
//!   that the pinset no longer wants, never anyone else's, and removes nothing before the agent
//!   is `synced` (a stale replica must not unpin what the cluster still wants). Whether the node
//!   already had a pin is decided by a listing begun after the CID was queued, or else by
//!   asking the node about that CID; when many new pins wait, one listing is cheaper than
//!   asking about each, so the node is listed again first. A pin made by hand between that
//!   look and the agent's own `pin/add` is the one case taken for the agent's.
//! - **Pace**: at most `ipfs.concurrency` calls at once, new pins ahead of retries, exponential
//!   backoff per CID, one call per second after ten failures in a row, and when the node is
//!   down nothing but a health check every [`PROBE_INTERVAL`] until it answers.
//!
//! Every status survives restarts; a status that was in flight (`pinning`, `unpinning`) is
//! settled by the first listing after the restart.

mod decide;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinmesh_protocol::entry::winner;
use pinmesh_protocol::{Cid, PinMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::decide::Ended;
use crate::ipfs::{IpfsError, PinBackend, PinLimits, content_key, twin};
use crate::replica::{Changes, now_ms};
pub use crate::store::{PinState, Status};
use crate::store::{Store, StoreError};

/// How often a node that is down is asked whether it is back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Recover requests in flight from the API.
const COMMAND_CAPACITY: usize = 64;
/// First retry delay; doubles per attempt up to `retry_max`.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// Failures in a row after which calls are paced to one per second.
const FAILURES_BEFORE_PACING: u32 = 10;
/// Assumed cost of asking the node about one CID (two calls), against which a fresh listing is
/// weighed when many new pins wait.
const CHECK_COST: Duration = Duration::from_millis(2);
/// How long an `unpinned` record of a CID the pinset no longer has stays in `status-1` (shown
/// by `status`); full comparisons remove older ones.
pub const UNPINNED_KEEP: Duration = Duration::from_secs(24 * 3600);

impl PinState {
    fn new(status: Status, owned: bool) -> Self {
        PinState {
            status,
            owned,
            attempts: 0,
            error: None,
            updated_ms: now_ms(),
        }
    }
}

/// Reads one CID's status.
pub fn read_status(store: &Store, cid: &Cid) -> Result<Option<PinState>, StoreError> {
    store.reader()?.status(cid)
}

/// Whether this peer should hold a pin. Every peer holds every pin for now; replication
/// factors and allocations will decide here.
pub fn allocated_here(_spec: &pinmesh_protocol::PinSpec) -> bool {
    true
}

/// How the reconciler paces itself; from `[ipfs]` in the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    pub concurrency: usize,
    pub limits: PinLimits,
    pub relist_interval: Duration,
    pub retry_max: Duration,
}

/// Commands from the API.
#[derive(Debug)]
enum Command {
    /// Retry errors now: one CID, or every CID in an error status. Answers how many.
    Recover {
        cid: Option<Cid>,
        reply: oneshot::Sender<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    tx: mpsc::Sender<Command>,
    report: watch::Receiver<Report>,
}

/// What the reconciler is doing, for `debug reconciler` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node_down: bool,
    /// Pins the node holds, as far as the reconciler knows.
    pub node_pins: u64,
    /// Full comparisons done since start.
    pub cycles: u64,
    /// The last one: how long listing the node took, and comparing the listing with the
    /// pinset and the statuses.
    pub last_listed_ms: u64,
    pub last_compared_ms: u64,
    /// CIDs the last one found to look at.
    pub last_to_check: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
}

impl ReconcilerHandle {
    pub fn report(&self) -> Report {
        self.report.borrow().clone()
    }

    /// Retries errors now. Returns how many CIDs were queued.
    pub async fn recover(&self, cid: Option<Cid>) -> Option<usize> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Recover { cid, reply }).await.ok()?;
        rx.await.ok()
    }
}

/// What the pinset wants of one CID here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    mode: PinMode,
    origins: Vec<String>,
}

/// What to do about one CID, decided when a worker is free.
#[derive(Debug, Clone)]
enum Job {
    /// `owned`: the pin is this agent's already (a retry, a mode change), or a listing begun
    /// after the CID was queued showed the node without it; otherwise the worker asks first.
    Pin {
        wanted: Wanted,
        owned: bool,
    },
    Unpin,
}

/// A worker about to add a pin the node does not have: the reconciler records ownership
/// durably, then answers whether the worker may go on.
type Claim = (Cid, oneshot::Sender<bool>);
/// Claims waiting for the reconciler; at most one per worker.
const CLAIM_CAPACITY: usize = 64;

/// One call to the node, run on a worker. Returns whether the pin is this agent's.
///
/// For a pin not known to be the agent's, the node is asked first whether it already holds
/// it: the reconciler's view may be older than a pin made by hand, and a pin that was there
/// before the agent asked is not the agent's to remove.
async fn work(
    backend: Arc<dyn PinBackend>,
    cid: Cid,
    job: Job,
    name: String,
    limits: PinLimits,
    claims: mpsc::Sender<Claim>,
) -> Result<bool, IpfsError> {
    let (wanted, mut owned) = match job {
        Job::Unpin => return backend.unpin(&cid).await.map(|()| false),
        Job::Pin { wanted, owned } => (wanted, owned),
    };
    if !owned {
        let have = backend.pinned(&cid).await?;
        if satisfies(have, wanted.mode) {
            return Ok(false);
        }
        if have.is_none() {
            let (reply, granted) = oneshot::channel();
            let recorded =
                claims.send((cid, reply)).await.is_ok() && granted.await.unwrap_or(false);
            if !recorded {
                return Err(IpfsError::Refused {
                    call: "pin/add",
                    message: "not attempted: ownership could not be recorded".into(),
                });
            }
            owned = true;
        }
        // Else someone else's direct pin, made recursive by us: still theirs.
    }
    // Best effort and all at once: the content may be reachable without them.
    let dials = wanted.origins.iter().take(10).map(|origin| {
        let backend = backend.clone();
        async move {
            if let Err(err) = backend.connect(origin).await {
                debug!(%origin, error = %err, "cannot connect to a pin origin");
            }
        }
    });
    futures::future::join_all(dials).await;
    backend.pin(&cid, wanted.mode, &name, limits).await?;
    Ok(owned)
}

pub fn spawn(
    store: Store,
    backend: Arc<dyn PinBackend>,
    changes: Changes,
    synced: watch::Receiver<bool>,
    settings: Settings,
    cancel: CancellationToken,
) -> (ReconcilerHandle, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (claims_tx, claims) = mpsc::channel(CLAIM_CAPACITY);
    let (report_tx, report) = watch::channel(Report::default());
    let handle = ReconcilerHandle { tx, report };
    let reconciler = Reconciler {
        store,
        backend,
        synced,
        settings,
        actual: HashMap::new(),
        listing_started: None,
        relist_now: false,
        relist_failed: None,
        priority: VecDeque::new(),
        normal: VecDeque::new(),
        queued: HashMap::new(),
        last_enqueued: None,
        retry: BTreeMap::new(),
        retry_seq: 0,
        running: HashSet::new(),
        rerun: HashSet::new(),
        workers: JoinSet::new(),
        worker_cids: HashMap::new(),
        node_down: false,
        failures: 0,
        paced_until: Instant::now(),
        pending: HashMap::new(),
        durable: false,
        relist_at: Instant::now(),
        waiting_for_sync: HashSet::new(),
        retry_index: HashMap::new(),
        next_probe: Instant::now(),
        down_error: None,
        cycle_cost: Duration::ZERO,
        cycle_done: None,
        claims_tx,
        report: report_tx,
        cycle: Report::default(),
    };
    (handle, reconciler.run(changes, rx, claims, cancel))
}

struct Reconciler {
    store: Store,
    backend: Arc<dyn PinBackend>,
    /// Whether the agent has caught up with its peers: unpins wait for it.
    synced: watch::Receiver<bool>,
    settings: Settings,
    /// The node's pins by content (see [`content_key`]): the last listing plus our own calls.
    actual: HashMap<Cid, PinMode>,
    /// When the last complete listing began; `None` before the first.
    listing_started: Option<Instant>,
    /// Many new pins wait: list the node instead of asking about each.
    relist_now: bool,
    /// A listing for that failed then; ask about each CID for a while.
    relist_failed: Option<Instant>,
    /// New work from the change feed and recover.
    priority: VecDeque<Cid>,
    /// Work from listings and retries.
    normal: VecDeque<Cid>,
    /// Queued CIDs and when they were queued.
    queued: HashMap<Cid, Instant>,
    last_enqueued: Option<Instant>,
    /// Retries by due time (a sequence number keeps equal times apart).
    retry: BTreeMap<(Instant, u64), Cid>,
    retry_seq: u64,
    running: HashSet<Cid>,
    /// Changed while running: decide again when the worker ends.
    rerun: HashSet<Cid>,
    workers: JoinSet<(Cid, Job, Result<bool, IpfsError>)>,
    /// Which CID each worker works on, to free its slot if it fails.
    worker_cids: HashMap<tokio::task::Id, Cid>,
    node_down: bool,
    /// Failed calls in a row.
    failures: u32,
    paced_until: Instant,
    /// Status records to write with the next flush.
    pending: HashMap<Cid, PinState>,
    /// The next flush must be durable (it records ownership before a pin).
    durable: bool,
    relist_at: Instant,
    /// Unpins waiting for the agent to be synced.
    waiting_for_sync: HashSet<Cid>,
    /// Where each CID waiting in `retry` is, so one CID has one retry.
    retry_index: HashMap<Cid, (Instant, u64)>,
    /// When to ask a node that is down whether it is back.
    next_probe: Instant,
    /// Why it is down.
    down_error: Option<String>,
    /// How long the last full comparison took, and when it ended: overflow rescans wait a few
    /// times that, so a busy feed does not turn into back-to-back comparisons.
    cycle_cost: Duration,
    cycle_done: Option<Instant>,
    /// Handed to workers.
    claims_tx: mpsc::Sender<Claim>,
    report: watch::Sender<Report>,
    /// The last full comparison's numbers.
    cycle: Report,
}

impl Reconciler {
    /// Runs until cancelled. Dropping it abandons running calls (the node finishes or times
    /// them out itself; the next start settles their statuses from a listing).
    async fn run(
        mut self,
        mut changes: Changes,
        mut commands: mpsc::Receiver<Command>,
        mut claims: mpsc::Receiver<Claim>,
        cancel: CancellationToken,
    ) {
        info!(backend = %self.backend.describe(), "reconciler started");
        let mut synced = self.synced.clone();
        loop {
            if Instant::now() >= self.relist_at && !self.node_down {
                self.full_cycle().await;
            } else if std::mem::take(&mut self.relist_now)
                && !self.node_down
                && let Err(err) = self.relist().await
            {
                warn!(error = %err, "cannot list the IPFS node's pins");
                self.relist_failed = Some(Instant::now());
            }
            if !self.waiting_for_sync.is_empty() && *self.synced.borrow() {
                for cid in std::mem::take(&mut self.waiting_for_sync) {
                    self.enqueue_now(cid, false);
                }
            }
            self.promote_due_retries();
            self.dispatch();
            if let Err(err) = self.flush() {
                warn!(error = %err, "cannot record pin statuses; retrying");
            }
            self.publish_report();
            let wake = self.next_wake();
            tokio::select! {
                _ = cancel.cancelled() => break,
                batch = changes.rx.recv() => {
                    let Some(batch) = batch else { break };
                    if changes.rescan.swap(false, Ordering::AcqRel) {
                        let earliest = self
                            .cycle_done
                            .map_or_else(Instant::now, |done| done + self.cycle_cost * 4);
                        self.relist_at = self.relist_at.min(earliest.max(Instant::now()));
                    }
                    let now = Instant::now();
                    for cid in batch {
                        self.enqueue_now(cid, true);
                    }
                    // New pins: whether the node has them needs a look after this.
                    self.last_enqueued = Some(now);
                }
                Some(command) = commands.recv() => self.on_command(command),
                // Unpins waiting for `synced` go at the top of the loop.
                Ok(()) = synced.changed(), if !self.waiting_for_sync.is_empty() => {}
                Some(first) = claims.recv() => {
                    // Every claim waiting shares one durable commit.
                    let mut batch = vec![first];
                    while let Ok(next) = claims.try_recv() {
                        batch.push(next);
                    }
                    self.claim(batch);
                }
                Some(done) = self.workers.join_next_with_id(), if !self.workers.is_empty() => {
                    // Every worker that is done shares the next commit and dispatch round.
                    let mut done = Some(done);
                    while let Some(result) =
                        done.take().or_else(|| self.workers.try_join_next_with_id())
                    {
                        match result {
                            Ok((id, (cid, job, result))) => {
                                self.worker_cids.remove(&id);
                                self.on_done(cid, job, result);
                            }
                            Err(err) => {
                                warn!(error = %err, "a reconciler worker failed");
                                // Free its slot, show the failure, retry with backoff.
                                if let Some(cid) = self.worker_cids.remove(&err.id()) {
                                    self.worker_failed(cid, &err);
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.node_down && Instant::now() >= self.next_probe {
                        self.next_probe = Instant::now() + PROBE_INTERVAL;
                        self.probe().await;
                    }
                }
            }
        }
        if let Err(err) = self.flush() {
            warn!(error = %err, "cannot record pin statuses at shutdown");
        }
        debug!("reconciler stopped");
    }

    fn publish_report(&self) {
        let report = Report {
            node_down: self.node_down,
            node_pins: self.actual.len() as u64,
            queued: (self.priority.len() + self.normal.len()) as u64,
            running: self.running.len() as u64,
            retrying: self.retry.len() as u64,
            ..self.cycle.clone()
        };
        self.report.send_if_modified(|old| {
            let changed = *old != report;
            *old = report;
            changed
        });
    }

    fn next_wake(&self) -> Instant {
        if self.node_down {
            return self.next_probe;
        }
        let mut wake = self.relist_at;
        if let Some(((at, _), _)) = self.retry.first_key_value() {
            wake = wake.min(*at);
        }
        // Only when a dispatch round could start something: before the first listing, queued
        // work waits for `relist_at`.
        if self.listing_started.is_some()
            && self.has_queued()
            && self.running.len() < self.settings.concurrency
        {
            wake = wake.min(self.paced_until);
        }
        wake
    }

    /// Marks the node down, and when to look for it next.
    fn went_down(&mut self, err: &IpfsError) {
        self.down_error = Some(err.to_string());
        if !self.node_down {
            warn!(backend = %self.backend.describe(), "IPFS node is down; waiting for it");
            self.node_down = true;
            self.next_probe = Instant::now() + PROBE_INTERVAL;
        }
    }

    fn schedule_retry(&mut self, cid: Cid, at: Instant) {
        self.cancel_retry(&cid);
        self.retry_seq += 1;
        let key = (at, self.retry_seq);
        self.retry.insert(key, cid);
        self.retry_index.insert(cid, key);
    }

    fn cancel_retry(&mut self, cid: &Cid) {
        if let Some(key) = self.retry_index.remove(cid) {
            self.retry.remove(&key);
        }
    }

    /// Queues `cid` now, even if it is waiting out a backoff (a change, a recover).
    fn enqueue_now(&mut self, cid: Cid, priority: bool) {
        self.cancel_retry(&cid);
        self.waiting_for_sync.remove(&cid);
        self.enqueue(cid, priority);
    }

    fn has_queued(&self) -> bool {
        !self.priority.is_empty() || !self.normal.is_empty()
    }

    fn enqueue(&mut self, cid: Cid, priority: bool) {
        if self.running.contains(&cid) {
            self.rerun.insert(cid);
            return;
        }
        if self.queued.contains_key(&cid)
            || self.retry_index.contains_key(&cid)
            || self.waiting_for_sync.contains(&cid)
        {
            return; // already on its way, or waiting out a backoff or for `synced`
        }
        self.queued.insert(cid, Instant::now());
        if priority {
            self.priority.push_back(cid);
        } else {
            self.normal.push_back(cid);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Recover { cid, reply } => {
                let cids = match cid {
                    Some(cid) => vec![cid],
                    None => self.errored().unwrap_or_else(|err| {
                        warn!(error = %err, "cannot read pin statuses");
                        Vec::new()
                    }),
                };
                for cid in &cids {
                    self.enqueue_now(*cid, true);
                }
                // An operator asking is reason enough to look at the node again.
                self.node_down = false;
                self.failures = 0;
                self.paced_until = Instant::now();
                let _ = reply.send(cids.len());
            }
        }
    }

    /// Every CID in an error status.
    fn errored(&self) -> Result<Vec<Cid>, StoreError> {
        let reader = self.store.reader()?;
        let mut out = Vec::new();
        for item in reader.statuses(None)? {
            let (cid, state) = item?;
            if state.status.is_error() {
                out.push(cid);
            }
        }
        Ok(out)
    }

    fn promote_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.retry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let cid = entry.remove();
            self.retry_index.remove(&cid);
            self.enqueue(cid, false);
        }
    }

    /// Lists the node, then compares the whole pinset and every status with it.
    async fn full_cycle(&mut self) {
        self.relist_at = Instant::now() + self.settings.relist_interval;
        let started = Instant::now();
        if let Err(err) = self.relist().await {
            warn!(error = %err, "cannot list the IPFS node's pins; will retry");
            self.relist_at = Instant::now() + PROBE_INTERVAL;
            return;
        }
        let listed = started.elapsed();
        let store = self.store.clone();
        let actual = std::mem::take(&mut self.actual);
        let scanned = tokio::task::spawn_blocking(move || {
            let found = compare(&store, &actual).and_then(|(cids, stale)| {
                let pruned = prune(&store, &stale)?;
                if pruned > 0 {
                    debug!(pruned, "removed old records of unpinned CIDs");
                }
                Ok(cids)
            });
            (actual, found)
        })
        .await;
        let (actual, found) = match scanned {
            Ok(result) => result,
            Err(err) => {
                warn!(error = %err, "the pinset comparison failed");
                return;
            }
        };
        self.actual = actual;
        match found {
            Ok(cids) => {
                self.cycle_cost = started.elapsed();
                self.cycle_done = Some(Instant::now());
                self.cycle.cycles += 1;
                self.cycle.last_listed_ms = listed.as_millis() as u64;
                self.cycle.last_compared_ms = (started.elapsed() - listed).as_millis() as u64;
                self.cycle.last_to_check = cids.len() as u64;
                info!(
                    node_pins = self.actual.len(),
                    to_check = cids.len(),
                    listed_ms = listed.as_millis() as u64,
                    compared_ms = (started.elapsed() - listed).as_millis() as u64,
                    "compared the pinset with the IPFS node"
                );
                for cid in cids {
                    self.enqueue(cid, false);
                }
            }
            Err(err) => warn!(error = %err, "cannot read the pinset to compare it"),
        }
    }

    /// While the node is down, queued pins show the node's error (no call is made) and wait
    /// with the retries, which all go when the node is back.
    fn fail_queued(&mut self) {
        let error = self
            .down_error
            .clone()
            .unwrap_or_else(|| "IPFS node is down".into());
        while let Some(cid) = self
            .priority
            .pop_front()
            .or_else(|| self.normal.pop_front())
        {
            self.queued.remove(&cid);
            match self.lookup(&cid) {
                Ok((Some(_), state)) => {
                    let mut state = state.unwrap_or_else(|| PinState::new(Status::PinError, false));
                    if state.status != Status::PinError || state.error.as_ref() != Some(&error) {
                        state.status = Status::PinError;
                        state.error = Some(error.clone());
                        state.updated_ms = now_ms();
                        self.record(cid, state);
                    }
                }
                Ok((None, _)) => {}
                Err(err) => warn!(%cid, error = %err, "cannot read a pin"),
            }
            self.schedule_retry(cid, Instant::now() + self.settings.retry_max);
        }
    }

    /// Replaces `actual` with a fresh listing of the node's recursive and direct pins.
    async fn relist(&mut self) -> Result<(), IpfsError> {
        let started = Instant::now();
        let mut actual = HashMap::new();
        // Direct first: a recursive pin listed after it covers the same CID.
        for mode in [PinMode::Direct, PinMode::Recursive] {
            let mut sink = |cid: Cid| {
                actual.insert(content_key(&cid), mode);
            };
            if let Err(err) = self.backend.list(mode, &mut sink).await {
                if err.node_down() {
                    self.went_down(&err);
                }
                return Err(err);
            }
        }
        self.actual = actual;
        self.listing_started = Some(started);
        self.cycle.last_listed_ms = started.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Whether the last listing began after something queued at `at`: then it tells whether
    /// the node had the pin before this agent was asked for it.
    fn listed_since(&self, at: Option<Instant>) -> bool {
        match (self.listing_started, at) {
            (Some(listed), Some(at)) => listed >= at,
            _ => false,
        }
    }

    /// Starts queued work while workers are free.
    fn dispatch(&mut self) {
        if self.node_down {
            self.fail_queued();
            return;
        }
        if self.listing_started.is_none() {
            return;
        }
        // Many new pins and a stale listing: one listing costs less than asking about each.
        let waiting = self.priority.len() + self.normal.len();
        let listing_cost = Duration::from_millis(self.cycle.last_listed_ms);
        let may_relist = self
            .relist_failed
            .is_none_or(|at| at.elapsed() > PROBE_INTERVAL);
        if may_relist
            && !self.listed_since(self.last_enqueued)
            && waiting > 1
            && CHECK_COST * waiting as u32 > listing_cost
        {
            self.relist_now = true;
            return;
        }
        let mut started = Vec::new();
        while self.running.len() + started.len() < self.settings.concurrency {
            if Instant::now() < self.paced_until {
                break;
            }
            let Some(cid) = self
                .priority
                .pop_front()
                .or_else(|| self.normal.pop_front())
            else {
                break;
            };
            let queued_at = self.queued.remove(&cid);
            match self.decide(&cid, queued_at) {
                Ok(Some(job)) => {
                    if self.failures >= FAILURES_BEFORE_PACING {
                        self.paced_until = Instant::now() + Duration::from_secs(1);
                    }
                    started.push((cid, job));
                }
                Ok(None) => {}
                Err(err) => warn!(%cid, error = %err, "cannot decide what to do"),
            }
        }
        if started.is_empty() {
            return;
        }
        // Ownership is on disk before the node is asked: a crash between the two must not
        // leave a pin nobody will ever remove.
        if let Err(err) = self.flush() {
            warn!(error = %err, "cannot record pin statuses; not starting calls");
            for (cid, _) in started {
                self.enqueue(cid, false);
            }
            return;
        }
        for (cid, job) in started {
            self.running.insert(cid);
            let work = work(
                self.backend.clone(),
                cid,
                job.clone(),
                format!("pinmesh:{}", self.settings.cluster),
                self.settings.limits,
                self.claims_tx.clone(),
            );
            let handle = self.workers.spawn(async move { (cid, job, work.await) });
            self.worker_cids.insert(handle.id(), cid);
        }
    }

    /// Records, durably and in one commit, that these CIDs' pins are about to be this agent's;
    /// answers each claim whether it may go on.
    fn claim(&mut self, claims: Vec<Claim>) {
        let mut granted = Vec::with_capacity(claims.len());
        for (cid, reply) in claims {
            match self.state(&cid) {
                Ok(state) => {
                    let mut state = state.unwrap_or_else(|| PinState::new(Status::Pinning, true));
                    state.owned = true;
                    self.record(cid, state);
                    granted.push(reply);
                }
                Err(err) => {
                    warn!(%cid, error = %err, "cannot read a pin status");
                    let _ = reply.send(false);
                }
            }
        }
        self.durable = true;
        let ok = match self.flush() {
            Ok(()) => true,
            Err(err) => {
                warn!(error = %err, "cannot record pin ownership; not pinning");
                false
            }
        };
        for reply in granted {
            let _ = reply.send(ok);
        }
    }

    /// Decides one CID against the pinset, its status and the node's pins; records status
    /// changes that need no call, and returns the call to make, if any.
    fn decide(&mut self, cid: &Cid, queued_at: Option<Instant>) -> Result<Option<Job>, StoreError> {
        let (wanted, state) = self.lookup(cid)?;
        let have = self.actual.get(&content_key(cid)).copied();
        let owned = state.as_ref().is_some_and(|s| s.owned);
        match wanted {
            Some(wanted) => {
                if satisfies(have, wanted.mode) {
                    if state.as_ref().map(|s| s.status) != Some(Status::Pinned) {
                        self.record(*cid, PinState::new(Status::Pinned, owned));
                    }
                    return Ok(None);
                }
                let lost = state.as_ref().map(|s| s.status) == Some(Status::Pinned);
                if lost {
                    warn!(%cid, "pin disappeared from the IPFS node; pinning it again");
                }
                let mut next = state.unwrap_or_else(|| PinState::new(Status::Queued, owned));
                // Shown until the pin is back.
                next.status = if lost {
                    Status::UnexpectedlyUnpinned
                } else {
                    Status::Pinning
                };
                next.updated_ms = now_ms();
                let absent = have.is_none() && self.listed_since(queued_at);
                // A fresh listing says the node lacks it: the pin will be ours, recorded with
                // the durable flush before the call. Otherwise the worker asks the node first
                // and claims ownership only if the pin is not there.
                let owned = owned || absent;
                if owned && !next.owned {
                    self.durable = true;
                }
                next.owned = owned;
                self.record(*cid, next);
                Ok(Some(Job::Pin { wanted, owned }))
            }
            None => {
                let Some(mut state) = state else {
                    return Ok(None);
                };
                if owned && have.is_some() {
                    if !*self.synced.borrow() {
                        // Not caught up: the cluster may still want it. Queued again once
                        // synced.
                        self.waiting_for_sync.insert(*cid);
                        return Ok(None);
                    }
                    state.status = Status::Unpinning;
                    state.updated_ms = now_ms();
                    self.record(*cid, state);
                    return Ok(Some(Job::Unpin));
                }
                if state.status != Status::Unpinned || state.owned {
                    self.record(*cid, PinState::new(Status::Unpinned, false));
                }
                Ok(None)
            }
        }
    }

    fn on_done(&mut self, cid: Cid, job: Job, result: Result<bool, IpfsError>) {
        self.running.remove(&cid);
        let unpin = matches!(job, Job::Unpin);
        let before = self.state(&cid).map_err(|err| {
            warn!(%cid, error = %err, "cannot read a pin status");
        });
        let ended = Ended::Done {
            job: &job,
            result: result
                .as_ref()
                .map(|owned| *owned)
                .map_err(ToString::to_string),
        };
        let state = decide::settled(before, ended, now_ms());
        match &result {
            Ok(_) => {
                self.failures = 0;
                match &job {
                    Job::Pin { wanted, .. } => {
                        let key = content_key(&cid);
                        let mode = match self.actual.get(&key) {
                            Some(PinMode::Recursive) => PinMode::Recursive,
                            _ => wanted.mode,
                        };
                        self.actual.insert(key, mode);
                        debug!(%cid, "pinned");
                    }
                    Job::Unpin => {
                        self.actual.remove(&content_key(&cid));
                        debug!(%cid, "unpinned");
                    }
                }
            }
            Err(err) => {
                self.failures += 1;
                let attempts = state.as_ref().map_or(1, |s| s.attempts);
                warn!(%cid, attempts, error = %err, "IPFS call failed");
                if err.node_down() {
                    self.went_down(err);
                }
                let delay = backoff(attempts, self.settings.retry_max);
                self.schedule_retry(cid, Instant::now() + delay);
            }
        }
        let unpinned = unpin && state.as_ref().is_some_and(|s| s.status == Status::Unpinned);
        self.settle(cid, state);
        if self.rerun.remove(&cid) {
            // It changed while the call ran: decide again now (an unpin stops a failing pin).
            self.enqueue_now(cid, true);
        }
        if unpinned && let Some(twin) = twin(&cid) {
            // The same content under its other CID version may still be wanted; the node
            // counted it as held through the pin just removed. Its blocks are still local, so
            // pinning it again (as this agent's own) is immediate.
            self.enqueue_now(twin, true);
        }
    }

    /// Records what a job left, or, when that is unknown (see [`decide::settled`]), decides
    /// the CID again after a backoff.
    fn settle(&mut self, cid: Cid, state: Option<PinState>) {
        match state {
            Some(state) => self.record(cid, state),
            None => {
                let delay = backoff(1, self.settings.retry_max);
                self.schedule_retry(cid, Instant::now() + delay);
            }
        }
    }

    /// A worker ended without an answer (it panicked, e.g. inside the IPFS library on a DAG it
    /// cannot walk): the CID shows an error and is retried with backoff like a failed call.
    fn worker_failed(&mut self, cid: Cid, err: &tokio::task::JoinError) {
        self.running.remove(&cid);
        let before = self.state(&cid).map_err(|read| {
            warn!(%cid, error = %read, "cannot read a pin status");
        });
        let state = decide::settled(before, Ended::Died(err.to_string()), now_ms());
        if let Some(state) = &state {
            let delay = backoff(state.attempts, self.settings.retry_max);
            self.schedule_retry(cid, Instant::now() + delay);
        }
        self.settle(cid, state);
    }

    /// Asks a node that was down whether it is back; if so, retries everything waiting.
    async fn probe(&mut self) {
        match self.backend.id().await {
            Ok(_) => {
                info!(backend = %self.backend.describe(), "IPFS node is back");
                self.node_down = false;
                self.failures = 0;
                self.paced_until = Instant::now();
                self.retry_index.clear();
                let waiting: Vec<Cid> = std::mem::take(&mut self.retry).into_values().collect();
                for cid in waiting {
                    self.enqueue(cid, false);
                }
                // It may have lost or gained pins while away.
                self.relist_at = Instant::now();
            }
            Err(err) => debug!(error = %err, "IPFS node still down"),
        }
    }

    /// What the pinset wants of `cid` here, and its status (a pending write, else the stored
    /// one), from one read transaction.
    fn lookup(&self, cid: &Cid) -> Result<(Option<Wanted>, Option<PinState>), StoreError> {
        let reader = self.store.reader()?;
        let wanted = match reader.versions(cid)? {
            Some(versions) => wanted_of(&versions, now_ms() / 1000),
            None => None,
        };
        let state = match self.pending.get(cid) {
            Some(pending) => Some(pending.clone()),
            None => reader.status(cid)?,
        };
        Ok((wanted, state))
    }

    /// The status to build on: a pending write, else the stored one.
    fn state(&self, cid: &Cid) -> Result<Option<PinState>, StoreError> {
        match self.pending.get(cid) {
            Some(pending) => Ok(Some(pending.clone())),
            None => read_status(&self.store, cid),
        }
    }

    fn record(&mut self, cid: Cid, state: PinState) {
        self.pending.insert(cid, state);
    }

    /// Writes pending status records in one transaction.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let durable = self.durable;
        self.write_pending(durable)?;
        self.durable = false;
        Ok(())
    }

    fn write_pending(&mut self, durable: bool) -> Result<(), StoreError> {
        self.store.write_statuses(&self.pending, durable)?;
        // Only now: a failed commit keeps them for the next flush.
        self.pending.clear();
        Ok(())
    }
}

/// What the newest version of a CID's entry wants here; `None` when nothing (unpinned,
/// expired, allocated elsewhere).
fn wanted_of(versions: &[pinmesh_protocol::Version], now_secs: u64) -> Option<Wanted> {
    let w = winner(versions)?;
    if w.spec.expire_at.is_some_and(|at| at <= now_secs) || !allocated_here(&w.spec) {
        return None;
    }
    Some(Wanted {
        mode: w.spec.mode,
        origins: w.spec.origins.clone(),
    })
}

/// Whether what the node has (`have`) is what is wanted: a recursive pin covers a direct one.
fn satisfies(have: Option<PinMode>, want: PinMode) -> bool {
    match (have, want) {
        (None, _) => false,
        (Some(PinMode::Recursive), _) => true,
        (Some(PinMode::Direct), want) => want == PinMode::Direct,
    }
}

fn backoff(attempts: u32, max: Duration) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    (RETRY_BASE * factor).min(max)
}

/// A record that only says a CID nobody wants was unpinned, longer ago than [`UNPINNED_KEEP`].
fn stale(state: &PinState, now_ms: u64) -> bool {
    state.status == Status::Unpinned
        && !state.owned
        && state.updated_ms + (UNPINNED_KEEP.as_millis() as u64) < now_ms
}

/// What [`compare`] finds: CIDs to look at, and CIDs of stale records.
type Compared = (Vec<Cid>, Vec<Cid>);

/// The CIDs whose status may not match the pinset and the node (the whole pinset and every
/// status record compared against `actual`), and the [`stale`] records of CIDs the pinset does
/// not want. Runs on a blocking thread.
fn compare(store: &Store, actual: &HashMap<Cid, PinMode>) -> Result<Compared, StoreError> {
    let reader = store.reader()?;
    let now_ms = now_ms();
    let now = now_ms / 1000;
    let mut out = Vec::new();
    let mut old = Vec::new();
    for item in reader.entries_with_status(None)? {
        let (cid, versions, state) = item?;
        let have = actual.get(&content_key(&cid)).copied();
        let settled = match wanted_of(&versions, now) {
            Some(w) => satisfies(have, w.mode) && state.is_some_and(|s| s.status == Status::Pinned),
            None => {
                if state.as_ref().is_some_and(|s| stale(s, now_ms)) {
                    old.push(cid);
                }
                state.is_none_or(|s| !s.owned && s.status == Status::Unpinned)
            }
        };
        if !settled {
            out.push(cid);
        }
    }
    for item in reader.statuses(None)? {
        let (cid, state) = item?;
        if reader.has_entry(&cid)? {
            continue; // compared above
        }
        if stale(&state, now_ms) {
            old.push(cid);
        } else if state.owned || state.status != Status::Unpinned {
            out.push(cid);
        }
    }
    Ok((out, old))
}

/// Removes the records `compare` found stale, each only if it still is (a CID pinned again
/// since has a newer record). Returns how many went.
fn prune(store: &Store, cids: &[Cid]) -> Result<usize, StoreError> {
    let now_ms = now_ms();
    store.remove_statuses_if(cids, |state| stale(state, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recursive_pin_covers_a_direct_one_but_not_the_reverse() {
        assert!(satisfies(Some(PinMode::Recursive), PinMode::Direct));
        assert!(satisfies(Some(PinMode::Recursive), PinMode::Recursive));
        assert!(satisfies(Some(PinMode::Direct), PinMode::Direct));
        assert!(!satisfies(Some(PinMode::Direct), PinMode::Recursive));
        assert!(!satisfies(None, PinMode::Direct));
    }

    #[test]
    fn old_unpinned_records_of_unwanted_cids_are_pruned_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(&dir.path().join("db.redb"), 4 << 20).expect("store");
        let cid = |n: u8| {
            Cid::new_v1(
                0x55,
                cid::multihash::Multihash::wrap(0x12, &[n; 32]).expect("hash"),
            )
        };
        let long_ago = now_ms() - UNPINNED_KEEP.as_millis() as u64 - 1000;
        let record = |status, owned, updated_ms| PinState {
            updated_ms,
            ..PinState::new(status, owned)
        };
        let records = [
            (cid(1), record(Status::Unpinned, false, long_ago)), // stale
            (cid(2), record(Status::Unpinned, false, now_ms())), // recent
            (cid(3), record(Status::Unpinned, true, long_ago)),  // still ours to remove
            (cid(4), record(Status::PinError, false, long_ago)), // an error to show
        ];
        let written = records.iter().map(|(cid, state)| (cid, state));
        store.write_statuses(written, true).expect("write");

        let (_, stale) = compare(&store, &HashMap::new()).expect("compare");
        assert_eq!(stale, vec![cid(1)]);
        assert_eq!(prune(&store, &stale).expect("prune"), 1);
        let reader = store.reader().expect("read");
        for (cid_n, _) in &records {
            let kept = reader.status(cid_n).expect("read").is_some();
            assert_eq!(kept, *cid_n != cid(1), "{cid_n}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(2));
        assert_eq!(backoff(4, max), Duration::from_secs(8));
        assert_eq!(backoff(30, max), max);
    }

    #[test]
    fn status_names_are_the_documented_ones() {
        assert_eq!(
            Status::UnexpectedlyUnpinned.to_string(),
            "unexpectedly_unpinned"
        );
        assert_eq!(Status::PinError.to_string(), "pin_error");
    }
}
