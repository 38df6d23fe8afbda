//! Agents on their embedded IPFS nodes, the default: real `pinmesh run` processes, each running
//! its own IPFS node on loopback. The agents connect their nodes to each other; content added
//! on one agent's node is fetched by the others over bitswap when the cluster pins it.

use std::path::Path;
use std::process::Output;

use pinmesh_agent::api::status::ClusterStatusLine;
use pinmesh_protocol::PinStatus;
use pinmesh_tests::process::{AgentProcess, full_mesh};
use pinmesh_tests::{pinmesh_bin, pinmesh_in, random_secret};
use tempfile::TempDir;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The cluster-wide status of `cid`, as `agent_dir`'s agent reports it.
fn cluster_status(agent_dir: &Path, cid: &str) -> ClusterStatusLine {
    let out = ok(pinmesh_in(agent_dir, &["status", cid, "--json"]));
    serde_json::from_str(out.lines().next().expect("one status line")).expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nodes_fetch_from_each_other_and_follow_the_pinset() {
    let bin = pinmesh_bin();
    let root = TempDir::new().expect("temp dir");
    let secret = random_secret();
    let dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("agent-{i}")))
        .collect();
    let mut agents = vec![
        AgentProcess::start(&bin, &dirs[0], &["--secret".into(), secret.clone()]).expect("agent 0"),
    ];
    let bootstrap = agents[0].addr.clone();
    for dir in &dirs[1..] {
        let args = [
            "--secret".to_string(),
            secret.clone(),
            "--bootstrap".into(),
            bootstrap.clone(),
        ];
        agents.push(AgentProcess::start(&bin, dir, &args).expect("agent"));
    }
    // `--wait` waits for the peers an agent is connected to.
    let mesh = full_mesh(&agents, std::time::Duration::from_secs(60)).await;
    assert!(matches!(mesh, Ok(Ok(()))), "no full mesh: {mesh:?}");

    // Content stored in agent 0's node only: several blocks (256 KiB chunks) and a directory.
    let content = root.path().join("content");
    std::fs::create_dir(&content).expect("mkdir");
    let data: Vec<u8> = (0..700_000).map(|_| rand::random::<u8>()).collect();
    std::fs::write(content.join("big.bin"), &data).expect("write");
    std::fs::write(content.join("small.txt"), b"hello from agent 0").expect("write");
    let added = ok(pinmesh_in(
        &dirs[0],
        &[
            "add",
            content.to_str().expect("utf-8 path"),
            "--no-pin",
            "--json",
        ],
    ));
    let lines: Vec<serde_json::Value> = added
        .lines()
        .map(|l| serde_json::from_str(l).expect("add JSON line"))
        .collect();
    let cid_of = |name: &str| {
        lines
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {added}"))["cid"]
            .as_str()
            .expect("cid")
            .to_string()
    };
    let file = cid_of("content/big.bin");
    let dir = cid_of("content");
    assert_eq!(lines.last().expect("root")["name"], "content", "root last");
    assert!(ok(pinmesh_in(&dirs[0], &["pin", "ls"])).trim().is_empty());

    // Pinned through agent 1: `--wait` returns once all three nodes hold it.
    let out = ok(pinmesh_in(
        &dirs[1],
        &[
            "pin",
            "add",
            &dir,
            "--name",
            "content",
            "--wait",
            "--wait-timeout",
            "2m",
        ],
    ));
    assert!(out.contains("pinned on all 3 peers"), "{out}");
    let status = cluster_status(&dirs[2], &dir);
    assert_eq!(status.peers.len(), 3, "{status:?}");
    assert!(
        status.peers.values().all(|p| p.status == PinStatus::Pinned),
        "{status:?}"
    );

    // Nodes 1 and 2 hold every byte themselves: agent 0 and its node are gone (kill -9).
    drop(agents.remove(0));
    for dir_i in &dirs[1..] {
        let out = pinmesh_in(dir_i, &["cat", &file]);
        assert!(out.status.success(), "cat: {}", text(&out.stderr));
        assert!(
            out.stdout == data,
            "{}: the file's bytes differ",
            dir_i.display()
        );
    }

    // Content no node holds: one clear line, nothing fetched.
    let absent = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let out = pinmesh_in(&dirs[1], &["cat", absent]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot read"), "{err}");

    // Agent 0 comes back on the same repo; then the unpin reaches every node.
    agents.insert(
        0,
        AgentProcess::run(&bin, &dirs[0]).expect("agent 0 restarts"),
    );
    let mesh = full_mesh(&agents, std::time::Duration::from_secs(60)).await;
    assert!(
        matches!(mesh, Ok(Ok(()))),
        "no full mesh after the restart: {mesh:?}"
    );
    let out = ok(pinmesh_in(
        &dirs[2],
        &["pin", "rm", &dir, "--wait", "--wait-timeout", "2m"],
    ));
    assert!(out.contains("on all 3 peers"), "{out}");
    let status = cluster_status(&dirs[0], &dir);
    assert!(
        status
            .peers
            .values()
            .all(|p| p.status == PinStatus::Unpinned),
        "{status:?}"
    );
}

/// A start that fails at its last step, once the replica, the embedded node, the swarm and the
/// reconciler all run, stops them before it returns: started again at once, the agent opens
/// the same database (locked while open) and its embedded node listens on the same port.
/// (Not waiting for the tasks and the replica thread fails this test with the database still
/// open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_late_releases_the_database_and_the_embedded_repo() {
    use pinmesh_agent::home::{Home, InitOptions, init};
    use pinmesh_agent::node::{Node, Start};

    let dir = TempDir::new().expect("temp dir");
    let home = Home::new(dir.path());
    init(
        &home,
        InitOptions {
            secret: Some(random_secret()),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            api_listen: "127.0.0.1:0".into(),
            // A port the OS just gave out (free now): a node left running would keep it.
            ipfs_listen: vec![format!("/ip4/127.0.0.1/tcp/{}", free_port())],
            ..InitOptions::default()
        },
    )
    .expect("init");
    // The last step writes the API address file: a directory in its place fails it.
    std::fs::create_dir(home.api_addr()).expect("dir in the way");
    let start = Start::from_home(home.clone()).expect("home loads");
    let err = Node::start(start)
        .await
        .expect_err("the address file cannot be written");
    assert!(err.to_string().contains("cannot write"), "{err:#}");

    std::fs::remove_dir(home.api_addr()).expect("clear the way");
    let start = Start::from_home(home.clone()).expect("home loads");
    let node = Node::start(start).await.expect("starts again at once");
    let client = node.client().expect("client");
    let cid = pinmesh_protocol::sim::sim_cid(1).to_string();
    client
        .pin(&pinmesh_agent::api::PinRequest::new(
            &cid,
            "after a failed start",
        ))
        .await
        .expect("pin");
    node.shutdown().await;
}

/// A TCP port on loopback that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
