//! `pinmesh run --resync`: replaces a damaged database with a fresh one that rejoins the
//! cluster by snapshot, keeping what cannot be had from peers.
//!
//! The damaged file is renamed, never deleted. From it, where it can still be read, the new
//! database takes the reconciler's records of pins this agent made in its IPFS node (so they are
//! still removed when the pinset no longer wants them, not leaked), the remembered peers (so
//! the agent finds the cluster again) and their stored metrics (so its partition guard still
//! counts them). The pinset itself comes from the peers: writes this
//! agent acknowledged but no peer received before the damage are lost.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anyhow::Context;
use redb::{ReadableDatabase, ReadableTable};

use super::records::{PinState, decode_state};
use super::{METRICS, PEERS, STATUS, Store};

/// What a resync did.
#[derive(Debug)]
pub struct Resynced {
    /// Where the damaged database was moved.
    pub kept: PathBuf,
    /// Reconciler records carried over (pins this agent made in its IPFS node).
    pub owned: usize,
    /// Remembered peers carried over.
    pub peers: usize,
    /// Why nothing could be read from the damaged file, if so.
    pub unreadable: Option<String>,
}

type Rows<K> = Vec<(K, Vec<u8>)>;
/// The peers' records and their stored metrics, keyed by peer id.
type PeerRows = (Rows<String>, Rows<String>);

/// Moves the database at `path` aside and creates a fresh one holding the status records that
/// `keep_status` accepts (records it cannot decode are left behind) and the peer records of the old one. Fails
/// without changing anything when the database is in use (the agent is running).
/// With `need_peers`, a damaged file that names no peer is refused (nothing changed): the
/// fresh agent would find nobody to fetch the pinset from.
pub fn resync(
    path: &Path,
    cache_bytes: usize,
    need_peers: bool,
    keep_status: impl Fn(&PinState) -> bool,
) -> anyhow::Result<Resynced> {
    if !path.exists() {
        anyhow::bail!("{} does not exist: nothing to resync", path.display());
    }
    // Reading a damaged file may fail or panic anywhere inside redb: whatever it yields.
    let read = catch_unwind(AssertUnwindSafe(|| read_salvage(path, &keep_status)));
    let (owned, (peers, metrics), unreadable) = match read {
        Ok(Ok((owned, peers))) => (owned, peers, None),
        Ok(Err(err)) if err.in_use => anyhow::bail!(
            "{} is in use: stop the running agent before resyncing",
            path.display()
        ),
        Ok(Err(err)) => (Vec::new(), Default::default(), Some(err.message)),
        Err(_) => (
            Vec::new(),
            Default::default(),
            Some("reading it crashed inside the database library".into()),
        ),
    };
    if need_peers && peers.is_empty() {
        anyhow::bail!(
            "{} names no peer to fetch the pinset from, and none is configured: pass \
             `--bootstrap MULTIADDR` of a member with --resync (nothing was changed)",
            path.display()
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = path.with_extension(format!("redb.damaged-{stamp}"));
    std::fs::rename(path, &kept)
        .with_context(|| format!("cannot move {} aside", path.display()))?;
    let (store, _) = Store::open(path, cache_bytes)
        .with_context(|| format!("cannot create a new {}", path.display()))?;
    let txn = store.db().begin_write()?;
    {
        let mut status = txn.open_table(STATUS)?;
        for (key, value) in &owned {
            status.insert(key.as_slice(), value.as_slice())?;
        }
        for (def, rows) in [(PEERS, &peers), (METRICS, &metrics)] {
            let mut table = txn.open_table(def)?;
            for (peer, record) in rows {
                table.insert(peer.as_str(), record.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(Resynced {
        kept,
        owned: owned.len(),
        peers: peers.len(),
        unreadable,
    })
}

struct SalvageError {
    in_use: bool,
    message: String,
}

fn read_salvage(
    path: &Path,
    keep_status: &dyn Fn(&PinState) -> bool,
) -> Result<(Rows<Vec<u8>>, PeerRows), SalvageError> {
    let fail = |err: &dyn std::fmt::Display| SalvageError {
        in_use: false,
        message: err.to_string(),
    };
    // Read-only: opening it for writing could "repair" the damaged file before it is kept.
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(SalvageError {
                in_use: true,
                message: String::new(),
            });
        }
        Err(err) => return Err(fail(&err)),
    };
    let txn = db.begin_read().map_err(|e| fail(&e))?;
    let mut owned = Vec::new();
    // Each table on its own: a damaged one does not cost the other.
    if let Ok(table) = txn.open_table(STATUS)
        && let Ok(rows) = table.iter()
    {
        for (key, value) in rows.map_while(Result::ok) {
            if decode_state(value.value()).is_ok_and(|state| keep_status(&state)) {
                owned.push((key.value().to_vec(), value.value().to_vec()));
            }
        }
    }
    let keyed_by_peer = |def: redb::TableDefinition<&str, &[u8]>| {
        let mut out = Vec::new();
        if let Ok(table) = txn.open_table(def)
            && let Ok(rows) = table.iter()
        {
            for (key, value) in rows.map_while(Result::ok) {
                out.push((key.value().to_string(), value.value().to_vec()));
            }
        }
        out
    };
    Ok((owned, (keyed_by_peer(PEERS), keyed_by_peer(METRICS))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Status;

    fn cid(n: u64) -> pinmesh_protocol::Cid {
        pinmesh_protocol::sim::sim_cid(n)
    }

    #[test]
    fn a_resync_keeps_the_old_file_and_carries_over_owned_records_peers_and_metrics() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("pinmesh.redb");
        {
            let (store, _) = Store::open(&path, 4 << 20).expect("open");
            let record = |owned| PinState {
                status: Status::Pinned,
                owned,
                attempts: 0,
                error: None,
                updated_ms: 1,
            };
            let (owned, other) = (record(true), record(false));
            store
                .write_statuses([(&cid(1), &owned), (&cid(2), &other)], true)
                .expect("statuses");
            let peer = super::super::PeerRecord {
                addrs: vec!["/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr")],
                last_seen: 1,
                removed: false,
            };
            let metric = super::super::StoredMetric {
                metric: b"a metric".to_vec(),
                seen_ms: 1,
            };
            store
                .write_group(|g| {
                    g.remember_peer(&libp2p::PeerId::random(), &peer)?;
                    g.remember_metric(&libp2p::PeerId::random(), &metric)?;
                    Ok(true)
                })
                .expect("peer");
            // In use: refused, nothing moved.
            let err = resync(&path, 4 << 20, false, |_| true).expect_err("in use");
            assert!(err.to_string().contains("in use"), "{err}");
        }
        let done = resync(&path, 4 << 20, true, |state| state.owned).expect("resync");
        assert_eq!((done.owned, done.peers, done.unreadable), (1, 1, None));
        assert!(done.kept.exists(), "the damaged file is kept");
        let (store, persisted) = Store::open(&path, 4 << 20).expect("reopen");
        assert_eq!(persisted.head.pins, 0, "a fresh pinset");
        let reader = store.reader().expect("read");
        assert!(reader.status(&cid(1)).expect("get").is_some());
        assert!(reader.status(&cid(2)).expect("get").is_none());
        assert_eq!(store.peers().expect("peers").len(), 1);
        assert_eq!(store.metrics().expect("metrics").len(), 1);
    }

    #[test]
    fn an_unreadable_file_is_still_moved_aside() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("pinmesh.redb");
        std::fs::write(&path, b"not a database at all").expect("write");
        let err = resync(&path, 4 << 20, true, |_| true).expect_err("no peers");
        assert!(err.to_string().contains("no peer"), "{err}");
        assert!(path.exists(), "nothing moved");
        let done = resync(&path, 4 << 20, false, |_| true).expect("resync");
        assert!(done.unreadable.is_some());
        assert_eq!(
            std::fs::read(&done.kept).expect("kept"),
            b"not a database at all"
        );
        Store::open(&path, 4 << 20).expect("a fresh database");
    }
}
