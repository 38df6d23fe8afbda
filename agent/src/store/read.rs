//! Reading the database: a [`Reader`] is one consistent view (a redb read transaction) with
//! typed accessors, so no module outside the store opens a table or decodes its bytes.

use std::collections::BTreeMap;
use std::ops::Bound;

use pinmesh_protocol::digest::{Digest, entry_hash};
use pinmesh_protocol::snapshot::chunk_from;
use pinmesh_protocol::{
    ActorId, Cid, DeltaBatch, Head, SnapshotChunk, SnapshotHead, Version, codec,
};
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

use super::records::{PinState, decode_state};
use super::{LOG, PINS, STATUS, Store, StoreError, decode_pin_entry};

type BytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;
/// A pin's CID, its versions and the reconciler's record of it.
pub type EntryAndStatus = (Cid, Vec<Version>, Option<PinState>);
/// The reconciler's records, one by one.
pub type Records<'r> = Box<dyn Iterator<Item = Result<(Cid, PinState), StoreError>> + 'r>;

/// One consistent view of the pinset, the reconciler's status records and the delta log.
pub struct Reader {
    txn: ReadTransaction,
    pins: BytesTable,
    /// `None` before the reconciler first wrote a record.
    statuses: Option<BytesTable>,
}

/// What the delta log holds of one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSpan {
    pub first: u64,
    pub last: u64,
    pub batches: u64,
}

impl Store {
    /// A consistent view of the database as of now.
    pub fn reader(&self) -> Result<Reader, StoreError> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        let statuses = match txn.open_table(STATUS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Reader {
            txn,
            pins,
            statuses,
        })
    }
}

fn after(key: Option<&[u8]>) -> (Bound<&[u8]>, Bound<&[u8]>) {
    match key {
        Some(key) => (Bound::Excluded(key), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

impl Reader {
    /// The versions of `cid`'s entry; `None` when the pinset has no entry for it.
    pub fn versions(&self, cid: &Cid) -> Result<Option<Vec<Version>>, StoreError> {
        match self.pins.get(cid.to_bytes().as_slice())? {
            Some(value) => Ok(Some(decode_pin_entry(value.value())?)),
            None => Ok(None),
        }
    }

    pub fn has_entry(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.pins.get(cid.to_bytes().as_slice())?.is_some())
    }

    /// The pinset's entries in key order, after the CID whose bytes are `after`.
    pub fn entries(
        &self,
        after_key: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<(Cid, Vec<Version>), StoreError>> + '_, StoreError>
    {
        self.pin_rows(after_key, |_, cid, entry| {
            Ok((cid, decode_pin_entry(entry)?))
        })
    }

    /// As [`entries`](Self::entries), each with the reconciler's record of its CID (looked up
    /// by the stored key, without encoding the CID again).
    pub fn entries_with_status(
        &self,
        after_key: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<EntryAndStatus, StoreError>> + '_, StoreError> {
        self.pin_rows(after_key, |key, cid, entry| {
            Ok((cid, decode_pin_entry(entry)?, self.status_by_key(key)?))
        })
    }

    /// The pinset's rows in key order after `after_key`, each made by `row` from its stored
    /// key, its CID and its entry's bytes. Keys are CIDs the replica validated; anything else
    /// is skipped, not fatal.
    fn pin_rows<'r, T>(
        &'r self,
        after_key: Option<&[u8]>,
        row: impl Fn(&[u8], Cid, &[u8]) -> Result<T, StoreError> + 'r,
    ) -> Result<impl Iterator<Item = Result<T, StoreError>> + 'r, StoreError> {
        let range = self.pins.range::<&[u8]>(after(after_key))?;
        Ok(range.filter_map(move |item| {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let cid = Cid::try_from(key.value()).ok()?;
            Some(row(key.value(), cid, value.value()))
        }))
    }

    fn status_by_key(&self, key: &[u8]) -> Result<Option<PinState>, StoreError> {
        match &self.statuses {
            Some(t) => t.get(key)?.map(|v| decode_state(v.value())).transpose(),
            None => Ok(None),
        }
    }

    /// The pinset's CIDs in key order, after the CID whose bytes are `after`.
    pub fn cids(
        &self,
        after_key: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<Cid, StoreError>> + '_, StoreError> {
        let range = self.pins.range::<&[u8]>(after(after_key))?;
        Ok(range.filter_map(|item| match item {
            Ok((key, _)) => Cid::try_from(key.value()).ok().map(Ok),
            Err(e) => Some(Err(e.into())),
        }))
    }

    /// The reconciler's record of `cid`.
    pub fn status(&self, cid: &Cid) -> Result<Option<PinState>, StoreError> {
        self.status_by_key(&cid.to_bytes())
    }

    /// The reconciler's records in key order, after the CID whose bytes are `after`.
    pub fn statuses(&self, after_key: Option<&[u8]>) -> Result<Records<'_>, StoreError> {
        let Some(table) = &self.statuses else {
            return Ok(Box::new(std::iter::empty()));
        };
        let range = table.range::<&[u8]>(after(after_key))?;
        Ok(Box::new(range.filter_map(|item| {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let cid = Cid::try_from(key.value()).ok()?;
            Some(decode_state(value.value()).map(|state| (cid, state)))
        })))
    }

    /// Per origin, the span of counters the delta log holds and in how many batches.
    pub fn log_spans(&self) -> Result<BTreeMap<ActorId, LogSpan>, StoreError> {
        let table = self.txn.open_table(LOG)?;
        let mut out: BTreeMap<ActorId, LogSpan> = BTreeMap::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (origin, first) = k.value();
            let last = codec::decode_stored::<DeltaBatch>(v.value())
                .ok()
                .and_then(|b| b.last())
                .unwrap_or(first);
            let span = out.entry(ActorId(origin)).or_insert(LogSpan {
                first,
                last,
                batches: 0,
            });
            span.first = span.first.min(first);
            span.last = span.last.max(last);
            span.batches += 1;
        }
        Ok(out)
    }
}

/// The pinset as of one moment, kept open across the chunks of one snapshot served to a peer
/// (one read transaction: it keeps old pages from being reused, so whoever holds it releases
/// it soon; the sync server's sessions do).
pub struct SnapshotView {
    pins: BytesTable,
    head: Head,
}

impl Store {
    /// A view of the pinset and its head as of now.
    pub fn snapshot_view(&self) -> Result<SnapshotView, StoreError> {
        let txn = self.db.begin_read()?;
        let head = super::read_head(&txn)?;
        Ok(SnapshotView {
            pins: txn.open_table(PINS)?,
            head,
        })
    }
}

impl SnapshotView {
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Chunk `id` of the snapshot: the entries after the CID `after`, at most `limit` of them
    /// or about `budget` bytes, with the head when `first`. Also returns the digest of the
    /// entries it holds, so whoever serves the whole snapshot can check that they add up to
    /// the head (a damaged store shows there).
    pub fn chunk(
        &self,
        id: u64,
        first: bool,
        after_key: Option<&[u8]>,
        limit: usize,
        budget: usize,
    ) -> Result<(SnapshotChunk, Digest), StoreError> {
        // One entry past the budget tells the chunk whether more follow.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for item in self.pins.range::<&[u8]>(after(after_key))? {
            let (k, v) = item?;
            let full = entries.len() >= limit.max(1) || bytes >= budget;
            entries.push((k.value().to_vec(), v.value().to_vec()));
            if full {
                break;
            }
            bytes += k.value().len() + v.value().len();
        }
        let head = first.then(|| SnapshotHead {
            context: self.head.context.clone(),
            applied: self.head.applied.clone(),
            pins: self.head.pins,
            state_digest: self.head.digest,
        });
        let hashes: Vec<Digest> = entries.iter().map(|(k, v)| entry_hash(k, v)).collect();
        let chunk = chunk_from(id, head, &mut entries.into_iter().peekable(), limit, budget)
            .map_err(|source| StoreError::Corrupt {
                what: "pin entry",
                source,
            })?;
        let mut digest = Digest::ZERO;
        for hash in &hashes[..chunk.entries.len()] {
            digest.toggle(hash);
        }
        Ok((chunk, digest))
    }
}
