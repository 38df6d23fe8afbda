//! Support for pinmesh's multi-agent and black-box scenarios: real agents on 127.0.0.1 with
//! temporary homes, waits on conditions with deadlines, the real `pinmesh` binary, and real
//! IPFS nodes ([`ipfs`]).

pub mod ipfs;
pub mod process;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use pinmesh_agent::api::client::Client;
use pinmesh_agent::home::{Home, InitOptions, init};
use pinmesh_agent::node::{Node, NodeHandle, Start};
use pinmesh_agent::replica::ReplicaState;
use tempfile::TempDir;
use tokio::time::Instant;

/// The `pinmesh` binary built alongside these tests (`target/<profile>/pinmesh`).
///
/// `scripts/test.sh` builds it before running the tests.
pub fn pinmesh_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/pinmesh
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("pinmesh{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace --bins, or scripts/test.sh)",
        bin.display()
    );
    bin
}

/// Runs `pinmesh` with `args` and home `dir`, returns its output.
pub fn pinmesh_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(pinmesh_bin())
        .args(args)
        .env("PINMESH_DIR", dir)
        .env_remove("PINMESH_API")
        .output()
        .expect("spawn pinmesh")
}

/// A command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failure with exactly one line on stderr containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure; stdout: {}",
        stdout(out)
    );
    let err = stderr(out);
    assert_eq!(err.trim().lines().count(), 1, "stderr: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

/// `pinmesh init` arguments for loopback with free ports: agent, API, embedded IPFS node.
pub const LOOPBACK: [&str; 6] = [
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--api-listen",
    "127.0.0.1:0",
    "--ipfs-listen",
    "/ip4/127.0.0.1/tcp/0",
];

/// `pinmesh init` in `dir` on loopback with free ports (agent, API, embedded IPFS node), plus
/// `extra`.
pub fn init_loopback(dir: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["init"];
    args.extend_from_slice(&LOOPBACK);
    args.extend_from_slice(extra);
    let out = pinmesh_in(dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs `pinmesh` with `args` in a throwaway home.
pub fn pinmesh(args: &[&str]) -> Output {
    let home = TempDir::new().expect("temp dir");
    pinmesh_in(home.path(), args)
}

/// A fresh random cluster secret.
pub fn random_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One in-process agent and its home.
#[derive(Debug)]
pub struct TestAgent {
    pub node: Option<NodeHandle>,
    pub home: Home,
    _dir: Arc<TempDir>,
}

impl TestAgent {
    /// Creates a home on loopback with free ports, without an IPFS node.
    pub fn create(secret: &str, bootstrap: &[Multiaddr]) -> TestAgent {
        // These agents test replication; the IPFS side is tested with real processes.
        Self::create_with(secret, bootstrap, false)
    }

    /// Creates a home on loopback with free ports, for an agent with an embedded IPFS node.
    pub fn create_with_ipfs(secret: &str, bootstrap: &[Multiaddr]) -> TestAgent {
        Self::create_with(secret, bootstrap, true)
    }

    fn create_with(secret: &str, bootstrap: &[Multiaddr], ipfs: bool) -> TestAgent {
        let dir = TempDir::new().expect("temp dir");
        let home = Home::new(dir.path());
        init(
            &home,
            InitOptions {
                secret: Some(secret.to_string()),
                listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
                api_listen: "127.0.0.1:0".into(),
                bootstrap: bootstrap.iter().map(ToString::to_string).collect(),
                ipfs_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
                no_ipfs: !ipfs,
                ..InitOptions::default()
            },
        )
        .expect("init home");
        TestAgent {
            node: None,
            home,
            _dir: Arc::new(dir),
        }
    }

    /// An agent whose home is `dir`, made beforehand (by `pinmesh follow NAME init`, say).
    pub fn at(dir: TempDir) -> TestAgent {
        TestAgent {
            node: None,
            home: Home::new(dir.path()),
            _dir: Arc::new(dir),
        }
    }

    /// Changes the agent's config.toml (before it starts).
    pub fn configure(&self, change: impl FnOnce(&mut pinmesh_agent::config::Config)) {
        let mut config = pinmesh_agent::config::Config::load(&self.home.config())
            .expect("config loads")
            .raw;
        change(&mut config);
        std::fs::write(self.home.config(), config.to_toml()).expect("write config");
    }

    pub async fn start(&mut self) -> &NodeHandle {
        log_from_env();
        let start = Start::from_home(self.home.clone()).expect("home loads");
        let node = Node::start(start).await.expect("agent starts");
        self.node.insert(node)
    }

    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    pub fn node(&self) -> &NodeHandle {
        self.node.as_ref().expect("agent is running")
    }

    pub fn client(&self) -> Client {
        self.node().client().expect("API client")
    }

    pub fn state(&self) -> Arc<ReplicaState> {
        self.node().replica.state()
    }
}

/// With `PINMESH_TEST_LOG` set (a `tracing` filter such as `pinmesh_agent=debug`), the agents
/// a test runs inside its own process log to the test's output, which the runner shows when the
/// test fails. Each line names the agent's peer id where the agent's code does.
fn log_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(filter) = std::env::var("PINMESH_TEST_LOG") else {
            return;
        };
        match tracing_subscriber::EnvFilter::try_new(&filter) {
            Ok(filter) => {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_test_writer()
                    .try_init();
            }
            Err(err) => panic!("PINMESH_TEST_LOG={filter:?} is not a tracing filter: {err}"),
        }
    });
}

/// Asks `agent` for its peers until `check` holds (for at most a minute); the last answer on
/// timeout. Connections and metrics change on the network's schedule, so it asks every 50 ms.
pub async fn peers_until(
    agent: &TestAgent,
    check: impl Fn(&pinmesh_agent::swarm::SwarmInfo) -> bool,
) -> Result<pinmesh_agent::swarm::SwarmInfo, pinmesh_agent::swarm::SwarmInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = agent.client().peers().await.expect("peers");
        if check(&info) {
            return Ok(info);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(info);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Agents of one cluster; the first is every other's bootstrap peer.
#[derive(Debug)]
pub struct TestCluster {
    pub secret: String,
    pub agents: Vec<TestAgent>,
}

impl TestCluster {
    pub async fn start(n: usize) -> TestCluster {
        let secret = random_secret();
        let mut first = TestAgent::create(&secret, &[]);
        let bootstrap = first.start().await.addrs.clone();
        let mut agents = vec![first];
        for _ in 1..n {
            let mut agent = TestAgent::create(&secret, &bootstrap);
            agent.start().await;
            agents.push(agent);
        }
        TestCluster { secret, agents }
    }

    pub fn running(&self) -> Vec<&TestAgent> {
        self.agents.iter().filter(|a| a.node.is_some()).collect()
    }

    /// Waits until every running agent has the same applied and state digests and `pins` pins.
    pub async fn converged(&self, pins: Option<u64>, timeout: Duration) -> Result<(), String> {
        converged(&self.running(), pins, timeout).await
    }
}

/// Waits until `agents` have the same applied and state digests and, if given, `pins` pins.
pub async fn converged(
    agents: &[&TestAgent],
    pins: Option<u64>,
    timeout: Duration,
) -> Result<(), String> {
    {
        wait_for(agents, timeout, |states| {
            let first = &states[0].summary;
            states.iter().all(|s| {
                s.summary.applied_digest == first.applied_digest
                    && s.summary.state_digest == first.state_digest
                    && pins.is_none_or(|p| s.summary.pins == p)
            })
        })
        .await
        .map_err(|states| {
            let lines: Vec<String> = states
                .iter()
                .map(|s| {
                    format!(
                        "{} pins {} applied {}",
                        s.summary.actor, s.summary.pins, s.summary.applied_digest
                    )
                })
                .collect();
            format!("not converged after {timeout:?}:\n{}", lines.join("\n"))
        })
    }
}

/// Waits until `check` holds over the agents' replica states; wakes on every state change (and
/// re-checks every 50 ms for conditions outside the replica). Returns the last states on timeout.
pub async fn wait_for(
    agents: &[&TestAgent],
    timeout: Duration,
    check: impl Fn(&[Arc<ReplicaState>]) -> bool,
) -> Result<(), Vec<Arc<ReplicaState>>> {
    let deadline = Instant::now() + timeout;
    let mut watches: Vec<_> = agents.iter().map(|a| a.node().replica.watch()).collect();
    loop {
        let states: Vec<Arc<ReplicaState>> = watches.iter().map(|w| w.borrow().clone()).collect();
        if check(&states) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(states);
        }
        let changes =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        let recheck = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            _ = changes => {}
            _ = recheck => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A peer that holds the cluster secret but not pinmesh's manners: it speaks gossipsub on the
/// cluster's topics directly, to send agents what a broken or hostile member might.
pub struct Rogue {
    swarm: libp2p::Swarm<pinmesh_agent::swarm::Behaviour>,
    topic: libp2p::gossipsub::IdentTopic,
    metrics_topic: libp2p::gossipsub::IdentTopic,
    /// Its identity, to sign batches as itself.
    pub key: libp2p::identity::Keypair,
}

impl Rogue {
    /// Connects to `agent` and waits until it has subscribed to the cluster's topics.
    pub async fn connect(secret: &str, cluster: &str, agent: &Multiaddr) -> Rogue {
        let key = libp2p::identity::Keypair::generate_ed25519();
        Self::connect_as(key, secret, cluster, agent).await
    }

    /// As [`connect`](Self::connect), with the identity `key` (a follower's, say).
    pub async fn connect_as(
        key: libp2p::identity::Keypair,
        secret: &str,
        cluster: &str,
        agent: &Multiaddr,
    ) -> Rogue {
        use futures::StreamExt;
        use libp2p::gossipsub;
        let secret = pinmesh_agent::config::parse_secret(secret).expect("secret");
        let flags = pinmesh_agent::swarm::Flags::default();
        let mut swarm =
            pinmesh_agent::swarm::build(key.clone(), secret, cluster, &flags).expect("rogue swarm");
        let topic = pinmesh_agent::swarm::topic(cluster);
        let metrics_topic = pinmesh_agent::swarm::metrics_topic(cluster);
        for topic in [&topic, &metrics_topic] {
            swarm
                .behaviour_mut()
                .gossipsub_mut()
                .subscribe(topic)
                .expect("subscribe");
        }
        swarm.dial(agent.clone()).expect("dial");
        let mut waiting = vec![topic.hash(), metrics_topic.hash()];
        let subscribed = tokio::time::timeout(Duration::from_secs(30), async {
            while !waiting.is_empty() {
                if let libp2p::swarm::SwarmEvent::Behaviour(
                    pinmesh_agent::swarm::BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                        topic,
                        ..
                    }),
                ) = swarm.select_next_some().await
                {
                    waiting.retain(|t| *t != topic);
                }
            }
        })
        .await;
        assert!(
            subscribed.is_ok(),
            "the agent never subscribed to the rogue"
        );
        Rogue {
            swarm,
            topic,
            metrics_topic,
            key,
        }
    }

    /// Publishes raw bytes on the cluster topic.
    pub fn publish(&mut self, data: Vec<u8>) {
        self.swarm
            .behaviour_mut()
            .gossipsub_mut()
            .publish(self.topic.clone(), data)
            .expect("publish");
    }

    /// Publishes raw bytes on the cluster's metrics topic.
    pub fn publish_metric(&mut self, data: Vec<u8>) {
        let topic = self.metrics_topic.clone();
        self.swarm
            .behaviour_mut()
            .gossipsub_mut()
            .publish(topic, data)
            .expect("publish");
    }

    /// Keeps the rogue's connections going until `agent` has rejected `n` gossip messages;
    /// false if it has not within `timeout`.
    pub async fn until_rejected(&mut self, agent: &TestAgent, n: u64, timeout: Duration) -> bool {
        let flags = agent.node().flags.clone();
        let agents = [agent];
        let waiting = wait_for(&agents, timeout, move |_| {
            flags.rejected.load(std::sync::atomic::Ordering::Relaxed) >= n
        });
        tokio::select! {
            r = waiting => r.is_ok(),
            _ = self.drive(timeout) => false,
        }
    }

    /// Drives the rogue's connections (call while waiting on the agents).
    pub async fn drive(&mut self, for_at_most: Duration) {
        use futures::StreamExt;
        let _ = tokio::time::timeout(for_at_most, async {
            loop {
                self.swarm.select_next_some().await;
            }
        })
        .await;
    }
}
