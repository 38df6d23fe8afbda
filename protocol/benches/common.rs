//! What the benchmarks share.

use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Dot, MemPinset, Op, PinSpec};

/// A state of `pins` pins written by `actor`, each with a short name ("pin-000123").
pub fn state_of(actor: ActorId, pins: u64) -> MemPinset {
    let mut state = MemPinset::new();
    for i in 0..pins {
        let spec = PinSpec::named(format!("pin-{i:06}"));
        let op = Op::Pin {
            at: 1_764_000_000_000 + i,
            spec,
        };
        state.local(Dot::new(actor, i + 1), sim_cid(i), op);
    }
    state
}
