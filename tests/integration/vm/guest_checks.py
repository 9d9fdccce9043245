#!/usr/bin/python3
"""The VM tier's guest side: runs as root inside the throwaway Debian 12 guest (systemd, pure cgroup
v2), standard library only. Installs the shared .deb with apt (no network), drives the service
through jobctl and the cgroup files, and writes to the share (/mnt/host/out):

    results.json   {"checks": [{"name", "ok", "detail", "seconds"}...], "facts": {...}}, rewritten
                   after every check so a timeout still leaves the earlier results
    transcript.txt install output, systemctl status, a limited job (for the closing note)
    jobworkerd-journal.txt   journalctl -u jobworkerd

Assertions are on cgroup counters and on what the daemon recorded, with loose bounds where time is
involved: the guest runs under software emulation and is slow.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
import urllib.request

SHARE = "/mnt/host"
OUT = os.path.join(SHARE, "out")
SERVICE = "jobworkerd.service"
SVC_CG = "/sys/fs/cgroup/system.slice/jobworkerd.service"
JOBS_CG = os.path.join(SVC_CG, "jobs")
MiB = 1024 * 1024


# One job's view, as JSON: its cgroup limits and each attempt's outcome ("ok" or the errno's name).
SANDBOX_PROBE = r"""
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def connect(path):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).connect(path)
status = open("/proc/self/status").read()
print(json.dumps({
    "uid": os.getuid(),
    "hostname": socket.gethostname(),
    "memory.max": open("/sys/fs/cgroup/memory.max").read().strip(),
    "pids.max": open("/sys/fs/cgroup/pids.max").read().strip(),
    "proc_cgroup": open("/proc/self/cgroup").read().strip(),
    "cgroups_below": sum(len(dirs) for _, dirs, _ in os.walk("/sys/fs/cgroup")),
    "mount": "ok" if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) == 0 else errno.errorcode[ctypes.get_errno()],
    "keyctl": call(250, 0, -3, 0),
    "unshare_user": call(272, 0x10000000),
    "write_etc": attempt(lambda: open("/etc/jobworkerd-x", "w")),
    "write_cgroup": attempt(lambda: open("/sys/fs/cgroup/memory.max", "w").write("max")),
    "journal_socket": attempt(lambda: connect("/run/systemd/journal/socket")),
    "block_device": attempt(lambda: open("/dev/vda", "rb").read(1)),
    "mknod_block_device": attempt(lambda: (os.mknod("/tmp/disk", 0o60600, os.makedev(254, 0)),
                                           open("/tmp/disk", "rb").read(1))),
    "init_module": call(175, None, 0, b""),
    "finit_module": call(313, -1, b"", 0),
    "reboot": call(169, 0, 0, 0, None),
    "bpf": call(321, 0, None, 0),
    "clock_settime": call(227, 0, (ctypes.c_long * 2)(0, 0)),
    "world_writable_host_dir": attempt(lambda: open("/var/lib/jobworkerd-ww/x", "w")),
    "other_tmp": attempt(lambda: open("/tmp/secret", "rb")),
    "other_shm": attempt(lambda: open("/dev/shm/secret", "rb")),
    "proc_keys_bytes": len(open("/proc/keys", "rb").read()),
    "setuid_euid": int(os.popen("/var/lib/jobworkerd-ww/id -u").read() or -1),
    "no_new_privs": status.split("NoNewPrivs:")[1].split()[0],
    "cap_eff": status.split("CapEff:")[1].split()[0],
}))
"""

checks: list[dict] = []
facts: dict = {}
_transcript = open(os.path.join(OUT, "transcript.txt"), "w", buffering=1)


def save() -> None:
    tmp = os.path.join(OUT, "results.json.tmp")
    with open(tmp, "w") as handle:
        json.dump({"checks": checks, "facts": facts}, handle, indent=2, default=str)
    os.replace(tmp, os.path.join(OUT, "results.json"))


def note(text: str) -> None:
    print(text, flush=True)


def transcript(text: str) -> None:
    _transcript.write(text if text.endswith("\n") else text + "\n")


def sh(cmd: str | list[str], timeout: float = 120, record: bool = False) -> subprocess.CompletedProcess:
    """Run a command (a string goes through sh), output captured as text (stderr merged)."""
    shell = isinstance(cmd, str)
    shown = cmd if shell else shlex.join(cmd)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc = subprocess.CompletedProcess(cmd, 124, out + f"\n[timed out after {timeout}s]\n")
    took = time.monotonic() - start
    note(f"$ {shown}  -> rc={proc.returncode} ({took:.1f}s)")
    if record:
        shown_out = "".join(l for l in proc.stdout.splitlines(keepends=True)
                            if not (l.startswith("(Reading database") and "files and directories" not in l))
        transcript(f"# {shown}\n{shown_out}" + (f"[exit status {proc.returncode}]\n" if proc.returncode else ""))
    return proc


def must(cmd: str | list[str], timeout: float = 120, record: bool = False) -> str:
    proc = sh(cmd, timeout=timeout, record=record)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {proc.returncode}: {proc.stdout.strip()[-2000:]}")
    return proc.stdout


class Skip(Exception):
    """A check that could not run because an earlier one failed."""


def check(name: str, needs: tuple[str, ...] = ()):
    """Run fn as the check `name`; fn returns a dict of details or raises AssertionError."""

    def decorator(fn):
        start = time.monotonic()
        note(f"=== {name}")
        entry: dict = {"name": name, "ok": False, "detail": {}}
        try:
            failed = [n for n in needs if not any(c["name"] == n and c["ok"] for c in checks)]
            if failed:
                raise Skip(f"not run: needs {', '.join(failed)}")
            entry["detail"] = fn() or {}
            entry["ok"] = True
        except Skip as exc:
            entry["error"] = str(exc)
            entry["skipped"] = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()
        entry["seconds"] = round(time.monotonic() - start, 1)
        checks.append(entry)
        note(f"=== {name}: {'ok' if entry['ok'] else 'FAILED ' + entry.get('error', '')} ({entry['seconds']}s)")
        save()
        return fn

    return decorator


# ---- helpers -------------------------------------------------------------------------------------


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def keyed(path: str) -> dict[str, int]:
    """A flat keyed cgroup file (memory.events, cpu.stat, pids.events) as a dict."""
    result = {}
    for line in read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def io_stat(path: str, dev: str) -> dict[str, int]:
    for line in read(path).splitlines():
        fields = line.split()
        if fields and fields[0] == dev:
            return {k: int(v) for k, v in (f.split("=", 1) for f in fields[1:])}
    return {}


def jobctl(*args: str, timeout: float = 120, record: bool = False) -> subprocess.CompletedProcess:
    return sh(["jobctl", *args], timeout=timeout, record=record)


def start(*args: str) -> str:
    """jobctl run -d ARGS -> the job id."""
    job_id = must(["jobctl", "run", "-d", *args]).strip().splitlines()[-1].strip()
    if not job_id or " " in job_id:
        raise AssertionError(f"jobctl run -d printed {job_id!r}, not a job id")
    return job_id


def status(job_id: str) -> dict:
    return json.loads(must(["jobctl", "status", "-o", "json", job_id]))


def wait_for(what: str, predicate, timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_running(job_id: str, timeout: float = 60) -> str:
    """`jobctl run -d` returns once the program has been exec'd: wait (without more jobctl calls,
    which are slow under emulation) until the job's cgroup holds its processes. Returns the cgroup."""

    def populated():
        try:
            cg = job_cgroup(job_id)
            return cg if read(os.path.join(cg, "cgroup.procs")).split() else None
        except (AssertionError, OSError):
            return None

    return wait_for(f"job {job_id}'s cgroup populated", populated, timeout, 0.2)


def wait_finished(job_id: str, timeout: float = 120) -> dict:
    sh(["jobctl", "wait", job_id], timeout=timeout)
    return wait_for(f"job {job_id} finished", lambda: (j := status(job_id))["state"] == "finished" and j, 30)


def stop(job_id: str, grace: str = "2") -> dict:
    """jobctl stop returns the job's final status once it has ended."""
    must(["jobctl", "stop", "--grace", grace, job_id], timeout=120)
    return wait_for(f"job {job_id} finished", lambda: (j := status(job_id))["state"] == "finished" and j, 60, 1)


def job_cgroup(job_id: str) -> str:
    """jobs/<group>/<id>: root's jobs (an admin's) are in jobs/admin."""
    path = os.path.join(JOBS_CG, "admin", job_id)
    if os.path.isdir(path):
        return path
    found = [p for p in glob.glob(os.path.join(JOBS_CG, "*", "*")) if job_id in os.path.basename(p)]
    if len(found) == 1:
        return found[0]
    listing = sorted(glob.glob(os.path.join(JOBS_CG, "*")) + glob.glob(os.path.join(JOBS_CG, "*", "*")))
    raise AssertionError(f"no cgroup for job {job_id} under {JOBS_CG}/<group>: {listing}")


def shipped_ceiling(section: str, key: str) -> str:
    """A value of limits.<section> in the installed config (the shipped one), without a YAML parser."""
    lines = read("/etc/jobworkerd/config.yaml").splitlines()
    start = lines.index(f"  {section}:")
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        name, _, value = line.strip().partition(":")
        if name == key:
            return value.split("#", 1)[0].strip()
    raise AssertionError(f"limits.{section}.{key} not found in /etc/jobworkerd/config.yaml")


def show(*props: str) -> dict[str, str]:
    out = must(["systemctl", "show", SERVICE, *[f"--property={p}" for p in props]])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def procs_under(prefix: str) -> list[tuple[int, str, str]]:
    """(pid, comm, cgroup) of every process whose cgroup v2 path starts with prefix."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = read(f"/proc/{entry}/cgroup").strip().split("::", 1)[-1]
            comm = read(f"/proc/{entry}/comm").strip()
        except OSError:
            continue
        if cgroup.startswith(prefix):
            found.append((int(entry), comm, cgroup))
    return found


def cpu_max_cores(text: str) -> float | None:
    """'20000 100000' -> 0.2; 'max 100000' -> None."""
    quota, _, period = text.strip().partition(" ")
    return None if quota == "max" else int(quota) / int(period)


IO_DIR = "/var/lib/jobworkerd-io-test"  # on the disk; a job's own directory is writable (its /var/tmp is a tmpfs)


def io_dir() -> str:
    os.makedirs(IO_DIR, exist_ok=True)
    os.chmod(IO_DIR, 0o1777)
    return IO_DIR


def root_device() -> str:
    return must(["mountpoint", "-d", "/"]).strip()


# ---- man pages and completion (registered in main) ------------------------------------------------

COMPLETION = "/usr/share/bash-completion/completions/jobctl"


def check_man_pages() -> dict:
    """man finds the .deb's pages where man-db looks (the image has man-db), and renders them."""
    if not os.path.exists("/usr/bin/man"):
        raise AssertionError("man-db is not installed in the guest image (BASE_PKGS in vm-harness.sh)")
    found = {}
    for name, section in (("jobctl", "1"), ("jobworkerd", "8")):
        path = must(["man", "-w", name]).strip()
        if path != f"/usr/share/man/man{section}/{name}.{section}.gz":
            raise AssertionError(f"man -w {name} found {path!r}")
        text = must(f"MANWIDTH=100 man -P cat {section} {name}")
        wanted = "jobctl context add" if name == "jobctl" else "jobworkerd ca issue"
        if wanted not in text:
            raise AssertionError(f"man {section} {name} does not render {wanted!r}: {text[:500]}")
        found[name] = path
    return found


def check_bash_completion() -> dict:
    """The completion file is where bash-completion loads it from, and completes commands and, from
    the running daemon (root's package-made config), job ids."""
    if not os.path.isfile(COMPLETION):
        raise AssertionError(f"{COMPLETION} missing after install")
    job_ids = {j["id"] for j in json.loads(must(["jobctl", "ls", "-o", "json"]))}

    def complete(*words: str) -> set[str]:
        script = (f"source {COMPLETION}; COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); "
                  "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _jobctl jobctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
        return {line for line in must(["bash", "--norc", "--noprofile", "-c", script]).splitlines() if line}

    commands = complete("jobctl", "")
    # the ids come from one ListJobs within 2 s; emulation is slow, so a miss is retried twice
    for attempt in range(3):
        t0 = time.monotonic()
        ids = complete("jobctl", "status", "")
        took = round(time.monotonic() - t0, 1)
        if ids:
            break
    if not {"run", "logs", "status", "ls", "stop", "wait", "context"} <= commands:
        raise AssertionError(f"jobctl <TAB> offered {sorted(commands)}")
    if not job_ids or ids != job_ids:
        raise AssertionError(f"jobctl status <TAB> offered {sorted(ids)}, jobctl ls has {sorted(job_ids)}")
    return {"commands": sorted(commands), "ids_offered": len(ids), "attempts": attempt + 1, "seconds": took}


# ---- metrics and the journal (registered in main) -------------------------------------------------

METRICS_URL = "http://127.0.0.1:9464/metrics"  # the shipped config's metrics.listen
METRIC_TYPES = {
    "jobworkerd_jobs_started_total": "counter",
    "jobworkerd_jobs_running": "gauge",
    "jobworkerd_jobs_finished_total": "counter",
    "jobworkerd_start_latency_seconds": "histogram",
    "jobworkerd_output_bytes_total": "counter",
    "jobworkerd_stream_clients": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


def scrape() -> str:
    with urllib.request.urlopen(METRICS_URL, timeout=30) as response:
        return response.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample line `name{labels} value` of a scrape."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise AssertionError(f"no sample {wanted} in the scrape")


def tcp_listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in read(table).splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.append(address)
    return found


def check_metrics_endpoint() -> dict:
    """After apt install, the shipped config's endpoint answers on 127.0.0.1:9464 (and only there) with the
    series, and a job run through jobctl moves the counters by one."""
    before = scrape()
    missing = [n for n, kind in METRIC_TYPES.items() if f"# TYPE {n} {kind}" not in before]
    if missing:
        raise AssertionError(f"series missing from {METRICS_URL}: {missing}\n{before[:3000]}")
    listeners = tcp_listeners(9464)
    if listeners != ["0100007F"]:  # 127.0.0.1, and no wildcard or other address
        raise AssertionError(f"port 9464 listens on {listeners}, not on 127.0.0.1 alone")
    counts = lambda text: (metric(text, "jobworkerd_jobs_started_total"),  # noqa: E731
                           metric(text, "jobworkerd_jobs_finished_total", 'reason="exited"'),
                           metric(text, "jobworkerd_start_latency_seconds_count"))
    started, exited, starts_timed = counts(before)
    must(["jobctl", "run", "--", "true"])
    after = wait_for("the job counted as finished", lambda: (t := scrape()) and counts(t)[1] == exited + 1 and t, 30)
    detail = {"before": [started, exited, starts_timed], "after": list(counts(after)),
              "running": metric(after, "jobworkerd_jobs_running"), "listeners": listeners,
              "process_resident_memory_bytes": metric(after, "process_resident_memory_bytes")}
    if counts(after) != (started + 1, exited + 1, starts_timed + 1):
        raise AssertionError(f"one job did not move started, finished{{exited}} and the latency count by one: {detail}")
    return detail


# An "internet" namespace made in the guest (the guest has no network of its own): a veth up0 192.0.2.1/30 in
# the guest's namespace, down0 192.0.2.2/30 in `jwinet`, where a TCP server answers with its peer's address.
NET_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8080)); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(("hello " + peer[0] + "\n").encode()); c.close()
"""
NET_PROBE = r"""
import errno, socket, time
t = time.monotonic()
try:
    print("ok", socket.create_connection(("192.0.2.2", 8080), timeout=3).recv(100).decode().strip(), end=" ")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, "timeout"), end=" ")
print(round(time.monotonic() - t, 2))
"""


def daemon_nft(*commands: str) -> str:
    """The daemon's own libnftables binding, run by its own interpreter (the guest has no nft command)."""
    with open(f"/proc/{show('MainPID')['MainPID']}/cmdline", "rb") as handle:
        python = handle.read().split(b"\0")[0].decode()  # its venv's interpreter (exe would be the real binary)
    code = "import sys; from jobworkerd.network.nftables import Nft; print(Nft().run(sys.argv[1]))"
    return must([python, "-c", code, *commands])


def job_links() -> list[str]:
    return [n for n in os.listdir("/sys/class/net") if n.startswith("jw") or n == "jobworkerd0"]


def check_network_bridge() -> dict:
    # Bridge mode on systemd and cgroup v2: NAT to the upstream namespace, --net none and --allow refuse,
    # and `systemctl stop` takes the bridge, every veth and the nftables table with it.
    must(["ip", "netns", "add", "jwinet"])
    server = None
    try:
        must(["ip", "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", "jwinet"])
        must(["ip", "addr", "add", "192.0.2.1/30", "dev", "up0"])
        must(["ip", "link", "set", "up0", "up"])
        must(["ip", "-n", "jwinet", "addr", "add", "192.0.2.2/30", "dev", "down0"])
        must(["ip", "-n", "jwinet", "link", "set", "down0", "up"])
        must(["ip", "-n", "jwinet", "link", "set", "lo", "up"])
        server = subprocess.Popen(["nsenter", "--net=/run/netns/jwinet", "python3", "-c", NET_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        if server.stdout.readline().strip() != "ready":
            raise AssertionError("the upstream server did not start")
        bridged = jobctl("run", "--net", "bridge", "--", "python3", "-c", NET_PROBE)
        isolated = jobctl("run", "--net", "none", "--", "python3", "-c", NET_PROBE)
        refused = jobctl("run", "--net", "bridge", "--allow", "192.0.2.2:9090/tcp", "--", "python3", "-c", NET_PROBE)
        # A finished job's veth goes just after its end is told: wait for the pool's (2 at most) alone to stay.
        wait_for("the finished jobs' veths to go", lambda: len([n for n in job_links() if n != "jobworkerd0"]) <= 2,
                 30, 0.2)
        held = {"links": job_links(), "tables": daemon_nft("list tables")}
        must(["systemctl", "stop", SERVICE], timeout=120)
        after_stop = {"links": job_links()}
        must(["systemctl", "start", SERVICE], timeout=120)
        after_stop["tables"] = daemon_nft("list tables")
        detail = {"bridged": bridged.stdout.strip(), "none": isolated.stdout.strip(),
                  "allow_refused": refused.stdout.strip(), "while_running": held, "after_stop": after_stop}
        if not bridged.stdout.startswith("ok hello 192.0.2.1"):
            raise AssertionError(f"a bridge-mode job did not reach the upstream through NAT: {detail}")
        if not isolated.stdout.startswith("ENETUNREACH"):
            raise AssertionError(f"a job without a network reached something: {detail}")
        verdict, seconds = refused.stdout.split()
        if verdict not in ("ECONNREFUSED", "EHOSTUNREACH") or float(seconds) >= 1:
            raise AssertionError(f"--allow did not refuse at once: {detail}")
        pooled = [n for n in held["links"] if n != "jobworkerd0"]  # the pool's prepared namespaces (2 by default)
        if "jobworkerd0" not in held["links"] or len(pooled) > 2 or "jobworkerd" not in held["tables"]:
            raise AssertionError(f"the bridge or the table is missing, or a finished job's veth stayed: {detail}")
        if after_stop["links"] or "jobworkerd" in after_stop["tables"]:
            raise AssertionError(f"systemctl stop left network state behind: {detail}")
        return detail
    finally:
        if server is not None:
            server.kill()
        sh(["ip", "netns", "del", "jwinet"])


def check_journal_fields() -> dict:
    """The daemon logs to journald natively: `journalctl -u jobworkerd JOB_ID=<id>` finds a job's start
    and end lines, with OWNER and REASON."""
    job_id = start("--name", "journal-fields", "--", "sh", "-c", "exit 3")
    if sh(["jobctl", "wait", job_id], timeout=120).returncode != 3:
        raise AssertionError(f"jobctl wait {job_id} did not exit 3")
    owner = status(job_id)["owner"]

    def entries():
        must(["journalctl", "--sync"])
        out = must(["journalctl", "-u", "jobworkerd", f"JOB_ID={job_id}", "-o", "json", "--no-pager"])
        found = [json.loads(line) for line in out.splitlines() if line.strip()]
        return found if len(found) >= 2 else None

    found = wait_for(f"two journal entries with JOB_ID={job_id}", entries, 30, 1)
    keys = ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "JOB_ID", "OWNER", "REASON", "_SYSTEMD_UNIT")
    detail = {"entries": [{k: e.get(k) for k in keys} for e in found]}
    begin, end = found[0], found[-1]
    if len(found) != 2 or not begin["MESSAGE"].startswith(f"job {job_id} started for {owner!r}") or \
            not end["MESSAGE"].startswith(f"job {job_id} finished: exited (exit 3"):
        raise AssertionError(f"not the job's start and end lines: {detail}")
    for entry in found:
        if (entry.get("OWNER"), entry.get("SYSLOG_IDENTIFIER"), entry.get("PRIORITY"), entry.get("_SYSTEMD_UNIT")) != \
                (owner, "jobworkerd", "6", SERVICE):
            raise AssertionError(f"fields OWNER, SYSLOG_IDENTIFIER, PRIORITY, _SYSTEMD_UNIT wrong: {detail}")
    if end.get("REASON") != "exited" or "REASON" in begin:
        raise AssertionError(f"REASON=exited belongs on the end line only: {detail}")
    return detail


# ---- the checks ----------------------------------------------------------------------------------


def main() -> int:
    facts["kernel"] = os.uname().release
    facts["cgroup_controllers"] = read("/sys/fs/cgroup/cgroup.controllers").strip()
    debs = sorted(glob.glob(os.path.join(SHARE, "jobworkerd_*.deb")))

    @check("install")
    def _():
        if len(debs) != 1:
            raise AssertionError(f"expected one jobworkerd_*.deb in the share, found {debs}")
        local = os.path.join("/root", os.path.basename(debs[0]))
        must(["cp", debs[0], local])
        t0 = time.monotonic()
        out = must(f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {shlex.quote(local)}",
                   timeout=300, record=True)
        facts["apt_install_seconds"] = round(time.monotonic() - t0, 1)
        for path in ("/usr/bin/jobworkerd", "/usr/bin/jobctl", "/etc/jobworkerd/config.yaml",
                     "/lib/systemd/system/jobworkerd.service", "/etc/jobworkerd/tls/ca.crt",
                     "/etc/jobworkerd/tls/ca.key", "/etc/jobworkerd/tls/server.crt",
                     "/etc/jobworkerd/tls/server.key", "/root/.config/jobctl/config.yaml",
                     "/root/.config/jobctl/root.crt", "/root/.config/jobctl/root.key"):
            if not os.path.exists(path):
                raise AssertionError(f"{path} missing after install")
        modes = {p: oct(os.stat(p).st_mode & 0o777) for p in ("/etc/jobworkerd/tls/ca.key",
                 "/etc/jobworkerd/tls/server.key", "/root/.config/jobctl/root.key")}
        loose = {p: m for p, m in modes.items() if int(m, 8) & 0o077}
        if loose:
            raise AssertionError(f"private keys readable by others: {loose}")
        conffiles = must(["dpkg-query", "-W", "-f=${Conffiles}", "jobworkerd"])
        if "/etc/jobworkerd/config.yaml" not in conffiles:
            raise AssertionError(f"config.yaml is not a conffile: {conffiles!r}")
        return {"apt_seconds": facts["apt_install_seconds"], "key_modes": modes, "apt_tail": out.strip().splitlines()[-3:]}

    @check("service-active", needs=("install",))
    def _():
        wait_for("jobworkerd active", lambda: sh(["systemctl", "is-active", SERVICE]).stdout.strip() == "active", 90, 1)
        props = show("Type", "NotifyAccess", "Delegate", "KillMode", "TimeoutStopUSec", "OOMPolicy", "TasksMax",
                     "Restart", "RuntimeDirectoryPreserve", "MainPID", "ActiveState", "SubState", "UnitFileState",
                     "NRestarts", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
        sh(["systemctl", "status", SERVICE, "--no-pager", "-l", "-n", "15"], record=True)
        expect = {"Type": "notify", "NotifyAccess": "main", "Delegate": "yes", "KillMode": "mixed",
                  "OOMPolicy": "continue", "Restart": "on-failure", "RuntimeDirectoryPreserve": "yes",
                  "ActiveState": "active", "SubState": "running", "UnitFileState": "enabled"}
        wrong = {k: (props.get(k), v) for k, v in expect.items() if props.get(k) != v}
        if wrong:
            raise AssertionError(f"unit properties (got, expected): {wrong}")
        facts["daemon_start_to_ready_seconds"] = round(
            (int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])) / 1e6, 2)
        return props

    @check("first-job", needs=("service-active",))
    def _():
        t0 = time.monotonic()
        proc = jobctl("run", "--", "true", record=True)
        facts["jobctl_run_true_seconds"] = round(time.monotonic() - t0, 2)
        if proc.returncode != 0:
            raise AssertionError(f"jobctl run -- true exited {proc.returncode}: {proc.stdout}")
        return {"seconds": facts["jobctl_run_true_seconds"]}

    @check("job-group", needs=("first-job",))
    def _():
        # Root's jobs (admin) live in jobs/admin/<id>: the group enables the controllers for its jobs,
        # holds the shipped config's limits.admins ceilings and no process, and goes with its last job.
        # A user-role client's (alice's) job lives in jobs/user-alice/<id>, under limits.per_user.
        group = os.path.join(JOBS_CG, "admin")
        leftover = os.path.isdir(group)  # first-job's group must already be gone
        job_id = start("--name", "grouped", "--", "sleep", "600")
        cg = wait_running(job_id)
        mem_total = int(next(l for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal:")).split()[1]) * 1024
        page = os.sysconf("SC_PAGE_SIZE")
        shipped = {k: shipped_ceiling("admins", k) for k in ("cpu", "memory", "pids")}
        inside = read(f"/proc/{read(os.path.join(cg, 'cgroup.procs')).split()[0]}/cgroup").strip()
        detail = {"job_cgroup": cg, "proc_cgroup": inside, "shipped_admins": shipped,
                  "subtree_control": read(os.path.join(group, "cgroup.subtree_control")).split(),
                  "group_procs": read(os.path.join(group, "cgroup.procs")).split(),
                  "cpu.max": read(os.path.join(group, "cpu.max")).strip(),
                  "memory.max": read(os.path.join(group, "memory.max")).strip(),
                  "memory.swap.max": read(os.path.join(group, "memory.swap.max")).strip(),
                  "pids.max": read(os.path.join(group, "pids.max")).strip(), "mem_total": mem_total,
                  "group_left_by_first_job": leftover}
        job = stop(job_id, grace="1")
        gone = wait_for(f"{group} removed", lambda: not os.path.exists(group), 30)
        detail["group_removed_after_stop"] = gone
        # and a user-role client's job (run as its dynamic uid) in jobs/user-alice, under limits.per_user
        must(["jobworkerd", "ca", "issue", "--dir", "/etc/jobworkerd/tls", "--name", "alice", "--role", "user",
              "--out", "/root/alice"])
        alice = ["--cert", "/root/alice.crt", "--key", "/root/alice.key"]
        user_id = must(["jobctl", *alice, "run", "-d", "--", "sleep", "600"]).strip().splitlines()[-1]
        user_cg = wait_running(user_id)
        user_group = os.path.join(JOBS_CG, "user-alice")
        user_shipped = {k: shipped_ceiling("per_user", k) for k in ("cpu", "memory", "pids")}
        user = {"job_cgroup": user_cg, "shipped_per_user": user_shipped,
                "subtree_control": read(os.path.join(user_group, "cgroup.subtree_control")).split(),
                "memory.max": read(os.path.join(user_group, "memory.max")).strip(),
                "pids.max": read(os.path.join(user_group, "pids.max")).strip(),
                "cpu.max": read(os.path.join(user_group, "cpu.max")).strip()}
        must(["jobctl", *alice, "stop", "--grace", "1", user_id], timeout=120)
        user["group_removed_after_stop"] = wait_for(f"{user_group} removed", lambda: not os.path.exists(user_group), 30)
        detail["user"] = user
        if user_cg != os.path.join(user_group, user_id) or not {"cpu", "io", "memory", "pids"} <= set(user["subtree_control"]):
            raise AssertionError(f"a user's job is not in jobs/user-<name>/<id> with the controllers enabled: {detail}")
        if user_shipped != {"cpu": "null", "memory": "50%", "pids": "4096"}:
            raise AssertionError(f"this check knows the shipped limits.per_user of cpu null, memory 50%, pids 4096: {detail}")
        want_user_memory = mem_total * 50 // 100 // page * page
        if (abs(int(user["memory.max"]) - want_user_memory) > page or user["pids.max"] != "4096"
                or cpu_max_cores(user["cpu.max"]) is not None):
            raise AssertionError(f"the user group's ceilings are not the shipped 50% of RAM and 4096 pids: {detail}")
        if cg != os.path.join(JOBS_CG, "admin", job_id) or inside != f"0::/system.slice/jobworkerd.service/jobs/admin/{job_id}":
            raise AssertionError(f"the job is not in jobs/admin/<id>: {detail}")
        if not {"cpu", "io", "memory", "pids"} <= set(detail["subtree_control"]) or detail["group_procs"]:
            raise AssertionError(f"the group does not enable the controllers, or holds processes: {detail}")
        if shipped != {"cpu": "null", "memory": "90%", "pids": "null"}:
            raise AssertionError(f"this check knows the shipped limits.admins of cpu null, memory 90%, pids null: {detail}")
        want_memory = mem_total * 90 // 100 // page * page
        if abs(int(detail["memory.max"]) - want_memory) > page or detail["memory.swap.max"] != "0":
            raise AssertionError(f"the group's memory ceiling is not 90% of RAM (swap included): want {want_memory}: {detail}")
        if detail["pids.max"] != "max" or cpu_max_cores(detail["cpu.max"]) is not None:
            raise AssertionError(f"the group has a pids or cpu ceiling the shipped config does not set: {detail}")
        if leftover or job["reason"] != "stopped":
            raise AssertionError(f"an earlier job left its group behind, or the job did not stop: {detail}")
        return detail

    @check("containment", needs=("first-job",))
    def _():
        # The output lives on the daemon's own tmpfs (limits.output_total, 25% of RAM by default), the run
        # directory is root's alone and hidden inside jobs, and a root job's `kill -TERM 0` and
        # `renice -g 0` reach only the job, not the service (which would otherwise exit 0 and stay down).
        mount = must(["findmnt", "-n", "-o", "FSTYPE,SIZE,SOURCE", "/run/jobworkerd/jobs"]).split()
        mem_kib = int(next(l for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal:")).split()[1])
        size_kib = os.statvfs("/run/jobworkerd/jobs").f_blocks * os.statvfs("/run/jobworkerd/jobs").f_frsize // 1024
        modes = {p: oct(os.stat(p).st_mode & 0o777) for p in ("/run/jobworkerd", "/run/jobworkerd/jobs")}
        main_before = show("MainPID")["MainPID"]
        seen = jobctl("run", "--", "sh", "-c", "ls -A /run/jobworkerd/jobs 2>/dev/null | wc -l; ls -A /var/lib/jobworkerd | wc -l")
        hostile = jobctl("run", "--", "sh", "-c", "renice -n 10 -g 0 >/dev/null; kill -TERM 0; sleep 2")
        time.sleep(1)
        props = show("MainPID", "ActiveState")
        nice = read(f"/proc/{props['MainPID']}/stat").rsplit(")", 1)[1].split()[16]
        detail = {"mount": mount, "size_kib": size_kib, "mem_kib": mem_kib, "modes": modes,
                  "job_sees": seen.stdout.split(), "hostile_rc": hostile.returncode, "service": props,
                  "daemon_nice": nice}
        if mount[:1] != ["tmpfs"] or mount[-1:] != ["jobworkerd-output"] or not 0.2 * mem_kib < size_kib < 0.3 * mem_kib:
            raise AssertionError(f"the output tmpfs is not mounted as configured: {detail}")
        if set(modes.values()) != {"0o700"}:
            raise AssertionError(f"the run directory is not root's alone: {detail}")
        if seen.stdout.split() != ["0", "0"]:
            raise AssertionError(f"a job sees the run or state directory: {detail}")
        if hostile.returncode != 143 or props != {"MainPID": main_before, "ActiveState": "active"} or nice != "0":
            raise AssertionError(f"a root job's kill -TERM 0 or renice -g 0 reached the daemon: {detail}")
        return detail

    @check("sandbox", needs=("job-group",))
    def _():
        # On cgroup v2 the job's cgroup namespace shows its own cgroup as /sys/fs/cgroup (its limits, no
        # other cgroup); the rest of the escape matrix holds here too, for alice (user role, a non-root
        # uid) and for root's non-privileged job: tests/integration/test_sandbox.py has the full matrix.
        alice = ["--cert", "/root/alice.crt", "--key", "/root/alice.key"]
        os.makedirs("/var/lib/jobworkerd-ww", exist_ok=True)  # a world-writable host directory, and a setuid-root id
        os.chmod("/var/lib/jobworkerd-ww", 0o1777)
        must(["install", "-m", "4755", "/usr/bin/id", "/var/lib/jobworkerd-ww/id"])
        victim = start("--", "sh", "-c", "echo secret > /tmp/secret; echo secret > /dev/shm/secret; exec sleep 600")
        results = {}
        try:
            for who, creds in (("alice", alice), ("root", [])):
                done = jobctl(*creds, "run", "--mem", "64M", "--pids", "50", "--", "python3", "-c", SANDBOX_PROBE)
                if done.returncode != 0:
                    raise AssertionError(f"{who}'s probe job failed: {done.stdout}")
                results[who] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            stop(victim, "0")
        privileged = jobctl("run", "--privileged", "--", "grep", "CapEff", "/proc/self/status")
        refused = jobctl(*alice, "run", "--privileged", "--", "true")
        expected = {"memory.max": str(64 * MiB), "pids.max": "50", "proc_cgroup": "0::/", "cgroups_below": 0,
                    "mount": "EPERM", "keyctl": "EPERM", "unshare_user": "EPERM", "write_etc": "EROFS",
                    "write_cgroup": "EROFS", "journal_socket": "ENOENT", "no_new_privs": "1",
                    "block_device": "ENOENT", "init_module": "EPERM", "finit_module": "EPERM", "reboot": "EPERM",
                    "bpf": "EPERM", "clock_settime": "EPERM", "world_writable_host_dir": "EROFS",
                    "other_tmp": "ENOENT", "other_shm": "ENOENT", "proc_keys_bytes": 0}
        detail = {"results": results, "privileged": privileged.stdout.strip(), "refused": refused.stdout.strip()}
        for who, out in results.items():
            wrong = {k: out.get(k) for k, v in expected.items() if out.get(k) != v}
            if wrong:
                raise AssertionError(f"{who}'s job: {wrong} (expected {expected}): {detail}")
        if int(results["alice"]["cap_eff"], 16) != 0 or results["alice"]["uid"] == 0:
            raise AssertionError(f"alice's job has capabilities or runs as root: {detail}")
        if results["alice"]["setuid_euid"] != results["alice"]["uid"]:
            raise AssertionError(f"a setuid-root binary raised alice's job's privileges: {detail}")
        if (results["alice"]["mknod_block_device"], results["root"]["mknod_block_device"]) != ("EPERM", "EACCES"):
            raise AssertionError(f"a device node made in /tmp opened (or mknod was not as expected): {detail}")
        if int(results["root"]["cap_eff"], 16) != 0xA80425FB:  # docker's default set
            raise AssertionError(f"root's job does not have exactly docker's capabilities: {detail}")
        if results["root"]["hostname"] == results["alice"]["hostname"] or len(results["root"]["hostname"]) != 12:
            raise AssertionError(f"a job's hostname is not its id: {detail}")
        if refused.returncode == 0 or "permission denied" not in refused.stdout.lower():
            raise AssertionError(f"a user's --privileged was not refused: {detail}")
        if int(privileged.stdout.split()[-1], 16) == 0xA80425FB:
            raise AssertionError(f"--privileged kept docker's set: {detail}")
        return detail

    check("network-bridge", needs=("first-job",))(check_network_bridge)
    check("man-pages", needs=("install",))(check_man_pages)
    check("bash-completion", needs=("first-job",))(check_bash_completion)
    check("metrics-endpoint", needs=("first-job",))(check_metrics_endpoint)
    check("journal-fields", needs=("first-job",))(check_journal_fields)

    @check("transcript-limited-job", needs=("first-job",))
    def _():
        # The job's cgroup namespace: /proc/self/cgroup says "/" and /sys/fs/cgroup is its own cgroup.
        script = ('echo "pid in the job\'s namespace: $$"; cg=$(cut -d: -f3 /proc/self/cgroup); echo "cgroup: $cg"; '
                  'for f in memory.max memory.swap.max cpu.max pids.max; do echo "$f: $(cat /sys/fs/cgroup$cg/$f)"; done; '
                  'ps -e -o pid,comm')
        proc = jobctl("run", "--name", "limited", "--mem", "64M", "--cpu", "0.5", "--pids", "20", "--",
                      "sh", "-c", script, record=True)
        if proc.returncode != 0:
            raise AssertionError(f"limited job exited {proc.returncode}: {proc.stdout}")
        for expected in ("memory.max: 67108864", "memory.swap.max: 0", "pids.max: 20", "cgroup: /\n"):
            if expected not in proc.stdout:
                raise AssertionError(f"{expected!r} not in the job's output: {proc.stdout}")
        cpu_line = [l for l in proc.stdout.splitlines() if l.startswith("cpu.max: ")]
        if not cpu_line or cpu_max_cores(cpu_line[0].removeprefix("cpu.max: ")) != 0.5:
            raise AssertionError(f"cpu.max is not half a core: {cpu_line}: {proc.stdout}")
        jobctl("ls", record=True)
        return {"output": proc.stdout}

    @check("delegation-placement", needs=("first-job",))
    def _():
        main_pid = show("MainPID")["MainPID"]
        daemon_cg = read(f"/proc/{main_pid}/cgroup").strip()
        if daemon_cg != "0::/system.slice/jobworkerd.service/supervisor":
            raise AssertionError(f"daemon (pid {main_pid}) is in {daemon_cg!r}, not <service>/supervisor")
        subtree = read(os.path.join(SVC_CG, "cgroup.subtree_control")).split()
        jobs_subtree = read(os.path.join(JOBS_CG, "cgroup.subtree_control")).split()
        for want in ("cpu", "io", "memory", "pids"):
            if want not in subtree or want not in jobs_subtree:
                raise AssertionError(f"{want} not enabled: service {subtree}, jobs {jobs_subtree}")
        job_id = start("--name", "placement", "--", "sleep", "600")
        cg = wait_running(job_id)
        sh(["systemctl", "status", SERVICE, "--no-pager", "-l", "-n", "0"], record=True)  # the tree with a job
        pids = [int(p) for p in read(os.path.join(cg, "cgroup.procs")).split()]
        if not pids:
            raise AssertionError(f"{cg}/cgroup.procs is empty while the job runs")
        rel = "0::" + cg.removeprefix("/sys/fs/cgroup")
        elsewhere = {p: read(f"/proc/{p}/cgroup").strip() for p in pids if read(f"/proc/{p}/cgroup").strip() != rel}
        inner = read(os.path.join(SVC_CG, "cgroup.procs")).split()
        job = stop(job_id)
        if job["reason"] != "stopped":
            raise AssertionError(f"stopped job recorded as {job['reason']}: {job}")
        gone = wait_for(f"{cg} removed", lambda: not os.path.exists(cg), 30)
        if elsewhere or inner:
            raise AssertionError(f"job processes elsewhere {elsewhere}; processes in the service cgroup itself {inner}")
        return {"daemon_cgroup": daemon_cg, "job_cgroup": cg, "job_pids": pids, "subtree_control": subtree,
                "cgroup_removed_after_stop": gone}

    @check("memory-oom-killed", needs=("first-job",))
    def _():
        before_svc = show("MainPID", "NRestarts")
        events_before = keyed(os.path.join(JOBS_CG, "memory.events")).get("oom_kill", 0)
        hog = "import itertools; hog = [b'x' * (8 << 20) for _ in itertools.count()]"
        proc = jobctl("run", "--name", "memhog", "--mem", "64M", "--", "python3", "-c", hog, timeout=180)
        events_after = keyed(os.path.join(JOBS_CG, "memory.events")).get("oom_kill", 0)
        job = json.loads(must(["jobctl", "ls", "-o", "json"]))
        memhog = [j for j in job if j.get("name") == "memhog"]
        if not memhog:
            raise AssertionError(f"memhog not listed: {job}")
        job = memhog[-1]
        jobctl("status", job["id"], record=True)
        after_svc = show("MainPID", "NRestarts", "ActiveState")
        detail = {"jobctl_rc": proc.returncode, "reason": job["reason"], "signal": job["signal"],
                  "usage": job["usage"], "jobs_memory_events_oom_kill": [events_before, events_after],
                  "service": after_svc}
        if job["reason"] != "oom-killed":
            raise AssertionError(f"memory hog ended as {job['reason']!r}, not oom-killed: {detail}")
        if events_after <= events_before:
            raise AssertionError(f"memory.events oom_kill did not increase: {detail}")
        if job["usage"]["memory_peak_bytes"] > 64 * MiB + MiB:
            raise AssertionError(f"peak memory above the limit: {detail}")
        if proc.returncode != 137:
            raise AssertionError(f"jobctl run exited {proc.returncode}, not 137: {detail}")
        if after_svc["ActiveState"] != "active" or after_svc["MainPID"] != before_svc["MainPID"]:
            raise AssertionError(f"the job's OOM kill disturbed the service (OOMPolicy): {before_svc} -> {after_svc}")
        return detail

    @check("cpu-throttled", needs=("first-job",))
    def _():
        job_id = start("--name", "busy", "--cpu", "0.2", "--", "sh", "-c", "while :; do :; done")
        cg = wait_running(job_id)
        time.sleep(1)
        cpu_max = read(os.path.join(cg, "cpu.max")).strip()
        s0, t0 = keyed(os.path.join(cg, "cpu.stat")), time.monotonic()
        time.sleep(5)
        s1, t1 = keyed(os.path.join(cg, "cpu.stat")), time.monotonic()
        job = stop(job_id)
        share = (s1["usage_usec"] - s0["usage_usec"]) / 1e6 / (t1 - t0)
        detail = {"cpu.max": cpu_max, "nr_periods": s1["nr_periods"], "nr_throttled": s1["nr_throttled"],
                  "throttled_usec": s1.get("throttled_usec"), "cpu_share_measured": round(share, 3),
                  "reason": job["reason"], "usage": job["usage"]}
        if cpu_max_cores(cpu_max) is None or abs(cpu_max_cores(cpu_max) - 0.2) > 0.001:
            raise AssertionError(f"cpu.max is {cpu_max!r}, not 0.2 of a core: {detail}")
        if s1["nr_throttled"] <= 0:
            raise AssertionError(f"cpu.stat nr_throttled is 0: {detail}")
        if share > 0.35:  # 0.2 of a core, loosely (throttling works in 100 ms periods)
            raise AssertionError(f"the busy loop used {share:.2f} of a core under --cpu 0.2: {detail}")
        if job["reason"] != "stopped":
            raise AssertionError(f"busy loop recorded as {job['reason']}: {detail}")
        return detail

    @check("pids-fork-bomb-contained", needs=("first-job",))
    def _():
        bomb = ("import os, time\n"
                "while True:\n"
                "    try:\n"
                "        os.fork()\n"
                "    except OSError:\n"
                "        time.sleep(0.5)\n")
        job_id = start("--name", "forkbomb", "--pids", "50", "--", "python3", "-S", "-c", bomb)
        cg = wait_running(job_id)
        wait_for("pids.events max > 0", lambda: keyed(os.path.join(cg, "pids.events")).get("max", 0) > 0, 120, 1)
        samples = [int(read(os.path.join(cg, "pids.current"))) for _ in range(3) if time.sleep(0.5) is None]
        events = keyed(os.path.join(cg, "pids.events"))
        pids_max = read(os.path.join(cg, "pids.max")).strip()
        # the machine still works: another job starts and ends while the bomb runs
        t0 = time.monotonic()
        other = jobctl("run", "--", "true", timeout=120)
        other_seconds = round(time.monotonic() - t0, 1)
        job = stop(job_id, grace="1")
        detail = {"pids.max": pids_max, "pids.current": samples, "pids.events": events,
                  "other_job_rc": other.returncode, "other_job_seconds": other_seconds, "reason": job["reason"]}
        if pids_max != "50" or max(samples) > 50:
            raise AssertionError(f"not contained: {detail}")
        if events.get("max", 0) <= 0:
            raise AssertionError(f"pids.events max is 0: {detail}")
        if other.returncode != 0:
            raise AssertionError(f"a job could not run beside the fork bomb: {detail}")
        if job["state"] != "finished" or os.path.exists(cg):
            raise AssertionError(f"fork bomb not cleaned up after stop: {detail}")
        return detail

    @check("io-write-throttled", needs=("first-job",))
    def _():
        dev = root_device()
        target, limit, count = f"{IO_DIR}/jobworkerd-io.test", 2 * MiB, 256  # 16 MiB in 64 KiB O_DIRECT writes
        dd = ["dd", "if=/dev/zero", f"of={target}", "bs=64k", f"count={count}", "oflag=direct"]
        job_id = start("--name", "ddwrite", "--io-write-bps", "2M", "--dir", io_dir(), "--", *dd)
        cg = wait_running(job_id)
        io_max = read(os.path.join(cg, "io.max")).strip()
        time.sleep(1)
        w0, t0 = io_stat(os.path.join(cg, "io.stat"), dev).get("wbytes", 0), time.monotonic()
        time.sleep(4)
        w1, t1 = io_stat(os.path.join(cg, "io.stat"), dev).get("wbytes", 0), time.monotonic()
        job = wait_finished(job_id, timeout=180)
        rate = (w1 - w0) / (t1 - t0)
        limited_dd = must(["jobctl", "logs", job_id]).strip().splitlines()[-1:]
        # the same write without a limit, for comparison (not asserted: emulated disks vary)
        free = jobctl("run", "--name", "ddfree", "--dir", io_dir(), "--", *dd, timeout=180)
        os.unlink(target)
        detail = {"device": dev, "io.max": io_max, "wbytes_sampled": w1 - w0, "seconds_sampled": round(t1 - t0, 2),
                  "rate_bytes_per_s": int(rate), "limit": limit, "exit_code": job["exit_code"],
                  "usage_io_write_bytes": job["usage"]["io_write_bytes"],
                  "dd_says_limited": limited_dd, "dd_says_unlimited": free.stdout.strip().splitlines()[-1:],
                  "unlimited_rc": free.returncode}
        if not io_max.startswith(dev + " ") or f"wbps={limit}" not in io_max:
            raise AssertionError(f"io.max {io_max!r} does not limit writes on {dev} to {limit}: {detail}")
        if not 0.5 * limit <= rate <= 1.3 * limit:
            raise AssertionError(f"write rate {rate / MiB:.2f} MiB/s is not near 2 MiB/s: {detail}")
        if job["exit_code"] != 0:
            raise AssertionError(f"dd failed: {detail}")
        if job["usage"]["io_write_bytes"] < count * 64 * 1024:
            raise AssertionError(f"recorded io_write_bytes below what dd wrote: {detail}")
        return detail

    @check("job-group-io", needs=("first-job",))
    def _():
        # A user's io ceiling (limits.per_user.io_write_bps, on the state directory's disk by default) is
        # the group's io.max, and v2 throttles hierarchically: it bounds a job of that user's that has no io
        # limit of its own. The config is patched for this check alone and put back. The rate is dd's own
        # (over its whole run, so it does not depend on when this slow guest samples anything).
        config_path, limit, count = "/etc/jobworkerd/config.yaml", 2 * MiB, 256  # 16 MiB in 64 KiB writes
        original = read(config_path)
        lines = original.splitlines(keepends=True)
        at = lines.index("  per_user:\n") + 1
        dev, target = root_device(), f"{io_dir()}/jobworkerd-group-io.test"
        must(["jobworkerd", "ca", "issue", "--dir", "/etc/jobworkerd/tls", "--name", "iouser", "--role", "user",
              "--out", "/root/iouser"])
        user = ["--cert", "/root/iouser.crt", "--key", "/root/iouser.key"]
        group = os.path.join(JOBS_CG, "user-iouser")
        try:
            with open(config_path, "w") as handle:
                handle.write("".join(lines[:at] + [f"    io_write_bps: {limit}\n"] + lines[at:]))
            must(["systemctl", "restart", SERVICE], timeout=120)
            job_id = must(["jobctl", *user, "run", "-d", "--dir", io_dir(), "--", "dd", "if=/dev/zero", f"of={target}", "bs=64k",
                           f"count={count}", "oflag=direct"]).strip().splitlines()[-1]  # as nobody
            cg = wait_running(job_id)
            group_io_max, job_io_max = read(os.path.join(group, "io.max")).strip(), read(os.path.join(cg, "io.max")).strip()
            job = wait_finished(job_id, timeout=180)
            dd_line = must(["jobctl", *user, "logs", job_id]).strip().splitlines()[-1]
        finally:
            with open(config_path, "w") as handle:
                handle.write(original)
            sh(["systemctl", "restart", SERVICE], timeout=120)
            if os.path.exists(target):
                os.unlink(target)
        match = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", dd_line)
        rate = int(match.group(1)) / float(match.group(2)) if match else 0.0
        detail = {"device": dev, "group_io.max": group_io_max, "job_io.max": job_io_max, "job_cgroup": cg,
                  "dd": dd_line, "rate_bytes_per_s": int(rate), "limit": limit, "exit_code": job["exit_code"],
                  "usage_io_write_bytes": job["usage"]["io_write_bytes"],
                  "group_left": os.path.exists(group), "service_after": show("ActiveState")["ActiveState"]}
        if group_io_max != f"{dev} rbps=max wbps={limit} riops=max wiops=max" or job_io_max:
            raise AssertionError(f"the group's io.max is not the ceiling on {dev}, or the job has io limits of its own: {detail}")
        if cg != os.path.join(group, job_id):
            raise AssertionError(f"the user's job is not in jobs/user-iouser: {detail}")
        if not 0.5 * limit <= rate <= 1.3 * limit:
            raise AssertionError(f"the user's job wrote at {rate / MiB:.2f} MiB/s under a 2 MiB/s group ceiling: {detail}")
        if job["exit_code"] != 0 or job["usage"]["io_write_bytes"] < count * 64 * 1024:
            raise AssertionError(f"dd failed or its writes were not all counted: {detail}")
        if detail["service_after"] != "active" or detail["group_left"]:
            raise AssertionError(f"the group outlived its job, or the service did not come back: {detail}")
        return detail

    restart_ids: dict[str, str] = {}

    @check("restart-keeps-history", needs=("first-job",))
    def _():
        done = start("--name", "before-restart", "--", "sh", "-c", "echo hello-before-restart; echo to-stderr >&2")
        must(["jobctl", "wait", done])
        running = start("--name", "running-at-restart", "--", "sleep", "600")
        wait_running(running)
        listed_before = {j["id"] for j in json.loads(must(["jobctl", "ls", "-o", "json"]))}
        main_before = show("MainPID")["MainPID"]
        t0 = time.monotonic()
        must(["systemctl", "restart", SERVICE], timeout=120)
        facts["systemctl_restart_seconds"] = round(time.monotonic() - t0, 1)
        props = show("MainPID", "ActiveState", "NRestarts")
        listed_after = {j["id"]: j for j in json.loads(must(["jobctl", "ls", "-o", "json"]))}
        logs = must(["jobctl", "logs", done])
        was_running = status(running)
        restart_ids.update(done=done, running=running)
        detail = {"jobs_before": len(listed_before), "jobs_after": len(listed_after), "logs": logs,
                  "running_job_after_restart": {k: was_running[k] for k in ("state", "reason", "signal", "exit_code")},
                  "service": props, "restart_seconds": facts["systemctl_restart_seconds"]}
        if props["ActiveState"] != "active" or props["MainPID"] == main_before:
            raise AssertionError(f"service did not restart: {detail}")
        missing = listed_before - set(listed_after)
        if missing:
            raise AssertionError(f"jobs missing after restart: {missing}: {detail}")
        if "hello-before-restart" not in logs or "to-stderr" not in logs:
            raise AssertionError(f"output of a job from before the restart is gone: {detail}")
        if was_running["state"] != "finished" or was_running["reason"] != "stopped":
            raise AssertionError(f"a job running at restart should be recorded as stopped: {detail}")
        return detail

    @check("stop-leaves-nothing", needs=("first-job",))
    def _():
        plain = start("--name", "plain-sleeper", "--", "sleep", "600")
        stubborn = start("--name", "ignores-sigterm", "--", "sh", "-c", "trap '' TERM; sleep 600 & wait; sleep 600")
        for job_id in (plain, stubborn):
            wait_running(job_id)
        pids = {job_id: [int(p) for p in read(os.path.join(job_cgroup(job_id), "cgroup.procs")).split()]
                for job_id in (plain, stubborn)}
        main_pid = show("MainPID")["MainPID"]
        since = must(["date", "+%Y-%m-%d %H:%M:%S"]).strip()
        t0 = time.monotonic()
        must(["systemctl", "stop", SERVICE], timeout=120)
        facts["systemctl_stop_seconds"] = round(time.monotonic() - t0, 1)
        props = show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        leftovers = procs_under("/system.slice/jobworkerd.service")
        alive = [p for ps in pids.values() for p in ps if p in {pid for pid, _, _ in leftovers}]
        svc_cg_exists = os.path.isdir(SVC_CG)
        cgroup_left = sorted(glob.glob(os.path.join(JOBS_CG, "*/")))
        journal = sh(["journalctl", "-u", SERVICE, "--since", since, "--no-pager", "-o", "cat"]).stdout
        sigkill_lines = [l for l in journal.splitlines() if "SIGKILL" in l or "Killing process" in l]
        must(["systemctl", "start", SERVICE], timeout=120)
        after = {job_id: status(job_id) for job_id in (plain, stubborn)}
        detail = {"job_pids": pids, "daemon_pid": main_pid, "stop_seconds": facts["systemctl_stop_seconds"],
                  "unit_after_stop": props, "alive_job_pids": alive, "processes_left": leftovers,
                  "job_cgroups_left": cgroup_left, "service_cgroup_exists_after_stop": svc_cg_exists,
                  "systemd_sigkill_lines": sigkill_lines,
                  "recorded": {j: {k: v[k] for k in ("state", "reason", "signal", "exit_code")} for j, v in after.items()}}
        if alive or leftovers or cgroup_left:
            raise AssertionError(f"systemctl stop left job processes or cgroups behind: {detail}")
        if props["Result"] != "success" or props["ExecMainStatus"] != "0":
            raise AssertionError(f"the daemon did not exit 0 on SIGTERM: {detail}")
        wrong = {j: v["reason"] for j, v in after.items() if v["reason"] != "stopped"}
        if wrong:
            raise AssertionError(f"jobs running at stop are not recorded as stopped: {wrong}: {detail}")
        return detail

    @check("crash-restart", needs=("first-job",))
    def _():
        # the daemon dies (SIGKILL): systemd kills what is left in the unit's cgroup and restarts it
        # (Restart=on-failure); at start the daemon finishes the record of the job it lost track of
        job_id = start("--name", "running-at-crash", "--", "sleep", "600")
        cg = wait_running(job_id)
        pids = [int(p) for p in read(os.path.join(cg, "cgroup.procs")).split()]
        before = show("MainPID", "NRestarts")
        must(["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", SERVICE])
        wait_for("jobworkerd restarted", lambda: (p := show("MainPID", "NRestarts", "ActiveState"))["ActiveState"] == "active"
                 and p["MainPID"] not in ("0", before["MainPID"]) and p, 90, 1)
        after = show("MainPID", "NRestarts", "ActiveState")
        job = wait_for(f"job {job_id} finished", lambda: (j := status(job_id))["state"] == "finished" and j, 60, 1)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        detail = {"before": before, "after": after, "job": {k: job[k] for k in ("state", "reason", "signal", "exit_code", "message")},
                  "job_pids": pids, "alive": alive, "cgroup_left": os.path.exists(cg)}
        if int(after["NRestarts"]) != int(before["NRestarts"]) + 1:
            raise AssertionError(f"systemd did not restart the daemon once: {detail}")
        if alive or os.path.exists(cg):
            raise AssertionError(f"the job outlived its daemon's crash: {detail}")
        # recorded as lost, or as ended by systemd's SIGKILL while the daemon was down: never "running"
        if not (job["reason"] == "lost" or (job["reason"] == "exited" and job["signal"] == 9)):
            raise AssertionError(f"a job killed with its crashed daemon is recorded as {job['reason']}: {detail}")
        return detail

    @check("reinstall-keeps-state", needs=("first-job",))
    def _():
        files = ("/etc/jobworkerd/tls/ca.crt", "/etc/jobworkerd/tls/server.crt", "/root/.config/jobctl/root.crt",
                 "/root/.config/jobctl/config.yaml")
        before = {f: read(f) for f in files}
        jobs_before = {j["id"] for j in json.loads(must(["jobctl", "ls", "-o", "json"]))}
        main_before = show("MainPID")["MainPID"]
        local = os.path.join("/root", os.path.basename(debs[0]))
        must(f"DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall {shlex.quote(local)}", timeout=300)
        changed = [f for f in files if read(f) != before[f]]
        props = show("MainPID", "ActiveState")
        jobs_after = {j["id"] for j in json.loads(must(["jobctl", "ls", "-o", "json"]))}
        detail = {"changed_files": changed, "service": props, "jobs_before": len(jobs_before),
                  "jobs_after": len(jobs_after), "restarted": props["MainPID"] != main_before}
        if changed:
            raise AssertionError(f"reinstalling replaced certificates or the jobctl config: {detail}")
        if props["ActiveState"] != "active" or jobs_before - jobs_after:
            raise AssertionError(f"service or job history not kept across a reinstall: {detail}")
        return detail

    @check("purge", needs=("install",))
    def _():
        must("DEBIAN_FRONTEND=noninteractive apt-get purge -y jobworkerd", timeout=300, record=True)
        sh("ls -d /usr/lib/jobworkerd /var/lib/jobworkerd /run/jobworkerd /etc/jobworkerd /root/.config/jobctl "
           "/sys/fs/cgroup/system.slice/jobworkerd.service", record=True)
        left = [p for p in ("/usr/lib/jobworkerd", "/var/lib/jobworkerd", "/run/jobworkerd", "/etc/jobworkerd",
                            "/root/.config/jobctl", "/lib/systemd/system/jobworkerd.service", "/usr/bin/jobctl",
                            "/usr/bin/jobworkerd", SVC_CG) if os.path.lexists(p)]
        if sh(["findmnt", "/run/jobworkerd/jobs"]).returncode == 0:
            left.append("the output tmpfs on /run/jobworkerd/jobs")
        state = sh(["systemctl", "is-active", SERVICE]).stdout.strip()
        enabled = glob.glob("/etc/systemd/system/*/jobworkerd.service")
        if left or enabled or procs_under("/system.slice/jobworkerd.service"):
            raise AssertionError(f"purge left {left} {enabled} (service {state})")
        return {"service_after_purge": state}

    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    started = time.monotonic()
    try:
        rc = main()
    finally:
        facts["guest_script_seconds"] = round(time.monotonic() - started, 1)
        save()
        with open(os.path.join(OUT, "jobworkerd-journal.txt"), "w") as handle:
            subprocess.run(["journalctl", "-u", SERVICE, "-b", "--no-pager", "-o", "short-monotonic"],
                           stdout=handle, stderr=subprocess.STDOUT)
    sys.exit(rc)
