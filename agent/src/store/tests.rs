use super::testing::{filled, flip_a_cid};
use super::*;

#[test]
fn a_scrub_finds_one_changed_bit() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store = filled(&dir.path().join("pinmesh.redb"));
    assert_eq!(store.scrub().expect("consistent"), 50);
    flip_a_cid(&store);
    let err = store.scrub().expect_err("damaged");
    assert!(matches!(err, StoreError::Damaged(_)), "{err}");
}

#[test]
fn a_file_much_larger_than_its_data_is_compacted() {
    let dir = tempfile::TempDir::new().expect("dir");
    let path = dir.path().join("pinmesh.redb");
    {
        let (store, _) = Store::open(&path, 4 << 20).expect("open");
        let value = vec![7u8; 4096];
        let txn = store.db().begin_write().expect("write");
        {
            let mut stage = txn.open_table(STAGE).expect("stage");
            for n in 0..4_000u32 {
                stage
                    .insert(n.to_be_bytes().as_slice(), value.as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
        let txn = store.db().begin_write().expect("write");
        txn.open_table(STAGE)
            .expect("stage")
            .retain(|_, _| false)
            .expect("clear");
        txn.commit().expect("commit");
    }
    let bloated = std::fs::metadata(&path).expect("file").len();
    let mut db = redb::Builder::new().create(&path).expect("open");
    compact_if_bloated(&mut db, &path, 0).expect("compact");
    drop(db);
    let compacted = std::fs::metadata(&path).expect("file").len();
    assert!(
        compacted * 2 < bloated,
        "{bloated} bytes before, {compacted} after"
    );
}

#[test]
fn a_database_of_a_newer_layout_is_refused_with_one_line_and_left_as_it_is() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    let store = filled(&path);
    let txn = store.db().begin_write().expect("write");
    txn.open_table(META)
        .expect("meta")
        .insert(migrate::META_LAYOUT, 99u64.to_le_bytes().as_slice())
        .expect("layout");
    txn.commit().expect("commit");
    drop(store);
    let err = Store::open(&path, 4 << 20).expect_err("a newer layout opens");
    let text = err.to_string();
    assert!(text.contains("layout 99") && !text.contains('\n'), "{text}");
    // Nothing was changed: the layout is still the newer one, the pins all there.
    assert_eq!(stored_layout(&path), Some(99));
    let db = redb::Database::open(&path).expect("open");
    let txn = db.begin_read().expect("read");
    let pins = txn.open_table(PINS).expect("pins");
    assert_eq!(redb::ReadableTableMetadata::len(&pins).expect("len"), 50);
}

/// The layout number a database file records.
fn stored_layout(path: &Path) -> Option<u64> {
    let db = redb::Database::open(path).expect("open");
    let txn = db.begin_read().expect("read");
    let meta = txn.open_table(META).expect("meta");
    let layout = meta.get(migrate::META_LAYOUT).expect("get")?;
    read_u64(layout.value())
}

#[test]
fn a_database_records_its_layout() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db");
    drop(filled(&path));
    assert_eq!(stored_layout(&path), Some(migrate::LAYOUT));
}

/// `PeerRecord` as the releases before `peers rm` wrote and read it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PeerRecordBefore {
    #[serde(with = "crate::text::lenient_list")]
    addrs: Vec<libp2p::Multiaddr>,
    last_seen: u64,
}

#[test]
fn a_removed_peer_is_recorded_in_a_field_older_releases_skip() {
    let addrs: Vec<libp2p::Multiaddr> = vec!["/ip4/10.0.0.1/tcp/9096".parse().expect("addr")];
    let before = PeerRecordBefore {
        addrs: addrs.clone(),
        last_seen: 7,
    };
    let known = PeerRecord {
        addrs: addrs.clone(),
        last_seen: 7,
        removed: false,
    };
    // A peer that is not removed is stored byte for byte as before, and read back.
    let old_bytes = codec::encode_stored(&before);
    assert_eq!(codec::encode_stored(&known), old_bytes);
    let read: PeerRecord = codec::decode_stored(&old_bytes).expect("an older record");
    assert_eq!(read, known);
    // A removed one reads, in an older release, as the peer it was (the rollback caveat).
    let removed = PeerRecord {
        removed: true,
        ..known
    };
    let bytes = codec::encode_stored(&removed);
    let older: PeerRecordBefore = codec::decode_stored(&bytes).expect("an older release reads it");
    assert_eq!(older, before);
    assert_eq!(
        codec::decode_stored::<PeerRecord>(&bytes).expect("read"),
        removed
    );
}
