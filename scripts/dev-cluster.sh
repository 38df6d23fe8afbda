#!/usr/bin/env bash
# Starts a local cluster of N agents (default 3) on loopback, each in its own home under
# BASE (default ./dev-cluster), all sharing one fresh secret, each with its embedded IPFS node
# (agent i: libp2p 9096+10i, API 9094+10i, IPFS 4001+10i). Stop them with `stop`.
#
#   scripts/dev-cluster.sh start [N]     build, init (first run) and start N agents
#   scripts/dev-cluster.sh stop          stop every agent started here
#   scripts/dev-cluster.sh status        each agent's digest and whether the cluster converged
#
# Then talk to agent i with:  target/release/pinmesh --dir dev-cluster/agent-i <command>
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-dev-cluster}
BIN=target/release/pinmesh

start() {
    local n=${1:-3}
    cargo build --release --locked -p pinmesh-agent --bin pinmesh
    mkdir -p "$BASE"
    local secret bootstrap=""
    if [ -f "$BASE/secret" ]; then
        secret=$(cat "$BASE/secret")
    else
        secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        echo "$secret" > "$BASE/secret"
    fi
    for i in $(seq 1 "$n"); do
        local dir="$BASE/agent-$i"
        if [ ! -f "$dir/config.toml" ]; then
            local args=(--dir "$dir" init --secret "$secret" --cluster dev
                --listen "/ip4/127.0.0.1/tcp/$((9096 + 10 * i))"
                --api-listen "127.0.0.1:$((9094 + 10 * i))"
                --ipfs-listen "/ip4/127.0.0.1/tcp/$((4001 + 10 * i))")
            [ -n "$bootstrap" ] && args+=(--bootstrap "$bootstrap")
            "$BIN" "${args[@]}" > /dev/null
        fi
        if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "agent-$i already running (pid $(cat "$dir/pid"))"
        else
            rm -f "$dir/api.addr"
            "$BIN" --dir "$dir" run > "$dir/agent.log" 2>&1 &
            echo $! > "$dir/pid"
            # Wait for it to listen (its API address file appears), at most 30 s.
            for _ in $(seq 1 300); do
                [ -f "$dir/api.addr" ] && break
                kill -0 "$(cat "$dir/pid")" 2>/dev/null || { cat "$dir/agent.log"; exit 1; }
                sleep 0.1
            done
            echo "agent-$i running (pid $(cat "$dir/pid")), log $dir/agent.log"
        fi
        if [ -z "$bootstrap" ]; then
            bootstrap=$("$BIN" --dir "$dir" id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addresses"][0])')
        fi
    done
}

stop() {
    for pidfile in "$BASE"/agent-*/pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    echo "stopped"
}

status() {
    for dir in "$BASE"/agent-*; do
        echo "== $(basename "$dir")"
        "$BIN" --dir "$dir" debug digest || true
    done
    "$BIN" --dir "$BASE/agent-1" debug converge --timeout 10s
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
esac
