#!/usr/bin/env bash
# fetch-deb.sh PKG DEBARCH
#
# Downloads the Debian package PKG for the Debian architecture DEBARCH (amd64, arm64, ...)
# with the host's apt configuration, extracts it (dpkg-deb -x, no maintainer scripts, no root
# needed for the extraction) and prints the extraction directory on stdout:
#
#     $KBOX_CACHE/debs/PKG_DEBARCH/          (KBOX_CACHE defaults to ~/.cache/kbox)
#
# The directory holds the package's files plus .kbox-version (the exact Debian version that was
# extracted) and .kbox-deb (the path of the cached .deb). It is re-extracted only when apt's
# candidate version changes. For a foreign DEBARCH the dpkg architecture is added (once) and
# apt-get update is run once. Progress goes to stderr; any failure exits non-zero with a message.
set -euo pipefail

prog=fetch-deb
die() { echo "$prog: error: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }

[ $# -eq 2 ] || die "usage: $0 PKG DEBARCH   (e.g. $0 busybox-static arm64)"
pkg=$1
arch=$2
[[ $pkg =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "'$pkg' is not a valid Debian package name"
[[ $arch =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "'$arch' is not a valid Debian architecture name"
for t in apt-get apt-cache dpkg dpkg-deb flock; do
  command -v "$t" >/dev/null || die "'$t' not found; this script needs a Debian-style host (apt, dpkg)"
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "'$*' needs root (run as root or install sudo)"
  fi
}

cache=${KBOX_CACHE:-$HOME/.cache/kbox}
debs=$cache/debs
mkdir -p "$debs" || die "cannot create $debs"
# One fetch at a time per cache: concurrent builds share the cache and apt's state.
exec 9>"$debs/.lock"
flock 9

host_arch=$(dpkg --print-architecture)
updated=0
if [ "$arch" != "$host_arch" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    # Refuse typos before touching the host's dpkg configuration.
    case $arch in
      amd64|arm64|armel|armhf|i386|mips64el|mipsel|ppc64el|s390x|riscv64) ;;
      *) die "'$arch' is not a Debian architecture (expected e.g. amd64, arm64)" ;;
    esac
    say "adding dpkg foreign architecture $arch"
    as_root dpkg --add-architecture "$arch" || die "dpkg --add-architecture $arch failed"
    say "apt-get update (new architecture $arch)"
    as_root apt-get update -qq >&2 || die "apt-get update failed (is the Debian mirror reachable?)"
    updated=1
  fi
fi

candidate() {
  # The version apt would download; empty when apt does not know PKG:ARCH.
  apt-cache policy "$pkg:$arch" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '^(none)$' || true
}
ver=$(candidate)
if [ -z "$ver" ] && [ $updated -eq 0 ]; then
  say "apt does not know $pkg:$arch yet; apt-get update"
  as_root apt-get update -qq >&2 || die "apt-get update failed (is the Debian mirror reachable?)"
  ver=$(candidate)
fi
[ -n "$ver" ] || die "no package '$pkg' for architecture '$arch' in the apt sources (check the name, the architecture and /etc/apt/sources.list*)"

out=$debs/${pkg}_$arch
if [ -f "$out/.kbox-version" ] && [ "$(cat "$out/.kbox-version")" = "$ver" ]; then
  say "$pkg:$arch $ver already extracted"
  echo "$out"
  exit 0
fi

# Temporary names live in $debs so the final renames stay on one file system.
tmp=$(mktemp -d "$debs/.tmp.${pkg}_$arch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

file_ver=${ver//:/%3a}   # apt-get download URL-encodes the epoch separator
deb=$debs/${pkg}_${file_ver}_$arch.deb
if [ -s "$deb" ] && dpkg-deb --info "$deb" >/dev/null 2>&1; then
  say "using cached $(basename "$deb")"
else
  say "downloading $pkg:$arch $ver"
  # As root apt would drop to the _apt user, which cannot write into a 0700 home; the
  # download needs no privilege, so keep it as the calling user.
  sandbox=()
  [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
  (cd "$tmp" && apt-get download -q "${sandbox[@]}" "$pkg:$arch=$ver" >&2) \
    || die "apt-get download $pkg:$arch=$ver failed (no network to the Debian mirror? stale lists: apt-get update?)"
  got=("$tmp"/*.deb)
  [ -f "${got[0]}" ] || die "apt-get download $pkg:$arch produced no .deb"
  dpkg-deb --info "${got[0]}" >/dev/null 2>&1 || die "downloaded $(basename "${got[0]}") is not a valid .deb"
  mv -f "${got[0]}" "$deb" || die "cannot store $deb (disk full?)"
fi

say "extracting $(basename "$deb")"
mkdir "$tmp/x"
dpkg-deb -x "$deb" "$tmp/x" || die "dpkg-deb -x $deb failed (disk full? corrupt .deb?)"
echo "$ver" >"$tmp/x/.kbox-version"
echo "$deb" >"$tmp/x/.kbox-deb"
rm -rf "$out"
mv "$tmp/x" "$out" || die "cannot move the extraction to $out"
say "$pkg:$arch $ver extracted to $out"
echo "$out"
