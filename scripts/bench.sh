#!/usr/bin/env bash
# The benchmark suite (issue 6), from a fresh Debian 12 machine, as root: set-up, then each benchmark in
# bench/ (each prints its figures beside baselines measured in the same run, as ratios, and a TARGET line
# per target; a missed target is followed by a profile of the daemon). Writes everything it printed, with
# the machine it ran on, to bench/RESULTS.md. About 5 minutes on an idle 2-core machine.
#
#   bash scripts/bench.sh                 all benchmarks
#   bash scripts/bench.sh stream_one ...  only these (module names in bench/)
#   BENCH_PROFILE=1 bash scripts/bench.sh also profile the daemon where targets are met
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (real cgroups, namespaces and a root daemon)" >&2
  exit 1
fi
bash scripts/setup.sh || exit 1
# The peers bench/sandbox_start.py measures jobworkerd against (unshare comes with util-linux).
scripts/apt-need.sh bench crun bubblewrap || exit 1
# py-spy (PyPI) shows the daemon's Python functions in the profiles; without it they show CPU per thread only.
.venv/bin/python -m pip install -q --disable-pip-version-check py-spy >/dev/null 2>&1 \
  || echo "bench: py-spy could not be installed; profiles will show CPU per thread only"

PY=.venv/bin/python
ALL=(start_latency sandbox_start network_start output_path jobctl_run stream_one stream_many follow_latency many_jobs hostile_user)
if [ "$#" -gt 0 ]; then BENCHES=("$@"); else BENCHES=("${ALL[@]}"); fi
COMMAND="bash scripts/bench.sh${*:+ $*}"
OUT=$(mktemp /tmp/jobworkerd-bench-out.XXXXXX)
trap 'rm -f "$OUT"' EXIT

machine() {
  echo "- command: \`$COMMAND\`"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: nproc $(nproc), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "- cgroups: $(if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo v2; else echo v1/hybrid; fi)"
  echo "- $($PY --version 2>&1) ($(readlink -f $PY)), grpcio $($PY -c 'import grpc; print(grpc.__version__)'), protobuf $($PY -c 'import google.protobuf as p; print(p.__version__)'), $(openssl version)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
machine | tee "$OUT"
echo | tee -a "$OUT"

failed=()
start_all=$(date +%s)
for bench in "${BENCHES[@]}"; do
  if [ ! -f "bench/$bench.py" ]; then
    echo "bench: no benchmark bench/$bench.py" | tee -a "$OUT"
    failed+=("$bench")
    continue
  fi
  t0=$(date +%s)
  # Each benchmark stops by itself; the timeout is the last resort (SIGTERM runs its clean-up, then SIGKILL).
  timeout --kill-after=60 900 "$PY" "bench/$bench.py" 2>&1 | tee -a "$OUT"
  rc=${PIPESTATUS[0]}
  echo "($bench: $(( $(date +%s) - t0 )) s, exit $rc)" | tee -a "$OUT"
  echo | tee -a "$OUT"
  [ "$rc" -eq 0 ] || failed+=("$bench")
done
"$PY" bench/common.py cleanup 2>&1 | tee -a "$OUT"
echo "total: $(( $(date +%s) - start_all )) s; failed: ${failed[*]:-none}" | tee -a "$OUT"

{
  echo "# Benchmark results"
  echo
  echo "Written by \`$COMMAND\` (see bench/*.py for what each measures). Every figure stands beside a"
  echo "baseline measured in the same run; ratios are what to compare across machines."
  echo
  sed -n '1,/^$/p' "$OUT"
  echo "## Targets"
  echo
  echo '```'
  grep -E '^(TARGET|FAILED|WARNING)' "$OUT" || echo "(none printed)"
  echo '```'
  echo
  echo "## Output"
  echo
  echo '```'
  sed '1,/^$/d' "$OUT"
  echo '```'
} > bench/RESULTS.md
echo "bench: wrote bench/RESULTS.md"
[ "${#failed[@]}" -eq 0 ]
