//! The change feed: the CIDs whose entries changed, for the reconciler's work list.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pinmesh_protocol::Cid;
use tokio::sync::mpsc;

/// Batches of changed CIDs in flight to the reconciler. When it falls this far behind, it
/// compares everything instead.
pub const CHANGE_CAPACITY: usize = 256;

/// The replica's side of the change feed: after each commit, the CIDs whose entries changed.
/// Nothing is lost when the feed is full or nobody listens: `rescan` is raised, and the
/// reconciler compares the whole pinset (as it does at every start).
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    tx: mpsc::Sender<Vec<Cid>>,
    rescan: Arc<AtomicBool>,
}

/// The reconciler's side of the change feed.
#[derive(Debug)]
pub struct Changes {
    pub rx: mpsc::Receiver<Vec<Cid>>,
    /// Set when changes were not itemised (feed full, snapshot joined): compare everything.
    pub rescan: Arc<AtomicBool>,
}

pub fn change_feed() -> (ChangeFeed, Changes) {
    let (tx, rx) = mpsc::channel(CHANGE_CAPACITY);
    let rescan = Arc::new(AtomicBool::new(false));
    (
        ChangeFeed {
            tx,
            rescan: rescan.clone(),
        },
        Changes { rx, rescan },
    )
}

impl ChangeFeed {
    pub(super) fn send(&self, cids: Vec<Cid>, everything: bool) {
        if everything {
            self.rescan.store(true, Ordering::Release);
        }
        if cids.is_empty() && !everything {
            return;
        }
        if self.tx.try_send(cids).is_err() {
            // Full: the reconciler will see the flag with the next batch it reads.
            self.rescan.store(true, Ordering::Release);
        }
    }
}
