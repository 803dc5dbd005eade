#!/usr/bin/env bash
# check-debian-image.sh ARCH IMAGE
#
# Verifies the Debian image (make rootfs-debian): e2fsck -fn, size under the limit, ownership
# kept (not squashed to root: /etc/shadow belongs to group shadow), mount points are real
# directories, the trimmed paths are gone; then dumps the tree (debugfs rdump) and runs its
# dynamically linked glibc programs with proot -r (under qemu for a foreign ARCH): bash,
# python3, find, grep, sed, tar+gzip, each with an output that is compared.
# Prints one line per check; exits 1 if any failed.
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 ARCH IMAGE" >&2; exit 2; }
arch=$1 img=$2
max_mib=${DEBIAN_MAX_MIB:-600}
[ -f "$img" ] || { echo "check-rootfs-debian: no image $img (make rootfs-debian)" >&2; exit 1; }
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
expect() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
dbg() { debugfs -R "$1" "$img" 2>/dev/null; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kbox-check-debian.XXXXXX") || exit 1
trap 'rm -rf --one-file-system "$tmp"' EXIT

if e2fsck -fn "$img" >"$tmp/fsck" 2>&1; then ok "e2fsck -fn clean"; else bad "e2fsck -fn: $(tail -3 "$tmp/fsck")"; fi
mib=$(( $(stat -c %s "$img") / 1048576 ))
expect "image is $mib MiB, under $max_mib MiB" test "$mib" -lt "$max_mib"
expect "block size 4096" grep -Eq '^Block size: +4096$' <(dumpe2fs -h "$img" 2>/dev/null)

shadow_gid=$(dbg "stat /etc/shadow" | awk '/^User:/ { for (i = 1; i <= NF; i++) if ($i == "Group:") print $(i + 1) }')
expect "/etc/shadow keeps a non-root group (gid $shadow_gid)" test -n "$shadow_gid" -a "$shadow_gid" != 0
for d in /proc /sys /dev /tmp; do
  expect "$d is a directory" grep -q 'Type: directory' <(dbg "stat $d")
done
# Entries of a directory in the image, from debugfs's parseable listing /ino/mode/uid/gid/name/size/.
entries() { dbg "ls -p $1" | awk -F/ 'NF > 6 && $6 != "." && $6 != ".." { print $6 }'; }
docs=$(entries /usr/share/man | wc -l)
expect "no man pages ($docs entries in /usr/share/man)" test "$docs" -eq 0
lists=$(entries /var/lib/apt/lists | grep -Evx 'lock|partial|auxfiles' | wc -l)
expect "no apt lists ($lists files)" test "$lists" -eq 0

# Run the image's own programs.
mkdir "$tmp/t"
dbg "rdump / $tmp/t" >/dev/null
[ -x "$tmp/t/usr/bin/bash" ] || { bad "rdump produced no /usr/bin/bash"; exit 1; }
if ! command -v proot >/dev/null; then bad "proot not found (make deps)"; exit 1; fi
run=(proot -r "$tmp/t" -w /)
[ "$arch" = "$(uname -m)" ] || run=(proot -q "qemu-$arch-static" -r "$tmp/t" -w /)
in_image() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${run[@]}" "$@" 2>&1; }

out=$(in_image /bin/bash -c 'echo "bash $BASH_VERSINFO"; echo $((6 * 7))')
expect "bash runs (got: $(tr '\n' ' ' <<<"$out"))" test "$(tail -1 <<<"$out")" = 42
out=$(in_image python3 -c 'import os, sys, json, email, sqlite3; print(os.uname().machine, json.loads("[45]")[0], sys.version_info.major)')
case $arch in x86_64) m=x86_64 ;; aarch64) m=aarch64 ;; esac
expect "python3 runs as $m with its standard library (json, email, sqlite3) (got: $out)" test "$out" = "$m 45 3"
out=$(in_image find /etc -maxdepth 1 -name passwd)
expect "find (got: $out)" test "$out" = /etc/passwd
out=$(in_image /bin/sh -c 'grep -c "^root:" /etc/passwd; echo hello world | sed "s/world/kbox/"')
expect "grep and sed (got: $(tr '\n' ' ' <<<"$out"))" test "$out" = "$(printf '1\nhello kbox')"
out=$(in_image /bin/sh -c 'cd /tmp && mkdir -p tt && echo data > tt/f && tar czf tt.tgz tt && rm -r tt && tar xzf tt.tgz && cat tt/f && rm -r tt tt.tgz')
expect "tar + gzip round trip (got: $out)" test "$out" = data

if [ $fail -ne 0 ]; then echo "check-rootfs-debian: FAILED ($img)" >&2; exit 1; fi
echo "check-rootfs-debian: $img passes"
