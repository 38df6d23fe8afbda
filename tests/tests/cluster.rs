//! Real agents on 127.0.0.1 replicating over real libp2p connections, with real redb files.

use std::collections::BTreeSet;
use std::time::Duration;

use pinmesh_agent::api::PinRequest;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::{TestAgent, TestCluster, random_secret, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);

fn pin_request(cid: &str, name: &str) -> PinRequest {
    PinRequest {
        cid: cid.to_string(),
        name: name.to_string(),
        mode: None,
        replication_min: None,
        replication_max: None,
        expire_at: None,
        metadata: Default::default(),
        origins: Vec::new(),
    }
}

async fn listed(agent: &TestAgent) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    agent
        .client()
        .list(|p| {
            out.insert((p.cid, p.name));
            Ok(())
        })
        .await
        .expect("pin ls");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_converge_under_concurrent_pins_and_unpins() {
    let cluster = TestCluster::start(5).await;
    // Each agent pins 60 CIDs of its own and 20 shared ones (concurrent updates of the same
    // CIDs), then unpins 15 of its own, all at once on every agent.
    let mut tasks = Vec::new();
    for (i, agent) in cluster.agents.iter().enumerate() {
        let client = agent.client();
        tasks.push(tokio::spawn(async move {
            for n in 0..60u64 {
                let cid = sim_cid(1000 * (i as u64 + 1) + n).to_string();
                client
                    .pin(&pin_request(&cid, &format!("a{i}-{n}")))
                    .await
                    .expect("pin");
            }
            for n in 0..20u64 {
                let cid = sim_cid(n).to_string();
                client
                    .pin(&pin_request(&cid, &format!("shared-by-{i}")))
                    .await
                    .expect("pin shared");
            }
            for n in 0..15u64 {
                let cid = sim_cid(1000 * (i as u64 + 1) + n).to_string();
                client.unpin(&cid).await.expect("unpin");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let expected_pins = 5 * (60 - 15) + 20;
    cluster
        .converged(Some(expected_pins), CONVERGE)
        .await
        .expect("converged");
    let first = listed(&cluster.agents[0]).await;
    assert_eq!(first.len() as u64, expected_pins);
    for agent in &cluster.agents[1..] {
        assert_eq!(listed(agent).await, first, "pin listings differ");
    }
    // The shared CIDs resolved to one name, the same everywhere.
    let shared: BTreeSet<_> = first
        .iter()
        .filter(|(_, n)| n.starts_with("shared-by-"))
        .collect();
    assert_eq!(shared.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_the_wrong_secret_cannot_connect_and_learns_nothing() {
    let cluster = TestCluster::start(2).await;
    let bootstrap = cluster.agents[0].node().addrs.clone();
    let mut outsider = TestAgent::create(&random_secret(), &bootstrap);
    outsider.start().await;

    cluster.agents[0]
        .client()
        .pin(&pin_request(&sim_cid(7).to_string(), "secret stuff"))
        .await
        .expect("pin");
    cluster
        .converged(Some(1), CONVERGE)
        .await
        .expect("members converge");

    // An explicit join fails at the handshake.
    let err = outsider
        .client()
        .join(&bootstrap[0].to_string())
        .await
        .expect_err("join must fail");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert_eq!(outsider.state().summary.pins, 0);
    let peers = cluster.agents[0].client().peers().await.expect("peers");
    let outsider_id = outsider.node().peer_id.to_string();
    assert!(
        peers
            .peers
            .iter()
            .all(|p| p.peer_id != outsider_id || !p.connected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_state_and_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let c0 = cluster.agents[0].client();
    for n in 0..20 {
        c0.pin(&pin_request(&sim_cid(n).to_string(), "before"))
            .await
            .expect("pin");
    }
    cluster
        .converged(Some(20), CONVERGE)
        .await
        .expect("converged before");
    let before = cluster.agents[2].state().summary.clone();

    cluster.agents[2].stop().await;
    for n in 20..50 {
        c0.pin(&pin_request(&sim_cid(n).to_string(), "while down"))
            .await
            .expect("pin");
    }
    cluster.agents[2].start().await;
    // Right after the restart, nothing was lost.
    let after = cluster.agents[2].state();
    assert_eq!(
        after.summary.actor, before.actor,
        "same incarnation after a restart"
    );
    assert!(after.summary.pins >= 20);
    cluster
        .converged(Some(50), CONVERGE)
        .await
        .expect("caught up after restart");
    let synced = wait_for(&cluster.running(), CONVERGE, |_| {
        cluster.running().iter().all(|a| {
            a.node()
                .flags
                .synced
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    })
    .await;
    assert!(synced.is_ok(), "every agent reports synced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests_get_clear_errors_and_change_nothing() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.agents[0].client();
    let err = client
        .pin(&pin_request("not-a-cid", "x"))
        .await
        .expect_err("bad cid");
    assert!(err.to_string().contains("is not a CID"), "{err}");
    let mut bad = pin_request(&sim_cid(1).to_string(), "x");
    bad.replication_min = Some(5);
    bad.replication_max = Some(2);
    let err = client.pin(&bad).await.expect_err("bad replication");
    assert!(err.to_string().contains("replication"), "{err}");
    let err = client
        .unpin(&sim_cid(2).to_string())
        .await
        .expect_err("not pinned");
    assert!(err.to_string().contains("is not pinned"), "{err}");
    let err = client
        .join("/ip4/127.0.0.1/tcp/1")
        .await
        .expect_err("no peer id");
    assert!(err.to_string().contains("/p2p/"), "{err}");
    let wrong_token = pinmesh_agent::api::client::Client::new(
        format!("http://{}", cluster.agents[0].node().api_addr),
        "wrong",
    );
    let err = wrong_token.digest().await.expect_err("unauthorized");
    assert!(err.to_string().contains("token"), "{err}");
    let state = cluster.agents[0].state();
    assert_eq!(state.summary.pins, 0);
    assert_eq!(state.counter, 0, "refused operations take no dot");
}
