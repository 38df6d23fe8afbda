//! Replication factors on real IPFS nodes (js-ipfs daemons, asked what they hold): pins land on
//! exactly their allocated nodes, spread across regions and weighted by free space; a lost
//! peer's pins are allocated again by one live peer and pinned elsewhere, never dropping below
//! their minimum of copies; a peer lets its copy of a pin allocated away go only once the new
//! peers hold it; an expired pin is unpinned everywhere and removed from the pinset.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use pinmesh_agent::api::types::PinRequest;
use pinmesh_agent::config::Config;
use pinmesh_protocol::Cid;
use pinmesh_tests::ipfs::{IpfsNet, IpfsNode};
use pinmesh_tests::{TestAgent, peers_until};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);

/// What each node holds of each CID.
async fn holdings(nodes: &[IpfsNode], cids: &[Cid]) -> BTreeMap<Cid, Vec<bool>> {
    let mut held = BTreeMap::new();
    for cid in cids {
        let mut on = Vec::new();
        for node in nodes {
            on.push(node.is_pinned(cid).await.unwrap_or(false));
        }
        held.insert(*cid, on);
    }
    held
}

/// Every agent's view of each pin's allocations (`None`: not in its pinset).
async fn allocations(
    agents: &[&TestAgent],
    cids: &[Cid],
) -> Vec<BTreeMap<Cid, Option<Vec<String>>>> {
    let mut views = Vec::new();
    for agent in agents {
        let mut view = BTreeMap::new();
        for cid in cids {
            let info = agent.client().show(&cid.to_string()).await.ok();
            view.insert(*cid, info.map(|i| i.allocations));
        }
        views.push(view);
    }
    views
}

/// Polls the nodes until `done` holds of what they hold and what the agents say, asserting at
/// every look that no pin is on fewer than `min` nodes.
async fn until_with_copies(
    what: &str,
    nodes: &[IpfsNode],
    agents: &[&TestAgent],
    cids: &[Cid],
    min: usize,
    done: impl Fn(&BTreeMap<Cid, Vec<bool>>, &[BTreeMap<Cid, Option<Vec<String>>>]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let held = holdings(nodes, cids).await;
        for (cid, on) in &held {
            let copies = on.iter().filter(|h| **h).count();
            assert!(copies >= min, "{cid} down to {copies} copies: {on:?}");
        }
        let views = allocations(agents, cids).await;
        if done(&held, &views) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}:\n{}",
            compact(cids, &held, &views)
        );
        // Pins land on the nodes' schedule, not on an event the test can await.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What each node holds and the agents' views allocate, a line per CID in the test's order
/// (`#3 …q2kgxta held 01100 allocated [ab12cd, ef34gh] | view 2: [...]`: the first view and
/// those that differ from it, CIDs and peers by the end of their text), short enough for a log.
fn compact(
    cids: &[Cid],
    held: &BTreeMap<Cid, Vec<bool>>,
    views: &[BTreeMap<Cid, Option<Vec<String>>>],
) -> String {
    let short = |list: &Option<Vec<String>>| match list {
        None => "not pinned".to_string(),
        Some(peers) => {
            let ends: Vec<&str> = (peers.iter())
                .map(|p| &p[p.len().saturating_sub(6)..])
                .collect();
            format!("[{}]", ends.join(", "))
        }
    };
    let mut lines = Vec::new();
    for (k, cid) in cids.iter().enumerate() {
        let on = held.get(cid).map_or(&[][..], Vec::as_slice);
        let bits: String = on.iter().map(|h| if *h { '1' } else { '0' }).collect();
        let first = views.first().and_then(|v| v.get(cid)).cloned().flatten();
        let text = cid.to_string();
        let end = &text[text.len().saturating_sub(7)..];
        let mut line = format!("#{k} …{end} held {bits} allocated {}", short(&first));
        for (i, view) in views.iter().enumerate().skip(1) {
            let theirs = view.get(cid).cloned().flatten();
            if theirs != first {
                line.push_str(&format!(" | view {i}: {}", short(&theirs)));
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// `n` js-ipfs nodes with one agent each (metrics every 200 ms, then `configure` with the
/// agent's index), once the first agent holds every other's live metric.
struct Net {
    /// Stops the nodes when dropped.
    net: IpfsNet,
    agents: Vec<TestAgent>,
    nodes: Vec<IpfsNode>,
    /// The agents' peer ids, as allocations name them.
    ids: Vec<String>,
}

async fn start(n: usize, configure: impl Fn(usize, &mut Config)) -> Net {
    let net = IpfsNet::start(n);
    let index = std::sync::atomic::AtomicUsize::new(0);
    let agents = net
        .agents(|c| {
            c.cluster.metrics_interval = Duration::from_millis(200);
            configure(index.fetch_add(1, std::sync::atomic::Ordering::SeqCst), c);
        })
        .await;
    let nodes = (0..n).map(|i| net.node(i)).collect();
    let ids = (agents.iter())
        .map(|a| a.node().peer_id.to_base58())
        .collect();
    peers_until(&agents[0], |info| {
        (info.peers.iter())
            .filter(|p| p.metric.as_ref().is_some_and(|m| m.live))
            .count()
            == n - 1
    })
    .await
    .unwrap_or_else(|info| panic!("live metrics missing: {info:#?}"));
    Net {
        net,
        agents,
        nodes,
        ids,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pins_on_five_nodes_land_two_by_two_across_regions_and_by_free_space() {
    const REGIONS: [&str; 5] = ["eu", "eu", "us", "us", "us"];
    let Net {
        net: _net,
        agents,
        nodes,
        ids,
    } = start(5, |i, c| {
        c.cluster.tags = [("region".to_string(), REGIONS[i].to_string())].into();
        c.cluster.allocate_by = vec!["region".into()];
        // Agent 4 has a tenth of the others' room.
        let room = if i == 4 { 1 } else { 10 };
        c.ipfs.storage_max = Some(ByteSize::gib(room));
    })
    .await;
    let files: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("placed {i}").into_bytes())
        .collect();
    let cids = nodes[0].add_many(&files, false).await;
    let requests: Vec<PinRequest> = (cids.iter().enumerate())
        .map(|(i, cid)| {
            let mut request = PinRequest::new(*cid, format!("p{i}"));
            (request.replication_min, request.replication_max) = (Some(2), Some(2));
            request
        })
        .collect();
    agents[0].client().pin_many(&requests).await.expect("pin");

    // Asked of the nodes: each CID on exactly two, one per region.
    let deadline = Instant::now() + WAIT;
    let held = loop {
        let mut held = Vec::new();
        for node in &nodes {
            held.push(node.recursive_pins().await.expect("pin/ls"));
        }
        let placed = cids.iter().all(|cid| {
            let on: Vec<usize> = (0..5).filter(|i| held[*i].contains(cid)).collect();
            on.len() == 2 && REGIONS[on[0]] != REGIONS[on[1]]
        });
        if placed {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "not placed two by two across regions"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let info = agents[3]
        .client()
        .show(&cids[0].to_string())
        .await
        .expect("show");
    let on: Vec<&String> = (0..5)
        .filter(|i| held[*i].contains(&cids[0]))
        .map(|i| &ids[i])
        .collect();
    assert_eq!(info.allocations.iter().collect::<Vec<_>>().len(), 2);
    assert!(
        on.iter().all(|id| info.allocations.contains(id)),
        "{info:?}"
    );
    // Each eu node holds about half; in us, agent 4 (a tenth of the room) far fewer.
    let counts: Vec<usize> = (0..5)
        .map(|i| cids.iter().filter(|c| held[i].contains(c)).count())
        .collect();
    assert_eq!(counts[0] + counts[1], 200, "{counts:?}");
    assert_eq!(counts[2] + counts[3] + counts[4], 200, "{counts:?}");
    assert!(counts[4] * 3 < counts[2].min(counts[3]), "{counts:?}");
    for mut agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_peers_pins_are_repinned_and_it_lets_its_copies_go_once_they_are() {
    let Net {
        net: _net,
        mut agents,
        nodes,
        ids,
    } = start(4, |_, c| c.cluster.repin_after = Duration::from_secs(2)).await;

    // Content on node 0, not pinned there. One pin is surely on agent 3 (the one lost
    // below): its allocations are given; the others are chosen.
    let mut cids = Vec::new();
    for n in 0..8 {
        let cid = nodes[0]
            .add(format!("repinned {n}").as_bytes(), false)
            .await;
        let mut request = PinRequest::new(cid, format!("r2 {n}"));
        (request.replication_min, request.replication_max) = (Some(2), Some(2));
        if n == 0 {
            request.allocations = vec![ids[3].clone(), ids[1].clone()];
        }
        agents[0].client().pin(&request).await.expect("pin");
        cids.push(cid);
    }
    let before = allocations(&[&agents[0]], &cids).await.remove(0);
    let on = |allocated: &Option<Vec<String>>, i: usize| {
        allocated.as_ref().is_some_and(|a| a.contains(&ids[i]))
    };
    let all: Vec<&TestAgent> = agents.iter().collect();
    until_with_copies(
        "pinned where allocated",
        &nodes,
        &all,
        &cids,
        0,
        |held, _| {
            held.iter()
                .all(|(cid, on_node)| (0..4).all(|i| on_node[i] == on(&before[cid], i)))
        },
    )
    .await;
    let lost: Vec<Cid> = (cids.iter())
        .filter(|cid| on(&before[*cid], 3))
        .copied()
        .collect();

    // Agent 3 stops; its node keeps what it holds. Two seconds after its metric expired,
    // its pins go to the other three, each to one more peer, and are pinned there.
    agents[3].stop().await;
    let live: Vec<&TestAgent> = agents[..3].iter().collect();
    until_with_copies(
        "repinned on the live peers",
        &nodes,
        &live,
        &cids,
        2,
        |held, views| {
            views.iter().all(|view| view == &views[0])
                && cids.iter().all(|cid| {
                    let now = &views[0][cid];
                    let kept = (0..3).filter(|i| on(&before[cid], *i));
                    now.as_ref().is_some_and(|a| a.len() == 2)
                        && !on(now, 3)
                        && kept.into_iter().all(|i| on(now, i))
                        && (0..3).all(|i| held[cid][i] == on(now, i))
                })
        },
    )
    .await;
    let after = allocations(&[&agents[0]], &cids).await.remove(0);
    for cid in cids.iter().filter(|cid| !lost.contains(cid)) {
        assert_eq!(after[cid], before[cid], "{cid} moved without a lost peer");
    }

    // Back, agent 3 finds its pins allocated elsewhere, held there: it lets its copies go
    // (never below two on the nodes meanwhile).
    agents[3].start().await;
    let all: Vec<&TestAgent> = agents.iter().collect();
    until_with_copies(
        "the copies on node 3 are gone",
        &nodes,
        &all,
        &cids,
        2,
        |held, views| {
            views.iter().all(|view| view == &views[0])
                && cids
                    .iter()
                    .all(|cid| held[cid].iter().filter(|h| **h).count() == 2)
                && lost.iter().all(|cid| !held[cid][3])
        },
    )
    .await;
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_two_three_split_only_the_larger_side_repins_and_every_pin_heals_to_one_list() {
    let Net {
        net: _net,
        mut agents,
        nodes,
        ids,
    } = start(5, |_, c| c.cluster.repin_after = Duration::from_secs(2)).await;
    let peer_ids: Vec<libp2p::PeerId> = agents.iter().map(|a| a.node().peer_id).collect();
    // Pins over the five, one surely on the small side only and one on the large side only.
    let files: Vec<Vec<u8>> = (0..20).map(|i| format!("split {i}").into_bytes()).collect();
    let cids = nodes[0].add_many(&files, false).await;
    for (i, cid) in cids.iter().enumerate() {
        let mut request = PinRequest::new(*cid, format!("s{i}"));
        (request.replication_min, request.replication_max) = (Some(2), Some(2));
        match i {
            0 => request.allocations = vec![ids[0].clone(), ids[1].clone()],
            1 => request.allocations = vec![ids[2].clone(), ids[3].clone()],
            _ => {}
        }
        agents[0].client().pin(&request).await.expect("pin");
    }
    let before = allocations(&[&agents[0]], &cids).await.remove(0);
    let on = |allocated: &Option<Vec<String>>, i: usize| {
        allocated.as_ref().is_some_and(|a| a.contains(&ids[i]))
    };
    let all: Vec<&TestAgent> = agents.iter().collect();
    until_with_copies(
        "pinned where allocated",
        &nodes,
        &all,
        &cids,
        0,
        |held, _| {
            (held.iter()).all(|(cid, on_node)| (0..5).all(|i| on_node[i] == on(&before[cid], i)))
        },
    )
    .await;

    // Split: agents 0 and 1 | agents 2, 3 and 4 (their IPFS nodes stay connected).
    let (small, large) = ([0, 1], [2, 3, 4]);
    for (side, other) in [(&small[..], &large[..]), (&large[..], &small[..])] {
        let others: Vec<libp2p::PeerId> = other.iter().map(|i| peer_ids[*i]).collect();
        for i in side {
            agents[*i].client().cut(&others, true).await.expect("cut");
        }
    }
    // The large side sees three of five alive: it repins what had a peer on the small side.
    let large_agents: Vec<&TestAgent> = large.iter().map(|i| &agents[*i]).collect();
    let on_large = |a: &Option<Vec<String>>| {
        a.as_ref()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|p| large.iter().any(|i| ids[*i] == *p)))
    };
    until_with_copies(
        "repinned on the large side",
        &nodes,
        &large_agents,
        &cids,
        2,
        |held, views| {
            views.iter().all(|view| view == &views[0])
                && cids.iter().all(|cid| {
                    let now = &views[0][cid];
                    on_large(now) && large.iter().all(|i| held[cid][*i] == on(now, *i))
                })
        },
    )
    .await;
    // The small side sees two of five: by now its peers have been down as long, and it has
    // repinned nothing.
    let small_views = allocations(&[&agents[0], &agents[1]], &cids).await;
    for view in &small_views {
        assert_eq!(view, &before, "the small side repinned");
    }

    // Healed: one list per pin, two peers each, on the nodes as allocated; the small side's
    // nodes let their copies go.
    for (side, other) in [(&small[..], &large[..]), (&large[..], &small[..])] {
        let others: Vec<libp2p::PeerId> = other.iter().map(|i| peer_ids[*i]).collect();
        for i in side {
            agents[*i].client().cut(&others, false).await.expect("heal");
        }
    }
    let addr = agents[2].node().addrs[0].to_string();
    for i in small {
        agents[i].client().join(&addr).await.expect("join");
    }
    until_with_copies("healed", &nodes, &all, &cids, 2, |held, views| {
        views.iter().all(|view| view == &views[0])
            && cids.iter().all(|cid| {
                let now = &views[0][cid];
                let mut list = now.clone().unwrap_or_default();
                list.sort();
                list.dedup();
                list.len() == 2 && (0..5).all(|i| held[cid][i] == on(now, i))
            })
    })
    .await;
    // Back above half, the small side first heard of the large side's first peers and had not
    // caught up with its repins: it waited instead of moving pins itself. Asked once the wait
    // is over, and a look 1.5 s after the one that ended it: a repin that look decided on is
    // written before the keeper's next second of repins, or its next look.
    for i in small {
        let resumed_at = std::cell::Cell::new(None);
        let seen = peers_until(&agents[i], |info| {
            let Some(r) = &info.repinning else {
                return false;
            };
            if r.paused || r.resumes_in_ms.is_some() {
                resumed_at.set(None);
                return false;
            }
            let from = *resumed_at.get().get_or_insert(r.uptime_ms);
            resumed_at.set(Some(from));
            r.uptime_ms >= from + 1_500
        })
        .await
        .unwrap_or_else(|info| panic!("agent {i} still waits: {:?}", info.repinning));
        let repinning = seen.repinning.expect("a keeper");
        assert_eq!(repinning.repinned, 0, "agent {i} repinned: {repinning:?}");
    }
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_keeps_its_copy_of_a_moved_pin_until_the_new_peer_holds_it() {
    let Net {
        net,
        mut agents,
        nodes,
        ids,
    } = start(3, |_, _| {}).await;
    let all: Vec<&TestAgent> = agents.iter().collect();
    let cid = nodes[0].add(b"moved from 1 to 2", false).await;
    let mut request = PinRequest::new(cid, "moved");
    request.allocations = vec![ids[1].clone()];
    request.allow_under_replication = true; // metrics may not all be in yet
    agents[0].client().pin(&request).await.expect("pin");
    until_with_copies("on node 1 only", &nodes, &all, &[cid], 0, |held, _| {
        held[&cid] == [false, true, false]
    })
    .await;

    // Moved to agent 2, whose IPFS node is down: it cannot pin it, so agent 1 keeps its copy.
    net.stop_node(2);
    request.allocations = vec![ids[2].clone()];
    agents[0].client().pin(&request).await.expect("pin");
    let deadline = Instant::now() + WAIT;
    loop {
        let info = agents[1]
            .client()
            .show(&cid.to_string())
            .await
            .expect("show");
        // A release that found the new peer without the pin waits for its next try.
        let kept = agents[1]
            .client()
            .reconciler()
            .await
            .expect("report")
            .retrying
            > 0;
        if info.allocations == [ids[2].clone()] && kept {
            break;
        }
        assert!(Instant::now() < deadline, "agent 1 never kept its copy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        nodes[1].is_pinned(&cid).await.expect("node 1"),
        "copy dropped"
    );

    // Node 2 back: agent 2 pins it, and only then agent 1 lets its copy go.
    net.start_node(2);
    until_with_copies("moved to node 2", &nodes, &all, &[cid], 1, |held, _| {
        held[&cid] == [false, false, true]
    })
    .await;
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pin_is_unpinned_on_every_node_and_removed_from_the_pinset() {
    let Net {
        net: _net,
        mut agents,
        nodes,
        ..
    } = start(2, |_, _| {}).await;
    let (expiring, staying) = (
        nodes[0].add(b"expires", false).await,
        nodes[0].add(b"stays", false).await,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut request = PinRequest::new(expiring, "expires");
    request.expire_at = Some(now + 4);
    agents[0].client().pin(&request).await.expect("pin");
    agents[0]
        .client()
        .pin(&PinRequest::new(staying, "stays"))
        .await
        .expect("pin");
    let cids = [expiring, staying];
    let all: Vec<&TestAgent> = agents.iter().collect();
    until_with_copies(
        "both pinned on both nodes",
        &nodes,
        &all,
        &cids,
        0,
        |held, _| held.values().all(|on| on == &[true, true]),
    )
    .await;
    // The relist interval is ten minutes: the expiry's own timer does it.
    until_with_copies(
        "expired everywhere",
        &nodes,
        &all,
        &cids,
        0,
        |held, views| {
            held[&expiring] == [false, false]
                && held[&staying] == [true, true]
                && views
                    .iter()
                    .all(|v| v[&expiring].is_none() && v[&staying].is_some())
        },
    )
    .await;
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(elapsed >= now + 4, "not before its time");
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[path = "replication/restart.rs"]
mod restart;
