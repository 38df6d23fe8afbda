//! redb storage: the pinset's entries, its head, the delta log, known peers and their latest
//! metrics, snapshot staging.
//!
//! The store owns the database file and its tables: no other module opens a table or decodes
//! its bytes. The replica is the only writer of the CRDT tables (through [`Group`], one write
//! transaction per group), the reconciler of `status-1` ([`Store::write_statuses`]). Readers
//! (sync requests, `pin ls`, `status`, debug dumps) take a [`Reader`], one read transaction,
//! and see committed state only.
//! Every table name carries a layout version; a layout change means a new name and a named
//! migration (`migrate`).

pub mod migrate;
mod read;
mod records;
mod resync;
#[cfg(test)]
pub mod testing;
mod write;

use std::path::Path;
use std::sync::Arc;

use pinmesh_protocol::codec::{self, DecodeError};
use pinmesh_protocol::digest::{Digest, entry_hash};
use pinmesh_protocol::{DeltaBatch, EntryStore, Head};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use self::read::{LogSpan, Reader, SnapshotView};
pub use self::records::{PinState, Status};
pub use self::resync::{Resynced, resync};
pub use self::write::Group;

/// CID bytes -> canonical encoded versions (protocol `codec::encode_entry`). Never empty.
const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins-1");
/// Small named values; see the `META_*` keys.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
/// (origin actor, first counter) -> a signed `DeltaBatch` (storage encoding), as received.
const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log-1");
/// Peer id (text) -> `PeerRecord` (storage encoding): a peer to dial at start, or one removed
/// by `peers rm` (`removed`, a field older releases skip).
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers-1");
/// Peer id (text) -> `StoredMetric` (storage encoding): the peer's latest metric as last
/// written (at most every few minutes), so a restarted agent still counts the peers it had
/// heard of as allocatable, down since its start.
const METRICS: TableDefinition<&str, &[u8]> = TableDefinition::new("metrics-1");
/// Snapshot staging, same layout as `PINS`; emptied before and after each snapshot.
const STAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stage-1");
/// CID bytes (as in `PINS`) -> `reconcile::PinState` (storage encoding): where the CID stands
/// on this peer's IPFS node, and whether this agent owns its pin there. Written only by the
/// reconciler.
const STATUS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("status-1");

/// u64 LE: this database's incarnation nonce, drawn at creation. A new database, a new actor.
const META_INCARNATION: &str = "incarnation";
/// u64 LE: the last counter this agent used for its own dots.
const META_COUNTER: &str = "counter";
/// `Head` (storage encoding): causal context, applied vector, state digest, pin count.
const META_HEAD: &str = "head";
/// `AllocatedCount` (storage encoding): pins allocated to this peer, written with the head.
const META_ALLOCATED: &str = "allocated";

/// Decodes a `PINS` value: the CID's versions.
fn decode_pin_entry(bytes: &[u8]) -> Result<Vec<pinmesh_protocol::Version>, StoreError> {
    codec::decode_entry(bytes).map_err(|source| StoreError::Corrupt {
        what: "pin entry",
        source,
    })
}

/// What a peer is known by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Stored as text; an address this build cannot parse (a newer transport) is skipped.
    #[serde(with = "crate::text::lenient_list")]
    pub addrs: Vec<libp2p::Multiaddr>,
    /// Unix seconds.
    pub last_seen: u64,
    /// Removed by `peers rm`: never dialled, refused, its metrics ignored, until it is added
    /// again. Encoded only when set (a third packed field, which older releases skip), so
    /// every other record is stored as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// A peer's metric as received (its wire encoding, signed by the peer) and when (unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMetric {
    /// The metric as published (protocol `codec::encode_metric`): verified again when read.
    #[serde(with = "serde_bytes")]
    pub metric: Vec<u8>,
    pub seen_ms: u64,
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
    /// As last written with the head; see [`Store::allocated_count`].
    pub allocated: Option<AllocatedCount>,
}

/// How many pins of the state whose digest is `digest` are allocated to `peer`: a counter the
/// replica keeps on every entry write (in the same transaction as the head), so a peer's
/// metric never scans the pinset. A record of another identity or of another state (an older
/// release wrote the pinset since) is recounted once, at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedCount {
    pub peer: String,
    pub digest: Digest,
    pub count: u64,
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
            txn.open_table(METRICS)?;
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
            // Unreadable: recounted (it is derived data).
            let allocated = meta
                .get(META_ALLOCATED)?
                .and_then(|v| codec::decode_stored(v.value()).ok());
            Persisted {
                incarnation,
                counter,
                head,
                allocated,
            }
        };
        txn.commit()?;
        Ok((Store { db: Arc::new(db) }, persisted))
    }

    /// The number of pins allocated to `peer` in the state `persisted` describes: its record
    /// when it is this peer's and of this state, else counted over every entry (once: the
    /// replica keeps it from then on).
    pub fn allocated_count(&self, persisted: &Persisted, peer: &str) -> Result<u64, StoreError> {
        if let Some(record) = &persisted.allocated
            && record.peer == peer
            && record.digest == persisted.head.digest
        {
            return Ok(record.count);
        }
        let started = std::time::Instant::now();
        let reader = self.reader()?;
        let mut count = 0u64;
        for entry in reader.entries(None)? {
            match entry {
                Ok((_, versions)) => count += u64::from(allocated_to(&versions, peer)),
                // Left to the scrub, which says what to do about it.
                Err(StoreError::Corrupt { source, .. }) => {
                    tracing::warn!(error = %source, "undecodable pin entry not counted")
                }
                Err(err) => return Err(err),
            }
        }
        // An empty pinset (a new database) is nothing to tell.
        if persisted.head.pins > 0 {
            tracing::info!(
                pins = persisted.head.pins,
                allocated = count,
                ms = started.elapsed().as_millis() as u64,
                "counted the pins allocated to this peer"
            );
        }
        Ok(count)
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

    fn db(&self) -> &Database {
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

    /// Known peers. A record that cannot be read (or keyed by something other than a peer id)
    /// is skipped with a warning.
    pub fn peers(&self) -> Result<Vec<(libp2p::PeerId, PeerRecord)>, StoreError> {
        self.by_peer(PEERS, "peer record")
    }

    /// Peers' metrics as last stored, skipped with a warning like [`peers`](Self::peers).
    pub fn metrics(&self) -> Result<Vec<(libp2p::PeerId, StoredMetric)>, StoreError> {
        self.by_peer(METRICS, "stored metric")
    }

    fn by_peer<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        what: &str,
    ) -> Result<Vec<(libp2p::PeerId, T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let peer = k.value().parse::<libp2p::PeerId>();
            match (peer, codec::decode_stored(v.value())) {
                (Ok(peer), Ok(record)) => out.push((peer, record)),
                (Err(err), _) => {
                    tracing::warn!(peer = k.value(), error = %err, "{what} with a bad key skipped")
                }
                (_, Err(err)) => {
                    tracing::warn!(peer = k.value(), error = %err, "unreadable {what} skipped")
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn read_head(txn: &ReadTransaction) -> Result<Head, StoreError> {
    let meta = txn.open_table(META)?;
    match meta.get(META_HEAD)? {
        Some(v) => codec::decode_stored(v.value()).map_err(|source| StoreError::Corrupt {
            what: "head",
            source,
        }),
        None => Ok(Head::default()),
    }
}

/// The error of [`PinsTable`] as the protocol's entry store.
pub type TableError = redb::StorageError;

impl From<pinmesh_protocol::JoinError<TableError>> for StoreError {
    fn from(err: pinmesh_protocol::JoinError<TableError>) -> Self {
        match err {
            pinmesh_protocol::JoinError::Store(e) => StoreError::Db(e.into()),
            pinmesh_protocol::JoinError::Corrupt { source, .. } => StoreError::Corrupt {
                what: "pin entry",
                source,
            },
        }
    }
}

/// Whether the version every replica acts on is allocated to `peer`.
fn allocated_to(versions: &[pinmesh_protocol::Version], peer: &str) -> bool {
    pinmesh_protocol::winner(versions).is_some_and(|v| v.spec.allocated_to(peer))
}

/// A pins table inside a write transaction, as the protocol's entry store.
pub struct PinsTable<'t> {
    table: redb::Table<'t, &'static [u8], &'static [u8]>,
    /// The pinset's table counts the pins allocated to a peer (see [`Group::count_allocated`]);
    /// the staging table does not.
    allocated: Option<(String, u64)>,
}

impl EntryStore for PinsTable<'_> {
    type Error = redb::StorageError;

    fn get(&self, cid: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.table.get(cid)?.map(|v| v.value().to_vec()))
    }

    fn put(&mut self, cid: &[u8], entry: &[u8]) -> Result<(), Self::Error> {
        self.table.insert(cid, entry)?;
        Ok(())
    }

    fn delete(&mut self, cid: &[u8]) -> Result<(), Self::Error> {
        self.table.remove(cid)?;
        Ok(())
    }

    fn changed(
        &mut self,
        _cid: &[u8],
        old: &[pinmesh_protocol::Version],
        new: &[pinmesh_protocol::Version],
    ) {
        if let Some((peer, count)) = &mut self.allocated {
            match (allocated_to(old, peer), allocated_to(new, peer)) {
                (false, true) => *count += 1,
                (true, false) => *count = count.saturating_sub(1),
                _ => {}
            }
        }
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
