#!/bin/sh
# Builds the User Mode Linux kernel the uml backend boots, from Debian's
# linux-source-6.12, with MPTCP (IPv4 and IPv6), the vector network driver
# and hostfs. The same kernel runs the testbed's link emulator, hence the
# bridge and netem (packet scheduler) options.
#
# Why our own build: Debian's `user-mode-linux` package is built WITHOUT
# CONFIG_MPTCP, so it cannot carry a device's Multipath TCP.
#
# Idempotent and unattended: the result is cached outside the source tree
# under $DROPSHIM_UML_CACHE (default /var/cache/dropshim/uml), keyed by a
# hash of everything that decides the output (source tarball, this
# script's config fragment, architecture). A second run prints the cached
# path at once. The last line on stdout is always the kernel's path.
#
# Patches in backend-uml/kernel/patches/ (GPL-2.0, see its COPYING) are
# applied to the source first, in name order; $DROPSHIM_UML_PATCHES names
# another folder (the dropshim-uml binary writes its embedded copies to one,
# since it feeds this script on stdin). They are part of the cache key.
#
# dropshim's MPTCP packet schedulers (kernel/mptcp-schedulers, GPL-2.0,
# shared with the lkl build) are laid on by their apply.sh;
# $DROPSHIM_MPTCP_SCHEDULERS names another copy of that folder. Also part
# of the cache key.
#
# Usage: build-kernel.sh            (build if needed, print the path)
#        build-kernel.sh --path     (print the path it would use; exit 1 if not built)
# Needs: apt-get install linux-source-6.12 bc flex bison libelf-dev build-essential
set -eu

SRC_TARBALL=${DROPSHIM_UML_SOURCE:-/usr/src/linux-source-6.12.tar.xz}
CACHE_ROOT=${DROPSHIM_UML_CACHE:-/var/cache/dropshim/uml}
JOBS=${DROPSHIM_UML_JOBS:-$(nproc 2>/dev/null || echo 2)}

# Options on top of `make ARCH=um defconfig`. Changing this list changes
# the cache key, so an old kernel is never mistaken for a new one.
CONFIG_FRAGMENT="
-e MPTCP -e MPTCP_IPV6 -e IPV6 -e INET_DIAG -e INET_TCP_DIAG -e INET_MPTCP_DIAG
-e UML_NET_VECTOR -e HOSTFS -e UNIX -e INET -e TCP_CONG_CUBIC
-e PROC_FS -e SYSFS -e TMPFS -e DEVTMPFS
-e NET_SCHED -e NET_SCH_NETEM -e BRIDGE
-d DEBUG_INFO -d DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT -e DEBUG_INFO_NONE
"

die() { echo "build-kernel.sh: $*" >&2; exit 1; }

if [ -n "${DROPSHIM_UML_PATCHES:-}" ]; then
    PATCH_DIR=$DROPSHIM_UML_PATCHES
else
    PATCH_DIR=$(cd "$(dirname "$0")" && pwd)/kernel/patches
fi
ls "$PATCH_DIR"/*.patch >/dev/null 2>&1 || die "no kernel patches in $PATCH_DIR; run the script from the source tree (backend-uml/build-kernel.sh) or set DROPSHIM_UML_PATCHES"
patches_id=$(cat "$PATCH_DIR"/*.patch | sha256sum | cut -c1-16)
if [ -n "${DROPSHIM_MPTCP_SCHEDULERS:-}" ]; then
    SCHED_DIR=$DROPSHIM_MPTCP_SCHEDULERS
else
    SCHED_DIR=$(cd "$(dirname "$0")" && pwd)/../kernel/mptcp-schedulers
fi
[ -f "$SCHED_DIR/apply.sh" ] || die "no MPTCP schedulers in $SCHED_DIR; run the script from the source tree (backend-uml/build-kernel.sh) or set DROPSHIM_MPTCP_SCHEDULERS"
patches_id="$patches_id $(cd "$SCHED_DIR" && LC_ALL=C sha256sum apply.sh ./*.patch ./*.c ./*.h | sha256sum | cut -c1-16)"

[ -r "$SRC_TARBALL" ] || die "kernel source $SRC_TARBALL not found; install it with: apt-get install linux-source-6.12 bc flex bison libelf-dev build-essential"

# The tarball's identity (size, mtime, name) stands in for its content:
# hashing 150 MB on every `dropshim up` would cost a second for nothing.
tar_id=$(stat -c '%n %s %Y' "$SRC_TARBALL")
key=$(printf '%s\n%s\n%s\n%s\n' "$tar_id" "$CONFIG_FRAGMENT" "$(uname -m)" "$patches_id" | sha256sum | cut -c1-16)
out_dir="$CACHE_ROOT/$key"
kernel="$out_dir/linux"

if [ "${1:-}" = "--path" ]; then
    echo "$kernel"
    [ -x "$kernel" ]
    exit
fi

if [ -x "$kernel" ]; then
    echo "$kernel"
    exit 0
fi

for tool in make gcc bc flex bison tar xz patch; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing; install: apt-get install bc flex bison libelf-dev build-essential xz-utils"
done

mkdir -p "$CACHE_ROOT"
# One build at a time per key, even if two `dropshim up` race.
exec 9>"$CACHE_ROOT/.lock-$key"
flock 9
if [ -x "$kernel" ]; then
    echo "$kernel"
    exit 0
fi

work=$(mktemp -d "$CACHE_ROOT/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

echo "build-kernel.sh: building the UML kernel in $work (a few minutes)" >&2
tar -xf "$SRC_TARBALL" -C "$work" --strip-components=1
cd "$work"
for p in "$PATCH_DIR"/*.patch; do
    patch -p1 -s --forward < "$p" >&2 || die "patch $p does not apply to $SRC_TARBALL"
done
sh "$SCHED_DIR/apply.sh" "$work" >&2
make -s ARCH=um defconfig >&2
# shellcheck disable=SC2086 # the fragment is a list of words on purpose
scripts/config $CONFIG_FRAGMENT
make -s ARCH=um olddefconfig >&2
for opt in MPTCP MPTCP_IPV6 UML_NET_VECTOR HOSTFS INET_MPTCP_DIAG NET_SCHED NET_SCH_NETEM BRIDGE; do
    grep -q "^CONFIG_$opt=y" .config || die "CONFIG_$opt did not stick in the UML config; see $work/.config"
done
grep -q "^CONFIG_HZ=1000$" .config || die "CONFIG_HZ is not 1000 (patch 0002); see $work/.config"
make -s ARCH=um -j"$JOBS" linux >&2

mkdir -p "$out_dir"
cp .config "$out_dir/config"
cp linux "$out_dir/linux.tmp"
mv "$out_dir/linux.tmp" "$kernel"
echo "build-kernel.sh: done" >&2
echo "$kernel"
