#!/usr/bin/env bash
# scripts/apt-need.sh LABEL PACKAGE...: install (as root) those of the Debian packages that are missing.
# One place for what set-up, the .deb build and the VM harness all need on a fresh machine.
set -euo pipefail
label=$1; shift
need=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "$label: installing ${need[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
