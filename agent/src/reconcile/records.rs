//! The reconciler's side of the store: its status records (written through the store's
//! `status-1` writers), the entries it decides on, and the full comparison. Writes wait in
//! [`Records`] until the next flush; every read and commit runs on a blocking thread, never on
//! the async runtime.

use std::collections::HashMap;
use std::sync::Arc;

use pinmesh_protocol::{Cid, PinMode, Version};
use tracing::debug;

use super::cycle::{Compared, compare, prune};
use crate::store::{PinState, Store, StoreError};

/// What the store holds of one CID.
pub(super) struct Stored {
    pub versions: Option<Vec<Version>>,
    /// A pending record stands in for the stored one.
    pub state: Option<PinState>,
}

/// One CID's read: what the store holds, or why it could not be read.
pub(super) type Read = Result<Stored, String>;

pub(super) struct Records {
    store: Store,
    /// Which pins this agent holds.
    role: Arc<super::Role>,
    /// Status records to write with the next flush.
    pending: HashMap<Cid, PinState>,
    /// The next flush must be durable (it records ownership before a pin).
    durable: bool,
}

impl Records {
    pub fn new(store: Store, role: super::Role) -> Self {
        Records {
            store,
            role: Arc::new(role),
            pending: HashMap::new(),
            durable: false,
        }
    }

    /// Which pins this agent holds.
    pub fn role(&self) -> &super::Role {
        &self.role
    }

    /// Records `state` with the next flush.
    pub fn record(&mut self, cid: Cid, state: PinState) {
        self.pending.insert(cid, state);
    }

    /// Makes the next flush durable: it records ownership of a pin about to be made.
    pub fn durably(&mut self) {
        self.durable = true;
    }

    /// Each CID's entry and status record, read in one transaction, in the order of `cids`.
    /// One CID's unreadable entry or record (a corrupt value) fails that CID only; the whole
    /// read fails when the transaction cannot be had.
    pub async fn read(&self, cids: Vec<Cid>) -> Result<Vec<Read>, String> {
        let stored = blocking(&self.store, move |store| {
            let reader = store.reader()?;
            let one = |cid: &Cid| -> Result<_, StoreError> {
                Ok((reader.versions(cid)?, reader.status(cid)?))
            };
            Ok(cids
                .into_iter()
                .map(|cid| (cid, one(&cid).map_err(|err| err.to_string())))
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(stored
            .into_iter()
            .map(|(cid, read)| {
                read.map(|(versions, state)| Stored {
                    versions,
                    state: self.pending.get(&cid).cloned().or(state),
                })
            })
            .collect())
    }

    /// Writes pending records in one transaction; a failed commit keeps them for the next
    /// flush.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let durable = self.durable;
        let pending = Arc::new(std::mem::take(&mut self.pending));
        let written = blocking(&self.store, {
            let pending = pending.clone();
            move |store| store.write_statuses(pending.iter(), durable)
        })
        .await;
        match written {
            Ok(()) => {
                self.durable = false;
                Ok(())
            }
            Err(err) => {
                // Nothing was recorded meanwhile (the actor waited for the commit).
                self.pending = Arc::try_unwrap(pending).unwrap_or_else(|shared| (*shared).clone());
                Err(err)
            }
        }
    }

    /// Every CID in an error status.
    pub async fn errored(&self) -> Result<Vec<Cid>, String> {
        blocking(&self.store, |store| {
            let reader = store.reader()?;
            let mut out = Vec::new();
            for item in reader.statuses(None)? {
                let (cid, state) = item?;
                if state.status.is_error() {
                    out.push(cid);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The full comparison of the pinset and every record with `actual` (see [`compare`]),
    /// pruning stale records; hands `actual` back with what it found.
    pub async fn compare(
        &self,
        actual: HashMap<Cid, PinMode>,
    ) -> (HashMap<Cid, PinMode>, Result<Compared, String>) {
        let actual = Arc::new(actual);
        let found = blocking(&self.store, {
            let actual = actual.clone();
            let role = self.role.clone();
            move |store| {
                let found = compare(store, &actual, &role)?;
                let pruned = prune(store, &found.stale)?;
                if pruned > 0 {
                    debug!(pruned, "removed old records of unpinned CIDs");
                }
                Ok(found)
            }
        })
        .await;
        let actual = Arc::try_unwrap(actual).unwrap_or_else(|shared| (*shared).clone());
        (actual, found)
    }
}

/// Runs `work` on the store on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: &Store,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(result) => result.map_err(|err| err.to_string()),
        Err(err) => Err(format!("a storage task failed: {err}")),
    }
}
