//! The join laws, on states reachable by random histories: commutative, associative, idempotent;
//! applying a delta equals joining the delta as a state; deltas joined in any order, with
//! repeats, give the same state.

use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Delta, Dot, MemPinset, Op, PinSpec};
use proptest::prelude::*;

/// One step of a random history over 3 actors and 5 CIDs.
#[derive(Debug, Clone)]
enum Step {
    /// Replica `r` pins (or updates) CID `c` at time `at`.
    Pin {
        r: usize,
        c: u64,
        at: u64,
    },
    Unpin {
        r: usize,
        c: u64,
    },
    /// Replica `to` receives the delta number `d` (mod history length) made so far.
    Deliver {
        to: usize,
        d: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..5u64, 0..4u64).prop_map(|(r, c, at)| Step::Pin { r, c, at }),
        (0..3usize, 0..5u64).prop_map(|(r, c)| Step::Unpin { r, c }),
        (0..3usize, any::<usize>()).prop_map(|(to, d)| Step::Deliver { to, d }),
        (0..3usize, any::<usize>()).prop_map(|(to, d)| Step::Deliver { to, d }),
    ]
}

/// Runs a history; returns the three replicas' states and every delta made.
fn run(steps: &[Step]) -> (Vec<MemPinset>, Vec<Delta>) {
    let mut states = vec![MemPinset::new(); 3];
    let mut counters = [0u64; 3];
    let mut deltas: Vec<Delta> = Vec::new();
    for s in steps {
        match *s {
            Step::Pin { r, c, at } => {
                counters[r] += 1;
                let dot = Dot::new(ActorId(r as u64 + 1), counters[r]);
                let spec = PinSpec::named(format!("{r}-{at}"));
                let d = states[r].local(
                    dot,
                    sim_cid(c),
                    Op::Pin {
                        at,
                        spec: spec.clone(),
                    },
                );
                // The writer sees its own write at once: the states below are never trivial.
                let versions = states[r].versions(&sim_cid(c));
                assert!(versions.len() == 1 && versions[0].spec == spec && versions[0].dot == dot);
                deltas.push(d);
            }
            Step::Unpin { r, c } => {
                counters[r] += 1;
                let dot = Dot::new(ActorId(r as u64 + 1), counters[r]);
                deltas.push(states[r].local(dot, sim_cid(c), Op::Unpin));
                assert!(!states[r].contains(&sim_cid(c)));
            }
            Step::Deliver { to, d } => {
                if !deltas.is_empty() {
                    states[to].apply(&deltas[d % deltas.len()]);
                }
            }
        }
    }
    (states, deltas)
}

fn joined(a: &MemPinset, b: &MemPinset) -> MemPinset {
    let mut out = a.clone();
    out.join(b);
    out
}

fn delta_state(d: &Delta) -> MemPinset {
    let mut s = MemPinset::new();
    s.apply(d);
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn join_is_commutative_associative_idempotent(steps in prop::collection::vec(step(), 0..60)) {
        let (states, _) = run(&steps);
        let (a, b, c) = (&states[0], &states[1], &states[2]);
        prop_assert_eq!(joined(a, b), joined(b, a));
        prop_assert_eq!(joined(&joined(a, b), c), joined(a, &joined(b, c)));
        prop_assert_eq!(joined(a, a), a.clone());
        let ab = joined(a, b);
        prop_assert_eq!(ab.head().digest, ab.recompute_digest());
    }

    #[test]
    fn applying_a_delta_is_joining_its_state(steps in prop::collection::vec(step(), 1..60), pick: usize) {
        let (states, deltas) = run(&steps);
        prop_assume!(!deltas.is_empty());
        let d = &deltas[pick % deltas.len()];
        for s in &states {
            let mut applied = s.clone();
            applied.apply(d);
            prop_assert_eq!(applied, joined(s, &delta_state(d)));
        }
    }

    #[test]
    fn deltas_in_any_order_and_any_number_of_times(
        steps in prop::collection::vec(step(), 1..60),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
    ) {
        let (_, deltas) = run(&steps);
        prop_assume!(!deltas.is_empty());
        let mut in_order = MemPinset::new();
        for d in &deltas {
            in_order.apply(d);
        }
        // Apply a random sequence with repeats, then everything, in reverse.
        let mut shuffled = MemPinset::new();
        for i in &order {
            shuffled.apply(&deltas[i.index(deltas.len())]);
        }
        for d in deltas.iter().rev() {
            shuffled.apply(d);
        }
        prop_assert_eq!(&shuffled, &in_order);
        // And equals joining all the deltas' states.
        let mut by_join = MemPinset::new();
        for d in &deltas {
            by_join.join(&delta_state(d));
        }
        prop_assert_eq!(by_join, in_order);
    }
}
