use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::sim::sim_cid;

fn peer(n: usize) -> String {
    format!("peer-{n:02}")
}

fn candidates(free: &[u64]) -> Vec<Candidate<String>> {
    free.iter()
        .enumerate()
        .map(|(n, &free)| Candidate {
            peer: peer(n),
            free,
            tags: Vec::new(),
        })
        .collect()
}

fn wanted(cid: &[u8], max: usize) -> Wanted<'_, String> {
    Wanted {
        cid,
        min: 1,
        max,
        keep: &[],
        user: &[],
    }
}

#[test]
fn free_space_weighs_the_share_of_pins() {
    const GIB: u64 = 1 << 30;
    let peers = candidates(&[GIB, 2 * GIB, 3 * GIB, 4 * GIB]);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let pins = 20_000;
    for n in 0..pins {
        let cid = sim_cid(n).to_bytes();
        let chosen = allocate(&wanted(&cid, 1), &peers).expect("allocated");
        *counts.entry(chosen[0].clone()).or_default() += 1;
    }
    for (n, weight) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
        let share = counts[&peer(n)] as f64 / pins as f64;
        let expected = weight / 10.0;
        assert!(
            (share - expected).abs() < 0.1 * expected,
            "peer {n}: share {share:.3}, expected {expected:.3} ({counts:?})"
        );
    }
}

#[test]
fn every_replica_on_a_different_peer_and_never_more_than_asked() {
    let peers = candidates(&[10; 5]);
    for n in 0..500 {
        let cid = sim_cid(n).to_bytes();
        let chosen = allocate(&wanted(&cid, 3), &peers).expect("allocated");
        assert_eq!(chosen.len(), 3);
        let mut unique = chosen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 3, "{chosen:?}");
    }
    let cid = sim_cid(1).to_bytes();
    let all = allocate(&wanted(&cid, 9), &peers).expect("allocated");
    assert_eq!(all.len(), 5, "at most every candidate");
}

#[test]
fn too_few_peers_is_refused_with_how_many_there_are() {
    let peers = candidates(&[10, 10]);
    let cid = sim_cid(1).to_bytes();
    let asked = Wanted {
        min: 3,
        ..wanted(&cid, 3)
    };
    assert_eq!(
        allocate(&asked, &peers),
        Err(AllocateError::TooFewPeers {
            needed: 3,
            available: 2
        })
    );
    assert_eq!(
        AllocateError::TooFewPeers {
            needed: 3,
            available: 2
        }
        .to_string(),
        "3 peers needed, 2 available"
    );
}

#[test]
fn kept_then_user_allocations_come_first_when_they_are_candidates() {
    let peers = candidates(&[1, 1, 1, 1, 1]);
    let cid = sim_cid(1).to_bytes();
    let keep = [peer(4)];
    let user = [peer(9), peer(2), peer(4)];
    let asked = Wanted {
        keep: &keep,
        user: &user,
        ..wanted(&cid, 3)
    };
    let chosen = allocate(&asked, &peers).expect("allocated");
    assert_eq!(&chosen[..2], &[peer(4), peer(2)], "peer-09 is no candidate");
    assert_eq!(chosen.len(), 3);

    let asked = Wanted {
        keep: &keep,
        user: &user,
        ..wanted(&cid, 1)
    };
    assert_eq!(allocate(&asked, &peers).expect("allocated"), [peer(4)]);
}

#[test]
fn replicas_spread_across_tag_values_before_free_space_counts() {
    // Region "eu" has four peers with far more space; "us" two small ones.
    let mut peers = candidates(&[1000, 1000, 1000, 1000, 1, 1]);
    for (n, c) in peers.iter_mut().enumerate() {
        let region = if n < 4 { "eu" } else { "us" };
        let zone = format!("{region}-{}", n % 2);
        c.tags = vec![region.into(), zone];
    }
    for n in 0..300 {
        let cid = sim_cid(n).to_bytes();
        let chosen = allocate(&wanted(&cid, 3), &peers).expect("allocated");
        let tags = |p: &String| &peers.iter().find(|c| &c.peer == p).expect("candidate").tags;
        let regions: Vec<&str> = chosen.iter().map(|p| tags(p)[0].as_str()).collect();
        assert!(
            regions.contains(&"eu") && regions.contains(&"us"),
            "both regions: {chosen:?}"
        );
        // The third goes to the region's other zone, never the same zone twice.
        let mut zones: Vec<&str> = chosen.iter().map(|p| tags(p)[1].as_str()).collect();
        zones.sort();
        zones.dedup();
        assert_eq!(zones.len(), 3, "three zones: {chosen:?}");
    }
}

#[test]
fn the_repinner_is_the_same_whatever_order_peers_are_known_in() {
    let mut peers: Vec<String> = (0..10).map(peer).collect();
    let key = sim_cid(5).to_bytes();
    let first = first_for(&key, &peers).cloned();
    peers.reverse();
    assert_eq!(first_for(&key, &peers).cloned(), first);
    assert_eq!(first_for::<String>(&key, &[]), None);
    // Different keys pick different peers: over many keys, each peer is first for some.
    let mut firsts: Vec<String> = (0..200)
        .filter_map(|n| first_for(&sim_cid(n).to_bytes(), &peers).cloned())
        .collect();
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 10);
}

proptest! {
    /// When one peer of 20 leaves, only the lists that held it change, and only by it: the
    /// minimal movement.
    #[test]
    fn one_peer_leaving_moves_only_its_own_pins(
        gone in 0usize..20,
        free in proptest::collection::vec(1u64..1000, 20),
        max in 1usize..5,
    ) {
        let before = candidates(&free);
        let mut after = before.clone();
        after.remove(gone);
        for n in 0..200 {
            let cid = sim_cid(n).to_bytes();
            let old = allocate(&wanted(&cid, max), &before).expect("before");
            let new = allocate(&wanted(&cid, max), &after).expect("after");
            if old.contains(&peer(gone)) {
                let kept: Vec<&String> = old.iter().filter(|p| **p != peer(gone)).collect();
                prop_assert!(kept.iter().all(|p| new.contains(p)), "{old:?} -> {new:?}");
                prop_assert_eq!(new.len(), max);
            } else {
                prop_assert_eq!(&old, &new);
            }
        }
    }

    /// When one peer of 20 is lost, exactly the pins it held are due a repin; the repin keeps
    /// their other peers, adds one, and lands where a fresh allocation without the lost peer
    /// would: repinned pins end up where new pins go.
    #[test]
    fn a_repin_moves_only_the_lost_peers_replicas(
        lost in 0usize..20,
        free in proptest::collection::vec(1u64..1000, 20),
        max in 1usize..5,
    ) {
        let before = candidates(&free);
        let mut after = before.clone();
        after.remove(lost);
        let is_lost = |p: &String| *p == peer(lost);
        for n in 0..200 {
            let cid = sim_cid(n).to_bytes();
            let old = allocate(&wanted(&cid, max), &before).expect("before");
            let due = repin_due(&old, max, is_lost);
            prop_assert_eq!(due, old.contains(&peer(lost)));
            if !due {
                continue;
            }
            let keep: Vec<String> = old.iter().filter(|p| !is_lost(p)).cloned().collect();
            let repin = Wanted { keep: &keep, ..wanted(&cid, max) };
            let new = allocate(&repin, &after).expect("repinned");
            prop_assert_eq!(&new[..keep.len()], &keep[..]);
            prop_assert_eq!(new.len(), max);
            prop_assert!(!new.contains(&peer(lost)));
            let mut fresh = allocate(&wanted(&cid, max), &after).expect("fresh");
            let mut sorted = new.clone();
            fresh.sort();
            sorted.sort();
            prop_assert_eq!(sorted, fresh);
        }
    }
}

#[test]
fn a_blip_or_enough_peers_left_is_no_repin() {
    let allocations = vec![peer(1), peer(2), peer(3)];
    let none = |_: &String| false;
    assert!(!repin_due(&allocations, 3, none), "nobody lost");
    let one = |p: &String| *p == peer(2);
    assert!(repin_due(&allocations, 3, one));
    assert!(
        !repin_due(&allocations, 2, one),
        "two left of a minimum of two"
    );
    assert!(
        !repin_due(&[] as &[String], 1, one),
        "every peer: nothing to repin"
    );
}
