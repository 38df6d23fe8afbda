use std::time::Duration;

use libp2p::PeerId;
use pinmesh_protocol::SnapshotChunk;

use super::*;
use crate::store::testing::{filled, flip_a_cid};
use crate::store::{Store, StoreError};

/// Serves a whole snapshot in chunks of 8 entries; the error of the first chunk that fails.
fn serve_all(store: &Store) -> Result<u64, ServeError> {
    let snapshots = Snapshots::default();
    let peer = PeerId::random();
    let (mut id, mut after, mut entries) = (None, None::<Vec<u8>>, 0);
    loop {
        let chunk = snapshots.chunk(store, &peer, id, after.as_deref(), 8, 1 << 20)?;
        entries += chunk.entries.len() as u64;
        match chunk.next {
            Some(next) => {
                id = Some(chunk.snapshot_id);
                after = Some(next.to_vec());
            }
            None => return Ok(entries),
        }
    }
}

/// Asks for a chunk of at most 10 entries.
fn chunk(
    store: &Store,
    snapshots: &Snapshots,
    peer: &PeerId,
    id: Option<u64>,
    after: Option<&[u8]>,
) -> Result<SnapshotChunk, ServeError> {
    snapshots.chunk(store, peer, id, after, 10, 1 << 20)
}

#[test]
fn a_snapshot_continues_only_for_its_peer_and_only_from_its_cursor() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = filled(&dir.path().join("pinmesh.redb"));
    let snapshots = Snapshots::default();
    let (a, b) = (PeerId::random(), PeerId::random());
    let first = chunk(&store, &snapshots, &a, None, None).expect("first chunk");
    assert_eq!(first.entries.len(), 10);
    assert_eq!(first.head.as_ref().map(|h| h.pins), Some(50));
    let id = first.snapshot_id;
    let cursor = first.next.expect("more follow").to_vec();
    let unknown =
        |r: Result<SnapshotChunk, ServeError>| matches!(r, Err(ServeError::Unknown(i)) if i == id);
    assert!(
        unknown(chunk(&store, &snapshots, &b, Some(id), Some(&cursor))),
        "another peer"
    );
    assert!(
        unknown(chunk(&store, &snapshots, &a, Some(id), None)),
        "from the start again"
    );
    let mut skipped = cursor.clone();
    skipped.push(0);
    assert!(
        unknown(chunk(&store, &snapshots, &a, Some(id), Some(&skipped))),
        "a skip"
    );
    // Refusals leave the snapshot as it was: it goes on from its cursor, to the end.
    let second = chunk(&store, &snapshots, &a, Some(id), Some(&cursor)).expect("second");
    assert!(second.head.is_none());
    assert!(second.entries[0].cid.to_bytes() > cursor);
    assert!(
        unknown(chunk(&store, &snapshots, &a, Some(id), Some(&cursor))),
        "a repeat"
    );
    let (mut after, mut served) = (second.next.map(|n| n.to_vec()), 20);
    while let Some(cursor) = after {
        let next = chunk(&store, &snapshots, &a, Some(id), Some(&cursor)).expect("next");
        served += next.entries.len();
        after = next.next.map(|n| n.to_vec());
    }
    assert_eq!(served, 50);
    assert!(
        unknown(chunk(&store, &snapshots, &a, Some(id), None)),
        "released at its end"
    );
}

#[test]
fn snapshots_open_at_once_are_limited_and_a_peer_starting_again_replaces_its_own() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = filled(&dir.path().join("pinmesh.redb"));
    let snapshots = Snapshots::default();
    let peers: Vec<PeerId> = (0..=MAX_OPEN_SNAPSHOTS).map(|_| PeerId::random()).collect();
    let ids: Vec<u64> = peers[..MAX_OPEN_SNAPSHOTS]
        .iter()
        .map(|p| {
            chunk(&store, &snapshots, p, None, None)
                .expect("within the limit")
                .snapshot_id
        })
        .collect();
    let busy = chunk(&store, &snapshots, &peers[MAX_OPEN_SNAPSHOTS], None, None);
    assert!(matches!(busy, Err(ServeError::Busy)), "{busy:?}");
    // Peer 0 starts again: its old snapshot goes, so it is not busy.
    let again = chunk(&store, &snapshots, &peers[0], None, None).expect("replaces its own");
    assert_ne!(again.snapshot_id, ids[0]);
    let old = chunk(&store, &snapshots, &peers[0], Some(ids[0]), None);
    assert!(matches!(old, Err(ServeError::Unknown(_))), "{old:?}");
}

#[test]
fn a_snapshot_past_its_time_is_released() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = filled(&dir.path().join("pinmesh.redb"));
    let snapshots = Snapshots::default();
    let peers: Vec<PeerId> = (0..MAX_OPEN_SNAPSHOTS).map(|_| PeerId::random()).collect();
    let mut firsts = Vec::new();
    for p in &peers {
        firsts.push(chunk(&store, &snapshots, p, None, None).expect("open"));
    }
    // Peer `i` asks for the second chunk of its snapshot.
    let go_on = |i: usize| {
        let first = &firsts[i];
        let cursor = first.next.as_deref().map(|c| c.to_vec());
        chunk(
            &store,
            &snapshots,
            &peers[i],
            Some(first.snapshot_id),
            cursor.as_deref(),
        )
    };
    snapshots.backdate(SNAPSHOT_TTL - Duration::from_secs(1));
    let going_on = go_on(0);
    assert!(going_on.is_ok(), "not yet past its time: {going_on:?}");
    snapshots.backdate(Duration::from_secs(2));
    let late = go_on(1);
    assert!(matches!(late, Err(ServeError::Unknown(_))), "{late:?}");
    // Their slots are free again.
    assert!(chunk(&store, &snapshots, &PeerId::random(), None, None).is_ok());
}

#[test]
fn a_served_snapshot_finds_one_changed_bit() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = filled(&dir.path().join("pinmesh.redb"));
    assert_eq!(serve_all(&store).expect("served"), 50);
    flip_a_cid(&store);
    let err = serve_all(&store).expect_err("damaged");
    assert!(
        matches!(err, ServeError::Store(StoreError::Damaged(_))),
        "{err}"
    );
}
