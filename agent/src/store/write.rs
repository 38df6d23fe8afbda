//! Writing the database: the replica's group transaction ([`Group`]) and the reconciler's
//! status records. Each is one redb write transaction; the tables stay inside the store.

use libp2p::PeerId;
use pinmesh_protocol::{ActorId, Cid, DeltaBatch, Head, codec};
use redb::{Durability, ReadableTable, Table};

use super::records::{PinState, decode_state, encode_state};
use super::{
    AllocatedCount, LOG, META, META_ALLOCATED, META_COUNTER, META_HEAD, METRICS, PEERS, PINS,
    PeerRecord, PinsTable, STAGE, STATUS, Store, StoreError, StoredMetric,
};

/// The replica's tables inside one write transaction.
pub struct Group<'t> {
    /// The pinset, as the protocol's entry store.
    pub pins: PinsTable<'t>,
    /// The snapshot being received, same layout as `pins`.
    pub staged: PinsTable<'t>,
    log: Table<'t, (u64, u64), &'static [u8]>,
    peers: Table<'t, &'static str, &'static [u8]>,
    metrics: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
}

fn no_durability(txn: &mut redb::WriteTransaction) -> Result<(), StoreError> {
    txn.set_durability(Durability::None)
        .map_err(|e| StoreError::Db(redb::Error::from(e)))
}

impl Store {
    /// Runs `apply` over the replica's tables in one write transaction and commits it; durably
    /// when `apply` answers `true` (else the commit is made durable by a later durable one).
    /// Nothing is written when `apply` fails.
    pub fn write_group(
        &self,
        apply: impl FnOnce(&mut Group<'_>) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write()?;
        let durable = {
            let mut group = Group {
                pins: PinsTable {
                    table: txn.open_table(PINS)?,
                    allocated: None,
                },
                staged: PinsTable {
                    table: txn.open_table(STAGE)?,
                    allocated: None,
                },
                log: txn.open_table(LOG)?,
                peers: txn.open_table(PEERS)?,
                metrics: txn.open_table(METRICS)?,
                meta: txn.open_table(META)?,
            };
            apply(&mut group)?
        };
        if !durable {
            no_durability(&mut txn)?;
        }
        txn.commit()?;
        Ok(durable)
    }

    /// Writes the reconciler's records in one transaction, durably if asked.
    pub fn write_statuses<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a Cid, &'a PinState)>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        if !durable {
            no_durability(&mut txn)?;
        }
        {
            let mut table = txn.open_table(STATUS)?;
            for (cid, state) in records {
                let key = cid.to_bytes();
                table.insert(key.as_slice(), encode_state(state).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the records of `cids` that `still` holds for when read in this transaction (a
    /// record rewritten since it was chosen may no longer qualify). Returns how many went.
    pub fn remove_statuses_if(
        &self,
        cids: &[Cid],
        still: impl Fn(&PinState) -> bool,
    ) -> Result<usize, StoreError> {
        if cids.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(STATUS)?;
            for cid in cids {
                let key = cid.to_bytes();
                let qualifies = match table.get(key.as_slice())? {
                    Some(value) => still(&decode_state(value.value())?),
                    None => false,
                };
                if qualifies {
                    table.remove(key.as_slice())?;
                    removed += 1;
                }
            }
        }
        txn.commit()?;
        Ok(removed)
    }
}

impl Group<'_> {
    /// Counts the pins allocated to `peer` on every write of the pinset from here on, starting
    /// from `count`; [`set_head`](Self::set_head) records the count with the head.
    pub fn count_allocated(&mut self, peer: &str, count: u64) {
        self.pins.allocated = Some((peer.to_string(), count));
    }

    /// The count [`count_allocated`](Self::count_allocated) keeps, as of now.
    pub fn allocated(&self) -> Option<u64> {
        self.pins.allocated.as_ref().map(|(_, count)| *count)
    }

    /// Empties the snapshot staging table.
    pub fn clear_staged(&mut self) -> Result<(), StoreError> {
        self.staged.table.retain(|_, _| false)?;
        Ok(())
    }

    /// The keys of entries the pinset holds and the staged snapshot does not.
    pub fn unstaged_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.pins.table.iter()? {
            let (k, _) = item?;
            if self.staged.table.get(k.value())?.is_none() {
                out.push(k.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Calls `join` with the pinset and each staged entry (CID bytes, encoded entry).
    pub fn join_staged<E>(
        &mut self,
        mut join: impl FnMut(&mut PinsTable<'_>, &[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), StoreError>
    where
        StoreError: From<E>,
    {
        for item in self.staged.table.iter()? {
            let (k, v) = item?;
            join(&mut self.pins, k.value(), v.value())?;
        }
        Ok(())
    }

    /// Logs a signed batch under (origin, first counter) unless one is there already. True
    /// when it was new.
    pub fn log_batch(&mut self, batch: &DeltaBatch) -> Result<bool, StoreError> {
        let key = (batch.origin.0, batch.first);
        if self.log.get(key)?.is_some() {
            return Ok(false);
        }
        self.log
            .insert(key, codec::encode_stored(batch).as_slice())?;
        Ok(true)
    }

    /// Deletes `origin`'s batches that lie wholly below counter `cutoff`: the last batch
    /// starting at or below it may hold kept deltas and stays.
    pub fn prune_log(&mut self, origin: ActorId, cutoff: u64) -> Result<(), StoreError> {
        let straddling = self
            .log
            .range((origin.0, 0)..=(origin.0, cutoff))?
            .next_back()
            .transpose()?
            .map(|(k, _)| k.value().1);
        if let Some(first_kept) = straddling {
            self.log
                .retain_in((origin.0, 0)..(origin.0, first_kept), |_, _| false)?;
        }
        Ok(())
    }

    pub fn remember_peer(&mut self, peer: &PeerId, record: &PeerRecord) -> Result<(), StoreError> {
        let key = peer.to_string();
        self.peers
            .insert(key.as_str(), codec::encode_stored(record).as_slice())?;
        Ok(())
    }

    pub fn forget_peer(&mut self, peer: &PeerId) -> Result<(), StoreError> {
        self.peers.remove(peer.to_string().as_str())?;
        Ok(())
    }

    pub fn remember_metric(
        &mut self,
        peer: &PeerId,
        record: &StoredMetric,
    ) -> Result<(), StoreError> {
        let key = peer.to_string();
        self.metrics
            .insert(key.as_str(), codec::encode_stored(record).as_slice())?;
        Ok(())
    }

    pub fn forget_metric(&mut self, peer: &PeerId) -> Result<(), StoreError> {
        self.metrics.remove(peer.to_string().as_str())?;
        Ok(())
    }

    /// Records the last counter used for this agent's dots and the head, and with it the
    /// count of allocated pins when one is kept.
    pub fn set_head(&mut self, counter: u64, head: &Head) -> Result<(), StoreError> {
        self.meta
            .insert(META_COUNTER, counter.to_le_bytes().as_slice())?;
        self.meta
            .insert(META_HEAD, codec::encode_stored(head).as_slice())?;
        if let Some((peer, count)) = &self.pins.allocated {
            let record = AllocatedCount {
                peer: peer.clone(),
                digest: head.digest,
                count: *count,
            };
            self.meta
                .insert(META_ALLOCATED, codec::encode_stored(&record).as_slice())?;
        }
        Ok(())
    }
}
