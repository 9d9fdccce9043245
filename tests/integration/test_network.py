"""Network modes (issue 11) through the real daemon and jobctl, only inside network namespaces this test makes:
`host` (the daemon's namespace: its bridge, NAT and firewall live here) and `inet` (the internet: small TCP
and UDP servers at 192.0.2.2), joined by a veth pair with a default route from host to inet. Nothing is
routed to this machine's real interfaces; every namespace, link and server goes at the end, even on failure.

Proves: egress through NAT reaches the upstream server (which sees the host's address); --net none cannot;
--allow permits and refuses at once as asked; job to job, and job to the host's addresses and API port,
are blocked; --publish works from inet and from the host's 127.0.0.1, and a taken port is refused; the DNS
servers reach the job; nothing is left after a job's end, after a daemon SIGKILL and restart, and after a
clean stop; 50 concurrent bridge jobs never share an address.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

pytestmark = pytest.mark.root

SUFFIX = f"{os.getpid() % 100000}-{uuid.uuid4().hex[:4]}"
HOST_NS, INET_NS = f"jwn-host-{SUFFIX}", f"jwn-inet-{SUFFIX}"
BRIDGE = f"tbr{uuid.uuid4().hex[:8]}"
UPSTREAM, HOST_UPLINK = "192.0.2.2", "192.0.2.1"
SUBNET = "10.88.7.0/24"
GATEWAY = "10.88.7.1"
ADMIN = {"name": "netadmin", "role": "admin"}
USER = {"name": "netuser", "role": "user"}

SERVERS = textwrap.dedent("""
    import socket, threading
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(64)
        while True:
            c, peer = s.accept()
            c.sendall(f"hello {peer[0]} on {port}\\n".encode()); c.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
        while True:
            data, peer = s.recvfrom(512); s.sendto(b"echo " + data, peer)
    for port in (8080, 9090):
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(5353,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")

# Run in a job: connect to each target, print what happened ("ok <reply>" or the errno's name) and how long.
PROBE = textwrap.dedent("""
    import errno, json, socket, sys, time
    out = {}
    for target in json.loads(sys.argv[1]):
        proto, host, port = target.split(":")
        started = time.monotonic()
        try:
            if proto == "tcp":
                s = socket.create_connection((host, int(port)), timeout=3)
                reply = s.recv(100).decode().strip()
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
                s.connect((host, int(port))); s.send(b"ping"); reply = s.recv(100).decode()
            out[target] = "ok " + reply
        except socket.timeout:
            out[target] = "timeout"
        except OSError as exc:
            out[target] = errno.errorcode.get(exc.errno, str(exc.errno))
        out[target + " seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(out))
""")


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def in_ns(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def topology():
    made: list[str] = []
    server = None
    try:
        for ns in (HOST_NS, INET_NS):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", HOST_NS, "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", INET_NS)
        ip("-n", HOST_NS, "addr", "add", f"{HOST_UPLINK}/30", "dev", "up0")
        ip("-n", INET_NS, "addr", "add", f"{UPSTREAM}/30", "dev", "down0")
        ip("-n", HOST_NS, "link", "set", "up0", "up")
        ip("-n", INET_NS, "link", "set", "down0", "up")
        ip("-n", HOST_NS, "route", "add", "default", "via", UPSTREAM)
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{INET_NS}", sys.executable, "-c", SERVERS],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in made:
            ip("netns", "del", ns, check=False)


def network_config(**extra) -> dict:
    return {"network": {"bridge": BRIDGE, "subnet": SUBNET, "dns": [UPSTREAM], **extra},
            "quotas": {"admin": {"running_jobs": None, "starts_per_second": None}}}


@pytest.fixture(scope="module")
def d(topology, tmp_path_factory):
    from daemon_harness import Daemon, unmount_output_tmpfs

    workdir = tmp_path_factory.mktemp("network")
    daemon = Daemon(workdir, network_config(), netns=HOST_NS).start()
    yield daemon
    daemon.stop()
    unmount_output_tmpfs(workdir)
    # A clean stop takes its bridge and tables, and turns IPv4 forwarding back off (it was off before).
    assert BRIDGE not in host_links() and "jobworkerd" not in nft_tables()
    assert in_ns(HOST_NS, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"


def probe(d, *targets: str, who=ADMIN, options=("--net", "bridge")) -> dict:
    done = d.jobctl("run", *options, "--", "python3", "-c", PROBE, json.dumps(list(targets)), **who)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def host_links(ns: str = HOST_NS) -> list[str]:
    return re.findall(r"^\d+: ([^:@]+)", ip("-n", ns, "-o", "link").stdout, re.M)


def job_veths(ns: str = HOST_NS) -> list[str]:
    return [name for name in host_links(ns) if re.fullmatch(r"jw[0-9a-f]{12}", name)]


def nft_tables(ns: str = HOST_NS) -> str:
    """A namespace's ruleset, read through the daemon's own binding (the test process may shell out; the
    daemon never does)."""
    code = "from jobworkerd.network.nftables import Nft; print(Nft().run('list ruleset'))"
    return in_ns(ns, sys.executable, "-c", code, check=True).stdout


def test_egress_through_nat_reaches_the_upstream_server(d):
    out = probe(d, f"tcp:{UPSTREAM}:8080", f"udp:{UPSTREAM}:5353")
    assert out[f"tcp:{UPSTREAM}:8080"] == f"ok hello {HOST_UPLINK} on 8080"  # masqueraded: the host's address
    assert out[f"udp:{UPSTREAM}:5353"] == "ok echo ping"


def test_a_job_without_a_network_reaches_nothing(d):
    out = probe(d, f"tcp:{UPSTREAM}:8080", options=("--net", "none"))
    assert out[f"tcp:{UPSTREAM}:8080"] == "ENETUNREACH"


def test_allow_permits_and_refuses_at_once(d):
    out = probe(d, f"tcp:{UPSTREAM}:8080", f"tcp:{UPSTREAM}:9090", f"udp:{UPSTREAM}:5353",
                options=("--net", "bridge", "--allow", f"{UPSTREAM}:8080/tcp"))
    assert out[f"tcp:{UPSTREAM}:8080"].startswith("ok hello")
    assert out[f"tcp:{UPSTREAM}:9090"] in ("ECONNREFUSED", "EHOSTUNREACH", "EACCES")
    assert out[f"tcp:{UPSTREAM}:9090 seconds"] < 1.0  # rejected, not dropped: programs fail fast
    assert not out[f"udp:{UPSTREAM}:5353"].startswith("ok")


def test_jobs_cannot_reach_each_other_nor_the_host(d):
    listener = d.jobctl("run", "-d", "--net", "bridge", "--", "python3", "-c",
                        "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); "
                        "print('up', flush=True); s.accept()", **ADMIN)
    job_id = listener.stdout.strip().decode()
    try:
        for _ in range(100):
            status = json.loads(d.jobctl("status", "-o", "json", job_id, **ADMIN).stdout)
            if status.get("network", {}).get("address") and d.jobctl("logs", job_id, **ADMIN).stdout:
                break
            time.sleep(0.05)
        other = status["network"]["address"]
        api_port = d.addr.rsplit(":", 1)[1]
        out = probe(d, f"tcp:{other}:7000", f"tcp:{GATEWAY}:{api_port}", f"tcp:{HOST_UPLINK}:{api_port}")
        for target, result in out.items():
            if not target.endswith("seconds"):
                assert not result.startswith("ok"), (target, result)
    finally:
        d.jobctl("stop", "--grace", "0", job_id, **ADMIN)


def test_the_dns_servers_reach_the_job(d):
    done = d.jobctl("run", "--net", "bridge", "--", "sh", "-c", "cat /etc/resolv.conf; hostname; ip -br addr 2>/dev/null"
                    " || cat /proc/net/fib_trie | grep -c 10.88.7", **ADMIN)
    assert f"nameserver {UPSTREAM}" in done.stdout.decode()


def test_publish_works_from_the_internet_and_from_the_hosts_loopback_and_a_taken_port_is_refused(d):
    server = d.jobctl("run", "-d", "--net", "bridge", "--publish", "20080:8000", "--publish",
                      f"{HOST_UPLINK}:20080:8000", "--", "python3", "-c",
                      "import socket\ns = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen()\n"
                      "print('up', flush=True)\nwhile True:\n    c, p = s.accept(); c.sendall(b'published\\n'); c.close()",
                      **ADMIN)
    job_id = server.stdout.strip().decode()
    try:
        for _ in range(100):
            if d.jobctl("logs", job_id, **ADMIN).stdout:
                break
            time.sleep(0.05)
        code = ("import socket, sys; s = socket.create_connection((sys.argv[1], 20080), timeout=3); "
                "print(s.recv(100).decode().strip())")
        assert in_ns(INET_NS, sys.executable, "-c", code, HOST_UPLINK, timeout=10).stdout.strip() == "published"
        assert in_ns(HOST_NS, sys.executable, "-c", code, "127.0.0.1", timeout=10).stdout.strip() == "published"
        taken = d.jobctl("run", "--net", "bridge", "--publish", "20080:9000", "--", "true", **ADMIN)
        assert taken.returncode != 0 and b"20080" in taken.stderr, taken.stderr
    finally:
        d.jobctl("stop", "--grace", "0", job_id, **ADMIN)


def test_an_address_given_again_is_reachable_at_once(d):
    """A job's address goes to a later job (its own veth and MAC): the host must reach the new one at once,
    not after its neighbour entry for the old MAC expires."""
    serve = ("import socket\ns = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen()\nprint('up', flush=True)\n"
             "while True:\n    c, p = s.accept(); c.sendall(b'here\\n'); c.close()")
    code = ("import socket, sys; s = socket.create_connection(('127.0.0.1', 20085), timeout=3); "
            "print(s.recv(100).decode().strip())")
    addresses = []
    for _ in range(6):
        job_id = d.jobctl("run", "-d", "--net", "bridge", "--publish", "20085:8000", "--", "python3", "-c", serve,
                          **ADMIN).stdout.decode().strip()
        try:
            wait_for(lambda: d.jobctl("logs", job_id, **ADMIN).stdout == b"up\n", "the server job")
            addresses.append(json.loads(d.jobctl("status", "-o", "json", job_id, **ADMIN).stdout)["network"]["address"])
            assert in_ns(HOST_NS, sys.executable, "-c", code, timeout=10).stdout.strip() == "here", addresses
        finally:
            d.jobctl("stop", "--grace", "0", job_id, **ADMIN)
    assert len(set(addresses)) < len(addresses), addresses  # some address was given again, so this tested it


def test_a_role_may_use_only_its_modes(d):
    refused = d.jobctl("run", "--net", "host", "--", "true", **USER)
    assert refused.returncode != 0 and b"permission denied" in refused.stderr.lower()
    assert b"'host'" in refused.stderr
    low = d.jobctl("run", "--net", "bridge", "--publish", "80:80", "--", "true", **USER)
    assert low.returncode != 0 and b"20000-29999" in low.stderr
    assert d.jobctl("run", "--net", "bridge", "--", "true", **USER).returncode == 0


def test_pooled_namespaces_are_each_given_to_one_job_only(d):
    """The pool keeps network.pool namespaces ready (veth and address set up); each goes to one job: a job
    holding port 7777 in its namespace does not keep the next jobs from binding it in theirs."""
    holder = d.jobctl("run", "-d", "--net", "bridge", "--", "python3", "-c",
                      "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); "
                      "print('bound', flush=True); time.sleep(120)", **ADMIN).stdout.decode().strip()
    try:
        wait_for(lambda: d.jobctl("logs", holder, **ADMIN).stdout == b"bound\n", "the first job to bind 7777")
        binder = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7777)); print('bound')"
        for _ in range(5):
            done = d.jobctl("run", "--net", "bridge", "--", "python3", "-c", binder, **ADMIN)
            assert done.stdout == b"bound\n", done.stdout + done.stderr  # EADDRINUSE: another job's namespace
        wait_for(lambda: len(job_veths()) == 3, "the holder's veth and the pool's 2 prepared namespaces")
        job = d.jobctl("run", "-d", "--net", "bridge", "--", "sleep", "60", **ADMIN).stdout.decode().strip()
        assert "jw" + job not in job_veths()  # it took a prepared one (named by the pool, not by the job)
        wait_for(lambda: len(job_veths()) == 4, "the pool refilled beside the running jobs")
        d.jobctl("stop", "--grace", "0", job, **ADMIN)
    finally:
        d.jobctl("stop", "--grace", "0", holder, **ADMIN)


def test_host_mode_is_the_hosts_network_for_admins(d):
    done = d.jobctl("run", "--net", "host", "--", "ls", "/sys/class/net", **ADMIN)
    assert done.returncode == 0, done.stderr
    assert "up0" in done.stdout.decode().split()  # the daemon's namespace's own uplink
    out = probe(d, f"tcp:{UPSTREAM}:8080", options=("--net", "host"))
    assert out[f"tcp:{UPSTREAM}:8080"] == f"ok hello {HOST_UPLINK} on 8080"


def test_nothing_is_left_after_a_jobs_end(d):
    assert d.jobctl("run", "--net", "bridge", "--publish", "20081:80", "--allow", "192.0.2.0/24", "--", "true",
                    **ADMIN).returncode == 0
    rules = nft_tables()  # gone before the end is told: a port it published is free for the next job at once
    assert "20081" not in rules
    assert d.jobctl("run", "--net", "bridge", "--publish", "20081:80", "--", "true", **ADMIN).returncode == 0
    wait_for(lambda: len(job_veths()) == 2, "its veth to go, just after its end (the pool's 2 stay)")


def in_threads(fn, items) -> None:
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)


def test_fifty_concurrent_bridge_jobs_never_share_an_address(d):
    """50 starts at once, all running together: 50 addresses; then 50 stops at once: nothing left."""
    ids: list[str] = []

    def start(_):
        done = d.jobctl("run", "-d", "--net", "bridge", "--", "sleep", "120", **ADMIN)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.decode().strip())

    in_threads(start, range(50))
    assert len(ids) == 50
    jobs = json.loads(d.jobctl("ls", "-o", "json", **ADMIN).stdout)
    addresses = [j["network"]["address"] for j in jobs if j["id"] in ids]
    assert len(addresses) == 50 and len(set(addresses)) == 50, addresses
    wait_for(lambda: len(job_veths()) == 52, "50 jobs' veths and the pool's 2")
    in_threads(lambda job_id: d.jobctl("stop", "--grace", "0", job_id, **ADMIN), ids)
    wait_for(lambda: len(job_veths()) == 2, "the 50 jobs' veths to go (the pool's 2 stay)")


def d_addresses(daemon) -> dict:
    import sqlite3

    with sqlite3.connect(daemon.dir / "state" / "jobs.sqlite3") as db:
        return dict(db.execute("SELECT job_id, address FROM addresses").fetchall())


def test_a_sigkill_and_a_restart_leave_nothing_behind(tmp_path):
    """In a namespace of its own: one daemon per namespace (its bridge and nftables tables are its own)."""
    from daemon_harness import Daemon, unmount_output_tmpfs

    ns = f"jwn-crash-{SUFFIX}"
    ip("netns", "add", ns)
    daemon = None
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        daemon = Daemon(tmp_path / "crash", network_config(), netns=ns).start()
        job = daemon.jobctl("run", "-d", "--net", "bridge", "--publish", "20090:80", "--", "sleep", "600", **ADMIN)
        assert job.returncode == 0, job.stderr
        wait_for(lambda: len(job_veths(ns)) == 3, "the job's veth and the pool's 2")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.proc.wait()
        daemon.start()  # its reconcile: the job is ended (lost), and what it and the pool held goes
        assert job_veths(ns) == [] and "20090" not in nft_tables(ns)
        assert d_addresses(daemon) == {}
        daemon.stop()
        assert BRIDGE not in host_links(ns) and "jobworkerd" not in nft_tables(ns)  # a clean stop takes the rest
    finally:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        unmount_output_tmpfs(tmp_path)
        ip("netns", "del", ns, check=False)


def test_pyroute2_is_imported_only_when_bridge_mode_is_first_used(topology, tmp_path):
    """Its import costs ~90 ms and ~20 MB: a daemon whose jobs use none and host modes never pays it."""
    code = textwrap.dedent(f"""
        import os, sys
        from jobworkerd.config import config_from_dict
        from jobworkerd.worker import JobManager, JobSpec
        from jobworkerd.network.options import NetworkRequest
        config = config_from_dict({{"state_dir": "{tmp_path}/state", "run_dir": "{tmp_path}/run",
                                    "cgroup": {{"subtree": "jobworkerd-it-pyroute2-{os.getpid()}"}}}})
        with JobManager(config) as m:
            for mode in ("none", "host"):
                job = m.start(JobSpec("/bin/true", network=NetworkRequest(mode=mode)))
                assert m.wait(job.id, 30).exit_code == 0
            print("pyroute2" in sys.modules)
    """)
    from daemon_harness import unmount_output_tmpfs

    try:
        done = in_ns(HOST_NS, sys.executable, "-c", code, timeout=120)  # host mode: the test's namespace
    finally:
        unmount_output_tmpfs(tmp_path)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
