#!/usr/bin/env bash
# build-debian.sh ARCH OUT
#
# Builds build/debian-ARCH.ext4: Debian bookworm, debootstrap --variant=minbase, plus
# $DEBIAN_PACKAGES (python3 with its standard library and its own regression suite, for make
# conformance, and friends) — real dynamically linked glibc programs.
# The mirror is the one the host's apt uses (debian-mirror.sh; $DEBIAN_MIRROR overrides).
# Downloaded .debs are cached in $KBOX_CACHE/debootstrap-ARCH.
#   * x86_64 on an x86_64 host: one debootstrap run.
#   * a foreign ARCH: debootstrap --foreign, then the second stage in the target under
#     proot -q qemu-ARCH-static (proot re-wraps every execve in qemu, so no binfmt_misc
#     registration on the host is needed).
# Needs root (debootstrap creates files owned by many users and chroots); says so otherwise.
# Docs, man pages, locales and apt caches are removed; the image must stay under
# $DEBIAN_MAX_MIB (600) MiB. Built under a temporary name, e2fsck -fn checked, then renamed.
set -euo pipefail
prog=rootfs-debian
die() { echo "$prog: error: $*" >&2; exit 1; }
step() { echo "$prog: $*" >&2; }

[ $# -eq 2 ] || die "usage: $0 ARCH OUT"
arch=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
case $arch in
  x86_64) debarch=amd64 ;;
  aarch64) debarch=arm64 ;;
  *) die "ARCH must be x86_64 or aarch64, not '$arch'" ;;
esac
suite=bookworm
packages=${DEBIAN_PACKAGES:-bash,coreutils,findutils,grep,sed,tar,gzip,python3,libpython3.11-testsuite}
max_mib=${DEBIAN_MAX_MIB:-600}
cache=${KBOX_CACHE:-$HOME/.cache/kbox}

if [ "$(id -u)" -ne 0 ]; then
  die "building the Debian image needs root: debootstrap must create files owned by other users, device nodes, and chroot into the tree. Run 'sudo make rootfs-debian' (CI runs as root). The default image (make rootfs) needs no root."
fi
for t in debootstrap mke2fs e2fsck; do
  command -v "$t" >/dev/null || die "'$t' not found (make deps installs debootstrap and e2fsprogs)"
done
foreign=0
if [ "$arch" != "$(uname -m)" ]; then
  foreign=1
  for t in "qemu-$arch-static" proot; do
    command -v "$t" >/dev/null || die "'$t' not found; a foreign-architecture Debian image needs qemu-user-static and proot (make deps)"
  done
fi
mirror=$("$here/debian-mirror.sh" "$suite") || die "cannot tell which Debian mirror to use (see above)"

out=$(realpath -m "$out")
outdir=$(dirname "$out")
mkdir -p "$outdir" "$cache/debootstrap-$arch" || die "cannot create $outdir or $cache"
work=$(mktemp -d "$outdir/.debian-$arch.XXXXXX") || die "cannot create a temporary directory in $outdir (disk full?)"
target=$work/root

cleanup() {
  # debootstrap mounts /proc, /sys (and may bind /dev) in the target: unmount anything below
  # $work, deepest first, before deleting, and never cross into another file system.
  local m
  for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
dbs_opts=(--variant=minbase --arch="$debarch" --include="$packages" --cache-dir="$cache/debootstrap-$arch")
log=$work/debootstrap.log
if [ $foreign -eq 0 ]; then
  step "[1/4] debootstrap $suite $debarch minbase + $packages from $mirror (log: $log while running)"
  debootstrap "${dbs_opts[@]}" "$suite" "$target" "$mirror" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "debootstrap failed (mirror unreachable? disk full? see above)"; }
else
  step "[1/4] debootstrap --foreign $suite $debarch minbase + $packages from $mirror"
  debootstrap --foreign "${dbs_opts[@]}" "$suite" "$target" "$mirror" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "debootstrap --foreign failed (mirror unreachable? disk full? see above)"; }
  # In a container debootstrap makes the target's /proc a symlink to /proc; proot's bind of
  # the host /proc onto it would then loop. A plain directory is what the image wants anyway.
  if [ -L "$target/proc" ]; then rm -f "$target/proc" && mkdir -m 0755 "$target/proc"; fi
  step "[1/4] second stage under proot -q qemu-$arch-static (slow: every program is emulated)"
  # The second stage mounts and, as it ends, unmounts /proc, /dev/pts and /dev/shm. proot
  # passes mount and umount to the kernel with the host's paths (/dev is the host's), so
  # run as root it unmounted the host's /dev/pts: the machine lost its pseudo-terminals.
  # In a mount namespace of its own those calls change nothing outside. Where none can be
  # made (not root, or a container without CAP_SYS_ADMIN) they fail and change nothing
  # either; the check after the stage catches any host mount that went away all the same.
  ns=()
  if unshare --mount --propagation private true 2>/dev/null; then
    ns=(unshare --mount --propagation private)
  fi
  mounts_before=$(awk '{ print $5 }' /proc/self/mountinfo | sort)
  "${ns[@]}" proot -q "qemu-$arch-static" -0 -r "$target" -b /proc -b /sys -b /dev -w / \
    env DEBOOTSTRAP_DIR=/debootstrap /debootstrap/debootstrap --second-stage >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "debootstrap second stage under qemu-$arch-static failed (see above)"; }
  gone=$(comm -23 <(echo "$mounts_before") <(awk '{ print $5 }' /proc/self/mountinfo | sort))
  [ -z "$gone" ] || die "debootstrap's second stage unmounted the host's $(echo $gone)"
fi
for d in proc sys dev tmp; do
  [ -d "$target/$d" ] && [ ! -L "$target/$d" ] || die "the bootstrapped tree's /$d is not a directory"
done
for p in /bin/bash /usr/bin/python3 /usr/bin/find /bin/grep /bin/sed /bin/tar /bin/gzip; do
  [ -e "$target$p" ] || [ -L "$target$p" ] || die "the bootstrapped tree lacks $p"
done

step "[2/4] trimming docs, man pages, locales, apt lists and caches"
# Keep it small now and for later apt installs inside the image.
mkdir -p "$target/etc/dpkg/dpkg.cfg.d"
cat >"$target/etc/dpkg/dpkg.cfg.d/kbox-nodoc" <<'EOF'
# kbox guest image: no documentation or translations.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
find "$target/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$target/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$target"/usr/share/man/* "$target"/usr/share/info/* "$target"/usr/share/lintian/*
find "$target/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/*.bin "$target"/var/cache/apt/archives/*.deb \
  "$target"/var/cache/debconf/*-old "$target"/var/log/*.log "$target"/var/log/apt/* "$target"/debootstrap
echo kbox-debian >"$target/etc/hostname"
[ -s "$target/etc/resolv.conf" ] || echo "nameserver 127.0.0.1" >"$target/etc/resolv.conf"

used=$(du -s --apparent-size -m "$target" | cut -f1)
files=$(find "$target" -xdev | wc -l)
# Headroom for tests that write: a quarter of the tree, at least 64 MiB; plus ext4 metadata.
size=$((used + (used / 4 > 64 ? used / 4 : 64) + 32))
[ "$size" -le "$max_mib" ] || die "the tree is ${used} MiB; the image would be ${size} MiB, over the ${max_mib} MiB limit"

step "[3/4] mke2fs -d: ${used} MiB, ${files} files into a ${size} MiB ext4 image"
img=$work/image.ext4
mke2fs -q -t ext4 -b 4096 -i 8192 -L kbox-debian -d "$target" -F "$img" "${size}M" >/dev/null \
  || die "mke2fs -d failed (disk full?)"

step "[4/4] e2fsck -fn"
e2fsck -fn "$img" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found problems in the new image"; }
mv -f "$img" "$out" || die "cannot move the image to $out"
step "built $out: ${size} MiB image, ${used} MiB tree, ${files} files, $(( $(date +%s) - start ))s"
