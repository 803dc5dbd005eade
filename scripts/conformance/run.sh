#!/usr/bin/env bash
# run.sh ARCH KBOX IMAGE [TEST...]
#
# CPython's own regression suite (Debian's libpython3.11-testsuite, which the Debian image
# carries) judges kbox: the OS-facing tests below run natively, as root in a chroot of the
# image's own tree with /proc, /dev and /tmp mounted as `kbox -S` gives them, and then under
# `kbox -S` on a copy of the image. Both runs use regrtest's parallel mode (-j2: workers
# started from threads) and write JUnit XML; table.py prints one row per test (native /
# kbox: result, cases passed / failed / skipped, time). The copy of the image is checked
# with e2fsck -fn afterwards. Exits 0 when kbox's result equals native's for every test
# (differences are for docs/compat.md), 1 otherwise, 2 on a set-up error.
#   CONFORMANCE_TIMEOUT  seconds for each whole run (default 3600)
#   CONFORMANCE_KEEP=1   keep the work directory (logs, XML, the image copy)
#   CONFORMANCE_MODE     kbox's --syscall-mode for the kbox run (default: kbox's default)
set -uo pipefail
prog=conformance
die() { echo "$prog: error: $*" >&2; exit 2; }
[ $# -ge 3 ] || die "usage: $0 ARCH KBOX IMAGE [TEST...]"
arch=$1 kbox=$2 image=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
[ "$arch" = "$(uname -m)" ] || die "conformance runs on the host's own arch ($(uname -m)), not $arch"
[ -x "$kbox" ] || die "$kbox is missing (make kbox)"
[ -f "$image" ] || die "$image is missing (make rootfs-debian)"
[ "$(id -u)" -eq 0 ] || die "the native run chroots into the image's tree: run as root (CI does)"
for t in debugfs e2fsck chroot python3; do
  command -v "$t" >/dev/null || die "'$t' not found (make deps)"
done
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(test_os test_posix test_fcntl test_signal test_select test_selectors test_socket
    test_subprocess test_shutil test_tempfile test_fileio test_pathlib test_threading
    test_thread test_mmap test_pty test_time test_resource test_epoll test_poll
    test_tarfile test_zipfile test_logging test_asyncio test_concurrent_futures
    test_multiprocessing_fork)
  # test_sqlite3 is not in Debian's libpython3.11-testsuite (docs/compat.md).
fi
limit=${CONFORMANCE_TIMEOUT:-3600}
# AF_VSOCK: on the VMs this runs on, the host's vsock accept waits for ever natively;
# kbox has no vsock (EAFNOSUPPORT), so those cases would only measure the VM.
regrtest=(/usr/bin/python3 -m test -j2 --timeout 900 --ignore '*VSOCK*')

work=$(mktemp -d "${TMPDIR:-/tmp}/kbox-conformance.XXXXXX") || die "cannot create a work directory"
root=$work/native
cleanup() {
  local m
  for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if [ "${CONFORMANCE_KEEP:-0}" = 1 ]; then
    echo "$prog: kept $work" >&2
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "$prog: ${#tests[@]} tests of CPython's suite; native first (chroot of $image)" >&2
mkdir -p "$root" "$work/results"
debugfs -R "rdump / $root" "$image" >/dev/null 2>"$work/rdump.log" || die "cannot copy the image's tree (see $work/rdump.log)"
[ -x "$root/usr/bin/python3" ] || die "the image has no python3"
[ -d "$root/usr/lib/python3.11/test/support" ] || die "the image lacks CPython's test suite (libpython3.11-testsuite): rebuild it with make rootfs-debian"
# What kbox gives an image without one (runtime.rs), so that localhost resolves in both.
[ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
mount -t proc proc "$root/proc" || die "cannot mount /proc in the chroot"
mount -t tmpfs tmpfs "$root/tmp" || die "cannot mount /tmp in the chroot"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" || die "cannot bind /dev in the chroot"
mkdir -p "$root/results"
mount --bind "$work/results" "$root/results" || die "cannot bind the results directory"
start=$(date +%s)
timeout "$limit" chroot "$root" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  "${regrtest[@]}" --junit-xml /results/native.xml "${tests[@]}" >"$work/native.log" 2>&1
native_rc=$?
native_time=$(( $(date +%s) - start ))
echo "$prog: native run: exit $native_rc in ${native_time}s" >&2

mode=()
[ -n "${CONFORMANCE_MODE:-}" ] && mode=("--syscall-mode=$CONFORMANCE_MODE")
echo "$prog: under kbox ${mode[*]} -S (a copy of the image)" >&2
cp --sparse=always "$image" "$work/kbox.ext4" || die "cannot copy the image"
mkdir -p "$work/kbox-results"
start=$(date +%s)
timeout "$limit" "$kbox" "${mode[@]}" -S "$work/kbox.ext4" -b "$work/kbox-results:/results" -- \
  /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  "${regrtest[@]}" --junit-xml /results/kbox.xml "${tests[@]}" >"$work/kbox.log" 2>&1 </dev/null
kbox_rc=$?
kbox_time=$(( $(date +%s) - start ))
echo "$prog: kbox run: exit $kbox_rc in ${kbox_time}s" >&2
fsck=clean
e2fsck -fn "$work/kbox.ext4" >"$work/fsck.log" 2>&1 || fsck="NOT clean (see $work/fsck.log)"

python3 "$here/table.py" --native-log "$work/native.log" --native-xml "$work/results/native.xml" \
  --kbox-log "$work/kbox.log" --kbox-xml "$work/kbox-results/kbox.xml" \
  --native-time "$native_time" --kbox-time "$kbox_time" "${tests[@]}"
rc=$?
echo "image after the kbox run: e2fsck -fn $fsck"
[ "$fsck" = clean ] || rc=1
if [ $rc -ne 0 ]; then
  CONFORMANCE_KEEP=1
  echo "$prog: kbox differs from native; logs in $work" >&2
fi
exit $rc
