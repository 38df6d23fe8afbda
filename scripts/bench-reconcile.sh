#!/usr/bin/env bash
# Reconciler benchmark against a real IPFS node (js-ipfs from scripts/ipfs-testnet.sh, or Kubo
# when KUBO_BIN names an `ipfs` binary):
#   scripts/bench-reconcile.sh                     every phase (2,000 DAGs at concurrency 10;
#                                                  comparison at 100,000 pins; embedded nodes)
#   scripts/bench-reconcile.sh --phases rate --dags 500
#   scripts/bench-reconcile.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ipfs-testnet.sh install
cargo build --release --locked -p pinmesh-agent --bin pinmesh -p pinmesh-tests --bin reconcile-bench
exec target/release/reconcile-bench --bin target/release/pinmesh "$@"
