//! The reconciler's work queue: where each CID stands in the workflow, in one map, so that a
//! CID is in exactly one place by construction (queued, waiting out a backoff, running, or
//! waiting for the agent to be synced) or in none (settled, or being decided).
//!
//! The lines (new work ahead of the rest) and the retry timetable only order the map's
//! entries: an entry in them counts only while the map still says the CID is there, under the
//! same ticket. Every move goes through [`WorkQueue::set`], which keeps the counts.

use std::collections::{BTreeMap, HashMap, VecDeque};

use pinmesh_protocol::Cid;
use tokio::time::Instant;

/// Where one CID is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Waiting for a worker since `since`; new work (`priority`) goes first.
    Queued {
        since: Instant,
        priority: bool,
        ticket: u64,
    },
    /// Waiting out a backoff until `at`.
    Retry { at: Instant, ticket: u64 },
    /// A worker is on it; `rerun`: it changed meanwhile, so it is decided again when the
    /// worker ends.
    Running { rerun: bool },
    /// An unpin waiting for the agent to be synced.
    WaitingForSync,
}

/// How many CIDs are in each kind of place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub queued: usize,
    pub retrying: usize,
    pub running: usize,
    pub waiting_for_sync: usize,
}

#[derive(Debug, Default)]
pub(super) struct WorkQueue {
    places: HashMap<Cid, Place>,
    /// Queued CIDs in order: `[priority, normal]`.
    lines: [VecDeque<(u64, Cid)>; 2],
    /// Retries by due time (the ticket keeps equal times apart).
    retries: BTreeMap<(Instant, u64), Cid>,
    tickets: u64,
    counts: Counts,
}

impl WorkQueue {
    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn place(&self, cid: &Cid) -> Option<Place> {
        self.places.get(cid).copied()
    }

    /// Queues `cid`, unless it is on its way already (queued, waiting out a backoff or for
    /// `synced`); a running CID is decided again when its worker ends.
    pub fn enqueue(&mut self, cid: Cid, priority: bool, now: Instant) {
        match self.place(&cid) {
            None => {
                let ticket = self.ticket();
                self.set(
                    cid,
                    Some(Place::Queued {
                        since: now,
                        priority,
                        ticket,
                    }),
                );
            }
            Some(Place::Running { .. }) => self.set(cid, Some(Place::Running { rerun: true })),
            Some(_) => {}
        }
    }

    /// Queues `cid` now, even if it is waiting out a backoff or for `synced` (a change, a
    /// recover).
    pub fn enqueue_now(&mut self, cid: Cid, priority: bool, now: Instant) {
        if matches!(
            self.place(&cid),
            Some(Place::Retry { .. } | Place::WaitingForSync)
        ) {
            self.set(cid, None);
        }
        self.enqueue(cid, priority, now);
    }

    /// Takes the next queued CID (new work first) and when it was queued; it is then in no
    /// place until [`start`](Self::start), [`wait_for_sync`](Self::wait_for_sync),
    /// [`retry_at`](Self::retry_at) or [`enqueue`](Self::enqueue) puts it somewhere.
    pub fn pop(&mut self) -> Option<(Cid, Instant)> {
        for line in 0..2 {
            while let Some((ticket, cid)) = self.lines[line].pop_front() {
                if let Some(Place::Queued {
                    since, ticket: t, ..
                }) = self.place(&cid)
                    && t == ticket
                {
                    self.set(cid, None);
                    return Some((cid, since));
                }
            }
        }
        None
    }

    /// Every queued CID, taken at once (in the order [`pop`](Self::pop) gives them).
    pub fn drain(&mut self) -> Vec<Cid> {
        std::iter::from_fn(|| self.pop().map(|(cid, _)| cid)).collect()
    }

    pub fn start(&mut self, cid: Cid) {
        self.set(cid, Some(Place::Running { rerun: false }));
    }

    pub fn wait_for_sync(&mut self, cid: Cid) {
        self.set(cid, Some(Place::WaitingForSync));
    }

    /// A worker on `cid` ended: it is in no place now. Returns whether it changed meanwhile.
    pub fn finish(&mut self, cid: &Cid) -> bool {
        match self.place(cid) {
            Some(Place::Running { rerun }) => {
                self.set(*cid, None);
                rerun
            }
            _ => false,
        }
    }

    /// Moves `cid` to wait out a backoff until `at` (replacing an earlier one); a running CID
    /// stays with its worker.
    pub fn retry_at(&mut self, cid: Cid, at: Instant) {
        if matches!(self.place(&cid), Some(Place::Running { .. })) {
            return;
        }
        let ticket = self.ticket();
        self.set(cid, Some(Place::Retry { at, ticket }));
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.first_key_value().map(|((at, _), _)| *at)
    }

    /// Queues (behind new work) every retry due by `now`.
    pub fn promote_due(&mut self, now: Instant) {
        while let Some((&(at, _), &cid)) = self.retries.first_key_value() {
            if at > now {
                break;
            }
            self.set(cid, None);
            self.enqueue(cid, false, now);
        }
    }

    /// Queues every retry, due or not (the node is back).
    pub fn promote_all(&mut self, now: Instant) {
        while let Some((_, &cid)) = self.retries.first_key_value() {
            self.set(cid, None);
            self.enqueue(cid, false, now);
        }
    }

    /// Queues every CID that waited for `synced`.
    pub fn release_sync_waiters(&mut self, now: Instant) {
        let waiting: Vec<Cid> = self
            .places
            .iter()
            .filter(|(_, place)| **place == Place::WaitingForSync)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in waiting {
            self.set(cid, None);
            self.enqueue(cid, false, now);
        }
    }

    fn ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    /// The one way a CID moves: out of its old place (counts, timetable) and into `place`.
    fn set(&mut self, cid: Cid, place: Option<Place>) {
        let old = match place {
            Some(place) => self.places.insert(cid, place),
            None => self.places.remove(&cid),
        };
        if let Some(old) = old {
            *self.count(old) -= 1;
            if let Place::Retry { at, ticket } = old {
                self.retries.remove(&(at, ticket));
            }
            // A queued CID's line entry no longer matches its place; `pop` skips it.
        }
        if let Some(new) = place {
            *self.count(new) += 1;
            match new {
                Place::Queued {
                    priority, ticket, ..
                } => self.lines[usize::from(!priority)].push_back((ticket, cid)),
                Place::Retry { at, ticket } => {
                    self.retries.insert((at, ticket), cid);
                }
                Place::Running { .. } | Place::WaitingForSync => {}
            }
        }
    }

    fn count(&mut self, place: Place) -> &mut usize {
        match place {
            Place::Queued { .. } => &mut self.counts.queued,
            Place::Retry { .. } => &mut self.counts.retrying,
            Place::Running { .. } => &mut self.counts.running,
            Place::WaitingForSync => &mut self.counts.waiting_for_sync,
        }
    }
}

#[cfg(test)]
mod tests;
