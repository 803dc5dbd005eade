#!/usr/bin/env bash
# debian-mirror.sh [SUITE]
#
# Prints the URI of the Debian mirror this host's apt already uses for SUITE (default
# bookworm): the first enabled `deb` source whose suite is exactly SUITE, from
# /etc/apt/sources.list, /etc/apt/sources.list.d/*.list (one-line format) and
# /etc/apt/sources.list.d/*.sources (deb822). $DEBIAN_MIRROR overrides it. Exits 1 with a
# message when none is found, so nothing in the repository names a mirror host.
set -euo pipefail
suite=${1:-bookworm}
if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; exit 0; fi
apt_dir=${APT_SOURCES_DIR:-/etc/apt}

one_line() {
  # deb [options] URI SUITE COMPONENTS...
  sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$@" 2>/dev/null |
    awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }'
}
deb822() {
  # Paragraphs separated by blank lines; fields Types, URIs, Suites, Enabled.
  awk -v s="$suite" '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " s " ") && uris != "") {
        split(uris, u, " "); print u[1]; found = 1; exit
      }
      types = uris = suites = enabled = ""
    }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    { line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
      if (key == "types") types = val; else if (key == "uris") uris = val
      else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val) }
    END { if (!found) flush() }
  ' "$@" 2>/dev/null
}

uri=""
shopt -s nullglob
for f in "$apt_dir/sources.list" "$apt_dir"/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  uri=$(one_line "$f")
  [ -z "$uri" ] || break
done
if [ -z "$uri" ]; then
  for f in "$apt_dir"/sources.list.d/*.sources; do
    uri=$(deb822 "$f")
    [ -z "$uri" ] || break
  done
fi
[ -n "$uri" ] || { echo "debian-mirror: no enabled 'deb' source for suite '$suite' in $apt_dir; set DEBIAN_MIRROR=http://<mirror>/debian" >&2; exit 1; }
echo "${uri%/}"
