#!/usr/bin/env bash
# Installs what dropshim's build, demo and tests need on a fresh Debian
# bookworm machine (as root). Idempotent: a second run installs nothing.
set -euo pipefail

packages=(
  iperf3 curl python3 mptcpize      # the programs the shim is tested with, and its peer
  iproute2 iputils-ping ethtool     # namespaces, links, MPTCP endpoints, probes, offloads
  tcpdump linux-perf                # the soak's rolling capture; where a stalled uml instance spends its CPU
  socat netcat-openbsd wget nginx-light   # programs the reliability suite runs unmodified
  redis-server redis-tools          # many small requests (interactive tests)
  busybox-static golang-go          # programs that bypass libc: a static binary, Go (tests/tests/reach.rs)
  linux-source-6.12 bc flex bison libelf-dev build-essential rsync   # UML and LKL kernel builds
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
