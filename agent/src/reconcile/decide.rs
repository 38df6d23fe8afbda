//! The reconciler's decisions as pure functions, unit-tested by table: what to do about a CID
//! from what the pinset wants, what the node has, its status record and whether the agent is
//! synced ([`decide`]); what status it has once a job on it ended ([`settled`]) or while the
//! node is down ([`node_down`]); and the listing cycle's tests ([`satisfies`], [`stale`]).
//!
//! Nothing here reads the store, calls the node or looks at the clock: the actor gathers the
//! facts, applies the decision and makes the calls.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use pinmesh_protocol::entry::winner;
use pinmesh_protocol::{Cid, PinMode, Version};

use super::{Role, UNPINNED_KEEP};
use crate::ipfs::content_key;
use crate::store::{PinState, Status};

/// What the pinset wants of one CID here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    pub mode: PinMode,
    /// The pin's origins that parse as multiaddrs (the writer checked them; a newer writer's
    /// transport this build does not know is left out).
    pub origins: Vec<libp2p::Multiaddr>,
}

/// A call to make about one CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Job {
    /// `owned`: the pin is this agent's already (a retry, a mode change), or a listing begun
    /// after the CID was queued showed the node without it; otherwise the worker asks first.
    Pin {
        wanted: Wanted,
        owned: bool,
    },
    Unpin,
    /// Unpin a pin allocated to other peers now, once enough of them hold it.
    Release(Handover),
}

/// A pin this agent holds that is now allocated to other peers: it lets it go only once
/// `need` of `peers` report it `pinned`, so a re-allocation never lowers the copies on disk
/// below the pin's minimum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handover {
    pub peers: Vec<PeerId>,
    pub need: usize,
}

/// Everything [`decide`] looks at for one CID.
#[derive(Debug, Clone)]
pub(super) struct Facts {
    /// What the pinset wants here ([`wanted_of`]); `None`: nothing.
    pub wanted: Option<Wanted>,
    /// Not wanted here because the pin is allocated to other peers ([`handover_of`]).
    pub handover: Option<Handover>,
    /// How the node pins the CID's content, as far as the reconciler knows ([`have`]).
    pub have: Option<PinMode>,
    /// Its status record (a pending write, else the stored one).
    pub state: Option<PinState>,
    /// The agent has caught up with its peers.
    pub synced: bool,
    /// A listing begun after the CID was queued: `have: None` then means the node lacked it
    /// before this agent was asked for it.
    pub listed_fresh: bool,
}

/// What to do about one CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    /// The status record to write, when it changes.
    pub record: Option<PinState>,
    /// The record claims ownership of a pin not yet made: it must be on disk before the call,
    /// or a crash between the two would leave a pin nobody removes.
    pub durable: bool,
    pub next: Next,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing to call.
    Idle,
    Run(Job),
    /// An unpin that waits until the agent is synced: a stale replica must not unpin what the
    /// cluster still wants.
    WaitForSync,
}

impl Decision {
    fn idle(record: Option<PinState>) -> Self {
        Decision {
            record,
            durable: false,
            next: Next::Idle,
        }
    }
}

/// A fresh record.
pub(super) fn record(status: Status, owned: bool, now_ms: u64) -> PinState {
    PinState {
        status,
        owned,
        attempts: 0,
        error: None,
        updated_ms: now_ms,
    }
}

/// Decides one CID: the status to record and the call to make, if any.
///
/// Ownership: a pin is this agent's when its record says so, or when a fresh listing shows the
/// node without it (the pin the agent is about to make). Otherwise the worker asks the node
/// first and claims the pin only if it is not there. The agent removes only its own pins, and
/// only once synced.
pub(super) fn decide(facts: Facts, now_ms: u64) -> Decision {
    let Facts {
        wanted,
        handover,
        have,
        state,
        synced,
        listed_fresh,
    } = facts;
    let owned = state.as_ref().is_some_and(|s| s.owned);
    let status = state.as_ref().map(|s| s.status);
    let Some(wanted) = wanted else {
        let Some(mut state) = state else {
            return Decision::idle(None);
        };
        if owned && have.is_some() {
            if !synced {
                return Decision {
                    record: None,
                    durable: false,
                    next: Next::WaitForSync,
                };
            }
            if let Some(handover) = handover {
                // Still held (its status unchanged) until the allocated peers have it.
                return Decision {
                    record: None,
                    durable: false,
                    next: Next::Run(Job::Release(handover)),
                };
            }
            state.status = Status::Unpinning;
            state.updated_ms = now_ms;
            return Decision {
                record: Some(state),
                durable: false,
                next: Next::Run(Job::Unpin),
            };
        }
        let changes = state.status != Status::Unpinned || state.owned;
        return Decision::idle(changes.then(|| record(Status::Unpinned, false, now_ms)));
    };
    if satisfies(have, wanted.mode) {
        let changes = status != Some(Status::Pinned);
        return Decision::idle(changes.then(|| record(Status::Pinned, owned, now_ms)));
    }
    let mut next = state.unwrap_or_else(|| record(Status::Queued, owned, now_ms));
    // Shown until the pin is back.
    next.status = if status == Some(Status::Pinned) {
        Status::UnexpectedlyUnpinned
    } else {
        Status::Pinning
    };
    next.updated_ms = now_ms;
    let claims = !owned && have.is_none() && listed_fresh;
    next.owned = owned || claims;
    Decision {
        record: Some(next),
        durable: claims,
        next: Next::Run(Job::Pin {
            wanted,
            owned: owned || claims,
        }),
    }
}

/// The record of a pin a worker is about to add (the node did not have it): this agent's.
pub(super) fn claimed(before: Option<PinState>, now_ms: u64) -> PinState {
    let mut state = before.unwrap_or_else(|| record(Status::Pinning, true, now_ms));
    state.owned = true;
    state
}

/// The record of a queued CID while the node is down: the node's error, shown without a call.
/// `None` when nothing changes (not wanted, or that error is already shown).
pub(super) fn node_down(
    wanted: bool,
    before: Option<PinState>,
    error: &str,
    now_ms: u64,
) -> Option<PinState> {
    if !wanted {
        return None;
    }
    let mut state = before.unwrap_or_else(|| record(Status::PinError, false, now_ms));
    if state.status == Status::PinError && state.error.as_deref() == Some(error) {
        return None;
    }
    state.status = Status::PinError;
    state.error = Some(error.to_string());
    state.updated_ms = now_ms;
    Some(state)
}

/// How a job on a CID ended.
#[derive(Debug)]
pub(super) enum Ended<'a> {
    /// The worker answered: `Ok(owned)` when the call succeeded (`owned`: the pin is this
    /// agent's), or the call's error.
    Done {
        job: &'a Job,
        result: Result<bool, String>,
    },
    /// The worker died without an answer (it panicked).
    Died(String),
}

/// The status a CID has after a job on it ended, from the status it had (`Ok(None)`: no
/// record; `Err(())`: the record could not be read).
///
/// `None` when nothing may be recorded: the old record could not be read and the result does
/// not say whether this agent owns the pin. A guess of "not owned" would make an owned pin one
/// that is never removed again; the CID is decided again later instead.
pub(super) fn settled(
    before: Result<Option<PinState>, ()>,
    ended: Ended<'_>,
    now_ms: u64,
) -> Option<PinState> {
    let mut state = match (&ended, before) {
        (_, Ok(Some(state))) => state,
        (Ended::Died(_), Ok(None)) => record(Status::PinError, false, now_ms),
        (_, Ok(None)) => record(Status::Queued, false, now_ms),
        // A success says who owns the pin; a failure does not.
        (Ended::Done { result: Ok(_), .. }, Err(())) => record(Status::Queued, false, now_ms),
        (_, Err(())) => return None,
    };
    state.updated_ms = now_ms;
    match ended {
        Ended::Done {
            job,
            result: Ok(owned),
        } => {
            state.attempts = 0;
            state.error = None;
            (state.status, state.owned) = match job {
                Job::Pin { .. } => (Status::Pinned, owned),
                Job::Release(_) if owned => (Status::Pinned, true),
                Job::Unpin | Job::Release(_) => (Status::Unpinned, false),
            };
        }
        Ended::Done {
            job,
            result: Err(error),
        } => {
            state.attempts += 1;
            state.error = Some(error);
            state.status = match job {
                Job::Pin { .. } => Status::PinError,
                Job::Unpin | Job::Release(_) => Status::UnpinError,
            };
        }
        Ended::Died(error) => {
            state.attempts += 1;
            state.error = Some(format!("internal error while working on it: {error}"));
            state.status = match state.status {
                Status::Unpinning | Status::UnpinError => Status::UnpinError,
                _ => Status::PinError,
            };
        }
    }
    Some(state)
}

/// What the newest version of a CID's entry wants here; `None` when nothing (unpinned,
/// expired, allocated elsewhere).
pub(super) fn wanted_of(
    cid: &Cid,
    versions: &[Version],
    now_secs: u64,
    role: &Role,
) -> Option<Wanted> {
    let w = winner(versions)?;
    if w.spec.expire_at.is_some_and(|at| at <= now_secs) || !role.holds(cid, &w.spec) {
        return None;
    }
    Some(Wanted {
        mode: w.spec.mode,
        origins: w
            .spec
            .origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect(),
    })
}

/// When the newest version of a CID's entry expires (Unix seconds), if it does.
pub(super) fn expiry_of(versions: &[Version]) -> Option<u64> {
    winner(versions)?.spec.expire_at
}

/// Who holds a pin allocated to other peers only (not expired): the peers, and how many of
/// them must report it pinned before this agent lets its own copy go: the pin's minimum (at
/// least one), at most as many as are allocated. None on a follower: its copies are not among
/// a pin's, so it lets go of a pin outside its share at once.
pub(super) fn handover_of(
    cid: &Cid,
    versions: &[Version],
    now_secs: u64,
    role: &Role,
) -> Option<Handover> {
    let w = winner(versions)?;
    if role.is_follower()
        || w.spec.expire_at.is_some_and(|at| at <= now_secs)
        || role.holds(cid, &w.spec)
    {
        return None;
    }
    let peers: Vec<PeerId> = (w.spec.allocations.iter())
        .filter_map(|peer| peer.parse().ok())
        .collect();
    Some(Handover {
        need: w.spec.min_copies().min(peers.len()),
        peers,
    })
}

/// How the node pins `cid`'s content, whichever CID version it was pinned under (`actual` is
/// keyed by [`content_key`]).
pub(super) fn have(actual: &HashMap<Cid, PinMode>, cid: &Cid) -> Option<PinMode> {
    actual.get(&content_key(cid)).copied()
}

/// Whether what the node has (`have`) is what is wanted: a recursive pin covers a direct one.
pub(super) fn satisfies(have: Option<PinMode>, want: PinMode) -> bool {
    match (have, want) {
        (None, _) => false,
        (Some(PinMode::Recursive), _) => true,
        (Some(PinMode::Direct), want) => want == PinMode::Direct,
    }
}

/// The delay before the next attempt after `attempts` failures in a row: `base`, doubled per
/// failure, at most `max`.
pub(super) fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    (base * factor).min(max)
}

/// A record that only says a CID nobody wants was unpinned, longer ago than [`UNPINNED_KEEP`].
pub(super) fn stale(state: &PinState, now_ms: u64) -> bool {
    state.status == Status::Unpinned
        && !state.owned
        && state.updated_ms + (UNPINNED_KEEP.as_millis() as u64) < now_ms
}

#[cfg(test)]
mod tests;
