//! Membership faults: failed joins, two clusters sharing a secret, an untrusted member.

use super::*;

// 7. A join that fails changes nothing; joining oneself is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_join_leaves_synced_and_the_peer_list_alone() {
    let mut lone = TestAgent::create(&random_secret(), &[]);
    let own = lone.start().await.addrs[0].to_string();
    let client = lone.client();
    assert!(client.digest().await.expect("digest").synced);

    // Nobody listens there (the port was just freed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let nobody = libp2p::PeerId::random();
    let err = client
        .join(&format!("/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}"))
        .await
        .expect_err("nobody answers");
    assert!(err.to_string().contains("cannot connect"), "{err}");

    let err = client.join(&own).await.expect_err("own address");
    assert!(err.to_string().contains("own address"), "{err}");

    let digest = client.digest().await.expect("digest");
    assert!(digest.synced, "a failed join made the agent unsynced");
    let peers = client.peers().await.expect("peers").peers;
    assert!(peers.is_empty(), "peers that never connected: {peers:?}");

    // A peer that connects but is no member (another cluster on the same secret) never
    // answers: once it is cut off, the agent is synced as before.
    let config = pinmesh_agent::config::Config::load(&lone.home.config()).expect("config");
    let mut other = TestAgent::create(&config.raw.cluster.secret, &[]);
    other.configure(|c| c.cluster.name = "other".into());
    let other_addr = other.start().await.addrs[0].to_string();
    let _ = client.join(&other_addr).await;
    let digest = client
        .wait_digest(None, Some(true), CONVERGE)
        .await
        .expect("digest");
    assert!(
        digest.synced,
        "a join of a non-member left the agent unsynced"
    );
    other.stop().await;
}

// 2. Two clusters sharing a secret stay apart on every protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_sharing_a_secret_keep_their_pinsets_apart() {
    let secret = random_secret();
    let mut m1 = TestAgent::create(&secret, &[]);
    m1.configure(|c| c.cluster.name = "alpha".into());
    let m1_addrs = m1.start().await.addrs.clone();
    let batch: Vec<PinRequest> = (0..50u64)
        .map(|n| PinRequest::new(sim_cid(n), "alpha's"))
        .collect();
    m1.client().pin_many(&batch).await.expect("pins");

    let mut y1 = TestAgent::create(&secret, &m1_addrs);
    y1.configure(|c| c.cluster.name = "beta".into());
    y1.start().await;
    // A member of alpha joins as a control: the same path works within one cluster.
    let mut m2 = TestAgent::create(&secret, &m1_addrs);
    m2.configure(|c| c.cluster.name = "alpha".into());
    m2.start().await;
    converged(&[&m1, &m2], Some(50), CONVERGE)
        .await
        .expect("alpha converges");

    // Recognised (by one side at least: whichever reads the other's identify first cuts the
    // connection), then neither lists the other.
    let foreign = |agent: &TestAgent| agent.node().flags.foreign_peers.load(Ordering::Relaxed);
    let waited = wait_for(&[&m1, &y1], CONVERGE, |_| foreign(&m1) + foreign(&y1) >= 1).await;
    assert!(waited.is_ok(), "the other cluster was never recognised");
    let y1_id = y1.node().peer_id;
    let m1_id = m1.node().peer_id;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let m1_peers = m1.client().peers().await.expect("peers").peers;
        let y1_peers = y1.client().peers().await.expect("peers").peers;
        let apart = m1_peers.iter().all(|p| p.peer_id != y1_id)
            && y1_peers.iter().all(|p| p.peer_id != m1_id);
        if apart {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {m1_peers:?} {y1_peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(y1.state().summary.pins, 0, "beta took alpha's pins");
    assert_eq!(y1.state().snapshots_joined, 0);
    // A join at runtime is refused too: at once if y1 knows m1 already, else once identified.
    match y1.client().join(&m1_addrs[0].to_string()).await {
        Err(err) => assert!(err.to_string().contains("another cluster"), "{err}"),
        Ok(_) => {
            let waited = wait_for(&[&y1], CONVERGE, |_| foreign(&y1) >= 1).await;
            assert!(waited.is_ok(), "y1 never recognised m1");
        }
    }
    assert_eq!(y1.state().summary.pins, 0, "beta took alpha's pins");
    // alpha is unaffected: m1 hears m2 converged (beacons arrive on their own schedule).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let report = m1.client().debug_peers().await.expect("debug peers");
        if report.converged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "y1 {y1_id}, m2 {}: {report:?}",
            m2.node().peer_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `cluster.trusted_writers` into an agent's config.
fn trust(agent: &TestAgent, writers: &[libp2p::PeerId]) {
    let writers: Vec<String> = writers.iter().map(ToString::to_string).collect();
    agent.configure(|c| c.cluster.trusted_writers = writers);
}

fn peer_of(agent: &TestAgent) -> libp2p::PeerId {
    agent
        .home
        .load_identity()
        .expect("identity")
        .public()
        .to_peer_id()
}

// 4. A member that writes without being trusted blocks nobody's `synced`, and is not pulled
// from again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_member_neither_blocks_synced_nor_causes_repeated_repair() {
    let secret = random_secret();
    let fast = |agent: &TestAgent| {
        agent.configure(|c| c.sync.beacon_interval = Duration::from_millis(200));
    };
    let mut t1 = TestAgent::create(&secret, &[]);
    let writer = peer_of(&t1);
    trust(&t1, &[writer]);
    fast(&t1);
    let t1_addrs = t1.start().await.addrs.clone();
    let batch: Vec<PinRequest> = (0..5u64)
        .map(|n| PinRequest::new(sim_cid(n), "trusted"))
        .collect();
    t1.client().pin_many(&batch).await.expect("trusted pins");

    // A member that dropped the trusted_writers line: it writes, everyone else refuses.
    let mut rogue = TestAgent::create(&secret, &t1_addrs);
    fast(&rogue);
    let rogue_addrs = rogue.start().await.addrs.clone();
    let batch: Vec<PinRequest> = (100..130u64)
        .map(|n| PinRequest::new(sim_cid(n), "untrusted"))
        .collect();
    rogue.client().pin_many(&batch).await.expect("rogue pins");

    // A fresh trusted-list member that hears of both.
    let mut bootstrap = t1_addrs.clone();
    bootstrap.extend(rogue_addrs);
    let mut t4 = TestAgent::create(&secret, &bootstrap);
    trust(&t4, &[writer]);
    fast(&t4);
    t4.start().await;
    let digest = t4
        .client()
        .wait_digest(None, Some(true), CONVERGE)
        .await
        .expect("digest");
    assert!(digest.synced, "an untrusted writer kept t4 unsynced");
    assert_eq!(digest.pins, 5, "{digest:?}");

    // Each learns once that the rogue's origin is untrusted (its signed batches, pulled or
    // gossiped, are rejected); then, over thirty more beacons of the rogue (6 s, longer than
    // the repair patience), nothing more of it is pulled or rejected by t1 or t4.
    let rejected = |agent: &TestAgent| agent.node().flags.rejected.load(Ordering::Relaxed);
    let learned = wait_for(&[&t1, &t4], CONVERGE, |_| {
        rejected(&t1) >= 1 && rejected(&t4) >= 1
    })
    .await;
    assert!(
        learned.is_ok(),
        "the rogue's batches never reached t1 and t4"
    );
    let before = (rejected(&t1), rejected(&t4));
    let bytes_before = t4.node().flags.sync_bytes_in.load(Ordering::Relaxed);
    let mut heard = 0;
    let mut last = None;
    let rogue_id = rogue.node().peer_id;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while heard < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rogue went quiet"
        );
        let peers = t1.client().peers().await.expect("peers").peers;
        let now = peers
            .iter()
            .find(|p| p.peer_id == rogue_id)
            .and_then(|p| p.last_heard_ms);
        if let (Some(now), Some(last)) = (now, last)
            && now < last
        {
            heard += 1;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (rejected(&t1), rejected(&t4)),
        before,
        "untrusted deltas pulled again"
    );
    let pulled = t4.node().flags.sync_bytes_in.load(Ordering::Relaxed) - bytes_before;
    assert!(pulled < 4_096, "t4 kept pulling: {pulled} bytes");
    assert_eq!(t1.state().summary.pins, 5);
}
