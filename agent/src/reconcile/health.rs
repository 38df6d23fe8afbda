//! Whether the IPFS node answers, and how fast calls may go: after
//! [`FAILURES_BEFORE_PACING`] failures in a row, one call per second; when the node is down,
//! no calls at all but a health check every `probe_interval`.

use std::time::Duration;

use tokio::time::Instant;

use crate::ipfs::IpfsError;

/// Failed calls in a row after which calls are paced to one per [`PACE`].
pub(super) const FAILURES_BEFORE_PACING: u32 = 10;
const PACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Health {
    pub down: bool,
    /// Why it is down.
    pub error: Option<String>,
    /// When to ask a node that is down whether it is back.
    pub next_probe: Instant,
    /// Failed calls in a row.
    failures: u32,
    /// No call starts before this.
    pub paced_until: Instant,
}

impl Health {
    pub fn new(now: Instant) -> Self {
        Health {
            down: false,
            error: None,
            next_probe: now,
            failures: 0,
            paced_until: now,
        }
    }

    /// A call succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A call failed. Returns whether that shows the node newly down (it is then asked again
    /// after `probe_interval`).
    pub fn failed(&mut self, err: &IpfsError, now: Instant, probe_interval: Duration) -> bool {
        self.failures += 1;
        err.node_down() && self.went_down(err, now, probe_interval)
    }

    /// The node did not answer. Returns whether it was up until now.
    pub fn went_down(&mut self, err: &IpfsError, now: Instant, probe_interval: Duration) -> bool {
        self.error = Some(err.to_string());
        if self.down {
            return false;
        }
        self.down = true;
        self.next_probe = now + probe_interval;
        true
    }

    /// The node answers again, or an operator asked to try now: calls go at full speed.
    pub fn back(&mut self, now: Instant) {
        self.down = false;
        self.failures = 0;
        self.paced_until = now;
    }

    /// How many calls may start now with `free` workers: none while paced, one at a time
    /// after many failures in a row, else `free`.
    pub fn may_start(&self, free: usize, now: Instant) -> usize {
        if now < self.paced_until {
            0
        } else if self.failures >= FAILURES_BEFORE_PACING {
            free.min(1)
        } else {
            free
        }
    }

    /// A call started: after many failures in a row, the next waits a second.
    pub fn started(&mut self, now: Instant) {
        if self.failures >= FAILURES_BEFORE_PACING {
            self.paced_until = now + PACE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> IpfsError {
        IpfsError::Refused {
            call: "pin/add",
            message: "no".into(),
        }
    }

    #[test]
    fn many_failures_in_a_row_pace_calls_to_one_a_second_until_one_succeeds() {
        let t0 = Instant::now();
        let probe = Duration::from_secs(2);
        let mut health = Health::new(t0);
        assert_eq!(health.may_start(8, t0), 8);
        for _ in 0..FAILURES_BEFORE_PACING - 1 {
            assert!(
                !health.failed(&refused(), t0, probe),
                "a refusal is not the node down"
            );
        }
        assert_eq!(health.may_start(8, t0), 8, "not yet");
        health.failed(&refused(), t0, probe);
        assert_eq!(health.may_start(8, t0), 1);
        health.started(t0);
        assert_eq!(health.may_start(8, t0 + Duration::from_millis(999)), 0);
        assert_eq!(health.may_start(8, t0 + PACE), 1);
        health.succeeded();
        assert_eq!(health.may_start(8, t0 + PACE), 8);
    }

    #[test]
    fn an_unreachable_node_is_down_once_and_back_at_full_speed() {
        let t0 = Instant::now();
        let probe = Duration::from_secs(2);
        let gone = IpfsError::Unreachable {
            url: "http://127.0.0.1:5001".into(),
            reason: "connection refused".into(),
        };
        let mut health = Health::new(t0);
        assert!(health.failed(&gone, t0, probe), "newly down");
        assert!(!health.failed(&gone, t0, probe), "already down");
        assert!(health.down);
        assert_eq!(health.next_probe, t0 + probe);
        assert!(
            health
                .error
                .as_deref()
                .is_some_and(|e| e.contains("connection refused"))
        );
        health.back(t0);
        assert!(!health.down);
        assert_eq!(health.may_start(4, t0), 4);
    }
}
