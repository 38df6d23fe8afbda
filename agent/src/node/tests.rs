use super::*;

fn addr(port: u16, peer: Option<&PeerId>) -> Multiaddr {
    let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
    match peer {
        Some(p) => a.with(Protocol::P2p(*p)),
        None => a,
    }
}

fn record(ports: &[u16], removed: bool) -> PeerRecord {
    PeerRecord {
        addrs: ports.iter().map(|p| addr(*p, None)).collect(),
        last_seen: 1,
        removed,
    }
}

#[test]
fn removed_peers_are_not_dialled_at_start_and_come_back_to_be_refused() {
    let [me, kept, gone] = [(); 3].map(|()| PeerId::random());
    let bootstrap = vec![
        addr(1, Some(&gone)),
        addr(2, Some(&kept)),
        addr(3, Some(&me)),
    ];
    let known = vec![
        (kept, record(&[10, 11], false)),
        // Its addresses from before `peers rm`, had they been kept: never dialled.
        (gone, record(&[20], true)),
    ];
    let (dial, removed) = start_dials(bootstrap, known, &me);
    assert_eq!(
        dial,
        vec![
            addr(2, Some(&kept)),
            addr(10, Some(&kept)),
            addr(11, Some(&kept))
        ]
    );
    assert_eq!(removed, HashSet::from([gone]));
}
