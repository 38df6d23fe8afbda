//! Deltas: what one operation changed, with its exact causal context.
//!
//! An operation on CID `c` made by a replica holding versions `V` of `c` takes a fresh dot `d`
//! and yields the delta `({c ↦ {(d, spec)}}, {d} ∪ dots(V))` for a pin or an update, and
//! `({}, {d} ∪ dots(V))` for an unpin. Its context is exactly the dots it covers: the new one
//! and the ones it supersedes, never a whole version-vector prefix. That is what lets deltas be
//! joined in any order, any number of times, and still converge.

use cid::Cid;

use crate::dot::{ContainsDot, Dot, DotSet};
use crate::entry::Version;
use crate::spec::PinSpec;

/// What an operation does to its CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Pin the CID, or update its options: a new version made at `at` (unix ms).
    Pin { at: u64, spec: PinSpec },
    /// Remove every version the writer had seen.
    Unpin,
}

/// One operation without its dot: the form it takes inside a [`DeltaBatch`](crate::DeltaBatch),
/// whose dots are implied by the batch's origin and first counter. Encoded as
/// `[cid, pin, observed]`, `pin` being `[at, spec]` or null for an unpin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub cid: Cid,
    /// `Some((at, spec))` for a pin or update, `None` for an unpin.
    pub pin: Option<(u64, PinSpec)>,
    /// The dots of the versions of `cid` the writer held: the ones this change supersedes.
    pub observed: Vec<Dot>,
}

crate::serde_as_tuple!(Change {
    cid: Cid,
    pin: Option<(u64, PinSpec)>,
    observed: Vec<Dot>,
});

/// One operation with its dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub dot: Dot,
    pub change: Change,
}

impl Delta {
    /// The delta of operation `op` on `cid`, made with dot `dot` by a replica holding `current`.
    pub fn new(dot: Dot, cid: Cid, op: Op, current: &[Version]) -> Self {
        let pin = match op {
            Op::Pin { at, spec } => Some((at, spec)),
            Op::Unpin => None,
        };
        Delta {
            dot,
            change: Change {
                cid,
                pin,
                observed: current.iter().map(|v| v.dot).collect(),
            },
        }
    }

    pub fn cid(&self) -> &Cid {
        &self.change.cid
    }

    pub fn is_unpin(&self) -> bool {
        self.change.pin.is_none()
    }

    /// The delta's exact causal context: its own dot and the dots it observed.
    pub fn context(&self) -> DotSet {
        let mut ctx = DotSet::new();
        self.add_context_to(&mut ctx);
        ctx
    }

    /// Adds the delta's context to `ctx`.
    pub fn add_context_to(&self, ctx: &mut DotSet) {
        ctx.insert(self.dot);
        for dot in &self.change.observed {
            ctx.insert(*dot);
        }
    }

    /// The delta's entry for its CID: one version for a pin, none for an unpin.
    pub fn versions(&self) -> Vec<Version> {
        match &self.change.pin {
            Some((at, spec)) => vec![Version {
                dot: self.dot,
                at: *at,
                spec: spec.clone(),
            }],
            None => Vec::new(),
        }
    }
}

impl ContainsDot for Delta {
    fn contains_dot(&self, dot: Dot) -> bool {
        dot == self.dot || self.change.observed.contains(&dot)
    }
}
