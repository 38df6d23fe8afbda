//! The reconciler as a whole against a fake IPFS node, over a real redb store: fast tests of
//! ownership, `synced` gating, CID version twins, errors and a node that goes away. The tests
//! in `tests/tests/reconcile.rs` prove the same against real IPFS nodes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Dot, MemPinset, Op, PinMode, PinSpec};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::ipfs::{AddInput, Added, ByteStream, IpfsError, NodeInfo, RepoStat, content_key};
use crate::replica::Changes;
use crate::store::testing::{corrupt_status, write_pinset};

/// An IPFS node in memory: pins by content, and switches for the faults a test needs.
#[derive(Default)]
struct FakeNode {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    /// By [`content_key`], as a node stores blocks.
    pins: HashMap<Cid, PinMode>,
    down: bool,
    /// `pin/add` of these fails.
    refuse: HashSet<Cid>,
    /// `pin/add` of these pins, then the call panics (a library bug on a strange DAG).
    panic_after_pin: HashSet<Cid>,
    /// `pin/add` and `pin/ls` calls about one CID, answered or not.
    cid_calls: u64,
}

impl FakeNode {
    fn with(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().expect("fake node"));
    }

    fn holds(&self, cid: &Cid) -> bool {
        self.state
            .lock()
            .expect("fake node")
            .pins
            .contains_key(&content_key(cid))
    }

    fn up(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, IpfsError> {
        let state = self.state.lock().expect("fake node");
        if state.down {
            return Err(IpfsError::Unreachable {
                url: "fake".into(),
                reason: "switched off".into(),
            });
        }
        Ok(state)
    }
}

#[async_trait]
impl PinBackend for FakeNode {
    fn describe(&self) -> String {
        "fake IPFS node".into()
    }

    async fn id(&self) -> Result<NodeInfo, IpfsError> {
        drop(self.up()?);
        Ok(NodeInfo {
            id: libp2p::PeerId::random(),
            addresses: Vec::new(),
            agent_version: "fake".into(),
        })
    }

    async fn pin(&self, cid: &Cid, mode: PinMode, _: &str, _: PinLimits) -> Result<(), IpfsError> {
        self.with(|n| n.cid_calls += 1);
        let mut state = self.up()?;
        if state.refuse.contains(cid) {
            return Err(IpfsError::Refused {
                call: "pin/add",
                message: "refused by the test".into(),
            });
        }
        let held = state.pins.entry(content_key(cid)).or_insert(mode);
        if mode == PinMode::Recursive {
            *held = mode;
        }
        let panics = state.panic_after_pin.remove(cid);
        drop(state);
        assert!(!panics, "the IPFS library panicked");
        Ok(())
    }

    async fn pinned(&self, cid: &Cid) -> Result<Option<PinMode>, IpfsError> {
        self.with(|n| n.cid_calls += 1);
        Ok(self.up()?.pins.get(&content_key(cid)).copied())
    }

    async fn unpin(&self, cid: &Cid) -> Result<(), IpfsError> {
        self.up()?.pins.remove(&content_key(cid));
        Ok(())
    }

    async fn list(
        &self,
        mode: PinMode,
        sink: &mut (dyn FnMut(Cid) + Send),
    ) -> Result<u64, IpfsError> {
        let listed: Vec<Cid> = (self.up()?.pins.iter())
            .filter(|(_, m)| **m == mode)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in &listed {
            sink(*cid);
        }
        Ok(listed.len() as u64)
    }

    async fn repo_stat(&self) -> Result<RepoStat, IpfsError> {
        Ok(RepoStat {
            repo_size: 0,
            storage_max: 0,
            path: None,
        })
    }

    async fn add(&self, _: AddInput, _: Duration) -> Result<Vec<Added>, IpfsError> {
        Err(unsupported("add"))
    }

    async fn connect(&self, _: &libp2p::Multiaddr) -> Result<(), IpfsError> {
        Ok(())
    }

    async fn cat(&self, _: &Cid) -> Result<ByteStream, IpfsError> {
        Err(unsupported("cat"))
    }
}

fn unsupported(call: &'static str) -> IpfsError {
    IpfsError::Refused {
        call,
        message: "not in the fake node".into(),
    }
}

/// The peer the reconcilers of these tests run as.
fn me() -> libp2p::PeerId {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([5; 32]).expect("key");
    key.public().to_peer_id()
}

/// The rest of the cluster, as the reconciler sees it: which CIDs the peers it asks hold, and
/// the expired pins handed over.
#[derive(Default)]
struct FakeCluster {
    /// CIDs every peer asked reports pinned.
    held: Mutex<HashSet<Cid>>,
    asked: AtomicUsize,
    expired: Mutex<Vec<Cid>>,
}

#[async_trait]
impl Cluster for FakeCluster {
    async fn pinned_on(&self, cid: &Cid, peers: &[libp2p::PeerId]) -> usize {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let held = self.held.lock().expect("lock").contains(cid);
        if held { peers.len() } else { 0 }
    }

    fn expired(&self, cids: Vec<Cid>) {
        self.expired.lock().expect("lock").extend(cids);
    }
}

/// A reconciler over a fresh store and a [`FakeNode`], and the pinset the test writes.
struct Harness {
    cluster: Arc<FakeCluster>,
    _dir: tempfile::TempDir,
    store: Store,
    node: Arc<FakeNode>,
    pinset: MemPinset,
    dots: u64,
    feed: mpsc::Sender<Vec<Cid>>,
    synced: watch::Sender<bool>,
    handle: ReconcilerHandle,
    cancel: CancellationToken,
}

impl Harness {
    /// Started, synced, and past its first listing of the node.
    async fn listed(node: FakeNode) -> Harness {
        let h = Self::start(node, true);
        h.until("the node is listed", |h| h.handle.report().cycles == 1)
            .await;
        h
    }

    fn start(node: FakeNode, synced: bool) -> Harness {
        Self::start_with(node, synced, |_| {})
    }

    fn start_with(node: FakeNode, synced: bool, adjust: impl FnOnce(&mut Settings)) -> Harness {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(&dir.path().join("db.redb"), 4 << 20).expect("store");
        let node = Arc::new(node);
        let (feed, rx) = mpsc::channel(64);
        let changes = Changes {
            rx,
            rescan: Default::default(),
        };
        let (synced_tx, synced_rx) = watch::channel(synced);
        let cancel = CancellationToken::new();
        let mut settings = Settings {
            cluster: "test".into(),
            role: Role::member(me()),
            concurrency: 4,
            limits: PinLimits {
                stall: Duration::from_secs(5),
                total: Duration::from_secs(5),
            },
            relist_interval: Duration::from_secs(3600),
            retry_max: Duration::from_millis(20),
            retry_base: Duration::from_millis(5),
            probe_interval: Duration::from_millis(20),
            release_retry: Duration::from_millis(20),
            storage_cap: None,
        };
        adjust(&mut settings);
        let cluster = Arc::new(FakeCluster::default());
        let (handle, run) = spawn(
            store.clone(),
            node.clone(),
            changes,
            synced_rx,
            settings,
            cluster.clone(),
            cancel.clone(),
        );
        tokio::spawn(run);
        Harness {
            cluster,
            _dir: dir,
            store,
            node,
            pinset: MemPinset::new(),
            dots: 0,
            feed,
            synced: synced_tx,
            handle,
            cancel,
        }
    }

    /// Applies the ops to the pinset, stores them and tells the reconciler in one change (which
    /// it decides in one round), as the replica would.
    async fn write(&mut self, ops: Vec<(Cid, Op)>) {
        let mut cids = Vec::with_capacity(ops.len());
        for (cid, op) in ops {
            self.dots += 1;
            let dot = Dot::new(ActorId::derive(&[7; 32], 1), self.dots);
            self.pinset.local(dot, cid, op);
            cids.push(cid);
        }
        write_pinset(&self.store, &self.pinset);
        self.feed.send(cids).await.expect("reconciler runs");
    }

    async fn pin(&mut self, cid: Cid) {
        self.pin_together(&[cid]).await;
    }

    async fn pin_together(&mut self, cids: &[Cid]) {
        let first = self.dots + 1;
        let pin = |n: u64| Op::Pin {
            at: first + n,
            spec: PinSpec::named("t"),
        };
        let ops = (cids.iter().zip(0..))
            .map(|(cid, n)| (*cid, pin(n)))
            .collect();
        self.write(ops).await;
    }

    async fn unpin(&mut self, cid: Cid) {
        self.write(vec![(cid, Op::Unpin)]).await;
    }

    fn status(&self, cid: &Cid) -> Option<PinState> {
        read_status(&self.store, cid).expect("read")
    }

    /// Waits until `done` holds, looking again whenever the reconciler's report changes (and
    /// every few milliseconds, for a record written without one), for at most 10 s.
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let mut report = self.handle.watch_report();
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !done(self) {
                let _ = tokio::time::timeout(Duration::from_millis(5), report.changed()).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting until {what}; report {:?}",
            self.handle.report()
        );
    }

    fn has(&self, cid: &Cid, status: Status, owned: bool) -> bool {
        self.status(cid)
            .is_some_and(|s| s.status == status && s.owned == owned)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test]
async fn the_agents_pins_are_its_own_and_unpins_wait_until_it_is_synced() {
    let mut h = Harness::start(FakeNode::default(), false);
    let (a, b) = (sim_cid(1), sim_cid(2));
    h.pin(a).await;
    h.pin(b).await;
    h.until("both are pinned as the agent's", |h| {
        h.has(&a, Status::Pinned, true) && h.has(&b, Status::Pinned, true)
    })
    .await;
    assert!(h.node.holds(&a) && h.node.holds(&b));

    h.unpin(a).await;
    h.until("the unpin waits", |h| {
        h.handle.report().waiting_for_sync == 1
    })
    .await;
    assert!(
        h.node.holds(&a),
        "nothing is removed before the agent is synced"
    );
    assert!(h.has(&a, Status::Pinned, true));

    h.synced.send(true).expect("reconciler runs");
    h.until("the unpin is done", |h| h.has(&a, Status::Unpinned, false))
        .await;
    assert!(!h.node.holds(&a));
    assert!(h.node.holds(&b));
    assert_eq!(h.handle.report().waiting_for_sync, 0);
}

#[tokio::test]
async fn a_pin_made_by_hand_is_never_the_agents_to_remove() {
    let (before, after) = (sim_cid(1), sim_cid(2));
    let node = FakeNode::default();
    node.with(|n| {
        n.pins.insert(before, PinMode::Recursive);
    });
    let mut h = Harness::listed(node).await;
    // Made after the listing: the worker finds it when it asks the node (or a listing taken
    // because two new pins wait does).
    h.node.with(|n| {
        n.pins.insert(after, PinMode::Recursive);
    });
    h.pin(before).await;
    h.pin(after).await;
    h.until("both show pinned, neither the agent's", |h| {
        h.has(&before, Status::Pinned, false) && h.has(&after, Status::Pinned, false)
    })
    .await;

    h.unpin(before).await;
    h.unpin(after).await;
    h.until("both show unpinned", |h| {
        h.has(&before, Status::Unpinned, false) && h.has(&after, Status::Unpinned, false)
    })
    .await;
    assert!(
        h.node.holds(&before) && h.node.holds(&after),
        "left as they were"
    );
}

#[tokio::test]
async fn a_refused_pin_shows_its_error_keeps_ownership_and_recovers() {
    let cid = sim_cid(1);
    let node = FakeNode::default();
    node.with(|n| {
        n.refuse.insert(cid);
    });
    let mut h = Harness::listed(node).await;
    h.pin(cid).await;
    h.until("retried a few times", |h| {
        h.status(&cid)
            .is_some_and(|s| s.status == Status::PinError && s.attempts >= 3)
    })
    .await;
    let failed = h.status(&cid).expect("record");
    assert!(
        failed.owned,
        "claimed before the call; an error keeps the claim"
    );
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("refused by the test"))
    );

    h.node.with(|n| n.refuse.clear());
    h.until("pinned after all", |h| h.has(&cid, Status::Pinned, true))
        .await;
    assert_eq!(h.status(&cid).expect("record").attempts, 0);
}

#[tokio::test]
async fn a_node_that_goes_away_turns_queued_pins_to_errors_then_pins_them_when_back() {
    let mut h = Harness::start(FakeNode::default(), true);
    let (a, b, c) = (sim_cid(1), sim_cid(2), sim_cid(3));
    h.pin(a).await;
    h.until("the first pin is done", |h| h.has(&a, Status::Pinned, true))
        .await;
    h.node.with(|n| n.down = true);
    h.pin(b).await;
    h.until("a call found the node down", |h| {
        h.handle.report().node_down
    })
    .await;
    let down_error = |h: &Harness, cid: &Cid| {
        h.status(cid).is_some_and(|s| {
            s.status == Status::PinError
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.contains("switched off"))
        })
    };
    h.until("the pin shows the node's error", |h| down_error(h, &b))
        .await;
    // Known down: a new pin shows the node's error without a call about it.
    let calls = h.node.state.lock().expect("fake node").cid_calls;
    h.pin(c).await;
    h.until("the new pin shows the node's error", |h| down_error(h, &c))
        .await;
    assert_eq!(
        h.node.state.lock().expect("fake node").cid_calls,
        calls,
        "no call while down"
    );

    h.node.with(|n| n.down = false);
    h.until("pinned once the node is back", |h| {
        h.has(&b, Status::Pinned, true) && h.has(&c, Status::Pinned, true)
    })
    .await;
    assert!(!h.handle.report().node_down);
    assert!(
        h.has(&a, Status::Pinned, true),
        "the earlier pin is untouched"
    );
}

#[tokio::test]
async fn unpinning_one_cid_version_keeps_the_content_its_twin_still_wants() {
    let raw = sim_cid(1);
    let v1 = Cid::new_v1(0x70, *raw.hash());
    let v0 = Cid::new_v0(*raw.hash()).expect("v0");
    let mut h = Harness::start(FakeNode::default(), true);
    h.pin(v1).await;
    h.until("v1 is pinned as the agent's", |h| {
        h.has(&v1, Status::Pinned, true)
    })
    .await;
    h.pin(v0).await;
    h.until("v0 is held through v1's pin", |h| {
        h.has(&v0, Status::Pinned, false)
    })
    .await;
    // Removing the agent's pin on v1 removes the content v0 wants: v0 is pinned again.
    h.unpin(v1).await;
    h.until("v1 unpinned, v0 pinned as the agent's own and held", |h| {
        h.has(&v1, Status::Unpinned, false) && h.has(&v0, Status::Pinned, true) && h.node.holds(&v0)
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_dies_after_pinning_leaves_the_pin_the_agents_to_remove() {
    let cid = sim_cid(1);
    let node = FakeNode::default();
    node.with(|n| {
        n.panic_after_pin.insert(cid);
    });
    let mut h = Harness::listed(node).await;
    h.pin(cid).await;
    h.until("pinned on the retry after the panic", |h| {
        h.has(&cid, Status::Pinned, true)
    })
    .await;
    h.unpin(cid).await;
    h.until("removed as the agent's own", |h| {
        h.has(&cid, Status::Unpinned, false)
    })
    .await;
    assert!(!h.node.holds(&cid), "not leaked");
}

#[tokio::test]
async fn recover_retries_every_error_at_once() {
    let cids = [sim_cid(1), sim_cid(2)];
    let node = FakeNode::default();
    node.with(|n| n.refuse.extend(cids));
    // No retry comes by itself during the test: only `recover` pins them.
    let hour = Duration::from_secs(3600);
    let mut h = Harness::start_with(node, true, |s| (s.retry_base, s.retry_max) = (hour, hour));
    h.until("the node is listed", |h| h.handle.report().cycles == 1)
        .await;
    for cid in cids {
        h.pin(cid).await;
    }
    h.until("both failed", |h| {
        cids.iter()
            .all(|c| h.status(c).is_some_and(|s| s.status == Status::PinError))
    })
    .await;
    h.node.with(|n| n.refuse.clear());
    let queued = h.handle.recover(None).await.expect("answered");
    assert_eq!(queued, 2, "every CID in an error status");
    h.until("both pinned", |h| {
        cids.iter().all(|c| h.has(c, Status::Pinned, true))
    })
    .await;
}

#[tokio::test]
async fn a_cid_whose_record_cannot_be_read_waits_without_holding_up_the_others() {
    let (bad, good) = (sim_cid(1), sim_cid(2));
    let mut h = Harness::listed(FakeNode::default()).await;
    corrupt_status(&h.store, &bad);
    h.pin_together(&[bad, good]).await;
    h.until("the readable one is pinned", |h| {
        h.has(&good, Status::Pinned, true)
    })
    .await;
    assert!(
        !h.node.holds(&bad),
        "nothing done while ownership is unknown"
    );
    assert!(
        read_status(&h.store, &bad).is_err(),
        "the damaged record is left as it was"
    );

    // Once it reads again (here: rewritten), the CID is decided on its next retry.
    let record = PinState {
        status: Status::Queued,
        owned: false,
        attempts: 0,
        error: None,
        updated_ms: 1,
    };
    h.store
        .write_statuses([(&bad, &record)], true)
        .expect("write");
    h.until("pinned as the agent's own", |h| {
        h.has(&bad, Status::Pinned, true)
    })
    .await;
}

#[tokio::test]
async fn a_pin_allocated_to_other_peers_is_not_pinned_here_and_shows_remote() {
    let mut h = Harness::listed(FakeNode::default()).await;
    let (here, elsewhere) = (sim_cid(1), sim_cid(2));
    let other = libp2p::PeerId::random().to_base58();
    let mine = me().to_base58();
    let pin_on = |at: u64, peers: &[&str]| {
        let mut spec = PinSpec::named("t");
        spec.allocations = peers.iter().map(|p| p.to_string()).collect();
        Op::Pin { at, spec }
    };
    // One change, decided in one round.
    h.write(vec![
        (here, pin_on(1, &[&other, &mine])),
        (elsewhere, pin_on(2, &[&other])),
    ])
    .await;
    h.until("the pin allocated here is pinned", |h| {
        h.has(&here, Status::Pinned, true)
    })
    .await;
    assert!(
        !h.node.holds(&elsewhere),
        "allocated elsewhere: never fetched"
    );
    let mut lines = Vec::new();
    status::scan_some(
        &h.store,
        &Role::member(me()),
        &[here, elsewhere],
        &mut |line| {
            lines.push(line.status);
            true
        },
    )
    .expect("status");
    assert_eq!(lines, vec![Status::Pinned, Status::Remote]);

    // Allocated away from this peer: the agent keeps its own copy, still shown pinned, while
    // the peer it went to does not hold it, asking again and again.
    h.write(vec![(here, pin_on(3, &[&other]))]).await;
    h.until("the new peer was asked three times", |h| {
        h.cluster.asked.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(h.node.holds(&here) && h.has(&here, Status::Pinned, true));
    let mut lines = Vec::new();
    status::scan_some(&h.store, &Role::member(me()), &[here], &mut |line| {
        lines.push(line.status);
        true
    })
    .expect("status");
    assert_eq!(lines, vec![Status::Pinned], "its copy is still here");
    // Once the peer holds it, the copy here goes.
    h.cluster.held.lock().expect("lock").insert(here);
    h.until("the pin no longer allocated here is removed", |h| {
        h.has(&here, Status::Unpinned, false)
    })
    .await;
    assert!(!h.node.holds(&here));
}

#[tokio::test]
async fn a_pin_is_unpinned_when_it_expires_and_handed_over_for_removal() {
    let mut h = Harness::listed(FakeNode::default()).await;
    let (expiring, staying) = (sim_cid(1), sim_cid(2));
    let at = crate::replica::now_ms() / 1000 + 2;
    let mut spec = PinSpec::named("t");
    spec.expire_at = Some(at);
    h.write(vec![
        (expiring, Op::Pin { at: 1, spec }),
        (
            staying,
            Op::Pin {
                at: 2,
                spec: PinSpec::named("t"),
            },
        ),
    ])
    .await;
    h.until("both pinned", |h| {
        h.has(&expiring, Status::Pinned, true) && h.has(&staying, Status::Pinned, true)
    })
    .await;
    // No listing comes (the relist interval is an hour): the expiry's own timer unpins it.
    h.until("the expired pin is unpinned", |h| {
        h.has(&expiring, Status::Unpinned, false)
    })
    .await;
    assert!(crate::replica::now_ms() / 1000 >= at, "not before its time");
    assert!(!h.node.holds(&expiring) && h.node.holds(&staying));
    assert_eq!(*h.cluster.expired.lock().expect("lock"), vec![expiring]);
}
