#!/usr/bin/env bash
# The main job: the study's first scenario on every stack side by side.
# Installs what is missing, builds dropshim and the two kernels the
# user-space stacks need (cached after the first run), brings up the
# two-gateways testbed (two namespaces joined by two links shaped to
# 1 Gbit/s), runs iperf3 as plain TCP on one link, under mptcpize, and
# through libdropshim.so on the native, uml and lkl stacks, prints the
# table, writes the plots and removes the testbed. Run as root.
#
#   bash scripts/demo.sh                 all stacks (first run on a fresh
#                                        machine: about 15 minutes; after: 1-2)
#   bash scripts/demo.sh --native-only   TCP, mptcpize and the native backend:
#                                        no kernel builds
#
# Other arguments go to `dropshim bench` (see `dropshim bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

native_only=0
args=()
for a in "$@"; do
  case "$a" in
    --native-only) native_only=1 ;;
    *) args+=("$a") ;;
  esac
done

start=$(date +%s)
step() { printf 'demo [%3ss]: %s\n' "$(($(date +%s) - start))" "$*" >&2; }

step "checking the system packages (a fresh machine installs about 400 MB: 2-4 minutes)"
scripts/setup.sh
step "building dropshim (first time: about 3 minutes on 2 cores; then seconds)"
cargo build --release --quiet

out=${DROPSHIM_DEMO_OUT:-target/demo}
stacks=tcp,mptcpize,native
if [ "$native_only" = 0 ]; then
  if uml=$(backend-uml/build-kernel.sh --path 2>/dev/null); then
    step "UML kernel: cached ($uml)"
  else
    step "building the UML kernel for the uml stack (once: about 4-5 minutes on 2 cores)"
    backend-uml/build-kernel.sh >/dev/null
  fi
  if lkl=$(LKL_NO_BUILD=1 backend-lkl/build-lkl.sh 2>/dev/null); then
    step "Linux Kernel Library: cached ($lkl)"
  else
    step "building the Linux Kernel Library for the lkl stack (once: about 4-5 minutes on 2 cores)"
    backend-lkl/build-lkl.sh >/dev/null
  fi
  stacks=$stacks,uml,lkl
fi

step "running the two-gateways scenario on $stacks (about a minute)"
target/release/dropshim bench --scenario two-gateways --runs 1 --duration 5 \
  --stacks "$stacks" --out "$out" "${args[@]}"
step "done; the plot is $out/throughput.svg (all results in $out)"
