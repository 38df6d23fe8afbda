//! The listing cycle: one streamed listing of the node's pins ([`list_node`]), the full
//! comparison of the pinset and every status record against it ([`compare`], [`prune`]; run
//! on a blocking thread), and when to list again ([`Listing`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use pinmesh_protocol::{Cid, PinMode};

use super::decide::{Job, expiry_of, satisfies, stale, wanted_of};
use crate::ipfs::{IpfsError, PinBackend, content_key};
use crate::replica::now_ms;
use crate::store::{Status, Store, StoreError};

/// Assumed cost of asking the node about one CID (two calls), against which a fresh listing is
/// weighed when many new pins wait.
const CHECK_COST: Duration = Duration::from_millis(2);

/// When the node was listed, and when it is listed next.
#[derive(Debug)]
pub(super) struct Listing {
    /// When the last complete listing began; `None` before the first.
    pub started: Option<Instant>,
    /// How long it took.
    pub took: Duration,
    /// Many new pins wait: list the node instead of asking about each.
    pub now: bool,
    /// A listing for that failed then; ask about each CID for a while.
    pub failed: Option<Instant>,
    /// The next full comparison.
    pub next_full: Instant,
    /// How long the last full comparison took, and when it ended.
    pub cost: Duration,
    pub done: Option<Instant>,
    /// When new work last arrived from the change feed.
    pub last_enqueued: Option<Instant>,
}

impl Listing {
    /// Before the first listing, with the first full comparison due `now`.
    pub fn new(now: Instant) -> Self {
        Listing {
            started: None,
            took: Duration::ZERO,
            now: false,
            failed: None,
            next_full: now,
            cost: Duration::ZERO,
            done: None,
            last_enqueued: None,
        }
    }

    /// Whether the last listing began after something queued at `at`: then it tells whether
    /// the node had the pin before this agent was asked for it.
    pub fn since(&self, at: Option<Instant>) -> bool {
        match (self.started, at) {
            (Some(listed), Some(at)) => listed >= at,
            _ => false,
        }
    }

    /// The change feed was not itemised (it overflowed, a snapshot was joined): compare
    /// everything, but not sooner than four times the last comparison's cost after it, so a
    /// busy feed does not turn into back-to-back comparisons.
    pub fn rescan(&mut self, now: Instant) {
        let earliest = self.done.map_or(now, |done| done + self.cost * 4);
        self.next_full = self.next_full.min(earliest.max(now));
    }

    /// Whether to list the node before deciding `waiting` queued CIDs: when new ones arrived
    /// since the last listing and one listing costs less than asking about each (not for
    /// `pause` after a listing for that failed).
    pub fn worth_relisting(&self, waiting: usize, now: Instant, pause: Duration) -> bool {
        let may = self.failed.is_none_or(|at| now.duration_since(at) > pause);
        let news = self.last_enqueued.is_some() && !self.since(self.last_enqueued);
        may && news && waiting > 1 && CHECK_COST * waiting as u32 > self.took
    }
}

/// The node's recursive and direct pins, by content (see [`content_key`]).
pub(super) async fn list_node(
    backend: &dyn PinBackend,
) -> Result<HashMap<Cid, PinMode>, IpfsError> {
    let mut actual = HashMap::new();
    // Direct first: a recursive pin listed after it covers the same CID.
    for mode in [PinMode::Direct, PinMode::Recursive] {
        let mut sink = |cid: Cid| {
            actual.insert(content_key(&cid), mode);
        };
        backend.list(mode, &mut sink).await?;
    }
    Ok(actual)
}

/// Updates `actual` (by content) after `job` on `cid` succeeded: a pin adds its mode (a
/// recursive pin already there stays recursive), an unpin removes the content's pin, and so
/// does a release that let the pin go (`held`: it kept it).
pub(super) fn node_after(actual: &mut HashMap<Cid, PinMode>, cid: &Cid, job: &Job, held: bool) {
    let key = content_key(cid);
    match job {
        Job::Pin { wanted, .. } => {
            let held = actual.entry(key).or_insert(wanted.mode);
            if wanted.mode == PinMode::Recursive {
                *held = PinMode::Recursive;
            }
        }
        Job::Unpin => {
            actual.remove(&key);
        }
        Job::Release(_) => {
            if !held {
                actual.remove(&key);
            }
        }
    }
}

/// What [`compare`] finds.
#[derive(Debug, Default)]
pub(super) struct Compared {
    /// CIDs whose status may not match the pinset and the node.
    pub check: Vec<Cid>,
    /// [`stale`] records of CIDs the pinset does not want.
    pub stale: Vec<Cid>,
    /// Every pin with an expiry (Unix seconds), passed or not, allocated here or not.
    pub expiring: Vec<(u64, Cid)>,
}

/// The whole pinset and every status record compared against `actual`: the CIDs to look at,
/// the stale records, the pins that expire.
pub(super) fn compare(
    store: &Store,
    actual: &HashMap<Cid, PinMode>,
    role: &super::Role,
) -> Result<Compared, StoreError> {
    let reader = store.reader()?;
    let now_ms = now_ms();
    let now = now_ms / 1000;
    let mut found = Compared::default();
    for item in reader.entries_with_status(None)? {
        let (cid, versions, state) = item?;
        if let Some(at) = expiry_of(&versions) {
            found.expiring.push((at, cid));
        }
        let have = actual.get(&content_key(&cid)).copied();
        let settled = match wanted_of(&cid, &versions, now, role) {
            Some(w) => satisfies(have, w.mode) && state.is_some_and(|s| s.status == Status::Pinned),
            None => {
                if state.as_ref().is_some_and(|s| stale(s, now_ms)) {
                    found.stale.push(cid);
                }
                state.is_none_or(|s| !s.owned && s.status == Status::Unpinned)
            }
        };
        if !settled {
            found.check.push(cid);
        }
    }
    for item in reader.statuses(None)? {
        let (cid, state) = item?;
        if reader.has_entry(&cid)? {
            continue; // compared above
        }
        if stale(&state, now_ms) {
            found.stale.push(cid);
        } else if state.owned || state.status != Status::Unpinned {
            found.check.push(cid);
        }
    }
    Ok(found)
}

/// Removes the records `compare` found stale, each only if it still is (a CID pinned again
/// since has a newer record). Returns how many went.
pub(super) fn prune(store: &Store, cids: &[Cid]) -> Result<usize, StoreError> {
    let now_ms = now_ms();
    store.remove_statuses_if(cids, |state| stale(state, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::UNPINNED_KEEP;
    use crate::reconcile::decide::{Wanted, record};
    use crate::store::PinState;

    #[test]
    fn many_new_pins_are_worth_a_listing_and_a_few_or_a_failed_one_are_not() {
        let t0 = Instant::now();
        let mut listing = Listing::new(t0);
        listing.started = Some(t0);
        listing.took = Duration::from_millis(100); // as long as asking about 50 CIDs
        let pause = Duration::from_secs(2);
        let later = t0 + Duration::from_secs(1);
        assert!(
            !listing.worth_relisting(500, later, pause),
            "nothing new since"
        );
        listing.last_enqueued = Some(later);
        assert!(listing.worth_relisting(51, later, pause));
        assert!(
            !listing.worth_relisting(50, later, pause),
            "asking costs no more"
        );
        assert!(!listing.worth_relisting(1, later, pause));
        listing.failed = Some(later);
        assert!(
            !listing.worth_relisting(500, later + pause, pause),
            "just failed"
        );
        let after = later + pause + Duration::from_millis(1);
        assert!(listing.worth_relisting(500, after, pause));
        listing.started = Some(after);
        assert!(!listing.worth_relisting(500, after, pause), "listed since");
    }

    #[test]
    fn a_job_done_updates_the_nodes_pins_by_content() {
        let raw = pinmesh_protocol::sim::sim_cid(1);
        let (v1, v0) = (
            Cid::new_v1(0x70, *raw.hash()),
            Cid::new_v0(*raw.hash()).expect("v0"),
        );
        let pin = |mode| Job::Pin {
            wanted: Wanted {
                mode,
                origins: Vec::new(),
            },
            owned: true,
        };
        let mut actual = HashMap::new();
        node_after(&mut actual, &v0, &pin(PinMode::Recursive), true);
        node_after(&mut actual, &v1, &pin(PinMode::Direct), true);
        assert_eq!(
            actual.get(&content_key(&v1)),
            Some(&PinMode::Recursive),
            "still recursive"
        );
        node_after(&mut actual, &v1, &Job::Unpin, true);
        assert!(actual.is_empty(), "one content, one pin: {actual:?}");
        node_after(&mut actual, &raw, &pin(PinMode::Direct), true);
        node_after(&mut actual, &raw, &pin(PinMode::Recursive), true);
        assert_eq!(actual.get(&raw), Some(&PinMode::Recursive));
    }

    #[test]
    fn a_rescan_waits_a_few_times_the_last_comparisons_cost() {
        let t0 = Instant::now();
        let mut listing = Listing::new(t0 + Duration::from_secs(3600));
        listing.rescan(t0);
        assert_eq!(listing.next_full, t0, "no comparison yet: now");
        listing.next_full = t0 + Duration::from_secs(3600);
        listing.cost = Duration::from_secs(1);
        listing.done = Some(t0);
        listing.rescan(t0 + Duration::from_millis(10));
        assert_eq!(listing.next_full, t0 + Duration::from_secs(4));
        listing.rescan(t0 + Duration::from_secs(9));
        assert_eq!(
            listing.next_full,
            t0 + Duration::from_secs(4),
            "never later than planned"
        );
    }

    #[test]
    fn old_unpinned_records_of_unwanted_cids_are_pruned_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, _) = Store::open(&dir.path().join("db.redb"), 4 << 20).expect("store");
        let cid = pinmesh_protocol::sim::sim_cid;
        let long_ago = now_ms() - UNPINNED_KEEP.as_millis() as u64 - 1000;
        let at = |status, owned, updated_ms| PinState {
            updated_ms,
            ..record(status, owned, 0)
        };
        let records = [
            (cid(1), at(Status::Unpinned, false, long_ago)), // stale
            (cid(2), at(Status::Unpinned, false, now_ms())), // recent
            (cid(3), at(Status::Unpinned, true, long_ago)),  // still ours to remove
            (cid(4), at(Status::PinError, false, long_ago)), // an error to show
        ];
        let written = records.iter().map(|(cid, state)| (cid, state));
        store.write_statuses(written, true).expect("write");

        let Compared {
            check: mut look,
            stale,
            expiring,
        } = compare(
            &store,
            &HashMap::new(),
            &super::super::Role::member(libp2p::PeerId::random()),
        )
        .expect("compare");
        assert!(expiring.is_empty());
        assert_eq!(stale, vec![cid(1)]);
        let mut want = vec![cid(3), cid(4)]; // the owned record and the error
        look.sort();
        want.sort();
        assert_eq!(look, want);
        assert_eq!(prune(&store, &stale).expect("prune"), 1);
        let reader = store.reader().expect("read");
        for (cid_n, _) in &records {
            let kept = reader.status(cid_n).expect("read").is_some();
            assert_eq!(kept, *cid_n != cid(1), "{cid_n}");
        }
    }
}
