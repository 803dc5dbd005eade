#!/usr/bin/env bash
# guest.sh IMAGE CALLS — the guest micro-benchmark (tests/guest/bench.c) natively and under
# each sandbox on the same tree, in one run, printed as one markdown table of µs per call
# with the ratio to native. The image's tree is extracted once to a host directory so
# every column reads the same files.
set -euo pipefail
image=${1:?usage: guest.sh IMAGE CALLS}
calls=${2:-20000}
tree=$(mktemp -d "${TMPDIR:-/tmp}/kbox-bench-tree.XXXXXX")
trap 'rm -rf "$tree"' EXIT
debugfs -R "rdump / $tree" "$image" >/dev/null 2>&1 || { echo "bench: cannot extract $image" >&2; exit 1; }
bench=/opt/kbox-tests/bench
[ -x "$tree$bench" ] || { echo "bench: $bench missing from $image (make rootfs)" >&2; exit 1; }

run_native() { mkdir -p "$tree/tmp/native"; "$tree$bench" "$tree/tmp/native" "$calls"; }
run_proot() { mkdir -p "$tree/tmp/proot"; proot -r "$tree" -b /proc -b /dev -w / "$bench" /tmp/proot "$calls"; }

echo "bench: native" >&2
native=$(run_native)
proot_out=""
if command -v proot >/dev/null; then
  echo "bench: proot" >&2
  proot_out=$(run_proot)
fi

echo "| syscall (µs/call, median of 7 batches of $calls) | native | proot | kbox seccomp |"
echo "|---|---|---|---|"
while read -r name us; do
  p=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$proot_out")
  if [ -n "$p" ]; then
    ratio=$(awk -v a="$p" -v b="$us" 'BEGIN { printf "%.1f", a / b }')
    pcol="$p (${ratio}×)"
  else
    pcol="—"
  fi
  # The seccomp tier is not wired to the kernel library yet (issue 6).
  echo "| $name | $us | $pcol | not built |"
done <<<"$native"
