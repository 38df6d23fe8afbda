//! A follower's run: a storage cap it stops taking pins at, and a kill -9 it resumes from.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_storage_cap_stops_taking_pins_at_it_and_reports_the_rest() {
    let net = IpfsNet::start(2);
    let nodes: Vec<IpfsNode> = (0..2).map(|i| net.node(i)).collect();
    let mut writer = TestAgent::create(&random_secret(), &[]);
    let id = writer
        .home
        .load_identity()
        .expect("id")
        .public()
        .to_peer_id();
    writer.configure(|c| {
        c.cluster.trusted_writers = vec![id.to_string()];
        c.ipfs.api = Some(net.apis[0].clone());
    });
    writer.start().await;
    let source = writer.home.dir.join("follow.json");
    let out = pinmesh_in(
        &writer.home.dir,
        &["follow-config", "--out", source.to_str().expect("path")],
    );
    assert!(out.status.success(), "{out:?}");

    // A cap of 2 MiB over what the follower's node holds now; 40 files of 128 KiB to pin.
    const FILE: usize = 128 << 10;
    let base = nodes[1].repo_size().await;
    let cap = base + (2 << 20);
    let mut capped = follower("capped", source.to_str().expect("path"), &id, &net.apis[1]);
    capped.configure(|c| {
        if let Some(f) = &mut c.follower {
            f.max_storage = Some(bytesize::ByteSize::b(cap));
        }
        c.ipfs.concurrency = 2;
    });
    capped.start().await;
    let files: Vec<Vec<u8>> = (0..40)
        .map(|_| (0..FILE).map(|_| rand::random::<u8>()).collect())
        .collect();
    let cids = nodes[0].add_many(&files, false).await;
    let requests: Vec<PinRequest> = (cids.iter().enumerate())
        .map(|(i, cid)| PinRequest::new(cid, format!("big {i}")))
        .collect();
    writer.client().pin_many(&requests).await.expect("pins");

    // It takes pins until its node reaches the cap, skips the rest and says so.
    let capped_id = capped.node().peer_id;
    let seen = peers_until(&writer, |info| {
        (info.peers.iter()).any(|p| {
            p.peer_id == capped_id
                && p.follower
                    .as_ref()
                    .is_some_and(|f| f.skipped > 0 && f.pins + f.skipped == 40)
        })
    })
    .await
    .unwrap_or_else(|info| panic!("no cap reached: {info:#?}"));
    let announced = (seen.peers.iter())
        .find_map(|p| p.follower.clone().filter(|_| p.peer_id == capped_id))
        .expect("the follower");
    let all: HashSet<Cid> = cids.iter().copied().collect();
    let held: HashSet<Cid> = (nodes[1].recursive_pins().await.expect("pins"))
        .intersection(&all)
        .copied()
        .collect();
    assert_eq!(held.len() as u64, announced.pins, "{announced:?}");
    // About what fits under the cap: at most that and the pins that may start before the
    // node's size is read again (8 between readings; two readings' worth, as the node's own
    // accounting may lag; 24 measured here).
    let fits = (cap - base) / FILE as u64;
    assert!(
        held.len() as u64 >= fits / 2 && (held.len() as u64) <= fits + 16,
        "{} held, {fits} fit",
        held.len()
    );
    let home = capped.home.dir.to_str().expect("path").to_string();
    let out = pinmesh_in(
        &capped.home.dir,
        &["follow", "capped", "info", "--dir", &home, "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(info["skipped"].as_u64(), Some(announced.skipped), "{info}");
    assert_eq!(info["pinned"].as_u64(), Some(held.len() as u64), "{info}");

    // Without the cap, it takes the rest.
    capped.stop().await;
    capped.configure(|c| {
        if let Some(f) = &mut c.follower {
            f.max_storage = None;
        }
    });
    capped.start().await;
    pins_until(&nodes[1], "the follower takes the skipped pins", |p| {
        all.is_subset(p)
    })
    .await;
    capped.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_with_kill_9_resumes_and_catches_up() {
    let (mut agents, ids) = cluster(1, 1, true).await;
    let writer = &agents[0];
    let source = writer.home.dir.join("follow.json");
    let source = source.to_str().expect("path");
    let out = pinmesh_in(&writer.home.dir, &["follow-config", "--out", source]);
    assert!(out.status.success(), "{out:?}");
    let home = tempfile::TempDir::new().expect("dir");
    let dir = home.path().to_str().expect("path");
    let out = pinmesh_in(
        home.path(),
        &[
            "follow",
            "f",
            "init",
            source,
            "--writer",
            &ids[0].to_string(),
            "--dir",
            dir,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--ipfs-listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let pin = |range: std::ops::Range<u64>| {
        let requests: Vec<PinRequest> = range
            .map(|n| PinRequest::new(pinmesh_protocol::sim::sim_cid(n), format!("k{n}")))
            .collect();
        let client = writer.client();
        async move { client.pin_many(&requests).await.expect("pins") }
    };
    pin(0..50).await;
    let run = || {
        pinmesh_tests::process::AgentProcess::command(
            &pinmesh_tests::pinmesh_bin(),
            home.path(),
            &["follow", "f", "run"],
        )
        .expect("the follower runs")
    };
    let follower = run();
    let wait = Duration::from_secs(60);
    let seen = follower
        .client
        .wait_digest(Some(50), Some(true), wait)
        .await
        .expect("digest");
    assert_eq!((seen.pins, seen.synced), (50, true), "{seen:?}");
    follower.kill9();

    // Written while it is dead; restarted, it has what it had and catches up.
    pin(50..100).await;
    let follower = run();
    let seen = follower
        .client
        .wait_digest(Some(100), Some(true), wait)
        .await
        .expect("digest");
    assert_eq!(seen.pins, 100, "{seen:?}");
    let theirs = writer.client().digest().await.expect("digest");
    assert_eq!(seen.state_digest, theirs.state_digest);
    follower.stop().expect("stops");
    agents[0].stop().await;
}
