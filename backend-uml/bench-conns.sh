#!/bin/bash
# Many concurrent connections to a server in one UML instance: does the
# instance hold them, with how many host processes and threads, and how
# much memory per idle connection.
#
# The unshaped two-gateways testbed; gw1's two links belong to a UML
# instance; `dropshim-rr server` runs in gw1 under libdropshim.so on the
# uml backend (its sockets live in the instance), the clients in gw2 are
# native MPTCP programs (mptcpize). Two phases:
#   idle: N connections opened one after the other, each echoing 64
#         random bytes (checked), then held; the instance's host processes
#         are measured; then each echoes 64 bytes again (checked).
#   busy: `dropshim-rr client --conns N`: N connections all open, each
#         doing 64-byte round trips for SECONDS, every echoed byte checked.
#
# Usage: bench-conns.sh TARGET_DIR [N] [SECONDS]
#   TARGET_DIR holds dropshim, dropshim-uml, dropshim-rr, libdropshim.so.
# Root needed. Addresses 198.18.0.0/15 only, inside namespaces made here.
# Memory is the growth of the instance's resident set (the UML kernel's
# host processes: guest pages touched), an upper bound of what the
# connections hold in the guest.
set -eu
T=${1:?usage: bench-conns.sh TARGET_DIR [N] [SECONDS]}
T=$(cd "$T" && pwd)
N=${2:-1000}
SECS=${3:-8}
for f in dropshim dropshim-uml dropshim-rr libdropshim.so; do
    [ -e "$T/$f" ] || { echo "bench-conns: $T/$f is missing: cargo build --release --workspace" >&2; exit 2; }
done
command -v mptcpize >/dev/null || { echo "bench-conns: mptcpize is missing: bash scripts/setup.sh" >&2; exit 2; }
ID=bc$$
work=$(mktemp -d)
G1=ds-$ID-gw1
G2=ds-$ID-gw2
CFG=$work/dev.toml
cleanup() {
    exec 7>&- 2>/dev/null || true
    [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null
    ip netns exec "$G1" "$T/dropshim" down --config "$CFG" >/dev/null 2>&1 || true
    "$T/dropshim" testbed down "$ID" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
"$T/dropshim" testbed up two-gateways --id "$ID" >/dev/null
ip -n "$G1" addr flush dev link1
ip -n "$G1" addr flush dev link2
cat >"$CFG" <<TOML
[device]
name = "$ID"
backend = "uml"

[[interfaces]]
name = "link1"
addresses = ["198.18.1.1/24"]

[[interfaces]]
name = "link2"
addresses = ["198.18.2.1/24"]
endpoint = ["subflow"]

[mptcp]
limits = { subflows = 2, add_addr_accepted = 2 }
TOML
ip netns exec "$G1" "$T/dropshim" up --config "$CFG" >/dev/null
RUN=/run/dropshim/uml/$ID
kpid=$(cat "$RUN/kernel.pid")
spid=$(cat "$RUN/supervisor.pid")

instance() { # host processes, threads and resident KiB of the UML kernel and its descendants
    local pids=$kpid frontier=$kpid next p th=0 rss=0 np=0
    while [ -n "$frontier" ]; do
        next=""
        for p in $frontier; do next="$next $(cat /proc/"$p"/task/*/children 2>/dev/null)"; done
        frontier=$(echo $next)
        pids="$pids $frontier"
    done
    for p in $pids; do
        [ -r /proc/"$p"/status ] || continue
        np=$((np + 1))
        th=$((th + $(awk '/^Threads/{print $2}' /proc/"$p"/status)))
        rss=$((rss + $(awk '/^VmRSS/{print $2}' /proc/"$p"/status)))
    done
    echo "$np $th $rss $(awk '/^Threads/{print $2}' /proc/"$spid"/status)"
}

cat >"$work/idle.py" <<'PY'
import os, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks, t0 = [], time.monotonic()
for i in range(n):
    try:
        socks.append(socket.create_connection((host, port), timeout=30))
    except OSError as e:
        sys.exit("connection %d of %d failed after %.1f s: %s" % (i + 1, n, time.monotonic() - t0, e))
def check(round_):
    sent = []
    for s in socks:
        m = os.urandom(64)
        s.sendall(m)
        sent.append(m)
    for s, m in zip(socks, sent):
        got = b""
        while len(got) < 64:
            chunk = s.recv(64 - len(got))
            if not chunk:
                sys.exit("a connection closed in round %d" % round_)
            got += chunk
        if got != m:
            sys.exit("an echo differs in round %d" % round_)
check(1)
print("ready %d %.2f" % (n, time.monotonic() - t0), flush=True)
sys.stdin.readline()
check(2)
print("checked %d" % (n * 64 * 4), flush=True)
PY

port=$((30000 + RANDOM % 10000))
ip netns exec "$G1" env LD_PRELOAD="$T/libdropshim.so" DROPSHIM_CONFIG="$CFG" \
    "$T/dropshim-rr" server --bind 198.18.1.1:$port >"$work/server.log" 2>&1 &
srv=$!
for _ in $(seq 300); do
    ip netns exec "$G2" python3 -c "import socket; socket.create_connection(('198.18.1.1', $port), timeout=1)" 2>/dev/null && break
    sleep 0.1
done
read -r np0 th0 rss0 sup0 <<<"$(instance)"

mkfifo "$work/go"
ip netns exec "$G2" mptcpize run python3 "$work/idle.py" 198.18.1.1 $port "$N" <"$work/go" >"$work/idle.out" 2>&1 &
idle=$!
exec 7>"$work/go"
deadline=$((SECONDS + 600))
until grep -q '^ready' "$work/idle.out" 2>/dev/null || ! kill -0 "$idle" 2>/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
if ! grep -q '^ready' "$work/idle.out"; then
    echo "idle: FAILED: $(tail -n 1 "$work/idle.out")"
    exit 1
fi
read -r _ n opened <<<"$(grep '^ready' "$work/idle.out")"
sleep 1
read -r np1 th1 rss1 sup1 <<<"$(instance)"
echo >&7
exec 7>&-
wait "$idle" || { echo "idle: FAILED: $(tail -n 1 "$work/idle.out")"; exit 1; }
echo "before:  instance host processes $np0, threads $th0, resident $((rss0 / 1024)) MiB; supervisor threads $sup0"
echo "idle:    $n connections opened in ${opened} s, every echo checked twice"
echo "         instance host processes $np1, threads $th1, resident $((rss1 / 1024)) MiB; supervisor threads $sup1"
echo "         $(((rss1 - rss0) / n)) KiB of instance memory per idle connection"

( sleep $((SECS / 2 + 2)); instance >"$work/busy" ) &
sampler=$!
ip netns exec "$G2" mptcpize run "$T/dropshim-rr" client --to 198.18.1.1:$port --count 10 --warmup 0 \
    --conns "$N" --tps-seconds "$SECS" --setups 0 >"$work/busy.json" 2>"$work/busy.err" ||
    { echo "busy: FAILED: $(tail -n 2 "$work/busy.err")"; exit 1; }
wait "$sampler" || true
read -r np2 th2 rss2 sup2 <"$work/busy"
python3 - "$work/busy.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["tps"][0]
print("busy:    %d connections, %.0f transactions/s (%d, every echo checked)" % (t["conns"], t["per_s"], t["transactions"]))
PY
echo "         instance host processes $np2, threads $th2, resident $((rss2 / 1024)) MiB; supervisor threads $sup2"
