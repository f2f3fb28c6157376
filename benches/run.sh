#!/usr/bin/env bash
# One command for every end-to-end figure in BENCHMARKS.md: installs the peers (bore,
# rathole) into target/peers if missing, builds the release binaries, runs relay-load.
# Extra arguments go to relay-load (e.g. --mb 300 for a quicker run).
set -euo pipefail
cd "$(dirname "$0")/.."
peers="$PWD/target/peers"
[ -x "$peers/bin/bore" ] || cargo install --locked bore-cli --root "$peers"
[ -x "$peers/bin/rathole" ] || cargo install rathole --root "$peers"   # fails with --locked
cargo build --release -p relay-broker -p relay-listener -p relay-sender -p relay-benches
exec target/release/relay-load --tls --tools-dir "$peers/bin" "$@"
