//! `peers rm`: a removed peer is refused both ways, ignored when others relay its metrics, out
//! of allocation, and stays removed across restarts until `peers add` names it again.

use super::*;
use pinmesh_tests::peers_until;

fn connected(info: &SwarmInfo, peer: &libp2p::PeerId) -> bool {
    info.peers.iter().any(|p| p.peer_id == *peer && p.connected)
}

fn listed_peer(info: &SwarmInfo, peer: &libp2p::PeerId) -> bool {
    info.peers.iter().any(|p| p.peer_id == *peer)
}

/// Unix ms when `peer`'s latest metric reached `info`'s agent.
fn metric_arrived(info: &SwarmInfo, peer: &libp2p::PeerId) -> Option<u64> {
    let p = info.peers.iter().find(|p| p.peer_id == *peer)?;
    let age = p.metric.as_ref()?.age_ms;
    Some(pinmesh_agent::replica::now_ms().saturating_sub(age))
}

/// A pin of `n` on one peer, written at `agent`: accepted only if it has a live peer.
async fn allocate_one(agent: &TestAgent, n: u64) -> anyhow::Result<Vec<String>> {
    let mut request = pin_request(&sim_cid(n).to_string(), "one replica");
    (request.replication_min, request.replication_max) = (Some(1), Some(1));
    agent.client().pin(&request).await?;
    Ok(agent
        .client()
        .show(&sim_cid(n).to_string())
        .await?
        .allocations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_refused_ignored_and_stays_removed_after_a_restart() {
    let secret = random_secret();
    // A and C replicate only; B drives an IPFS node, so it publishes metrics (every 200 ms)
    // and is the one peer A can allocate to. B and C join A, and C joins B: once A removes
    // B, B's gossip still reaches A through C.
    let mut a = TestAgent::create(&secret, &[]);
    let a_addrs = a.start().await.addrs.clone();
    let a_addr = a_addrs[0].clone();
    let mut b = TestAgent::create_with_ipfs(&secret, &a_addrs);
    b.configure(|c| c.cluster.metrics_interval = Duration::from_millis(200));
    let b_addr = b.start().await.addrs[0].clone();
    let mut c = TestAgent::create(&secret, &a_addrs);
    c.start().await;
    c.client()
        .join(&b_addr.to_string())
        .await
        .expect("c joins b");
    let [a_id, b_id, c_id] = [&a, &b, &c].map(|agent| agent.node().peer_id);
    let a_dir = a.home.config().parent().expect("home").to_path_buf();
    peers_until(&a, |info| {
        connected(info, &b_id) && connected(info, &c_id) && metric_arrived(info, &b_id).is_some()
    })
    .await
    .unwrap_or_else(|info| panic!("A never saw B and C: {info:#?}"));
    // B is allocatable before it is removed (so the refusals below can fail).
    let allocated = allocate_one(&a, 1).await.expect("allocated");
    assert_eq!(allocated, vec![b_id.to_base58()]);

    // Bad input and A itself are refused with one line.
    let out = pinmesh_in(&a_dir, &["peers", "rm", "not-a-peer"]);
    assert_one_line_error(&out, "\"not-a-peer\" is not a peer id");
    let out = pinmesh_in(&a_dir, &["peers", "rm", &a_id.to_base58()]);
    assert_one_line_error(&out, "is this agent itself");

    let out = pinmesh_in(&a_dir, &["peers", "rm", &b_id.to_base58()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed_at = pinmesh_agent::replica::now_ms();
    let info = a.client().peers().await.expect("peers");
    assert!(!listed_peer(&info, &b_id), "{info:#?}");
    assert_eq!(info.removed, vec![b_id]);
    let out = pinmesh_in(&a_dir, &["peers", "ls"]);
    assert!(
        !stdout(&out).contains(&b_id.to_base58()),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("1 removed"), "{}", stderr(&out));
    // Its metric went with it: nobody is left to allocate to.
    let err = allocate_one(&a, 2).await.expect_err("no live peer");
    assert!(err.to_string().contains("0 available"), "{err}");
    // B's connections to A are closed.
    peers_until(&b, |info| !connected(info, &a_id))
        .await
        .unwrap_or_else(|info| panic!("B still connected to A: {info:#?}"));

    // B's metrics still reach A through C, and are ignored: once C has had two published
    // after the removal, the first has long been relayed to A.
    let first = peers_until(&c, |info| {
        metric_arrived(info, &b_id).is_some_and(|at| at > removed_at + 50)
    })
    .await
    .unwrap_or_else(|info| panic!("C had no new metric of B: {info:#?}"));
    let first = metric_arrived(&first, &b_id).expect("arrived");
    peers_until(&c, |info| {
        metric_arrived(info, &b_id).is_some_and(|at| at > first + 100)
    })
    .await
    .unwrap_or_else(|info| panic!("C had no second metric of B: {info:#?}"));
    let err = allocate_one(&a, 3)
        .await
        .expect_err("B stays out of allocation");
    assert!(err.to_string().contains("0 available"), "{err}");

    // B dialling A is refused: its join fails, and A counts the refusal.
    let refused_before = a.client().peers().await.expect("peers").refused_removed;
    let joined = b.client().join(&a_addr.to_string()).await;
    assert!(joined.is_err(), "B joined A after its removal: {joined:?}");
    let info = peers_until(&a, |info| info.refused_removed > refused_before)
        .await
        .unwrap_or_else(|info| panic!("A counted no refusal: {info:#?}"));
    assert!(!listed_peer(&info, &b_id), "{info:#?}");

    // After a restart (new port, so only A can dial out: C from its store, never B), B is
    // still removed and refused, while A finds C again.
    a.stop().await;
    a.start().await;
    let a_addr = a.node().addrs[0].clone();
    let info = peers_until(&a, |info| connected(info, &c_id))
        .await
        .unwrap_or_else(|info| panic!("A did not find C again: {info:#?}"));
    assert_eq!(info.removed, vec![b_id]);
    assert!(!listed_peer(&info, &b_id), "{info:#?}");
    let joined = b.client().join(&a_addr.to_string()).await;
    assert!(joined.is_err(), "B joined A after A's restart: {joined:?}");
    let info = peers_until(&a, |info| info.refused_removed > 0)
        .await
        .unwrap_or_else(|info| panic!("A counted no refusal: {info:#?}"));
    assert!(!listed_peer(&info, &b_id), "{info:#?}");

    // `peers add` undoes it, and what it remembers then survives a restart: A dials B again.
    let out = pinmesh_in(&a_dir, &["peers", "add", &b_addr.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info = peers_until(&a, |info| connected(info, &b_id))
        .await
        .unwrap_or_else(|info| panic!("A did not connect to B again: {info:#?}"));
    assert!(info.removed.is_empty(), "{info:#?}");
    a.stop().await;
    a.start().await;
    peers_until(&a, |info| connected(info, &b_id) && info.removed.is_empty())
        .await
        .unwrap_or_else(|info| panic!("A did not dial B after the restart: {info:#?}"));
    for agent in [&mut a, &mut b, &mut c] {
        agent.stop().await;
    }
}
