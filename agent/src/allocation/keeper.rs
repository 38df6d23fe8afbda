//! The keeper: the pinset's upkeep that needs a writer but no leader. For each pin, one peer
//! does it, the same whichever peer decides: the first by rendezvous score for the pin's CID
//! among the *repinners* (the peers with a live metric, that is with an IPFS node, restricted to
//! `cluster.trusted_writers` when set). Two peers whose views differ may both act; their
//! writes are concurrent versions of one pin, and the pinset's winner rule keeps one.
//!
//! - **Repinning.** A pin allocated to a peer that has been down (no live metric) for
//!   `cluster.repin_after`, and that has fewer than its minimum of peers not lost, is allocated
//!   again: its peers not lost are kept, new ones chosen as for a new pin
//!   ([`reallocate`](super::choose::reallocate)). A peer down for less is not lost: a blip moves
//!   nothing. A peer known before a restart (its metric is stored) counts as down since the
//!   start; one never heard of counts as lost once this agent has been up `repin_after`; one
//!   removed with `peers rm` is lost at once.
//!   Guards: an agent that sees fewer than half of the allocatable peers alive repins nothing
//!   (it is probably on the small side of a split, and the large side repins), and once it
//!   sees half or more again it waits as long as it saw fewer, at most `repin_after`, before
//!   it repins ([`guard`](super::guard)); at most `cluster.repin_rate` pins per second. The
//!   peers that lose a pin keep their copy until enough of its new peers hold it (the
//!   reconciler's release).
//! - **Expiry.** The reconciler's timers unpin an expired pin on every peer at once and hand it
//!   here; the repinner of its CID removes it from the pinset. Removing it twice is harmless,
//!   so no guard applies.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use pinmesh_protocol::allocate::{repin_due, repinner};
use pinmesh_protocol::{Cid, PinSpec, PinStatus, winner};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::choose::reallocate;
use super::guard::{Allowed, Change, Guard};
use crate::reconcile::Cluster;
use crate::replica::{LocalOp, ReplicaHandle, now_ms};
use crate::store::Store;
use crate::swarm::{Allocatable, PeerMetric, Repinning, SwarmHandle};

/// Expired pins handed over by the reconciler, batches queued at most.
const EXPIRED_CAPACITY: usize = 64;
/// How long the unpin guard waits for a peer's answer.
const HOLDER_ANSWER: Duration = Duration::from_secs(10);

/// The keeper's settings, from `[cluster]`.
#[derive(Debug, Clone)]
pub struct KeeperSettings {
    pub me: PeerId,
    /// Empty: every member may write.
    pub trusted_writers: HashSet<PeerId>,
    /// Zero: no repinning.
    pub repin_after: Duration,
    pub repin_rate: u32,
    /// How often the peers' state is looked at (`cluster.metrics_interval`).
    pub check_interval: Duration,
    pub allocate_by: Vec<String>,
}

impl KeeperSettings {
    fn writer(&self) -> bool {
        self.trusted_writers.is_empty() || self.trusted_writers.contains(&self.me)
    }

    /// The peers that may repin: live, and writers.
    fn repinners(&self, live: &[(PeerId, PeerMetric)]) -> Vec<Vec<u8>> {
        (live.iter())
            .filter(|(peer, _)| {
                self.trusted_writers.is_empty() || self.trusted_writers.contains(peer)
            })
            .map(|(peer, _)| peer.to_bytes())
            .collect()
    }

    /// Whether this agent is the repinner of `cid` among `repinners`.
    fn mine(&self, cid: &Cid, repinners: &[Vec<u8>]) -> bool {
        repinner(&cid.to_bytes(), repinners).is_some_and(|p| *p == self.me.to_bytes())
    }
}

/// The reconciler's link to the cluster: asks peers about their pins over the swarm, hands
/// expired pins to the keeper.
pub struct Link {
    swarm: SwarmHandle,
    expired: mpsc::Sender<Vec<Cid>>,
}

#[async_trait::async_trait]
impl Cluster for Link {
    async fn pinned_on(&self, cid: &Cid, peers: &[PeerId]) -> usize {
        let asks = peers.iter().map(|peer| async move {
            let asked = self.swarm.pin_status(*peer, vec![*cid]);
            match tokio::time::timeout(HOLDER_ANSWER, asked).await {
                Ok(Ok(entries)) => entries
                    .iter()
                    .any(|e| e.cid == *cid && e.status == PinStatus::Pinned),
                _ => false,
            }
        });
        (futures::future::join_all(asks).await)
            .into_iter()
            .filter(|pinned| *pinned)
            .count()
    }

    fn expired(&self, cids: Vec<Cid>) {
        // A full queue drops them: the next full comparison hands them over again.
        let _ = self.expired.try_send(cids);
    }
}

/// What [`spawn`] starts: the reconciler's link, the keeper's reports, and its task.
pub struct Started<F> {
    pub link: Arc<Link>,
    /// `None` until the first look (never when repinning is off or this agent may not write).
    pub repinning: watch::Receiver<Option<Repinning>>,
    pub task: F,
}

/// Starts the keeper: the reconciler's link, and the task to run until `cancel`.
pub fn spawn(
    settings: KeeperSettings,
    store: Store,
    replica: ReplicaHandle,
    swarm: SwarmHandle,
    cancel: CancellationToken,
) -> Started<impl Future<Output = ()> + Send + 'static> {
    let (tx, rx) = mpsc::channel(EXPIRED_CAPACITY);
    let (report, repinning) = watch::channel(None);
    let link = Arc::new(Link {
        swarm: swarm.clone(),
        expired: tx,
    });
    let keeper = Keeper {
        guard: Guard::new(settings.repin_after),
        settings,
        store,
        replica,
        swarm,
        started: Instant::now(),
        last_scan: None,
        report,
    };
    Started {
        link,
        repinning,
        task: keeper.run(rx, cancel),
    }
}

struct Keeper {
    settings: KeeperSettings,
    store: Store,
    replica: ReplicaHandle,
    swarm: SwarmHandle,
    started: Instant,
    /// When the pinset was last scanned for pins to repin, and the peers lost then.
    last_scan: Option<(Instant, BTreeSet<PeerId>)>,
    guard: Guard,
    report: watch::Sender<Option<Repinning>>,
}

/// Which peers a repin counts as lost, from one look at the peers.
struct Lost {
    /// Down for `repin_after` or longer, or removed with `peers rm`.
    known: BTreeSet<PeerId>,
    /// Not heard of at all (forgotten, or not since this agent started).
    unknown_too: bool,
    live: Vec<(PeerId, PeerMetric)>,
    /// Every peer with a metric, live or down.
    heard: HashSet<PeerId>,
    /// Unix seconds of the look (pins expired by then are not repinned).
    now_secs: u64,
}

impl Lost {
    fn of(peers: Allocatable, repin_after: Duration, up_for: Duration) -> Lost {
        let known = (peers.down.iter())
            .filter(|(_, down)| *down >= repin_after)
            .map(|(peer, _)| *peer)
            .chain(peers.removed.iter().copied())
            .collect();
        let heard = (peers.live.iter().map(|(p, _)| *p))
            .chain(peers.down.iter().map(|(p, _)| *p))
            .collect();
        Lost {
            known,
            unknown_too: up_for >= repin_after,
            live: peers.live,
            heard,
            now_secs: now_ms() / 1000,
        }
    }

    fn is_lost(&self, peer: &PeerId) -> bool {
        self.known.contains(peer) || (self.unknown_too && !self.heard.contains(peer))
    }
}

impl Keeper {
    async fn run(mut self, mut expired: mpsc::Receiver<Vec<Cid>>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(cids) = expired.recv() => self.expire(cids).await,
                _ = tick.tick() => {
                    if !self.settings.repin_after.is_zero() {
                        self.check(&cancel).await;
                    }
                }
            }
        }
    }

    /// Looks at the peers; when some are lost, scans the pinset for the pins this agent must
    /// repin, and repins them at the configured rate.
    async fn check(&mut self, cancel: &CancellationToken) {
        if !self.settings.writer() {
            return;
        }
        let Some(lost) = self.look().await else {
            return;
        };
        let settings = &self.settings;
        if !settings
            .repinners(&lost.live)
            .contains(&settings.me.to_bytes())
        {
            return; // without a live metric of its own, this agent repins nothing
        }
        let now = Instant::now();
        let scan = match &self.last_scan {
            // The first scan once unknown peers may count as lost.
            None => lost.unknown_too,
            Some((at, before)) => {
                (lost.known != *before && !lost.known.is_empty())
                    || now.duration_since(*at) >= settings.repin_after
            }
        };
        if !scan {
            return;
        }
        self.last_scan = Some((now, lost.known.clone()));
        let found = {
            let store = self.store.clone();
            let settings = self.settings.clone();
            tokio::task::spawn_blocking(move || due(&store, &settings, &lost)).await
        };
        let cids = match found {
            Ok(Ok(cids)) => cids,
            Ok(Err(err)) => return warn!(error = %err, "cannot scan the pinset for pins to repin"),
            Err(err) => return warn!(error = %err, "the scan for pins to repin failed"),
        };
        if cids.is_empty() {
            return;
        }
        info!(pins = cids.len(), "repinning pins whose peers are lost");
        let rate = self.settings.repin_rate.max(1) as usize;
        let mut done = 0;
        for chunk in cids.chunks(rate) {
            let started = Instant::now();
            // Each second's work is decided on a fresh look at the peers.
            let Some(lost) = self.look().await else {
                return;
            };
            match self.repin(chunk.to_vec(), lost).await {
                Ok(n) => {
                    done += n;
                    self.report
                        .send_modify(|r| r.get_or_insert_default().repinned += n as u64);
                }
                Err(err) => return warn!(error = %err, "cannot write repinned pins"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(started + Duration::from_secs(1)) => {}
            }
        }
        info!(pins = done, "repinned");
    }

    /// The peers as the swarm sees them, unless the partition guard holds repinning back
    /// ([`guard`](super::guard)).
    async fn look(&mut self) -> Option<Lost> {
        let peers = self.swarm.allocatable().await.ok()?;
        let (live, all) = (peers.live.len(), peers.live.len() + peers.down.len());
        let up_for = self.started.elapsed();
        let (allowed, change) = self.guard.look(live, all, up_for, Instant::now());
        let lost = Lost::of(peers, self.settings.repin_after, up_for);
        let resumes_in_ms = match allowed {
            Allowed::Settling(left) => Some(left.as_millis() as u64),
            _ => None,
        };
        self.report.send_modify(|r| {
            let r = r.get_or_insert_default();
            (r.live, r.allocatable) = (live, all);
            r.paused = allowed == Allowed::Paused;
            r.resumes_in_ms = resumes_in_ms;
            r.lost = lost.known.len();
            r.uptime_ms = up_for.as_millis() as u64;
        });
        match change {
            Some(Change::Outnumbered) => warn!(
                live,
                allocatable = all,
                "fewer than half of the peers are alive; not repinning"
            ),
            Some(Change::Regained) => info!(
                live,
                allocatable = all,
                resumes_in_ms,
                "half of the peers or more are alive again; repinning resumes after a wait as \
                 long as the time below half (at most repin_after)"
            ),
            None => {}
        }
        (allowed == Allowed::Repin).then_some(lost)
    }

    /// Allocates `cids` again (each as it stands now); returns how many were written.
    async fn repin(&self, cids: Vec<Cid>, lost: Lost) -> Result<usize, String> {
        let store = self.store.clone();
        let settings = self.settings.clone();
        let ops = tokio::task::spawn_blocking(move || -> Result<Vec<LocalOp>, String> {
            let reader = store.reader().map_err(|e| e.to_string())?;
            let repinners = settings.repinners(&lost.live);
            let mut ops = Vec::new();
            for cid in cids {
                let Some(spec) = current(&reader, &cid)? else {
                    continue;
                };
                if !needs_repin(&spec, &lost) || !settings.mine(&cid, &repinners) {
                    continue;
                }
                let allocations = reallocate(
                    &cid,
                    &spec,
                    &|p| lost.is_lost(p),
                    &lost.live,
                    &settings.allocate_by,
                );
                if allocations == spec.allocations || allocations.is_empty() {
                    continue; // nobody to take it now; tried again at the next scan
                }
                debug!(%cid, from = ?spec.allocations, to = ?allocations, "repin");
                ops.push(LocalOp::Pin {
                    cid,
                    spec: PinSpec {
                        allocations,
                        ..spec
                    },
                });
            }
            Ok(ops)
        })
        .await
        .map_err(|e| e.to_string())??;
        let n = ops.len();
        if n > 0 {
            self.replica.local(ops).await.map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// Removes from the pinset the expired pins of which this agent is the repinner.
    async fn expire(&self, cids: Vec<Cid>) {
        if !self.settings.writer() {
            return;
        }
        let Ok(live) = self.swarm.live_peers().await else {
            return;
        };
        let store = self.store.clone();
        let settings = self.settings.clone();
        let ops = tokio::task::spawn_blocking(move || -> Result<Vec<LocalOp>, String> {
            let reader = store.reader().map_err(|e| e.to_string())?;
            let repinners = settings.repinners(&live);
            let now = now_ms() / 1000;
            let mut ops = Vec::new();
            for cid in cids {
                let Some(spec) = current(&reader, &cid)? else {
                    continue;
                };
                if spec.expire_at.is_some_and(|at| at <= now) && settings.mine(&cid, &repinners) {
                    ops.push(LocalOp::Unpin { cid });
                }
            }
            Ok(ops)
        })
        .await;
        match ops {
            Ok(Ok(ops)) if !ops.is_empty() => {
                let n = ops.len();
                match self.replica.local(ops).await {
                    Ok(_) => info!(pins = n, "removed expired pins from the pinset"),
                    Err(err) => warn!(error = %err, "cannot remove expired pins"),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(error = %err, "cannot read expired pins"),
            Err(err) => warn!(error = %err, "cannot read expired pins"),
        }
    }
}

/// The pin of `cid` as it stands (its winning version), if pinned.
fn current(reader: &crate::store::Reader, cid: &Cid) -> Result<Option<PinSpec>, String> {
    let versions = reader.versions(cid).map_err(|e| e.to_string())?;
    Ok(versions.and_then(|v| winner(&v).map(|w| w.spec.clone())))
}

/// Whether a pin is due a repin: allocated (not to every peer), not expired, some of its
/// peers lost and fewer than its minimum left.
fn needs_repin(spec: &PinSpec, lost: &Lost) -> bool {
    if spec.allocations.is_empty() || spec.expire_at.is_some_and(|at| at <= lost.now_secs) {
        return false;
    }
    let peers: Vec<PeerId> = (spec.allocations.iter())
        .filter_map(|p| p.parse().ok())
        .collect();
    repin_due(&peers, spec.min_copies(), |p| lost.is_lost(p))
}

/// Every pin this agent must repin: one pass over the pinset.
fn due(store: &Store, settings: &KeeperSettings, lost: &Lost) -> Result<Vec<Cid>, String> {
    let reader = store.reader().map_err(|e| e.to_string())?;
    let repinners = settings.repinners(&lost.live);
    let mut cids = Vec::new();
    for item in reader.entries(None).map_err(|e| e.to_string())? {
        let (cid, versions) = item.map_err(|e| e.to_string())?;
        let Some(w) = winner(&versions) else { continue };
        if needs_repin(&w.spec, lost) && settings.mine(&cid, &repinners) {
            cids.push(cid);
        }
    }
    Ok(cids)
}
