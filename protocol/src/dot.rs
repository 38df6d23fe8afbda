//! Actors, dots and exact sets of dots.
//!
//! A [`Dot`] names one operation: the actor that made it and that actor's counter. Every
//! operation, removes included, takes a fresh dot, so the counter doubles as the per-origin
//! sequence number of deltas.
//!
//! [`DotSet`] is an exact set of dots, stored per actor as a set of disjoint counter ranges. It
//! serves as both clocks of the design:
//!
//! - the CRDT's causal context ([`CausalContext`]): every dot this replica has seen, including
//!   dots superseded before they arrived. Gaps in it are what lets a delta carry an exact context
//!   where a version vector would over-claim.
//! - the applied-delta vector with exceptions ([`AppliedVector`]): the deltas actually applied,
//!   per origin. Gap detection, repair and "converged?" use this one, because equal causal
//!   contexts do not imply equal states while equal applied sets do.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// One replica incarnation: the first 8 bytes of a hash of its public key and an incarnation nonce.
///
/// A replica whose database is wiped draws a new nonce, hence a new actor, so its dots are never
/// reused. The 64-bit space makes accidental collisions negligible (about 2^-40 at a million
/// incarnations); a deliberate one would need the writer's key, which signs every batch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorId(pub u64);

impl ActorId {
    /// Derives the actor of the incarnation `incarnation` of the writer with `public_key`.
    pub fn derive(public_key: &[u8], incarnation: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("pinmesh 2026 actor id v1");
        hasher.update(public_key);
        hasher.update(&incarnation.to_le_bytes());
        let hash = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        ActorId(u64::from_le_bytes(first))
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({self})")
    }
}

/// One operation's identity: `(actor, counter)`, counters starting at 1.
///
/// Ordered by actor, then counter; encoded as a two-element array.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(ActorId, u64)", into = "(ActorId, u64)")]
pub struct Dot {
    pub actor: ActorId,
    pub counter: u64,
}

impl Dot {
    pub fn new(actor: ActorId, counter: u64) -> Self {
        Dot { actor, counter }
    }
}

impl From<(ActorId, u64)> for Dot {
    fn from((actor, counter): (ActorId, u64)) -> Self {
        Dot { actor, counter }
    }
}

impl From<Dot> for (ActorId, u64) {
    fn from(dot: Dot) -> Self {
        (dot.actor, dot.counter)
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.actor, self.counter)
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dot({self})")
    }
}

/// A set of `u64`s kept as disjoint, non-adjacent inclusive ranges.
///
/// Invariant: ranges are sorted, `start <= end`, and `end + 1 < next.start`. The encoding is the
/// sorted list of `[start, end]` pairs, so equal sets encode to equal bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(into = "Vec<(u64, u64)>")]
pub struct RangeSet {
    /// start -> end (inclusive).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of members (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        self.ranges.iter().fold(0u64, |n, (s, e)| {
            n.saturating_add((e - s).saturating_add(1))
        })
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, x: u64) -> bool {
        self.ranges
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| end >= x)
    }

    /// Largest member.
    pub fn max(&self) -> Option<u64> {
        self.ranges.values().next_back().copied()
    }

    /// Largest `n` such that `1..=n` are all members (0 when 1 is missing).
    pub fn contiguous(&self) -> u64 {
        match self.ranges.iter().next() {
            Some((&start, &end)) if start <= 1 => end,
            _ => 0,
        }
    }

    /// Inserts `x`; returns whether it was new.
    pub fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x);
        true
    }

    /// Inserts every member of `start..=end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if start > end {
            return;
        }
        // Fast path (the usual case: the next counter of an origin): grow the range that
        // starts at or below `start` in place, when it reaches `start` and the result does
        // not touch the range above.
        let touches_next = self
            .ranges
            .range(start.saturating_add(1)..)
            .next()
            .is_some_and(|(&s, _)| s <= end.saturating_add(1));
        if !touches_next
            && let Some((_, e)) = self.ranges.range_mut(..=start).next_back()
            && e.saturating_add(1) >= start
        {
            *e = (*e).max(end);
            return;
        }
        let mut new_start = start;
        let mut new_end = end;
        // Every range that overlaps or touches [start, end] starts at or before end + 1.
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        self.ranges.insert(new_start, new_end);
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for (&s, &e) in &other.ranges {
            self.insert_range(s, e);
        }
    }

    /// The inclusive ranges, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Ranges of `other` that are not in `self`, ascending.
    pub fn missing_from(&self, other: &RangeSet) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (s, e) in other.ranges() {
            // The first member of [s, e] not yet known to be covered; None once past u64::MAX.
            let mut cursor = Some(s);
            let first = self
                .ranges
                .range(..=s)
                .next_back()
                .map(|(&k, _)| k)
                .unwrap_or(s);
            for (&ms, &me) in self.ranges.range(first..=e) {
                let Some(c) = cursor else { break };
                if me < c {
                    continue;
                }
                if ms > c {
                    out.push((c, ms - 1));
                }
                cursor = me.checked_add(1);
            }
            if let Some(c) = cursor.filter(|&c| c <= e) {
                out.push((c, e));
            }
        }
        out
    }

    /// The holes between 1 and the largest member.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = 1u64;
        for (s, e) in self.ranges() {
            if s > next {
                out.push((next, s - 1));
            }
            next = e.saturating_add(1);
        }
        out
    }

    /// Whether every member of `other` is in `self`.
    pub fn is_superset(&self, other: &RangeSet) -> bool {
        other.ranges().all(|(s, e)| {
            self.ranges
                .range(..=s)
                .next_back()
                .is_some_and(|(_, &end)| end >= e)
        })
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(set: RangeSet) -> Self {
        set.ranges().collect()
    }
}

impl<'de> Deserialize<'de> for RangeSet {
    /// Accepts any list of ranges and normalises it; rejects `start > end`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut set = RangeSet::new();
        for (s, e) in pairs {
            if s > e {
                return Err(serde::de::Error::custom("range start after its end"));
            }
            set.insert_range(s, e);
        }
        Ok(set)
    }
}

impl fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (s, e) in self.ranges() {
            if s == e {
                list.entry(&format_args!("{s}"));
            } else {
                list.entry(&format_args!("{s}..={e}"));
            }
        }
        list.finish()
    }
}

/// An exact set of dots: per actor, the counters seen.
///
/// Join is union, which is commutative, associative and idempotent. Encoded as a map from actor to
/// range list; actors with no counters are never stored, so equal sets encode to equal bytes.
#[derive(Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct DotSet {
    actors: BTreeMap<ActorId, RangeSet>,
}

impl<'de> Deserialize<'de> for DotSet {
    /// Normalises as it reads: an actor repeated in the map has its ranges unioned, an actor
    /// with no ranges is dropped. Equal sets then compare, digest and encode equally whatever
    /// encoder produced them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DotSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from actor to counter ranges")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DotSet, A::Error> {
                let mut set = DotSet::new();
                while let Some((actor, ranges)) = map.next_entry::<ActorId, RangeSet>()? {
                    if !ranges.is_empty() {
                        set.actors.entry(actor).or_default().union(&ranges);
                    }
                }
                Ok(set)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Anything that can say whether it has seen a dot: a [`DotSet`], or a delta, whose exact
/// context is its own dot plus the dots it observed (no set needs building to ask it).
pub trait ContainsDot {
    fn contains_dot(&self, dot: Dot) -> bool;
}

impl ContainsDot for DotSet {
    fn contains_dot(&self, dot: Dot) -> bool {
        self.contains(dot)
    }
}

/// The CRDT causal context: every dot observed, applied or superseded.
pub type CausalContext = DotSet;
/// The applied-delta vector with exceptions: the deltas applied, per origin.
pub type AppliedVector = DotSet;

/// How one replica's applied set of an origin compares with another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Equal,
    /// Holds everything the other holds, and more.
    Ahead,
    /// Holds a strict subset of the other.
    Behind,
    /// Each holds something the other lacks.
    Concurrent,
}

impl DotSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    pub fn contains(&self, dot: Dot) -> bool {
        self.actors
            .get(&dot.actor)
            .is_some_and(|r| r.contains(dot.counter))
    }

    /// Inserts `dot`; returns whether it was new.
    pub fn insert(&mut self, dot: Dot) -> bool {
        self.actors
            .entry(dot.actor)
            .or_default()
            .insert(dot.counter)
    }

    /// Inserts the counters `start..=end` of `actor`.
    pub fn insert_range(&mut self, actor: ActorId, start: u64, end: u64) {
        if start <= end {
            self.actors
                .entry(actor)
                .or_default()
                .insert_range(start, end);
        }
    }

    /// Joins `other` into `self` (set union).
    pub fn union(&mut self, other: &DotSet) {
        for (actor, ranges) in &other.actors {
            if !ranges.is_empty() {
                self.actors.entry(*actor).or_default().union(ranges);
            }
        }
    }

    /// The counters of `actor`, if any.
    pub fn actor(&self, actor: ActorId) -> Option<&RangeSet> {
        self.actors.get(&actor)
    }

    /// Actors with at least one dot, ascending.
    pub fn actors(&self) -> impl Iterator<Item = (ActorId, &RangeSet)> + '_ {
        self.actors.iter().map(|(a, r)| (*a, r))
    }

    /// Largest counter of `actor` (0 when none).
    pub fn max(&self, actor: ActorId) -> u64 {
        self.actors.get(&actor).and_then(RangeSet::max).unwrap_or(0)
    }

    /// Total number of dots (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        self.actors
            .values()
            .fold(0u64, |n, r| n.saturating_add(r.len()))
    }

    /// Dots in `other` and not in `self`, as `(actor, start, end)` ranges.
    pub fn missing_from(&self, other: &DotSet) -> Vec<(ActorId, u64, u64)> {
        let empty = RangeSet::new();
        let mut out = Vec::new();
        for (actor, theirs) in &other.actors {
            let mine = self.actors.get(actor).unwrap_or(&empty);
            out.extend(
                mine.missing_from(theirs)
                    .into_iter()
                    .map(|(s, e)| (*actor, s, e)),
            );
        }
        out
    }

    pub fn is_superset(&self, other: &DotSet) -> bool {
        other.actors.iter().all(|(actor, theirs)| {
            self.actors
                .get(actor)
                .is_some_and(|mine| mine.is_superset(theirs))
        })
    }

    /// Compares `self` with `other` for one actor.
    pub fn compare_actor(&self, other: &DotSet, actor: ActorId) -> Comparison {
        let empty = RangeSet::new();
        let mine = self.actors.get(&actor).unwrap_or(&empty);
        let theirs = other.actors.get(&actor).unwrap_or(&empty);
        match (mine.is_superset(theirs), theirs.is_superset(mine)) {
            (true, true) => Comparison::Equal,
            (true, false) => Comparison::Ahead,
            (false, true) => Comparison::Behind,
            (false, false) => Comparison::Concurrent,
        }
    }

    /// A digest of the exact set: equal sets, and only equal sets (up to blake3), digest equally.
    pub fn digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new_derive_key("pinmesh 2026 dot set digest v1");
        for (actor, ranges) in &self.actors {
            hasher.update(&actor.0.to_le_bytes());
            hasher.update(&(ranges.range_count() as u64).to_le_bytes());
            for (s, e) in ranges.ranges() {
                hasher.update(&s.to_le_bytes());
                hasher.update(&e.to_le_bytes());
            }
        }
        Digest(*hasher.finalize().as_bytes())
    }
}

impl fmt::Debug for DotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.actors.iter()).finish()
    }
}

#[cfg(test)]
mod tests;
