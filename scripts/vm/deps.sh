#!/usr/bin/env bash
# What make check-vm needs beyond make deps: qemu-system for both architectures, cpio and
# kmod's modinfo (the VM's initramfs), and Debian's kernels and busybox for both
# architectures, downloaded and unpacked by fetch-deb.sh (never installed on the host).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
pkgs=(qemu-system-x86 qemu-system-arm cpio kmod)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps-vm: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq || { echo "deps-vm: apt-get update failed" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "deps-vm: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
for debarch in amd64 arm64; do
  # Makes apt know the foreign architecture's packages (fetch-deb.sh adds it once).
  "$top/scripts/fetch-deb.sh" busybox-static "$debarch" >/dev/null
  pkg=$(apt-cache depends "linux-image-$debarch:$debarch" |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -n1)
  [ -n "$pkg" ] || { echo "deps-vm: apt knows no linux-image-$debarch" >&2; exit 1; }
  "$top/scripts/fetch-deb.sh" "$pkg" "$debarch" >/dev/null
done
