#!/bin/sh
# suite.sh LIST: runs, inside the VM, the test binaries LIST names (one "test NAME PATH
# [ARG...]" a line: libtest arguments such as a filter), each with --test-threads=1 in the
# checkout, with the environment make check-kbox gives them (LIST's "env NAME=VALUE"
# lines), leaving out the tests of its "skip TEST REASON" lines (libtest's --skip, a
# substring match), each announced with its reason. It prints each binary's counts and a
# closing "kbox-vm: suite: P passed, F failed", and exits non-zero if anything failed or
# did not finish. A "bench KBOX IMAGE GUESTS" line runs scripts/vm/bench.sh after the
# tests (a failed run counts as a binary that did not finish). Written for busybox sh as
# well as dash.
list=$1
here=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
passed=0
failed=0
broken=0
skips=""
while read -r kind a b; do
  case $kind in
    env) export "$a" ;;
    skip)
      echo "kbox-vm: skipped $a: $b"
      skips="$skips --skip $a"
      ;;
  esac
done <"$list"
cd "$KBOX_CHECKOUT" || exit 98
while read -r kind name path args; do
  [ "$kind" = test ] || continue
  log=${TMPDIR:-/tmp}/vm-$name.log
  echo "kbox-vm: running $name"
  began=$(date +%s)
  # shellcheck disable=SC2086 # the arguments are words
  "$path" --test-threads=1 $skips $args >"$log" 2>&1
  rc=$?
  took=$(($(date +%s) - began))
  p=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
    # The failures' own words, for the log run-vm.sh keeps.
    grep -E "^test .* FAILED" "$log" | sed "s/^/kbox-vm:   /"
    sed -n '/^failures:$/,$p' "$log" | sed "s/^/kbox-vm:   | /"
    [ "$f" -ne 0 ] || broken=$((broken + 1))
  fi
  echo "kbox-vm: $name: $p passed, $f failed (exit $rc, ${took}s)"
done <"$list"
while read -r kind kbox image guests; do
  [ "$kind" = bench ] || continue
  echo "kbox-vm: running bench"
  sh "$here/bench.sh" "$kbox" "$image" "$guests" || broken=$((broken + 1))
done <"$list"
echo "kbox-vm: suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$broken" -eq 0 ]
