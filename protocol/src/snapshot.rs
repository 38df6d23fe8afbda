//! Snapshots: a whole state sent in chunks, staged by the receiver, then joined once.
//!
//! The sender serves every chunk of one snapshot from one consistent view (the agent: one redb
//! read transaction), entries ascending by CID bytes, each chunk cut by a byte budget.
//! [`chunk_from`] builds a chunk from such an ordered stream.
//!
//! The receiver feeds chunks to a [`SnapshotStage`], which writes the entries into a staging
//! [`EntryStore`] (passed per chunk: the agent's is a redb table of the current transaction)
//! and checks as it goes: one snapshot id, the head on the first chunk, entries
//! strictly ascending and continuing from the cursor, valid pin options. [`SnapshotStage::finish`]
//! checks that the staged entries hash to the head's state digest and count, so a torn or
//! inconsistent snapshot is refused before it touches the real state. Only then is it joined (a
//! partial snapshot's context would mask the dots its missing entries carry).

use std::iter::Peekable;

use cid::Cid;
use serde_bytes::ByteBuf;

use crate::codec::{self, DecodeError};
use crate::digest::{Digest, entry_hash};
use crate::entry::{Version, normalize};
use crate::message::{PinEntry, SnapshotChunk, SnapshotHead};
use crate::pinset::{EntryStore, Head};
use crate::spec::SpecError;

/// Builds one chunk from `entries` (CID bytes, canonical encoded versions), which must be
/// ascending by CID and start after the requested cursor. Takes entries until `limit` entries or
/// `byte_budget` encoded bytes; `next` is set when `entries` has more.
pub fn chunk_from<K, V, I>(
    snapshot_id: u64,
    head: Option<SnapshotHead>,
    entries: &mut Peekable<I>,
    limit: usize,
    byte_budget: usize,
) -> Result<SnapshotChunk, DecodeError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
    I: Iterator<Item = (K, V)>,
{
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last: Option<Vec<u8>> = None;
    // At least one entry per chunk, so every chunk makes progress whatever the budget.
    while out.is_empty() || (out.len() < limit && bytes < byte_budget) {
        let Some((cid, value)) = entries.next() else {
            break;
        };
        let (cid, value) = (cid.as_ref(), value.as_ref());
        bytes += cid.len() + value.len();
        let versions = codec::decode_entry(value)?;
        let parsed = Cid::try_from(cid)
            .map_err(|e| DecodeError::Malformed(format!("stored CID bytes: {e}")))?;
        last = Some(cid.to_vec());
        out.push(PinEntry {
            cid: parsed,
            versions,
        });
    }
    let next = match (entries.peek(), last) {
        (Some(_), Some(last)) => Some(ByteBuf::from(last)),
        _ => None,
    };
    Ok(SnapshotChunk {
        snapshot_id,
        head,
        entries: out,
        next,
    })
}

/// Why a snapshot is refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError<E> {
    #[error("first chunk has no head")]
    MissingHead,
    #[error("chunk belongs to snapshot {got}, not {expected}")]
    WrongSnapshot { expected: u64, got: u64 },
    #[error("entries are not strictly ascending by CID")]
    Unordered,
    #[error("entry of {0} has no versions")]
    EmptyEntry(String),
    #[error("chunk arrived after the last one")]
    AfterEnd,
    #[error("invalid pin options for {cid}: {source}")]
    Spec {
        cid: String,
        #[source]
        source: SpecError,
    },
    #[error(
        "staged snapshot does not match its head: {pins} entries with digest {digest}, head says {head_pins} with {head_digest}"
    )]
    Mismatch {
        pins: u64,
        digest: Digest,
        head_pins: u64,
        head_digest: Digest,
    },
    #[error("snapshot is not complete")]
    Incomplete,
    #[error("chunk makes no progress: no entries, or a cursor that is not its last entry")]
    NoProgress,
    #[error("snapshot head is inconsistent: {0}")]
    BadHead(&'static str),
    #[error("staging store: {0}")]
    Store(#[source] E),
}

/// What the receiver does after a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Ask for the chunk after this cursor.
    Continue { snapshot_id: u64, after: ByteBuf },
    /// The last chunk arrived; call [`SnapshotStage::finish`].
    Complete,
}

/// A snapshot being received into a staging store.
#[derive(Debug, Default)]
pub struct SnapshotStage {
    snapshot_id: Option<u64>,
    head: Option<SnapshotHead>,
    last: Option<Vec<u8>>,
    pins: u64,
    digest: Digest,
    complete: bool,
}

impl SnapshotStage {
    /// A new stage; the staging store must start empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries staged so far.
    pub fn staged(&self) -> u64 {
        self.pins
    }

    /// Entries the snapshot holds, once the head arrived.
    pub fn expected(&self) -> Option<u64> {
        self.head.as_ref().map(|h| h.pins)
    }

    /// Checks one chunk and writes its entries into `store`.
    pub fn accept<S: EntryStore>(
        &mut self,
        store: &mut S,
        chunk: SnapshotChunk,
    ) -> Result<Progress, SnapshotError<S::Error>> {
        if self.complete {
            return Err(SnapshotError::AfterEnd);
        }
        match self.snapshot_id {
            None => {
                let head = chunk.head.ok_or(SnapshotError::MissingHead)?;
                if !head.context.is_superset(&head.applied) {
                    return Err(SnapshotError::BadHead("applied deltas outside the context"));
                }
                self.head = Some(head);
                self.snapshot_id = Some(chunk.snapshot_id);
            }
            Some(expected) if expected != chunk.snapshot_id => {
                return Err(SnapshotError::WrongSnapshot {
                    expected,
                    got: chunk.snapshot_id,
                });
            }
            Some(_) => {}
        }
        let context = &self
            .head
            .as_ref()
            .ok_or(SnapshotError::MissingHead)?
            .context;
        if chunk.next.is_some() && chunk.entries.is_empty() {
            return Err(SnapshotError::NoProgress);
        }
        for entry in chunk.entries {
            if entry.versions.iter().any(|v| !context.contains(v.dot)) {
                return Err(SnapshotError::BadHead(
                    "an entry's dot is outside the context",
                ));
            }
            let cid = entry.cid.to_bytes();
            if self.last.as_ref().is_some_and(|last| cid <= *last) {
                return Err(SnapshotError::Unordered);
            }
            let versions = canonical(entry.cid, entry.versions)?;
            let bytes = codec::encode_entry(&versions);
            self.digest.toggle(&entry_hash(&cid, &bytes));
            self.pins += 1;
            store.put(&cid, &bytes).map_err(SnapshotError::Store)?;
            self.last = Some(cid);
        }
        match (chunk.next, self.snapshot_id) {
            (Some(after), Some(snapshot_id)) => {
                if self.last.as_deref() != Some(after.as_slice()) {
                    return Err(SnapshotError::NoProgress);
                }
                Ok(Progress::Continue { snapshot_id, after })
            }
            _ => {
                self.complete = true;
                Ok(Progress::Complete)
            }
        }
    }

    /// Checks the staged entries against the head. Returns the head the staged state has:
    /// join the staged entries, [`prune_entry`](crate::pinset::prune_entry) local entries it
    /// lacks, then [`Head::absorb`].
    pub fn finish<E>(self) -> Result<Head, SnapshotError<E>> {
        let head = match (self.complete, self.head) {
            (true, Some(head)) => head,
            _ => return Err(SnapshotError::Incomplete),
        };
        if self.pins != head.pins || self.digest != head.state_digest {
            return Err(SnapshotError::Mismatch {
                pins: self.pins,
                digest: self.digest,
                head_pins: head.pins,
                head_digest: head.state_digest,
            });
        }
        Ok(Head {
            context: head.context,
            applied: head.applied,
            digest: self.digest,
            pins: self.pins,
        })
    }
}

fn canonical<E>(cid: Cid, mut versions: Vec<Version>) -> Result<Vec<Version>, SnapshotError<E>> {
    if versions.is_empty() {
        return Err(SnapshotError::EmptyEntry(cid.to_string()));
    }
    for v in &versions {
        v.spec.validate().map_err(|source| SnapshotError::Spec {
            cid: cid.to_string(),
            source,
        })?;
    }
    normalize(&mut versions);
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Op;
    use crate::dot::{ActorId, Dot};
    use crate::pinset::{MemEntries, MemPinset};
    use crate::sim::sim_cid;
    use crate::spec::PinSpec;
    use std::convert::Infallible;

    fn state(n: u64) -> MemPinset {
        let mut s = MemPinset::new();
        for i in 0..n {
            let spec = PinSpec::named(format!("p{i}"));
            s.local(
                Dot::new(ActorId(1), i + 1),
                sim_cid(i),
                Op::Pin { at: i, spec },
            );
        }
        s
    }

    fn stage_all(chunks: Vec<SnapshotChunk>) -> Result<MemPinset, String> {
        let mut stage = SnapshotStage::new();
        let mut entries = MemEntries::default();
        for chunk in chunks {
            stage
                .accept(&mut entries, chunk)
                .map_err(|e| e.to_string())?;
        }
        let head = stage.finish::<Infallible>().map_err(|e| e.to_string())?;
        Ok(MemPinset::from_parts(entries, head))
    }

    #[test]
    fn a_chunked_snapshot_rebuilds_the_state() {
        let source = state(300);
        let chunks = source.snapshot(9, 1000);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        assert!(chunks.iter().skip(1).all(|c| c.head.is_none()));
        assert_eq!(stage_all(chunks).expect("valid"), source);
        // An empty state is one chunk with a head and nothing else.
        let empty = MemPinset::new().snapshot(1, 1000);
        assert_eq!(empty.len(), 1);
        assert_eq!(stage_all(empty).expect("valid"), MemPinset::new());
    }

    #[test]
    fn torn_or_mixed_snapshots_are_refused() {
        let source = state(100);
        let mut chunks = source.snapshot(9, 500);
        chunks.remove(2);
        assert!(
            stage_all(chunks)
                .expect_err("torn")
                .contains("does not match its head")
        );

        let mut chunks = source.snapshot(9, 500);
        chunks[1].snapshot_id = 10;
        assert!(
            stage_all(chunks)
                .expect_err("mixed")
                .contains("snapshot 10")
        );

        let mut chunks = source.snapshot(9, 500);
        chunks[0].head = None;
        assert!(stage_all(chunks).expect_err("headless").contains("no head"));

        let mut chunks = source.snapshot(9, 500);
        chunks.swap(1, 2);
        assert!(
            stage_all(chunks)
                .expect_err("reordered")
                .contains("ascending")
        );

        let mut chunks = source.snapshot(9, 500);
        chunks.pop();
        let mut stage = SnapshotStage::new();
        let mut entries = MemEntries::default();
        for c in chunks {
            stage.accept(&mut entries, c).expect("valid so far");
        }
        assert!(matches!(
            stage.finish::<Infallible>(),
            Err(SnapshotError::Incomplete)
        ));

        let mut chunks = source.snapshot(9, 500);
        chunks[1].entries[0].versions[0].spec.name = "x".repeat(300);
        assert!(
            stage_all(chunks)
                .expect_err("bad spec")
                .contains("invalid pin options")
        );

        let mut chunks = source.snapshot(9, 500);
        chunks[1].entries[0].versions[0].dot = Dot::new(ActorId(9), 1);
        assert!(
            stage_all(chunks)
                .expect_err("planted dot")
                .contains("outside the context")
        );

        let mut chunks = source.snapshot(9, 500);
        chunks[1].entries.clear();
        assert!(
            stage_all(chunks)
                .expect_err("stalling")
                .contains("no progress")
        );
    }

    #[test]
    fn every_chunk_carries_an_entry_whatever_the_budget() {
        let source = state(3);
        let chunks = source.snapshot(1, 0);
        assert_eq!(chunks.len(), 3);
        assert_eq!(stage_all(chunks).expect("valid"), source);
    }
}
