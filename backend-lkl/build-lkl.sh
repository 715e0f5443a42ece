#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Builds dropshim's Linux Kernel Library from Debian's linux-source-6.12 and
# the lkl architecture port in ./kernel (GPL-2.0), unattended.
#
# Output (printed on stdout as the last line): a directory holding
#   lkl.o        one relocatable object; only lkl_* entry points are global
#   liblkl.a     the same object as a static library
#   liblkl.so    the same as a shared object with no dependencies
#   lkl_host.h   the C contract between host and library
#
# Results are cached outside the source tree, keyed by a hash of every input
# (kernel tarball, port sources, configuration, this script, compiler), and
# rebuilt only when an input changes. The unpacked kernel tree is kept per
# tarball so that a change to the port rebuilds incrementally.
#
# Environment: DROPSHIM_LKL_CACHE (default /var/cache/dropshim/lkl, or
# $XDG_CACHE_HOME/dropshim/lkl when that is not writable), LKL_LINUX_TARBALL
# (default /usr/src/linux-source-6.12.tar.xz), LKL_JOBS (default: nproc).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
port="$here/kernel"
# dropshim's MPTCP packet schedulers (GPL-2.0), shared with the uml kernel
schedulers="$here/../kernel/mptcp-schedulers"
tarball=${LKL_LINUX_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
jobs=${LKL_JOBS:-$(nproc)}

die() { echo "build-lkl.sh: $*" >&2; exit 1; }

[ -f "$schedulers/apply.sh" ] || die "$schedulers/apply.sh not found; run the script from the source tree (backend-lkl/build-lkl.sh)"
[ -r "$tarball" ] || die "kernel source $tarball not found; install it with: apt-get install linux-source-6.12 (or set LKL_LINUX_TARBALL)"
for tool in make gcc ld objcopy ar flex bison bc sha256sum flock; do
	command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool'; install: apt-get install build-essential bc flex bison libelf-dev"
done

cache=${DROPSHIM_LKL_CACHE:-/var/cache/dropshim/lkl}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
	cache="${XDG_CACHE_HOME:-$HOME/.cache}/dropshim/lkl"
	mkdir -p "$cache" || die "cannot create a cache directory ($cache)"
fi

# The tarball is identified by size and mtime (hashing 150 MB each time
# would cost more than it protects against); everything else by content.
tar_id=$(stat -c '%s-%Y' "$tarball")
key=$( {
	echo "tarball $tarball $tar_id"
	gcc --version | head -n1
	ld --version | head -n1
	cat "$0"
	(cd "$port" && find . -type f | LC_ALL=C sort | xargs sha256sum)
	(cd "$schedulers" && LC_ALL=C sha256sum apply.sh ./*.patch ./*.c ./*.h)
} | sha256sum | cut -c1-16)
out="$cache/out-$key"

if [ -f "$out/liblkl.so" ]; then
	echo "$out"
	exit 0
fi
# Programs booting the library ask with LKL_NO_BUILD=1: a build takes
# minutes and must never happen inside a program's socket() call.
if [ -n "${LKL_NO_BUILD:-}" ]; then
	echo "build-lkl.sh: the Linux Kernel Library is not built yet; run $0 (about 4 minutes)" >&2
	exit 3
fi

exec 9>"$cache/.lock"
flock 9
if [ -f "$out/liblkl.so" ]; then
	echo "$out"
	exit 0
fi

# The tree carries the schedulers' hook-up, so it is not the plain tree
# (linux-<hash of the tarball alone>) older versions of this script used.
tree="$cache/linux-$(echo "$tarball $tar_id mptcp-schedulers" | sha256sum | cut -c1-16)"
if [ ! -f "$tree/.unpacked" ]; then
	echo "build-lkl.sh: unpacking $tarball" >&2
	rm -rf "$tree"
	mkdir -p "$tree"
	tar -xJf "$tarball" -C "$tree" --strip-components=1
	touch "$tree/.unpacked"
fi

# Lay the port on; -c compares contents so unchanged files keep their
# timestamps and make rebuilds only what changed.
rsync -rc --delete "$port/arch/lkl/" "$tree/arch/lkl/"
sh "$schedulers/apply.sh" "$tree"

log="$cache/build-$key.log"
echo "build-lkl.sh: building (log: $log)" >&2
start=$(date +%s)
(
	cd "$tree"
	cp "$port/lkl.config" .lkl.config
	make ARCH=lkl KCONFIG_ALLCONFIG=.lkl.config allnoconfig
	for opt in CONFIG_LKL CONFIG_NET CONFIG_INET CONFIG_IPV6 CONFIG_MPTCP \
		CONFIG_MPTCP_IPV6 CONFIG_VIRTIO_MMIO CONFIG_VIRTIO_NET CONFIG_PROC_SYSCTL; do
		grep -q "^$opt=y" .config || { echo "configuration lacks $opt=y" >&2; exit 1; }
	done
	make ARCH=lkl -j"$jobs" vmlinux
) >"$log" 2>&1 || { tail -n 40 "$log" >&2; die "kernel build failed, full log in $log"; }

tmp="$cache/tmp-$key"
rm -rf "$tmp"
mkdir -p "$tmp"
objcopy -G lkl_start_kernel -G lkl_syscall -G lkl_trigger_irq \
	"$tree/vmlinux" "$tmp/lkl.o"
undefined=$(nm -u "$tmp/lkl.o" | awk '$2 != "_GLOBAL_OFFSET_TABLE_" {print $2}' | tr '\n' ' ')
[ -z "$undefined" ] || die "the library has undefined symbols: $undefined"
ar rcs "$tmp/liblkl.a" "$tmp/lkl.o"
gcc -shared -nostdlib -Wl,-soname,liblkl.so -Wl,-z,noexecstack \
	-o "$tmp/liblkl.so" "$tmp/lkl.o"
cp "$port/arch/lkl/include/uapi/asm/lkl_host.h" "$tmp/"
echo "built in $(( $(date +%s) - start )) s" >"$tmp/build-time"
rm -rf "$out"
mv "$tmp" "$out"
echo "build-lkl.sh: done in $(( $(date +%s) - start )) s" >&2
echo "$out"
