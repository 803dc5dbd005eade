#!/usr/bin/env bash
# inputs-key.sh IMAGE-KIND ARCH [FILE...]
#
# Prints a description of everything an image is built from that make cannot see as a file
# timestamp: the Debian version apt would fetch now (busybox-static for the default image,
# the mirror for the Debian image), the image parameters, and the content hash of every FILE
# (scripts, guest programs; a removed guest program changes the list). mk/rootfs.mk rewrites
# its key file only when this output changes, so the image is rebuilt exactly then.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 default|debian ARCH [FILE...]" >&2; exit 1; }
kind=$1 arch=$2
shift 2
case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) echo "inputs-key: bad ARCH '$arch'" >&2; exit 1 ;; esac
echo "kind $kind arch $arch"
case $kind in
  default)
    v=$(apt-cache policy "busybox-static:$debarch" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    echo "busybox-static:$debarch ${v:-unknown}"
    ;;
  debian)
    echo "mirror $("$(dirname "$0")/debian-mirror.sh" 2>/dev/null || echo unknown)"
    ;;
  *) echo "inputs-key: unknown image kind '$kind'" >&2; exit 1 ;;
esac
for k in ROOTFS_SIZE_MIB DEBIAN_PACKAGES DEBIAN_MAX_MIB; do
  [ -z "${!k:-}" ] || echo "$k=${!k}"
done
for f in "$@"; do
  sha256sum "$f" | sed "s| .*| $(basename "$f")|"
done
