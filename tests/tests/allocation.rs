//! Allocation: agents with an IPFS node publish signed metrics (free space for pins, pins,
//! tags) that every peer holds until they expire; a pin's writer allocates it to live peers,
//! and only those pin it. In-process agents on loopback, on real IPFS nodes (embedded, or
//! js-ipfs daemons where the test asks the nodes what they pinned).

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use pinmesh_agent::api::status::{ClusterStatusLine, UNREACHABLE};
use pinmesh_agent::api::types::PinRequest;
use pinmesh_agent::reconcile::Status;
use pinmesh_agent::swarm::{PeerMetric, SwarmInfo};
use pinmesh_protocol::Cid;
use pinmesh_protocol::codec;
use pinmesh_protocol::metric::{Metric, Reading};
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::ipfs::{IpfsNet, IpfsNode};
use pinmesh_tests::{
    Rogue, TestAgent, assert_one_line_error, peers_until, pinmesh_in, random_secret, stderr, stdout,
};
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

    // Each metric counts the pins allocated to its peer: three written for every peer, two
    // more allocated to `eu` alone.
    for n in 0..5 {
        let mut request = PinRequest::new(sim_cid(n), format!("pin {n}"));
        if n >= 3 {
            request.replication_min = Some(1);
            request.replication_max = Some(1);
            request.allocations = vec![eu_id.to_string()];
            request.allow_under_replication = true;
        }
        bare.client().pin(&request).await.expect("pin");
    }
    let seen = peers_until(&bare, |info| {
        let (Some(e), Some(u)) = (metric_of(info, &eu_id), metric_of(info, &us_id)) else {
            return false;
        };
        e.live && u.live && e.pins == 5 && u.pins == 3
    })
    .await
    .unwrap_or_else(|info| panic!("no live metrics with 5 and 3 pins: {info:#?}"));
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

/// Asks until `check` holds over what `nodes` say of `cids`; false at the deadline.
async fn nodes_until(
    nodes: &[IpfsNode],
    cids: &[Cid],
    check: impl Fn(&Cid, &[bool]) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut last = String::new();
        let mut all = true;
        for cid in cids {
            let mut held = Vec::new();
            for node in nodes {
                held.push(node.is_pinned(cid).await.unwrap_or(false));
            }
            if !check(cid, &held) {
                all = false;
                last = format!("{cid}: {held:?}");
                break;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        // Pins land on the nodes' schedule, not on an event the test can await.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_pins_on_that_many_nodes_and_the_others_show_remote() {
    let net = IpfsNet::start(3);
    let agents = net
        .agents(|c| c.cluster.metrics_interval = Duration::from_millis(200))
        .await;
    let nodes: Vec<IpfsNode> = (0..3).map(|i| net.node(i)).collect();
    let ids: Vec<String> = agents
        .iter()
        .map(|a| a.node().peer_id.to_base58())
        .collect();
    // The writer allocates from live metrics: wait until it has all three.
    peers_until(&agents[0], |info| {
        info.metric.is_some() && info.peers.iter().filter(|p| p.metric.is_some()).count() == 2
    })
    .await
    .unwrap_or_else(|info| panic!("metrics missing: {info:#?}"));

    // Content on node 0, not pinned there: only the allocated nodes pin it.
    let mut cids = Vec::new();
    for n in 0..8 {
        let cid = nodes[0]
            .add(format!("allocated {n}").as_bytes(), false)
            .await;
        let mut request = PinRequest::new(cid, format!("r2 {n}"));
        (request.replication_min, request.replication_max) = (Some(2), Some(2));
        agents[0].client().pin(&request).await.expect("pin");
        cids.push(cid);
    }
    let mut allocations = BTreeMap::new();
    for cid in &cids {
        let info = agents[1]
            .client()
            .show(&cid.to_string())
            .await
            .expect("show");
        assert_eq!(info.allocations.len(), 2, "{info:?}");
        assert_ne!(info.allocations[0], info.allocations[1]);
        allocations.insert(*cid, info.allocations);
    }
    let on = |cid: &Cid, i: usize| allocations[cid].contains(&ids[i]);
    nodes_until(&nodes, &cids, |cid, held| {
        (0..3).all(|i| held[i] == on(cid, i))
    })
    .await
    .unwrap_or_else(|last| panic!("not pinned on exactly its two allocations: {last}"));
    for cid in &cids {
        for (i, agent) in agents.iter().enumerate().filter(|(i, _)| !on(cid, *i)) {
            let mut local = None;
            agent
                .client()
                .status(&[cid.to_string()], &[], |line| {
                    local = Some(line.status);
                    Ok(())
                })
                .await
                .expect("status");
            assert_eq!(local, Some(Status::Remote), "agent {i}, {cid}");
        }
    }

    // User allocations alone: exactly those peers.
    let cid = nodes[0].add(b"for agent 2 only", false).await;
    let mut request = PinRequest::new(cid, "user");
    request.allocations = vec![ids[2].clone()];
    agents[1].client().pin(&request).await.expect("pin");
    nodes_until(&nodes, &[cid], |_, held| held == [false, false, true])
        .await
        .unwrap_or_else(|last| panic!("not on agent 2 only: {last}"));
    // Writing it again without options keeps its allocation.
    let again = PinRequest::new(cid, "renamed");
    agents[0].client().pin(&again).await.expect("pin again");
    let info = agents[0]
        .client()
        .show(&cid.to_string())
        .await
        .expect("show");
    assert_eq!(
        (info.name.as_str(), info.allocations),
        ("renamed", vec![ids[2].clone()])
    );

    // More replicas than live peers: refused with the count, unless allowed.
    let mut four = PinRequest::new(cids[0], "four");
    (four.replication_min, four.replication_max) = (Some(4), Some(4));
    let err = agents[0].client().pin(&four).await.expect_err("refused");
    assert!(err.to_string().contains("3 available"), "{err}");
    four.allow_under_replication = true;
    agents[0].client().pin(&four).await.expect("allowed");
    let info = agents[0]
        .client()
        .show(&cids[0].to_string())
        .await
        .expect("show");
    assert_eq!(info.allocations.len(), 3, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pins_are_hidden_from_pin_ls_at_once() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    agent.start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut expired = PinRequest::new(sim_cid(1), "expired");
    expired.expire_at = Some(now - 1);
    let mut later = PinRequest::new(sim_cid(2), "later");
    later.expire_at = Some(now + 3600);
    let kept = PinRequest::new(sim_cid(3), "kept");
    for request in [&expired, &later, &kept] {
        agent.client().pin(request).await.expect("pin");
    }
    let mut listed = Vec::new();
    agent
        .client()
        .list(|pin| {
            listed.push(pin.name);
            Ok(())
        })
        .await
        .expect("list");
    listed.sort();
    assert_eq!(listed, ["kept", "later"]);
    agent.stop().await;
}

/// The cluster status of `cid` as `agent` reports it.
async fn cluster_line(agent: &TestAgent, cid: &str) -> ClusterStatusLine {
    let mut line = None;
    agent
        .client()
        .cluster_status(&[cid.to_string()], &[], |l| {
            line = Some(l);
            Ok(())
        })
        .await
        .expect("cluster status");
    line.expect("one line")
}

/// Asks `agent` for the cluster status of `cid` until `check` holds; the last line on timeout.
async fn cluster_until(
    agent: &TestAgent,
    cid: &str,
    check: impl Fn(&ClusterStatusLine) -> bool,
) -> Result<ClusterStatusLine, ClusterStatusLine> {
    let deadline = Instant::now() + WAIT;
    loop {
        let line = cluster_line(agent, cid).await;
        if check(&line) {
            return Ok(line);
        }
        if Instant::now() >= deadline {
            return Err(line);
        }
        // Statuses change on the reconcilers' and the network's schedule.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_on<'a>(line: &'a ClusterStatusLine, peer: &str) -> Option<&'a str> {
    line.peers.get(peer).map(|p| p.status.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_allocated_peer_shows_unreachable_and_holds_wait_until_its_timeout() {
    let started_ms = pinmesh_agent::replica::now_ms();
    let secret = random_secret();
    let fast = |agent: &TestAgent| {
        agent.configure(|c| c.cluster.metrics_interval = Duration::from_millis(200))
    };
    let mut a = TestAgent::create_with_ipfs(&secret, &[]);
    fast(&a);
    let bootstrap = a.start().await.addrs.clone();
    let mut b = TestAgent::create_with_ipfs(&secret, &bootstrap);
    fast(&b);
    b.start().await;
    let mut c = TestAgent::create_with_ipfs(&secret, &bootstrap);
    fast(&c);
    c.start().await;
    let [a_id, b_id, c_id] = [&a, &b, &c].map(|agent| agent.node().peer_id.to_base58());
    let dir = |agent: &TestAgent| agent.home.config().parent().expect("home").to_path_buf();
    peers_until(&a, |info| {
        info.metric.is_some() && info.peers.iter().filter(|p| p.metric.is_some()).count() == 2
    })
    .await
    .unwrap_or_else(|info| panic!("metrics missing: {info:#?}"));

    // Two files in agent C's node, not pinned yet.
    let files = tempfile::TempDir::new().expect("temp dir");
    let mut cids = Vec::new();
    for name in ["allocated", "everywhere"] {
        let path = files.path().join(name);
        std::fs::write(&path, format!("{name} {}", random_secret())).expect("write");
        let out = pinmesh_in(
            &dir(&c),
            &["add", path.to_str().expect("utf-8"), "--no-pin", "--json"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let added: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("add JSON");
        cids.push(added["cid"].as_str().expect("cid").to_string());
    }
    let (allocated, everywhere) = (cids[0].clone(), cids[1].clone());
    // One on B and C only: the wait needs both, not A (remote).
    let allocations = format!("{b_id},{c_id}");
    let out = pinmesh_in(
        &dir(&a),
        &[
            "pin",
            "add",
            &allocated,
            "--allocations",
            &allocations,
            "--wait",
            "--wait-timeout",
            "60s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pinned on all 2 peers"),
        "{}",
        stdout(&out)
    );
    // One on every peer.
    let out = pinmesh_in(
        &dir(&a),
        &["pin", "add", &everywhere, "--wait", "--wait-timeout", "60s"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pinned on all 3 peers"),
        "{}",
        stdout(&out)
    );

    // B stops: every line that needs it names it unreachable, since its last metric.
    b.stop().await;
    let stopped_ms = pinmesh_agent::replica::now_ms();
    let line = cluster_until(&a, &allocated, |l| status_on(l, &b_id) == Some(UNREACHABLE))
        .await
        .unwrap_or_else(|l| panic!("B not unreachable: {l:#?}"));
    assert_eq!(status_on(&line, &c_id), Some("pinned"), "{line:#?}");
    assert_eq!(status_on(&line, &a_id), Some("remote"), "{line:#?}");
    let since = line.peers[&b_id].since.expect("since");
    assert!(
        started_ms < since && since <= stopped_ms,
        "since {since} outside {started_ms}..={stopped_ms}"
    );
    let line = cluster_line(&a, &everywhere).await;
    assert_eq!(status_on(&line, &b_id), Some(UNREACHABLE), "{line:#?}");
    // The same last metric (since is its age taken from now: a millisecond may differ).
    let again = line.peers[&b_id].since.expect("since");
    assert!(again.abs_diff(since) < 1000, "{since} then {again}");
    assert_eq!(status_on(&line, &a_id), Some("pinned"), "{line:#?}");
    assert_eq!(status_on(&line, &c_id), Some("pinned"), "{line:#?}");

    // The CLI: `--filter unreachable` keeps both lines, and says since when.
    let out = pinmesh_in(&dir(&a), &["status", "--filter", "unreachable"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&allocated) && text.contains(&everywhere),
        "{text}"
    );
    let b_lines: Vec<&str> = text.lines().filter(|l| l.contains(&b_id)).collect();
    assert_eq!(b_lines.len(), 2, "{text}");
    assert!(
        b_lines.iter().all(|l| l.contains("unreachable (since ")),
        "{text}"
    );
    let out = pinmesh_in(&dir(&a), &["status", "--filter", "pin_error"]);
    assert!(
        out.status.success() && stdout(&out).is_empty(),
        "{}",
        stdout(&out)
    );
    let out = pinmesh_in(&dir(&a), &["status", "--filter", "gone"]);
    assert_one_line_error(&out, "unreachable");

    // `--wait` on a pin allocated to B ends at its timeout, naming B alone.
    let out = pinmesh_in(
        &dir(&a),
        &["pin", "add", &allocated, "--wait", "--wait-timeout", "2s"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "timed out after 2s: {allocated} not pinned on {b_id} (unreachable"
        )),
        "{err}"
    );
    assert!(!last.contains(&c_id), "{err}");
    // With --json: stdout stays JSON lines, the last one saying who is behind.
    let out = pinmesh_in(
        &dir(&a),
        &[
            "--json",
            "pin",
            "add",
            &allocated,
            "--wait",
            "--wait-timeout",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let last = lines.last().expect("a line");
    assert_eq!(last["timed_out"], true, "{last}");
    assert_eq!(last["behind"][&b_id], UNREACHABLE, "{last}");
    assert_eq!(
        last["behind"].as_object().map(|o| o.len()),
        Some(1),
        "{last}"
    );
    a.stop().await;
    c.stop().await;
}
