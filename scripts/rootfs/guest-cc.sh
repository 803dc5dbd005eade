#!/usr/bin/env bash
# guest-cc.sh ARCH OUT SRC.c [extra cc flags...]
#
# Compiles one guest test program into a static musl binary for ARCH (x86_64 | aarch64):
#   * ARCH == host: Debian's musl-gcc (musl-tools), `musl-gcc -static -O2`.
#   * ARCH != host: Debian ships no musl cross compiler, so the target's musl-dev package is
#     fetched with fetch-deb.sh (a sysroot: headers, crt*.o, libc.a) and the GNU cross gcc
#     (e.g. aarch64-linux-gnu-gcc) is driven with -nostdinc/-nostdlib against it, which is
#     what the musl-gcc wrapper does for the host through its specs file.
# Both ways, the Linux UAPI headers (<linux/...>, <asm/...>) of the target's linux-libc-dev
# are on the include path after musl's, so guest tests can use raw kernel interfaces.
# The output is written to OUT.tmp and renamed, so a failed compile leaves nothing behind.
set -euo pipefail
prog=guest-cc
die() { echo "$prog: error: $*" >&2; exit 1; }

[ $# -ge 3 ] || die "usage: $0 ARCH OUT SRC.c [cflags...]"
arch=$1 out=$2 src=$3
shift 3
[ -f "$src" ] || die "no such source file: $src"
here=$(cd "$(dirname "$0")" && pwd)
fetch=$here/../fetch-deb.sh

case $arch in
  x86_64) debarch=amd64 ;;
  aarch64) debarch=arm64 ;;
  *) die "ARCH must be x86_64 or aarch64, not '$arch'" ;;
esac
host=$(uname -m)
triple=$arch-linux-gnu

# Kernel UAPI headers: linux/, asm-generic/, ... plus the arch's asm/ under one directory.
kdev=$("$fetch" linux-libc-dev "$debarch" 2>/dev/null) \
  || die "cannot fetch linux-libc-dev:$debarch (run scripts/fetch-deb.sh linux-libc-dev $debarch to see why)"
kinc=$(dirname "$out")/.kinclude-$arch
mkdir -p "$(dirname "$out")"
exec 8>"$kinc.lock"   # parallel compiles (make -j) share this directory
flock 8
if [ ! -e "$kinc/.from" ] || [ "$(cat "$kinc/.from")" != "$kdev $(cat "$kdev/.kbox-version")" ]; then
  rm -rf "$kinc" && mkdir -p "$kinc"
  for d in "$kdev"/usr/include/*/; do
    name=$(basename "$d")
    [ "$name" = "$triple" ] || ln -s "$d" "$kinc/$name"
  done
  ln -s "$kdev/usr/include/$triple/asm" "$kinc/asm"
  echo "$kdev $(cat "$kdev/.kbox-version")" >"$kinc/.from"
fi
flock -u 8

cflags=(-static -O2 -Wall -pthread)
tmp=$out.tmp
trap 'rm -f "$tmp"' EXIT

if [ "$arch" = "$host" ]; then
  command -v musl-gcc >/dev/null || die "musl-gcc not found (apt-get install musl-tools, or make deps)"
  musl-gcc "${cflags[@]}" -idirafter "$kinc" "$@" -o "$tmp" "$src" || die "compiling $src failed"
else
  cc=$triple-gcc
  command -v "$cc" >/dev/null || die "$cc not found (apt-get install gcc-$triple, or make deps)"
  sysroot=$("$fetch" musl-dev "$debarch" 2>/dev/null) \
    || die "cannot fetch musl-dev:$debarch (run scripts/fetch-deb.sh musl-dev $debarch to see why)"
  lib=$sysroot/usr/lib/$arch-linux-musl
  inc=$sysroot/usr/include/$arch-linux-musl
  [ -f "$lib/libc.a" ] && [ -d "$inc" ] || die "musl-dev:$debarch in $sysroot lacks $lib/libc.a or $inc"
  gccinc=$("$cc" -print-file-name=include)
  # Static, non-PIE: crt1.o, crti.o, gcc's crtbeginT.o ... libc, libgcc ... crtend.o, crtn.o.
  "$cc" "${cflags[@]}" -no-pie -nostdinc -isystem "$inc" -isystem "$gccinc" -idirafter "$kinc" \
    -nostdlib "$@" -o "$tmp" \
    "$lib/crt1.o" "$lib/crti.o" "$("$cc" -print-file-name=crtbeginT.o)" \
    "$src" \
    -L"$lib" -Wl,--start-group -lc "$("$cc" -print-libgcc-file-name)" \
    "$("$cc" -print-file-name=libgcc_eh.a)" -Wl,--end-group \
    "$("$cc" -print-file-name=crtend.o)" "$lib/crtn.o" \
    || die "cross-compiling $src for $arch failed"
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "$prog: $arch $(basename "$src") -> $out" >&2
