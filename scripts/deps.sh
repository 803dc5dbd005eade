#!/usr/bin/env bash
# Installs what kbox needs to build and test, idempotently. Quick when nothing is missing:
# it only asks dpkg and rustup, calls apt-get only for packages that are absent, and
# builds passt only once (scripts/passt.sh).
# Debian packages named as arguments are installed too (make deps-vm's).
set -euo pipefail

apt_pkgs=(
  linux-source-6.12 bc flex bison            # the kernel library's source and build tools
  musl-tools                                 # static guest test programs
  gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static  # ARCH=aarch64
  busybox-static e2fsprogs fakeroot debootstrap debian-archive-keyring gpgv  # guest images
  binutils                                   # objdump: the decoder's reference
  proot hyperfine                            # make bench
  chromium fonts-liberation                  # make check: the --web dashboard in a real browser
  curl xz-utils make gcc libc6-dev           # scripts/passt.sh: --net=user's network stack, from source
  docker-registry skopeo                     # make check: kbox image pull from a registry on 127.0.0.1
)
apt_pkgs+=("$@")
targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq || { echo "deps: apt-get update failed (is a Debian mirror reachable?)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "deps: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { echo "deps: rustup target add $t"; rustup target add "$t"; }
done
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

# passt, found on PATH by --net=user: a newer one than bookworm's package (the script says why).
"$(dirname "$0")/passt.sh"
