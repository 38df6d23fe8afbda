//! The reconciler's task: owns the node's pins as far as it knows them, the work queue and the
//! status records not yet written; turns events (changes, commands, claims, workers' results,
//! timers) into [`decide`](super::decide) calls, and their decisions into worker tasks and
//! status records. Store reads and commits run on blocking threads, never on the runtime.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinmesh_protocol::{Cid, PinMode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cycle::{Listing, node_after};
use super::decide::{
    Ended, Facts, Job, Next, backoff, claimed, decide, expiry_of, handover_of, have, settled,
    wanted_of,
};
use super::health::Health;
use super::queue::WorkQueue;
use super::records::Records;
use super::worker::{Claim, Outcome, Tools, Workers};
use super::{Cluster, Command, Report, Settings};
use crate::ipfs::{IpfsError, PinBackend, twin};
use crate::replica::{Changes, now_ms};
use crate::store::{PinState, Status, Store};

mod cap;
mod node;

use self::cap::Cap;

/// Claims waiting for the actor; at most one per worker.
const CLAIM_CAPACITY: usize = 64;

pub(super) struct Reconciler {
    backend: Arc<dyn PinBackend>,
    /// Whether the agent has caught up with its peers: unpins wait for it.
    synced: watch::Receiver<bool>,
    settings: Settings,
    /// The node's pins by content (see [`crate::ipfs::content_key`]): the last listing plus
    /// our own calls.
    actual: HashMap<Cid, PinMode>,
    queue: WorkQueue,
    workers: Workers,
    /// The record of each CID whose call runs, as this actor last wrote it. Only the
    /// reconciler writes records, so a claim and a job's end need no read.
    running: HashMap<Cid, Option<PinState>>,
    claims: mpsc::Receiver<Claim>,
    listing: Listing,
    health: Health,
    records: Records,
    report: watch::Sender<Report>,
    /// The last full comparison's numbers.
    cycle: Report,
    cluster: Arc<dyn Cluster>,
    /// Pins that expire later (Unix seconds), as last seen: each is looked at again when its
    /// time comes, and handed to [`Cluster::expired`]. A rewritten pin may leave an old time
    /// behind: looking at it again then is harmless.
    expiries: BTreeSet<(u64, Cid)>,
    /// A follower's storage cap, when it has one.
    cap: Option<Cap>,
}

impl Reconciler {
    pub(super) fn new(
        store: Store,
        backend: Arc<dyn PinBackend>,
        synced: watch::Receiver<bool>,
        settings: Settings,
        cluster: Arc<dyn Cluster>,
        report: watch::Sender<Report>,
    ) -> Self {
        let (claims_tx, claims) = mpsc::channel(CLAIM_CAPACITY);
        let now = Instant::now();
        let settings_cap = settings.storage_cap.map(Cap::new);
        Reconciler {
            workers: Workers::new(Tools {
                backend: backend.clone(),
                name: format!("pinmesh:{}", settings.cluster),
                limits: settings.limits,
                claims: claims_tx,
                cluster: cluster.clone(),
            }),
            records: Records::new(store, settings.role.clone()),
            backend,
            synced,
            settings,
            actual: HashMap::new(),
            queue: WorkQueue::default(),
            running: HashMap::new(),
            claims,
            listing: Listing::new(now),
            health: Health::new(now),
            report,
            cycle: Report::default(),
            cluster,
            expiries: BTreeSet::new(),
            cap: settings_cap,
        }
    }

    /// Runs until cancelled. Dropping it abandons running calls (the node finishes or times
    /// them out itself; the next start settles their statuses from a listing).
    pub(super) async fn run(
        mut self,
        mut changes: Changes,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        info!(backend = %self.backend.describe(), "reconciler started");
        let mut synced = self.synced.clone();
        loop {
            if Instant::now() >= self.listing.next_full && !self.health.down {
                self.full_cycle().await;
            } else if std::mem::take(&mut self.listing.now)
                && !self.health.down
                && let Err(err) = self.relist().await
            {
                warn!(error = %err, "cannot list the IPFS node's pins");
                self.listing.failed = Some(Instant::now());
            }
            self.expire_due(now_ms());
            if self.queue.counts().waiting_for_sync > 0 && *self.synced.borrow() {
                self.queue.release_sync_waiters(Instant::now());
            }
            self.queue.promote_due(Instant::now());
            self.read_cap().await;
            self.dispatch().await;
            if let Err(err) = self.records.flush().await {
                warn!(error = %err, "cannot record pin statuses; retrying");
            }
            self.publish_report();
            let wake = self.next_wake();
            tokio::select! {
                _ = cancel.cancelled() => break,
                batch = changes.rx.recv() => {
                    let Some(batch) = batch else { break };
                    let now = Instant::now();
                    if changes.rescan.swap(false, Ordering::AcqRel) {
                        self.listing.rescan(now);
                    }
                    for cid in batch {
                        if let Some(cap) = &mut self.cap {
                            cap.changed(&cid);
                        }
                        self.queue.enqueue_now(cid, true, now);
                    }
                    // New pins: whether the node has them needs a look after this.
                    self.listing.last_enqueued = Some(now);
                }
                Some(command) = commands.recv() => self.on_command(command).await,
                // Unpins waiting for `synced` go at the top of the loop.
                Ok(()) = synced.changed(), if self.queue.counts().waiting_for_sync > 0 => {}
                Some(first) = self.claims.recv() => {
                    // Every claim waiting shares one durable commit.
                    let mut batch = vec![first];
                    while let Ok(next) = self.claims.try_recv() {
                        batch.push(next);
                    }
                    self.claim(batch).await;
                }
                ended = self.workers.ended(), if !self.workers.is_empty() => {
                    // Every worker that is done shares one read, the next commit and dispatch.
                    self.on_ended(ended);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.health.down && Instant::now() >= self.health.next_probe {
                        self.health.next_probe = Instant::now() + self.settings.probe_interval;
                        self.probe().await;
                    }
                }
            }
        }
        if let Err(err) = self.records.flush().await {
            warn!(error = %err, "cannot record pin statuses at shutdown");
        }
        debug!("reconciler stopped");
    }

    fn publish_report(&self) {
        let counts = self.queue.counts();
        let report = Report {
            node_down: self.health.down,
            node_pins: self.actual.len() as u64,
            queued: counts.queued as u64,
            running: counts.running as u64,
            retrying: counts.retrying as u64,
            waiting_for_sync: counts.waiting_for_sync as u64,
            skipped: self.cap.as_ref().map_or(0, Cap::skipped),
            ..self.cycle.clone()
        };
        self.report.send_if_modified(|old| {
            let changed = *old != report;
            *old = report;
            changed
        });
    }

    fn next_wake(&self) -> Instant {
        if self.health.down {
            return self.health.next_probe;
        }
        let mut wake = self.listing.next_full;
        if let Some(at) = self.queue.next_retry() {
            wake = wake.min(at);
        }
        if let Some(&(at, _)) = self.expiries.first() {
            let wait = (at * 1000).saturating_sub(now_ms());
            wake = wake.min(Instant::now() + Duration::from_millis(wait));
        }
        if let Some(at) = self.cap.as_ref().and_then(Cap::next_read) {
            wake = wake.min(at);
        }
        // Only when a dispatch round could start something: before the first listing, queued
        // work waits for the first full comparison.
        let counts = self.queue.counts();
        if self.listing.started.is_some()
            && counts.queued > 0
            && counts.running < self.settings.concurrency
        {
            wake = wake.min(self.health.paced_until);
        }
        wake
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Recover { cid, reply } => {
                let cids = match cid {
                    Some(cid) => vec![cid],
                    None => self.records.errored().await.unwrap_or_else(|err| {
                        warn!(error = %err, "cannot read pin statuses");
                        Vec::new()
                    }),
                };
                let now = Instant::now();
                for cid in &cids {
                    self.queue.enqueue_now(*cid, true, now);
                }
                // An operator asking is reason enough to look at the node again.
                self.health.back(now);
                let _ = reply.send(cids.len());
            }
        }
    }

    /// Starts queued work while workers are free: CIDs are decided in rounds, each round's
    /// entries and records read in one transaction.
    async fn dispatch(&mut self) {
        if self.health.down {
            self.fail_queued().await;
            return;
        }
        if self.listing.started.is_none() {
            return;
        }
        let waiting = self.queue.counts().queued;
        let pause = self.settings.probe_interval;
        if self.listing.worth_relisting(waiting, Instant::now(), pause) {
            self.listing.now = true;
            return;
        }
        let mut started = Vec::new();
        loop {
            let free = (self.settings.concurrency).saturating_sub(self.queue.counts().running);
            let round = self.health.may_start(free, Instant::now());
            let popped: Vec<(Cid, Instant)> = std::iter::from_fn(|| self.queue.pop())
                .take(round)
                .collect();
            if popped.is_empty() {
                break;
            }
            let cids: Vec<Cid> = popped.iter().map(|(cid, _)| *cid).collect();
            let stored = match self.records.read(cids).await {
                Ok(stored) => stored,
                Err(err) => {
                    warn!(error = %err, "cannot read pins to decide on; retrying");
                    let at = Instant::now() + self.backoff(1);
                    for (cid, _) in popped {
                        self.queue.retry_at(cid, at);
                    }
                    break;
                }
            };
            let now_ms = now_ms();
            let synced = *self.synced.borrow();
            for ((cid, since), read) in popped.into_iter().zip(stored) {
                let stored = match read {
                    Ok(stored) => stored,
                    Err(err) => {
                        self.unreadable(cid, &err);
                        continue;
                    }
                };
                let was_pinned = stored.state.as_ref().map(|s| s.status) == Some(Status::Pinned);
                let mut latest = stored.state.clone();
                let versions = stored.versions.as_deref();
                let now_secs = now_ms / 1000;
                if let Some(at) = versions.and_then(expiry_of)
                    && at > now_secs
                {
                    self.expiries.insert((at, cid));
                }
                let role = self.records.role();
                let held = have(&self.actual, &cid);
                let facts = Facts {
                    wanted: versions.and_then(|v| wanted_of(&cid, v, now_secs, role)),
                    handover: versions.and_then(|v| handover_of(&cid, v, now_secs, role)),
                    have: held,
                    state: stored.state,
                    synced,
                    listed_fresh: self.listing.since(Some(since)),
                };
                let mut decision = decide(facts, now_ms);
                // A new pin past a follower's storage cap is skipped.
                if let (Some(cap), Next::Run(Job::Pin { .. }), None) =
                    (&mut self.cap, &decision.next, held)
                    && cap.reached()
                {
                    decision = cap.skip(cid, latest.as_ref(), now_ms);
                }
                if let (Some(cap), Next::Run(Job::Pin { .. }), None) =
                    (&mut self.cap, &decision.next, held)
                {
                    cap.started();
                }
                if let Some(record) = decision.record {
                    if was_pinned && record.status == Status::UnexpectedlyUnpinned {
                        warn!(%cid, "pin disappeared from the IPFS node; pinning it again");
                    }
                    latest = Some(record.clone());
                    self.records.record(cid, record);
                }
                if decision.durable {
                    self.records.durably();
                }
                match decision.next {
                    Next::Idle => {}
                    Next::WaitForSync => self.queue.wait_for_sync(cid),
                    Next::Run(job) => {
                        self.health.started(Instant::now());
                        self.queue.start(cid);
                        started.push((cid, job, latest));
                    }
                }
            }
        }
        if started.is_empty() {
            return;
        }
        // Ownership is on disk before the node is asked: a crash between the two must not
        // leave a pin nobody will ever remove.
        if let Err(err) = self.records.flush().await {
            warn!(error = %err, "cannot record pin statuses; not starting calls");
            let now = Instant::now();
            for (cid, _, _) in started {
                self.queue.finish(&cid);
                self.queue.enqueue(cid, false, now);
            }
            return;
        }
        for (cid, job, latest) in started {
            self.running.insert(cid, latest);
            self.workers.spawn(cid, job);
        }
    }

    /// Reads the node's size for a follower's storage cap when the last reading is stale, and
    /// queues the skipped pins again (in key order) once the node is under the cap.
    async fn read_cap(&mut self) {
        let Some(cap) = &self.cap else { return };
        let now = Instant::now();
        if self.health.down || !cap.stale(now) {
            return;
        }
        let read = tokio::time::timeout(cap::READ_LIMIT, self.backend.repo_stat()).await;
        let used = match read {
            Ok(Ok(stat)) => Some(stat.repo_size),
            Ok(Err(err)) => {
                debug!(error = %err, "cannot read the node's size for follower.max_storage");
                None
            }
            Err(_) => {
                debug!("reading the node's size for follower.max_storage timed out");
                None
            }
        };
        let Some(cap) = &mut self.cap else { return };
        let again = cap.read(used, now);
        if !again.is_empty() {
            info!(
                pins = again.len(),
                "under follower.max_storage again: taking skipped pins"
            );
        }
        for cid in again {
            self.queue.enqueue(cid, false, now);
        }
    }

    /// Records, durably and in one commit, that these CIDs' pins are about to be this agent's;
    /// answers each claim whether it may go on.
    async fn claim(&mut self, claims: Vec<Claim>) {
        let now_ms = now_ms();
        let mut granted = Vec::with_capacity(claims.len());
        for (cid, reply) in claims {
            // Claims come from running calls only.
            let Some(latest) = self.running.get_mut(&cid) else {
                warn!(%cid, "a claim for a CID with no call running; not pinning");
                let _ = reply.send(false);
                continue;
            };
            let state = claimed(latest.take(), now_ms);
            *latest = Some(state.clone());
            self.records.record(cid, state);
            granted.push(reply);
        }
        if granted.is_empty() {
            return;
        }
        self.records.durably();
        let ok = match self.records.flush().await {
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

    /// Settles the CIDs whose workers ended, from the records their calls started with.
    fn on_ended(&mut self, ended: Vec<(Cid, Outcome)>) {
        for (cid, outcome) in ended {
            // Never missing; if it were, the CID is decided again after a backoff.
            let before = self.running.remove(&cid).ok_or(());
            let rerun = self.queue.finish(&cid);
            match outcome {
                Outcome::Done(job, result) => self.on_done(cid, job, result, before),
                Outcome::Died(error) => {
                    let state = settled(before, Ended::Died(error), now_ms());
                    if let Some(state) = &state {
                        let delay = self.backoff(state.attempts);
                        self.queue.retry_at(cid, Instant::now() + delay);
                    }
                    self.settle(cid, state);
                }
            }
            if rerun {
                // It changed while the call ran: decide again now (an unpin stops a failing pin).
                self.queue.enqueue_now(cid, true, Instant::now());
            }
        }
    }

    fn on_done(
        &mut self,
        cid: Cid,
        job: Job,
        result: Result<bool, IpfsError>,
        before: Result<Option<PinState>, ()>,
    ) {
        let ended = Ended::Done {
            job: &job,
            result: (result.as_ref().map(|owned| *owned)).map_err(ToString::to_string),
        };
        let state = settled(before, ended, now_ms());
        match &result {
            Ok(held) => {
                self.health.succeeded();
                node_after(&mut self.actual, &cid, &job, *held);
                if matches!(job, Job::Release(_)) && *held {
                    // Its new peers do not hold it yet: ask them again later.
                    let at = Instant::now() + self.settings.release_retry;
                    self.queue.retry_at(cid, at);
                } else {
                    debug!(%cid, ?job, "done");
                }
            }
            Err(err) => {
                let attempts = state.as_ref().map_or(1, |s| s.attempts);
                warn!(%cid, attempts, error = %err, "IPFS call failed");
                let (now, probe) = (Instant::now(), self.settings.probe_interval);
                if self.health.failed(err, now, probe) {
                    self.warn_down();
                }
                let delay = self.backoff(attempts);
                self.queue.retry_at(cid, Instant::now() + delay);
            }
        }
        let unpinned = matches!(job, Job::Unpin)
            && state.as_ref().is_some_and(|s| s.status == Status::Unpinned);
        self.settle(cid, state);
        if unpinned && let Some(twin) = twin(&cid) {
            // The same content under its other CID version may still be wanted; the node
            // counted it as held through the pin just removed. Its blocks are still local, so
            // pinning it again (as this agent's own) is immediate.
            self.queue.enqueue_now(twin, true, Instant::now());
        }
    }

    /// Looks again at the pins whose expiry has come (the reconciler unpins them at once) and
    /// hands them to the cluster, which removes them from the pinset.
    fn expire_due(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        while let Some(&(at, cid)) = self.expiries.first() {
            if at * 1000 > now_ms {
                break;
            }
            self.expiries.pop_first();
            self.queue.enqueue_now(cid, true, Instant::now());
            due.push(cid);
        }
        if !due.is_empty() {
            debug!(pins = due.len(), "pins expired");
            self.cluster.expired(due);
        }
    }

    /// A CID whose entry or status record cannot be read (a damaged value) is decided again
    /// later: nothing is done while its ownership cannot be known.
    fn unreadable(&mut self, cid: Cid, err: &str) {
        warn!(%cid, error = %err, "cannot read this CID's pin entry or status; retrying later");
        self.queue
            .retry_at(cid, Instant::now() + self.settings.retry_max);
    }

    fn backoff(&self, attempts: u32) -> Duration {
        backoff(attempts, self.settings.retry_base, self.settings.retry_max)
    }

    /// Records what a job left, or, when that is unknown (see [`settled`]), decides the CID
    /// again after a backoff.
    fn settle(&mut self, cid: Cid, state: Option<PinState>) {
        match state {
            Some(state) => self.records.record(cid, state),
            None => self.queue.retry_at(cid, Instant::now() + self.backoff(1)),
        }
    }
}
