#!/usr/bin/env bash
# run-guest-native.sh ARCH GUEST_BIN...
#
# gVisor's rule: a syscall test must pass natively before it means anything under the sandbox.
# Runs every guest test program on the host (for a foreign ARCH under qemu-ARCH-static) as
# `PROG WORKDIR` with a fresh empty WORKDIR, and requires exit status 0 within 60 s. hello is
# also checked for passing its argument through to its exit status. Prints one line per
# program (the program's output only on failure) and exits 1 if any failed.
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ARCH GUEST_BIN..." >&2; exit 2; }
arch=$1
shift
runner=()
if [ "$arch" != "$(uname -m)" ]; then
  command -v "qemu-$arch-static" >/dev/null || { echo "check-guest-native: qemu-$arch-static not found (make deps)" >&2; exit 1; }
  runner=("qemu-$arch-static")
fi
root=$(mktemp -d "${TMPDIR:-/tmp}/kbox-guest-native.XXXXXX") || exit 1
trap 'rm -rf "$root"' EXIT
fail=0
for bin in "$@"; do
  name=$(basename "$bin")
  if [ ! -x "$bin" ]; then
    echo "FAIL $name: $bin is missing or not executable"; fail=1; continue
  fi
  if [ "$name" = efault ] && [ ${#runner[@]} -gt 0 ]; then
    # qemu-user answers bad pointers itself, not as Linux does (it checks whole buffers
    # first, skips NULL copies, leaks a pipe's fds on EFAULT): the test is about Linux's
    # answers, so it runs on a Linux kernel only (natively here, or under qemu-system).
    echo "SKIP efault: qemu-user's pointer checks are not Linux's"; continue
  fi
  work=$root/$name
  mkdir "$work"
  timeout 60 "${runner[@]}" "$bin" "$work" >"$root/$name.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "PASS $name (native${runner:+, ${runner[*]}})"
  else
    echo "FAIL $name: exit status $rc${runner:+ (under ${runner[*]})}; output:"
    sed 's/^/    /' "$root/$name.out"
    fail=1
  fi
  if [ "$name" = hello ]; then
    timeout 60 "${runner[@]}" "$bin" 42 >/dev/null 2>&1
    rc=$?
    if [ $rc -eq 42 ]; then echo "PASS hello 42 exits 42"; else echo "FAIL hello 42 exited $rc, want 42"; fail=1; fi
    out=$(timeout 60 "${runner[@]}" "$bin" 'a b' c 2>&1)
    if grep -qx 'argv\[1\]=a b' <<<"$out" && grep -qx 'argv\[2\]=c' <<<"$out"; then
      echo "PASS hello prints its arguments"
    else
      echo "FAIL hello did not print its arguments; got: $out"; fail=1
    fi
  fi
done
if [ $fail -ne 0 ]; then echo "check-guest-native: FAILED" >&2; exit 1; fi
echo "check-guest-native: $# programs pass natively ($arch)"
