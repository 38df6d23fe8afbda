//! The partition guard: whether the keeper may repin now, from how many of the allocatable
//! peers this agent sees alive.
//!
//! - Fewer than half alive: **paused**. The agent is probably on the small side of a split, and
//!   the large side repins.
//! - Half or more alive again after being outnumbered: **settling** for `repin_after`, then on.
//!   An agent back from the small side sees the first peers of the large side before the rest,
//!   and has not yet caught up with what the large side wrote meanwhile: the peers it still
//!   misses would count as lost at once, and it would move pins that the large side already
//!   moved. Waiting `repin_after` gives them the same time to be heard from as a restart does.
//! - Otherwise: **on**.
//!
//! Being outnumbered counts only once the agent has been up `repin_after`: just after a start,
//! before the peers' metrics came in, nothing can be lost yet anyway.

use std::time::Duration;

use tokio::time::Instant;

/// What the guard allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Allowed {
    /// Fewer than half of the allocatable peers alive.
    Paused,
    /// Half or more again, for less than `repin_after`: repinning resumes after this.
    Settling(Duration),
    Repin,
}

/// A change worth saying once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Outnumbered,
    Regained,
}

#[derive(Debug)]
pub(super) struct Guard {
    repin_after: Duration,
    /// The last look saw fewer than half alive, once it counted.
    outnumbered: bool,
    /// When half or more were seen alive again after being outnumbered.
    regained: Option<Instant>,
}

impl Guard {
    pub fn new(repin_after: Duration) -> Guard {
        Guard {
            repin_after,
            outnumbered: false,
            regained: None,
        }
    }

    /// One look: `live` of `all` allocatable peers alive, this agent up for `up_for`.
    pub fn look(
        &mut self,
        live: usize,
        all: usize,
        up_for: Duration,
        now: Instant,
    ) -> (Allowed, Option<Change>) {
        if live * 2 < all {
            self.regained = None;
            let counts = up_for >= self.repin_after;
            let change = (counts && !std::mem::replace(&mut self.outnumbered, true))
                .then_some(Change::Outnumbered);
            return (Allowed::Paused, change);
        }
        let change = std::mem::take(&mut self.outnumbered).then(|| {
            self.regained = Some(now);
            Change::Regained
        });
        if let Some(at) = self.regained {
            let since = now.saturating_duration_since(at);
            if since < self.repin_after {
                return (Allowed::Settling(self.repin_after - since), change);
            }
            self.regained = None;
        }
        (Allowed::Repin, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(60);

    #[test]
    fn an_agent_outnumbered_pauses_and_settles_for_repin_after_once_the_majority_is_back() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(guard.look(5, 5, AFTER, at(0)), (Allowed::Repin, None));
        assert_eq!(
            guard.look(2, 5, AFTER, at(1)),
            (Allowed::Paused, Some(Change::Outnumbered))
        );
        assert_eq!(guard.look(2, 5, AFTER, at(2)), (Allowed::Paused, None));
        // Three of five: back above half, but only the first peers may have come back.
        assert_eq!(
            guard.look(3, 5, AFTER, at(10)),
            (Allowed::Settling(AFTER), Some(Change::Regained))
        );
        assert_eq!(
            guard.look(5, 5, AFTER, at(40)),
            (Allowed::Settling(Duration::from_secs(30)), None)
        );
        assert_eq!(guard.look(5, 5, AFTER, at(70)), (Allowed::Repin, None));
        assert_eq!(guard.look(5, 5, AFTER, at(71)), (Allowed::Repin, None));
    }

    #[test]
    fn outnumbered_again_while_settling_pauses_and_settles_anew() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        guard.look(1, 3, AFTER, at(0));
        assert_eq!(guard.look(2, 3, AFTER, at(1)).1, Some(Change::Regained));
        assert_eq!(
            guard.look(1, 3, AFTER, at(30)),
            (Allowed::Paused, Some(Change::Outnumbered))
        );
        assert_eq!(
            guard.look(3, 3, AFTER, at(50)),
            (Allowed::Settling(AFTER), Some(Change::Regained))
        );
        assert_eq!(guard.look(3, 3, AFTER, at(110)), (Allowed::Repin, None));
    }

    #[test]
    fn fewer_than_half_just_after_a_start_pauses_without_settling_later() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let early = Duration::from_secs(5);
        // Before the peers' metrics came in: paused, not said, and not outnumbered.
        assert_eq!(guard.look(1, 5, early, t0), (Allowed::Paused, None));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(guard.look(4, 5, early, later), (Allowed::Repin, None));
        // Exactly half is enough.
        assert_eq!(guard.look(2, 4, AFTER, later), (Allowed::Repin, None));
    }
}
