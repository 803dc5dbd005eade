#!/usr/bin/env bash
# Builds the kernel library: our arch (lkl/kernel/arch/lkl) over Debian's Linux 6.12
# source, linked as one relocatable object whose only global symbols are the lkl_*
# API, packed as liblkl.a beside the generated syscall-number header.
#
# Usage: build-kernel.sh ARCH OUT_LINK
# The result lives in $KBOX_CACHE/lkl-<arch>-<key>, where key hashes the source version,
# our arch files, this script and the compiler; OUT_LINK becomes a symlink to it. An
# unchanged key costs a hash and a symlink, nothing else.
set -euo pipefail

arch=${1:?usage: build-kernel.sh ARCH OUT_LINK}
out_link=${2:?usage: build-kernel.sh ARCH OUT_LINK}
here=$(cd "$(dirname "$0")" && pwd)
cache=${KBOX_CACHE:-$HOME/.cache/kbox}
tarball=/usr/src/linux-source-6.12.tar.xz
exports=(lkl_init lkl_start_kernel lkl_syscall lkl_sys_halt lkl_cleanup lkl_task_create lkl_task_create_pid
	 lkl_task_syscall lkl_task_destroy lkl_task_interrupt lkl_trigger_irq lkl_get_free_irq
	 lkl_dma_to_host)

case $arch in
	x86_64) cross= ;;
	aarch64) cross=aarch64-linux-gnu- ;;
	*) echo "build-kernel: unsupported ARCH '$arch'" >&2; exit 2 ;;
esac
say() { echo "lkl[$arch]: $*" >&2; }

[ -f "$tarball" ] || { echo "build-kernel: $tarball is missing; run 'make deps' (package linux-source-6.12)" >&2; exit 1; }
version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
key=$( {
	echo "$version"
	"${cross}gcc" --version | head -n1
	cat "$0"
	(cd "$here/kernel" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
result=$cache/lkl-$arch-$key

publish_link() {
	mkdir -p "$(dirname "$out_link")"
	# Cargo relinks when the library's mtime is newer than its last build: a cached
	# library pointed to again (another checkout, a reverted change) must look new, or
	# the previous kernel stays linked in.
	if [ "$(readlink "$out_link" 2>/dev/null)" != "$result" ]; then
		touch "$result/liblkl.a" "$result/unistd_64.h"
	fi
	ln -sfn "$result" "$out_link"
}

if [ -f "$result/liblkl.a" ] && [ -f "$result/unistd_64.h" ]; then
	publish_link
	exit 0
fi

mkdir -p "$cache"
src=$cache/linux-source-$version
if [ ! -f "$src/.kbox-unpacked" ]; then
	say "unpacking $tarball"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xf "$tarball" -C "$src.tmp" --strip-components=1
	touch "$src.tmp/.kbox-unpacked"
	mv "$src.tmp" "$src"
fi

# One source tree serves both arches (out-of-tree object dirs); builds of it are serialised.
exec 9>"$cache/.lkl-build.lock"
flock 9
# Replace the arch tree wholesale (files removed from ours must vanish there too); cp -p keeps
# mtimes so unchanged files do not trigger rebuilds.
rm -rf "$src/arch/lkl"
cp -Rp "$here/kernel/arch/lkl" "$src/arch/lkl"

obj=$cache/obj-$arch
mkdir -p "$obj"
kmake() { make -C "$src" O="$obj" ARCH=lkl CROSS_COMPILE="$cross" "$@"; }
say "configuring (kbox_defconfig)"
kmake -s kbox_defconfig >/dev/null
say "building with $(nproc) jobs (a clean build takes about 4 minutes on 2 cores)"
log=$obj/build.log
if ! kmake -j"$(nproc)" vmlinux >"$log" 2>&1; then
	grep -E "error|Error|undefined" "$log" | head -n 20 >&2 || true
	echo "build-kernel: kernel build failed; full log in $log" >&2
	exit 1
fi
say "$(grep -c -E '^ +CC ' "$log" || true) objects compiled"

tmp=$(mktemp -d "$cache/lkl-$arch-tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "${exports[@]}" >"$tmp/exports"
# Everything but the API becomes local: the kernel's memcpy, snprintf, abort... must not
# replace the host libc's in the final program.
"${cross}objcopy" --keep-global-symbols="$tmp/exports" "$obj/vmlinux" "$tmp/lkl.o"
"${cross}ar" rcs "$tmp/liblkl.a" "$tmp/lkl.o"
rm -f "$tmp/lkl.o" "$tmp/exports"
cp "$obj/arch/lkl/include/generated/uapi/asm/unistd_64.h" "$tmp/"
echo "$version" >"$tmp/source-version"
rm -rf "$result"
mv "$tmp" "$result"
trap - EXIT
publish_link
say "liblkl.a ready in $result"
