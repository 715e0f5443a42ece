#!/bin/bash
# Side-by-side throughput of the uml backend against native MPTCP, and
# host CPU per GB. Two identical testbeds of namespaces (client ns with two
# veth links to a server ns), one whose client links a UML instance owns
# (iperf3 run under libdropshim.so, backend uml), one where the host
# kernel's MPTCP serves the client (mptcpize, the native reference).
#
# Usage: bench-uml.sh TARGET_DIR [RATE_MBIT|0] [SECONDS]
#   TARGET_DIR holds libdropshim.so, dropshim and dropshim-uml.
#   RATE_MBIT 0 = unshaped. Output: one line per stack and a ratio.
# Root needed. Addresses 198.18.0.0/15 only, inside namespaces made here.
set -eu
T=${1:?usage: bench-uml.sh TARGET_DIR [RATE_MBIT] [SECONDS]}
T=$(cd "$T" && pwd)
RATE=${2:-1000}
SECS=${3:-10}
tag=b$$
work=$(mktemp -d)
cleanup() {
    ip netns exec "${tag}u-c" "$T/dropshim" down --config "$work/dev.toml" >/dev/null 2>&1 || true
    for ns in "${tag}u-c" "${tag}u-s" "${tag}n-c" "${tag}n-s"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mk() { # mk PREFIX: client/server namespaces joined by two links
    local p=$1
    ip netns add "$p-c"; ip netns add "$p-s"
    for n in 1 2; do
        ip link add l$n netns "$p-c" type veth peer name l$n netns "$p-s"
        ip -n "$p-s" addr add 198.18.$n.2/24 dev l$n
        ip -n "$p-s" link set l$n up; ip -n "$p-c" link set l$n up
        if [ "$RATE" != 0 ]; then
            for side in c s; do
                ip netns exec "$p-$side" tc qdisc add dev l$n root tbf rate ${RATE}mbit burst 256kb latency 20ms
            done
        fi
    done
    ip -n "$p-c" link set lo up; ip -n "$p-s" link set lo up
    ip netns exec "$p-s" ip mptcp limits set subflows 2 add_addr_accepted 2
}

cpu_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# CPU jiffies of the UML instance (kernel and guest processes: one process group).
uml_jiffies() {
    local k; k=$(cat "/run/dropshim/uml/bench$$/kernel.pid" 2>/dev/null || echo 0)
    local t=0
    for p in $(pgrep -g "$k" 2>/dev/null); do
        t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo $t
}

run() { # run NS-PREFIX PORT CLIENT-PREFIX... -> "gbit cpu_s_per_GB"
    local p=$1 port=$2; shift 2
    ip netns exec "$p-s" mptcpize run iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    local srv=$!
    for _ in $(seq 100); do ip netns exec "$p-s" ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.05; done
    local j0; j0=$(cpu_jiffies); local u0; u0=$(uml_jiffies)
    "$@" iperf3 -c 198.18.1.2 -p "$port" -t "$SECS" -J > "$work/out.json"
    local j1; j1=$(cpu_jiffies); local u1; u1=$(uml_jiffies)
    wait $srv || true
    python3 - "$work/out.json" "$j0" "$j1" "$u0" "$u1" <<'EOF'
import json, sys, os
d = json.load(open(sys.argv[1]))
if "error" in d: sys.exit("iperf3: " + d["error"])
r = d["end"]["sum_received"]
hz = os.sysconf("SC_CLK_TCK")
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / hz
gb = r["bytes"] / 1e9
uml = (int(sys.argv[5]) - int(sys.argv[4])) / hz
print(f"{r['bits_per_second']/1e9:.3f} {cpu/gb:.2f} {uml/gb:.2f}")
EOF
}

mk "${tag}n"
ip netns exec "${tag}n-c" sh -c 'ip addr add 198.18.1.1/24 dev l1; ip addr add 198.18.2.1/24 dev l2;
  ip mptcp limits set subflows 2 add_addr_accepted 2; ip mptcp endpoint add 198.18.2.1 dev l2 subflow'
mk "${tag}u"
cat > "$work/dev.toml" <<EOF
[device]
name = "bench$$"
backend = "uml"

[[interfaces]]
name = "l1"
addresses = ["198.18.1.1/24"]

[[interfaces]]
name = "l2"
addresses = ["198.18.2.1/24"]
endpoint = ["subflow"]

[mptcp]
limits = { subflows = 2, add_addr_accepted = 2 }
EOF
ip netns exec "${tag}u-c" "$T/dropshim" up --config "$work/dev.toml" >/dev/null

native=$(run "${tag}n" 5301 ip netns exec "${tag}n-c" mptcpize run)
uml=$(run "${tag}u" 5302 ip netns exec "${tag}u-c" env LD_PRELOAD="$T/libdropshim.so" DROPSHIM_CONFIG="$work/dev.toml")
read -r ng nc _ <<<"$native"
read -r ug uc uu <<<"$uml"
echo "rate=${RATE}mbit x2 secs=$SECS"
echo "native MPTCP: ${ng} Gbit/s, host CPU ${nc} s/GB"
echo "uml MPTCP:    ${ug} Gbit/s, host CPU ${uc} s/GB (of which the UML instance ${uu} s/GB)"
python3 -c "print(f'uml/native = {float(\"$ug\")/float(\"$ng\"):.3f}')"
