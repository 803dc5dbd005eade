#!/usr/bin/env bash
# run-vm.sh ARCH LIST OUTDIR [DISK]
#
# Boots Debian's own kernel for ARCH (x86_64: linux-image-amd64, KVM when /dev/kvm works,
# TCG otherwise; aarch64: linux-image-arm64 on qemu-system-aarch64 -M virt, TCG) and runs
# suite.sh on LIST (test-list.py's output) inside it. x86_64 runs in the host's own / (shared
# read-only over 9p); aarch64 runs in DISK, an ext4 tree of aarch64 programs; in both the
# checkout is shared over 9p at its own path (the VM's /tmp is its own, and a checkout
# may be under the host's). Everything the VM prints goes to
# OUTDIR/ARCH.log; the one line this prints is the machine's result. No network device:
# the VM has its loopback only. A VM that does not end within KBOX_VM_TIMEOUT seconds
# (default 1800) is killed and fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
die() { echo "run-vm: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: $0 ARCH LIST OUTDIR [DISK]"
arch=$1 list=$2 out=$3 disk=${4:-}
timeout_s=${KBOX_VM_TIMEOUT:-1800}
case $arch in
  x86_64) debarch=amd64 ;;
  aarch64) debarch=arm64; [ -f "$disk" ] || die "aarch64 needs DISK, an aarch64 tree image" ;;
  *) die "ARCH must be x86_64 or aarch64, not '$arch'" ;;
esac
[ -f "$list" ] || die "no test list $list"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log=$out/$arch.log

# Debian's kernel for the architecture: the package linux-image-$debarch depends on.
pkg=$(apt-cache depends "linux-image-$debarch:$debarch" 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -n1)
[ -n "$pkg" ] || die "apt knows no linux-image-$debarch (run make deps-vm)"
kdir=$("$top/scripts/fetch-deb.sh" "$pkg" "$debarch")
kernel=$(ls "$kdir"/boot/vmlinuz-*)
moddir=$(ls -d "$kdir"/lib/modules/*)
bbdir=$("$top/scripts/fetch-deb.sh" busybox-static "$debarch")

# The initramfs: busybox, init, and the modules for virtio, 9p, overlay and ext4.
work=$(mktemp -d "${TMPDIR:-/tmp}/kbox-vm-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,modules}
cp "$bbdir/bin/busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
mods=(virtio_pci virtio_mmio virtio_blk 9pnet_virtio 9p overlay crc32c_generic ext4 dummy)
"$here/modules.sh" "$moddir" "${mods[@]}" >"$root/modules.list"
while read -r m; do
  mkdir -p "$root/modules/$(dirname "$m")"
  cp "$moddir/$m" "$root/modules/$m"
done <"$root/modules.list"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd"

run_in_vm="$(cd "$(dirname "$list")" && pwd)/$(basename "$list")"
# suite.sh takes the list as its argument: the init runs "sh SCRIPT", so the list goes in
# through a wrapper next to it.
wrapper=$out/$arch-run.sh
printf '#!/bin/sh\nexec sh %s %s\n' "$top/scripts/vm/suite.sh" "$run_in_vm" >"$wrapper"
# KBOX_VM_RUN=SCRIPT (a path the VM sees) runs SCRIPT instead, for debugging in the VM.
append="quiet panic=-1 kbox.run=${KBOX_VM_RUN:-$wrapper}"
mem=6G
cpus=2
case $arch in
  x86_64)
    # KVM only if a kernel boots on it (to its "no root" panic) within 30 s: /dev/kvm may
    # open and still not run a guest (nested virtualisation).
    accel=tcg,thread=multi cpu=max
    if [ -w /dev/kvm ]; then
      timeout 30 qemu-system-x86_64 -M q35 -accel kvm -cpu host,-arch-capabilities -m 256 \
        -display none -nodefaults -no-reboot -serial "file:$work/probe.log" \
        -kernel "$kernel" -append "console=ttyS0 panic=-1" >/dev/null 2>&1 || true
      if grep -q "Kernel panic" "$work/probe.log" 2>/dev/null; then
        accel=kvm cpu=host,-arch-capabilities
      else
        echo "run-vm: /dev/kvm does not run a guest here: TCG" >&2
      fi
    fi
    qemu=(qemu-system-x86_64 -M q35 -accel "$accel" -cpu "$cpu"
      -virtfs "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap"
      -virtfs "local,path=$top,mount_tag=work,security_model=none,readonly=on,multidevs=remap")
    append="console=ttyS0 kbox.root=host kbox.work=$top $append"
    ;;
  aarch64)
    accel=tcg
    qemu=(qemu-system-aarch64 -M virt -accel tcg,thread=multi -cpu max,pauth-impdef=on
      -drive "file=$disk,format=raw,if=virtio,readonly=on"
      -virtfs "local,path=$top,mount_tag=work,security_model=none,readonly=on,multidevs=remap")
    append="console=ttyAMA0 kbox.root=disk kbox.work=$top $append"
    ;;
esac
started=$(date +%s)
set +e
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" -smp "$cpus" -m "$mem" -nic none \
  -display none -no-reboot -serial "file:$log" \
  -kernel "$kernel" -initrd "$work/initrd" -append "$append" </dev/null >"$out/$arch.qemu.log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - started ))
kver=$(sed -n 's/^kbox-vm: kernel \([^ ]*\) .*/\1/p' "$log" | head -n1)
result=$(sed -n 's/^kbox-vm: suite: //p' "$log" | tail -n1)
exit_line=$(sed -n 's/^kbox-vm: exit //p' "$log" | tail -n1 | tr -d '\r')
what="$arch, Debian ${kver:-$pkg} (${accel%%,*})"
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "vm $what: FAILED: no end within ${timeout_s}s (${result:-no result}); see $log"
  exit 1
fi
# The benchmark's rows, when the list asked for them.
sed -n 's/^kbox-vm: bench: /bench '"$arch"': /p' "$log" | tr -d '\r'
if [ "$exit_line" = 0 ] && [ -n "$result" ]; then
  echo "vm $what: $result in ${took}s"
  exit 0
fi
echo "vm $what: FAILED: ${result:-no result} (exit ${exit_line:-none}, qemu $rc) in ${took}s; see $log"
exit 1
