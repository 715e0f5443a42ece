#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Lays dropshim's MPTCP packet schedulers onto a Linux 6.12 source tree:
# copies the scheduler sources into net/mptcp/ and applies the patches of
# this folder (hook-up in net/mptcp/Makefile and protocol.h).
#
# Idempotent on a tree that is built again and again: the first run keeps
# a pristine copy of net/mptcp/ in TREE/.dropshim-pristine-mptcp; every
# run rebuilds the result from that copy in a scratch folder and copies
# back only the files whose content changed, so make recompiles only those.
#
# Usage: apply.sh TREE
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tree=${1:?usage: apply.sh LINUX_TREE}
die() { echo "mptcp-schedulers/apply.sh: $*" >&2; exit 1; }

[ -f "$tree/net/mptcp/sched.c" ] || die "$tree has no net/mptcp/sched.c; is it a Linux 6.12 tree?"
pristine="$tree/.dropshim-pristine-mptcp"
if [ ! -d "$pristine" ]; then
	rm -rf "$pristine.tmp"
	cp -a "$tree/net/mptcp" "$pristine.tmp"
	mv "$pristine.tmp" "$pristine"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
mkdir -p "$stage/net"
cp -a "$pristine" "$stage/net/mptcp"
cp "$here"/*.c "$here"/*.h "$stage/net/mptcp/"
for p in "$here"/*.patch; do
	(cd "$stage" && patch -p1 -s --forward) < "$p" >&2 || die "patch $p does not apply to $tree"
done
# copy back what differs, keeping the timestamps of unchanged files
for f in "$stage"/net/mptcp/*; do
	name=$(basename "$f")
	[ -f "$f" ] || continue
	cmp -s "$f" "$tree/net/mptcp/$name" 2>/dev/null || cp "$f" "$tree/net/mptcp/$name"
done
