//! Scenarios driving the real `pinmesh` binary as a user would.

use std::path::Path;

use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::process::AgentProcess;
use pinmesh_tests::{
    assert_one_line_error, init_loopback, pinmesh, pinmesh_bin, pinmesh_in, stderr, stdout,
};
use tempfile::TempDir;

#[test]
fn simulate_converges_and_reports_json() {
    let out = pinmesh(&[
        "simulate",
        "--replicas",
        "8",
        "--ops",
        "800",
        "--seed",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(report["converged"], true, "{report}");
    assert!(
        report["messages_dropped"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert_eq!(
        report["state_digest"].as_str().map(str::len),
        Some(64),
        "{report}"
    );
}

#[test]
fn simulate_is_deterministic_per_seed() {
    let run = |seed: &str| {
        let out = pinmesh(&[
            "simulate",
            "--replicas",
            "5",
            "--ops",
            "300",
            "--seed",
            seed,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
        (v["state_digest"].clone(), v["messages_sent"].clone())
    };
    assert_eq!(run("9"), run("9"));
    assert_ne!(run("9"), run("10"));
}

#[test]
fn bad_arguments_get_one_clear_line_and_a_failure_exit() {
    assert_one_line_error(&pinmesh(&["simulate", "--loss", "2"]), "--loss");
    assert_one_line_error(
        &pinmesh(&["simulate", "--replicas", "many"]),
        "invalid value 'many'",
    );
    assert_one_line_error(&pinmesh(&["pin", "add", "not-a-cid"]), "is not a CID");
    assert_one_line_error(
        &pinmesh(&["pin", "add", &sim_cid(1).to_string(), "--meta", "novalue"]),
        "KEY=VALUE",
    );
    assert_one_line_error(&pinmesh(&["join", "/ip4/127.0.0.1/tcp/1"]), "/p2p/");
    assert_one_line_error(&pinmesh(&["join", "/ip9/nonsense"]), "not a multiaddr");
    assert_one_line_error(&pinmesh(&["pin", "ls"]), "no running agent");
    assert_one_line_error(
        &pinmesh(&["init", "--secret", "abc"]),
        "64 hexadecimal digits",
    );
    assert_one_line_error(
        &pinmesh(&["init", "--listen", "/ip4/1.2.3.4/udp/1"]),
        "must be /ip4",
    );
}

#[test]
fn init_refuses_to_overwrite_and_a_broken_config_stops_run() {
    let dir = TempDir::new().expect("temp dir");
    let out = pinmesh_in(dir.path(), &["init", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(made["secret"].as_str().map(str::len), Some(64));
    assert_one_line_error(&pinmesh_in(dir.path(), &["init"]), "--force");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["identity.key", "api.token", "config.toml"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} must be private");
        }
    }
    std::fs::write(dir.path().join("config.toml"), "[cluster]\nsecret = 12\n").expect("write");
    assert_one_line_error(&pinmesh_in(dir.path(), &["run"]), "config.toml");
}

/// `pinmesh run` in an initialised home; its warnings go to `agent.log` there.
fn start(dir: &Path) -> AgentProcess {
    AgentProcess::run(&pinmesh_bin(), dir).expect("start pinmesh run")
}

#[test]
fn acknowledged_pins_survive_kill_9() {
    let dir = TempDir::new().expect("temp dir");
    init_loopback(dir.path(), &[]);
    let agent = start(dir.path());
    assert!(agent.api.starts_with("http://127.0.0.1:"), "{}", agent.api);
    let mut acked = Vec::new();
    for n in 0..25 {
        let cid = sim_cid(n).to_string();
        let out = pinmesh_in(
            dir.path(),
            &["pin", "add", &cid, "--name", &format!("p{n}"), "--json"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        acked.push(cid);
    }
    let out = pinmesh_in(dir.path(), &["pin", "rm", &acked[0], "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    agent.kill9();

    let _agent = start(dir.path());
    let out = pinmesh_in(dir.path(), &["pin", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let cids: std::collections::BTreeSet<String> = listed
        .iter()
        .map(|p| p["cid"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = acked[1..].iter().cloned().collect();
    assert_eq!(cids, expected);
    assert!(
        listed
            .iter()
            .all(|p| p["name"].as_str().is_some_and(|n| n.starts_with('p')))
    );
    let out = pinmesh_in(dir.path(), &["debug", "digest", "--json"]);
    let digest: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(digest["pins"], 24);
    assert_eq!(digest["synced"], true, "a lone agent is synced");
    let out = pinmesh_in(
        dir.path(),
        &["debug", "converge", "--timeout", "5s", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let converge: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(converge["converged"], true);
    let out = pinmesh_in(dir.path(), &["debug", "peers"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().last(), Some("CONVERGED"));
}

#[test]
fn an_agent_killed_mid_load_loses_nothing_it_acknowledged_and_catches_up() {
    use pinmesh_agent::api::PinRequest;
    let (a_dir, b_dir) = (TempDir::new().expect("dir"), TempDir::new().expect("dir"));
    let secret: String = "5e".repeat(32);
    init_loopback(a_dir.path(), &["--secret", &secret]);
    let a = start(a_dir.path());
    init_loopback(b_dir.path(), &["--secret", &secret, "--bootstrap", &a.addr]);
    let b = start(b_dir.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // A writer pins at A without pause; A is killed after its 300th acknowledgement.
    let a_client = a.client.clone();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let writer = runtime.spawn(async move {
        for n in 0.. {
            let cid = sim_cid(n).to_string();
            match a_client
                .pin(&PinRequest::new(&cid, format!("load-{n}")))
                .await
            {
                Ok(_) => {
                    if acked_tx.send(cid).is_err() {
                        return;
                    }
                }
                Err(_) => return, // A is gone
            }
        }
    });
    let mut acked: Vec<String> = acked_rx.iter().take(300).collect();
    a.kill9();
    runtime.block_on(writer).expect("writer");
    acked.extend(acked_rx.try_iter());

    // B keeps working while A is down.
    let b_client = b.client.clone();
    runtime
        .block_on(b_client.pin(&PinRequest::new(sim_cid(1_000_000), "while A was down")))
        .expect("pin at B");

    let a = start(a_dir.path());
    let a_client = a.client.clone();
    let mut listed = std::collections::BTreeSet::new();
    runtime
        .block_on(a_client.list(|p| {
            listed.insert(p.cid);
            Ok(())
        }))
        .expect("pin ls");
    let lost: Vec<&String> = acked.iter().filter(|c| !listed.contains(*c)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged pins lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // A catches up with B (and B with whatever A committed but never published).
    let out = pinmesh_in(a_dir.path(), &["debug", "converge", "--timeout", "60s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let shown = runtime
        .block_on(a_client.wait_pin(
            &sim_cid(1_000_000).to_string(),
            std::time::Duration::from_secs(30),
        ))
        .expect("A has B's pin");
    assert_eq!(shown.name, "while A was down");
    drop(b);
}
