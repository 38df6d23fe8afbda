//! Which peers hold a pin: a pure function of the pin's CID, its replication factors, the
//! allocations asked for or kept, and the live peers' metrics.
//!
//! The writer of a pin calls [`allocate`] and stores the result in the pin, so every peer sees
//! the same list; nobody computes it again unless an allocated peer is lost (a repin keeps the
//! live allocations and adds peers to them).
//!
//! Order of choice:
//! 1. the allocations to keep (a repin's live ones), then the user's, as long as they are
//!    candidates;
//! 2. spread across tag values: the next peer is one whose tags (in `allocate_by` order) are
//!    shared by the fewest peers chosen so far, comparing the first tag, then the first two, ...;
//! 3. among those, the best weighted rendezvous score of (CID, peer), the weight being the
//!    peer's free space.
//!
//! Rendezvous hashing moves few pins when the peer set changes: a peer's score for a CID does
//! not depend on the other peers, so removing one peer changes only the lists it was in, and
//! adding one takes from each list only where it now scores best. The weight makes a peer with
//! twice the free space receive about twice the pins (`-w / ln(u)` of a uniform `u` is the
//! exponential-race form of weighted choice).

/// A peer that may be allocated: it has an IPFS node and a live metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<P> {
    pub peer: P,
    /// Bytes free for pins; the weight of its score (0 counts as 1: last resort).
    pub free: u64,
    /// Its values of the `allocate_by` tags, in that order (an absent tag is `""`).
    pub tags: Vec<String>,
}

/// What a pin asks for.
#[derive(Debug, Clone)]
pub struct Wanted<'a, P> {
    /// The CID's bytes: the rendezvous key.
    pub cid: &'a [u8],
    /// Fewer live peers than this: refused.
    pub min: usize,
    /// At most this many peers.
    pub max: usize,
    /// Allocations to keep first (a repin passes the live ones of the current list).
    pub keep: &'a [P],
    /// The user's allocations, taken next.
    pub user: &'a [P],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("{needed} peers needed, {available} available")]
    TooFewPeers { needed: usize, available: usize },
}

/// The peers for a pin, in order of choice (kept, user, then spread and score).
pub fn allocate<P>(
    wanted: &Wanted<'_, P>,
    candidates: &[Candidate<P>],
) -> Result<Vec<P>, AllocateError>
where
    P: AsRef<[u8]> + Clone + Eq,
{
    let mut chosen: Vec<&Candidate<P>> = Vec::with_capacity(wanted.max);
    for peer in wanted.keep.iter().chain(wanted.user) {
        if chosen.len() == wanted.max {
            break;
        }
        if let Some(c) = candidates.iter().find(|c| &c.peer == peer)
            && !chosen.iter().any(|x| x.peer == c.peer)
        {
            chosen.push(c);
        }
    }
    let key = key_hash(wanted.cid);
    let mut rest: Vec<(f64, &Candidate<P>)> = candidates
        .iter()
        .filter(|c| !chosen.iter().any(|x| x.peer == c.peer))
        .map(|c| (weighted(key, c.peer.as_ref(), c.free), c))
        .collect();
    // Best score first; equal scores (equal keys) by peer bytes, so the order is total.
    let order = |(a, x): &(f64, &Candidate<P>), (b, y): &(f64, &Candidate<P>)| {
        b.total_cmp(a)
            .then_with(|| x.peer.as_ref().cmp(y.peer.as_ref()))
    };
    let levels = candidates.iter().map(|c| c.tags.len()).max().unwrap_or(0);
    let room = wanted.max - chosen.len();
    if levels == 0 && room < rest.len() {
        // By score alone, only the best `room` matter: no need to sort the others.
        rest.select_nth_unstable_by(room, order);
        rest.truncate(room);
    }
    rest.sort_by(order);
    if levels == 0 {
        chosen.extend(rest.iter().take(room).map(|(_, c)| *c));
    }
    while levels > 0 && chosen.len() < wanted.max && !rest.is_empty() {
        // The first (best-scored) of those whose tags are least taken.
        let crowding = |c: &Candidate<P>| -> u128 {
            // Per depth, how many chosen peers share this peer's first `depth` tag values,
            // packed so that comparing numbers compares the counts in order of depth.
            (1..=levels.min(MAX_LEVELS)).fold(0u128, |packed, depth| {
                let mine = prefix(&c.tags, depth);
                let shared = (chosen.iter())
                    .filter(|x| prefix(&x.tags, depth) == mine)
                    .count();
                (packed << COUNT_BITS) | shared.min(COUNT_MAX) as u128
            })
        };
        let mut best = 0;
        let mut best_crowding = crowding(rest[0].1);
        for (i, (_, c)) in rest.iter().enumerate().skip(1) {
            let crowding = crowding(c);
            if crowding < best_crowding {
                (best, best_crowding) = (i, crowding);
            }
        }
        chosen.push(rest.remove(best).1);
    }
    if chosen.len() < wanted.min {
        return Err(AllocateError::TooFewPeers {
            needed: wanted.min,
            available: candidates.len(),
        });
    }
    Ok(chosen.into_iter().map(|c| c.peer.clone()).collect())
}

/// Whether a pin allocated to `allocations` must be allocated again: some of its peers are
/// `lost` (down for longer than the cluster waits) and fewer than `min` are not. A peer down
/// for a shorter while still counts: a blip moves nothing.
pub fn repin_due<P>(allocations: &[P], min: usize, lost: impl Fn(&P) -> bool) -> bool {
    let gone = allocations.iter().filter(|p| lost(p)).count();
    gone > 0 && allocations.len() - gone < min
}

/// The repinner of a pin: of the peers that may repin (live, and writers), the one that ranks
/// first for its CID. Every peer with the same view picks the same one, so one peer
/// re-allocates each pin; two views that differ (a metric seen by one only) may pick two, and
/// the pinset's winner rule then keeps one of their lists.
pub fn repinner<'p, P: AsRef<[u8]>>(cid: &[u8], repinners: &'p [P]) -> Option<&'p P> {
    first_for(cid, repinners)
}

/// Tag levels compared when spreading (more are ignored), and the bits of each level's count:
/// 16 levels of 7 bits fit a `u128`.
const MAX_LEVELS: usize = 16;
const COUNT_BITS: u32 = 7;
const COUNT_MAX: usize = (1 << COUNT_BITS) - 1;

/// The first `depth` tag values (fewer when a peer has fewer tags).
fn prefix(tags: &[String], depth: usize) -> &[String] {
    &tags[..depth.min(tags.len())]
}

/// Weighted rendezvous score of `peer` for `cid`: `-w / ln(u)`, `u` uniform in (0, 1) from a
/// hash of both. Higher is better.
pub fn score(cid: &[u8], peer: &[u8], weight: u64) -> f64 {
    weighted(key_hash(cid), peer, weight)
}

fn weighted(key: u64, peer: &[u8], weight: u64) -> f64 {
    let u = unit(mix(key, peer));
    weight.max(1) as f64 / -u.ln()
}

/// Plain rendezvous: which of `peers` ranks first for `key` (the same on every peer, whatever
/// the order it knows them in). Decides who among live peers repins a CID.
pub fn first_for<'p, P: AsRef<[u8]>>(key: &[u8], peers: &'p [P]) -> Option<&'p P> {
    let key = key_hash(key);
    // Equal hashes (never seen in practice) go to the smallest peer bytes.
    peers.iter().max_by(|a, b| {
        (mix(key, a.as_ref()).cmp(&mix(key, b.as_ref()))).then_with(|| b.as_ref().cmp(a.as_ref()))
    })
}

/// The key's hash, taken once per choice (blake3: keys are chosen by users).
fn key_hash(key: &[u8]) -> u64 {
    let bytes = blake3::hash(key);
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The rendezvous hash of (key, peer): the peer's bytes folded in eight at a time (cheap: it
/// runs once per candidate per choice), each step and the end avalanched with the SplitMix64
/// finaliser, so that peers whose ids differ in one byte still rank independently.
fn mix(key: u64, peer: &[u8]) -> u64 {
    let chunks = peer.chunks_exact(8);
    let tail = chunks.remainder();
    let mut h = key ^ (peer.len() as u64);
    for chunk in chunks {
        h = avalanche(h ^ u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    avalanche(h ^ u64::from_le_bytes(last))
}

/// SplitMix64's finaliser: every input bit flips about half the output bits.
fn avalanche(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash as a number in (0, 1), never 0 or 1.
fn unit(hash: u64) -> f64 {
    // 53 bits: exactly representable; +0.5 keeps it off both ends.
    ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
