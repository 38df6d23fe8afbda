//! The partition guard: whether the keeper may repin now, from how many of the allocatable
//! peers this agent sees alive.
//!
//! - Fewer than half alive: **paused**. The agent is probably on the small side of a split, and
//!   the large side repins.
//! - Half or more alive again after fewer: **settling**, then on. An agent back from the small
//!   side of a split hears from the large side's first peers before the rest, and has not yet
//!   caught up with what the large side wrote meanwhile: the peers it still misses would count
//!   as lost at once, and it would move pins that the large side already moved. So it waits as
//!   long as it was outnumbered, at most `repin_after` (what a restart waits too): a blip
//!   below half holds repinning back for no longer than the blip.
//! - Otherwise: **on**.
//!
//! Below half just after a start (before the peers' metrics came in) settles the same way, but
//! is not said: nothing could be lost yet anyway.

use std::time::Duration;

use tokio::time::Instant;

/// What the guard allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Allowed {
    /// Fewer than half of the allocatable peers alive.
    Paused,
    /// Half or more again, not for long enough yet: repinning resumes after this.
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
    /// Since when the looks have seen fewer than half alive.
    outnumbered_since: Option<Instant>,
    /// Outnumbered was said (not just after a start).
    said: bool,
    /// Repinning resumes then, after being outnumbered.
    resumes_at: Option<Instant>,
}

impl Guard {
    pub fn new(repin_after: Duration) -> Guard {
        Guard {
            repin_after,
            outnumbered_since: None,
            said: false,
            resumes_at: None,
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
            self.resumes_at = None;
            // Counted from the first look below half; said once it could matter.
            self.outnumbered_since.get_or_insert(now);
            let change = (up_for >= self.repin_after && !std::mem::replace(&mut self.said, true))
                .then_some(Change::Outnumbered);
            return (Allowed::Paused, change);
        }
        let mut change = None;
        if let Some(since) = self.outnumbered_since.take() {
            let away = now.saturating_duration_since(since).min(self.repin_after);
            self.resumes_at = Some(now + away);
            if std::mem::take(&mut self.said) {
                change = Some(Change::Regained);
            }
        }
        if let Some(at) = self.resumes_at {
            if now < at {
                return (Allowed::Settling(at - now), change);
            }
            self.resumes_at = None;
        }
        (Allowed::Repin, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn back_above_half_after_a_split_it_waits_repin_after() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + secs(s);
        let up = secs(600);
        assert_eq!(guard.look(5, 5, up, at(0)), (Allowed::Repin, None));
        assert_eq!(
            guard.look(2, 5, up, at(10)),
            (Allowed::Paused, Some(Change::Outnumbered))
        );
        assert_eq!(guard.look(2, 5, up, at(100)), (Allowed::Paused, None));
        // Three of five: back above half, but maybe only the first peers came back.
        assert_eq!(
            guard.look(3, 5, up, at(200)),
            (Allowed::Settling(AFTER), Some(Change::Regained))
        );
        assert_eq!(
            guard.look(5, 5, up, at(230)),
            (Allowed::Settling(secs(30)), None)
        );
        assert_eq!(guard.look(5, 5, up, at(260)), (Allowed::Repin, None));
        assert_eq!(guard.look(5, 5, up, at(261)), (Allowed::Repin, None));
    }

    #[test]
    fn a_blip_below_half_holds_repinning_back_no_longer_than_the_blip() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + secs(s);
        let up = secs(600);
        assert_eq!(guard.look(1, 3, up, at(0)).1, Some(Change::Outnumbered));
        assert_eq!(
            guard.look(2, 3, up, at(5)),
            (Allowed::Settling(secs(5)), Some(Change::Regained))
        );
        assert_eq!(guard.look(2, 3, up, at(10)), (Allowed::Repin, None));
        // Blips every 20 s leave it repinning most of the time.
        assert_eq!(guard.look(1, 3, up, at(20)).0, Allowed::Paused);
        assert_eq!(guard.look(2, 3, up, at(22)).0, Allowed::Settling(secs(2)));
        assert_eq!(guard.look(2, 3, up, at(24)).0, Allowed::Repin);
    }

    #[test]
    fn outnumbered_again_while_settling_pauses_and_counts_anew() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + secs(s);
        let up = secs(600);
        guard.look(1, 3, up, at(0));
        assert_eq!(guard.look(2, 3, up, at(100)).1, Some(Change::Regained));
        assert_eq!(
            guard.look(1, 3, up, at(130)),
            (Allowed::Paused, Some(Change::Outnumbered))
        );
        // Outnumbered 20 s this time: it waits 20 s.
        assert_eq!(
            guard.look(3, 3, up, at(150)),
            (Allowed::Settling(secs(20)), Some(Change::Regained))
        );
        assert_eq!(guard.look(3, 3, up, at(170)), (Allowed::Repin, None));
    }

    #[test]
    fn below_half_just_after_a_start_settles_without_a_word() {
        let mut guard = Guard::new(AFTER);
        let t0 = Instant::now();
        let at = |s: u64| t0 + secs(s);
        // A restart on the small side: the peers it knew, down since the start.
        assert_eq!(guard.look(1, 5, secs(0), at(0)), (Allowed::Paused, None));
        assert_eq!(guard.look(2, 5, secs(40), at(40)), (Allowed::Paused, None));
        // Back above half before `repin_after` of uptime: it still waits, and says nothing.
        assert_eq!(
            guard.look(3, 5, secs(50), at(50)),
            (Allowed::Settling(secs(50)), None)
        );
        assert_eq!(guard.look(5, 5, secs(100), at(100)), (Allowed::Repin, None));
        // Outnumbered past `repin_after` of uptime is said.
        assert_eq!(
            guard.look(2, 5, secs(110), at(110)),
            (Allowed::Paused, Some(Change::Outnumbered))
        );
        // Exactly half is enough.
        let mut fresh = Guard::new(AFTER);
        assert_eq!(fresh.look(2, 4, secs(0), at(0)), (Allowed::Repin, None));
    }
}
