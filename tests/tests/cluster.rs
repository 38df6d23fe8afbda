//! Real agents on 127.0.0.1 replicating over real libp2p connections, with real redb files.

use std::collections::BTreeSet;
use std::time::Duration;

use pinmesh_agent::api::PinRequest;
use pinmesh_agent::swarm::SwarmInfo;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::{
    Rogue, TestAgent, TestCluster, assert_one_line_error, converged, pinmesh_in, random_secret,
    stderr, stdout, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(60);

fn pin_request(cid: &str, name: &str) -> PinRequest {
    PinRequest::new(cid, name)
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
    let outsider_id = outsider.node().peer_id;
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
        cluster.running().iter().all(|a| a.node().is_synced())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_joins_a_100k_pin_cluster_by_snapshot() {
    let mut cluster = TestCluster::start(2).await;
    let client = cluster.agents[0].client();
    for chunk in 0..10u64 {
        let requests: Vec<PinRequest> = (0..10_000u64)
            .map(|i| pin_request(&sim_cid(chunk * 10_000 + i).to_string(), "bulk"))
            .collect();
        client.pin_many(&requests).await.expect("batch pin");
    }
    cluster
        .converged(Some(100_000), Duration::from_secs(180))
        .await
        .expect("the cluster holds 100k pins");

    let bootstrap = cluster.agents[0].node().addrs.clone();
    let mut newcomer = TestAgent::create(&cluster.secret, &bootstrap);
    newcomer.start().await;
    cluster.agents.push(newcomer);
    cluster
        .converged(Some(100_000), Duration::from_secs(180))
        .await
        .expect("the newcomer caught up");
    let newcomer = &cluster.agents[2];
    assert!(
        newcomer.state().snapshots_joined >= 1,
        "caught up by snapshot"
    );
    let synced = wait_for(&[newcomer], CONVERGE, |_| newcomer.node().is_synced()).await;
    assert!(synced.is_ok(), "the newcomer reports synced");
    // It holds the state, not just the digest.
    let shown = newcomer
        .client()
        .show(&sim_cid(99_999).to_string())
        .await
        .expect("pin replicated");
    assert_eq!(shown.name, "bulk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_to_one_state() {
    let secret = random_secret();
    // Two groups with the same secret that do not know each other: a partition.
    let mut a = TestAgent::create(&secret, &[]);
    let a_addrs = a.start().await.addrs.clone();
    let mut b = TestAgent::create(&secret, &a_addrs);
    b.start().await;
    let mut c = TestAgent::create(&secret, &[]);
    let c_addrs = c.start().await.addrs.clone();
    let mut d = TestAgent::create(&secret, &c_addrs);
    d.start().await;

    // Both sides write, including the same CIDs (20..30) with different options.
    let left: Vec<PinRequest> = (0..30)
        .map(|n| pin_request(&sim_cid(n).to_string(), "left"))
        .collect();
    let right: Vec<PinRequest> = (20..50)
        .map(|n| pin_request(&sim_cid(n).to_string(), "right"))
        .collect();
    a.client().pin_many(&left).await.expect("left pins");
    c.client().pin_many(&right).await.expect("right pins");
    converged(&[&a, &b], Some(30), CONVERGE)
        .await
        .expect("left side converged");
    converged(&[&c, &d], Some(30), CONVERGE)
        .await
        .expect("right side converged");
    for n in 0..5 {
        b.client()
            .unpin(&sim_cid(n).to_string())
            .await
            .expect("unpin on the left");
    }
    d.client()
        .unpin(&sim_cid(49).to_string())
        .await
        .expect("unpin on the right");
    converged(&[&a, &b], Some(25), CONVERGE)
        .await
        .expect("left side converged");
    converged(&[&c, &d], Some(29), CONVERGE)
        .await
        .expect("right side converged");

    // Heal.
    a.client()
        .join(&c_addrs[0].to_string())
        .await
        .expect("join across");
    converged(&[&a, &b, &c, &d], Some(44), CONVERGE)
        .await
        .expect("healed");
    let listing = listed(&a).await;
    for other in [&b, &c, &d] {
        assert_eq!(listed(other).await, listing);
    }
    // Concurrent pins of 20..30 survive on both sides' terms, resolved to one name.
    let overlap: BTreeSet<&String> = listing
        .iter()
        .filter(|(cid, _)| (20..30).any(|n| sim_cid(n).to_string() == *cid))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(overlap.len(), 1, "{overlap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_forged_gossip_is_rejected_without_harm() {
    use pinmesh_protocol::{DeltaBatch, Dot, Gossip, MemPinset, Op, PinSpec, codec};

    let cluster = TestCluster::start(2).await;
    let target = &cluster.agents[0];
    let mut rogue = Rogue::connect(&cluster.secret, "default", &target.node().addrs[0]).await;

    // Garbage, an unknown wire version, a truncated batch.
    rogue.publish(b"definitely not cbor".to_vec());
    rogue.publish(vec![0x82, 0x07, 0xf6]);
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let actor = pinmesh_protocol::ActorId::derive(&key.verifying_key().to_bytes(), 1);
    let mut pins = MemPinset::new();
    let delta = pins.local(
        Dot::new(actor, 1),
        sim_cid(77),
        Op::Pin {
            at: 1,
            spec: PinSpec::named("forged"),
        },
    );
    // A well-signed batch whose author is not the rogue that publishes it.
    let forged = DeltaBatch::sign(&key, "default", 1, std::slice::from_ref(&delta));
    let bytes = codec::encode_gossip(&Gossip::DeltaBatch(forged.clone()));
    rogue.publish(bytes[..bytes.len() / 2].to_vec());
    rogue.publish(bytes.clone());
    // A batch with its signature broken.
    let mut tampered = forged;
    tampered.signature.0[0] ^= 1;
    rogue.publish(codec::encode_gossip(&Gossip::DeltaBatch(tampered)));

    assert!(
        rogue.until_rejected(target, 5, CONVERGE).await,
        "the agent rejected all five messages"
    );
    assert_eq!(target.state().summary.pins, 0, "nothing forged was applied");
    // The agent is unharmed: it still replicates.
    target
        .client()
        .pin(&pin_request(&sim_cid(1).to_string(), "real"))
        .await
        .expect("pin");
    cluster
        .converged(Some(1), CONVERGE)
        .await
        .expect("still replicating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_joined_at_runtime_are_dialled_again_after_a_restart() {
    let secret = random_secret();
    let mut a = TestAgent::create(&secret, &[]);
    let a_addrs = a.start().await.addrs.clone();
    // c has no bootstrap peer in its config: it only learns a through `join`.
    let mut c = TestAgent::create(&secret, &[]);
    c.start().await;
    a.client()
        .pin(&pin_request(&sim_cid(1).to_string(), "one"))
        .await
        .expect("pin");
    // Alone, c is synced; joining a cluster it must catch up before saying so again.
    assert!(c.client().digest().await.expect("digest").synced);
    c.client()
        .join(&a_addrs[0].to_string())
        .await
        .expect("join");
    // Whenever c next reports synced, it must already hold what a had.
    let synced = c
        .client()
        .wait_digest(None, Some(true), CONVERGE)
        .await
        .expect("digest");
    assert!(
        synced.synced && synced.pins == 1,
        "synced before catching up: {synced:?}"
    );
    converged(&[&a, &c], Some(1), CONVERGE)
        .await
        .expect("converged");

    c.stop().await;
    a.client()
        .pin(&pin_request(&sim_cid(2).to_string(), "two"))
        .await
        .expect("pin");
    c.start().await;
    converged(&[&a, &c], Some(2), CONVERGE)
        .await
        .expect("c found a again from its peer store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_releases_everything_it_took() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    // The config as loaded, with the API on a taken port: nothing is written to disk.
    let mut start = pinmesh_agent::node::Start::from_home(agent.home.clone()).expect("home");
    start.config.api_listen = ([127, 0, 0, 1], port).into();
    let err = pinmesh_agent::node::Node::start(start)
        .await
        .expect_err("the API port is taken");
    assert!(err.to_string().contains("cannot bind the API"), "{err:#}");

    // Retrying at once works: the database and the network were released.
    agent.start().await;
    agent
        .client()
        .pin(&pin_request(&sim_cid(3).to_string(), "after retry"))
        .await
        .expect("pin");
    agent.stop().await;
}

/// Sets `sync.log_retention` in an agent's config.
fn set_log_retention(agent: &TestAgent, deltas: u64) {
    agent.configure(|c| c.sync.log_retention = deltas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_behind_the_retained_log_catches_up_by_snapshot() {
    let secret = random_secret();
    let mut a = TestAgent::create(&secret, &[]);
    set_log_retention(&a, 10);
    let a_addrs = a.start().await.addrs.clone();
    let mut c = TestAgent::create(&secret, &a_addrs);
    c.start().await;
    for n in 0..5 {
        a.client()
            .pin(&pin_request(&sim_cid(n).to_string(), "early"))
            .await
            .expect("pin");
    }
    converged(&[&a, &c], Some(5), CONVERGE)
        .await
        .expect("converged");

    c.stop().await;
    // One pin per request: 50 batches, of which a keeps the newest 10 deltas.
    for n in 5..55 {
        a.client()
            .pin(&pin_request(&sim_cid(n).to_string(), "while c was away"))
            .await
            .expect("pin");
    }
    let log = a.client().state().await.expect("state").log;
    let (first, last, _) = log.values().next().copied().expect("a logs its own deltas");
    assert_eq!(
        (first, last),
        (46, 55),
        "a keeps exactly its newest 10 deltas"
    );

    c.start().await;
    converged(&[&a, &c], Some(55), CONVERGE)
        .await
        .expect("c caught up");
    assert!(
        c.state().snapshots_joined >= 1,
        "the deltas c lacked were truncated: snapshot"
    );
}

/// Writes `cluster.trusted_writers = [writers]` into an agent's config.
fn set_trusted_writers(agent: &TestAgent, writers: &[libp2p::PeerId]) {
    agent.configure(|c| {
        c.cluster.trusted_writers = writers.iter().map(ToString::to_string).collect()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_writer_is_refused_and_changes_nothing() {
    use pinmesh_agent::replica::NodeSigner;
    use pinmesh_protocol::{ActorId, DeltaBatch, Dot, Gossip, MemPinset, Op, PinSpec, codec};

    let secret = random_secret();
    let mut a = TestAgent::create(&secret, &[]);
    let writer = a
        .home
        .load_identity()
        .expect("identity")
        .public()
        .to_peer_id();
    set_trusted_writers(&a, &[writer]);
    let a_addrs = a.start().await.addrs.clone();
    let mut b = TestAgent::create(&secret, &a_addrs);
    set_trusted_writers(&b, &[writer]);
    b.start().await;

    // b is a member but not a writer: its API says so and nothing changes.
    let err = b
        .client()
        .pin(&pin_request(&sim_cid(1).to_string(), "not allowed"))
        .await
        .expect_err("b may not write");
    assert!(
        err.to_string().contains("not in cluster.trusted_writers"),
        "{err}"
    );
    a.client()
        .pin(&pin_request(&sim_cid(2).to_string(), "allowed"))
        .await
        .expect("a writes");
    converged(&[&a, &b], Some(1), CONVERGE)
        .await
        .expect("a's write replicates");

    // A member that signs its own batch properly is still not a trusted writer.
    let mut rogue = Rogue::connect(&secret, "default", &a_addrs[0]).await;
    let signer = NodeSigner(rogue.key.clone().try_into_ed25519().expect("ed25519"));
    let actor = ActorId::derive(&signer.0.public().to_bytes(), 1);
    let mut pins = MemPinset::new();
    let op = Op::Pin {
        at: 1,
        spec: PinSpec::named("untrusted"),
    };
    let delta = pins.local(Dot::new(actor, 1), sim_cid(3), op);
    let batch = DeltaBatch::sign(&signer, "default", 1, &[delta]);
    assert_eq!(batch.verify("default"), Ok(()), "a well-formed batch");
    rogue.publish(codec::encode_gossip(&Gossip::DeltaBatch(batch)));
    assert!(
        rogue.until_rejected(&a, 1, CONVERGE).await,
        "the untrusted batch was rejected"
    );
    assert_eq!(a.state().summary.pins, 1, "and changed nothing");
    converged(&[&a, &b], Some(1), CONVERGE)
        .await
        .expect("still one state");
}

#[path = "cluster/removed.rs"]
mod removed;
