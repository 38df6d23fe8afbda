#!/usr/bin/env bash
# Real IPFS test nodes on loopback for integration tests: a pinned js-ipfs (npm ipfs@0.66.1,
# which serves the Kubo-compatible HTTP RPC API) installed under scripts/jsipfs, or Kubo when
# KUBO_BIN points at an `ipfs` binary.
#
#   scripts/ipfs-testnet.sh install                  npm install from scripts/jsipfs/package-lock.json
#                                                    (skipped when node_modules already matches it)
#   scripts/ipfs-testnet.sh start DIR N [BASEPORT]   init (first run) and start N nodes with repos
#                                                    DIR/node0..N-1, connect them all pairwise and
#                                                    write DIR/nodes.env; without BASEPORT free
#                                                    ports are picked (node i uses BASEPORT+3i for
#                                                    the API, +1 swarm, +2 gateway)
#   scripts/ipfs-testnet.sh stop DIR                 stop every node of DIR (repos are kept)
#   scripts/ipfs-testnet.sh stop-node DIR I          stop node I only ("IPFS went down")
#   scripts/ipfs-testnet.sh start-node DIR I         restart node I (same repo, ports and peer id)
#                                                    and reconnect it to the running nodes
#   scripts/ipfs-testnet.sh status DIR               one line per node: running or stopped
#
# DIR/nodes.env (sourceable shell, read it from tests):
#   IPFS_COUNT=N
#   IPFS_API_i=http://127.0.0.1:PORT
#   IPFS_SWARM_i=/ip4/127.0.0.1/tcp/PORT/p2p/PEERID
# Every RPC call is a POST, e.g. curl -X POST "$IPFS_API_0/api/v0/id".
#
# `start` on an existing DIR restarts the same repos with their stored ports (pins survive);
# BASEPORT is then ignored for nodes already initialised. Each node keeps, inside its repo,
# testnet.ports ("API SWARM GATEWAY"), testnet.pid and daemon.log. Daemons run detached from
# this script's stdio, so it returns as soon as the net is up; stop them with `stop`.
#
# Requires bash, curl, python3 and (for js-ipfs) node >= 18 with npm. js-ipfs: ~185 MB RSS
# per node, ~2 s init and ~2 s start.
#
# Kubo (UNTESTED here: Kubo cannot be downloaded on the machine this was written on):
#   KUBO_BIN=/path/to/ipfs scripts/ipfs-testnet.sh start DIR N
# inits with `--profile test --empty-repo` and sets the same addresses with `ipfs config`.
set -euo pipefail

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
JSDIR=$SCRIPTS/jsipfs
JSIPFS=$JSDIR/node_modules/.bin/jsipfs
STAMP=$JSDIR/node_modules/.pinmesh-install-stamp
HEALTH_BUDGET=${IPFS_TESTNET_HEALTH_SECS:-30}
STOP_BUDGET=5

die() { echo "ipfs-testnet: error: $*" >&2; exit 1; }
log() { echo "ipfs-testnet: $*"; }

kubo() { [ -n "${KUBO_BIN:-}" ]; }

# ---------------------------------------------------------------------------------- install

lock_hash() { cat "$JSDIR/package.json" "$JSDIR/package-lock.json" 2>/dev/null | cksum | cut -d' ' -f1; }

install() {
    command -v node >/dev/null 2>&1 || die "node not found: install Node.js >= 18 with npm (or set KUBO_BIN)"
    # Serialise concurrent installs (parallel test processes); flock is optional. The lock fd
    # is open only for this block, so daemons started later do not inherit it.
    {
        if command -v flock >/dev/null 2>&1; then flock 9; fi
        install_locked
    } 9<"$JSDIR/package.json"
}

install_locked() {
    if [ -x "$JSIPFS" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(lock_hash)" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js >= 18 with npm (or set KUBO_BIN)"
    log "installing js-ipfs into $JSDIR (npm install, pinned by package-lock.json)"
    local out
    out=$(mktemp "${TMPDIR:-/tmp}/ipfs-testnet-npm.XXXXXX")
    # Not `npm ci`: it rejects the lockfile because of an unreachable optional git dependency
    # (`headless`, under electron-eval). --fetch-retries=0 makes that optional failure fast;
    # --ignore-scripts: nothing needed builds at install time (classic-level ships prebuilds).
    if ! (cd "$JSDIR" && npm install --no-audit --no-fund --fetch-retries=0 --ignore-scripts) \
        >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        die "npm install failed in $JSDIR (full output: $out)"
    fi
    [ -x "$JSIPFS" ] || die "npm install succeeded but $JSIPFS is missing (full output: $out)"
    rm -f "$out"
    lock_hash >"$STAMP"
}

# ------------------------------------------------------------------------------- node state

repo_of() { echo "$1/node$2"; }

ports_of() { cat "$1/testnet.ports"; }   # "API SWARM GATEWAY"

peer_id_of() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Identity"]["PeerID"])' \
        "$1/config"
}

# True when PID exists and is not a zombie (a killed daemon whose parent -- this script has
# exited, so init or a container's subreaper -- has not reaped it yet).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    if stat=$(cat "/proc/$1/stat" 2>/dev/null); then
        stat=${stat##*) }
        [ "${stat%% *}" != Z ] || return 1
    fi
}

# Prints the pid when the pid file names a live daemon of this repo (guards against pid
# reuse: on Linux the process's environment must hold IPFS_PATH=<repo>).
running_pid() {
    local repo=$1 pid env
    [ -f "$repo/testnet.pid" ] || return 1
    pid=$(cat "$repo/testnet.pid")
    [ -n "$pid" ] && alive "$pid" || return 1
    if [ -d "/proc/$pid" ]; then
        env=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
        grep -qxF "IPFS_PATH=$repo" <<<"$env" || return 1
    fi
    echo "$pid"
}

clean_stale() { rm -rf "$1/repo.lock" "$1/api" "$1/testnet.pid"; }

free_ports() {   # free_ports COUNT: COUNT distinct free loopback ports, one per line
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

# init_repo REPO API SWARM GW: create and configure a repo (runs in the background per node).
init_repo() {
    local repo=$1 api=$2 swarm=$3 gw=$4
    rm -rf "$repo"
    mkdir -p "$(dirname "$repo")"
    if kubo; then
        IPFS_PATH=$repo "$KUBO_BIN" init --profile test --empty-repo >"$repo.init.log" 2>&1 || return 1
        local c=(env IPFS_PATH="$repo" "$KUBO_BIN" config)
        "${c[@]}" Addresses.API "/ip4/127.0.0.1/tcp/$api"
        "${c[@]}" Addresses.Gateway "/ip4/127.0.0.1/tcp/$gw"
        "${c[@]}" --json Addresses.Swarm "[\"/ip4/127.0.0.1/tcp/$swarm\"]"
        "${c[@]}" --json Bootstrap '[]'
        "${c[@]}" --json Discovery.MDNS.Enabled false
        "${c[@]}" Routing.Type none
    else
        IPFS_PATH=$repo "$JSIPFS" init --profile test --emptyRepo >"$repo.init.log" 2>&1 || return 1
        python3 - "$repo/config" "$api" "$swarm" "$gw" <<'EOF'
import json, sys
path, api, swarm, gw = sys.argv[1:]
c = json.load(open(path))
a = c.setdefault("Addresses", {})
a["API"] = f"/ip4/127.0.0.1/tcp/{api}"
a["Gateway"] = f"/ip4/127.0.0.1/tcp/{gw}"
a["Swarm"] = [f"/ip4/127.0.0.1/tcp/{swarm}"]
a["RPC"] = ""          # else every node binds 5003
a["Delegates"] = []
c["Bootstrap"] = []
d = c.setdefault("Discovery", {})
d.setdefault("MDNS", {})["Enabled"] = False
d.setdefault("webRTCStar", {})["Enabled"] = False
c["Routing"] = {"Type": "none"}
json.dump(c, open(path, "w"), indent=2)
EOF
    fi
    echo "$api $swarm $gw" >"$repo/testnet.ports"
    rm -f "$repo.init.log"
}

# launch REPO: start the daemon in the background unless it already runs.
launch() {
    local repo=$1
    if running_pid "$repo" >/dev/null; then return 0; fi
    clean_stale "$repo"
    if kubo; then
        IPFS_PATH=$repo "$KUBO_BIN" daemon </dev/null >"$repo/daemon.log" 2>&1 &
    else
        IPFS_PATH=$repo NODE_OPTIONS="--require $JSDIR/polyfill.cjs" \
            "$JSIPFS" daemon --enable-preload=false </dev/null >"$repo/daemon.log" 2>&1 &
    fi
    echo $! >"$repo/testnet.pid"
    LAUNCHED+=("$repo")
}

# A failed start/start-node stops the daemons it launched, so no half-started net lingers.
LAUNCHED=()
cleanup_on_failure() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ ${#LAUNCHED[@]} -gt 0 ]; then
        stop_repos "${LAUNCHED[@]}" >&2 || true
    fi
    exit "$rc"
}
trap cleanup_on_failure EXIT

# wait_healthy DEADLINE REPO...: every node answers POST /api/v0/id before DEADLINE (epoch s).
wait_healthy() {
    local deadline=$1 repo api
    shift
    for repo in "$@"; do
        read -r api _ _ <"$repo/testnet.ports"
        until curl -sf -o /dev/null --max-time 2 -X POST "http://127.0.0.1:$api/api/v0/id"; do
            # js-ipfs keeps running when its API port is taken; fail fast instead of waiting.
            if ! running_pid "$repo" >/dev/null || grep -q EADDRINUSE "$repo/daemon.log" ||
                [ "$(date +%s)" -ge "$deadline" ]; then
                echo "ipfs-testnet: --- tail of $repo/daemon.log" >&2
                tail -n 30 "$repo/daemon.log" >&2 || true
                if grep -q EADDRINUSE "$repo/daemon.log"; then
                    die "$repo: a port of $(tr ' ' , <"$repo/testnet.ports") is already in use"
                elif running_pid "$repo" >/dev/null; then
                    die "$repo: API on port $api not healthy within ${HEALTH_BUDGET}s"
                fi
                die "$repo: daemon exited before its API on port $api came up"
            fi
            sleep 0.2
        done
    done
}

swarm_addr() {
    local repo=$1 swarm
    read -r _ swarm _ <"$repo/testnet.ports"
    echo "/ip4/127.0.0.1/tcp/$swarm/p2p/$(peer_id_of "$repo")"
}

# connect FROM_REPO TO_REPO (a libp2p connection is two-way, one call per pair suffices)
connect() {
    local api addr tries=0
    read -r api _ _ <"$1/testnet.ports"
    addr=$(swarm_addr "$2")
    until curl -sf -o /dev/null --max-time 10 -X POST \
        "http://127.0.0.1:$api/api/v0/swarm/connect?arg=$addr"; do
        tries=$((tries + 1))
        [ "$tries" -lt 5 ] || die "$1 could not connect to $addr"
        sleep 0.5
    done
}

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

check_engine() {
    if kubo; then
        [ -x "$KUBO_BIN" ] || die "KUBO_BIN=$KUBO_BIN is not an executable"
    else
        install
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 not found"
    command -v curl >/dev/null 2>&1 || die "curl not found"
}

# ---------------------------------------------------------------------------------- commands

start() {
    [ $# -ge 2 ] || die "usage: $0 start DIR N [BASEPORT]"
    local dir n=$2 base=${3:-} i repo
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
    check_engine
    dir=$(abs_dir "$1")

    # Ports: stored ones for existing repos, else BASEPORT+3i or free ones.
    local fresh=() ports=()
    for ((i = 0; i < n; i++)); do
        repo=$(repo_of "$dir" "$i")
        [ -f "$repo/config" ] && [ -f "$repo/testnet.ports" ] || fresh+=("$i")
    done
    if [ ${#fresh[@]} -gt 0 ] && [ -z "$base" ]; then
        mapfile -t ports < <(free_ports $((3 * ${#fresh[@]})))
    fi

    # Init new repos in parallel.
    local pids=() k=0 p=0
    for i in "${fresh[@]}"; do
        local api swarm gw
        if [ -n "$base" ]; then
            api=$((base + 3 * i)) swarm=$((base + 3 * i + 1)) gw=$((base + 3 * i + 2))
        else
            api=${ports[p]} swarm=${ports[p + 1]} gw=${ports[p + 2]}
            p=$((p + 3))
        fi
        init_repo "$(repo_of "$dir" "$i")" "$api" "$swarm" "$gw" &
        pids[k]=$!
        k=$((k + 1))
    done
    k=0
    for i in "${fresh[@]}"; do
        if ! wait "${pids[k]}"; then
            repo=$(repo_of "$dir" "$i")
            tail -n 20 "$repo.init.log" >&2 2>/dev/null || true
            die "init of $repo failed"
        fi
        k=$((k + 1))
    done

    local deadline repos=()
    deadline=$(($(date +%s) + HEALTH_BUDGET))
    for ((i = 0; i < n; i++)); do
        repos+=("$(repo_of "$dir" "$i")")
        launch "${repos[i]}"
    done
    wait_healthy "$deadline" "${repos[@]}"

    local a b
    for ((a = 0; a < n; a++)); do
        for ((b = a + 1; b < n; b++)); do
            connect "${repos[a]}" "${repos[b]}"
        done
    done

    local env=$dir/nodes.env
    {
        echo "IPFS_COUNT=$n"
        for ((i = 0; i < n; i++)); do
            read -r a _ _ <"${repos[i]}/testnet.ports"
            echo "IPFS_API_$i=http://127.0.0.1:$a"
            echo "IPFS_SWARM_$i=$(swarm_addr "${repos[i]}")"
        done
    } >"$env.tmp"
    mv "$env.tmp" "$env"
    log "$n node(s) up and meshed ($(kubo && echo kubo || echo js-ipfs)); see $env"
}

# All node repos of DIR, in index order.
node_repos() {
    local i=0
    while [ -d "$1/node$i" ]; do
        echo "$1/node$i"
        i=$((i + 1))
    done
}

# stop_repos REPO...: SIGTERM, wait up to STOP_BUDGET s, SIGKILL stragglers, clean locks.
stop_repos() {
    local repo pid live=()
    for repo in "$@"; do
        if pid=$(running_pid "$repo"); then
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$repo:$pid")
        fi
    done
    local deadline=$(($(date +%s) + STOP_BUDGET)) entry left
    while :; do
        left=()
        for entry in ${live[@]+"${live[@]}"}; do
            alive "${entry##*:}" && left+=("$entry")
        done
        [ ${#left[@]} -gt 0 ] && [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.1
    done
    for entry in ${left[@]+"${left[@]}"}; do
        log "${entry%:*}: still running after ${STOP_BUDGET}s, sending SIGKILL"
        kill -KILL "${entry##*:}" 2>/dev/null || true
    done
    for entry in ${left[@]+"${left[@]}"}; do
        while alive "${entry##*:}"; do sleep 0.05; done
    done
    for repo in "$@"; do clean_stale "$repo"; done
}

stop() {
    [ $# -eq 1 ] || die "usage: $0 stop DIR"
    [ -d "$1" ] || return 0
    local dir repos
    dir=$(cd "$1" && pwd)
    mapfile -t repos < <(node_repos "$dir")
    [ ${#repos[@]} -gt 0 ] || return 0
    stop_repos "${repos[@]}"
    log "stopped ${#repos[@]} node(s) of $dir"
}

node_arg() {   # node_arg DIR I -> repo path, which must have been initialised by `start`
    [ -d "$1" ] || die "no such testnet directory: $1"
    [[ $2 =~ ^[0-9]+$ ]] || die "node index must be a number, got '$2'"
    local repo
    repo=$(cd "$1" && pwd)/node$2
    [ -f "$repo/config" ] && [ -f "$repo/testnet.ports" ] || die "$repo is not a started node"
    echo "$repo"
}

stop_node() {
    [ $# -eq 2 ] || die "usage: $0 stop-node DIR I"
    local repo
    repo=$(node_arg "$1" "$2")
    stop_repos "$repo"
    log "stopped $repo"
}

start_node() {
    [ $# -eq 2 ] || die "usage: $0 start-node DIR I"
    local repo other
    repo=$(node_arg "$1" "$2")
    check_engine
    launch "$repo"
    wait_healthy $(($(date +%s) + HEALTH_BUDGET)) "$repo"
    while read -r other; do
        [ "$other" != "$repo" ] && running_pid "$other" >/dev/null || continue
        connect "$repo" "$other"
    done < <(node_repos "$(dirname "$repo")")
    log "started $repo and reconnected it"
}

status() {
    [ $# -eq 1 ] || die "usage: $0 status DIR"
    [ -d "$1" ] || die "no such testnet directory: $1"
    local repo pid api
    while read -r repo; do
        read -r api _ _ <"$repo/testnet.ports" 2>/dev/null || api=?
        if pid=$(running_pid "$repo"); then
            echo "$(basename "$repo") running pid=$pid api=http://127.0.0.1:$api"
        else
            echo "$(basename "$repo") stopped"
        fi
    done < <(node_repos "$(cd "$1" && pwd)")
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    install) install ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    start-node) start_node "$@" ;;
    stop-node) stop_node "$@" ;;
    status) status "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
