//! Support for pinmesh's multi-agent and black-box scenarios.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `pinmesh` binary built alongside these tests (`target/<profile>/pinmesh`).
///
/// `cargo test --workspace` and `cargo nextest run --workspace` build it, as a binary target of
/// a package under test.
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

/// Runs `pinmesh` with `args` in a fresh temporary home and returns its output.
pub fn pinmesh(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("pinmesh-test-{}", std::process::id()));
    Command::new(pinmesh_bin())
        .args(args)
        .env("PINMESH_DIR", &home)
        .output()
        .expect("spawn pinmesh")
}
