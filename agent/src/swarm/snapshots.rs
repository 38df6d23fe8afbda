//! Snapshot sessions of the sync server: each is one [`SnapshotView`] of the store kept open
//! across the requests for its chunks, bound to the peer that began it and to where its last
//! chunk ended, and released [`SNAPSHOT_TTL`] after it began whatever happens (an open view
//! keeps old pages of the database from being reused).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use pinmesh_protocol::SnapshotChunk;
use pinmesh_protocol::digest::Digest;

use crate::store::{SnapshotView, Store, StoreError};

/// A snapshot's view is released this long after it began.
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

#[derive(Default)]
pub struct Snapshots {
    open: Mutex<HashMap<u64, Session>>,
}

struct Session {
    view: SnapshotView,
    peer: PeerId,
    started: Instant,
    /// The cursor the next request must continue from.
    cursor: Option<Vec<u8>>,
    /// What the entries served so far add up to; at the end they must match the view's head.
    served: (u64, Digest),
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

impl Snapshots {
    /// Releases snapshots past their time.
    pub fn sweep(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.started.elapsed() < SNAPSHOT_TTL);
    }

    /// The next chunk of snapshot `id` for `peer` (a new snapshot of `store` when `None`),
    /// after the CID `after`, of at most `limit` entries or about `budget` bytes.
    pub fn chunk(
        &self,
        store: &Store,
        peer: &PeerId,
        id: Option<u64>,
        after: Option<&[u8]>,
        limit: usize,
        budget: usize,
    ) -> Result<SnapshotChunk, ServeError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.started.elapsed() < SNAPSHOT_TTL);
        let (id, first) = match id {
            Some(id) => (id, false),
            None => {
                // A peer restarting its fetch replaces its own snapshot.
                open.retain(|_, s| s.peer != *peer);
                if open.len() >= MAX_OPEN_SNAPSHOTS {
                    return Err(ServeError::Busy);
                }
                let id = rand::random::<u64>();
                let session = Session {
                    view: store.snapshot_view()?,
                    peer: *peer,
                    started: Instant::now(),
                    cursor: None,
                    served: (0, Digest::ZERO),
                };
                open.insert(id, session);
                (id, true)
            }
        };
        // Only the peer that began it may continue it, and only where the last chunk ended.
        let session = open
            .get_mut(&id)
            .filter(|s| s.peer == *peer && s.cursor.as_deref() == after)
            .ok_or(ServeError::Unknown(id))?;
        let (chunk, digest) = session.view.chunk(id, first, after, limit, budget)?;
        session.served.0 += chunk.entries.len() as u64;
        session.served.1.toggle(&digest);
        match &chunk.next {
            Some(next) => session.cursor = Some(next.to_vec()),
            None => {
                let served = session.served;
                let head = session.view.head();
                let expected = (head.pins, head.digest);
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

    /// Makes every open snapshot `by` older, as if begun that long ago.
    #[cfg(test)]
    fn backdate(&self, by: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for s in open.values_mut() {
            s.started = s.started.checked_sub(by).expect("a time that old");
        }
    }
}

#[cfg(test)]
mod tests;
