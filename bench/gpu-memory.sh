#!/usr/bin/env bash
# Memory with the GPU idle and busy: starts the release edge-agent (x86_64, lavapipe) with the
# capability benchmark on and a 10 s idle release, then prints the resident memory of the daemon
# and of its GPU worker process (a) right after the benchmark jobs, with the worker holding the
# device, and (b) after the worker was released for idleness. Baseline in the same run: `sleep`.
# Usage: bench/gpu-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p edge-agent -p edge-gpu --bins -q
bin=$PWD/target/release/edge-agent
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/config.toml" <<TOML
[agent]
state_dir = "$work/state"
[gpu]
idle_release_secs = 10
measure_capability = true
TOML
NODEVICE_SELECT=1 "$bin" --config "$work/config.toml" --log-format text >"$work/log" 2>&1 &
agent=$!
sleep 600 & baseline=$!
status() { "$bin" --config "$work/config.toml" status "$@" 2>/dev/null; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
until status | grep -q '"sgemm_gflops"'; do sleep 0.5; done
worker=$(pgrep -f "edge-gpu-worker serve" | head -1)
printf '%-46s %8s\n' "process" "RSS MiB"
printf '%-46s %8s\n' "baseline: sleep" "$(rss $baseline)"
printf '%-46s %8s\n' "edge-agent daemon, after the benchmark jobs" "$(rss $agent)"
printf '%-46s %8s\n' "gpu-worker (holds the device)" "$(rss $worker)"
until status --metrics | grep -q '^edge_gpu_worker_up 0'; do sleep 0.5; done
printf '%-46s %8s\n' "edge-agent daemon, worker released (idle)" "$(rss $agent)"
kill -0 "$worker" 2>/dev/null && echo "gpu-worker still running" || echo "gpu-worker: exited"
kill -TERM $agent $baseline
