#!/usr/bin/env bash
# modules.sh MODDIR MODULE...
#
# Prints, one per line and dependencies first, the .ko paths (relative to MODDIR, a
# kernel's lib/modules/VERSION) that loading MODULE... needs. The VM's init loads them in
# this order with busybox insmod, so no modules.dep or modprobe is needed inside.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODDIR MODULE..." >&2; exit 2; }
moddir=$1
shift
declare -A path seen
while IFS= read -r f; do
  name=$(basename "$f" .ko)
  path[${name//-/_}]=${f#"$moddir"/}
done < <(find "$moddir/kernel" -name '*.ko')

visit() {
  local m=${1//-/_} dep
  [ -z "${seen[$m]:-}" ] || return 0
  seen[$m]=1
  # Built into the kernel: nothing to load.
  if [ -z "${path[$m]:-}" ]; then
    grep -q "/$1.ko$\|/${m}.ko$" "$moddir/modules.builtin" && return 0
    echo "modules.sh: no module $1 in $moddir" >&2
    exit 1
  fi
  local deps
  deps=$(modinfo -F depends "$moddir/${path[$m]}")
  for dep in ${deps//,/ }; do
    visit "$dep"
  done
  echo "${path[$m]}"
}
for m in "$@"; do
  visit "$m"
done
