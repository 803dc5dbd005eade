#!/usr/bin/env bash
# build-rootfs.sh ARCH OUT SIZE_MIB GUEST_BIN...
#
# Builds the default guest image OUT (ext4, 4 KiB blocks, SIZE_MIB MiB) for ARCH:
# Debian's busybox-static for the target architecture with its applet links, a minimal /etc,
# the usual mount points, and the given guest test binaries under /opt/kbox-tests.
# Rootless: the tree is staged and mke2fs -d runs inside one fakeroot session, so every inode
# in the image is owned by 0:0 and device nodes can be created. The image is built under a
# temporary name in OUT's directory, checked with e2fsck -fn, and renamed only on success;
# any failure removes the temporary files and exits non-zero with a message.
set -euo pipefail
prog=rootfs
die() { echo "$prog: error: $*" >&2; exit 1; }
step() { echo "$prog: $*" >&2; }

[ $# -ge 3 ] || die "usage: $0 ARCH OUT SIZE_MIB [GUEST_BIN...]"
arch=$1 out=$2 size=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
case $arch in
  x86_64) debarch=amd64 ;;
  aarch64) debarch=arm64 ;;
  *) die "ARCH must be x86_64 or aarch64, not '$arch'" ;;
esac
[[ $size =~ ^[0-9]+$ ]] && [ "$size" -ge 8 ] || die "SIZE_MIB must be a number of MiB >= 8, not '$size'"
out=$(realpath -m "$out")
guests=()
for g in "$@"; do
  [ -f "$g" ] && [ -x "$g" ] || die "guest test binary '$g' is missing or not executable"
  guests+=("$(realpath "$g")")
done

for t in fakeroot mke2fs e2fsck; do
  command -v "$t" >/dev/null || die "'$t' not found (make deps installs fakeroot and e2fsprogs)"
done
runner=()
if [ "$arch" != "$(uname -m)" ]; then
  command -v "qemu-$arch-static" >/dev/null || die "qemu-$arch-static not found (make deps installs qemu-user-static)"
  runner=("qemu-$arch-static")
fi

outdir=$(dirname "$out")
mkdir -p "$outdir" || die "cannot create $outdir"
work=$(mktemp -d "$outdir/.rootfs-$arch.XXXXXX") || die "cannot create a temporary directory in $outdir (disk full? read-only?)"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

step "[1/4] busybox-static:$debarch from the Debian archive"
bb=$("$here/../fetch-deb.sh" busybox-static "$debarch") || die "could not get busybox-static:$debarch (see above)"
[ -x "$bb/bin/busybox" ] || die "$bb/bin/busybox missing from the extracted package"
bbver=$(cat "$bb/.kbox-version")

step "[2/4] asking busybox $bbver for its applets"
"${runner[@]}" "$bb/bin/busybox" --list-full >"$work/applets" || die "'busybox --list-full' failed${runner:+ under ${runner[*]}}"
n=$(wc -l <"$work/applets")
[ "$n" -ge 100 ] || die "busybox listed only $n applets; expected hundreds"
grep -qx 'bin/sh' "$work/applets" || die "busybox does not provide bin/sh"

step "[3/4] staging the tree and writing ext4 (${size} MiB, 4 KiB blocks) under fakeroot"
img=$work/image.ext4
fakeroot -- "$here/stage-busybox.sh" "$work/root" "$bb" "$bbver" "$arch" "$work/applets" "$img" "$size" "${guests[@]}" \
  || die "staging or mke2fs failed (disk full? see above)"

step "[4/4] e2fsck -fn"
e2fsck -fn "$img" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found problems in the new image"; }
mv -f "$img" "$out" || die "cannot move the image to $out"
step "built $out ($n busybox applets, ${#guests[@]} guest programs, busybox $bbver)"
