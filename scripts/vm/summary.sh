#!/usr/bin/env bash
# summary.sh RESULTS: the closing line of make check-vm over run-vm.sh's lines ("vm ...:
# P passed, F failed in Ts" or "vm ...: FAILED: ..."); exits non-zero unless every machine
# ran and nothing failed.
set -euo pipefail
results=$1
machines=0 bad=0 passed=0 failed=0
while IFS= read -r line; do
  case $line in vm\ *) ;; *) continue ;; esac
  machines=$((machines + 1))
  if [[ $line =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  fi
  [[ $line == *FAILED* ]] && bad=$((bad + 1))
done <"${results}"
echo "check-vm: $machines machines, $passed passed, $failed failed"
[ "$machines" -eq 2 ] && [ "$bad" -eq 0 ] && [ "$failed" -eq 0 ]
