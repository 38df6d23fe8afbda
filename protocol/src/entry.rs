//! One CID's entry in the pinset and the join of two entries.
//!
//! An entry is the set of live [`Version`]s of a CID, sorted by dot. Usually there is one; two
//! or more only after concurrent updates, and the next update from any replica that has seen
//! them supersedes them all. [`winner`] picks the version every replica acts on.

use crate::dot::{ContainsDot, Dot};
use crate::spec::PinSpec;

/// One write of a pin: its dot, when it was made (unix milliseconds, from the writer's clock),
/// and the options it set. Encoded as `[dot, at, spec]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub dot: Dot,
    pub at: u64,
    pub spec: PinSpec,
}

crate::serde_as_tuple!(Version {
    dot: Dot,
    at: u64,
    spec: PinSpec
});

/// The version every replica acts on when concurrent updates left several: the latest `at`, and
/// among equal `at` the greatest dot. A pure function of the set, so all replicas agree.
pub fn winner(versions: &[Version]) -> Option<&Version> {
    versions.iter().max_by_key(|v| (v.at, v.dot))
}

/// Sorts by dot and drops repeated dots (keeping the first), making `versions` canonical.
/// Input from the network goes through this before a join.
pub fn normalize(versions: &mut Vec<Version>) {
    if !versions.is_sorted_by(|a, b| a.dot < b.dot) {
        versions.sort_by_key(|v| v.dot);
        versions.dedup_by_key(|v| v.dot);
    }
}

/// The join of one key's entries: `(s ∩ o) ∪ (s \ o_ctx) ∪ (o \ s_ctx)`.
///
/// A version survives if both sides hold it, or if the side lacking it has never seen its dot.
/// A side that has seen a dot and does not hold it has removed or superseded it. Both inputs
/// must be canonical (see [`normalize`]); so is the output.
///
/// Laws (with the contexts joined alongside): commutative, associative, idempotent. They are
/// property-tested in `tests/laws.rs`.
pub fn join_versions(
    local: &[Version],
    local_ctx: &impl ContainsDot,
    remote: &[Version],
    remote_ctx: &impl ContainsDot,
) -> Vec<Version> {
    let mut out = Vec::with_capacity(local.len().max(remote.len()));
    let (mut i, mut j) = (0, 0);
    while i < local.len() || j < remote.len() {
        let take_local = match (local.get(i), remote.get(j)) {
            (Some(l), Some(r)) if l.dot == r.dot => {
                // Equal dots carry equal versions unless a writer reused a dot (a database
                // restored from an old backup). Pick one the same way on every replica.
                let keep = if l == r || (l.at, &l.spec) <= (r.at, &r.spec) {
                    l
                } else {
                    r
                };
                out.push(keep.clone());
                i += 1;
                j += 1;
                continue;
            }
            (Some(l), Some(r)) => l.dot < r.dot,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_local {
            let l = &local[i];
            if !remote_ctx.contains_dot(l.dot) {
                out.push(l.clone());
            }
            i += 1;
        } else {
            let r = &remote[j];
            if !local_ctx.contains_dot(r.dot) {
                out.push(r.clone());
            }
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{ActorId, DotSet};

    fn v(actor: u64, counter: u64, at: u64) -> Version {
        Version {
            dot: Dot::new(ActorId(actor), counter),
            at,
            spec: PinSpec::named(format!("{actor}.{counter}")),
        }
    }

    #[test]
    fn removed_versions_stay_removed_and_unseen_ones_arrive() {
        let a1 = v(1, 1, 10);
        let b1 = v(2, 1, 20);
        let mut local_ctx = DotSet::new();
        local_ctx.insert(a1.dot);
        let mut remote_ctx = DotSet::new();
        remote_ctx.insert(a1.dot); // remote saw a1 and removed it
        remote_ctx.insert(b1.dot);
        let joined = join_versions(
            std::slice::from_ref(&a1),
            &local_ctx,
            std::slice::from_ref(&b1),
            &remote_ctx,
        );
        assert_eq!(joined, vec![b1.clone()]);
        // The other way round gives the same.
        let back = join_versions(std::slice::from_ref(&b1), &remote_ctx, &[a1], &local_ctx);
        assert_eq!(back, vec![b1]);
    }

    #[test]
    fn winner_is_latest_then_greatest_dot() {
        let versions = [v(1, 5, 100), v(2, 1, 100), v(3, 9, 50)];
        assert_eq!(
            winner(&versions).map(|w| w.dot),
            Some(Dot::new(ActorId(2), 1))
        );
        assert!(winner(&[]).is_none());
    }

    #[test]
    fn normalize_sorts_and_dedups() {
        let mut versions = vec![v(2, 1, 1), v(1, 1, 1), v(2, 1, 7)];
        normalize(&mut versions);
        let dots: Vec<_> = versions.iter().map(|x| x.dot).collect();
        assert_eq!(dots, vec![Dot::new(ActorId(1), 1), Dot::new(ActorId(2), 1)]);
    }
}
