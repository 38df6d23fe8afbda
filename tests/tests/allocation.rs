//! Allocation: agents with an IPFS node publish signed metrics (free space for pins, pins,
//! tags) that every peer holds until they expire. In-process agents on loopback, with real
//! embedded IPFS nodes where a metric is published.

use std::time::Duration;

use bytesize::ByteSize;
use pinmesh_agent::api::types::PinRequest;
use pinmesh_agent::swarm::{PeerMetric, SwarmInfo};
use pinmesh_protocol::codec;
use pinmesh_protocol::metric::{Metric, Reading};
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::{Rogue, TestAgent, random_secret};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

fn tagged(agent: &TestAgent, region: &str, storage_max: ByteSize) {
    let region = region.to_string();
    agent.configure(move |config| {
        config.cluster.metrics_interval = Duration::from_millis(200);
        config.cluster.tags = [("region".to_string(), region)].into();
        config.ipfs.storage_max = Some(storage_max);
    });
}

/// The metric `info` shows for `peer`.
fn metric_of(info: &SwarmInfo, peer: &libp2p::PeerId) -> Option<PeerMetric> {
    info.peers
        .iter()
        .find(|p| p.peer_id == *peer)
        .and_then(|p| p.metric.clone())
}

/// Asks `agent` for its peers until `check` holds; the last answer on timeout.
async fn peers_until(
    agent: &TestAgent,
    check: impl Fn(&SwarmInfo) -> bool,
) -> Result<SwarmInfo, SwarmInfo> {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = agent.client().peers().await.expect("peers");
        if check(&info) {
            return Ok(info);
        }
        if Instant::now() >= deadline {
            return Err(info);
        }
        // A new metric arrives every 200 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_a_node_publish_signed_metrics_that_peers_hold_until_they_expire() {
    let secret = random_secret();
    // Two agents on embedded IPFS nodes, with tags and limits; one without a node.
    let mut eu = TestAgent::create_with_ipfs(&secret, &[]);
    tagged(&eu, "eu", ByteSize::gib(4));
    let bootstrap = eu.start().await.addrs.clone();
    let mut us = TestAgent::create_with_ipfs(&secret, &bootstrap);
    tagged(&us, "us", ByteSize::gib(2));
    us.start().await;
    let mut bare = TestAgent::create(&secret, &bootstrap);
    bare.configure(|c| c.cluster.metrics_interval = Duration::from_millis(200));
    bare.start().await;
    let (eu_id, us_id) = (eu.node().peer_id, us.node().peer_id);

    // Pins written anywhere show in the metrics' pin counts.
    for n in 0..3 {
        let request = PinRequest::new(sim_cid(n), format!("pin {n}"));
        bare.client().pin(&request).await.expect("pin");
    }
    let seen = peers_until(&bare, |info| {
        let (Some(e), Some(u)) = (metric_of(info, &eu_id), metric_of(info, &us_id)) else {
            return false;
        };
        e.live && u.live && e.pins == 3 && u.pins == 3
    })
    .await
    .unwrap_or_else(|info| panic!("no live metrics with 3 pins: {info:#?}"));
    let (e, u) = (
        metric_of(&seen, &eu_id).expect("eu"),
        metric_of(&seen, &us_id).expect("us"),
    );
    assert_eq!(e.tags.get("region").map(String::as_str), Some("eu"));
    assert_eq!(u.tags.get("region").map(String::as_str), Some("us"));
    // The configured limit less what the repo holds, bounded by the disk.
    assert!(e.free > 0 && e.free <= ByteSize::gib(4).as_u64(), "{e:?}");
    assert!(u.free > 0 && u.free <= ByteSize::gib(2).as_u64(), "{u:?}");
    assert_eq!(
        seen.metric, None,
        "an agent without an IPFS node publishes none"
    );
    // An agent shows its own metric, and none for the agent without a node.
    let own = eu.client().peers().await.expect("peers");
    assert!(own.metric.as_ref().is_some_and(|m| m.live), "{own:#?}");
    assert_eq!(metric_of(&own, &bare.node().peer_id), None);

    // Forgeries at the agent without a node: a metric well signed by `us` but published by
    // another peer, one naming `us` signed by another key, bytes that are no metric.
    let us_key = us.home.load_identity().expect("identity");
    let us_signer = pinmesh_agent::replica::NodeSigner(us_key.try_into_ed25519().expect("ed25519"));
    let lie = Reading {
        seq: u64::MAX / 2,
        ttl_ms: 3_600_000,
        free: ByteSize::pib(1).as_u64(),
        pins: 0,
        tags: vec![("region".into(), "mars".into())],
    };
    let well_signed = Metric::sign(&us_signer, "default", lie.clone());
    let mut tampered = well_signed.clone();
    tampered.free += 1;
    let mut rogue = Rogue::connect(&secret, "default", &bare.node().addrs[0]).await;
    let rejected_before = bare
        .node()
        .flags
        .rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    rogue.publish_metric(codec::encode_metric(&well_signed));
    rogue.publish_metric(codec::encode_metric(&tampered));
    rogue.publish_metric(b"no metric".to_vec());
    assert!(
        rogue.until_rejected(&bare, rejected_before + 3, WAIT).await,
        "the agent rejected all three"
    );
    let after = bare.client().peers().await.expect("peers");
    let u = metric_of(&after, &us_id).expect("us");
    assert!(
        u.free <= ByteSize::gib(2).as_u64() && u.tags["region"] == "us",
        "{u:?}"
    );

    // A stopped agent's metric expires: it is down for allocation, and shown as such.
    us.stop().await;
    peers_until(&bare, |info| {
        metric_of(info, &us_id).is_some_and(|m| !m.live)
    })
    .await
    .unwrap_or_else(|info| panic!("the stopped agent's metric did not expire: {info:#?}"));
    eu.stop().await;
    bare.stop().await;
}
