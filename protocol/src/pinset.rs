//! The replicated pinset: an add-wins observed-remove map `CID -> versions` with a causal context.
//!
//! The state is split in two so that a replica need not hold it in memory:
//!
//! - entries, behind [`EntryStore`]: CID bytes -> the canonical encoding of the CID's versions.
//!   The agent implements it over a redb write transaction; [`MemPinset`] over a hash table.
//! - the [`Head`]: causal context, applied-delta vector, state digest and pin count. Small
//!   (O(actors + gaps)), kept in memory and persisted beside the entries.
//!
//! Joins are defined per entry ([`join_entry`]) plus the context, so applying a delta reads and
//! writes only the entry it touches, and a full-state join is a pass over the remote entries
//! ([`join_entry`]) and the local-only ones ([`prune_entry`]) followed by [`Head::absorb`].
//! A join that changes nothing writes nothing.

use std::convert::Infallible;
use std::fmt;

use cid::Cid;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::codec::{self, DecodeError};
use crate::delta::{Delta, Op};
use crate::digest::{Digest, entry_hash};
use crate::dot::{AppliedVector, CausalContext, ContainsDot, Dot, DotSet};
use crate::entry::{Version, join_versions, normalize};
use crate::message::{SnapshotChunk, SnapshotHead};
use crate::snapshot::chunk_from;

/// Storage of the pinset's entries: CID bytes -> canonical encoded versions. Empty entries are
/// never stored.
pub trait EntryStore {
    type Error: std::error::Error + Send + Sync + 'static;
    fn get(&self, cid: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    fn put(&mut self, cid: &[u8], entry: &[u8]) -> Result<(), Self::Error>;
    fn delete(&mut self, cid: &[u8]) -> Result<(), Self::Error>;
    /// Told after each write of an entry, with its versions before and after (empty: no
    /// entry), so a store can keep counts of its own beside the head's in the same
    /// transaction. Does nothing by default.
    fn changed(&mut self, _cid: &[u8], _old: &[Version], _new: &[Version]) {}
}

/// A join failed: the store failed, or a stored entry does not decode (corruption).
#[derive(Debug, thiserror::Error)]
pub enum JoinError<E> {
    #[error("entry store: {0}")]
    Store(#[source] E),
    #[error("stored entry of {cid} is corrupt: {source}")]
    Corrupt {
        cid: String,
        #[source]
        source: DecodeError,
    },
}

/// The small part of the state: everything but the entries.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// Every dot seen, applied or superseded: the CRDT's merge semantics.
    pub context: CausalContext,
    /// The deltas applied, per origin: gap detection, repair, convergence.
    pub applied: AppliedVector,
    /// XOR of [`entry_hash`] over the live entries, maintained incrementally.
    pub digest: Digest,
    /// Number of live entries.
    pub pins: u64,
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("pins", &self.pins)
            .field("digest", &self.digest)
            .field("applied", &self.applied)
            .field("context", &self.context)
            .finish()
    }
}

impl Head {
    /// Finishes a full-state join after every entry was joined: unions the remote contexts.
    pub fn absorb(&mut self, remote_context: &CausalContext, remote_applied: &AppliedVector) {
        self.context.union(remote_context);
        self.applied.union(remote_applied);
    }
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The delta had not been applied before.
    pub new: bool,
    /// The delta changed the CID's entry.
    pub changed: bool,
}

/// Applies one delta: joins its entry and context into the state.
///
/// On a store error the entry and the head are unchanged, but the caller must drop the whole
/// transaction (the agent restores its head and aborts).
///
/// A delta already in `head.applied` is skipped: its join was committed with it. Otherwise the
/// entry is joined even when the delta's own dot is already in the context, because its observed
/// dots may still remove versions here.
pub fn apply_delta<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    delta: &Delta,
) -> Result<Outcome, JoinError<S::Error>> {
    if head.applied.contains(delta.dot) {
        return Ok(Outcome {
            new: false,
            changed: false,
        });
    }
    let key = delta.cid().to_bytes();
    let changed = join_entry(store, head, &key, &delta.versions(), delta)?;
    delta.add_context_to(&mut head.context);
    head.applied.insert(delta.dot);
    Ok(Outcome { new: true, changed })
}

/// The live versions of `cid` (empty when unpinned).
pub fn versions_of<S: EntryStore>(
    store: &S,
    cid: &[u8],
) -> Result<Vec<Version>, JoinError<S::Error>> {
    match store.get(cid).map_err(JoinError::Store)? {
        Some(bytes) => decode_stored(cid, &bytes),
        None => Ok(Vec::new()),
    }
}

/// Makes and applies the delta of a local operation with the fresh dot `dot`.
///
/// The caller owns the counter and must persist it with the result (the agent does both in one
/// write transaction), so a dot is never reused.
pub fn local_op<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    dot: Dot,
    cid: Cid,
    op: Op,
) -> Result<Delta, JoinError<S::Error>> {
    let current = versions_of(store, &cid.to_bytes())?;
    let delta = Delta::new(dot, cid, op, &current);
    apply_delta(store, head, &delta)?;
    Ok(delta)
}

/// Joins a remote entry (`remote` versions under `remote_ctx`) into the local entry of `cid`,
/// against the local context in `head` (not updated here). Returns whether the entry changed.
pub fn join_entry<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    cid: &[u8],
    remote: &[Version],
    remote_ctx: &impl ContainsDot,
) -> Result<bool, JoinError<S::Error>> {
    let old = store.get(cid).map_err(JoinError::Store)?;
    let local = match &old {
        Some(bytes) => decode_stored(cid, bytes)?,
        None => Vec::new(),
    };
    let merged = join_versions(&local, &head.context, remote, remote_ctx);
    write_entry(store, head, cid, (old.as_deref(), &local), &merged)
}

/// Joins a remote entry given in its encoded form, as it arrives in a snapshot. Skips the decode
/// and the join when the bytes equal the local entry's (equal entries join to themselves).
pub fn join_encoded_entry<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    cid: &[u8],
    remote: &[u8],
    remote_ctx: &DotSet,
) -> Result<bool, JoinError<S::Error>> {
    let old = store.get(cid).map_err(JoinError::Store)?;
    if old.as_deref() == Some(remote) {
        return Ok(false);
    }
    let mut remote = codec::decode_entry(remote).map_err(|source| JoinError::Corrupt {
        cid: display_cid(cid),
        source,
    })?;
    normalize(&mut remote);
    let local = match &old {
        Some(bytes) => decode_stored(cid, bytes)?,
        None => Vec::new(),
    };
    let merged = join_versions(&local, &head.context, &remote, remote_ctx);
    write_entry(store, head, cid, (old.as_deref(), &local), &merged)
}

/// The full-state join's treatment of a local entry the remote state does not have: versions
/// the remote has seen are gone there, so they go here too.
pub fn prune_entry<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    cid: &[u8],
    remote_ctx: &DotSet,
) -> Result<bool, JoinError<S::Error>> {
    join_entry(store, head, cid, &[], remote_ctx)
}

/// Writes `merged` as the entry of `cid` if it differs from `old` (its stored bytes and its
/// versions), keeping digest and count.
fn write_entry<S: EntryStore>(
    store: &mut S,
    head: &mut Head,
    cid: &[u8],
    (old, local): (Option<&[u8]>, &[Version]),
    merged: &[Version],
) -> Result<bool, JoinError<S::Error>> {
    let new = (!merged.is_empty()).then(|| codec::encode_entry(merged));
    if old == new.as_deref() {
        return Ok(false);
    }
    // The store first: if it fails, the head is untouched.
    match &new {
        Some(bytes) => store.put(cid, bytes).map_err(JoinError::Store)?,
        None => store.delete(cid).map_err(JoinError::Store)?,
    }
    if let Some(old) = old {
        head.digest.toggle(&entry_hash(cid, old));
        head.pins -= 1;
    }
    if let Some(bytes) = &new {
        head.digest.toggle(&entry_hash(cid, bytes));
        head.pins += 1;
    }
    store.changed(cid, local, merged);
    Ok(true)
}

fn decode_stored<E>(cid: &[u8], bytes: &[u8]) -> Result<Vec<Version>, JoinError<E>> {
    codec::decode_entry(bytes).map_err(|source| JoinError::Corrupt {
        cid: display_cid(cid),
        source,
    })
}

fn display_cid(cid: &[u8]) -> String {
    Cid::try_from(cid)
        .map(|c| c.to_string())
        .unwrap_or_else(|_| format!("<{} invalid CID bytes>", cid.len()))
}

/// Entries in memory: one allocation per entry holding `[cid_len][cid][encoded versions]`, in a
/// hash table keyed by the CID part. About 100 bytes per pin with a short name.
#[derive(Clone)]
pub struct MemEntries {
    table: HashTable<Box<[u8]>>,
    hasher: DefaultHashBuilder,
}

impl Default for MemEntries {
    fn default() -> Self {
        MemEntries {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl fmt::Debug for MemEntries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemEntries({} entries)", self.table.len())
    }
}

fn key_of(slot: &[u8]) -> &[u8] {
    &slot[1..1 + slot[0] as usize]
}

fn value_of(slot: &[u8]) -> &[u8] {
    &slot[1 + slot[0] as usize..]
}

impl MemEntries {
    fn find(&self, cid: &[u8]) -> Option<&[u8]> {
        let hash = self.hasher.hash_one(cid);
        self.table
            .find(hash, |slot| key_of(slot) == cid)
            .map(|slot| value_of(slot))
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// `(cid bytes, encoded versions)` in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.table.iter().map(|slot| (key_of(slot), value_of(slot)))
    }
}

impl EntryStore for MemEntries {
    type Error = Infallible;

    fn get(&self, cid: &[u8]) -> Result<Option<Vec<u8>>, Infallible> {
        Ok(self.find(cid).map(<[u8]>::to_vec))
    }

    fn put(&mut self, cid: &[u8], entry: &[u8]) -> Result<(), Infallible> {
        // CIDs are at most ~100 bytes (multihash digests are capped at 64 bytes); the codec
        // rejects longer ones, so the length always fits the one-byte prefix.
        let len = u8::try_from(cid.len()).expect("CID longer than 255 bytes");
        let mut slot = Vec::with_capacity(1 + cid.len() + entry.len());
        slot.push(len);
        slot.extend_from_slice(cid);
        slot.extend_from_slice(entry);
        let slot = slot.into_boxed_slice();
        let hash = self.hasher.hash_one(cid);
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |s| key_of(s) == cid, |s| hasher.hash_one(key_of(s)))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
        Ok(())
    }

    fn delete(&mut self, cid: &[u8]) -> Result<(), Infallible> {
        let hash = self.hasher.hash_one(cid);
        if let Ok(o) = self.table.find_entry(hash, |s| key_of(s) == cid) {
            o.remove();
        }
        Ok(())
    }
}

/// A whole pinset in memory: for the simulator, tests, benchmarks and snapshot staging.
#[derive(Debug, Default, Clone)]
pub struct MemPinset {
    entries: MemEntries,
    head: Head,
}

fn infallible<T>(r: Result<T, JoinError<Infallible>>) -> T {
    match r {
        Ok(t) => t,
        Err(JoinError::Store(never)) => match never {},
        // Entries in memory were encoded by this process from valid versions.
        Err(JoinError::Corrupt { cid, source }) => {
            panic!("in-memory entry of {cid} does not decode: {source}")
        }
    }
}

impl MemPinset {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn entries(&self) -> &MemEntries {
        &self.entries
    }

    /// Number of pinned CIDs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn apply(&mut self, delta: &Delta) -> Outcome {
        infallible(apply_delta(&mut self.entries, &mut self.head, delta))
    }

    /// Makes and applies a local operation with dot `dot`.
    pub fn local(&mut self, dot: Dot, cid: Cid, op: Op) -> Delta {
        infallible(local_op(&mut self.entries, &mut self.head, dot, cid, op))
    }

    /// The live versions of `cid`, sorted by dot.
    pub fn versions(&self, cid: &Cid) -> Vec<Version> {
        infallible(versions_of(&self.entries, &cid.to_bytes()))
    }

    pub fn contains(&self, cid: &Cid) -> bool {
        self.entries.find(&cid.to_bytes()).is_some()
    }

    /// Joins the whole of `other` into `self`.
    pub fn join(&mut self, other: &MemPinset) {
        let remote_ctx = &other.head.context;
        for (cid, bytes) in other.entries.iter() {
            infallible(join_encoded_entry(
                &mut self.entries,
                &mut self.head,
                cid,
                bytes,
                remote_ctx,
            ));
        }
        let local_only: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(cid, _)| other.entries.find(cid).is_none())
            .map(|(cid, _)| cid.to_vec())
            .collect();
        for cid in local_only {
            infallible(prune_entry(
                &mut self.entries,
                &mut self.head,
                &cid,
                remote_ctx,
            ));
        }
        self.head.absorb(remote_ctx, &other.head.applied);
    }

    /// A state made of staged snapshot entries and the head [`SnapshotStage::finish`] returned.
    ///
    /// [`SnapshotStage::finish`]: crate::snapshot::SnapshotStage::finish
    pub fn from_parts(entries: MemEntries, head: Head) -> Self {
        MemPinset { entries, head }
    }

    pub fn snapshot_head(&self) -> SnapshotHead {
        SnapshotHead {
            context: self.head.context.clone(),
            applied: self.head.applied.clone(),
            pins: self.head.pins,
            state_digest: self.head.digest,
        }
    }

    /// The whole state as snapshot chunks of about `byte_budget` bytes, ascending by CID.
    pub fn snapshot(&self, snapshot_id: u64, byte_budget: usize) -> Vec<SnapshotChunk> {
        let mut raw: Vec<(&[u8], &[u8])> = self.entries.iter().collect();
        raw.sort_unstable_by_key(|(cid, _)| *cid);
        let mut entries = raw.into_iter().peekable();
        let mut head = Some(self.snapshot_head());
        let mut chunks = Vec::new();
        loop {
            let chunk = chunk_from(
                snapshot_id,
                head.take(),
                &mut entries,
                usize::MAX,
                byte_budget,
            )
            .expect("in-memory entries decode");
            let last = chunk.next.is_none();
            chunks.push(chunk);
            if last {
                return chunks;
            }
        }
    }

    /// Every entry, decoded and sorted by CID bytes.
    pub fn sorted(&self) -> Vec<(Cid, Vec<Version>)> {
        let mut raw: Vec<(&[u8], &[u8])> = self.entries.iter().collect();
        raw.sort_unstable_by_key(|(cid, _)| *cid);
        raw.into_iter()
            .map(|(cid, bytes)| {
                let cid = Cid::try_from(cid).expect("stored CID bytes are valid");
                (cid, infallible(decode_stored(&cid.to_bytes(), bytes)))
            })
            .collect()
    }

    /// Recomputes the state digest from scratch (to check the incremental one).
    pub fn recompute_digest(&self) -> Digest {
        let mut digest = Digest::ZERO;
        for (cid, bytes) in self.entries.iter() {
            digest.toggle(&entry_hash(cid, bytes));
        }
        digest
    }
}

impl PartialEq for MemPinset {
    /// Same head and same entries.
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(cid, bytes)| other.entries.find(cid) == Some(bytes))
    }
}
