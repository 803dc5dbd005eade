#!/usr/bin/env bash
# test-scripts.sh: make check-vm's own logic, without a VM: suite.sh's counting of libtest
# output (passes, failures, a binary that dies without a result, skips) and its benchmark
# rows (bench.sh), summary.sh's verdict, test-list.py's list, and run-vm.sh's refusal of
# bad arguments. One line per check; exits 1 if any failed.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
vm=$top/scripts/vm
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kbox-vm-scripts.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
# suite.sh keeps each binary's output there.
export TMPDIR=$tmp

# Fake test binaries: libtest's last line, or a death before it.
fake() {
  printf '#!/bin/sh\necho "args: $*"\n%s\n' "$2" >"$tmp/$1"
  chmod +x "$tmp/$1"
}
fake good 'echo "test result: ok. 3 passed; 0 failed; 0 ignored"; exit 0'
fake bad 'echo "test a ... FAILED"; echo "failures:"; echo "---- a stdout ----"; echo "test result: FAILED. 2 passed; 1 failed; 0 ignored"; exit 101'
fake dies 'echo "running 4 tests"; kill -9 $$'

list() {
  echo "env KBOX_CHECKOUT=$tmp"
  echo "skip slow_test it is slow"
  for t in "$@"; do echo "test $t $tmp/$t"; done
}
list good >"$tmp/l1"
out=$(sh "$vm/suite.sh" "$tmp/l1" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "kbox-vm: suite: 3 passed, 0 failed" <<<"$out" &&
  grep -q "args: --test-threads=1 --skip slow_test" "$tmp/vm-good.log" &&
  grep -q "kbox-vm: skipped slow_test: it is slow" <<<"$out"; then
  ok "suite.sh: a passing binary, with the skip passed on and announced"
else
  bad "suite.sh on a passing binary (exit $rc): $out"
fi
list good bad >"$tmp/l2"
out=$(sh "$vm/suite.sh" "$tmp/l2" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "kbox-vm: suite: 5 passed, 1 failed" <<<"$out" &&
  grep -q "kbox-vm:   test a ... FAILED" <<<"$out"; then
  ok "suite.sh: a failure is counted, shown, and fails the suite"
else
  bad "suite.sh with a failure (exit $rc): $out"
fi
list good dies >"$tmp/l3"
out=$(sh "$vm/suite.sh" "$tmp/l3" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "kbox-vm: suite: 3 passed, 0 failed" <<<"$out"; then
  ok "suite.sh: a binary that dies without a result fails the suite"
else
  bad "suite.sh with a dead binary (exit $rc): $out"
fi

# bench.sh through suite.sh: a row per call with each tier's ratio to native, the rewrite
# tier's totals; a kbox run that fails fails the suite.
mkdir -p "$tmp/guests"
printf '#!/bin/sh\nprintf "stat 2.0\\nfstat 1.0\\nopen+close 4.0\\nlseek+read64 1.0\\nwrite64 1.0\\ngetpid 0.5\\n"\n' >"$tmp/guests/bench"
printf '#!/bin/sh\necho "kbox: rewrite: 9 sites patched (0 promoted cancel-wrapper calls), 0 refused" >&2\nprintf "stat 6.0\\nfstat 2.0\\nopen+close 8.0\\nlseek+read64 3.0\\nwrite64 1.0\\ngetpid 1.0\\n"\n' >"$tmp/kbox"
printf '#!/bin/sh\nexit 1\n' >"$tmp/badkbox"
touch "$tmp/image"
chmod +x "$tmp/guests/bench" "$tmp/kbox" "$tmp/badkbox"
{ list good; echo "bench $tmp/kbox $tmp/image $tmp/guests"; } >"$tmp/l4"
out=$(sh "$vm/suite.sh" "$tmp/l4" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "bench: stat: native 2.0 us, seccomp 6.0 us (3.0x), trap 6.0 us (3.0x), rewrite 6.0 us (3.0x)" <<<"$out" &&
  grep -q "bench: rewrite of the bench program: 9 sites patched (0 promoted" <<<"$out"; then
  ok "suite.sh: a bench line gives each call's ratios and the rewrite totals"
else
  bad "suite.sh with a bench line (exit $rc): $out"
fi
{ list good; echo "bench $tmp/badkbox $tmp/image $tmp/guests"; } >"$tmp/l5"
out=$(sh "$vm/suite.sh" "$tmp/l5" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "bench: seccomp failed" <<<"$out"; then
  ok "suite.sh: a benchmark run that fails fails the suite"
else
  bad "suite.sh with a failing benchmark (exit $rc): $out"
fi

# summary.sh: both machines, nothing failed (a benchmark row is not a machine).
verdict() { printf '%s\n' "$@" >"$tmp/results"; "$vm/summary.sh" "$tmp/results" >"$tmp/sum" 2>&1; }
if verdict "vm x86_64, Debian 6.1 (tcg): 3 passed, 0 failed in 9s" "bench aarch64: stat: native 1 us" "vm aarch64, Debian 6.1 (tcg): 4 passed, 0 failed in 9s" &&
  grep -q "check-vm: 2 machines, 7 passed, 0 failed" "$tmp/sum"; then
  ok "summary.sh: two clean machines pass"
else
  bad "summary.sh on two clean machines: $(cat "$tmp/sum")"
fi
if ! verdict "vm x86_64, Debian 6.1 (tcg): 3 passed, 0 failed in 9s"; then
  ok "summary.sh: a machine missing fails"
else
  bad "summary.sh passed with one machine"
fi
if ! verdict "vm x86_64, Debian 6.1 (tcg): 3 passed, 0 failed in 9s" "vm aarch64, Debian 6.1 (tcg): FAILED: no end within 1800s (no result); see x"; then
  ok "summary.sh: a machine that failed fails"
else
  bad "summary.sh passed with a failed machine"
fi

# test-list.py: executables of test targets only, env and skip lines first.
printf '%s\n' \
  '{"reason":"compiler-artifact","target":{"name":"guest","kind":["test"]},"profile":{"test":true},"executable":"/x/guest-1"}' \
  '{"reason":"compiler-artifact","target":{"name":"kbox","kind":["bin"]},"profile":{"test":true},"executable":"/x/kbox-2"}' \
  '{"reason":"compiler-artifact","target":{"name":"kbox","kind":["bin"]},"profile":{"test":false},"executable":"/x/kbox"}' \
  '{"reason":"build-finished","success":true}' |
  "$vm/test-list.py" A=1 "--skip=t:why not" >"$tmp/list"
want=$'env A=1\nskip t why not\ntest guest /x/guest-1\ntest kbox-unit /x/kbox-2'
if [ "$(cat "$tmp/list")" = "$want" ]; then
  ok "test-list.py: the list"
else
  bad "test-list.py gave: $(cat "$tmp/list")"
fi

# run-vm.sh: bad arguments fail with a message before anything is fetched.
if ! "$vm/run-vm.sh" sparc "$tmp/list" "$tmp/out" 2>"$tmp/err" && grep -q "ARCH must be" "$tmp/err" &&
  ! "$vm/run-vm.sh" aarch64 "$tmp/list" "$tmp/out" 2>"$tmp/err" && grep -q "needs DISK" "$tmp/err" &&
  ! "$vm/run-vm.sh" x86_64 "$tmp/none" "$tmp/out" 2>"$tmp/err" && grep -q "no test list" "$tmp/err"; then
  ok "run-vm.sh: bad arguments are refused with a message"
else
  bad "run-vm.sh accepted bad arguments: $(cat "$tmp/err")"
fi
# A checkout under the host's /tmp: the VM's root gets a /tmp of its own, so the checkout is
# shared on both machines (kbox.work) and mounted only after that /tmp. Before, aarch64
# mounted it first and x86_64 not at all, and a fresh clone under /tmp failed at once on
# both machines.
tmp_at=$(grep -n '^ *mount -t tmpfs [a-z]* /newroot/tmp$' "$vm/init" | cut -d: -f1)
work_at=$(grep -n '^ *mount .*overlay "/newroot\$work"' "$vm/init" | cut -d: -f1)
works=$(grep -c 'kbox.work=\$top' "$vm/run-vm.sh")
if [ -n "$tmp_at" ] && [ -n "$work_at" ] && [ "$tmp_at" -lt "$work_at" ] && [ "$works" -eq 2 ]; then
  ok "init/run-vm.sh: both machines share the checkout, mounted after the VM's /tmp"
else
  bad "init/run-vm.sh: /tmp mounted on line ${tmp_at:-none}, the checkout on line ${work_at:-none}; kbox.work on $works machines"
fi
exit $fail
