#!/usr/bin/env bash
# Idle cost of the agent: starts the release edge-agent on its embedded defaults, lets it idle,
# then prints resident memory (VmRSS, VmHWM), CPU seconds used and binary size, for x86_64 natively
# and for aarch64 under qemu-user. Baseline in the same run: `sleep`, the floor for any process.
#
# Under qemu-user the aarch64 figures include the emulator and its translated code: they bound the
# box's figures from above, they are not them. Usage: bench/idle.sh [SECONDS, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
SECS=${1:-60}
TICK=$(getconf CLK_TCK)

cargo build --release -p edge-agent -p edge-gpu --bins -q
cross/build.sh -q >/dev/null

# measure NAME PID: one table row from /proc
measure() {
    local name=$1 pid=$2 bin=${3:-}
    local rss hwm ticks size="-"
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    [ -n "$bin" ] && size=$(( $(stat -c %s "$bin") / 1024 ))
    awk -v n="$name" -v r="$rss" -v h="$hwm" -v t="$ticks" -v hz="$TICK" -v s="$SECS" -v z="$size" \
        'BEGIN { cpu = t / hz; printf "%-34s %9.1f %9.1f %9.2f %9.3f %9s\n", n, r/1024, h/1024, cpu, 100*cpu/s, z }'
}

# start BIN DIR: the agent on embedded defaults in DIR; echoes its pid once its socket is up
start() {
    local bin=$1 dir=$2
    (cd "$dir" && NODEVICE_SELECT=1 exec "$bin" --log-format text >"$dir/log" 2>&1) &
    local pid=$!
    for _ in $(seq 1 600); do
        [ -S "$dir/edge-agent-state/status.sock" ] && { echo $pid; return; }
        sleep 0.1
    done
    echo "agent $bin did not come up; log:" >&2; cat "$dir/log" >&2; exit 1
}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/x86_64" "$work/aarch64"
host_bin=$PWD/target/release/edge-agent
arm_bin=$PWD/target/$TARGET/release/edge-agent
p_host=$(start "$host_bin" "$work/x86_64")
p_arm=$(start "$arm_bin" "$work/aarch64")
sleep $((SECS + 600)) & p_sleep=$!
echo "idling ${SECS}s (figures include start-up: GPU probe, first sample)..."
sleep "$SECS"

printf '%-34s %9s %9s %9s %9s %9s\n' "process" "RSS MiB" "peak MiB" "CPU s" "% core" "size KiB"
measure "baseline: sleep" "$p_sleep"
measure "edge-agent x86_64" "$p_host" "$host_bin"
measure "edge-agent aarch64 (qemu-user)" "$p_arm" "$arm_bin"
# The GPU worker runs only while there are jobs (released when the GPU idles): its size alone.
for bin in "$PWD/target/release/edge-gpu-worker" "$PWD/target/$TARGET/release/edge-gpu-worker"; do
    printf '%-34s %9s %9s %9s %9s %9s\n' "edge-gpu-worker $(basename "$(dirname "$(dirname "$bin")")")" \
        - - - - $(( $(stat -c %s "$bin") / 1024 ))
done
kill -TERM "$p_host" "$p_arm" "$p_sleep"
while kill -0 "$p_host" 2>/dev/null || kill -0 "$p_arm" 2>/dev/null; do sleep 0.1; done
