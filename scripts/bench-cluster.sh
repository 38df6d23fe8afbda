#!/usr/bin/env bash
# Cluster benchmark: agents as separate processes on loopback, with the same run's floors.
#   scripts/bench-cluster.sh                       every phase, defaults (10 agents, 200 trials,
#                                                  200k-pin ingest, 1M-pin join)
#   scripts/bench-cluster.sh --phases join --join-pins 100000
#   scripts/bench-cluster.sh --json                one JSON object with every number
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p pinmesh-agent --bin pinmesh -p pinmesh-tests --bin cluster-bench
exec target/release/cluster-bench --bin target/release/pinmesh "$@"
