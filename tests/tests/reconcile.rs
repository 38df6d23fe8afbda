//! The reconciler against real IPFS nodes (js-ipfs daemons from `scripts/ipfs-testnet.sh`, or
//! Kubo with `KUBO_BIN`): pins reach every node, unpins remove only the agents' own pins, a node
//! that goes away turns statuses to errors and back, and a restart keeps statuses and ownership.

use std::time::Duration;

use pinmesh_agent::api::PinRequest;
use pinmesh_agent::api::status::StatusLine;
use pinmesh_agent::reconcile::Status;
use pinmesh_protocol::{Cid, PinStatus};
use pinmesh_tests::ipfs::IpfsNet;
use pinmesh_tests::{TestAgent, converged, pinmesh_in};
use tokio::time::Instant;

const SETTLE: Duration = Duration::from_secs(60);

async fn agents_on(net: &IpfsNet) -> Vec<TestAgent> {
    net.agents(|_| {}).await
}

async fn status_of(agent: &TestAgent, cid: &Cid) -> StatusLine {
    let mut found = None;
    agent
        .client()
        .status(&[cid.to_string()], &[], |line| {
            found = Some(line);
            Ok(())
        })
        .await
        .expect("status");
    found.expect("a status line for the CID asked")
}

/// Waits until `agent` reports `cid` in a status `check` accepts; the last line on timeout.
async fn wait_status(
    agent: &TestAgent,
    cid: &Cid,
    check: impl Fn(&StatusLine) -> bool,
) -> Result<StatusLine, StatusLine> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let line = status_of(agent, cid).await;
        if check(&line) {
            return Ok(line);
        }
        if Instant::now() >= deadline {
            return Err(line);
        }
        // Statuses change on the node's schedule, not on an event the test can await.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_all(agents: &[TestAgent], cid: &Cid, want: Status) {
    for (i, agent) in agents.iter().enumerate() {
        let line = wait_status(agent, cid, |l| l.status == want).await;
        assert!(
            line.is_ok(),
            "agent {i}: {cid} never became {want}: {line:?}"
        );
    }
}

/// Runs the real `pinmesh` binary against `agent`.
async fn cli(agent: &TestAgent, args: &[&str]) -> std::process::Output {
    let dir = agent.home.dir.clone();
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pinmesh_in(&dir, &args)
    })
    .await
    .expect("cli")
}

fn content(label: &str) -> Vec<u8> {
    let mut bytes = format!("pinmesh test content {label} ").into_bytes();
    bytes.extend((0..40_000).map(|_| rand::random::<u8>()));
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_reach_every_node_and_unpins_remove_only_the_agents_own() {
    let net = IpfsNet::start(3);
    let agents = agents_on(&net).await;
    let nodes: Vec<_> = (0..3).map(|i| net.node(i)).collect();

    // Content added on node 0 only; a pin made by hand on node 1, outside the cluster; and a
    // CID node 1 pinned by hand that the cluster pins too.
    let data = content("cluster");
    let cid = nodes[0].add(&data, false).await;
    let hand = nodes[1].add(&content("by hand"), true).await;
    let shared_data = content("shared");
    let shared = nodes[0].add(&shared_data, false).await;
    nodes[1].pin(&shared).await;

    // `--wait` returns only once every node holds the pin: check the nodes right after.
    let out = cli(
        &agents[1],
        &[
            "pin",
            "add",
            &cid.to_string(),
            "--name",
            "cluster",
            "--wait",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned on all 3 peers"));
    agents[1]
        .client()
        .pin(&PinRequest::new(shared, "shared"))
        .await
        .expect("pin");
    wait_all(&agents, &shared, Status::Pinned).await;
    let mut everywhere = None;
    agents[2]
        .client()
        .cluster_status(&[cid.to_string()], &[], |line| {
            everywhere = Some(line);
            Ok(())
        })
        .await
        .expect("cluster status");
    let everywhere = everywhere.expect("one line");
    assert_eq!(everywhere.peers.len(), 3, "{everywhere:?}");
    assert!(
        everywhere
            .peers
            .values()
            .all(|p| p.status == PinStatus::Pinned),
        "{everywhere:?}"
    );
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.is_pinned(&cid).await,
            Ok(true),
            "node {i} holds the pin"
        );
        assert!(
            node.cat(&cid).await == data,
            "node {i} serves the same bytes"
        );
    }
    // Node 1 had `shared` before the cluster asked: that pin is not agent 1's to remove.
    assert!(!status_of(&agents[1], &shared).await.owned);
    assert!(status_of(&agents[0], &shared).await.owned);

    let out = cli(&agents[0], &["pin", "rm", &cid.to_string(), "--wait"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agents[0]
        .client()
        .unpin(&shared.to_string())
        .await
        .expect("unpin");
    wait_all(&agents, &shared, Status::Unpinned).await;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.is_pinned(&cid).await,
            Ok(false),
            "node {i} dropped the pin"
        );
        assert_eq!(
            node.is_pinned(&shared).await,
            Ok(i == 1),
            "node {i}: only the hand-made pin on `shared` remains"
        );
    }
    assert_eq!(
        nodes[1].is_pinned(&hand).await,
        Ok(true),
        "the hand pin is untouched"
    );
    let untouched = status_of(&agents[1], &hand).await;
    assert_eq!(
        untouched.status,
        Status::Unpinned,
        "not the cluster's: {untouched:?}"
    );
    assert!(!untouched.owned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipfs_node_that_goes_away_turns_statuses_to_errors_then_back_to_pinned() {
    let net = IpfsNet::start(2);
    // First outage: node 1 is down before its agent starts, so the agent has never listed it.
    net.stop_node(1);
    let agents = agents_on(&net).await;
    outage(&net, &agents, "before the first listing", 1).await;
    // Second outage: the node goes away under an agent that has listed it.
    net.stop_node(1);
    outage(&net, &agents, "after listings", 2).await;
}

/// With node 1 stopped: a new pin turns to `pin_error` on agent 1 while the pinsets converge;
/// once the node is back, it becomes `pinned` with nobody asking.
async fn outage(net: &IpfsNet, agents: &[TestAgent], label: &str, pins: u64) {
    let data = content(label);
    let cid = net.node(0).add(&data, false).await;
    agents[0]
        .client()
        .pin(&PinRequest::new(cid, label))
        .await
        .expect("pin");
    wait_all(&agents[..1], &cid, Status::Pinned).await;
    let failed = wait_status(&agents[1], &cid, |l| l.status == Status::PinError).await;
    let failed = failed.unwrap_or_else(|l| panic!("{label}: no error without the node: {l:?}"));
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unreachable")),
        "{label}: {failed:?}"
    );
    // Replication does not depend on IPFS.
    let running: Vec<&TestAgent> = agents.iter().collect();
    converged(&running, Some(pins), SETTLE)
        .await
        .expect("pinsets converge");

    net.start_node(1);
    wait_all(agents, &cid, Status::Pinned).await;
    assert_eq!(net.node(1).is_pinned(&cid).await, Ok(true), "{label}");
    assert!(net.node(1).cat(&cid).await == data, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_pinning_keeps_statuses_and_ownership() {
    let net = IpfsNet::start(2);
    let mut agents = agents_on(&net).await;
    let node0 = net.node(0);

    let ready = node0.add(&content("ready"), false).await;
    // Content nobody has yet: its pin waits on the network.
    let later = content("later");
    let missing = node0.hash_only(&later).await;
    let client = agents[1].client();
    client
        .pin(&PinRequest::new(ready, "ready"))
        .await
        .expect("pin");
    client
        .pin(&PinRequest::new(missing, "missing"))
        .await
        .expect("pin");
    let pinned = wait_status(&agents[1], &ready, |l| l.status == Status::Pinned)
        .await
        .expect("the available CID is pinned");
    let pinning = wait_status(&agents[1], &missing, |l| l.status == Status::Pinning)
        .await
        .expect("the missing CID is being pinned");
    assert!(pinning.owned, "ownership is recorded before the call");

    agents[1].stop().await;
    agents[1].start().await;
    // Right after the restart: the records are there as they were.
    let after = status_of(&agents[1], &ready).await;
    assert_eq!(after.status, Status::Pinned);
    assert!(after.owned);
    let resumed = status_of(&agents[1], &missing).await;
    assert!(resumed.owned, "{resumed:?}");
    assert!(
        matches!(
            resumed.status,
            Status::Pinning | Status::Queued | Status::PinError
        ),
        "{resumed:?}"
    );

    // Waiting on a pin that cannot complete ends with a clear message, not forever.
    let out = cli(
        &agents[1],
        &[
            "pin",
            "add",
            &missing.to_string(),
            "--wait",
            "--wait-timeout",
            "1s",
        ],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("timed out after 1s: {missing} not pinned on")),
        "{stderr}"
    );

    // The content appears; the pin completes without anyone asking again.
    assert_eq!(node0.add(&later, false).await, missing);
    wait_status(&agents[1], &missing, |l| l.status == Status::Pinned)
        .await
        .expect("the resumed pin completes");
    // The pin that was done before the restart was not made again.
    let settled = status_of(&agents[1], &ready).await;
    assert_eq!(settled.updated, pinned.updated, "{settled:?}");
    assert_eq!(net.node(1).is_pinned(&missing).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_stores_a_directory_and_pins_its_root_on_every_node() {
    let net = IpfsNet::start(2);
    let agents = agents_on(&net).await;
    let dir = tempfile::tempdir().expect("dir");
    let top = dir.path().join("album");
    std::fs::create_dir_all(top.join("raw")).expect("dirs");
    // Bigger than any default request-body limit, and several chunks.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(top.join("raw/big.bin"), &big).expect("big");
    std::fs::write(top.join("notes.txt"), b"three photos").expect("notes");

    let path = top.to_string_lossy().into_owned();
    let out = cli(&agents[0], &["add", &path, "--wait", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names.last(),
        Some(&"album"),
        "the root comes last: {names:?}"
    );
    assert!(names.contains(&"album/raw/big.bin"), "{names:?}");
    let cid_of = |name: &str| -> Cid {
        let line = lines.iter().find(|l| l["name"] == name).expect("listed");
        line["cid"].as_str().expect("cid").parse().expect("a CID")
    };
    let root = cid_of("album");
    let file = cid_of("album/raw/big.bin");
    let big_line = lines
        .iter()
        .find(|l| l["name"] == "album/raw/big.bin")
        .expect("listed");
    assert!(big_line["size"].as_u64().expect("size") >= big.len() as u64);

    // `--wait` returned: both nodes hold the root pin, and the other node serves the bytes.
    for i in 0..2 {
        assert_eq!(net.node(i).is_pinned(&root).await, Ok(true), "node {i}");
    }
    assert!(net.node(1).cat(&file).await == big);
    let pin = agents[1]
        .client()
        .show(&root.to_string())
        .await
        .expect("in the pinset");
    assert_eq!(pin.name, "album", "named after the path by default");

    // A path that does not exist: one clear line, nothing added.
    let out = cli(&agents[0], &["add", "/nonexistent/pinmesh"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/pinmesh"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinning_one_cid_version_keeps_the_content_its_twin_still_wants() {
    let net = IpfsNet::start(1);
    let agents = agents_on(&net).await;
    let node = net.node(0);
    // Over one 256 KiB chunk: the root is dag-pb, so it has a CIDv0 spelling too.
    let mut data = content("twin");
    data.extend((0..300_000).map(|_| rand::random::<u8>()));
    let v1 = node.add(&data, false).await;
    let v0 = Cid::new_v0(*v1.hash()).expect("a sha2-256 dag-pb CID has a v0 form");
    let client = agents[0].client();
    for cid in [v1, v0] {
        client
            .pin(&PinRequest::new(cid, "twin"))
            .await
            .expect("pin");
    }
    wait_all(&agents, &v1, Status::Pinned).await;
    wait_all(&agents, &v0, Status::Pinned).await;
    // One of the two pinned the content; the other found it held. Unpin the one that pinned.
    let (owned, other) = if status_of(&agents[0], &v1).await.owned {
        (v1, v0)
    } else {
        (v0, v1)
    };
    assert!(status_of(&agents[0], &owned).await.owned);
    client.unpin(&owned.to_string()).await.expect("unpin");
    wait_all(&agents, &owned, Status::Unpinned).await;
    // The other spelling is pinned again (as the agent's own) right away, not at the next
    // full comparison minutes later.
    let line = wait_status(&agents[0], &other, |l| {
        l.status == Status::Pinned && l.owned
    })
    .await;
    assert!(line.is_ok(), "{line:?}");
    assert_eq!(node.is_pinned(&other).await, Ok(true));
    assert!(node.cat(&other).await == data);
}
