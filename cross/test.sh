#!/usr/bin/env bash
# Runs the workspace's tests for aarch64 under qemu-user (the cargo runner in .cargo/config.toml).
# GPU tests run on the arm64 build of lavapipe, emulated. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
export NODEVICE_SELECT=1
cargo test --workspace --all-features --target "$TARGET" "$@"
