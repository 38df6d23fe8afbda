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

#[path = "hardening/api.rs"]
mod api;
#[path = "hardening/cluster.rs"]
mod cluster;
#[path = "hardening/disk.rs"]
mod disk;

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
