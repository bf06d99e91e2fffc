#!/usr/bin/env bash
# The cargo runner for aarch64 binaries (.cargo/config.toml): qemu-user, with a time limit.
# Under Debian 12's qemu-user (7.2) a program that forks while other threads run can leave the
# child deadlocked inside the emulator before it execs (seen once in a clean-clone CI run: hal's
# wifi tests, the forked child parked in futex_wait for 24 minutes). A binary still running after
# EDGE_QEMU_TIMEOUT seconds (900; the slowest test binary takes about 200) is killed with its
# children and run once more, saying so on stderr; a second overrun fails with timeout's 124.
set -uo pipefail
limit="${EDGE_QEMU_TIMEOUT:-900}"
for attempt in 1 2; do
    started=$SECONDS
    timeout --kill-after=10 "$limit" qemu-aarch64-static "$@"
    rc=$?
    if [ $((SECONDS - started)) -lt "$limit" ] || { [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]; }; then
        exit "$rc"
    fi
    echo "qemu-runner: $(basename "$1") ran past ${limit}s under qemu-user and was killed (attempt $attempt of 2)" >&2
done
exit 124
