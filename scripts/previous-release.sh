#!/usr/bin/env bash
# Builds the `pinmesh` of the previous release (the commit in scripts/previous-release) and
# copies it to target/debug/pinmesh-previous, for the mixed-version test (tests/tests/upgrade.rs).
# It has a target directory of its own (target/previous-release): cargo names a workspace's
# artifacts by their path inside the workspace, so two checkouts of it sharing one target
# directory would overwrite each other's. Skipped when built from that commit already.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(grep -v '^#' scripts/previous-release | head -n1)
target=${CARGO_TARGET_DIR:-$PWD/target}
own=$target/previous-release
out=$target/debug/pinmesh-previous
if [ -x "$out" ] && [ "$(cat "$own/commit" 2>/dev/null)" = "$commit" ]; then
    exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "previous release $commit is not in this clone's history (shallow clone?): git fetch --unshallow" >&2
    exit 1
fi
src=$own/src
rm -rf "$src"
mkdir -p "$src" "$target/debug"
git archive "$commit" | tar -x -C "$src"
# Without debug info, and its build directory removed afterwards: only the binary is needed.
CARGO_PROFILE_DEV_DEBUG=false CARGO_INCREMENTAL=0 CARGO_TARGET_DIR=$own/target \
    cargo build --locked --manifest-path "$src/Cargo.toml" -p pinmesh-agent --bin pinmesh
cp "$own/target/debug/pinmesh" "$out"
echo "$commit" > "$own/commit"
rm -rf "$own/target" "$src"
