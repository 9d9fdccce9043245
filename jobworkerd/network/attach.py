"""Network modes for jobs (README "What a job gets", docs/SECURITY.md section 5c): what a role may ask for,
and for bridge mode everything a job holds on the host: an address of network.subnet (persistent, so no
two live jobs ever share one), a veth on the daemon's bridge, its firewall rules (egress policy,
published ports) and its resolv.conf and hosts. Each is released at the job's end, at reconcile for jobs
that are gone, and all of it at a clean stop."""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, replace

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

    def __init__(self, config: NetworkConfig, store, hold=None):
        """`hold(attach)`: makes a network namespace for the pool (ForkServer.hold); None: no pool."""
        self.config, self.store = config, store
        self.subnet = ipaddress.IPv4Network(config.subnet)
        self.gateway = next(self.subnet.hosts())
        self._lock = threading.Lock()
        self._bridge = None
        self._firewall = None
        self._pool = Pool(self, hold, config.pool) if hold is not None and config.pool else None

    # -- the host side, made once -------------------------------------------------------------------------

    def _ready(self, start_pool: bool = True):
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
            if start_pool and self._pool is not None:
                self._pool.start()
            return self._bridge, self._firewall

    # -- one job ------------------------------------------------------------------------------------------

    def prepare(self, job_id: str, request: NetworkRequest, job_dir: str, hostname: str = "") -> tuple[NetworkRequest, int]:
        """Before the launch: the job's address, its firewall rules and its resolv.conf and hosts (in its run
        directory, bound over /etc's by the launcher). Returns the request with the address, and a prepared
        namespace of the pool to join (an fd the caller closes once the job is launched), or -1: then the
        launcher makes one and the veth is attached once it exists (attach_line)."""
        bridge, firewall = self._ready()
        prepared = self._pool.take() if self._pool is not None else None
        if prepared is not None:
            self.store.move_address(prepared.holder, job_id)
            address, request = prepared.address, replace(request, link=prepared.link)
        else:
            address = str(ipaddress.IPv4Address(self.store.take_address(job_id, *self.host_range)))
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
            if prepared is not None:
                os.close(prepared.netns_fd)
            self.release(job_id, address, request.link)
            raise
        return replace(request, address=address), prepared.netns_fd if prepared is not None else -1

    @property
    def host_range(self) -> tuple[int, int]:
        return int(self.gateway) + 1, int(self.subnet.broadcast_address) - 1

    def attach_line(self, job_id: str, address: str, init_pid: int) -> str:
        """Once the job's namespace exists: its veth, and the line its init configures eth0 from."""
        bridge, _firewall = self._ready()
        bridge.attach(job_id, init_pid)
        return f"eth0 {address} {self.subnet.prefixlen} {self.gateway}"

    def release(self, job_id: str, address: str, link: str = "") -> None:
        """Everything the job held: release_rules, then release_link."""
        self.release_rules(job_id, address)
        self.release_link(job_id, link)

    def release_rules(self, job_id: str, address: str) -> None:
        """The job's egress policy and published ports: at its end, before the end is announced, so that a
        port it published is free for the next job at once."""
        if self._firewall is not None and address:
            self._try(job_id, "firewall rules", lambda: self._firewall.remove_job(address))

    def release_link(self, job_id: str, link: str = "") -> None:
        """Its veth (named by `link` when it came from the pool), then its address (never the address first:
        a new job must not share a live veth's). Slow right after the job's end (the kernel tears its
        namespace down under the rtnl lock), so the manager does it after announcing the end."""
        if self._bridge is not None:
            self._try(job_id, "veth", lambda: self._bridge.detach(link or job_id))
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
        bridge, firewall = self._ready(start_pool=False)  # before the pool adds veths of its own
        stale = {job_id for job_id in held if job_id not in live}
        stale |= {job_id for job_id in bridge.attached_jobs() if job_id not in live}
        firewall.reconcile([ipaddress.IPv4Address(a) for j, a in held.items() if j in live])
        for job_id in sorted(stale):
            address = str(ipaddress.IPv4Address(held[job_id])) if job_id in held else ""
            self.release(job_id, address)
        return sorted(stale)

    def close(self) -> None:
        """A clean stop, once every job has ended: the pool, the bridge and the daemon's nftables table go."""
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            if self._firewall is not None:
                self._firewall.teardown()
            if self._bridge is not None:
                self._bridge.teardown()
                self._bridge.close()
            self._bridge = self._firewall = None


@dataclass
class Prepared:
    """A network namespace of the pool: held by `netns_fd` (its maker has exited), its veth jw<link> on the
    bridge, its eth0 set up with `address`, which the store holds under `holder` until a job takes it."""

    link: str
    address: str
    netns_fd: int = -1

    @property
    def holder(self) -> str:
        return f"pool-{self.link}"


class Pool:
    """Prepared namespaces, refilled in the background to `size`. Each is given to one job only (taken off
    the pool), so no job ever joins a namespace another job used."""

    def __init__(self, network: Network, hold, size: int):
        self.network, self.hold, self.size = network, hold, size
        self._ready: collections.deque[Prepared] = collections.deque()
        self._wanted = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._refill, name="network-pool", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._closing:
            try:
                self._thread.start()
            except RuntimeError:
                pass  # started already

    def take(self) -> Prepared | None:
        with self._wanted:
            prepared = self._ready.popleft() if self._ready else None
            self._wanted.notify()
        return prepared

    def _refill(self) -> None:
        failures = 0
        while True:
            with self._wanted:
                self._wanted.wait_for(lambda: self._closing or len(self._ready) < self.size)
                if self._closing:
                    return
            try:
                prepared = self._make()
                failures = 0
            except Exception as exc:  # starts go on without the pool meanwhile (a veth each)
                failures += 1
                log.error("cannot prepare a network namespace for the pool: %s", exc)
                with self._wanted:
                    self._wanted.wait_for(lambda: self._closing, timeout=min(30.0, 0.5 * 2 ** failures))
                continue
            with self._wanted:
                if self._closing:
                    self._discard(prepared)
                    return
                self._ready.append(prepared)

    def _make(self) -> Prepared:
        prepared = Prepared(uuid.uuid4().hex[:12], "")
        store, bridge = self.network.store, self.network._bridge
        prepared.address = str(ipaddress.IPv4Address(store.take_address(prepared.holder, *self.network.host_range)))

        def attach(pid: int) -> str:
            prepared.netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # pid alive: it waits
            bridge.attach(prepared.link, pid)
            return f"eth0 {prepared.address} {self.network.subnet.prefixlen} {self.network.gateway}"

        try:
            self.hold(attach)
        except BaseException:
            self._discard(prepared)
            raise
        return prepared

    def _discard(self, prepared: Prepared) -> None:
        if prepared.netns_fd >= 0:
            os.close(prepared.netns_fd)
        if self.network._bridge is not None:
            self.network._bridge.detach(prepared.link)
        self.network.store.release_address(prepared.holder)

    def close(self) -> None:
        with self._wanted:
            self._closing = True
            self._wanted.notify_all()
        if self._thread.is_alive():
            self._thread.join(30)
        while self._ready:
            self._discard(self._ready.popleft())


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
