use serde_bytes::ByteBuf;

use super::*;
use crate::digest::Digest;
use crate::dot::Dot;
use crate::message::SnapshotHead;

const ME: ActorId = ActorId(100);
const X: ActorId = ActorId(1);
const Y: ActorId = ActorId(2);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn cfg() -> Config {
    Config::agent(secs(1), Duration::from_millis(500))
}

/// A machine and the local applied vector it is shown.
struct Harness {
    m: CatchUp<u8, &'static str>,
    applied: AppliedVector,
    now: Duration,
}

impl Harness {
    fn new(trusted: &[u8]) -> Self {
        Harness {
            m: CatchUp::new(cfg(), trusted.iter().copied()),
            applied: AppliedVector::new(),
            now: Duration::ZERO,
        }
    }

    /// Handles `input` and returns the outputs, timers left out.
    fn on(&mut self, input: Input<u8, &'static str>) -> Vec<Output<u8, &'static str>> {
        let local = Local {
            actor: ME,
            applied: &self.applied,
        };
        self.m.handle(self.now, &local, input);
        self.m
            .drain()
            .filter(|o| !matches!(o, Output::Timer(_)))
            .collect()
    }

    /// Moves time on to `at` and fires the timer.
    fn at(&mut self, at: Duration) -> Vec<Output<u8, &'static str>> {
        self.now = at;
        self.on(Input::Timer)
    }

    fn sends(&mut self, input: Input<u8, &'static str>) -> Vec<(u8, Request)> {
        sends(self.on(input))
    }

    /// Started with connections to `peers`, none answered yet.
    fn connected(trusted: &[u8], peers: &[u8]) -> Self {
        let mut h = Harness::new(trusted);
        h.applied.insert_range(ME, 1, 3);
        h.on(Input::Start {
            dial: vec!["bootstrap"],
        });
        for &p in peers {
            h.on(Input::Connected(p));
        }
        h
    }
}

fn sends(outputs: Vec<Output<u8, &'static str>>) -> Vec<(u8, Request)> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { peer, request } => Some((peer, request)),
            _ => None,
        })
        .collect()
}

fn summary(applied: &AppliedVector, pins: u64) -> Summary {
    Summary {
        actor: ActorId(0),
        pins,
        state_digest: Digest::default(),
        applied_digest: applied.digest(),
        applied: Some(applied.clone()),
        low_water: Vec::new(),
        synced: true,
    }
}

fn status(peer: u8, applied: &AppliedVector, pins: u64) -> Input<u8, &'static str> {
    Input::Summary {
        peer,
        summary: summary(applied, pins),
        is_status: true,
    }
}

fn vector(ranges: &[(ActorId, u64, u64)]) -> AppliedVector {
    let mut v = AppliedVector::new();
    for &(a, s, e) in ranges {
        v.insert_range(a, s, e);
    }
    v
}

fn chunk(snapshot_id: u64, first: bool, next: Option<&[u8]>) -> SnapshotChunk {
    SnapshotChunk {
        snapshot_id,
        head: first.then(|| SnapshotHead {
            context: AppliedVector::new(),
            applied: AppliedVector::new(),
            pins: 0,
            state_digest: Digest::default(),
        }),
        entries: Vec::new(),
        next: next.map(|n| ByteBuf::from(n.to_vec())),
    }
}

fn first_snapshot() -> Request {
    Request::Snapshot {
        snapshot_id: None,
        after: None,
        limit: cfg().snapshot_chunk_entries,
    }
}

#[test]
fn alone_at_start_is_synced_and_beacons_at_once() {
    let mut h = Harness::new(&[]);
    let out = h.on(Input::Start { dial: vec![] });
    assert!(out.contains(&Output::Synced(true)));
    assert!(out.contains(&Output::Beacon));
    assert!(h.m.synced());
}

#[test]
fn synced_once_every_connected_member_answered_and_their_deltas_are_held() {
    let mut h = Harness::new(&[]);
    let out = h.on(Input::Start {
        dial: vec!["a", "b"],
    });
    assert!(out.contains(&Output::Dial("a")) && out.contains(&Output::Dial("b")));
    assert!(!h.m.synced());
    assert_eq!(h.sends(Input::Connected(1)), vec![(1, Request::Status)]);
    assert_eq!(h.sends(Input::Connected(2)), vec![(2, Request::Status)]);
    h.applied.insert_range(ME, 1, 2);
    h.on(status(1, &vector(&[(ME, 1, 2)]), 2));
    assert!(!h.m.synced(), "peer 2 has not answered");
    // Peer 2 holds X's 1..=3: asked for at once, synced only once held.
    let asked = h.sends(status(2, &vector(&[(X, 1, 3)]), 3));
    assert_eq!(
        asked,
        vec![(
            2,
            Request::GetDeltas {
                origin: X,
                from: 1,
                to: 3
            }
        )]
    );
    assert!(!h.m.synced());
    h.applied.insert_range(X, 1, 3);
    let out = h.on(Input::LocalChanged);
    assert!(out.contains(&Output::Synced(true)) && out.contains(&Output::Beacon));
    assert!(out.contains(&Output::Event(Event::Synced)));
}

#[test]
fn beacons_ask_every_peer_for_status_until_synced() {
    let mut h = Harness::connected(&[], &[1, 2]);
    let asked = sends(h.at(secs(1)));
    assert_eq!(asked, vec![(1, Request::Status), (2, Request::Status)]);
    h.on(status(1, &h.applied.clone(), 3));
    h.on(status(2, &h.applied.clone(), 3));
    assert!(h.m.synced());
    let out = h.at(secs(2));
    assert_eq!(out, vec![Output::Beacon], "synced: beacons only");
}

#[test]
fn a_hole_is_asked_for_after_the_repair_delay_of_its_sender_or_of_the_origin() {
    let mut h = Harness::connected(&[], &[1, 2]);
    let gap = Input::Gap {
        peer: 1,
        origin: X,
        ranges: vec![(1, 4)],
    };
    assert!(h.sends(gap).is_empty(), "not before the repair delay");
    let get = |from, to| Request::GetDeltas {
        origin: X,
        from,
        to,
    };
    assert!(
        sends(h.at(Duration::from_millis(499)))
            .iter()
            .all(|(_, r)| *r == Request::Status)
    );
    h.applied.insert(Dot::new(X, 1)); // one arrived meanwhile
    let asked = sends(h.at(Duration::from_millis(500)));
    assert_eq!(asked, vec![(1, get(2, 4))]);
    // The origin's author, once known and connected, is asked instead of the sender.
    h.on(Input::Authored { origin: X, peer: 2 });
    h.on(Input::Gap {
        peer: 1,
        origin: X,
        ranges: vec![(2, 6)],
    });
    // Asked recently: not again within the patience...
    assert!(
        sends(h.at(secs(1)))
            .iter()
            .all(|(_, r)| *r == Request::Status)
    );
    // ... then again, of the origin.
    let asked = sends(h.at(secs(6)));
    assert!(asked.contains(&(2, get(2, 6))), "{asked:?}");
}

#[test]
fn a_short_answer_is_followed_at_once_by_a_request_for_the_rest() {
    let mut h = Harness::connected(&[], &[1]);
    h.on(status(1, &vector(&[(X, 1, 10)]), 10));
    h.applied.insert_range(X, 1, 4);
    h.on(Input::Deltas {
        peer: 1,
        origin: X,
        last: 4,
    });
    let asked = sends(h.at(h.now));
    assert_eq!(
        asked,
        vec![(
            1,
            Request::GetDeltas {
                origin: X,
                from: 5,
                to: 10
            }
        )]
    );
}

#[test]
fn an_empty_replica_or_one_far_behind_fetches_a_snapshot() {
    let mut h = Harness::new(&[]);
    h.on(Input::Start { dial: vec!["a"] });
    h.on(Input::Connected(1));
    assert_eq!(
        h.sends(status(1, &vector(&[(X, 1, 3)]), 3)),
        vec![(1, first_snapshot())]
    );
    let mut h = Harness::connected(&[], &[1]);
    let far = cfg().snapshot_threshold + 1;
    assert_eq!(
        h.sends(status(1, &vector(&[(X, 1, far)]), 5)),
        vec![(1, first_snapshot())]
    );
    // Just under the threshold: deltas.
    let mut h = Harness::connected(&[], &[1]);
    let near = cfg().snapshot_threshold;
    assert!(matches!(
        h.sends(status(1, &vector(&[(X, 1, near)]), 5)).as_slice(),
        [(1, Request::GetDeltas { .. })]
    ));
}

#[test]
fn truncated_answers_lead_to_a_snapshot_fetched_chunk_by_chunk() {
    let mut h = Harness::connected(&[], &[1]);
    let out = h.on(Input::Truncated {
        peer: 1,
        origin: X,
        first_available: 50,
    });
    assert_eq!(sends(out.clone()), vec![(1, first_snapshot())]);
    assert!(out.contains(&Output::Event(Event::SnapshotStarted(1))));
    // One fetch at a time; repairs wait for it.
    assert!(
        h.sends(Input::Truncated {
            peer: 1,
            origin: Y,
            first_available: 9
        })
        .is_empty()
    );
    let c = chunk(7, true, Some(b"k"));
    assert_eq!(
        h.on(Input::Chunk {
            peer: 1,
            chunk: c.clone()
        }),
        vec![Output::Stage { peer: 1, chunk: c }]
    );
    // A chunk of another snapshot (a late answer to an earlier fetch) is not staged.
    assert!(
        h.on(Input::Chunk {
            peer: 1,
            chunk: chunk(6, false, None)
        })
        .is_empty()
    );
    let next = h.sends(Input::Staged {
        peer: 1,
        outcome: Staged::Progress(Progress::Continue {
            snapshot_id: 7,
            after: ByteBuf::from(b"k".to_vec()),
        }),
    });
    assert_eq!(
        next,
        vec![(
            1,
            Request::Snapshot {
                snapshot_id: Some(7),
                after: Some(ByteBuf::from(b"k".to_vec())),
                limit: cfg().snapshot_chunk_entries
            }
        )]
    );
    let out = h.on(Input::Staged {
        peer: 1,
        outcome: Staged::Progress(Progress::Complete),
    });
    assert!(out.contains(&Output::Event(Event::SnapshotJoined(1))));
    assert_eq!(sends(out), vec![(1, Request::Status)], "then the tail");
    assert_eq!(h.m.fetching_from(), None);
}

#[test]
fn a_snapshot_that_does_not_add_up_sends_that_peer_to_deltas_for_a_while() {
    let mut h = Harness::new(&[]);
    h.on(Input::Start { dial: vec!["a"] });
    h.on(Input::Connected(1));
    let theirs = vector(&[(X, 1, 3)]);
    h.on(status(1, &theirs, 3));
    h.on(Input::Chunk {
        peer: 1,
        chunk: chunk(1, true, None),
    });
    h.on(Input::Staged {
        peer: 1,
        outcome: Staged::Mismatch("does not add up".into()),
    });
    assert!(matches!(
        h.sends(status(1, &theirs, 3)).as_slice(),
        [(1, Request::GetDeltas { .. })]
    ));
    h.now += cfg().snapshot_refused_backoff;
    assert_eq!(h.sends(status(1, &theirs, 3)), vec![(1, first_snapshot())]);
}

#[test]
fn a_failed_request_or_a_stall_abandons_the_snapshot() {
    let mut h = Harness::connected(&[], &[1, 2]);
    h.on(Input::Truncated {
        peer: 1,
        origin: X,
        first_available: 5,
    });
    let out = h.on(Input::RequestFailed { peer: 1 });
    assert!(out.contains(&Output::Event(Event::SnapshotAborted(1))));
    assert_eq!(h.m.fetching_from(), None);
    h.on(Input::Truncated {
        peer: 2,
        origin: X,
        first_available: 5,
    });
    let stall = cfg().snapshot_stall;
    let out = h.at(stall);
    assert!(
        out.contains(&Output::Event(Event::SnapshotStalled(2))),
        "{out:?}"
    );
}

#[test]
fn with_trusted_writers_snapshots_come_only_from_them_and_untrusted_origins_are_not_waited_for() {
    let mut h = Harness::new(&[1]);
    h.applied.insert_range(ME, 1, 1);
    h.on(Input::Start { dial: vec!["a"] });
    h.on(Input::Connected(1));
    h.on(Input::Connected(2));
    // Peer 2 (untrusted) is far behind... ahead: deltas only, never its snapshot.
    let far = cfg().snapshot_threshold + 10;
    assert!(matches!(
        h.sends(status(2, &vector(&[(X, 1, far)]), 9)).as_slice(),
        [(2, Request::GetDeltas { .. })]
    ));
    // X turns out to be written by an untrusted author: not pulled, not waited for.
    let out = h.on(Input::Untrusted { origin: X });
    assert!(out.contains(&Output::Event(Event::UntrustedOrigin(X))));
    assert!(
        h.on(Input::Untrusted { origin: X }).is_empty(),
        "logged once"
    );
    h.on(status(1, &vector(&[(ME, 1, 1), (X, 1, 2)]), 1));
    assert!(h.m.synced());
    assert!(h.m.may_write(&1) && !h.m.may_write(&2));
}

#[test]
fn a_runtime_join_unsyncs_until_the_peer_answers_or_leaves() {
    let mut h = Harness::new(&[]);
    h.on(Input::Start { dial: vec![] });
    h.on(Input::Connected(1));
    let out = h.on(Input::Joined(1));
    assert!(out.contains(&Output::Synced(false)));
    assert!(out.contains(&Output::Event(Event::Rejoining(1))));
    let out = h.on(Input::Disconnected(1));
    assert!(out.contains(&Output::Event(Event::JoinAbandoned)));
    assert!(h.m.synced());
    h.on(Input::Connected(1));
    h.on(Input::Joined(1));
    h.on(status(1, &AppliedVector::new(), 0));
    assert!(h.m.synced());
}

#[test]
fn a_peer_that_is_not_a_member_is_not_waited_for() {
    let mut h = Harness::connected(&[], &[1, 2]);
    h.on(status(1, &h.applied.clone(), 3));
    assert!(!h.m.synced());
    h.on(Input::Member {
        peer: 2,
        member: false,
    });
    assert!(h.m.synced());
}

#[test]
fn timers_are_asked_for_once_per_change_and_bootstrap_runs_on_its_interval() {
    let mut h = Harness::new(&[]);
    let local = Local {
        actor: ME,
        applied: &h.applied,
    };
    h.m.handle(Duration::ZERO, &local, Input::Start { dial: vec![] });
    let timers: Vec<_> =
        h.m.drain()
            .filter(|o| matches!(o, Output::Timer(_)))
            .collect();
    assert_eq!(timers, vec![Output::Timer(secs(1))]);
    h.m.handle(Duration::ZERO, &local, Input::LocalChanged);
    assert_eq!(h.m.drain().count(), 0, "nothing changed, no new timer");
    let boot = cfg().bootstrap_interval;
    h.m.handle(boot, &local, Input::Timer);
    assert!(h.m.drain().any(|o| o == Output::Bootstrap));
    // Every connection bootstraps too.
    h.m.handle(boot, &local, Input::Connected(3));
    assert!(h.m.drain().any(|o| o == Output::Bootstrap));
}
