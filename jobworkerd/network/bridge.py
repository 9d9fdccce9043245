"""The daemon's bridge and the jobs' veths, through netlink (pyroute2, imported only when bridge mode is
first needed: ~90 ms and ~20 MB). Everything runs in the daemon's own network namespace: a job's veth is
created there with its peer put straight into the job's namespace by fd, so no process is forked into
another namespace (pyroute2's NetNS would fork one, a hazard in a threaded daemon); the job's init sets
up its end (jobworkerd/launcher/netcfg.py)."""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from ..errors import InternalError

HOST_PREFIX = "jw"  # host ends are jw<job id> (14 characters; IFNAMSIZ allows 15)
HOST_END = re.compile(r"^jw([0-9a-f]{12})$")
JOB_END = "eth0"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"  # per network namespace


def host_end(job_id: str) -> str:
    return HOST_PREFIX + job_id


class _Netlink:
    """pyroute2's IPRoute, owned by one thread of its own: pyroute2 0.9 runs an asyncio loop inside, which
    fails in a thread whose loop already runs (the daemon's main thread), and one socket serves all jobs."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._ip = self._executor.submit(self._open).result()

    @staticmethod
    def _open():
        from pyroute2 import IPRoute  # noqa: PLC0415 (only when a network mode needs it)

        return IPRoute()

    def __getattr__(self, name: str):
        method = getattr(self._ip, name)
        return lambda *args, **kwargs: self._executor.submit(method, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.submit(self._ip.close).result()
        self._executor.shutdown()


class Bridge:
    def __init__(self, name: str, subnet: ipaddress.IPv4Network):
        self.name, self.subnet = name, subnet
        self.gateway = next(subnet.hosts())
        self._ip = _Netlink()
        self._lock = threading.Lock()  # a job's steps (add, look up, set) together
        self._index: int | None = None
        self._forwarding_was_off = False  # this daemon turned IPv4 forwarding on: a clean stop turns it off

    def setup(self) -> None:
        """The bridge with the gateway address, up; IPv4 forwarding on. Reused when it exists already."""
        with self._lock:
            found = self._ip.link_lookup(ifname=self.name)
            if not found:
                self._ip.link("add", ifname=self.name, kind="bridge")
                found = self._ip.link_lookup(ifname=self.name)
            self._index = found[0]
            have = {a.get_attr("IFA_ADDRESS") for a in self._ip.get_addr(index=self._index, family=2)}
            if str(self.gateway) not in have:
                self._ip.addr("add", index=self._index, address=str(self.gateway), prefixlen=self.subnet.prefixlen)
            self._ip.link("set", index=self._index, state="up")
        with open(IP_FORWARD, "r+") as handle:
            if handle.read().strip() != "1":
                handle.seek(0)
                handle.write("1")
                self._forwarding_was_off = True

    def attach(self, job_id: str, init_pid: int) -> None:
        """A veth pair: jw<job id> on the bridge here, eth0 in the namespace of the job's init."""
        name = host_end(job_id)
        fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._lock:
                self._ip.link("add", ifname=name, kind="veth", peer={"ifname": JOB_END, "net_ns_fd": fd})
                index = self._ip.link_lookup(ifname=name)[0]
                self._ip.link("set", index=index, master=self._index, state="up")
        except Exception as exc:
            self.detach(job_id)
            raise InternalError(f"cannot attach job {job_id} to bridge {self.name}: {exc}") from exc
        finally:
            os.close(fd)

    def detach(self, job_id: str) -> bool:
        """Removes the job's veth (both ends) if it is still there. True if it was."""
        with self._lock:
            found = self._ip.link_lookup(ifname=host_end(job_id))
            if not found:
                return False
            try:
                self._ip.link("del", index=found[0])
            except Exception:  # gone meanwhile (its namespace died with the job)
                return False
            return True

    def attached_jobs(self) -> list[str]:
        """Job ids of the veths on the bridge (reconcile removes those of jobs that are not running)."""
        with self._lock:
            names = [link.get_attr("IFLA_IFNAME") or "" for link in self._ip.get_links()]
        return [m.group(1) for m in map(HOST_END.match, names) if m]

    def teardown(self) -> None:
        """The bridge goes (with any veth still on it): at a clean stop, after every job has ended."""
        for job_id in self.attached_jobs():
            self.detach(job_id)
        with self._lock:
            found = self._ip.link_lookup(ifname=self.name)
            if found:
                self._ip.link("del", index=found[0])
        if self._forwarding_was_off:
            with open(IP_FORWARD, "w") as handle:
                handle.write("0")

    def close(self) -> None:
        self._ip.close()
