#!/usr/bin/env bash
# Runs the workspace's tests for aarch64 under qemu-user (the cargo runner in .cargo/config.toml).
# GPU tests run on the arm64 build of lavapipe, emulated. Extra arguments go to cargo test.
#
# By default the end-to-end crate (`tests/`, edge-tests) is left out: its scenarios are the same
# on both architectures, they run on x86_64 in ./devtool test, and the arm64 binaries are run for
# real in the image's boot test; under qemu-user they are the slowest part of CI.
# EDGE_AARCH64_ALL=1 runs them here too (by hand, before a release).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
export NODEVICE_SELECT=1
scope=(--workspace --exclude edge-tests)
if [ -n "${EDGE_AARCH64_ALL:-}" ]; then
    scope=(--workspace)
else
    echo "cross/test.sh: the end-to-end crate (edge-tests) is left out; EDGE_AARCH64_ALL=1 runs it too" >&2
fi
cargo test "${scope[@]}" --all-features --target "$TARGET" "$@"
