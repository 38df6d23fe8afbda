//! Following a cluster: the follow configuration members publish (signed by a trusted writer,
//! refused where it would vouch for nothing), writes refused by read-only agents before
//! anything reaches their IPFS node, and followers made from it (on js-ipfs nodes, asked what
//! they hold) that pin every pin or their share, write nothing, and announce themselves to the
//! members (`peers`, and the cluster status's count of followers per CID).

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use pinmesh_agent::api::types::PinRequest;
use pinmesh_agent::follow::{FollowConfig, FollowError, Share};
use pinmesh_agent::replica::NodeSigner;
use pinmesh_protocol::{ActorId, Cid, DeltaBatch, Dot, Gossip, MemPinset, Op, PinSpec, codec};
use pinmesh_tests::ipfs::{IpfsNet, IpfsNode};
use pinmesh_tests::{
    Rogue, TestAgent, assert_one_line_error, peers_until, pinmesh_in, random_secret, stdout,
};
use tokio::time::Instant;

/// Agents of one cluster whose only trusted writer is the first; the first `with_ipfs` of them
/// drive embedded IPFS nodes.
async fn cluster(n: usize, with_ipfs: usize, writers: bool) -> (Vec<TestAgent>, Vec<PeerId>) {
    let secret = random_secret();
    let mut agents: Vec<TestAgent> = Vec::new();
    let mut bootstrap = Vec::new();
    let mut writer = None;
    for i in 0..n {
        let mut agent = if i < with_ipfs {
            TestAgent::create_with_ipfs(&secret, &bootstrap)
        } else {
            TestAgent::create(&secret, &bootstrap)
        };
        let id = agent
            .home
            .load_identity()
            .expect("identity")
            .public()
            .to_peer_id();
        let writer = *writer.get_or_insert(id);
        if writers {
            agent.configure(|c| c.cluster.trusted_writers = vec![writer.to_string()]);
        }
        let node = agent.start().await;
        if bootstrap.is_empty() {
            bootstrap = node.addrs.clone();
        }
        agents.push(agent);
    }
    let ids = agents.iter().map(|a| a.node().peer_id).collect();
    (agents, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_writer_publishes_a_signed_follow_configuration_and_no_one_else_does() {
    let (mut agents, ids) = cluster(2, 0, true).await;
    let dirs: Vec<std::path::PathBuf> = agents.iter().map(|a| a.home.dir.clone()).collect();
    let dir = |i: usize| dirs[i].clone();

    let out = pinmesh_in(&dir(0), &["follow-config"]);
    assert!(out.status.success(), "{out:?}");
    let config: FollowConfig = serde_json::from_str(&stdout(&out)).expect("JSON");
    let following = config.verify(&ids[0]).expect("signed by the writer");
    let own = agents[0].node().addrs[0].clone();
    assert!(following.bootstrap.contains(&own), "{following:?}");
    assert_eq!(following.trusted_writers, vec![ids[0]]);
    assert_eq!(following.cluster, "default");
    let secret = pinmesh_agent::config::Config::load(&agents[0].home.config())
        .expect("config")
        .raw
        .cluster
        .secret;
    assert_eq!(following.secret, secret);
    // Checked against another writer than the one named out of band: refused.
    assert!(matches!(
        config.verify(&ids[1]),
        Err(FollowError::NotTheWriter { .. })
    ));

    // Written to a file only its owner reads.
    let file = dir(0).join("follow.json");
    let out = pinmesh_in(
        &dir(0),
        &["follow-config", "--out", file.to_str().expect("path")],
    );
    assert!(out.status.success(), "{out:?}");
    let written: FollowConfig =
        serde_json::from_slice(&std::fs::read(&file).expect("written")).expect("JSON");
    written.verify(&ids[0]).expect("verifies");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }

    // `follow NAME init` takes it only signed by the writer named apart from it, and from a
    // file or an http(s) URL; anything else is one line, and no home is made.
    let tampered = dir(0).join("tampered.json");
    let mut changed = written.clone();
    changed.bootstrap = vec![format!("/ip4/10.0.0.1/tcp/4001/p2p/{}", ids[0])];
    std::fs::write(&tampered, serde_json::to_vec(&changed).expect("json")).expect("write");
    let target = tempfile::TempDir::new().expect("dir");
    let into = target.path().join("f");
    let (file, tampered) = (
        file.to_str().expect("path"),
        tampered.to_str().expect("path"),
    );
    let (writer, other) = (ids[0].to_string(), ids[1].to_string());
    for (args, needle) in [
        (vec![file], "name the trusted writer"),
        (vec![file, "--writer", &other], "not by the writer"),
        (vec![tampered, "--writer", &writer], "does not verify"),
        (
            vec!["ftp://host/follow.json", "--writer", &writer],
            "http(s)",
        ),
        (
            vec!["/nonexistent/follow.json", "--writer", &writer],
            "cannot read",
        ),
        (
            vec!["http://127.0.0.1:1/follow.json", "--writer", &writer],
            "cannot fetch",
        ),
    ] {
        let mut command = vec!["follow", "f", "init"];
        command.extend(args);
        command.extend(["--dir", into.to_str().expect("path")]);
        let out = pinmesh_in(target.path(), &command);
        assert_one_line_error(&out, needle);
        assert!(
            !into.join("config.toml").exists(),
            "{command:?} made a home"
        );
    }

    // Served over HTTP without a token when asked for, for `follow NAME init URL`.
    agents[0].stop().await;
    agents[0].configure(|c| c.api.follow_config_listen = Some("127.0.0.1:0".into()));
    agents[0].start().await;
    let served = agents[0].node().follow_config_addr.expect("served");
    let url = format!("http://{served}/follow-config#writer={}", ids[0]);
    let out = pinmesh_in(
        target.path(),
        &[
            "follow",
            "g",
            "init",
            &url,
            "--dir",
            into.to_str().expect("path"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let made = pinmesh_agent::config::Config::load(&into.join("config.toml")).expect("config");
    assert_eq!(made.raw.cluster.secret, following.secret);
    assert_eq!(made.raw.follower.expect("a follower").source, url);
    let wrong = format!("http://{served}/follow-config#writer={}", ids[1]);
    let out = pinmesh_in(
        target.path(),
        &["follow", "h", "init", &wrong, "--dir", "h"],
    );
    assert_one_line_error(&out, "not by the writer");
    let other = format!("http://{served}/v1/pins");
    let status = reqwest::get(&other).await.expect("answer").status();
    assert_eq!(
        status,
        reqwest::StatusCode::NOT_FOUND,
        "nothing else is served there"
    );

    // A member that is not a trusted writer refuses, naming the writers.
    let out = pinmesh_in(&dir(1), &["follow-config"]);
    assert_one_line_error(&out, "not a trusted writer");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&ids[0].to_string()));
    for agent in &mut agents {
        agent.stop().await;
    }

    // A cluster where every member may write has nothing to publish.
    let (mut open, _) = cluster(1, 0, false).await;
    let out = pinmesh_in(&open[0].home.dir, &["follow-config"]);
    assert_one_line_error(&out, "no cluster.trusted_writers");
    open[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_agent_refuses_add_before_its_node_sees_a_byte() {
    let (mut agents, _) = cluster(2, 2, true).await;
    let file = agents[1].home.dir.join("hello.txt");
    std::fs::write(&file, b"hello from a read-only agent").expect("file");
    let path = file.to_str().expect("path");
    for args in [vec!["add", path], vec!["add", "--no-pin", path]] {
        let out = pinmesh_in(&agents[1].home.dir, &args);
        assert_one_line_error(&out, "replicates read-only");
    }
    // The API refuses too, whatever the body: it is not read.
    let body = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\
                Content-Type: application/octet-stream\r\n\r\nhello\r\n--b--\r\n";
    let status_of = |agent: &TestAgent| {
        let token = std::fs::read_to_string(agent.home.token()).expect("token");
        let url = format!("http://{}/v1/add", agent.node().api_addr);
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token.trim())
                .header("content-type", "multipart/form-data; boundary=b")
                .body(body)
                .send()
                .await
                .expect("answer")
                .status()
        }
    };
    assert_eq!(status_of(&agents[1]).await, reqwest::StatusCode::FORBIDDEN);
    // The same request to the writer stores it: the refusal was the writer check.
    assert!(status_of(&agents[0]).await.is_success());
    for agent in &mut agents {
        agent.stop().await;
    }
}

/// Polls `node`'s recursive pins until `done` holds of them (for at most a minute).
async fn pins_until(
    node: &IpfsNode,
    what: &str,
    done: impl Fn(&HashSet<Cid>) -> bool,
) -> HashSet<Cid> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pins = node.recursive_pins().await.unwrap_or_default();
        if done(&pins) {
            return pins;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {} pinned",
            pins.len()
        );
        // Pins land on the node's schedule, not on an event the test can await.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A follower's home made by `pinmesh follow NAME init SOURCE --writer WRITER`, pinning in the
/// IPFS node at `api`.
fn follower(name: &str, source: &str, writer: &PeerId, api: &str) -> TestAgent {
    let dir = tempfile::TempDir::new().expect("dir");
    let home = dir.path().to_str().expect("path").to_string();
    let out = pinmesh_in(
        dir.path(),
        &[
            "follow",
            name,
            "init",
            source,
            "--writer",
            &writer.to_string(),
            "--dir",
            &home,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--ipfs-api",
            api,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let agent = TestAgent::at(dir);
    agent.configure(|c| {
        c.ipfs.retry_max = Duration::from_secs(1);
        c.ipfs.pin_timeout = Duration::from_secs(30);
        // Announced every second.
        c.cluster.metrics_interval = Duration::from_secs(1);
    });
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_pin_every_pin_or_their_share_and_write_nothing() {
    let net = IpfsNet::start(4);
    let nodes: Vec<IpfsNode> = (0..4).map(|i| net.node(i)).collect();
    // Two trusted writers on nodes 0 and 1.
    let secret = random_secret();
    let mut writers = vec![TestAgent::create(&secret, &[])];
    let first = writers[0]
        .home
        .load_identity()
        .expect("id")
        .public()
        .to_peer_id();
    let mut second = TestAgent::create(&secret, &[]);
    let other = second
        .home
        .load_identity()
        .expect("id")
        .public()
        .to_peer_id();
    let trusted = vec![first.to_string(), other.to_string()];
    for (agent, api) in [(&writers[0], &net.apis[0]), (&second, &net.apis[1])] {
        agent.configure(|c| {
            c.cluster.trusted_writers = trusted.clone();
            c.ipfs.api = Some(api.clone());
        });
    }
    let bootstrap = writers[0].start().await.addrs.clone();
    second.configure(|c| c.network.bootstrap = vec![bootstrap[0].to_string()]);
    second.start().await;
    writers.push(second);

    // Two followers from the first writer's configuration: one whole, one with half.
    let source = writers[0].home.dir.join("follow.json");
    let out = pinmesh_in(
        &writers[0].home.dir,
        &["follow-config", "--out", source.to_str().expect("path")],
    );
    assert!(out.status.success(), "{out:?}");
    let source = source.to_str().expect("path");
    let mut full = follower("full", source, &first, &net.apis[2]);
    let mut half = follower("half", source, &first, &net.apis[3]);
    half.configure(|c| {
        if let Some(f) = &mut c.follower {
            f.share = Some("0/2".into());
        }
    });
    full.start().await;
    half.start().await;

    let files: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("followed {i}").into_bytes())
        .collect();
    let cids = nodes[0].add_many(&files, false).await;
    let requests: Vec<PinRequest> = (cids.iter().enumerate())
        .map(|(i, cid)| PinRequest::new(cid, format!("f{i}")))
        .collect();
    writers[0].client().pin_many(&requests).await.expect("pins");
    let share = Share { index: 0, of: 2 };
    let all: HashSet<Cid> = cids.iter().copied().collect();
    let mine: HashSet<Cid> = cids.iter().copied().filter(|c| share.contains(c)).collect();
    assert!(
        (30..=70).contains(&mine.len()),
        "{} in share 0/2",
        mine.len()
    );
    pins_until(&nodes[2], "the full follower holds every pin", |p| {
        all.is_subset(p)
    })
    .await;
    pins_until(&nodes[3], "the half follower holds its share", |p| {
        mine.is_subset(p) && p.intersection(&all).count() == mine.len()
    })
    .await;

    // An unpin reaches both.
    let gone: Vec<Cid> = cids[..10].to_vec();
    for cid in &gone {
        writers[1]
            .client()
            .unpin(&cid.to_string())
            .await
            .expect("unpin");
    }
    let left: HashSet<Cid> = cids[10..].iter().copied().collect();
    let left_mine: HashSet<Cid> = left.intersection(&mine).copied().collect();
    pins_until(&nodes[2], "the full follower drops the unpinned", |p| {
        p.intersection(&all).copied().collect::<HashSet<_>>() == left
    })
    .await;
    pins_until(&nodes[3], "the half follower drops the unpinned", |p| {
        p.intersection(&all).copied().collect::<HashSet<_>>() == left_mine
    })
    .await;

    // Members hear the followers' announcements: `peers` shows them as followers, with their
    // share and the pins their nodes hold.
    let (full_id, half_id) = (full.node().peer_id, half.node().peer_id);
    let expected = [
        (full_id, None, 90),
        (half_id, Some(share), left_mine.len() as u64),
    ];
    let seen = peers_until(&writers[0], |info| {
        expected.iter().all(|(id, share, pins)| {
            (info.peers.iter()).any(|p| {
                p.peer_id == *id
                    && p.follower.as_ref().is_some_and(|f| {
                        f.live && f.share == *share && f.pins == *pins && f.bytes > 0
                    })
            })
        })
    })
    .await;
    let info = seen.unwrap_or_else(|info| panic!("followers not announced: {info:#?}"));
    assert_eq!(info.followers.len(), 2, "{:#?}", info.followers);
    let member = (info.peers.iter())
        .find(|p| p.peer_id == writers[1].node().peer_id)
        .expect("the other writer is listed");
    assert!(member.follower.is_none(), "a member is no follower");
    // The cluster status counts, per CID, the followers whose share covers it, and asks them
    // nothing: they are not among the peers of a line. (Counted from live announcements: one
    // that expired under load is taken again at the next, so the listing is read until it
    // counts both, for at most a minute.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut lines = Vec::new();
        writers[0]
            .client()
            .cluster_status(&[], &[], |line| {
                lines.push(line);
                Ok(())
            })
            .await
            .expect("cluster status");
        assert_eq!(lines.len(), 90);
        let counted = |line: &pinmesh_agent::api::status::ClusterStatusLine| {
            let cid: Cid = line.cid.parse().expect("cid");
            line.followers == 1 + usize::from(share.contains(&cid))
        };
        for line in &lines {
            assert!(
                !line.peers.contains_key(&full_id.to_string())
                    && !line.peers.contains_key(&half_id.to_string()),
                "{line:?}"
            );
        }
        if lines.iter().all(counted) {
            break;
        }
        let wrong = lines.iter().find(|l| !counted(l));
        assert!(Instant::now() < deadline, "miscounted: {wrong:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Asked about CIDs by name, connected followers answer too, apart from the members.
    let inside = *left_mine.iter().next().expect("a CID of the share");
    let outside = *left.difference(&mine).next().expect("a CID outside it");
    let mut named = Vec::new();
    writers[0]
        .client()
        .cluster_status(&[inside.to_string(), outside.to_string()], &[], |line| {
            named.push(line);
            Ok(())
        })
        .await
        .expect("cluster status");
    let said = |line: &pinmesh_agent::api::status::ClusterStatusLine, id: &PeerId| {
        line.follower_peers
            .get(&id.to_string())
            .map(|p| p.status.as_str().to_string())
    };
    assert_eq!(named.len(), 2);
    assert_eq!(
        said(&named[0], &full_id).as_deref(),
        Some("pinned"),
        "{:?}",
        named[0]
    );
    assert_eq!(
        said(&named[0], &half_id).as_deref(),
        Some("pinned"),
        "{:?}",
        named[0]
    );
    assert_eq!(
        said(&named[1], &full_id).as_deref(),
        Some("pinned"),
        "{:?}",
        named[1]
    );
    assert_eq!(
        said(&named[1], &half_id).as_deref(),
        Some("remote"),
        "{:?}",
        named[1]
    );
    assert!(
        named
            .iter()
            .all(|l| !l.peers.contains_key(&full_id.to_string()))
    );

    // A follower writes nothing, through its API or its CLI, and its node is unchanged.
    let before = nodes[2].recursive_pins().await.expect("pins");
    let err = full
        .client()
        .pin(&PinRequest::new(cids[0], "again"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = full
        .client()
        .unpin(&cids[20].to_string())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("read-only"), "{err}");
    let file = full.home.dir.join("new.txt");
    std::fs::write(&file, b"a follower's own file").expect("file");
    let out = pinmesh_in(&full.home.dir, &["add", file.to_str().expect("path")]);
    assert_one_line_error(&out, "replicates read-only");
    assert_eq!(nodes[2].recursive_pins().await.expect("pins"), before);
    assert_eq!(
        writers[0].state().summary.pins,
        90,
        "nothing came from the follower"
    );

    // `follow NAME list` reads the database of a stopped follower.
    full.stop().await;

    // A batch the follower signs with its own key (a well-formed one, from a modified build)
    // is rejected by the members and changes nothing.
    let key = full.home.load_identity().expect("identity");
    let mut rogue = Rogue::connect_as(key, &secret, "default", &bootstrap[0]).await;
    let signer = NodeSigner(rogue.key.clone().try_into_ed25519().expect("ed25519"));
    let actor = ActorId::derive(&signer.0.public().to_bytes(), 1);
    let delta = MemPinset::new().local(
        Dot::new(actor, 1),
        cids[0],
        Op::Pin {
            at: 1,
            spec: PinSpec::named("from a follower"),
        },
    );
    let batch = DeltaBatch::sign(&signer, "default", 1, &[delta]);
    assert_eq!(batch.verify("default"), Ok(()), "a well-formed batch");
    let before = (writers[0].node().flags.rejected).load(std::sync::atomic::Ordering::Relaxed);
    rogue.publish(codec::encode_gossip(&Gossip::DeltaBatch(batch)));
    assert!(
        rogue
            .until_rejected(&writers[0], before + 1, Duration::from_secs(30))
            .await,
        "the follower's batch was rejected"
    );
    assert_eq!(writers[0].state().summary.pins, 90, "and changed nothing");
    drop(rogue);

    let home = full.home.dir.to_str().expect("path").to_string();
    let out = pinmesh_in(&full.home.dir, &["follow", "full", "list", "--dir", &home]);
    assert!(out.status.success(), "{out:?}");
    let listed = stdout(&out);
    let pinned = listed.lines().filter(|l| l.starts_with("pinned ")).count();
    assert_eq!(pinned, 90, "{listed}");
    let out = pinmesh_in(
        &full.home.dir,
        &["follow", "full", "info", "--dir", &home, "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(
        (info["pins"].as_u64(), info["pinned"].as_u64()),
        (Some(90), Some(90)),
        "{info}"
    );
    assert_eq!(info["running"], false);

    half.stop().await;
    for agent in &mut writers {
        agent.stop().await;
    }
}

#[path = "follow/run.rs"]
mod run;
