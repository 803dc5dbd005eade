#!/usr/bin/env bash
# What make check-vm needs beyond make deps: qemu-system for both architectures, cpio and
# kmod's modinfo (the VM's initramfs), installed through scripts/deps.sh; and Debian's
# kernels and busybox for both architectures, downloaded and unpacked by fetch-deb.sh
# (never installed on the host).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/deps.sh" qemu-system-x86 qemu-system-arm cpio kmod
for debarch in amd64 arm64; do
  # Makes apt know the foreign architecture's packages (fetch-deb.sh adds it once).
  "$top/scripts/fetch-deb.sh" busybox-static "$debarch" >/dev/null
  pkg=$(apt-cache depends "linux-image-$debarch:$debarch" |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -n1)
  [ -n "$pkg" ] || { echo "deps-vm: apt knows no linux-image-$debarch" >&2; exit 1; }
  "$top/scripts/fetch-deb.sh" "$pkg" "$debarch" >/dev/null
done
