#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repository for SECONDS each (default 30): the pairing
# protocol's decoders, its frames at link MTUs and the device's state machines across message
# sequences (mobile-bridge/fuzz); the hub's report, registration and signed-request parsing and
# the hub replies the agent parses (protocol/fuzz); the hub's whole intake through its router and
# store, job results with receipts included (hub/fuzz); the agent's job parsing and validation,
# WGSL included, and the worker's request line (gpu/fuzz); Wi-Fi scan output and the pairing
# button's events (hal/fuzz); the owner's settings (agent/fuzz).
# A crash stops the run and leaves its input under <crate>/fuzz/artifacts/; keep it as a
# regression test next to the decoder it broke.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
TOOLS="$PWD/target/tools"
if ! [ -x "$TOOLS/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked --root "$TOOLS"
fi
# The job fuzzer starts from the built-in kernels' jobs and shaders, made afresh so that they
# follow the kernels.
cargo run -q -p edge-gpu --example fuzz_seeds -- gpu/fuzz/corpus/job_validate
export PATH="$TOOLS/bin:$PATH" RUSTC_BOOTSTRAP=1
for dir in mobile-bridge/fuzz protocol/fuzz hub/fuzz gpu/fuzz hal/fuzz agent/fuzz; do
    for target in $(cd "$dir" && cargo fuzz list); do
        echo "== $dir: $target (${SECONDS_EACH}s)"
        # Seeds kept in the repository (the corpus is not) start the fuzzer from real inputs.
        seeds=()
        [ -d "$dir/seeds/$target" ] && seeds=("corpus/$target" "seeds/$target")
        mkdir -p "$dir/corpus/$target"
        log="$dir/artifacts/$target.log"
        mkdir -p "$dir/artifacts"
        if ! (cd "$dir" && CARGO_TARGET_DIR="$PWD/target" cargo fuzz run "$target" "${seeds[@]}" -- \
            -max_total_time="$SECONDS_EACH" -print_final_stats=1) >"$log" 2>&1; then
            tail -30 "$log" >&2
            echo "FAILED: $dir $target did not build or run to its end (or crashed); its output: $log" >&2
            exit 1
        fi
        grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)" "$log"
        [ -z "$(ls -A "$dir/artifacts/$target" 2>/dev/null)" ] || { echo "crash in $target: $dir/artifacts/$target" >&2; exit 1; }
    done
done
echo "no crashes"
