//! redb storage: the pinset's entries, its head, the delta log, known peers, snapshot staging.
//!
//! The store owns the database file; the replica is the only writer of the CRDT tables, the
//! reconciler of `status-1`. Readers (sync requests, `pin ls`, debug dumps) open their own read
//! transactions and see committed state only.
//! Every table name carries a layout version; a layout change means a new name and a named
//! migration function.

pub mod migrate;
mod resync;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pinmesh_protocol::codec::{self, DecodeError};
use pinmesh_protocol::digest::{Digest, entry_hash};
use pinmesh_protocol::snapshot::chunk_from;
use pinmesh_protocol::{DeltaBatch, EntryStore, Head, SnapshotChunk, SnapshotHead};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use self::resync::{Resynced, resync};

/// CID bytes -> canonical encoded versions (protocol `codec::encode_entry`). Never empty.
pub const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins-1");
/// Small named values; see the `META_*` keys.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
/// (origin actor, first counter) -> a signed `DeltaBatch` (storage encoding), as received.
pub const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log-1");
/// Peer id (text) -> `PeerRecord` (storage encoding).
pub const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers-1");
/// Snapshot staging, same layout as `PINS`; emptied before and after each snapshot.
pub const STAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stage-1");
/// CID bytes (as in `PINS`) -> `reconcile::PinState` (storage encoding): where the CID stands
/// on this peer's IPFS node, and whether this agent owns its pin there. Written only by the
/// reconciler.
pub const STATUS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("status-1");

/// u64 LE: this database's incarnation nonce, drawn at creation. A new database, a new actor.
pub const META_INCARNATION: &str = "incarnation";
/// u64 LE: the last counter this agent used for its own dots.
pub const META_COUNTER: &str = "counter";
/// `Head` (storage encoding): causal context, applied vector, state digest, pin count.
pub const META_HEAD: &str = "head";

/// Decodes a `PINS` value: the CID's versions.
pub fn decode_pin_entry(bytes: &[u8]) -> Result<Vec<pinmesh_protocol::Version>, StoreError> {
    codec::decode_entry(bytes).map_err(|source| StoreError::Corrupt {
        what: "pin entry",
        source,
    })
}

/// What a peer is known by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub addrs: Vec<String>,
    /// Unix seconds.
    pub last_seen: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// The stored pinset does not match its digest (found by a scrub or a snapshot served).
    #[error("{0}")]
    Damaged(String),
    #[error("corrupt {what} in the database: {source}")]
    Corrupt {
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// The database is of a layout this release does not know (`None`: unreadable).
    #[error(
        "the database is of layout {}, written by a newer pinmesh; this release reads layouts up \
         to {known}: run the newer release, or restore the backup taken before upgrading",
        found.map_or("?".to_string(), |n| n.to_string())
    )]
    Layout { found: Option<u64>, known: u64 },
}

impl StoreError {
    /// An I/O failure of the database file. redb refuses every later write after one ("close
    /// and re-open the database"), so the agent must stop rather than carry on unable to
    /// write. `Some(true)`: the disk is full.
    pub fn io_failure(&self) -> Option<bool> {
        match self {
            StoreError::Db(redb::Error::Io(err)) => Some(is_disk_full(err)),
            StoreError::Db(redb::Error::PreviousIo) => Some(false),
            _ => None,
        }
    }
}

/// ENOSPC (or a quota that is exhausted).
pub fn is_disk_full(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::StorageFull
        || err.kind() == std::io::ErrorKind::QuotaExceeded
        || err.raw_os_error() == Some(libc::ENOSPC)
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What survives a restart besides the entries.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub incarnation: u64,
    pub counter: u64,
    pub head: Head,
}

/// The database, shared by its writer (the replica) and readers.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the database at `path` with a page cache of `cache_bytes`, creating
    /// every table and, for a new database, a fresh incarnation.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<(Store, Persisted), StoreError> {
        let mut db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)?;
        if let Err(err) = compact_if_bloated(&mut db, path, COMPACT_MIN_BYTES) {
            // Only space is at stake (a disk too full to compact into, say): start anyway.
            tracing::warn!(error = %err, "cannot compact the database; starting without");
        }
        let txn = db.begin_write()?;
        let fresh = txn.open_table(META)?.get(META_INCARNATION)?.is_none();
        for name in migrate::migrate(&txn, fresh, migrate::LAYOUT, migrate::MIGRATIONS)? {
            tracing::info!(migration = name, "database migrated");
        }
        let persisted = {
            for def in [PINS, STAGE] {
                txn.open_table(def)?;
            }
            txn.open_table(LOG)?;
            txn.open_table(PEERS)?;
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(META_INCARNATION)?
                .and_then(|v| read_u64(v.value()));
            let incarnation = match stored {
                Some(n) => n,
                None => {
                    let n: u64 = rand::random();
                    meta.insert(META_INCARNATION, n.to_le_bytes().as_slice())?;
                    n
                }
            };
            let counter = meta
                .get(META_COUNTER)?
                .and_then(|v| read_u64(v.value()))
                .unwrap_or(0);
            let head = match meta.get(META_HEAD)? {
                Some(v) => {
                    codec::decode_stored(v.value()).map_err(|source| StoreError::Corrupt {
                        what: "head",
                        source,
                    })?
                }
                None => Head::default(),
            };
            Persisted {
                incarnation,
                counter,
                head,
            }
        };
        txn.commit()?;
        Ok((Store { db: Arc::new(db) }, persisted))
    }

    /// Recomputes the pinset's digest and count from every stored entry, in one read
    /// transaction with the head they must match. Returns the count; `Damaged` on a mismatch
    /// (a changed byte anywhere in a CID or an entry changes its hash).
    pub fn scrub(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let head = read_head(&txn)?;
        let table = txn.open_table(PINS)?;
        let mut digest = Digest::ZERO;
        let mut pins = 0u64;
        for item in table.iter()? {
            let (key, value) = item?;
            digest.toggle(&entry_hash(key.value(), value.value()));
            pins += 1;
        }
        if pins != head.pins || digest != head.digest {
            return Err(StoreError::Damaged(format!(
                "its {pins} pins hash to {}, the state it recorded is {} pins hashing to {}",
                &digest.to_hex()[..16],
                head.pins,
                &head.digest.to_hex()[..16]
            )));
        }
        Ok(pins)
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The batches of `origin` that hold counters `from..=to`, in order, at most `max_bytes` of
    /// them (at least one). Returns the lowest counter the log still has for `origin`.
    pub fn batches(
        &self,
        origin: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<(Vec<DeltaBatch>, Option<u64>), StoreError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let low = log
            .range((origin, 0)..=(origin, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        // The batch holding `from` starts at or before it.
        let start = log
            .range((origin, 0)..=(origin, from))?
            .next_back()
            .transpose()?
            .map_or(from, |(k, _)| k.value().1);
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in log.range((origin, start)..=(origin, to))? {
            let (_, v) = item?;
            let batch: DeltaBatch =
                codec::decode_stored(v.value()).map_err(|source| StoreError::Corrupt {
                    what: "delta log entry",
                    source,
                })?;
            if batch.last().is_some_and(|last| last < from) {
                continue;
            }
            bytes += v.value().len();
            out.push(batch);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok((out, low))
    }

    /// Known peers.
    pub fn peers(&self) -> Result<Vec<(String, PeerRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            match codec::decode_stored(v.value()) {
                Ok(record) => out.push((k.value().to_string(), record)),
                Err(err) => {
                    tracing::warn!(peer = k.value(), error = %err, "unreadable peer record skipped")
                }
            }
        }
        Ok(out)
    }
}

/// Snapshots being served: each is one read transaction (a consistent view, MVCC) kept open
/// across the requests for its chunks, for one peer, and released [`SNAPSHOT_TTL`] after it
/// began whatever happens (an open read transaction keeps old pages from being reused).
#[derive(Default)]
pub struct Snapshots {
    open: Mutex<HashMap<u64, OpenSnapshot>>,
}

struct OpenSnapshot {
    txn: ReadTransaction,
    peer: PeerId,
    started: Instant,
    /// The cursor the next request must continue from.
    cursor: Option<Vec<u8>>,
    /// What the entries must add up to (the head read with them), and what they added up to
    /// so far: a server whose store is damaged finds out when it serves the last chunk.
    expected: (u64, Digest),
    served: (u64, Digest),
}

impl Snapshots {
    /// Releases snapshots past their time.
    pub fn sweep(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.started.elapsed() < SNAPSHOT_TTL);
    }
}

#[cfg(test)]
impl Snapshots {
    /// Makes every open snapshot `by` older, as if begun that long ago.
    fn backdate(&self, by: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.values_mut() {
            s.started = s.started.checked_sub(by).expect("a time that old");
        }
    }
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

/// A snapshot's read transaction is released this long after it began (it pins old pages).
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
/// Snapshots served at once.
pub const MAX_OPEN_SNAPSHOTS: usize = 4;

/// Why a snapshot chunk cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("snapshot {0} expired, unknown or not continued in order; start again")]
    Unknown(u64),
    #[error("serving {MAX_OPEN_SNAPSHOTS} snapshots already; try later")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The next chunk of snapshot `id` (a new snapshot when `None`), after the CID `after`, of
    /// at most `limit` entries or about `budget` bytes.
    pub fn snapshot_chunk(
        &self,
        snapshots: &Snapshots,
        peer: &PeerId,
        id: Option<u64>,
        after: Option<&[u8]>,
        limit: usize,
        budget: usize,
    ) -> Result<SnapshotChunk, ServeError> {
        let mut open = snapshots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.started.elapsed() < SNAPSHOT_TTL);
        let (id, head) = match id {
            Some(id) => (id, None),
            None => {
                // A peer restarting its fetch replaces its own snapshot.
                open.retain(|_, s| s.peer != *peer);
                if open.len() >= MAX_OPEN_SNAPSHOTS {
                    return Err(ServeError::Busy);
                }
                let txn = self.db.begin_read().map_err(StoreError::from)?;
                let head = read_head(&txn)?;
                let id = rand::random::<u64>();
                open.insert(
                    id,
                    OpenSnapshot {
                        txn,
                        peer: *peer,
                        started: Instant::now(),
                        cursor: None,
                        expected: (head.pins, head.digest),
                        served: (0, Digest::ZERO),
                    },
                );
                (id, Some(head))
            }
        };
        // Only the peer that began it may continue it, and only where the last chunk ended.
        let snapshot = open
            .get_mut(&id)
            .filter(|s| s.peer == *peer && s.cursor.as_deref() == after)
            .ok_or(ServeError::Unknown(id))?;
        let txn = &snapshot.txn;
        let table = txn.open_table(PINS).map_err(StoreError::from)?;
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        // One entry past the budget tells the chunk whether more follow.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for item in table
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(StoreError::from)?
        {
            let (k, v) = item.map_err(StoreError::from)?;
            let full = entries.len() >= limit.max(1) || bytes >= budget;
            entries.push((k.value().to_vec(), v.value().to_vec()));
            if full {
                break;
            }
            bytes += k.value().len() + v.value().len();
        }
        let head = head.map(|h| SnapshotHead {
            context: h.context,
            applied: h.applied,
            pins: h.pins,
            state_digest: h.digest,
        });
        let hashes: Vec<Digest> = entries.iter().map(|(k, v)| entry_hash(k, v)).collect();
        let chunk = chunk_from(id, head, &mut entries.into_iter().peekable(), limit, budget)
            .map_err(|source| StoreError::Corrupt {
                what: "pin entry",
                source,
            })?;
        for hash in &hashes[..chunk.entries.len()] {
            snapshot.served.0 += 1;
            snapshot.served.1.toggle(hash);
        }
        match &chunk.next {
            Some(next) => snapshot.cursor = Some(next.to_vec()),
            None => {
                let (served, expected) = (snapshot.served, snapshot.expected);
                open.remove(&id);
                if served != expected {
                    return Err(ServeError::Store(StoreError::Damaged(format!(
                        "a snapshot served from it held {} pins hashing to {}, its recorded state \
                         is {} pins hashing to {}",
                        served.0,
                        &served.1.to_hex()[..16],
                        expected.0,
                        &expected.1.to_hex()[..16]
                    ))));
                }
            }
        }
        Ok(chunk)
    }
}

fn read_head(txn: &ReadTransaction) -> Result<Head, StoreError> {
    let meta = txn.open_table(META)?;
    match meta.get(META_HEAD)? {
        Some(v) => codec::decode_stored(v.value()).map_err(|source| StoreError::Corrupt {
            what: "head",
            source,
        }),
        None => Ok(Head::default()),
    }
}

/// The pins table inside a write transaction, as the protocol's entry store.
pub struct PinsTable<'t>(pub redb::Table<'t, &'static [u8], &'static [u8]>);

impl EntryStore for PinsTable<'_> {
    type Error = redb::StorageError;

    fn get(&self, cid: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.0.get(cid)?.map(|v| v.value().to_vec()))
    }

    fn put(&mut self, cid: &[u8], entry: &[u8]) -> Result<(), Self::Error> {
        self.0.insert(cid, entry)?;
        Ok(())
    }

    fn delete(&mut self, cid: &[u8]) -> Result<(), Self::Error> {
        self.0.remove(cid)?;
        Ok(())
    }
}

/// A file smaller than this is never compacted at start (cheap either way).
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Compacts the database when its file is more than twice what it holds: pages freed while a
/// long read transaction kept old versions alive stay in the file, which never shrinks by
/// itself. Runs at start, before anything else opens the database.
fn compact_if_bloated(db: &mut Database, path: &Path, min_bytes: u64) -> Result<(), StoreError> {
    let file = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if file < min_bytes {
        return Ok(());
    }
    let stats = db.begin_write()?.stats()?;
    let used = stats.allocated_pages() * stats.page_size() as u64;
    if file <= used.saturating_mul(2) {
        return Ok(());
    }
    tracing::info!(
        file_mib = file >> 20,
        used_mib = used >> 20,
        "compacting the database (it holds much less than its file)"
    );
    let started = std::time::Instant::now();
    db.compact()
        .map_err(|e| StoreError::Db(redb::Error::from(e)))?;
    let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        file_mib = after >> 20,
        ms = started.elapsed().as_millis() as u64,
        "database compacted"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
