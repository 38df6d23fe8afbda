//! Fixtures for tests of the store's users: real redb files.

use std::path::Path;

use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Cid, Dot, MemPinset, Op, PinSpec, codec};

use super::{META, META_HEAD, PINS, STATUS, Store};

/// A store holding 50 pins and their head, as the replica would have written them.
pub fn filled(path: &Path) -> Store {
    let mut mem = MemPinset::new();
    let actor = ActorId::derive(&[1; 32], 1);
    for n in 0..50u64 {
        let op = Op::Pin {
            at: 1,
            spec: PinSpec::named(format!("p{n}")),
        };
        mem.local(Dot::new(actor, n + 1), sim_cid(n), op);
    }
    let (store, _) = Store::open(path, 4 << 20).expect("open");
    let txn = store.db().begin_write().expect("write");
    {
        let mut pins = txn.open_table(PINS).expect("pins");
        for (cid, entry) in mem.entries().iter() {
            pins.insert(cid, entry).expect("insert");
        }
        let mut meta = txn.open_table(META).expect("meta");
        let head = codec::encode_stored(mem.head());
        meta.insert(META_HEAD, head.as_slice()).expect("head");
    }
    txn.commit().expect("commit");
    store
}

/// Moves one entry to a CID one bit away, as a flipped bit on disk would.
pub fn flip_a_cid(store: &Store) {
    let key = sim_cid(7).to_bytes();
    let mut changed = key.clone();
    *changed.last_mut().expect("bytes") ^= 1;
    let txn = store.db().begin_write().expect("write");
    {
        let mut pins = txn.open_table(PINS).expect("pins");
        let value = pins
            .remove(key.as_slice())
            .expect("remove")
            .expect("entry")
            .value()
            .to_vec();
        pins.insert(changed.as_slice(), value.as_slice())
            .expect("insert");
    }
    txn.commit().expect("commit");
}

/// Replaces the stored pinset with `mem`'s entries, as the replica would leave it after
/// applying the same operations.
pub fn write_pinset(store: &Store, mem: &MemPinset) {
    let txn = store.db().begin_write().expect("write");
    {
        let mut pins = txn.open_table(PINS).expect("pins");
        pins.retain(|_, _| false).expect("clear");
        for (cid, entry) in mem.entries().iter() {
            pins.insert(cid, entry).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

/// Replaces `cid`'s status record with bytes that do not decode, as a damaged value would.
pub fn corrupt_status(store: &Store, cid: &Cid) {
    let txn = store.db().begin_write().expect("write");
    {
        let mut statuses = txn.open_table(STATUS).expect("statuses");
        let key = cid.to_bytes();
        statuses
            .insert(key.as_slice(), [0xff_u8, 0x00, 0x13].as_slice())
            .expect("insert");
    }
    txn.commit().expect("commit");
}
