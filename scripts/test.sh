#!/usr/bin/env bash
# The whole test suite, as CI runs it: the test IPFS nodes, formatting, lints, then every test
# of the workspace against one debug build. Usage: scripts/test.sh [extra nextest args]
# Needs Node.js >= 18 with npm, python3 and curl for the IPFS nodes (scripts/ipfs-testnet.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test IPFS nodes (js-ipfs, pinned by scripts/jsipfs/package-lock.json)"
# The reconciler's tests drive real IPFS nodes; skipped quickly when already installed.
scripts/ipfs-testnet.sh install

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
# The black-box tests in tests/ run the real `pinmesh` binary from this same debug build.
cargo build --workspace --locked --bins

echo "== the previous release's binary (for the mixed-version test)"
scripts/previous-release.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; run them first so nextest's summary closes the output.
    cargo test --workspace --locked --doc --quiet
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
