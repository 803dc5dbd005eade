#!/usr/bin/env bash
# stage-busybox.sh ROOT BBDIR BBVER ARCH APPLETS IMG SIZE_MIB GUEST_BIN...
#
# Runs INSIDE fakeroot (build-rootfs.sh starts it): creates the default image's tree in ROOT
# (which must not exist) and writes it to IMG with mke2fs -d in the same fakeroot session, so
# the ownership (root:root) and device nodes recorded by fakeroot end up in the image.
set -euo pipefail
prog=rootfs
die() { echo "$prog: error: $*" >&2; exit 1; }

[ $# -ge 7 ] || die "usage: $0 ROOT BBDIR BBVER ARCH APPLETS IMG SIZE_MIB [GUEST_BIN...]"
root=$1 bb=$2 bbver=$3 arch=$4 applets=$5 img=$6 size=$7
shift 7
[ "$(id -u)" -eq 0 ] || die "must run as (fake)root; build-rootfs.sh runs it under fakeroot"
[ ! -e "$root" ] || die "$root already exists"

umask 022
mkdir -p "$root"
cd "$root"

# Mount points and standard directories.
mkdir -p bin sbin usr/bin usr/sbin lib etc dev dev/pts dev/shm proc sys run tmp var/tmp var/log \
  root home mnt opt/kbox-tests
chmod 1777 tmp var/tmp dev/shm
chmod 0700 root

# busybox and one symlink per applet, as busybox itself lists them (bin/sh, usr/bin/awk, ...).
install -m 0755 "$bb/bin/busybox" bin/busybox
while IFS= read -r a; do
  [ -n "$a" ] || continue
  case $a in /* | *..*) die "unexpected applet path '$a' from busybox --list-full" ;; esac
  [ "$a" != bin/busybox ] || continue
  mkdir -p "$(dirname "$a")"
  [ -e "$a" ] || [ -L "$a" ] || ln -s /bin/busybox "$a"
done <"$applets"

# A few device nodes, for use before (or without) anything being mounted on /dev.
mknod -m 0666 dev/null c 1 3
mknod -m 0666 dev/zero c 1 5
mknod -m 0666 dev/full c 1 7
mknod -m 0666 dev/random c 1 8
mknod -m 0666 dev/urandom c 1 9
mknod -m 0666 dev/tty c 5 0
mknod -m 0600 dev/console c 5 1
mknod -m 0666 dev/ptmx c 5 2
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout
ln -s /proc/self/fd/2 dev/stderr

# Minimal /etc. No shadow file: the password fields in passwd are "*" (locked; busybox's user
# lookup rejects an empty field, so `id` would print no name).
cat >etc/passwd <<'EOF'
root:*:0:0:root:/root:/bin/sh
nobody:*:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >etc/group <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
echo kbox >etc/hostname
cat >etc/hosts <<'EOF'
127.0.0.1	localhost kbox
::1	localhost ip6-localhost ip6-loopback
EOF
cat >etc/resolv.conf <<'EOF'
# kbox default guest image. Replace with your resolver if the guest has a network.
nameserver 127.0.0.1
EOF
cat >etc/os-release <<EOF
NAME="kbox"
ID=kbox
PRETTY_NAME="kbox guest ($arch, Debian busybox-static $bbver)"
VERSION_ID="1"
BUSYBOX_VERSION="$bbver"
EOF
cat >etc/profile <<'EOF'
# /etc/profile of the kbox default guest image (busybox sh).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/kbox-tests
export HOME=${HOME:-/root}
export PS1='kbox:\w\$ '
umask 022
EOF
echo /bin/sh >etc/shells
chmod 0644 etc/passwd etc/group etc/hostname etc/hosts etc/resolv.conf etc/os-release etc/profile etc/shells

# Guest test programs.
for g in "$@"; do
  install -m 0755 "$g" "opt/kbox-tests/$(basename "$g")"
done

cd /
# -E root_owner: the root directory is 0:0 too; everything else is 0:0 through fakeroot.
mke2fs -q -t ext4 -b 4096 -L kbox-rootfs -E root_owner=0:0 -d "$root" -F "$img" "${size}M" >/dev/null \
  || die "mke2fs -d $root $img failed (disk full?)"
