#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) for development: system packages, and a virtual
# environment in .venv with the project installed in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/apt-need.sh setup python3-venv python3-dev gcc openssl iproute2 util-linux procps libnftables1

# Debian's own interpreter, as the .deb uses on target machines (not a pyenv shim that may shadow it).
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'; } >"$log" 2>&1; then
  cat "$log"; echo "setup: pip install failed" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "setup: .venv ready ($(.venv/bin/python --version))"
