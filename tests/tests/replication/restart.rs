//! The partition guard across a restart: an agent counts the peers it heard from before it
//! stopped (their metrics are stored) as allocatable and down, so one restarted on the small
//! side of a split still sees itself outnumbered and repins nothing. Embedded IPFS nodes: what
//! is tested is the pinset, not what the nodes hold.

use std::collections::BTreeSet;
use std::time::Duration;

use libp2p::PeerId;
use pinmesh_agent::api::types::PinRequest;
use pinmesh_agent::store::Store;
use pinmesh_agent::swarm::SwarmInfo;
use pinmesh_protocol::Cid;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::{TestAgent, peers_until, random_secret};

use super::allocations;

const REPIN_AFTER: Duration = Duration::from_secs(2);

fn live_metrics(info: &SwarmInfo) -> usize {
    (info.peers.iter())
        .filter(|p| p.metric.as_ref().is_some_and(|m| m.live))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_on_the_small_side_counts_the_peers_it_knew_and_repins_nothing() {
    let secret = random_secret();
    let mut agents: Vec<TestAgent> = Vec::new();
    let mut bootstrap = Vec::new();
    for _ in 0..5 {
        let mut agent = TestAgent::create_with_ipfs(&secret, &bootstrap);
        agent.configure(|c| {
            c.cluster.metrics_interval = Duration::from_millis(200);
            c.cluster.repin_after = REPIN_AFTER;
        });
        let node = agent.start().await;
        if bootstrap.is_empty() {
            bootstrap = node.addrs.clone();
        }
        agents.push(agent);
    }
    let ids: Vec<PeerId> = agents.iter().map(|a| a.node().peer_id).collect();
    for agent in &agents[..2] {
        peers_until(agent, |info| live_metrics(info) == 4)
            .await
            .unwrap_or_else(|info| panic!("live metrics missing: {info:#?}"));
    }
    // Every pin on two of the three agents about to stop.
    let cids: Vec<Cid> = (0..6).map(sim_cid).collect();
    for (i, cid) in cids.iter().enumerate() {
        let mut request = PinRequest::new(*cid, format!("r{i}"));
        (request.replication_min, request.replication_max) = (Some(2), Some(2));
        request.allocations = vec![ids[2 + i % 3].to_string(), ids[2 + (i + 1) % 3].to_string()];
        agents[0].client().pin(&request).await.expect("pin");
    }
    let before = allocations(&[&agents[0]], &cids).await.remove(0);
    pinmesh_tests::converged(
        &agents[..2].iter().collect::<Vec<_>>(),
        Some(6),
        super::WAIT,
    )
    .await
    .expect("both hold the pins");

    // Three stop at once (one by one, the other two would see three of five alive for a
    // while): agents 0 and 1 see two of five. Then agent 1 stops, and starts again.
    futures::future::join_all(agents[2..].iter_mut().map(TestAgent::stop)).await;
    agents[1].stop().await;
    {
        let (store, _) = Store::open(&agents[1].home.database(), 1 << 20).expect("open");
        let stored: BTreeSet<PeerId> = (store.metrics().expect("metrics").into_iter())
            .map(|(peer, _)| peer)
            .collect();
        let others: BTreeSet<PeerId> = [0, 2, 3, 4].iter().map(|i| ids[*i]).collect();
        assert_eq!(stored, others, "every peer's metric is stored");
    }
    agents[1].start().await;
    // Past `repin_after`, the peers it has not heard from since its start would be lost:
    // it still counts them, as down, and stays paused.
    let uptime = (REPIN_AFTER + Duration::from_secs(1)).as_millis() as u64;
    let seen = peers_until(&agents[1], |info| {
        (info.repinning.as_ref()).is_some_and(|r| r.uptime_ms >= uptime && r.live == 2)
    })
    .await
    .unwrap_or_else(|info| panic!("the keeper did not look: {info:#?}"));
    let repinning = seen.repinning.clone().expect("a keeper");
    assert_eq!(
        (repinning.allocatable, repinning.paused),
        (5, true),
        "{seen:#?}"
    );
    assert_eq!(repinning.repinned, 0);
    for stopped in &ids[2..] {
        let peer = seen.peers.iter().find(|p| p.peer_id == *stopped);
        let metric = peer.and_then(|p| p.metric.as_ref());
        assert!(
            metric.is_some_and(|m| !m.live && m.age_ms >= uptime),
            "{stopped} shown down with its last metric: {seen:#?}"
        );
    }
    let views = allocations(&[&agents[0], &agents[1]], &cids).await;
    for view in &views {
        assert_eq!(view, &before, "a pin was repinned on the small side");
    }
    agents[0].stop().await;
    agents[1].stop().await;
}
