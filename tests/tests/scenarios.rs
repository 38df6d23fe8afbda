//! Scenarios driving the real `pinmesh` binary as a user would.

use pinmesh_tests::pinmesh;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
    let out = pinmesh(&["simulate", "--loss", "2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--loss"), "{err}");

    let out = pinmesh(&["simulate", "--replicas", "many"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid value 'many'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_reports_version() {
    let out = pinmesh(&["run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["wire_version"], 1);
}
