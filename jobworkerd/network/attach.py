"""Network modes for jobs (README "What a job gets", docs/SECURITY.md section 5c): what a role may ask for,
and for bridge mode everything a job holds on the host: an address of network.subnet (persistent, so no
two live jobs ever share one), a veth on the daemon's bridge, its firewall rules (egress policy,
published ports) and its resolv.conf and hosts. Each is released at the job's end, at reconcile for jobs
that are gone, and all of it at a clean stop."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from dataclasses import replace

from ..config import NetworkConfig
from ..errors import FailedPrecondition, InvalidArgument, PermissionDenied
from .options import NetworkRequest

log = logging.getLogger("jobworkerd.network")
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"  # resolved's real servers, behind its 127.0.0.53 stub


def decide(request: NetworkRequest, is_admin: bool, config: NetworkConfig) -> NetworkRequest:
    """The request with its mode filled in, or PERMISSION_DENIED naming what the role may not ask for."""
    role, role_name = config.role(is_admin), "admin" if is_admin else "user"
    mode = request.mode or role.default
    if mode not in ("none", "bridge", "host"):
        raise InvalidArgument(f"network mode {mode!r}: one of none, bridge, host")
    if mode not in role.allowed:
        raise PermissionDenied(f"network mode {mode!r} is not allowed to {role_name} jobs; allowed: "
                               f"{', '.join(role.allowed)}")
    if (request.allow or request.publish) and mode != "bridge":
        raise InvalidArgument(f"--allow and --publish need --net bridge (this job's mode is {mode!r})")
    for publish in request.publish:
        if publish.host_address and ipaddress.IPv4Address(publish.host_address).is_unspecified:
            raise InvalidArgument(f"--publish {publish}: name one host address (e.g. 127.0.0.1 or the host's own); "
                                  "0.0.0.0 is not supported")
    if not is_admin:
        within = [ipaddress.IPv4Network(n) for n in config.user_allow]
        for allow in request.allow:
            if not any(ipaddress.IPv4Network(allow.network).subnet_of(n) for n in within):
                raise PermissionDenied(f"--allow {allow}: users may allow only destinations within "
                                       f"{', '.join(config.user_allow) or '(none: network.user_allow)'}")
        low, high = config.user_publish_ports
        for publish in request.publish:
            if not low <= publish.host_port <= high:
                raise PermissionDenied(f"--publish {publish}: users may publish only host ports {low}-{high}")
    return replace(request, mode=mode)


def host_dns_servers(resolv_conf: str = RESOLV_CONF, upstream: str = RESOLVED_UPSTREAM) -> list[str]:
    """The host's name servers, as docker takes them: resolved's upstream ones when resolv.conf points at
    its local stub (127.0.0.53), which a job in its own namespace cannot reach; other loopback servers
    are left out for the same reason."""
    servers = _nameservers(resolv_conf)
    if any(ipaddress.ip_address(s).is_loopback for s in servers if _is_ip(s)) and os.path.exists(upstream):
        servers = _nameservers(upstream)
    return [s for s in servers if _is_ip(s) and not ipaddress.ip_address(s).is_loopback and ":" not in s]


def _nameservers(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.split()[1] for line in handle if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


class Network:
    """Bridge mode's host side. The bridge and the firewall are set up at the first bridge-mode job (so a
    daemon whose jobs never ask for a network never imports pyroute2 nor touches netlink or nftables)."""

    def __init__(self, config: NetworkConfig, store, protected_ports: tuple[int, ...] = ()):
        self.config, self.store = config, store
        self.subnet = ipaddress.IPv4Network(config.subnet)
        self.gateway = next(self.subnet.hosts())
        self.protected_ports = protected_ports
        self._lock = threading.Lock()
        self._bridge = None
        self._firewall = None

    # -- the host side, made once -------------------------------------------------------------------------

    def _ready(self):
        with self._lock:
            if self._bridge is None:
                from .bridge import HOST_PREFIX, Bridge  # noqa: PLC0415 (pyroute2 only when bridge mode is used)
                from .nftables import Nft  # noqa: PLC0415
                from .rules import Firewall  # noqa: PLC0415

                bridge = Bridge(self.config.bridge, self.subnet)
                bridge.setup()
                firewall = Firewall(Nft())
                firewall.setup(self.config.bridge, self.subnet, port_prefix=HOST_PREFIX,
                               allow_job_to_job=self.config.allow_job_to_job, allow_host=self.config.allow_host)
                warning = firewall.forward_drop_warning()
                if warning:
                    log.warning("%s", warning)
                self._bridge, self._firewall = bridge, firewall
            return self._bridge, self._firewall

    @property
    def in_use(self) -> bool:
        return self._bridge is not None

    # -- one job ------------------------------------------------------------------------------------------

    def prepare(self, job_id: str, request: NetworkRequest, job_dir: str, hostname: str = "") -> NetworkRequest:
        """Before the launch: the job's address, its firewall rules and its resolv.conf and hosts (in its run
        directory, bound over /etc's by the launcher). Returns the request with the address."""
        bridge, firewall = self._ready()
        first, last = int(self.gateway) + 1, int(self.subnet.broadcast_address) - 1
        address = str(ipaddress.IPv4Address(self.store.take_address(job_id, first, last)))
        try:
            from .rules import UNRESTRICTED, EgressPolicy  # noqa: PLC0415

            dns = list(self.config.dns) or host_dns_servers()
            allow = [str(a) for a in request.allow] or list(self.config.egress)
            firewall.add_job(address, EgressPolicy.parse(allow, dns=dns) if allow else UNRESTRICTED)
            for publish in request.publish:
                host = publish.host_address or self.config.publish_address
                _check_port_free(publish.protocol, host, publish.host_port)
                firewall.publish(address, publish.protocol, host, publish.host_port, publish.job_port)
            _write(os.path.join(job_dir, "resolv.conf"), "".join(f"nameserver {s}\n" for s in dns))
            _write(os.path.join(job_dir, "hosts"), f"127.0.0.1\tlocalhost\n{address}\t{hostname or job_id}\n")
        except BaseException:
            self.release(job_id, address)
            raise
        return replace(request, address=address)

    def attach_line(self, job_id: str, address: str, init_pid: int) -> str:
        """Once the job's namespace exists: its veth, and the line its init configures eth0 from."""
        bridge, _firewall = self._ready()
        bridge.attach(job_id, init_pid)
        return f"eth0 {address} {self.subnet.prefixlen} {self.gateway}"

    def release(self, job_id: str, address: str) -> None:
        """Everything the job held: release_rules, then release_link."""
        self.release_rules(job_id, address)
        self.release_link(job_id)

    def release_rules(self, job_id: str, address: str) -> None:
        """The job's egress policy and published ports: at its end, before the end is announced, so that a
        port it published is free for the next job at once."""
        if self._firewall is not None and address:
            self._try(job_id, "firewall rules", lambda: self._firewall.remove_job(address))

    def release_link(self, job_id: str) -> None:
        """Its veth, then its address (never the address first: a new job must not share a live veth's).
        Slow right after the job's end (the kernel tears its namespace down under the rtnl lock), so the
        manager does it after announcing the end."""
        if self._bridge is not None:
            self._try(job_id, "veth", lambda: self._bridge.detach(job_id))
        self._try(job_id, "address", lambda: self.store.release_address(job_id))

    @staticmethod
    def _try(job_id: str, what: str, step) -> None:
        try:
            step()
        except Exception as exc:  # keep releasing the rest
            log.error("job %s: cannot release its %s: %s", job_id, what, exc)

    def reconcile(self, live: set[str]) -> list[str]:
        """Releases what jobs that are not running still hold (after a crash): returns their ids."""
        held = self.store.addresses()
        if not held:  # no job held an address: nothing of bridge mode was left (and pyroute2 stays unloaded)
            return []
        bridge, firewall = self._ready()
        stale = {job_id for job_id in held if job_id not in live}
        stale |= {job_id for job_id in bridge.attached_jobs() if job_id not in live}
        firewall.reconcile([ipaddress.IPv4Address(a) for j, a in held.items() if j in live])
        for job_id in sorted(stale):
            address = str(ipaddress.IPv4Address(held[job_id])) if job_id in held else ""
            self.release(job_id, address)
        return sorted(stale)

    def close(self) -> None:
        """A clean stop, once every job has ended: the bridge and the daemon's nftables table go."""
        with self._lock:
            if self._firewall is not None:
                self._firewall.teardown()
            if self._bridge is not None:
                self._bridge.teardown()
                self._bridge.close()
            self._bridge = self._firewall = None


def _check_port_free(protocol: str, host: str, port: int) -> None:
    """A host port a local program already listens on is refused: DNAT would silently shadow it."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("0.0.0.0" if ipaddress.IPv4Address(host).is_unspecified else host, port))
        except OSError as exc:
            raise FailedPrecondition(f"--publish {host}:{port}/{protocol}: the port is taken on the host "
                                     f"({exc.strerror})") from None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
