//! Differential test: under causal delivery, membership of the pinset answers exactly as
//! `crdts::Orswot` (add-wins) fed the same operations at every replica, at every step.

use std::collections::{BTreeSet, HashSet};

use crdts::{CmRDT, Orswot};
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Delta, Dot, MemPinset, Op, PinSpec};
use proptest::prelude::*;

const REPLICAS: usize = 4;

struct Replica {
    pins: MemPinset,
    reference: Orswot<u64, u64>,
    counter: u64,
    /// Ops delivered from each origin (own ops included): a causally closed prefix per origin.
    delivered: [usize; REPLICAS],
}

struct Recorded {
    origin: usize,
    /// Index of this op among its origin's ops.
    seq: usize,
    /// The origin's `delivered` when it made the op: what must be delivered first.
    deps: [usize; REPLICAS],
    delta: Delta,
    op: crdts::orswot::Op<u64, u64>,
}

#[derive(Debug, Clone)]
enum Step {
    Pin {
        r: usize,
        m: u64,
    },
    Unpin {
        r: usize,
        m: u64,
    },
    /// Replica `to` delivers one deliverable op, chosen by `pick`.
    Deliver {
        to: usize,
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..REPLICAS, 0..6u64).prop_map(|(r, m)| Step::Pin { r, m }),
        (0..REPLICAS, 0..6u64).prop_map(|(r, m)| Step::Unpin { r, m }),
        (0..REPLICAS, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
        (0..REPLICAS, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

fn members(pins: &MemPinset) -> BTreeSet<Vec<u8>> {
    pins.sorted()
        .into_iter()
        .map(|(c, _)| c.to_bytes())
        .collect()
}

fn reference_members(set: &Orswot<u64, u64>) -> BTreeSet<Vec<u8>> {
    let read: HashSet<u64> = set.read().val;
    read.into_iter().map(|m| sim_cid(m).to_bytes()).collect()
}

fn deliverable(r: &Replica, op: &Recorded) -> bool {
    r.delivered[op.origin] == op.seq
        && (0..REPLICAS).all(|k| k == op.origin || r.delivered[k] >= op.deps[k])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn membership_matches_orswot(steps in prop::collection::vec(step(), 0..150)) {
        let mut replicas: Vec<Replica> = (0..REPLICAS)
            .map(|_| Replica {
                pins: MemPinset::new(),
                reference: Orswot::new(),
                counter: 0,
                delivered: [0; REPLICAS],
            })
            .collect();
        let mut ops: Vec<Recorded> = Vec::new();
        let mut made = [0usize; REPLICAS];
        for s in steps {
            match s {
                Step::Pin { r, m } | Step::Unpin { r, m } => {
                    let unpin = matches!(s, Step::Unpin { .. });
                    let rep = &mut replicas[r];
                    // The agent refuses to unpin what it does not hold; so does the test.
                    if unpin && !rep.pins.contains(&sim_cid(m)) {
                        continue;
                    }
                    rep.counter += 1;
                    let dot = Dot::new(ActorId(r as u64), rep.counter);
                    let (delta, op) = if unpin {
                        let ctx = rep.reference.contains(&m).derive_rm_ctx();
                        (rep.pins.local(dot, sim_cid(m), Op::Unpin), rep.reference.rm(m, ctx))
                    } else {
                        let ctx = rep.reference.read_ctx().derive_add_ctx(r as u64);
                        let spec = PinSpec::named(format!("{m}"));
                        let pin = Op::Pin { at: rep.counter, spec };
                        (rep.pins.local(dot, sim_cid(m), pin), rep.reference.add(m, ctx))
                    };
                    rep.reference.apply(op.clone());
                    let deps = rep.delivered;
                    rep.delivered[r] += 1;
                    ops.push(Recorded { origin: r, seq: made[r], deps, delta, op });
                    made[r] += 1;
                }
                Step::Deliver { to, pick } => {
                    let rep = &mut replicas[to];
                    let ready: Vec<&Recorded> = ops.iter().filter(|o| deliverable(rep, o)).collect();
                    if ready.is_empty() {
                        continue;
                    }
                    let op = ready[pick % ready.len()];
                    rep.pins.apply(&op.delta);
                    rep.reference.apply(op.op.clone());
                    rep.delivered[op.origin] += 1;
                }
            }
            for (i, rep) in replicas.iter().enumerate() {
                prop_assert_eq!(members(&rep.pins), reference_members(&rep.reference), "replica {}", i);
            }
        }
        // Deliver everything: all replicas agree with each other and with the reference.
        loop {
            let mut progressed = false;
            for rep in replicas.iter_mut() {
                while let Some(op) = ops.iter().find(|o| deliverable(rep, o)) {
                    rep.pins.apply(&op.delta);
                    rep.reference.apply(op.op.clone());
                    rep.delivered[op.origin] += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        for rep in &replicas {
            prop_assert_eq!(members(&rep.pins), reference_members(&rep.reference));
            prop_assert_eq!(rep.pins.head().digest, replicas[0].pins.head().digest);
        }
    }
}
