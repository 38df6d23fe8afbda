use std::collections::BTreeMap;

use pinmesh_protocol::sim::sim_cid;

use super::*;

fn peer(n: u8) -> PeerId {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).expect("key");
    key.public().to_peer_id()
}

fn live(n: u8, free_gib: u64, region: &str) -> (PeerId, PeerMetric) {
    let metric = PeerMetric {
        free: free_gib << 30,
        pins: 0,
        tags: BTreeMap::from([("region".to_string(), region.to_string())]),
        age_ms: 0,
        live: true,
    };
    (peer(n), metric)
}

fn peers(n: u8) -> Vec<(PeerId, PeerMetric)> {
    (1..=n).map(|i| live(i, 100, "eu")).collect()
}

fn ask(min: i32, max: i32) -> Ask {
    Ask {
        min: Some(min),
        max: Some(max),
        ..Ask::default()
    }
}

fn text(ns: &[u8]) -> Vec<String> {
    ns.iter().map(|n| peer(*n).to_base58()).collect()
}

const EVERY: (i32, i32) = (EVERYWHERE, EVERYWHERE);

#[test]
fn every_peer_by_default_means_no_allocations() {
    let cid = sim_cid(1);
    let chosen = choose(&cid, &Ask::default(), None, EVERY, &peers(4), &[]);
    assert_eq!(chosen, Ok((EVERYWHERE, EVERYWHERE, Vec::new())));
    // Cluster defaults apply to a new pin.
    let (min, max, allocations) =
        choose(&cid, &Ask::default(), None, (2, 3), &peers(4), &[]).expect("allocated");
    assert_eq!((min, max, allocations.len()), (2, 3, 3));
}

#[test]
fn a_factor_picks_that_many_live_peers_the_same_way_every_time() {
    let cid = sim_cid(1);
    let (_, _, first) = choose(&cid, &ask(2, 2), None, EVERY, &peers(5), &[]).expect("ok");
    assert_eq!(first.len(), 2);
    assert_ne!(first[0], first[1]);
    let mut reversed = peers(5);
    reversed.reverse();
    let (_, _, again) = choose(&cid, &ask(2, 2), None, EVERY, &reversed, &[]).expect("ok");
    assert_eq!(first, again, "the order peers are known in does not matter");
}

#[test]
fn writing_a_pin_again_keeps_its_allocations() {
    let cid = sim_cid(1);
    let mut current = PinSpec::named("x");
    (current.replication_min, current.replication_max) = (2, 2);
    current.allocations = text(&[7, 8]);
    // Same factors (asked again, or not asked): kept, even with other peers live now.
    for asked in [ask(2, 2), Ask::default()] {
        let kept = choose(&cid, &asked, Some(&current), EVERY, &peers(3), &[]);
        assert_eq!(kept, Ok((2, 2, text(&[7, 8]))));
    }
    // A higher factor keeps the live ones and adds peers.
    let mut up = peers(4);
    up.push(live(7, 100, "eu"));
    let (_, _, grown) = choose(&cid, &ask(3, 3), Some(&current), EVERY, &up, &[]).expect("ok");
    assert_eq!(grown.len(), 3);
    assert_eq!(
        grown[0],
        peer(7).to_base58(),
        "the live allocation stays first"
    );
    assert!(
        !grown.contains(&peer(8).to_base58()),
        "the one not live is dropped"
    );
}

#[test]
fn user_allocations_come_first_and_alone_set_the_factor() {
    let cid = sim_cid(1);
    let user = Ask {
        user: vec![peer(4), peer(2)],
        ..Ask::default()
    };
    let chosen = choose(&cid, &user, None, EVERY, &peers(5), &[]);
    assert_eq!(chosen, Ok((2, 2, text(&[4, 2]))));
    let more = Ask {
        user: vec![peer(4)],
        ..ask(3, 3)
    };
    let (_, _, three) = choose(&cid, &more, None, EVERY, &peers(5), &[]).expect("ok");
    assert_eq!(three.len(), 3);
    assert_eq!(three[0], peer(4).to_base58());
    let too_many = Ask {
        user: vec![peer(1), peer(2), peer(3)],
        ..ask(1, 2)
    };
    assert_eq!(
        choose(&cid, &too_many, None, EVERY, &peers(5), &[]),
        Err(Refused::TooManyUserPeers { given: 3, max: 2 })
    );
    let down = Ask {
        user: vec![peer(9)],
        ..Ask::default()
    };
    assert_eq!(
        choose(&cid, &down, None, EVERY, &peers(5), &[]),
        Err(Refused::UserPeerDown { peer: peer(9) })
    );
    // Allowed under-replicated: taken as asked, down or not.
    let allowed = Ask {
        under_replicated: true,
        ..down
    };
    assert_eq!(
        choose(&cid, &allowed, None, EVERY, &peers(5), &[]),
        Ok((1, 1, text(&[9])))
    );
    // On a pin allocated elsewhere, the user's peers come before its current ones.
    let current = PinSpec {
        replication_min: 2,
        replication_max: 2,
        allocations: text(&[1, 2]),
        ..PinSpec::default()
    };
    let moved = Ask {
        user: vec![peer(3)],
        ..ask(2, 2)
    };
    assert_eq!(
        choose(&cid, &moved, Some(&current), EVERY, &peers(5), &[]),
        Ok((2, 2, text(&[3, 1])))
    );
}

#[test]
fn too_few_live_peers_are_refused_unless_under_replication_is_allowed() {
    let cid = sim_cid(1);
    let refused = choose(&cid, &ask(3, 3), None, EVERY, &peers(2), &[]);
    assert_eq!(
        refused,
        Err(Refused::TooFewPeers {
            cid,
            needed: 3,
            available: 2
        })
    );
    let line = refused.expect_err("refused").to_string();
    assert!(
        line.contains("needs 3 peers") && line.contains("2 available"),
        "{line}"
    );
    let allowed = Ask {
        under_replicated: true,
        ..ask(3, 3)
    };
    let (_, _, two) = choose(&cid, &allowed, None, EVERY, &peers(2), &[]).expect("ok");
    assert_eq!(two.len(), 2);
    assert!(
        choose(&cid, &allowed, None, EVERY, &[], &[]).is_err(),
        "none at all"
    );
}

#[test]
fn replicas_spread_across_the_values_of_allocate_by() {
    let by = ["region".to_string()];
    let up = vec![
        live(1, 500, "eu"),
        live(2, 500, "eu"),
        live(3, 500, "eu"),
        live(4, 10, "us"),
    ];
    for n in 0..50 {
        let cid = sim_cid(n);
        let (_, _, chosen) = choose(&cid, &ask(2, 2), None, EVERY, &up, &by).expect("ok");
        assert!(
            chosen.contains(&peer(4).to_base58()),
            "one replica in us: {chosen:?}"
        );
    }
}
