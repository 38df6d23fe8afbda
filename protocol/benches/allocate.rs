//! Allocation: the writer's choice of peers for a pin, and how many pins move when the peer
//! set changes. `cargo bench -p pinmesh-protocol --bench allocate`.
//!
//! - time to allocate 1M pins over 100 peers (3 replicas each), weighted by free space, with
//!   and without spreading across a tag: µs per pin;
//! - replicas moved when one of 100 peers leaves or a new one joins, as a multiple of the
//!   fewest that must move (those of the peer that left; the new peer's fair share).

use std::collections::HashSet;
use std::time::Instant;

use pinmesh_protocol::allocate::{Candidate, Wanted, allocate};
use pinmesh_protocol::sim::sim_cid;

const REPLICAS: usize = 3;

/// `n` peers with ids shaped like libp2p's (38 bytes), free space of 1 to 4 units and one of
/// three regions.
fn peers(n: usize) -> Vec<Candidate<Vec<u8>>> {
    (0..n).map(peer).collect()
}

fn peer(i: usize) -> Candidate<Vec<u8>> {
    let mut id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    id.extend_from_slice(blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
    Candidate {
        peer: id,
        free: (1 + (i % 4) as u64) << 40,
        tags: vec![["eu", "us", "ap"][i % 3].to_string()],
    }
}

fn lists(cids: &[Vec<u8>], candidates: &[Candidate<Vec<u8>>]) -> Vec<Vec<Vec<u8>>> {
    cids.iter()
        .map(|cid| {
            let wanted = Wanted {
                cid,
                min: REPLICAS,
                max: REPLICAS,
                keep: &[],
                user: &[],
            };
            allocate(&wanted, candidates).expect("enough peers")
        })
        .collect()
}

/// Replicas in `after` that were not in `before`, over all pins.
fn moved(before: &[Vec<Vec<u8>>], after: &[Vec<Vec<u8>>]) -> usize {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let had: HashSet<&Vec<u8>> = b.iter().collect();
            a.iter().filter(|p| !had.contains(p)).count()
        })
        .sum()
}

fn untagged(candidates: &[Candidate<Vec<u8>>]) -> Vec<Candidate<Vec<u8>>> {
    (candidates.iter())
        .map(|c| Candidate {
            tags: Vec::new(),
            ..c.clone()
        })
        .collect()
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"allocate".contains(a.as_str()))
    {
        return;
    }
    let tagged = peers(100);
    let plain = untagged(&tagged);
    const PINS: usize = 1_000_000;
    let cids: Vec<Vec<u8>> = (0..PINS as u64).map(|i| sim_cid(i).to_bytes()).collect();
    for (what, candidates) in [("by free space", &plain), ("spread by region", &tagged)] {
        let start = Instant::now();
        let chosen = lists(&cids, candidates);
        let took = start.elapsed();
        println!(
            "allocate {PINS} pins over 100 peers, {REPLICAS} replicas, {what}: {:.2} s, {:.2} µs per pin",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / PINS as f64
        );
        assert_eq!(chosen.len(), PINS);
    }

    const MOVED_PINS: usize = 100_000;
    let cids = &cids[..MOVED_PINS];
    let before = lists(cids, &plain);
    // One peer leaves: its replicas must move, nothing else need.
    let gone = plain[17].peer.clone();
    let without: Vec<_> = plain.iter().filter(|c| c.peer != gone).cloned().collect();
    let after = lists(cids, &without);
    let optimum = before.iter().filter(|l| l.contains(&gone)).count();
    let leave = moved(&before, &after);
    println!(
        "one of 100 peers leaves ({MOVED_PINS} pins): {leave} replicas moved, {optimum} had to: {:.3}x the optimum",
        leave as f64 / optimum as f64
    );
    // One peer joins: the fewest moves give it its fair share of the replicas.
    let mut with = plain.clone();
    with.push(untagged(&[peer(100)]).remove(0));
    let after = lists(cids, &with);
    let total: u64 = with.iter().map(|c| c.free).sum();
    let fair = (MOVED_PINS * REPLICAS) as f64 * with[100].free as f64 / total as f64;
    let join = moved(&before, &after);
    println!(
        "a 101st peer joins ({MOVED_PINS} pins): {join} replicas moved, its fair share is {fair:.0}: {:.3}x the optimum",
        join as f64 / fair
    );
}
