#!/usr/bin/env bash
# Builds the release edge-agent for the box: aarch64-unknown-linux-gnu, glibc, dynamically linked
# (a static musl binary cannot load libvulkan.so.1). Prints where it is and what it is.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
cargo build --release --target "$TARGET" -p edge-agent "$@"
bin="target/$TARGET/release/edge-agent"
echo "$bin: $(stat -c %s "$bin") bytes"
file "$bin" 2>/dev/null || true
