#!/bin/sh
# bench.sh KBOX IMAGE GUESTS [CALLS]: inside the VM, the per-call cost of a few calls
# natively and under each tier kbox has, with the guest micro-benchmark (GUESTS/bench
# natively, /opt/kbox-tests/bench in IMAGE under kbox), and the sites the rewrite tier
# patched and promoted (its -v totals). One "kbox-vm: bench: ..." line per row: under
# TCG only the ratios mean anything. Exits non-zero when a run fails.
kbox=$1 image=$2 guests=$3 calls=${4:-3000}
ops="stat fstat open+close lseek+read64 write64 getpid"
work=$(mktemp -d "${TMPDIR:-/tmp}/kbox-vm-bench.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/native"
"$guests/bench" "$work/native" "$calls" >"$work/native.out" || exit 1
for mode in seccomp trap rewrite; do
  cp --sparse=always "$image" "$work/r.ext4"
  HOME=/root "$kbox" -v --syscall-mode=$mode -S "$work/r.ext4" -- \
    /opt/kbox-tests/bench /tmp "$calls" >"$work/$mode.out" 2>"$work/$mode.err" || {
    echo "kbox-vm: bench: $mode failed:"
    tail -n 5 "$work/$mode.err"
    exit 1
  }
done
us() { sed -n "s/^$1 \([0-9.]*\).*/\1/p" "$2" | head -n1; }
for op in $ops; do
  n=$(us "$op" "$work/native.out")
  line="$op: native ${n} us"
  for mode in seccomp trap rewrite; do
    v=$(us "$op" "$work/$mode.out")
    line="$line, $mode ${v} us ($(awk -v a="$v" -v b="$n" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "?" }'))"
  done
  echo "kbox-vm: bench: $line"
done
totals=$(sed -n 's/^kbox: rewrite: \([0-9]* sites patched.*\)/\1/p' "$work/rewrite.err" | tail -n1)
echo "kbox-vm: bench: rewrite of the bench program: $totals"
