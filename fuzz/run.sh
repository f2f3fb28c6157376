#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 10) on its corpus (fuzz/corpus/,
# not committed) grown from the committed seeds (fuzz/seeds/), and prints one line per
# target: executions, executions per second, corpus units added. Fails on any crash; the
# crashing input is in fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz.
#   fuzz/run.sh                        # CI: a short run of every target
#   FUZZ_SECONDS=330 fuzz/run.sh       # the long run recorded in FUZZING.md
#   fuzz/run.sh frame_codec sas_token  # chosen targets
# FUZZ_SANITIZER=none skips AddressSanitizer (about 3x the executions; the targets are safe
# Rust, and overflow checks stay on through debug assertions): the long run uses it.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-10}
sanitizer=(-s "${FUZZ_SANITIZER:-address}")
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build "${sanitizer[@]}" >/dev/null
total=0
printf '%-20s %14s %10s %8s\n' target executions exec/s added
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    if ! cargo +nightly fuzz run "${sanitizer[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 >"$log" 2>&1; then
        grep -E "panicked|SUMMARY|Test unit written" -A3 "$log" >&2 || tail -40 "$log" >&2
        echo "fuzz target $t crashed" >&2
        exit 1
    fi
    execs=$(grep -oP 'stat::number_of_executed_units:\s+\K\d+' "$log" | tail -1)
    rate=$(grep -oP 'stat::average_exec_per_sec:\s+\K\d+' "$log" | tail -1)
    added=$(grep -oP 'stat::new_units_added:\s+\K\d+' "$log" | tail -1)
    printf '%-20s %14s %10s %8s\n' "$t" "$execs" "$rate" "$added"
    total=$((total + execs))
    rm -f "$log"
done
printf '%-20s %14s\n' total "$total"
