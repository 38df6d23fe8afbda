use libp2p::identity::ed25519;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{PinSpec, Response};
use tempfile::TempDir;

use super::*;
use crate::store::{Store, StoreError};

const CLUSTER: &str = "test";

/// A replica on a fresh database in `dir`, its store and what it publishes.
fn replica(dir: &TempDir, log_retention: u64) -> (ReplicaHandle, Store, mpsc::Receiver<Output>) {
    let (store, persisted) = Store::open(&dir.path().join("pinmesh.redb"), 4 << 20).expect("open");
    let (outputs, published) = mpsc::channel(OUTPUT_CAPACITY);
    let (feed, _changes) = change_feed();
    let signer = NodeSigner(ed25519::Keypair::generate());
    let (handle, _thread) = spawn(
        CLUSTER.into(),
        log_retention,
        store.clone(),
        persisted,
        signer,
        outputs,
        feed,
    )
    .expect("spawn");
    (handle, store, published)
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
