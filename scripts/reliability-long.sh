#!/usr/bin/env bash
# The long reliability run (issue 7): the same tests as CI's bounded
# `cargo test reliability`, with sizes raised through environment
# variables. Run as root (namespaces). scripts/soak.sh repeats the
# path-cut tests for a time or a volume under CPU load, with a packet
# capture kept on a mismatch. Override any of these:
#
#   RELIABILITY_BYTES          total bytes for the load test (default 5 GB)
#   RELIABILITY_CONNS          concurrent connections (default 64)
#   RELIABILITY_MAX_SIZE       largest payload per connection and direction
#   RELIABILITY_FAULT_MAX_SIZE payload cap in the path-cut test (128 MiB)
#   RELIABILITY_MIN_FAULTS     path cuts the fault test must reach (20)
#   RELIABILITY_CUT_BOTH       1 = alternate cuts of link 1 and link 2
#   RELIABILITY_PROGRAM_BYTES  file size for socat/nc/nginx+wget (1 GiB)
#   RELIABILITY_FUZZ_CASES     property-test cases per property (200000)
#
# Example: RELIABILITY_BYTES=20000000000 scripts/reliability-long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RELIABILITY_BYTES="${RELIABILITY_BYTES:-5000000000}"
# 8 MiB: about ten rounds in 5 GB, so the leak checks (nothing grows
# after the first rounds) have rounds to compare.
export RELIABILITY_MAX_SIZE="${RELIABILITY_MAX_SIZE:-8388608}"
export RELIABILITY_FAULT_MAX_SIZE="${RELIABILITY_FAULT_MAX_SIZE:-134217728}"
export RELIABILITY_MIN_FAULTS="${RELIABILITY_MIN_FAULTS:-20}"
export RELIABILITY_PROGRAM_BYTES="${RELIABILITY_PROGRAM_BYTES:-1073741824}"
export RELIABILITY_FUZZ_CASES="${RELIABILITY_FUZZ_CASES:-200000}"
cargo build --release --workspace --quiet
# One test at a time: the load and fault tests want both cores.
cargo test --release -p dropshim-conf --test fuzz -- reliability
exec cargo test --release -p dropshim-tests -- --test-threads=1 --nocapture reliability "$@"
