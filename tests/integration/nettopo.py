"""Throwaway network topologies for tests: only namespaces the test creates, never the host's.

    with Topology() as t:          # gw, inet, j1, j2 (see Topology); all deleted on exit, even on failure
        t.serve(t.inet, "inet", tcp=[8080], udp=[5353])
        t.probe(t.j1, "tcp", "192.0.2.2", 8080)   -> {"ok": "inet 192.0.2.1", "elapsed": 0.003}
                                                      or {"error": "ECONNREFUSED" | "timeout" | ..., ...}

Everything runs under `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys). The
only commands run in the host's namespace are `ip netns add` and `ip netns del`. Addresses come from
TEST-NET-1 (192.0.2.0/24) and the jobs' 10.88.0.0/24, and nothing is routed to a real interface: the
`inet` namespace has no link but its veth to `gw`.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

NETNS_DIR = "/run/netns"
PREFIX = "jwnet"  # jwnet<pid>-<n>-<role>: the pid lets a later run remove what a killed run left

SERVER = r"""
import socket, sys, threading
name, specs = sys.argv[1], sys.argv[2:]
def tcp(s):
    while True:
        c, peer = s.accept()
        with c:
            c.sendall(f"{name} {peer[0]}".encode())
def udp(s):
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{name} {peer[0]}".encode(), peer)
threads = []
for spec in specs:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen(64)
    threads.append(threading.Thread(target=tcp if proto == "tcp" else udp, args=(s,), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""

PROBE = r"""
import errno, json, socket, sys, time
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
t = time.monotonic()
try:
    s.connect((host, port))
    if proto == "udp":
        s.send(b"ping")
    r = {"ok": s.recv(2048).decode()}
except socket.timeout:
    r = {"error": "timeout"}
except OSError as e:
    r = {"error": errno.errorcode.get(e.errno, str(e.errno))}
r["elapsed"] = round(time.monotonic() - t, 4)
print(json.dumps(r))
"""


def _run(*cmd: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, capture_output=True, text=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_namespaces() -> None:
    """Delete namespaces a killed earlier run of these tests left (their pid is gone)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return
    for name in names:
        m = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _run("ip", "netns", "del", name, check=False)


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.cmd(*argv), check=check)

    def ip(self, *args: str) -> None:
        self.run("ip", *args)

    def sysctl(self, key: str, value: str | None = None) -> str:
        """Read (or write) a net sysctl of this namespace, e.g. "net/ipv4/ip_forward"."""
        path = f"/proc/sys/{key}"
        if value is not None:
            self.run("sh", "-c", f"echo {value} > {path}")
        return self.run("cat", path).stdout.strip()


class Topology:
    """gw (the daemon's host): bridge jwbr0 10.88.0.1/24, ip_forward=1, up0 192.0.2.1/30 to inet, default
    route via 192.0.2.2; inet (the internet): 192.0.2.2/30; j1, j2 (jobs): eth0 10.88.0.11/24 and
    10.88.0.12/24 on veths whose gw ends jwv1, jwv2 are ports of jwbr0, default route via 10.88.0.1."""

    BRIDGE, SUBNET, GATEWAY = "jwbr0", "10.88.0.0/24", "10.88.0.1"
    GW_UP, INET = "192.0.2.1", "192.0.2.2"
    J1, J2 = "10.88.0.11", "10.88.0.12"
    _count = 0

    def __init__(self) -> None:
        Topology._count += 1
        self._tag = f"{PREFIX}{os.getpid()}-{Topology._count}"
        self.namespaces: list[Netns] = []
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Topology:
        remove_stale_namespaces()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _netns(self, role: str) -> Netns:
        ns = Netns(f"{self._tag}-{role}")
        _run("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def _build(self) -> None:
        self.gw, self.inet = self._netns("gw"), self._netns("inet")
        self.j1, self.j2 = self._netns("j1"), self._netns("j2")
        gw = self.gw
        gw.ip("link", "add", self.BRIDGE, "type", "bridge")
        gw.ip("addr", "add", f"{self.GATEWAY}/24", "dev", self.BRIDGE)
        gw.ip("link", "set", self.BRIDGE, "up")
        gw.sysctl("net/ipv4/ip_forward", "1")
        gw.ip("link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", self.inet.name)
        gw.ip("addr", "add", f"{self.GW_UP}/30", "dev", "up0")
        gw.ip("link", "set", "up0", "up")
        self.inet.ip("addr", "add", f"{self.INET}/30", "dev", "eth0")
        self.inet.ip("link", "set", "eth0", "up")
        gw.ip("route", "add", "default", "via", self.INET)
        for port, job, addr in (("jwv1", self.j1, self.J1), ("jwv2", self.j2, self.J2)):
            gw.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", job.name)
            gw.ip("link", "set", port, "master", self.BRIDGE, "up")
            job.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            job.ip("link", "set", "eth0", "up")
            job.ip("route", "add", "default", "via", self.GATEWAY)

    def spawn(self, ns: Netns, *argv: str) -> subprocess.Popen:
        """A process in ns (stdin, stdout pipes) that close() ends."""
        proc = subprocess.Popen(ns.cmd(*argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)
        return proc

    def serve(self, ns: Netns, name: str, tcp: Sequence[int] = (), udp: Sequence[int] = ()) -> None:
        """Servers on 0.0.0.0 that answer each connection or datagram with "<name> <peer address>"."""
        specs = [f"tcp:{p}" for p in tcp] + [f"udp:{p}" for p in udp]
        proc = self.spawn(ns, sys.executable, "-I", "-S", "-c", SERVER, name, *specs)
        line = readline(proc, 10)
        assert line == "ready", f"server {name} in {ns.name} did not start: {line!r}"

    def probe(self, ns: Netns, proto: str, host: str, port: int, timeout: float = 1.5) -> dict:
        out = ns.run(sys.executable, "-I", "-S", "-c", PROBE, proto, host, str(port), str(timeout)).stdout
        return json.loads(out)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for f in (proc.stdin, proc.stdout):
                if f:
                    f.close()
        self._procs.clear()
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns.name, check=False)
        self.namespaces.clear()


def readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of proc's stdout, or "" after timeout seconds or at its end."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""
