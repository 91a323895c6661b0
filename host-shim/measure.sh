#!/usr/bin/env bash
# The host's cost of one pod: the release binary's size, and the CPU time and peak RSS
# (GNU time -v) of one ADD and one DEL against the fake agent. Needs root and iproute2.
# Usage: sudo host-shim/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/time ]; then
    apt-get install -y time >/dev/null
fi

cargo build -p host-shim --release
bin=target/release/host-shim
echo "release binary: $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1))"

# The measurement test runs the release binary (CARGO_BIN_EXE_host-shim) in --release.
cargo test -p host-shim --release --test measure -- --nocapture 2>&1 \
    | grep -E '^(host-shim |source:|ADD:|DEL:)|test result'
