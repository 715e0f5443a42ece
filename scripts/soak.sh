#!/usr/bin/env bash
# Soak (issue 15): the path-cut-during-load test of each stack, repeated
# for a given time or volume with both CPUs busy, every uploaded byte
# checked where it lands, and a rolling packet capture on the receiver
# (gw2) kept on the first mismatch. Run as root.
#
#   scripts/soak.sh [--stack native|uml|lkl|mptcpize|all] [--minutes N | --bytes N]
#                   [--checksum] [--no-load] [--out DIR] [--ring-mb N] [--ring-files N]
#   scripts/soak.sh --self-test
#
# --stack     native, uml, lkl: the load client in gw1 under dropshim on
#             that backend; mptcpize: no dropshim at all, client and server
#             under `mptcpize run`; all (default): each in turn.
# --minutes   run each stack this long (the run in progress finishes).
# --bytes     move this many bytes per stack (default 50000000000, the
#             brief's 50 GB bar).
# --checksum  net.mptcp.checksum_enabled=1 in the receiver's namespace;
#             the server then checks every connection had checksums on.
# --no-load   no CPU burners (default: one busy loop per CPU, at nice 10,
#             so the CPUs stay full and the soak still progresses).
# --self-test a short native run whose load server alters one byte on
#             purpose: passes if the mismatch is reported and the capture,
#             report and counters are kept.
#
# Each stack runs its test (tests/tests/reliability*.rs) with the soak
# knobs of tests/src/reliability.rs (soak_path_cuts); the RELIABILITY_*
# size knobs of scripts/reliability-long.sh apply too. Output, per stack,
# in --out (default soak-out/<timestamp>/<stack>/): test.log, progress,
# result, counters (MPTcpExt deltas of gw1's and gw2's namespaces), and on
# a mismatch or failure, mismatch (the server's report: connection, offset,
# data sequence number, expected and received bytes) and capture/ (the
# ring files, tcpdump -r readable). A clean stack's capture is deleted.
# Prints one line per stack; exits 1 if any stack had a mismatch or failed.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "soak: $*" >&2
  exit 2
}
whole() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 wants a whole number, not '$2'"; }

stacks=(native uml lkl mptcpize)
minutes=""
bytes=""
checksum=0
load=1
out=""
ring_mb=200
ring_files=10
self_test=0
while (($#)); do
  case "$1" in
    --stack)
      [[ $# -ge 2 ]] || die "--stack wants a value"
      case "$2" in
        native | uml | lkl | mptcpize) stacks=("$2") ;;
        all) stacks=(native uml lkl mptcpize) ;;
        *) die "--stack: native, uml, lkl, mptcpize or all, not '$2'" ;;
      esac
      shift 2
      ;;
    --minutes) [[ $# -ge 2 ]] || die "--minutes wants a value"; whole --minutes "$2"; minutes=$2; shift 2 ;;
    --bytes) [[ $# -ge 2 ]] || die "--bytes wants a value"; whole --bytes "$2"; bytes=$2; shift 2 ;;
    --checksum) checksum=1; shift ;;
    --no-load) load=0; shift ;;
    --out) [[ $# -ge 2 ]] || die "--out wants a folder"; out=$2; shift 2 ;;
    --ring-mb) [[ $# -ge 2 ]] || die "--ring-mb wants a value"; whole --ring-mb "$2"; ring_mb=$2; shift 2 ;;
    --ring-files) [[ $# -ge 2 ]] || die "--ring-files wants a value"; whole --ring-files "$2"; ring_files=$2; shift 2 ;;
    --self-test) self_test=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $minutes && -n $bytes ]] && die "--minutes or --bytes, not both"
((ring_mb > 0 && ring_files > 0)) || die "--ring-mb and --ring-files must be above 0"
if ((self_test)); then
  # Short: one run of 16 connections is enough to reach the altered byte.
  stacks=(native)
  bytes=1
  minutes=""
  export RELIABILITY_CONNS="${RELIABILITY_CONNS:-16}"
  export RELIABILITY_FAULT_MAX_SIZE="${RELIABILITY_FAULT_MAX_SIZE:-8388608}"
  export RELIABILITY_MIN_FAULTS="${RELIABILITY_MIN_FAULTS:-1}"
fi
[[ -z $minutes && -z $bytes ]] && bytes=50000000000
[[ $EUID -eq 0 ]] || die "run as root (namespaces, packet capture)"
command -v tcpdump >/dev/null || die "tcpdump not found; scripts/setup.sh installs it"

target="${CARGO_TARGET_DIR:-$PWD/target}"
export DROPSHIM_TARGET_DIR="${DROPSHIM_TARGET_DIR:-$target/release}"
out="${out:-soak-out/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Built before the clock starts: only the soak itself is timed.
cargo build --release --workspace --quiet
cargo test --release -p dropshim-tests --no-run --quiet
for s in "${stacks[@]}"; do
  case "$s" in
    uml) backend-uml/build-kernel.sh >/dev/null ;;
    lkl) backend-lkl/build-lkl.sh >/dev/null ;;
  esac
done

test_pid=""
capture_pid=""
burners=()
testbed_file=""

stop_capture() {
  if [[ -n $capture_pid ]]; then
    # SIGINT: tcpdump closes its current file properly.
    kill -INT -- "-$capture_pid" 2>/dev/null || true
    wait "$capture_pid" 2>/dev/null || true
    capture_pid=""
  fi
}

stop_burners() {
  local p
  for p in "${burners[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  burners=()
}

cleanup() {
  stop_capture
  if [[ -n $test_pid ]]; then
    # Interrupted mid-run: the test and everything it started (servers,
    # clients, the uml instance) share its process group.
    kill -TERM -- "-$test_pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$test_pid" 2>/dev/null || true
    wait "$test_pid" 2>/dev/null || true
    test_pid=""
    # A killed test leaves its testbed behind; it wrote the id.
    if [[ -n $testbed_file && -f $testbed_file ]]; then
      local id
      id=$(sed -n 's/^id=//p' "$testbed_file")
      [[ -n $id ]] && "$DROPSHIM_TARGET_DIR/dropshim" testbed down "$id" >/dev/null 2>&1 || true
    fi
  fi
  stop_burners
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

# user+nice+system+irq+softirq+steal and the total, from /proc/stat.
cpu_sample() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9; exit}' /proc/stat; }

field() { sed -n "s/.*\b$2=\([0-9]*\).*/\1/p" "$1" 2>/dev/null | tail -1; }

summary=()
failed=0
kept=""

run_stack() {
  local stack=$1 dir="$out/$1"
  local bin name
  case "$stack" in
    native) bin=reliability; name=reliability_path_cut_and_restored_during_load_loses_nothing ;;
    mptcpize) bin=reliability; name=reliability_mptcpize_path_cut_and_restored_during_load_loses_nothing ;;
    uml) bin=reliability_uml; name=reliability_uml_path_cut_and_restored_during_load_loses_nothing ;;
    lkl) bin=reliability_lkl; name=reliability_lkl_path_cut_and_restored_during_load_loses_nothing ;;
  esac
  mkdir -p "$dir/capture"
  testbed_file="$dir/testbed"
  local env=(RELIABILITY_SOAK_DIR="$dir" RELIABILITY_CHECKSUM="$checksum")
  [[ -n $minutes ]] && env+=(RELIABILITY_SOAK_SECONDS=$((minutes * 60)))
  [[ -n $bytes ]] && env+=(RELIABILITY_SOAK_BYTES="$bytes")
  ((self_test)) && env+=(RELIABILITY_FAKE_MISMATCH=1)

  if ((load)); then
    local i
    for ((i = 0; i < $(nproc); i++)); do
      nice -n 10 bash -c 'while :; do :; done' &
      burners+=($!)
    done
  fi
  local cpu0 started=$SECONDS
  cpu0=$(cpu_sample)
  # Its own process group, so an interrupt can end all it started.
  env "${env[@]}" setsid cargo test --release -q -p dropshim-tests --test "$bin" -- \
    --exact "$name" --nocapture --test-threads=1 >"$dir/test.log" 2>&1 &
  test_pid=$!

  # The test writes its testbed's namespaces, then waits for the capture.
  while [[ ! -f $dir/testbed ]] && kill -0 "$test_pid" 2>/dev/null; do sleep 0.2; done
  if [[ -f $dir/testbed ]]; then
    local ns
    ns=$(sed -n 's/^gw2_netns=//p' "$dir/testbed")
    # gw2 receives the uploads. -i any: a cut takes one of its links
    # down, which would end a capture bound to that interface. 200 bytes
    # hold the cooked header, IP, TCP with every MPTCP option (DSS, its
    # checksum) and the first payload bytes. --immediate-mode hands each
    # packet over as it comes (else the kernel holds a block up to a
    # second, lost when the capture stops) and -U writes it at once, so
    # the ring is complete even if the namespace goes first.
    setsid ip netns exec "$ns" tcpdump -i any -n -s 200 -B 16384 --immediate-mode -U -Z root \
      -C "$ring_mb" -W "$ring_files" -w "$dir/capture/gw2.pcap" tcp \
      >"$dir/capture.log" 2>&1 &
    capture_pid=$!
    local t
    for ((t = 0; t < 100; t++)); do
      grep -q "listening on" "$dir/capture.log" 2>/dev/null && break
      kill -0 "$capture_pid" 2>/dev/null || break
      sleep 0.1
    done
    grep -q "listening on" "$dir/capture.log" 2>/dev/null || echo "soak: $stack: the capture did not start: $(cat "$dir/capture.log")" >&2
    touch "$dir/capture-ready"
  fi
  # The first mismatch stops the capture at once: its packets are then
  # in the ring and no rotation can push them out.
  while kill -0 "$test_pid" 2>/dev/null; do
    # The test is done and waits for the capture to stop before it
    # removes the namespace the capture runs in.
    if [[ -f $dir/result && ! -f $dir/capture-stopped ]]; then
      stop_capture
      touch "$dir/capture-stopped"
    fi
    if [[ -n $capture_pid && -s $dir/mismatch ]]; then
      # The wrong bytes were received before the server saw them; a
      # moment more takes in what the stack answered (acks, resets).
      sleep 0.5
      stop_capture
      echo "soak: $stack: mismatch: $(head -1 "$dir/mismatch")" >&2
    fi
    sleep 0.2
  done
  local rc=0
  wait "$test_pid" || rc=$?
  test_pid=""
  stop_capture
  local cpu1
  cpu1=$(cpu_sample)
  stop_burners
  local elapsed=$((SECONDS - started))
  local busy
  busy=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{split(a,x," ");split(b,y," ");t=y[2]-x[2];printf "%d", (t > 0 ? 100 * (y[1] - x[1]) / t : 0)}')

  local tally="$dir/result"
  [[ -f $tally ]] || tally="$dir/progress"
  local moved cuts served csum
  moved=$(field "$tally" bytes)
  cuts=$(field "$tally" cuts)
  served=$(field "$tally" served)
  csum=$(field "$tally" csum)
  local mismatches=0
  [[ -f $dir/mismatch ]] && mismatches=$(wc -l <"$dir/mismatch")
  # A download (gw2 to gw1) that differs is seen by the client only.
  mismatches=$((mismatches + $(grep -c "download digest differs" "$dir/test.log" || true)))

  local verdict=ok
  if ((rc != 0 || mismatches > 0)); then
    verdict="FAILED (test exit $rc; see $dir/test.log)"
    ((mismatches > 0)) && verdict="MISMATCH (capture and report kept in $dir)"
    failed=1
    kept="$dir"
    {
      echo "stack $stack, test exit $rc"
      [[ -f $dir/mismatch ]] && { echo "--- the server's report:"; cat "$dir/mismatch"; }
      echo "--- MPTcpExt deltas (gw1: the host namespace; on uml and lkl its MPTCP is in the guest):"
      cat "$dir/counters" 2>/dev/null || echo "(not written)"
      echo "--- capture files:"
      ls -l "$dir/capture"
      echo "--- the test's last words:"
      grep -v "^\s*$" "$dir/test.log" | tail -20
    } >"$dir/report.txt"
  else
    rm -rf "$dir/capture"
  fi
  local sums="off"
  ((checksum)) && sums="on (${csum:-0} of ${served:-0} connections)"
  local burn="burners off"
  ((load)) && burn="burners on"
  summary+=("$(printf 'soak %-8s %7s GB moved, %4s cuts, cpu %3s%% (%s), checksums %s, mismatches %s, %ss: %s' \
    "$stack" "$(awk -v b="${moved:-0}" 'BEGIN{printf "%.2f", b/1e9}')" "${cuts:-0}" "$busy" "$burn" \
    "$sums" "$mismatches" "$elapsed" "$verdict")")
}

for s in "${stacks[@]}"; do
  run_stack "$s"
done
printf '%s\n' "${summary[@]}"

if ((self_test)); then
  # The altered byte must have been reported, the run failed, and the
  # evidence kept: ring files with packets in them, report, counters.
  dir="$out/native"
  ok=1
  grep -q "differs at offset" "$dir/mismatch" 2>/dev/null || { echo "self-test: no mismatch reported" >&2; ok=0; }
  grep -q "dsn [0-9]" "$dir/mismatch" 2>/dev/null || { echo "self-test: the report has no data sequence number" >&2; ok=0; }
  [[ -s $dir/counters ]] || { echo "self-test: no counters" >&2; ok=0; }
  [[ -s $dir/report.txt ]] || { echo "self-test: no report" >&2; ok=0; }
  packets=0
  for f in "$dir"/capture/gw2.pcap*; do
    [[ -f $f ]] && packets=$((packets + $(tcpdump -r "$f" -n 2>/dev/null | wc -l)))
  done
  ((packets > 0)) || { echo "self-test: the capture holds no packets" >&2; ok=0; }
  if ((ok)); then
    echo "self-test: ok: mismatch reported, $packets packets kept in $dir/capture"
    echo "self-test: $(head -1 "$dir/mismatch")"
    exit 0
  fi
  echo "self-test: FAILED" >&2
  exit 1
fi
if ((failed)); then
  echo "soak: failed; evidence in $kept" >&2
  exit 1
fi
