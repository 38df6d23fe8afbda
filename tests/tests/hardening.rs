//! Faults found by attacking the agent, each reproduced: a home without its config, two
//! clusters sharing a secret, an untrusted member, slow and stalled API clients, a full disk,
//! failed joins, taken ports. Real agents on 127.0.0.1 (in-process, or the real binary where
//! the fault is seen from outside).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinmesh_agent::api::PinRequest;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::process::AgentProcess;
use pinmesh_tests::{
    TestAgent, assert_one_line_error, converged, pinmesh_bin, pinmesh_in, random_secret, stderr,
    stdout, wait_for,
};
use tempfile::TempDir;

const CONVERGE: Duration = Duration::from_secs(60);

/// `pinmesh init` on loopback with free ports and no IPFS node, plus `extra`.
fn init_loopback(dir: &Path, extra: &[&str]) {
    let mut args = vec!["--no-ipfs"];
    args.extend_from_slice(extra);
    pinmesh_tests::init_loopback(dir, &args);
}

/// `pinmesh run` in `dir`, expected to exit by itself; killed after a minute (then its output
/// shows that it kept running).
fn run_expecting_exit(dir: &Path) -> Output {
    let mut child = Command::new(pinmesh_bin())
        .arg("--dir")
        .arg(dir)
        .arg("run")
        .env("PINMESH_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinmesh run");
    let deadline = std::time::Instant::now() + CONVERGE;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// 1. A missing config.toml must not re-create the agent.
#[test]
fn run_and_init_never_make_a_new_agent_over_an_existing_one() {
    let dir = TempDir::new().expect("temp dir");
    let home = dir.path();
    init_loopback(home, &[]);
    // A real database, made by a run.
    drop(AgentProcess::run(&pinmesh_bin(), home).expect("agent runs"));
    let (key, token) = (
        read(&home.join("identity.key")),
        read(&home.join("api.token")),
    );
    std::fs::rename(home.join("config.toml"), home.join("config.moved")).expect("move config");

    let out = run_expecting_exit(home);
    assert_one_line_error(&out, "no config.toml");
    assert!(stderr(&out).contains("identity.key"), "{}", stderr(&out));
    assert!(!home.join("config.toml").exists(), "run wrote a config");
    assert_eq!(read(&home.join("identity.key")), key, "identity replaced");
    assert_eq!(read(&home.join("api.token")), token, "token replaced");

    assert_one_line_error(&pinmesh_in(home, &["init"]), "restore config.toml");
    assert_eq!(read(&home.join("identity.key")), key, "identity replaced");
    // --force replaces a config and identity, never a home with a pinset.
    assert_one_line_error(&pinmesh_in(home, &["init", "--force"]), "pinset");
    assert_eq!(read(&home.join("identity.key")), key, "identity replaced");
    assert!(!home.join("config.toml").exists());

    // The README's first run in an empty or absent directory still creates a home.
    let fresh = home.join("fresh");
    let out = pinmesh_in(
        &fresh,
        &["init", "--api-listen", "127.0.0.1:0", "--no-ipfs"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

// 8. libp2p sets SO_REUSEPORT: a second agent on the same port must fail, not share it.
#[test]
fn an_agent_on_a_taken_port_fails_with_one_line_naming_it() {
    let first_dir = TempDir::new().expect("temp dir");
    init_loopback(first_dir.path(), &[]);
    let first = AgentProcess::run(&pinmesh_bin(), first_dir.path()).expect("first agent");
    let port: u16 = first
        .addr
        .split('/')
        .nth(4)
        .and_then(|p| p.parse().ok())
        .expect("a /ip4/../tcp/PORT address");
    let taken = format!("/ip4/127.0.0.1/tcp/{port}");

    let second = TempDir::new().expect("temp dir");
    let out = pinmesh_in(
        second.path(),
        &[
            "init",
            "--listen",
            &taken,
            "--api-listen",
            "127.0.0.1:0",
            "--no-ipfs",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_expecting_exit(second.path());
    assert_one_line_error(&out, &format!("TCP port {port} is already in use"));
    assert!(stderr(&out).contains("network.listen"), "{}", stderr(&out));

    // The embedded IPFS node's port likewise (libp2p's TCP transport too).
    let third = TempDir::new().expect("temp dir");
    pinmesh_tests::init_loopback(third.path(), &["--ipfs-listen", &taken]);
    let out = run_expecting_exit(third.path());
    assert_one_line_error(&out, &format!("TCP port {port} is already in use"));
    assert!(stderr(&out).contains("[ipfs] listen"), "{}", stderr(&out));
    drop(first);
}

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

/// Reads from `stream` until it is closed by the other end, or `within` passes. True when
/// closed (EOF or reset).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

fn api_config(agent: &TestAgent, change: impl FnOnce(&mut pinmesh_agent::config::ApiConfig)) {
    agent.configure(|c| change(&mut c.api));
}

// 9. Header timeout and connection limit, before any token is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_closes_slow_headers_and_refuses_connections_over_its_limit() {
    // A limit of 3 with a header timeout long enough not to free a slot during the test.
    let mut limited = TestAgent::create(&random_secret(), &[]);
    api_config(&limited, |api| {
        api.max_connections = 3;
        api.header_timeout = Duration::from_secs(120);
    });
    let api = limited.start().await.api_addr;
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(api).expect("connect");
            s.write_all(b"GET /v1/id HTTP/1.1\r\nHost: x\r\n")
                .expect("partial");
            s
        })
        .collect();
    // Accepted in order: once the three are served, the fourth is closed at once.
    let client = limited.client();
    let mut extra = TcpStream::connect(api).expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_secs(20)),
        "a connection over the limit was kept open"
    );
    for s in &mut slow {
        assert!(
            !closed_within(s, Duration::from_millis(100)),
            "slow one cut"
        );
    }
    // Slots come back when those clients leave.
    slow.clear();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while client.digest().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A header timeout of 1s closes a half-sent request, and an idle kept-alive connection.
    let mut quick = TestAgent::create(&random_secret(), &[]);
    api_config(&quick, |api| api.header_timeout = Duration::from_secs(1));
    let api = quick.start().await.api_addr;
    let mut half = TcpStream::connect(api).expect("connect");
    half.write_all(b"GET /v1/id HTTP/1.1\r\n").expect("partial");
    assert!(
        closed_within(&mut half, Duration::from_secs(20)),
        "a half-sent request line stayed open"
    );
    let mut idle = TcpStream::connect(api).expect("connect");
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)),
        "an idle connection stayed open"
    );
    quick.stop().await;
    limited.stop().await;
}

/// Sends one raw HTTP/1.1 request with `body` and returns the status and body of the answer.
fn raw_request(api: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(api).expect("connect");
    let request = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// The API's edges: a full batch fits, every error is JSON, the scheme is case-insensitive,
// control characters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_a_full_batch_and_answers_every_error_in_json() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    let api = agent.start().await.api_addr;
    let token = agent.home.load_token().expect("token");
    let client = agent.client();

    // 10,000 pins with 200-byte names: the batch limit the README promises.
    let batch: Vec<PinRequest> = (0..10_000u64)
        .map(|n| PinRequest::new(sim_cid(n), format!("{n:0>200}")))
        .collect();
    let receipts = client.pin_many(&batch).await.expect("a full batch");
    assert_eq!(receipts.len(), 10_000);

    let auth = format!("Authorization: bearer {token}");
    let (status, body) = raw_request(
        api,
        &format!("POST /v1/pins HTTP/1.1\r\n{auth}\r\nContent-Type: application/json"),
        b"{not json",
    );
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, body) = raw_request(api, &format!("POST /v1/pins HTTP/1.1\r\n{auth}"), b"{}");
    assert_eq!(status, 415, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).expect("a JSON error");
    let (status, body) = raw_request(api, &format!("GET /v1/nothing HTTP/1.1\r\n{auth}"), b"");
    assert_eq!(status, 404, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).expect("a JSON error");
    // Lower-case scheme accepted.
    let (status, body) = raw_request(
        api,
        &format!("GET /v1/debug/digest HTTP/1.1\r\n{auth}"),
        b"",
    );
    assert_eq!(status, 200, "{body}");

    let err = client
        .pin(&PinRequest::new(sim_cid(20_000), "\u{1b}[2Jgone"))
        .await
        .expect_err("an escape sequence in a name");
    assert!(err.to_string().contains("control characters"), "{err}");
    assert_eq!(agent.state().summary.pins, 10_000);
    agent.stop().await;
}

// 5. Stalled listings: bounded, cut after the send timeout, holding nothing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listings_are_bounded_and_cut() {
    let mut agent = TestAgent::create(&random_secret(), &[]);
    api_config(&agent, |api| {
        api.max_listings = 2;
        api.send_timeout = Duration::from_secs(2);
    });
    let api = agent.start().await.api_addr;
    let token = agent.home.load_token().expect("token");
    let client = agent.client();
    // About 26 MB of listing: more than loopback socket buffers hold.
    let value = "v".repeat(1_000);
    for chunk in 0..4u64 {
        let batch: Vec<PinRequest> = (0..5_000u64)
            .map(|n| {
                let mut pin = PinRequest::new(sim_cid(chunk * 5_000 + n), "big");
                pin.metadata.insert("k".into(), value.clone());
                pin
            })
            .collect();
        client.pin_many(&batch).await.expect("batch");
    }
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            // A small receive buffer, fixed (no autotuning): the listing cannot fit in flight.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.connect(&api.into()).expect("connect");
            let mut s: TcpStream = socket.into();
            let request = format!(
                "GET /v1/pins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            s.write_all(request.as_bytes()).expect("request");
            s
        })
        .collect();
    // Both have begun (their answers' first bytes arrived), and neither reads on.
    for s in &stalled {
        let mut first = [0u8; 12];
        s.try_clone()
            .expect("clone")
            .read_exact(&mut first)
            .expect("answer begins");
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    let err = client.list(|_| Ok(())).await.expect_err("a third listing");
    assert!(err.to_string().contains("api.max_listings"), "{err}");

    // After the send timeout the stalled ones are cut, and listings work again.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let count = loop {
        match client.list(|_| Ok(())).await {
            Ok(count) => break count,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "never freed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(count, 20_000);
    for mut s in stalled {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(CONVERGE)).expect("timeout");
        let _ = s.read_to_end(&mut rest);
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "a stalled listing was not cut ({} bytes)",
            rest.len()
        );
    }
    agent.stop().await;
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
    let y1_id = y1.node().peer_id.to_string();
    let m1_id = m1.node().peer_id.to_string();
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
    let rogue_id = rogue.node().peer_id.to_string();
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

/// A process that is killed when dropped (a failed assertion must not leave it running).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The mount of a small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// None when mounting is not allowed here (not root).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// 6. A full disk stops the agent with one line; nothing acknowledged is lost.
#[test]
fn a_full_disk_stops_the_agent_with_one_line_and_loses_nothing() {
    let Some(disk) = Tmpfs::mount("6m") else {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    };
    let home = disk.dir.path().join("agent");
    init_loopback(&home, &[]);
    let log = TempDir::new().expect("log dir");
    let log_path = log.path().join("stderr");
    // Killed whatever happens, before the tmpfs is unmounted (declared after it).
    let mut child = Running(
        Command::new(pinmesh_bin())
            .arg("--dir")
            .arg(&home)
            .arg("run")
            .env("PINMESH_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("spawn"),
    );
    let out = child.0.stdout.take().expect("stdout");
    let api = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("api: ").map(str::to_string))
        .expect("the agent printed its API address");
    let token = std::fs::read_to_string(home.join("api.token")).expect("token");
    let client = pinmesh_agent::api::client::Client::new(api, token.trim());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let mut acked = 0u64;
    let refusal = runtime.block_on(async {
        for round in 0..400u64 {
            let batch: Vec<PinRequest> = (0..250u64)
                .map(|n| PinRequest::new(sim_cid(round * 250 + n), format!("{n:0>200}")))
                .collect();
            match client.pin_many(&batch).await {
                Ok(receipts) => acked += receipts.len() as u64,
                Err(err) => return err.to_string(),
            }
        }
        panic!("a 6 MB disk took 100,000 pins");
    });
    assert!(refusal.contains("disk is full"), "{refusal}");
    assert!(acked > 0, "nothing fitted");

    // The agent exits by itself (a supervisor restarts it), with one line.
    let deadline = std::time::Instant::now() + CONVERGE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the agent stayed up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&log_path).expect("stderr");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("disk is full"), "{said}");

    // With room again, every acknowledged pin is there.
    disk.resize("64m");
    let agent = AgentProcess::run(&pinmesh_bin(), &home).expect("restart");
    let listed = runtime
        .block_on(agent.client.list(|_| Ok(())))
        .expect("pin ls");
    assert!(listed >= acked, "{listed} listed, {acked} acknowledged");
    drop(agent);
}

// 3. A changed byte inside the pinset is found at start; `run --resync` rejoins from peers.
#[test]
fn a_damaged_database_is_found_and_resync_rejoins_from_peers() {
    let secret = random_secret();
    let (a_dir, b_dir) = (TempDir::new().expect("dir"), TempDir::new().expect("dir"));
    init_loopback(a_dir.path(), &["--secret", &secret]);
    let a = AgentProcess::run(&pinmesh_bin(), a_dir.path()).expect("a runs");
    init_loopback(b_dir.path(), &["--secret", &secret, "--bootstrap", &a.addr]);
    let b = AgentProcess::run(&pinmesh_bin(), b_dir.path()).expect("b runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let batch: Vec<PinRequest> = (0..200u64)
        .map(|n| PinRequest::new(sim_cid(n), format!("p{n}")))
        .collect();
    runtime.block_on(a.client.pin_many(&batch)).expect("pins");
    let out = pinmesh_in(a_dir.path(), &["debug", "converge", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    a.stop().expect("a stops");

    // One bit of one known CID's bytes, wherever the file holds them (its pin entry, its delta).
    let db = a_dir.path().join("pinmesh.redb");
    let mut bytes = read(&db);
    let cid = sim_cid(7).to_bytes();
    let places: Vec<usize> = bytes
        .windows(cid.len())
        .enumerate()
        .filter(|(_, w)| *w == cid.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert!(!places.is_empty(), "the CID is in the file");
    for at in places {
        bytes[at + cid.len() - 1] ^= 0x01;
    }
    std::fs::write(&db, bytes).expect("write");

    let out = run_expecting_exit(a_dir.path());
    assert_one_line_error(&out, "is damaged");
    assert!(
        stderr(&out).contains("pinmesh run --resync"),
        "{}",
        stderr(&out)
    );

    let a = AgentProcess::run_with(&pinmesh_bin(), a_dir.path(), &["--resync"]).expect("resync");
    let out = pinmesh_in(a_dir.path(), &["debug", "converge", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let mut names = std::collections::BTreeMap::new();
    runtime
        .block_on(a.client.list(|p| {
            names.insert(p.cid, p.name);
            Ok(())
        }))
        .expect("pin ls");
    assert_eq!(names.len(), 200);
    assert_eq!(
        names.get(&sim_cid(7).to_string()).map(String::as_str),
        Some("p7")
    );
    let kept = std::fs::read_dir(a_dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pinmesh.redb.damaged-")
        });
    assert!(kept, "the damaged file was not kept");
    drop((a, b));
}

// The rest of the list: warnings an operator needs, plain logs in a file, a cut pipe.
#[test]
fn warnings_are_logged_plainly_and_a_cut_pipe_ends_pin_ls_quietly() {
    let dir = TempDir::new().expect("dir");
    init_loopback(dir.path(), &["--secret", &"0".repeat(64)]);
    let agent = AgentProcess::run(&pinmesh_bin(), dir.path()).expect("agent runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let batch: Vec<PinRequest> = (0..5_000u64)
        .map(|n| PinRequest::new(sim_cid(n), format!("pin-{n}")))
        .collect();
    runtime
        .block_on(agent.client.pin_many(&batch))
        .expect("pins");
    // agent.log is the agent's stderr, a file: the warning is there, with no colour codes.
    let log = std::fs::read_to_string(dir.path().join("agent.log")).expect("log");
    assert!(log.contains("all zeros"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a log file: {log:?}");

    // `pinmesh pin ls | head -1`: the reader goes away after one line.
    let mut ls = Command::new(pinmesh_bin())
        .args(["pin", "ls"])
        .env("PINMESH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(ls.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a line");
    assert!(first.starts_with("b"), "{first}");
    let out = ls.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    drop(agent);
}
