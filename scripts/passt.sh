#!/usr/bin/env bash
# Installs the passt that --net=user runs: built from the source Debian trixie ships, pinned
# by its SHA-256, into $KBOX_PASST_PREFIX/bin (default /usr/local/bin, which comes before
# /usr/bin on PATH). Quick when that passt is installed already: it compares two files.
#
# Why not bookworm's package (0.0~git20230309): it loses what a host server sends after the
# guest shut the sending side of its connection (shutdown(SHUT_WR), as `nc </dev/null`
# does): passt ends its host socket with the data unsent, and the guest waits forever for
# the rest (tests/network.rs, user_mode_downloads_arrive_whole). Trixie's does not, and it
# sets up a connection in about 3/4 of the time (docs/network.md).
set -euo pipefail

prog=passt.sh
die() { echo "$prog: error: $*" >&2; exit 1; }

version=0.0~git20250503.587980c
sha256=69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49
url=http://deb.debian.org/debian/pool/main/p/passt/passt_${version}.orig.tar.xz
cache=${KBOX_CACHE:-$HOME/.cache/kbox}/passt-$version
dest=${KBOX_PASST_PREFIX:-/usr/local}/bin

# passt re-executes itself as PATH.avx2 where the CPU has AVX2 (the build Debian ships does
# the same), so on x86_64 both are built and installed side by side.
bins=(passt)
[ "$(uname -m)" = x86_64 ] && bins+=(passt.avx2)

built() {
  local b
  for b in "${bins[@]}"; do [ -x "$cache/src/$b" ] || return 1; done
}

installed() {
  local b
  for b in "${bins[@]}"; do cmp -s "$cache/src/$b" "$dest/$b" || return 1; done
}

if ! built; then
  for t in curl xz sha256sum make cc; do
    command -v "$t" >/dev/null || die "'$t' not found (make deps installs it)"
  done
  mkdir -p "$cache" || die "cannot create $cache"
  tarball=$cache/passt.orig.tar.xz
  if ! echo "$sha256  $tarball" | sha256sum -c --quiet - 2>/dev/null; then
    echo "$prog: fetching passt $version (Debian trixie's source)" >&2
    curl -fsS --retry 3 -m 300 -o "$tarball.part" "$url" || die "cannot download $url"
    echo "$sha256  $tarball.part" | sha256sum -c --quiet - \
      || { rm -f "$tarball.part"; die "$url does not have the SHA-256 this script pins"; }
    mv "$tarball.part" "$tarball"
  fi
  rm -rf "$cache/src" && mkdir -p "$cache/src"
  tar -xJf "$tarball" -C "$cache/src" --strip-components=1 || die "cannot unpack $tarball"
  echo "$prog: building ${bins[*]}" >&2
  # One make per binary: passt.avx2 depends on passt, and make would build that passt with
  # passt.avx2's own flags (-mavx2), for a CPU that may lack AVX2.
  : >"$cache/build.log"
  for b in "${bins[@]}"; do
    make -C "$cache/src" "$b" >>"$cache/build.log" 2>&1 || die "the build failed; see $cache/build.log"
  done
  built || die "the build made no ${bins[*]}; see $cache/build.log"
fi

if ! installed; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || [ -w "$dest" ] || as_root=(sudo)
  for b in "${bins[@]}"; do
    "${as_root[@]}" install -D -m 755 "$cache/src/$b" "$dest/$b" || die "cannot install $dest/$b"
  done
  echo "$prog: installed passt $version as $dest/passt" >&2
fi
