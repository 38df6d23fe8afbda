//! A follower's storage cap (`follower.max_storage`): once its IPFS node holds that many bytes,
//! new pins are skipped, not started. A DAG's size is known only once fetched, so the cap is
//! checked before each new pin against the node's size as last read (at most [`READ_EVERY`]
//! old, and before [`READ_AFTER`] new pins started since): the node may go over it by the pins
//! under way. Pins the node holds are
//! kept. Skipped pins stay `queued` with a note saying why, and are taken again, in the order
//! of their keys and [`READ_AFTER`] at a time (each batch checked against a new reading), once
//! the node is under the cap (pins were removed, or the cap raised and the follower
//! restarted). A reading that fails or takes longer than [`READ_LIMIT`] counts as one: the
//! last size stands until the next. The skipped CIDs are held in memory (about 100 bytes
//! each).

use std::collections::BTreeSet;
use std::time::Duration;

use pinmesh_protocol::Cid;
use tokio::time::Instant;

use super::super::decide::{Decision, Next};
use crate::store::{PinState, Status};

/// How old a reading of the node's size may be when a new pin is checked against the cap; also
/// how often it is read while pins are skipped.
pub(super) const READ_EVERY: Duration = Duration::from_secs(2);

/// The node's size is read again once this many new pins started since the last reading.
pub(super) const READ_AFTER: usize = 8;

/// How long reading the node's size may hold up the reconciler.
pub(super) const READ_LIMIT: Duration = Duration::from_secs(5);

pub(super) struct Cap {
    /// Bytes.
    limit: u64,
    /// The node's size at the last reading, and when.
    used: u64,
    read_at: Option<Instant>,
    /// New pins started since.
    started: usize,
    /// Pins not started because the cap was reached, by key.
    skipped: BTreeSet<Cid>,
}

impl Cap {
    pub(super) fn new(limit: u64) -> Self {
        Cap {
            limit,
            used: 0,
            read_at: None,
            started: 0,
            skipped: BTreeSet::new(),
        }
    }

    /// Whether the node's size is due to be read again.
    pub(super) fn stale(&self, now: Instant) -> bool {
        self.started >= READ_AFTER
            || self
                .read_at
                .is_none_or(|at| now.saturating_duration_since(at) >= READ_EVERY)
    }

    /// A new pin was started.
    pub(super) fn started(&mut self) {
        self.started += 1;
    }

    /// Takes a reading of the node's size (`None`: it could not be read; the last one stands
    /// until the next is due). Returns up to [`READ_AFTER`] skipped pins, the first in key
    /// order, when the node is under the cap (to queue again).
    pub(super) fn read(&mut self, used: Option<u64>, now: Instant) -> Vec<Cid> {
        self.read_at = Some(now);
        let Some(used) = used else {
            return Vec::new();
        };
        self.used = used;
        self.started = 0;
        if self.reached() {
            return Vec::new();
        }
        std::iter::from_fn(|| self.skipped.pop_first())
            .take(READ_AFTER)
            .collect()
    }

    /// When the node's size should be read again to take skipped pins (none skipped: never).
    pub(super) fn next_read(&self) -> Option<Instant> {
        if self.skipped.is_empty() {
            return None;
        }
        Some(self.read_at.map_or_else(Instant::now, |at| at + READ_EVERY))
    }

    pub(super) fn reached(&self) -> bool {
        self.used >= self.limit
    }

    /// Pins skipped and not taken since.
    pub(super) fn skipped(&self) -> u64 {
        self.skipped.len() as u64
    }

    /// A CID came through the change feed: it is decided again.
    pub(super) fn changed(&mut self, cid: &Cid) {
        self.skipped.remove(cid);
    }

    /// Skips a new pin of `cid`: no call, its record `queued` with why (written when it was
    /// not so already).
    pub(super) fn skip(&mut self, cid: Cid, state: Option<&PinState>, now_ms: u64) -> Decision {
        self.skipped.insert(cid);
        let note = format!(
            "skipped: the IPFS node holds {}, at or over follower.max_storage ({})",
            bytesize::ByteSize::b(self.used),
            bytesize::ByteSize::b(self.limit)
        );
        let unchanged = state.is_some_and(|s| {
            s.status == Status::Queued
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("skipped:"))
        });
        let record = (!unchanged).then(|| PinState {
            status: Status::Queued,
            owned: state.is_some_and(|s| s.owned),
            attempts: state.map_or(0, |s| s.attempts),
            error: Some(note),
            updated_ms: now_ms,
        });
        Decision {
            record,
            durable: false,
            next: Next::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use pinmesh_protocol::sim::sim_cid;

    use super::*;

    #[test]
    fn pins_are_skipped_at_the_cap_and_taken_again_in_key_order_under_it() {
        let t0 = Instant::now();
        let mut cap = Cap::new(1000);
        assert!(cap.stale(t0));
        assert_eq!(cap.read(Some(400), t0), Vec::<Cid>::new());
        assert!(!cap.reached() && !cap.stale(t0 + READ_EVERY / 2));
        assert!(cap.stale(t0 + READ_EVERY));
        for _ in 0..READ_AFTER {
            assert!(!cap.stale(t0));
            cap.started();
        }
        assert!(cap.stale(t0), "read again after {READ_AFTER} new pins");
        assert_eq!(cap.read(Some(1000), t0), Vec::<Cid>::new());
        assert!(cap.reached());
        let cids: Vec<Cid> = (0..12).map(sim_cid).collect();
        for cid in cids.iter().rev() {
            let decision = cap.skip(*cid, None, 7);
            assert_eq!(decision.next, Next::Idle);
            let record = decision.record.expect("recorded");
            assert_eq!((record.status, record.owned), (Status::Queued, false));
            assert!(
                record
                    .error
                    .expect("why")
                    .contains("follower.max_storage (1000 B)")
            );
        }
        assert_eq!(cap.skipped(), 12);
        assert_eq!(cap.next_read(), Some(t0 + READ_EVERY));
        // Skipped again: its record stands.
        let skipped = PinState {
            status: Status::Queued,
            owned: false,
            attempts: 0,
            error: Some("skipped: before".into()),
            updated_ms: 1,
        };
        assert_eq!(cap.skip(cids[0], Some(&skipped), 9).record, None);
        // A reading that fails puts the next one off, and changes nothing else.
        assert_eq!(cap.read(None, t0 + READ_EVERY), Vec::<Cid>::new());
        assert!(cap.reached() && !cap.stale(t0 + READ_EVERY));
        assert_eq!(cap.next_read(), Some(t0 + READ_EVERY * 2));
        // One changed meanwhile (it is decided again), then the node is under the cap: the
        // others come back in key order, READ_AFTER at a time.
        cap.changed(&cids[2]);
        assert_eq!(cap.read(Some(1200), t0 + READ_EVERY), Vec::<Cid>::new());
        let mut expected: Vec<Cid> = cids.clone();
        expected.remove(2);
        expected.sort();
        assert_eq!(
            cap.read(Some(999), t0 + READ_EVERY * 2),
            expected[..READ_AFTER]
        );
        assert_eq!(
            cap.read(Some(999), t0 + READ_EVERY * 3),
            expected[READ_AFTER..]
        );
        assert_eq!((cap.skipped(), cap.next_read()), (0, None));
    }
}
