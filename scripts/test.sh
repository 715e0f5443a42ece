#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, build the release
# artifacts the end-to-end tests preload, then run every test. Run as root
# (the tests build network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --quiet
# The two kernels the uml and lkl backends need: a few minutes each on a
# fresh machine, cached (instant) after that.
backend-uml/build-kernel.sh
backend-lkl/build-lkl.sh >/dev/null
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --release --workspace --no-fail-fast "$@"
else
  exec cargo test --release --workspace --no-fail-fast "$@"
fi
