#!/usr/bin/env bash
# test-scripts.sh ARCH
#
# Failure paths and rebuild rules of the image build, run against throwaway copies so the
# real build/ and cache are untouched:
#   * bad arguments to fetch-deb.sh / build-rootfs.sh / guest-cc.sh fail with a message;
#   * no network to the Debian mirror (apt pointed at a closed local port, empty cache):
#     fetch-deb and build-rootfs fail, and leave no image, no .deb, no temporary files;
#   * disk full (as root: a 2 MiB tmpfs; otherwise RLIMIT_FSIZE): no image, no temporaries;
#   * make: a second `make rootfs` rebuilds nothing; adding, then removing a guest program,
#     or changing ROOTFS_SIZE_MIB rebuilds the image with exactly the current programs.
# Prints one line per check; exits 1 if any failed.
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 ARCH" >&2; exit 2; }
arch=$1
top=$(cd "$(dirname "$0")/../.." && pwd)
s=$top/scripts
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kbox-rootfs-scripts.XXXXXX") || exit 1
mounted=""
cleanup() { [ -z "$mounted" ] || umount "$mounted" 2>/dev/null; rm -rf --one-file-system "$tmp"; }
trap cleanup EXIT
case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) echo "bad ARCH" >&2; exit 2 ;; esac

# must_fail NAME PATTERN CMD...: CMD exits non-zero and its stderr matches PATTERN.
must_fail() {
  local name=$1 pat=$2; shift 2
  "$@" >"$tmp/cmd.stdout" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ] && grep -Eq "$pat" "$tmp/err"; then ok "$name (exit $rc: $(grep -E "$pat" "$tmp/err" | head -1))"
  else bad "$name: exit $rc, stderr: $(tail -2 "$tmp/err")"; fi
}
# no_leftovers NAME DIR: DIR holds no image and no temporary build files.
no_leftovers() {
  local left
  left=$(find "$2" -mindepth 1 \( -name '*.ext4' -o -name '.rootfs-*' -o -name '.tmp.*' -o -name '*.deb' -o -name '*.tmp' \) 2>/dev/null)
  if [ -z "$left" ]; then ok "$1: nothing left behind"; else bad "$1: left behind: $left"; fi
}

# --- bad arguments ---------------------------------------------------------------------
must_fail "fetch-deb without arguments" 'usage' "$s/fetch-deb.sh"
must_fail "fetch-deb bad architecture" 'not a Debian architecture' "$s/fetch-deb.sh" busybox-static sparc99
must_fail "fetch-deb bad package name" 'not a valid Debian package name' "$s/fetch-deb.sh" 'Bad/Name' "$debarch"
must_fail "build-rootfs bad ARCH" 'ARCH must be' "$s/rootfs/build-rootfs.sh" mips "$tmp/x.ext4" 64
must_fail "build-rootfs bad size" 'SIZE_MIB' "$s/rootfs/build-rootfs.sh" "$arch" "$tmp/x.ext4" lots
must_fail "build-rootfs missing guest binary" 'missing or not executable' \
  "$s/rootfs/build-rootfs.sh" "$arch" "$tmp/x.ext4" 64 "$tmp/no-such-program"
must_fail "guest-cc missing source" 'no such source' "$s/rootfs/guest-cc.sh" "$arch" "$tmp/p" "$tmp/none.c"
echo 'int main(void) { return undeclared_thing; }' >"$tmp/broken.c"
must_fail "guest-cc compile error" 'failed' "$s/rootfs/guest-cc.sh" "$arch" "$tmp/broken" "$tmp/broken.c"
[ ! -e "$tmp/broken" ] && [ ! -e "$tmp/broken.tmp" ] && ok "guest-cc compile error leaves no binary" || bad "guest-cc left a binary"
must_fail "build-debian bad ARCH" 'ARCH must be|needs root' "$s/rootfs/build-debian.sh" mips "$tmp/d.ext4"
if [ "$(id -u)" -ne 0 ]; then
  must_fail "build-debian as non-root says it needs root" 'needs root' "$s/rootfs/build-debian.sh" "$arch" "$tmp/d.ext4"
fi
no_leftovers "bad arguments" "$tmp"

# --- no network: an empty cache and apt pointed at a closed port ----------------------------
cat >"$tmp/apt.conf" <<'EOF'
Acquire::http::Proxy "http://127.0.0.1:9/";
Acquire::https::Proxy "http://127.0.0.1:9/";
Acquire::Retries "0";
EOF
offline=(env KBOX_CACHE="$tmp/cache" APT_CONFIG="$tmp/apt.conf" http_proxy=http://127.0.0.1:9/ https_proxy=http://127.0.0.1:9/)
must_fail "fetch-deb without network" 'download .* failed' "${offline[@]}" "$s/fetch-deb.sh" busybox-static "$debarch"
no_leftovers "fetch-deb without network" "$tmp/cache"
[ ! -e "$tmp/cache/debs/busybox-static_$debarch" ] && ok "no extraction directory after a failed fetch" || bad "extraction directory left after failed fetch"
mkdir -p "$tmp/out"
must_fail "build-rootfs without network" 'could not get busybox-static' "${offline[@]}" \
  "$s/rootfs/build-rootfs.sh" "$arch" "$tmp/out/rootfs.ext4" 64
no_leftovers "build-rootfs without network" "$tmp/out"

# --- disk full ---------------------------------------------------------------------------
mkdir -p "$tmp/full"
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=2m kbox-test-full "$tmp/full" 2>/dev/null; then
  mounted=$tmp/full
  must_fail "build-rootfs on a full disk (2 MiB tmpfs)" 'error' "$s/rootfs/build-rootfs.sh" "$arch" "$tmp/full/rootfs.ext4" 64
  no_leftovers "build-rootfs on a full disk" "$tmp/full"
  umount "$tmp/full" && mounted=""
else
  # Without root: the file size limit makes mke2fs's writes fail with EFBIG.
  must_fail "build-rootfs with RLIMIT_FSIZE 4 MiB" 'error' bash -c "ulimit -f 4096; exec \"$s/rootfs/build-rootfs.sh\" $arch \"$tmp/full/rootfs.ext4\" 64"
  no_leftovers "build-rootfs with RLIMIT_FSIZE" "$tmp/full"
fi

# --- make rebuild rules, on a copy of the build files -----------------------------------
# Only this area's fragment (and deps) under a minimal top Makefile defining what the real
# one does, so other areas' rules cannot break or slow this test.
copy=$tmp/repo
mkdir -p "$copy/tests" "$copy/mk"
cp -a "$top/scripts" "$copy/"
cp -a "$top/mk/rootfs.mk" "$top/mk/deps.mk" "$copy/mk/"
cp -a "$top/tests/guest" "$top/tests/rootfs" "$copy/tests/"
cat >"$copy/Makefile" <<'EOF'
SHELL := /bin/bash
ARCH ?= x86_64
TOP := $(CURDIR)
BUILD := $(TOP)/build
KBOX_CACHE ?= $(HOME)/.cache/kbox
export KBOX_CACHE
include mk/deps.mk
include mk/rootfs.mk
EOF
img=$copy/build/rootfs-$arch.ext4
mk() { make --no-print-directory -C "$copy" ARCH="$arch" "$@" >"$tmp/make.out" 2>&1; }
names() { debugfs -R "ls /opt/kbox-tests" "$img" 2>/dev/null | tr -s ' \t' '\n' | grep -Ev '^(\.|\.\.|)$' | sort | tr '\n' ' '; }
if mk rootfs && [ -f "$img" ]; then ok "make rootfs in a copy"; else bad "make rootfs in a copy: $(tail -5 "$tmp/make.out")"; fi
before=$(stat -c '%i %Y' "$img" 2>/dev/null)
mk rootfs
if ! grep -q 'rootfs: \[1/4\]' "$tmp/make.out" && [ "$(stat -c '%i %Y' "$img")" = "$before" ]; then
  ok "second make rootfs rebuilds nothing"
else bad "second make rootfs rebuilt the image: $(head -3 "$tmp/make.out")"; fi
printf '#include <stdio.h>\nint main(void) { puts("extra"); return 0; }\n' >"$copy/tests/guest/zz_extra.c"
mk rootfs
if grep -q 'rootfs: \[1/4\]' "$tmp/make.out" && names | grep -qw zz_extra; then ok "new guest program: image rebuilt, contains it"
else bad "new guest program not picked up: $(names)"; fi
rm "$copy/tests/guest/zz_extra.c"
mk rootfs
if grep -q 'rootfs: \[1/4\]' "$tmp/make.out" && ! names | grep -qw zz_extra; then ok "removed guest program: image rebuilt without it"
else bad "removed guest program still in the image: $(names)"; fi
mk rootfs ROOTFS_SIZE_MIB=72
blocks=$(dumpe2fs -h "$img" 2>/dev/null | sed -n 's/^Block count: *//p')
if grep -q 'rootfs: \[1/4\]' "$tmp/make.out" && [ "$blocks" = $((72 * 256)) ]; then ok "ROOTFS_SIZE_MIB=72: rebuilt with $blocks blocks"
else bad "ROOTFS_SIZE_MIB change: blocks=$blocks"; fi

if [ $fail -ne 0 ]; then echo "check-rootfs-scripts: FAILED" >&2; exit 1; fi
echo "check-rootfs-scripts: build scripts fail cleanly and rebuild only on change"
