#!/usr/bin/env bash
# Idle cost of the agent: starts the release edge-agent (the device build: with the Bluetooth LE
# transport) on its embedded defaults, lets it idle, then prints resident memory (VmRSS, VmHWM),
# CPU seconds used and binary size, for x86_64 natively and for aarch64 under qemu-user, with the
# environment of its systemd unit (glibc malloc tunables, read from agent/config/edge-agent.service)
# and, as a second x86_64 row, without it. Baseline in the same run: `sleep`, the floor for any
# process. With BEFORE=REV the x86_64 agent of that git revision (built in a worktree under
# target/bench-before) idles beside it.
#
# Under qemu-user the aarch64 figures include the emulator and its translated code: they bound the
# box's figures from above, they are not them. Where the memory goes: each agent's /proc/PID/smaps
# summed per mapping, printed after the table.
# Usage: [BEFORE=REV] bench/idle.sh [SECONDS, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
SECS=${1:-60}
TICK=$(getconf CLK_TCK)
TUNABLES=$(sed -n 's/^Environment=GLIBC_TUNABLES=//p' agent/config/edge-agent.service)

cargo build --release -p edge-agent -p edge-gpu --bins --features edge-agent/ble -q
cross/build.sh -q >/dev/null
before_bin=
if [ -n "${BEFORE:-}" ]; then
    tree=$PWD/target/bench-before/tree
    rm -rf "$tree" && git worktree prune
    git worktree add -f --detach "$tree" "$BEFORE" >/dev/null
    # The revision's own device build; its target dir is kept between runs.
    (cd "$tree" && CARGO_TARGET_DIR=$PWD/../target cargo build --release -p edge-agent -p edge-gpu --bins -q)
    before_bin=$PWD/target/bench-before/target/release/edge-agent
fi

# measure NAME PID [BIN]: one table row from /proc
measure() {
    local name=$1 pid=$2 bin=${3:-}
    local rss hwm ticks size="-"
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    [ -n "$bin" ] && size=$(( $(stat -c %s "$bin") / 1024 ))
    awk -v n="$name" -v r="$rss" -v h="$hwm" -v t="$ticks" -v hz="$TICK" -v s="$SECS" -v z="$size" \
        'BEGIN { cpu = t / hz; printf "%-40s %9.1f %9.1f %9.2f %9.3f %9s\n", n, r/1024, h/1024, cpu, 100*cpu/s, z }'
}

# where NAME PID: resident KiB per mapping (the binary's code and data, libraries, anonymous)
where() {
    echo "-- $1: resident KiB by mapping"
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 == "" ? "[anonymous]" : $6; perm = $2 }
         /^Rss:/ { rss[name " " perm] += $2 }
         END { for (k in rss) if (rss[k] >= 64) printf "%8d  %s\n", rss[k], k }' "/proc/$2/smaps" |
        sort -rn | sed "s|$PWD/||"
}

# start BIN DIR [ENV...]: the agent on embedded defaults in DIR; echoes its pid once its socket
# is up
start() {
    local bin=$1 dir=$2
    shift 2
    (cd "$dir" && exec env NODEVICE_SELECT=1 "$@" "$bin" --log-format text >"$dir/log" 2>&1) &
    local pid=$!
    for _ in $(seq 1 600); do
        [ -S "$dir/edge-agent-state/status.sock" ] && { echo $pid; return; }
        sleep 0.1
    done
    echo "agent $bin did not come up; log:" >&2; cat "$dir/log" >&2; exit 1
}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/x86_64" "$work/plain" "$work/aarch64" "$work/before"
host_bin=$PWD/target/release/edge-agent
arm_bin=$PWD/target/$TARGET/release/edge-agent
p_host=$(start "$host_bin" "$work/x86_64" GLIBC_TUNABLES="$TUNABLES")
p_plain=$(start "$host_bin" "$work/plain")
p_arm=$(start "$arm_bin" "$work/aarch64" GLIBC_TUNABLES="$TUNABLES")
p_before=
[ -n "$before_bin" ] && p_before=$(start "$before_bin" "$work/before")
sleep $((SECS + 600)) & p_sleep=$!
echo "idling ${SECS}s (figures include start-up: GPU probe, first sample, the capability benchmark)..."
sleep "$SECS"

printf '%-40s %9s %9s %9s %9s %9s\n' "process" "RSS MiB" "peak MiB" "CPU s" "% core" "size KiB"
measure "baseline: sleep" "$p_sleep"
measure "edge-agent x86_64 (unit's environment)" "$p_host" "$host_bin"
measure "edge-agent x86_64 (no malloc tunables)" "$p_plain" "$host_bin"
measure "edge-agent aarch64 (qemu-user)" "$p_arm" "$arm_bin"
[ -n "$p_before" ] && measure "edge-agent x86_64 at $BEFORE" "$p_before" "$before_bin"
# The GPU worker runs only while there are jobs (released when the GPU idles): its size alone.
for bin in "$PWD/target/release/edge-gpu-worker" "$PWD/target/$TARGET/release/edge-gpu-worker"; do
    printf '%-40s %9s %9s %9s %9s %9s\n' "edge-gpu-worker $(basename "$(dirname "$(dirname "$bin")")")" \
        - - - - $(( $(stat -c %s "$bin") / 1024 ))
done
where "edge-agent x86_64 (unit's environment)" "$p_host"
kill -TERM "$p_host" "$p_plain" "$p_arm" "$p_sleep" ${p_before:+"$p_before"}
while kill -0 "$p_host" 2>/dev/null || kill -0 "$p_arm" 2>/dev/null; do sleep 0.1; done
[ -n "${BEFORE:-}" ] && git worktree remove --force "$PWD/target/bench-before/tree"
exit 0
