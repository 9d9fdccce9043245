#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): set-up, generated-code freshness,
# unit tests, integration tests on this host (real cgroup v1, namespaces, daemon, jobctl, TLS), and
# the VM tier (the .deb in a Debian 12 guest with systemd and pure cgroup v2).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not vm"` to leave out the VM tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The keepalive tests drive a grpc-js client (tests/integration/grpcjs/, installed by npm on first use).
command -v node >/dev/null && command -v npm >/dev/null || scripts/apt-need.sh test nodejs npm
.venv/bin/python scripts/gen_proto.py --check
exec .venv/bin/python -m pytest -ra "$@"
