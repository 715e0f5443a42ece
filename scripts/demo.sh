#!/usr/bin/env bash
# The main job on the built-in default: install what is missing, build,
# bring up the two-gateways testbed (two namespaces joined by two links
# shaped to 1 Gbit/s), run iperf3 as plain TCP on one link, through
# libdropshim.so with no configuration, and under mptcpize, print the
# table, and remove the testbed. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
exec target/release/dropshim bench --scenario two-gateways --runs 1 --duration 5 "$@"
