//! Following a cluster: the follow configuration members publish (signed by a trusted writer,
//! refused where it would vouch for nothing), and writes refused by read-only agents before
//! anything reaches their IPFS node.

use libp2p::PeerId;
use pinmesh_agent::follow::{FollowConfig, FollowError};
use pinmesh_tests::{TestAgent, assert_one_line_error, pinmesh_in, random_secret, stdout};

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
    let dir = |i: usize| agents[i].home.dir.clone();

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
