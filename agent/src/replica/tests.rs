use libp2p::identity::ed25519;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{PinSpec, Response};
use tempfile::TempDir;

use super::*;
use crate::store::{AllocatedCount, Persisted, Store, StoreError};

const CLUSTER: &str = "test";

/// A replica on a fresh database in `dir`, its store and what it publishes.
fn replica(dir: &TempDir, log_retention: u64) -> (ReplicaHandle, Store, mpsc::Receiver<Output>) {
    let signer = NodeSigner(ed25519::Keypair::generate());
    let (handle, store, published, _thread) = replica_of(dir, log_retention, signer);
    (handle, store, published)
}

type ReplicaThread = std::thread::JoinHandle<Result<(), String>>;

/// A replica signing with `signer` on the database in `dir`, and its thread.
fn replica_of(
    dir: &TempDir,
    log_retention: u64,
    signer: NodeSigner,
) -> (ReplicaHandle, Store, mpsc::Receiver<Output>, ReplicaThread) {
    let (store, persisted) = Store::open(&dir.path().join("pinmesh.redb"), 4 << 20).expect("open");
    let (outputs, published) = mpsc::channel(OUTPUT_CAPACITY);
    let (feed, _changes) = change_feed();
    let settings = ReplicaSettings {
        cluster: CLUSTER.into(),
        log_retention,
        read_only: false,
    };
    let (handle, thread) =
        spawn(settings, store.clone(), persisted, signer, outputs, feed).expect("spawn");
    (handle, store, published, thread)
}

fn pin(n: u64) -> LocalOp {
    LocalOp::Pin {
        cid: sim_cid(n),
        spec: PinSpec::named(format!("p{n}")),
    }
}

/// The batches published until they hold `changes` changes (published just after the
/// write is acknowledged).
async fn batches(published: &mut mpsc::Receiver<Output>, changes: usize) -> Vec<DeltaBatch> {
    let mut out: Vec<DeltaBatch> = Vec::new();
    while out.iter().map(|b| b.changes.len()).sum::<usize>() < changes {
        if let Output::Publish(batch) = published.recv().await.expect("published") {
            out.push(batch);
        }
    }
    out
}

#[tokio::test]
async fn a_large_local_write_is_published_as_chained_signed_batches() {
    let dir = TempDir::new().expect("dir");
    let (handle, _store, mut published) = replica(&dir, 100_000);
    let n = (BATCH_CHANGES * 2 + 10) as u64;
    handle.local((0..n).map(pin).collect()).await.expect("pins");
    let batches = batches(&mut published, n as usize).await;
    assert_eq!(batches.len(), 3, "split at {BATCH_CHANGES} changes");
    let mut next = 1;
    for batch in &batches {
        batch.verify(CLUSTER).expect("signed and valid");
        assert!(batch.changes.len() <= BATCH_CHANGES);
        assert_eq!(batch.first, next, "counters follow on");
        next = batch.last().expect("not empty") + 1;
    }
    assert_eq!(next, n + 1);
}

#[tokio::test]
async fn the_log_keeps_the_newest_deltas_and_answers_truncated_below_them() {
    let dir = TempDir::new().expect("dir");
    let (handle, store, _published) = replica(&dir, 10);
    for n in 0..30 {
        handle.local(vec![pin(n)]).await.expect("pin");
    }
    let actor = handle.state().summary.actor;
    let (kept, low) = store.batches(actor.0, 1, 30, 1 << 20).expect("read log");
    assert_eq!(low, kept.first().map(|b| b.first));
    let first = kept.first().expect("some kept").first;
    assert!(
        first > 1 && first <= 21,
        "kept from {first}: the newest 10 and no more than needed"
    );
    assert_eq!(kept.last().and_then(DeltaBatch::last), Some(30));
    let answer = |from| {
        let (batches, low) = store.batches(actor.0, from, 30, 1 << 20).expect("read");
        pinmesh_protocol::catchup::deltas_answer(actor, from, batches, low)
    };
    assert!(
        matches!(answer(1), Response::Truncated { first_available, .. } if first_available == first)
    );
    assert!(
        matches!(answer(25), Response::Deltas { batches } if batches.first().is_some_and(|b| b.first <= 25))
    );
}

#[tokio::test]
async fn a_failed_group_leaves_no_trace_in_memory_or_on_disk() {
    let dir = TempDir::new().expect("dir");
    let (handle, store, mut published) = replica(&dir, 100_000);
    handle.local(vec![pin(0)]).await.expect("first pin");
    let before = handle.state();
    // A damaged entry under a CID the next write touches makes its transaction fail.
    store
        .write_group(|g| {
            use pinmesh_protocol::EntryStore;
            g.pins
                .put(&sim_cid(2).to_bytes(), &[0xff, 0x00])
                .map_err(|e| StoreError::Db(e.into()))?;
            Ok(true)
        })
        .expect("write a damaged entry");
    let err = handle
        .local(vec![pin(1), pin(2)])
        .await
        .expect_err("the group fails");
    assert!(matches!(err, LocalError::Store(_)), "{err}");
    let after = handle.state();
    assert_eq!(after.counter, before.counter, "no dot taken");
    assert_eq!(after.head.digest, before.head.digest);
    assert_eq!(after.head.pins, 1);
    // The next write takes the next dot, as if the failed one never happened.
    let receipts = handle.local(vec![pin(3)]).await.expect("later pin");
    assert_eq!(receipts[0].dot.counter, before.counter + 1);
    let reader = store.reader().expect("read");
    assert!(reader.versions(&sim_cid(1)).expect("get").is_none());
    // Published in order: the first pin's batch, then the later pin's, and nothing between.
    let mut firsts = Vec::new();
    while firsts.len() < 2 {
        match published.recv().await.expect("published") {
            Output::Publish(batch) => firsts.push((batch.first, batch.changes.len())),
            Output::Repair { .. } => {}
        }
    }
    assert_eq!(
        firsts,
        vec![(1, 1), (2, 1)],
        "nothing of the failed group went out"
    );
}

#[tokio::test]
async fn the_count_of_pins_allocated_here_is_kept_on_every_write_and_survives_a_restart() {
    let dir = TempDir::new().expect("dir");
    let key = ed25519::Keypair::generate();
    let me = PeerId::from_public_key(&key.public().into()).to_string();
    let other = PeerId::random().to_string();
    let allocated = |n: u64, peers: &[&String]| LocalOp::Pin {
        cid: sim_cid(n),
        spec: PinSpec {
            allocations: peers.iter().map(|p| p.to_string()).collect(),
            ..PinSpec::named(format!("p{n}"))
        },
    };
    let (handle, store, _published, thread) = replica_of(&dir, 100, NodeSigner(key.clone()));
    // Two for every peer, two named here, one elsewhere.
    let ops = vec![
        pin(0),
        pin(1),
        allocated(2, &[&me]),
        allocated(3, &[&other, &me]),
        allocated(4, &[&other]),
    ];
    handle.local(ops).await.expect("pins");
    assert_eq!(handle.state().allocated, 4);
    // Moved away, moved here, unpinned, rewritten with the same peers: 4 - 1 + 1 - 1 + 0.
    let ops = vec![
        allocated(2, &[&other]),
        allocated(4, &[&me]),
        LocalOp::Unpin { cid: sim_cid(0) },
        allocated(3, &[&me, &other]),
    ];
    handle.local(ops).await.expect("changes");
    assert_eq!(handle.state().allocated, 3);
    // A remote write counts too: another writer's batch moving pin 1 elsewhere (the local
    // write after it is answered once it is applied).
    let writer = NodeSigner(ed25519::Keypair::generate());
    let current = store
        .reader()
        .expect("read")
        .versions(&sim_cid(1))
        .expect("get");
    let op = Op::Pin {
        at: now_ms(),
        spec: PinSpec {
            allocations: vec![other.clone()],
            ..PinSpec::named("moved")
        },
    };
    let actor = ActorId::derive(&writer.public_key(), 1);
    let delta = Delta::new(
        Dot::new(actor, 1),
        sim_cid(1),
        op,
        &current.unwrap_or_default(),
    );
    let batch = DeltaBatch::sign(&writer, CLUSTER, 1, &[delta]);
    assert!(handle.remote(PeerId::random(), vec![batch]));
    handle.local(vec![pin(9)]).await.expect("pin");
    assert_eq!(
        handle.state().allocated,
        3,
        "one moved away, one for every peer added"
    );
    drop(handle);
    thread.join().expect("joined").expect("stopped cleanly");
    drop(store);

    // Kept across a restart, and equal to a count over every entry.
    let (store, persisted) = Store::open(&dir.path().join("pinmesh.redb"), 4 << 20).expect("open");
    let record = persisted.allocated.clone().expect("recorded with the head");
    assert_eq!((record.peer.as_str(), record.count), (me.as_str(), 3));
    let recount = Persisted {
        allocated: None,
        ..persisted.clone()
    };
    assert_eq!(store.allocated_count(&recount, &me).expect("count"), 3);
    // Recounted when the record is of another state (an older release wrote since) or of
    // another identity.
    let stale = Persisted {
        allocated: Some(AllocatedCount {
            digest: pinmesh_protocol::Digest::ZERO,
            count: 99,
            ..record.clone()
        }),
        ..persisted.clone()
    };
    assert_eq!(store.allocated_count(&stale, &me).expect("count"), 3);
    // Another identity counts its own: pins 1, 2, 3 and 9.
    assert_eq!(store.allocated_count(&persisted, &other).expect("count"), 4);
}
