use pinmesh_protocol::PinMode;
use pinmesh_protocol::sim::sim_cid;

use super::*;

const NOW: u64 = 42;

fn pin_job() -> Job {
    Job::Pin {
        wanted: wanted(PinMode::Recursive),
        owned: true,
    }
}

fn wanted(mode: PinMode) -> Wanted {
    Wanted {
        mode,
        origins: Vec::new(),
    }
}

fn stored(status: Status, owned: bool, attempts: u32) -> PinState {
    PinState {
        status,
        owned,
        attempts,
        error: None,
        updated_ms: 1,
    }
}

/// What a decision comes to, for comparing with a table row.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The record written (status, owned), if any; whether durably; the call.
    Then(Option<(Status, bool)>, bool, Call),
}

#[derive(Debug, PartialEq, Eq)]
enum Call {
    None,
    /// Pin, and whether the job knows the pin is the agent's.
    Pin(bool),
    Unpin,
    Release,
    WaitForSync,
}

fn outcome(decision: Decision) -> Outcome {
    if let Some(record) = &decision.record {
        assert_eq!(record.updated_ms, NOW, "{decision:?}");
    }
    let call = match decision.next {
        Next::Idle => Call::None,
        Next::Run(Job::Pin { owned, .. }) => Call::Pin(owned),
        Next::Run(Job::Unpin) => Call::Unpin,
        Next::Run(Job::Release(_)) => Call::Release,
        Next::WaitForSync => Call::WaitForSync,
    };
    Outcome::Then(
        decision.record.map(|r| (r.status, r.owned)),
        decision.durable,
        call,
    )
}

#[test]
fn what_to_do_about_a_cid_by_wanted_have_status_synced_and_listing() {
    use PinMode::{Direct, Recursive};
    use Status::*;
    struct Row {
        wanted: Option<PinMode>,
        have: Option<PinMode>,
        state: Option<PinState>,
        synced: bool,
        fresh: bool,
        then: Outcome,
    }
    let row = |wanted, have, state, synced, fresh, then| Row {
        wanted,
        have,
        state,
        synced,
        fresh,
        then,
    };
    let then = Outcome::Then;
    #[rustfmt::skip]
    let rows = vec![
        // Wanted and held: pinned, ownership as recorded (none claimed for a pin found there).
        row(Some(Recursive), Some(Recursive), None, true, false, then(Some((Pinned, false)), false, Call::None)),
        row(Some(Direct), Some(Recursive), Some(stored(Pinning, true, 0)), true, false, then(Some((Pinned, true)), false, Call::None)),
        row(Some(Recursive), Some(Recursive), Some(stored(Pinned, true, 0)), false, false, then(None, false, Call::None)),
        // Wanted, not held, and a fresh listing says the node lacks it: the pin will be the
        // agent's, recorded durably before the call.
        row(Some(Recursive), None, None, true, true, then(Some((Pinning, true)), true, Call::Pin(true))),
        // Not known to be absent: the worker asks first; nothing claimed yet.
        row(Some(Recursive), None, None, true, false, then(Some((Pinning, false)), false, Call::Pin(false))),
        // A direct pin made recursive: not claimed (someone else's direct pin stays theirs).
        row(Some(Recursive), Some(Direct), None, true, true, then(Some((Pinning, false)), false, Call::Pin(false))),
        // Already the agent's: no new claim, no durable write needed.
        row(Some(Recursive), None, Some(stored(PinError, true, 3)), false, true, then(Some((Pinning, true)), false, Call::Pin(true))),
        // Pinned before and gone now: shown as unexpectedly unpinned while pinned again.
        row(Some(Recursive), None, Some(stored(Pinned, true, 0)), true, false, then(Some((UnexpectedlyUnpinned, true)), false, Call::Pin(true))),
        row(Some(Recursive), None, Some(stored(Pinned, false, 0)), true, true, then(Some((UnexpectedlyUnpinned, true)), true, Call::Pin(true))),
        // Not wanted, the agent's own pin, held: unpinned once synced, and only then.
        row(None, Some(Recursive), Some(stored(Pinned, true, 0)), true, false, then(Some((Unpinning, true)), false, Call::Unpin)),
        row(None, Some(Recursive), Some(stored(Pinned, true, 0)), false, true, then(None, false, Call::WaitForSync)),
        row(None, Some(Direct), Some(stored(UnpinError, true, 2)), true, false, then(Some((Unpinning, true)), false, Call::Unpin)),
        // Not wanted, someone else's pin: never removed, only recorded as not ours.
        row(None, Some(Recursive), Some(stored(Pinned, false, 0)), true, false, then(Some((Unpinned, false)), false, Call::None)),
        // Not wanted, the agent's own, already gone from the node: nothing left to own.
        row(None, None, Some(stored(Pinned, true, 0)), true, false, then(Some((Unpinned, false)), false, Call::None)),
        // Not wanted, nothing recorded, or already settled: nothing to do.
        row(None, Some(Recursive), None, true, true, then(None, false, Call::None)),
        row(None, None, Some(stored(Unpinned, false, 0)), true, false, then(None, false, Call::None)),
    ];
    for (i, r) in rows.into_iter().enumerate() {
        let facts = Facts {
            wanted: r.wanted.map(wanted),
            handover: None,
            have: r.have,
            state: r.state,
            synced: r.synced,
            listed_fresh: r.fresh,
        };
        let what = format!("row {i}: {facts:?}");
        assert_eq!(outcome(decide(facts, NOW)), r.then, "{what}");
    }
}

#[test]
fn a_decision_keeps_the_attempts_and_error_of_the_record_it_builds_on() {
    let mut before = stored(Status::PinError, true, 3);
    before.error = Some("refused".into());
    let facts = Facts {
        wanted: Some(wanted(PinMode::Recursive)),
        handover: None,
        have: None,
        state: Some(before),
        synced: true,
        listed_fresh: false,
    };
    let record = decide(facts, NOW).record.expect("a record");
    assert_eq!(
        (record.attempts, record.error.as_deref()),
        (3, Some("refused"))
    );
}

#[test]
fn the_status_after_a_job_by_what_was_known_before_and_how_it_ended() {
    use Status::*;
    let pin = pin_job();
    let unpin = Job::Unpin;
    let ok = |owned| Ok(owned);
    let err = || Err("refused".to_string());
    // (before, job, result) -> (status, owned, attempts), or None: nothing recorded.
    type Case<'a> = (
        Result<Option<PinState>, ()>,
        Ended<'a>,
        Option<(Status, bool, u32)>,
    );
    let done = |job, result| Ended::Done { job, result };
    let died = || Ended::Died("panic".into());
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // Successes say who owns the pin, whatever was known before.
        (Ok(None), done(&pin, ok(true)), Some((Pinned, true, 0))),
        (Ok(None), done(&pin, ok(false)), Some((Pinned, false, 0))),
        (Err(()), done(&pin, ok(true)), Some((Pinned, true, 0))),
        (Ok(Some(stored(Pinning, true, 3))), done(&pin, ok(true)), Some((Pinned, true, 0))),
        (Err(()), done(&unpin, ok(false)), Some((Unpinned, false, 0))),
        (Ok(Some(stored(Unpinning, true, 2))), done(&unpin, ok(false)), Some((Unpinned, false, 0))),
        // Failures keep the ownership on record and count the attempt.
        (Ok(Some(stored(Pinning, true, 0))), done(&pin, err()), Some((PinError, true, 1))),
        (Ok(Some(stored(Unpinning, true, 4))), done(&unpin, err()), Some((UnpinError, true, 5))),
        (Ok(None), done(&pin, err()), Some((PinError, false, 1))),
        // A failure with the record unreadable records nothing: no guess at ownership.
        (Err(()), done(&pin, err()), None),
        (Err(()), done(&unpin, err()), None),
        // A dead worker: an error of the kind of work the record shows.
        (Ok(Some(stored(Unpinning, true, 0))), died(), Some((UnpinError, true, 1))),
        (Ok(Some(stored(Pinning, true, 1))), died(), Some((PinError, true, 2))),
        (Ok(None), died(), Some((PinError, false, 1))),
        (Err(()), died(), None),
    ];
    for (i, (before, ended, want)) in cases.into_iter().enumerate() {
        let what = format!("case {i}: {before:?} {ended:?}");
        let got = settled(before, ended, NOW);
        match (got, want) {
            (None, None) => {}
            (Some(state), Some((status, owned, attempts))) => {
                assert_eq!(
                    (state.status, state.owned, state.attempts),
                    (status, owned, attempts),
                    "{what}"
                );
                assert_eq!(state.updated_ms, NOW, "{what}");
                assert_eq!(state.error.is_some(), attempts > 0, "{what}");
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn a_node_that_is_down_shows_its_error_on_wanted_cids_and_keeps_ownership() {
    let down = "IPFS node unreachable";
    // Nothing recorded yet: an error, owning nothing.
    let state = node_down(true, None, down, NOW).expect("recorded");
    assert_eq!((state.status, state.owned), (Status::PinError, false));
    assert_eq!(state.error.as_deref(), Some(down));
    // The agent's pin stays the agent's.
    let state = node_down(true, Some(stored(Status::Pinned, true, 0)), down, NOW).expect("rec");
    assert_eq!((state.status, state.owned), (Status::PinError, true));
    // The same error already shown: no write.
    assert_eq!(node_down(true, Some(state.clone()), down, NOW), None);
    // Another error replaces it.
    let other = node_down(true, Some(state), "timed out", NOW).expect("recorded");
    assert_eq!(other.error.as_deref(), Some("timed out"));
    // Not wanted: nothing to show.
    assert_eq!(node_down(false, None, down, NOW), None);
}

#[test]
fn a_claim_makes_the_record_the_agents_whatever_it_was() {
    let fresh = claimed(None, NOW);
    assert_eq!((fresh.status, fresh.owned), (Status::Pinning, true));
    let kept = claimed(Some(stored(Status::PinError, false, 2)), NOW);
    assert_eq!(
        (kept.status, kept.owned, kept.attempts),
        (Status::PinError, true, 2)
    );
}

#[test]
fn both_cid_versions_of_one_content_find_the_same_pin_and_a_raw_cid_only_its_own() {
    let raw = sim_cid(3);
    let v1 = Cid::new_v1(0x70, *raw.hash()); // dag-pb
    let v0 = Cid::new_v0(*raw.hash()).expect("v0");
    let actual = HashMap::from([(content_key(&v0), PinMode::Recursive)]);
    assert_eq!(have(&actual, &v0), Some(PinMode::Recursive));
    assert_eq!(have(&actual, &v1), Some(PinMode::Recursive));
    assert_eq!(have(&actual, &raw), None);
}

#[test]
fn a_recursive_pin_covers_a_direct_one_but_not_the_reverse() {
    assert!(satisfies(Some(PinMode::Recursive), PinMode::Direct));
    assert!(satisfies(Some(PinMode::Recursive), PinMode::Recursive));
    assert!(satisfies(Some(PinMode::Direct), PinMode::Direct));
    assert!(!satisfies(Some(PinMode::Direct), PinMode::Recursive));
    assert!(!satisfies(None, PinMode::Direct));
}

#[test]
fn expired_and_unpinned_entries_want_nothing() {
    use pinmesh_protocol::{ActorId, Dot, PinSpec};
    let mut spec = PinSpec::named("x");
    spec.expire_at = Some(100);
    let versions = [Version {
        dot: Dot::new(ActorId::derive(&[1; 32], 1), 1),
        at: 1,
        spec,
    }];
    let (cid, role) = (sim_cid(1), Role::member(PeerId::random()));
    assert!(wanted_of(&cid, &versions, 99, &role).is_some());
    assert_eq!(
        wanted_of(&cid, &versions, 100, &role),
        None,
        "expired at its second"
    );
    assert_eq!(wanted_of(&cid, &[], 1, &role), None);
}

#[test]
fn a_pin_is_wanted_where_it_is_allocated_or_when_it_is_allocated_everywhere() {
    use pinmesh_protocol::{ActorId, Dot, PinSpec};
    let with = |allocations: &[&str]| {
        let mut spec = PinSpec::named("x");
        spec.allocations = allocations.iter().map(|a| a.to_string()).collect();
        [Version {
            dot: Dot::new(ActorId::derive(&[1; 32], 1), 1),
            at: 1,
            spec,
        }]
    };
    let me = PeerId::random();
    let (text, role, cid) = (me.to_base58(), Role::member(me), sim_cid(1));
    assert!(
        wanted_of(&cid, &with(&[]), 1, &role).is_some(),
        "every peer"
    );
    assert!(wanted_of(&cid, &with(&["other", &text]), 1, &role).is_some());
    assert_eq!(wanted_of(&cid, &with(&["other", "third"]), 1, &role), None);
    // Allocations name peers exactly: no prefix or case games.
    let (prefix, upper, spaced) = (&text[..10], text.to_uppercase(), format!("{text} "));
    assert_eq!(
        wanted_of(&cid, &with(&[prefix, &upper, &spaced]), 1, &role),
        None
    );
    // A follower wants every pin whatever its allocations, or those of its share.
    let follower = Role::follower(me, None);
    assert!(wanted_of(&cid, &with(&["other"]), 1, &follower).is_some());
    let share = pinmesh_protocol::share::Share { index: 0, of: 2 };
    let sharer = Role::follower(me, Some(share));
    for n in 0..20 {
        let cid = sim_cid(n);
        let wanted = wanted_of(&cid, &with(&["other"]), 1, &sharer).is_some();
        assert_eq!(wanted, share.contains(&cid), "{cid}");
    }
}

#[test]
fn a_pin_allocated_elsewhere_is_let_go_only_through_a_release() {
    use PinMode::Recursive;
    use Status::*;
    let handover = Handover {
        peers: vec![PeerId::random(), PeerId::random()],
        need: 2,
    };
    let then = Outcome::Then;
    #[rustfmt::skip]
    let rows = [
        // The agent's own copy, held, synced: released (the worker asks the new peers first);
        // its status stays as it is meanwhile.
        (Some(Recursive), Some(stored(Pinned, true, 0)), true, then(None, false, Call::Release)),
        (Some(Recursive), Some(stored(Pinned, true, 0)), false, then(None, false, Call::WaitForSync)),
        // Someone else's pin, or the agent's gone already: nothing to release.
        (Some(Recursive), Some(stored(Pinned, false, 0)), true, then(Some((Unpinned, false)), false, Call::None)),
        (None, Some(stored(Pinned, true, 0)), true, then(Some((Unpinned, false)), false, Call::None)),
        (Some(Recursive), None, true, then(None, false, Call::None)),
    ];
    for (i, (have, state, synced, want)) in rows.into_iter().enumerate() {
        let facts = Facts {
            wanted: None,
            handover: Some(handover.clone()),
            have,
            state,
            synced,
            listed_fresh: false,
        };
        assert_eq!(outcome(decide(facts, NOW)), want, "row {i}");
    }
    // How a release ended: kept (the new peers do not hold it yet), let go, or failed.
    let job = Job::Release(handover);
    let before = || Ok(Some(stored(Pinned, true, 0)));
    let ended = |result| Ended::Done { job: &job, result };
    let state = |s: Option<PinState>| s.map(|s| (s.status, s.owned, s.attempts));
    assert_eq!(
        state(settled(before(), ended(Ok(true)), NOW)),
        Some((Pinned, true, 0))
    );
    assert_eq!(
        state(settled(before(), ended(Ok(false)), NOW)),
        Some((Unpinned, false, 0))
    );
    assert_eq!(
        state(settled(before(), ended(Err("down".into())), NOW)),
        Some((UnpinError, true, 1))
    );
}

#[test]
fn a_handover_needs_the_pins_minimum_of_its_allocated_peers() {
    use pinmesh_protocol::{ActorId, Dot, PinSpec};
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    let with = |allocations: &[&PeerId], min: i32, expire_at: Option<u64>| {
        let mut spec = PinSpec::named("x");
        spec.allocations = allocations.iter().map(|a| a.to_base58()).collect();
        (spec.replication_min, spec.replication_max, spec.expire_at) = (min, 3, expire_at);
        [Version {
            dot: Dot::new(ActorId::derive(&[1; 32], 1), 1),
            at: 1,
            spec,
        }]
    };
    let (cid, me) = (sim_cid(1), Role::member(PeerId::random()));
    let h = handover_of(&cid, &with(&[&a, &b, &c], 2, None), 1, &me).expect("allocated elsewhere");
    assert_eq!((h.peers, h.need), (vec![a, b, c], 2));
    // A minimum of "every peer" (-1) with allocations: one copy elsewhere is enough; never
    // more than are allocated.
    assert_eq!(
        handover_of(&cid, &with(&[&a], -1, None), 1, &me).map(|h| h.need),
        Some(1)
    );
    assert_eq!(
        handover_of(&cid, &with(&[&a], 3, None), 1, &me).map(|h| h.need),
        Some(1)
    );
    // Allocated here, to every peer, or expired: no handover.
    let here = PeerId::random();
    assert_eq!(
        handover_of(&cid, &with(&[&a, &here], 2, None), 1, &Role::member(here)),
        None
    );
    assert_eq!(handover_of(&cid, &with(&[], 2, None), 1, &me), None);
    assert_eq!(handover_of(&cid, &with(&[&a], 1, Some(5)), 5, &me), None);
    // A follower's copy is not one of the pin's: it lets go at once, with no handover.
    let share = pinmesh_protocol::share::Share {
        index: 0,
        of: 1_000,
    };
    let follower = Role::follower(here, Some(share));
    assert_eq!(handover_of(&cid, &with(&[&a], 1, None), 1, &follower), None);
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
    assert_eq!(backoff(1, base, max), Duration::from_secs(1));
    assert_eq!(backoff(2, base, max), Duration::from_secs(2));
    assert_eq!(backoff(4, base, max), Duration::from_secs(8));
    assert_eq!(backoff(30, base, max), max);
}

#[test]
fn only_old_unpinned_records_that_own_nothing_are_stale() {
    let keep = UNPINNED_KEEP.as_millis() as u64;
    let now = keep * 3;
    let old = |status, owned| PinState {
        updated_ms: now - keep - 1,
        ..stored(status, owned, 0)
    };
    assert!(stale(&old(Status::Unpinned, false), now));
    assert!(
        !stale(&old(Status::Unpinned, true), now),
        "still ours to remove"
    );
    assert!(
        !stale(&old(Status::PinError, false), now),
        "an error to show"
    );
    let recent = PinState {
        updated_ms: now - 1,
        ..stored(Status::Unpinned, false, 0)
    };
    assert!(!stale(&recent, now));
}
