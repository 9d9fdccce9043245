#!/usr/bin/env bash
# Bring up a dev daemon (dev CA and certificates, dev config, all under .dev/) and run a job through jobctl.
#   bash scripts/demo.sh         set up, start the daemon if it is not running, run a limited job
#   bash scripts/demo.sh stop    stop the dev daemon (its running jobs are stopped and recorded)
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=$PWD/.dev
PIDFILE=$DEV/daemon.pid

if [ "${1:-}" = stop ]; then
  [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null && echo "demo: daemon stopping" || echo "demo: no daemon running"
  rm -f "$PIDFILE"; exit 0
fi

[ "$(id -u)" = 0 ] || { echo "demo: run as root (the daemon creates cgroups and namespaces)" >&2; exit 1; }
bash scripts/setup.sh
J=.venv/bin/jobworkerd
mkdir -p "$DEV"
if [ ! -f "$DEV/ca/ca.crt" ]; then
  $J ca init --dir "$DEV/ca" >/dev/null
  $J ca issue --dir "$DEV/ca" --server --host localhost --host 127.0.0.1 --host "$(hostname)" --out "$DEV/server" >/dev/null
  $J ca issue --dir "$DEV/ca" --name "$(id -un)" --role admin --out "$DEV/admin" >/dev/null
fi
cat > "$DEV/config.yaml" <<CONF
# Dev config: the defaults of config/config.yaml, with dev certificates and dev directories.
listen: "127.0.0.1:7443"
tls: {ca: $DEV/ca/ca.crt, cert: $DEV/server.crt, key: $DEV/server.key}
state_dir: $DEV/state
run_dir: /run/jobworkerd-dev
cgroup: {subtree: jobworkerd-dev}
CONF
cat > "$DEV/jobctl.env" <<ENV
export JOBCTL_ADDR=localhost:7443 JOBCTL_CA=$DEV/ca/ca.crt JOBCTL_CERT=$DEV/admin.crt JOBCTL_KEY=$DEV/admin.key
export PATH=$PWD/.venv/bin:\$PATH
ENV
. "$DEV/jobctl.env"

if ! { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }; then
  : > "$DEV/daemon.log"
  (cd / && exec setsid "$OLDPWD/$J" serve --config "$DEV/config.yaml" >>"$DEV/daemon.log" 2>&1 </dev/null) &
  echo $! > "$PIDFILE"
  for _ in $(seq 100); do grep -q "listening on" "$DEV/daemon.log" && break; sleep 0.1; done
  grep -q "listening on" "$DEV/daemon.log" || { cat "$DEV/daemon.log"; exit 1; }
fi
echo "demo: jobworkerd running (pid $(cat "$PIDFILE"), log $DEV/daemon.log)"
echo "demo: \$ jobctl run --cpu 0.5 --mem 256M -- sh -c '...'"
jobctl run --cpu 0.5 --mem 256M -- sh -c 'echo "hello from job PID $$ as $(id -un)"; echo "processes it can see:"; ps -e -o pid=,comm=; echo "network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " ")"'
echo "demo: done. To use jobctl yourself:  . $DEV/jobctl.env && jobctl ls"
echo "demo: to stop the daemon:             bash scripts/demo.sh stop"
