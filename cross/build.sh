#!/usr/bin/env bash
# Builds the release edge-agent and its GPU worker (edge-gpu-worker) for the box:
# aarch64-unknown-linux-gnu, glibc, dynamically linked (a static musl binary cannot load
# libvulkan.so.1). Prints where they are and what they are.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
cargo build --release --target "$TARGET" -p edge-agent -p edge-gpu --bins --features edge-agent/ble "$@"
for bin in target/$TARGET/release/edge-agent target/$TARGET/release/edge-gpu-worker; do
    echo "$bin: $(stat -c %s "$bin") bytes"
    file "$bin" 2>/dev/null || true
done
