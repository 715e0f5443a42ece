#!/usr/bin/env bash
# Builds the Debian package: target/debian/dropshim_VERSION_ARCH.deb.
#
#   scripts/package.sh [--no-build] [--version V] [--out DIR]
#
# It holds the command (/usr/bin/dropshim, with dropshim-uml and the
# dropshim-rr probe), libdropshim.so in the multiarch library folder (so
# `dropshim run` finds it with no LD_PRELOAD path), the Linux Kernel
# Library the lkl backend loads (when it is built: backend-lkl/build-lkl.sh),
# example device files and testbed specs under /usr/share/doc/dropshim,
# man pages and bash/zsh/fish completions generated from the command's
# own help. --no-build packages what target/release already holds.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
out=target/debian
while (($#)); do
  case "$1" in
    --no-build) build=0 ;;
    --version) version=${2:?--version needs a value}; shift ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    *) echo "package.sh: unknown argument $1 (--no-build, --version V, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "package.sh: dpkg-deb not found (Debian's dpkg)" >&2; exit 1; }

if [ "$build" = 1 ]; then
  cargo build --release --workspace --quiet
fi
rel=${CARGO_TARGET_DIR:-target}/release
for f in dropshim dropshim-uml dropshim-rr libdropshim.so; do
  [ -f "$rel/$f" ] || { echo "package.sh: $rel/$f is missing; run without --no-build" >&2; exit 1; }
done

arch=$(dpkg --print-architecture)
multiarch=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -D -m755 "$rel/dropshim" "$stage/usr/bin/dropshim"
install -D -m755 "$rel/dropshim-uml" "$stage/usr/bin/dropshim-uml"
install -D -m755 "$rel/dropshim-rr" "$stage/usr/bin/dropshim-rr"
install -D -m644 "$rel/libdropshim.so" "$stage/usr/lib/$multiarch/libdropshim.so"
if lkl=$(LKL_NO_BUILD=1 backend-lkl/build-lkl.sh 2>/dev/null) && [ -f "$lkl/liblkl.so" ]; then
  install -D -m644 "$lkl/liblkl.so" "$stage/usr/lib/$multiarch/dropshim/liblkl.so"
else
  echo "package.sh: the Linux Kernel Library is not built; the package's lkl backend will say so (run backend-lkl/build-lkl.sh first to include it)" >&2
fi
strip --strip-debug "$stage/usr/bin/"* "$stage/usr/lib/$multiarch/"*.so
find "$stage/usr/lib/$multiarch" -name liblkl.so -exec strip --strip-debug {} +

doc="$stage/usr/share/doc/dropshim"
install -D -m644 README.md "$doc/README.md"
install -d "$doc/examples" "$doc/testbeds"
install -m644 conf/examples/*.toml "$doc/examples/"
install -m644 conf/testbeds/*.toml "$doc/testbeds/"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dropshim

Files: *
License: MIT or Apache-2.0

Files: usr/lib/$multiarch/dropshim/liblkl.so
License: GPL-2.0
Comment: Linux 6.12 built as a library with dropshim's arch/lkl port; its
 source (the port and the build script) is part of dropshim's source
 tree, backend-lkl/kernel and backend-lkl/build-lkl.sh.
COPYRIGHT

"$rel/dropshim" generate --man "$stage/man" --completions "$stage/completions"
install -d "$stage/usr/share/man/man1"
for page in "$stage"/man/*.1; do
  gzip -9n -c "$page" > "$stage/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m644 "$stage/completions/dropshim.bash" "$stage/usr/share/bash-completion/completions/dropshim"
install -D -m644 "$stage/completions/_dropshim" "$stage/usr/share/zsh/vendor-completions/_dropshim"
install -D -m644 "$stage/completions/dropshim.fish" "$stage/usr/share/fish/vendor_completions.d/dropshim.fish"
rm -rf "$stage/man" "$stage/completions"

install -d "$stage/DEBIAN"
size=$(du -sk "$stage/usr" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: dropshim
Version: $version
Architecture: $arch
Maintainer: dropshim maintainers <maintainers@dropshim.invalid>
Installed-Size: $size
Depends: libc6, iproute2
Recommends: linux-source-6.12, bc, flex, bison, libelf-dev, build-essential
Suggests: iperf3, curl, mptcpize
Section: net
Priority: optional
Description: Multipath TCP for programs you cannot change
 dropshim is an LD_PRELOAD library and a command that move unmodified
 programs' TCP onto Multipath TCP, on the host kernel's MPTCP (native),
 a User Mode Linux kernel (uml) or a Linux Kernel Library in the
 process (lkl), chosen per device in a TOML file. The uml backend builds
 its kernel from linux-source-6.12 on first use.
CONTROL

mkdir -p "$out"
deb="$out/dropshim_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
