//! The status read model: where each CID stands on this agent's IPFS node, as lines for
//! `GET /v1/status` and answers to peers' `PinStatus`, read from the pinset and the reconciler's
//! status records in one read transaction.

use libp2p::PeerId;
use pinmesh_protocol::message::MAX_STATUS_ERROR;
use pinmesh_protocol::{Cid, PinStatus, PinStatusEntry, Version};
use serde::{Deserialize, Serialize};

use super::{PinState, Role, Status};
use crate::store::{Store, StoreError};

/// One CID's status on one peer: a line of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusLine {
    #[serde(with = "crate::text")]
    pub cid: Cid,
    #[serde(with = "crate::text")]
    pub peer_id: PeerId,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the last change; 0 when the reconciler has not looked yet.
    pub updated: u64,
    /// This agent added the pin to its node (and will remove it when unwanted).
    pub owned: bool,
}

/// A CID's line from its pinset entry (if any) and its status record (if any).
fn line_of(
    cid: &Cid,
    role: &Role,
    entry: Option<&[Version]>,
    record: Option<PinState>,
) -> StatusLine {
    let wanted = entry.and_then(|versions| pinmesh_protocol::entry::winner(versions));
    let line = |status: Status, record: Option<&PinState>| StatusLine {
        cid: *cid,
        peer_id: role.peer,
        status,
        error: record.and_then(|r| r.error.clone()),
        attempts: record.map_or(0, |r| r.attempts),
        updated: record.map_or(0, |r| r.updated_ms),
        owned: record.is_some_and(|r| r.owned),
    };
    match (wanted, record) {
        // Allocated elsewhere: `remote`, unless this node still holds its own copy (it lets
        // it go once the allocated peers hold the pin).
        (Some(w), Some(r))
            if !role.holds(cid, &w.spec) && r.owned && r.status == Status::Pinned =>
        {
            line(r.status, Some(&r))
        }
        (Some(w), _) if !role.holds(cid, &w.spec) => line(Status::Remote, None),
        (_, Some(record)) => line(record.status, Some(&record)),
        // Wanted, and the reconciler has not looked at it yet.
        (Some(_), None) => line(Status::Queued, None),
        (None, None) => line(Status::Unpinned, None),
    }
}

/// One page (`page` keys read) of every status line: the pins of the pinset, then the CIDs the reconciler still
/// tracks outside it. A page key is a phase byte (0: pins, 1: statuses) and the last key read.
/// Pages are read in separate transactions, so a CID unpinned while the listing runs may show
/// in both phases (its status then, and again at the end).
pub fn scan_page(
    store: &Store,
    role: &Role,
    page: usize,
    after: Option<Vec<u8>>,
    emit: &mut dyn FnMut(StatusLine) -> bool,
) -> Result<Option<Vec<u8>>, StoreError> {
    let reader = store.reader()?;
    let (phase, from) = match &after {
        Some(key) if !key.is_empty() => (key[0], Some(&key[1..])),
        _ => (0, None),
    };
    let next = |phase: u8, cid: &Cid| {
        let mut next = vec![phase];
        next.extend_from_slice(&cid.to_bytes());
        Some(next)
    };
    let mut seen = 0;
    if phase == 0 {
        for item in reader.entries_with_status(from)? {
            let (cid, versions, record) = item?;
            emit(line_of(&cid, role, Some(&versions), record));
            seen += 1;
            if seen == page {
                return Ok(next(0, &cid));
            }
        }
    }
    let from = if phase == 1 { from } else { None };
    for item in reader.statuses(from)? {
        let (cid, record) = item?;
        seen += 1;
        if !reader.has_entry(&cid)? {
            emit(line_of(&cid, role, None, Some(record)));
        }
        if seen >= page {
            return Ok(next(1, &cid));
        }
    }
    Ok(None)
}

/// This agent's lines for `cids`, in order (answers a peer's `PinStatus`).
pub fn lines_for(store: &Store, role: &Role, cids: &[Cid]) -> Result<Vec<StatusLine>, StoreError> {
    let mut lines = Vec::with_capacity(cids.len());
    scan_some(store, role, cids, &mut |line| {
        lines.push(line);
        true
    })?;
    Ok(lines)
}

impl From<Status> for PinStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Queued => PinStatus::Queued,
            Status::Pinning => PinStatus::Pinning,
            Status::Pinned => PinStatus::Pinned,
            Status::PinError => PinStatus::PinError,
            Status::Unpinning => PinStatus::Unpinning,
            Status::Unpinned => PinStatus::Unpinned,
            Status::UnpinError => PinStatus::UnpinError,
            Status::Remote => PinStatus::Remote,
            Status::UnexpectedlyUnpinned => PinStatus::UnexpectedlyUnpinned,
        }
    }
}

impl StatusLine {
    /// The wire form, error text cut to [`MAX_STATUS_ERROR`].
    pub fn into_entry(self) -> PinStatusEntry {
        let error = self.error.map(|mut e| {
            if e.len() > MAX_STATUS_ERROR {
                let mut cut = MAX_STATUS_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
            e
        });
        PinStatusEntry {
            cid: self.cid,
            status: self.status.into(),
            error,
            attempts: self.attempts,
            updated_ms: self.updated,
        }
    }
}

pub fn scan_some(
    store: &Store,
    role: &Role,
    cids: &[Cid],
    emit: &mut dyn FnMut(StatusLine) -> bool,
) -> Result<(), StoreError> {
    let reader = store.reader()?;
    for cid in cids {
        let versions = reader.versions(cid)?;
        let record = reader.status(cid)?;
        if !emit(line_of(cid, role, versions.as_deref(), record)) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod wire_names {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_status_goes_on_the_wire_under_its_own_name() {
        for status in Status::value_variants() {
            let wire = PinStatus::from(*status);
            assert!(!matches!(wire, PinStatus::Unknown(_)), "{status}");
            assert_eq!(wire.to_string(), status.to_string());
        }
    }
}
