"""The nftables ruleset the daemon owns for bridge-mode jobs: pure functions that write nft script text,
and `Firewall`, which applies them through `Nft`. Nothing here touches a table that is not ours: the
daemon never flushes the ruleset, and deletes and recreates only `inet jobworkerd` and `bridge jobworkerd`.

Interface (addresses are IPv4 strings or ipaddress objects; every call is one atomic nft transaction):

    fw = Firewall(Nft())
    fw.setup("jwbr0", "10.88.0.0/24", port_prefix="jwv", allow_job_to_job=False, allow_host=False,
             host_dns=False, host_dhcp=False)
        (Re)build the base chains from this configuration; keeps every job's policy and published ports,
        so a restarted daemon calls it first and then `reconcile`. Call after creating the bridge.
    fw.add_job("10.88.0.11", EgressPolicy.parse(["192.0.2.0/24:443/tcp"], dns=["192.0.2.53"]))
        Register a job's egress policy (UNRESTRICTED, the default, lets it reach everything). Replaces
        the job's policy if it has one. A source address that was never added is rejected in forward.
    fw.remove_job("10.88.0.11")      the job's policy and all its published ports; no-op when absent
    fw.publish("10.88.0.11", "tcp", "127.0.0.1", 8080, 80) -> Published
        DNAT host_addr:host_port -> job:job_port. Raises PortPublished when that host port is published
        for something else (the same publication again is a no-op). Does not check whether a local
        socket holds the port: the caller binds to find out, since DNAT would shadow it.
    fw.unpublish("tcp", "127.0.0.1", 8080)        no-op when absent
    fw.published("tcp", "127.0.0.1", 8080) -> Published | None     is it published by us, to what
    fw.jobs() -> {IPv4Address: JobRules(addr, egress, published)}     what the table holds per job
    fw.reconcile(live_addresses) -> [removed addresses]   remove every job's rules whose job is not live
    fw.teardown()        delete both tables (systemctl stop, purge); no-op when absent
    fw.forward_drop_warning() -> str | None   another table's drop-policy forward chain (docker), see below

Layout (`nft list table inet jobworkerd`, names as in the constants below):

    map job_egress  { type ipv4_addr : verdict }        job address -> jump job_<a_b_c_d>
    map published   { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service }
    chain guard       filter prerouting raw      from the bridge to 127.0.0.0/8: drop (see route_localnet)
    chain prerouting  nat    prerouting dstnat   dnat via @published, except to 127.0.0.0/8
    chain output      nat    output     -100     dnat via @published (the host's own connections)
    chain postrouting nat    postrouting srcnat  subnet out of any other interface: masquerade;
                                                 127.0.0.0/8 out of the bridge: masquerade
    chain forward     filter forward    filter   established/related accept; bridge->bridge drop
                                                 (accept with allow_job_to_job); from the bridge:
                                                 ip saddr vmap @job_egress, else reject; to the bridge:
                                                 accept if DNATed (published), else drop
    chain input       filter input      filter   from the bridge: established/related, IPv6 neighbour
                                                 discovery, DNS/DHCP if configured accept; else reject
                                                 (everything with allow_host)
    chain job_<addr>  egress policy: DNS servers, allowed destinations accept; tcp reset; icmpx
                      admin-prohibited (so a denied connect fails at once: ECONNREFUSED/EHOSTUNREACH)

    table bridge jobworkerd: chain forward (filter forward): iifname "<prefix>*" oifname "<prefix>*" drop

Job to job. Frames between two ports of a bridge are switched at layer 2 and never reach the inet forward
hook, unless br_netfilter is loaded (docker loads it; some kernels build it in) and then they do, with
the bridge as both interfaces. So isolation is in both places: the bridge table drops frames between two
ports whose names start with `port_prefix` (the host ends of the jobs' veths must be named so; `meta
ibrname` would not need that, but kernels without CONFIG_NFT_BRIDGE_META refuse it), and the inet forward
chain drops bridge->bridge. With allow_job_to_job both pass, whatever the jobs' egress policies: those
govern what leaves the bridge. Bridge port isolation (IFLA_BRPORT_ISOLATED) would do the same in the
kernel; these rules make it independent of how ports are attached.

Egress policies identify a job by its source address. A job without CAP_NET_ADMIN in its namespace
cannot change its address; a root job could take another job's, and with it that job's policy.
Destinations on the host itself (any of its addresses) are input, not forward: an allow list cannot open
them, only allow_host/host_dns/host_dhcp can.

Publishing to 127.0.0.1 (connections from the host itself). The host's connect to 127.0.0.1:P is
DNATed in the output chain to job:J and re-routed out of the bridge, still from 127.0.0.1. The kernel
refuses a loopback source on a non-loopback device, and a loopback destination arriving on one (the
reply, once un-NATed), unless `net.ipv4.conf.<bridge>.route_localnet=1`; then the postrouting masquerade
of 127.0.0.0/8 out of the bridge gives the packet the bridge's address, so the job answers the bridge.
`publish` sets route_localnet (via /proc/sys) on the bridge when the host address is a loopback one, and
`teardown` clears it. route_localnet would also let a job send to the host's 127.0.0.1 services
(CVE-2020-8558, kube-proxy): the guard chain drops packets from the bridge to 127.0.0.0/8 before routing
(a real reply is still addressed to the bridge there; it is un-NATed later). Loopback publications act
in output only, never in prerouting, so a machine on another interface cannot reach them by sending
packets addressed to 127.0.0.1 to this host (a bug docker had with `-p 127.0.0.1:...`).

Other tables. An accept in our chain ends only our chain: a chain of another table on the same hook still
sees the packet, and its drop (rule or policy) wins. Docker sets `ip filter FORWARD` to policy drop, which
drops all job traffic; `forward_drop_warning` finds such chains (policy drop only: drop rules are not
analysed; iptables-legacy tables are invisible to nftables).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobworkerd.errors import FailedPrecondition, InvalidArgument
from jobworkerd.network.nftables import Nft, NftError

__all__ = [
    "BridgeNet", "Destination", "EgressPolicy", "Firewall", "JobRules", "PortPublished", "Published",
    "UNRESTRICTED", "add_job_script", "forward_drop_warning", "job_chain", "parse_jobs", "parse_published",
    "publish_script", "remove_job_script", "setup_script", "teardown_script", "unpublish_script",
]

TABLE = "jobworkerd"
INET = f"inet {TABLE}"
BRIDGE = f"bridge {TABLE}"
EGRESS_MAP = "job_egress"
PUBLISHED_MAP = "published"
JOB_CHAIN_PREFIX = "job_"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
PROTOCOLS = ("tcp", "udp")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")

IPv4 = ipaddress.IPv4Address | str


class PortPublished(FailedPrecondition):
    """The host address and port are already published, for another job or job port."""


# --- values -----------------------------------------------------------------------------------------


def _addr(value: IPv4) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidArgument(f"not an IPv4 address: {value!r}") from None


def _port(value: int | str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"not a port (1-65535): {value!r}")
    return port


def _proto(value: str) -> str:
    if value not in PROTOCOLS:
        raise InvalidArgument(f"not a protocol (tcp or udp): {value!r}")
    return value


def _ifname(value: str, what: str) -> str:
    if not _IFNAME.fullmatch(value):
        raise InvalidArgument(f"not an interface name ({what}): {value!r}")
    return value


@dataclass(frozen=True)
class Destination:
    """One allowed destination: a network, optionally one port, optionally one protocol."""

    network: ipaddress.IPv4Network
    port: int | None = None
    proto: str | None = None  # None with a port: tcp and udp

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`CIDR[:PORT[/tcp|udp]]`, e.g. `192.0.2.0/24`, `192.0.2.7:443/tcp`, `0.0.0.0/0:53`."""
        net, _, rest = text.strip().partition(":")
        port, _, proto = rest.partition("/")
        try:
            network = ipaddress.IPv4Network(net, strict=False)
        except ValueError:
            raise InvalidArgument(f"--allow {text!r}: not an IPv4 address or CIDR: {net!r}") from None
        if not rest:
            return cls(network)
        try:
            return cls(network, _port(port), _proto(proto) if proto else None)
        except InvalidArgument as exc:
            raise InvalidArgument(f"--allow {text!r}: {exc}") from None

    def rule(self) -> str:
        """The match part of this destination's accept rule."""
        match = f"ip daddr {self.network}"
        if self.port is None:
            return match
        if self.proto:
            return f"{match} {self.proto} dport {self.port}"
        return f"{match} meta l4proto {{ tcp, udp }} th dport {self.port}"


@dataclass(frozen=True)
class EgressPolicy:
    """What a job may reach: everything (allow=None), or only `allow` plus its DNS servers (udp+tcp 53)."""

    allow: tuple[Destination, ...] | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str], dns: Iterable[IPv4] = ()) -> EgressPolicy:
        """A restricted policy from `--allow` texts (an empty list: DNS only)."""
        return cls(tuple(Destination.parse(a) for a in allow), tuple(_addr(d) for d in dns))


UNRESTRICTED = EgressPolicy()


@dataclass(frozen=True)
class Published:
    """host_addr:host_port (proto) is DNATed to job_addr:job_port."""

    proto: str
    host_addr: ipaddress.IPv4Address
    host_port: int
    job_addr: ipaddress.IPv4Address
    job_port: int

    @classmethod
    def of(cls, proto: str, host_addr: IPv4, host_port: int, job_addr: IPv4, job_port: int) -> Published:
        return cls(_proto(proto), _addr(host_addr), _port(host_port), _addr(job_addr), _port(job_port))

    def key(self) -> str:
        return f"{self.proto} . {self.host_addr} . {self.host_port}"

    def element(self) -> str:
        return f"{self.key()} : {self.job_addr} . {self.job_port}"

    def __str__(self) -> str:
        return f"{self.proto} {self.host_addr}:{self.host_port} -> {self.job_addr}:{self.job_port}"


@dataclass(frozen=True)
class JobRules:
    """What the table holds for one job address."""

    addr: ipaddress.IPv4Address
    egress: bool = False
    published: tuple[Published, ...] = ()


@dataclass(frozen=True)
class BridgeNet:
    """The base ruleset's configuration."""

    bridge: str
    subnet: ipaddress.IPv4Network
    port_prefix: str = "jwv"
    allow_job_to_job: bool = False
    allow_host: bool = False
    host_dns: bool = False  # jobs may reach the host on udp/tcp 53
    host_dhcp: bool = False  # jobs may reach the host on udp 67

    def __post_init__(self) -> None:
        _ifname(self.bridge, "bridge")
        _ifname(self.port_prefix, "port prefix")
        if not isinstance(self.subnet, ipaddress.IPv4Network):
            object.__setattr__(self, "subnet", ipaddress.IPv4Network(self.subnet))


# --- script text ------------------------------------------------------------------------------------


def job_chain(addr: IPv4) -> str:
    return JOB_CHAIN_PREFIX + str(_addr(addr)).replace(".", "_")


def _chain_addr(name: str) -> ipaddress.IPv4Address | None:
    if not name.startswith(JOB_CHAIN_PREFIX):
        return None
    try:
        return ipaddress.IPv4Address(name[len(JOB_CHAIN_PREFIX):].replace("_", "."))
    except ValueError:
        return None


def _reject() -> list[str]:
    return ["meta l4proto tcp reject with tcp reset", "reject with icmpx type admin-prohibited"]


def _rules(family_table: str, chain: str, rules: Iterable[str]) -> list[str]:
    return [f"add rule {family_table} {chain} {r}" for r in rules]


def _base_chain(family_table: str, chain: str, spec: str, rules: Iterable[str]) -> list[str]:
    """Replace a base chain (its hook or priority may have changed) without touching anything else."""
    return [
        f"add chain {family_table} {chain}",
        f"flush chain {family_table} {chain}",
        f"delete chain {family_table} {chain}",
        f"add chain {family_table} {chain} {{ {spec}; policy accept; }}",
        *_rules(family_table, chain, rules),
    ]


def _forward_rules(net: BridgeNet) -> list[str]:
    b = f'"{net.bridge}"'
    return [
        "ct state established,related accept",
        f"iifname {b} oifname {b} {'accept' if net.allow_job_to_job else 'drop'}",
        f"iifname {b} ip saddr vmap @{EGRESS_MAP}",
        *(f"iifname {b} {r}" for r in _reject()),
        f"oifname {b} ct status dnat accept",
        f"oifname {b} drop",
    ]


def _input_rules(net: BridgeNet) -> list[str]:
    b = f'iifname "{net.bridge}"'
    if net.allow_host:
        return [f"{b} accept"]
    rules = [
        f"{b} ct state established,related accept",
        f"{b} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept",
    ]
    if net.host_dhcp:
        rules.append(f"{b} udp dport 67 accept")
    if net.host_dns:
        rules.append(f"{b} meta l4proto {{ tcp, udp }} th dport 53 accept")
    return rules + [f"{b} {r}" for r in _reject()]


def _dnat() -> str:
    return f"meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . ip daddr . th dport map @{PUBLISHED_MAP}"


def setup_script(net: BridgeNet) -> str:
    """The base ruleset; keeps job chains and map elements (the maps are created only when missing)."""
    b = f'"{net.bridge}"'
    lines = [
        f"add table {INET}",
        f"add map {INET} {EGRESS_MAP} {{ type ipv4_addr : verdict; }}",
        f"add map {INET} {PUBLISHED_MAP} {{ type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }}",
        *_base_chain(INET, "guard", "type filter hook prerouting priority raw", [f"iifname {b} ip daddr {LOOPBACK} drop"]),
        *_base_chain(INET, "prerouting", "type nat hook prerouting priority dstnat", [f"ip daddr != {LOOPBACK} {_dnat()}"]),
        *_base_chain(INET, "output", "type nat hook output priority -100", [_dnat()]),
        *_base_chain(INET, "postrouting", "type nat hook postrouting priority srcnat", [
            f"ip saddr {net.subnet} oifname != {b} masquerade",
            f"ip saddr {LOOPBACK} oifname {b} masquerade",
        ]),
        *_base_chain(INET, "forward", "type filter hook forward priority filter", _forward_rules(net)),
        *_base_chain(INET, "input", "type filter hook input priority filter", _input_rules(net)),
        f"add table {BRIDGE}",
        f"delete table {BRIDGE}",
        f"add table {BRIDGE}",
        f"add chain {BRIDGE} forward {{ type filter hook forward priority filter; policy accept; }}",
    ]
    if not net.allow_job_to_job:
        p = f'"{net.port_prefix}*"'
        lines.append(f"add rule {BRIDGE} forward iifname {p} oifname {p} drop")
    return "\n".join(lines) + "\n"


def teardown_script() -> str:
    """Delete both tables; succeeds when they are absent (add first, then delete, in one transaction)."""
    return "".join(f"add table {t}\ndelete table {t}\n" for t in (INET, BRIDGE))


def _policy_rules(policy: EgressPolicy) -> list[str]:
    if policy.allow is None:
        return ["accept"]
    rules = []
    if policy.dns:
        servers = ", ".join(str(d) for d in policy.dns)
        rules.append(f"ip daddr {{ {servers} }} meta l4proto {{ tcp, udp }} th dport 53 accept")
    rules += [f"{d.rule()} accept" for d in policy.allow]
    return rules + _reject()


def add_job_script(addr: IPv4, policy: EgressPolicy = UNRESTRICTED) -> str:
    """Create (or replace) the job's chain and its entry in the egress map, in one transaction."""
    a, chain = _addr(addr), job_chain(addr)
    return "\n".join([
        f"add chain {INET} {chain}",
        f"flush chain {INET} {chain}",
        *_rules(INET, chain, _policy_rules(policy)),
        f"add element {INET} {EGRESS_MAP} {{ {a} : jump {chain} }}",
    ]) + "\n"


def unpublish_script(p: Published) -> str:
    """Remove one publication; succeeds when it is absent, fails when the port maps elsewhere."""
    return f"add element {INET} {PUBLISHED_MAP} {{ {p.element()} }}\ndelete element {INET} {PUBLISHED_MAP} {{ {p.key()} }}\n"


def remove_job_script(addr: IPv4, published: Iterable[Published] = ()) -> str:
    """Remove the job's chain, its egress entry and the given publications; succeeds when absent."""
    a, chain = _addr(addr), job_chain(addr)
    lines = [
        f"add chain {INET} {chain}",
        f"add element {INET} {EGRESS_MAP} {{ {a} : jump {chain} }}",
        f"delete element {INET} {EGRESS_MAP} {{ {a} }}",
        f"flush chain {INET} {chain}",
        f"delete chain {INET} {chain}",
    ]
    return "\n".join(lines) + "\n" + "".join(unpublish_script(p) for p in published)


def publish_script(p: Published) -> str:
    return f"add element {INET} {PUBLISHED_MAP} {{ {p.element()} }}\n"


# --- listings (JSON, as Nft.list_json returns them) -------------------------------------------------

_PROTO_NUMBERS = {6: "tcp", 17: "udp"}


def parse_published(listing: Sequence[dict[str, Any]]) -> list[Published]:
    """The publications in a listing of our table or of its `published` map."""
    out = []
    for obj in listing:
        m = obj.get("map")
        if not m or m.get("table") != TABLE or m.get("family") != "inet" or m.get("name") != PUBLISHED_MAP:
            continue
        for key, data in m.get("elem", []):
            proto, host_addr, host_port = key["concat"]
            job_addr, job_port = data["concat"]
            out.append(Published.of(_PROTO_NUMBERS.get(proto, proto), host_addr, host_port, job_addr, job_port))
    return out


def parse_jobs(listing: Sequence[dict[str, Any]]) -> dict[ipaddress.IPv4Address, JobRules]:
    """Per job address, what a listing of our table (`list table inet jobworkerd`) holds."""
    egress: set[ipaddress.IPv4Address] = set()
    for obj in listing:
        chain, m = obj.get("chain"), obj.get("map")
        if chain and chain.get("table") == TABLE and chain.get("family") == "inet":
            a = _chain_addr(chain["name"])
            if a:
                egress.add(a)
        if m and m.get("table") == TABLE and m.get("family") == "inet" and m.get("name") == EGRESS_MAP:
            egress.update(_addr(key) for key, _ in m.get("elem", []))
    published: dict[ipaddress.IPv4Address, list[Published]] = {}
    for p in parse_published(listing):
        published.setdefault(p.job_addr, []).append(p)
    return {a: JobRules(a, a in egress, tuple(published.get(a, ()))) for a in sorted(egress | set(published))}


def forward_drop_warning(listing: Sequence[dict[str, Any]]) -> str | None:
    """A warning naming every forward-hook chain with a drop policy in another table (`list chains`)."""
    drops = [
        f"{c['family']} {c['table']} {c['name']}"
        for c in (obj.get("chain") for obj in listing)
        if c and c.get("hook") == "forward" and c.get("policy") == "drop"
        and c.get("family") in ("ip", "ip6", "inet") and c.get("table") != TABLE
    ]
    if not drops:
        return None
    return (
        f"forward chain(s) with policy drop in other tables: {', '.join(drops)}. They drop bridge-mode jobs' "
        "traffic whatever table inet jobworkerd accepts (docker sets ip filter FORWARD to drop); accept the "
        "job bridge there (for docker: iptables -I DOCKER-USER -i BRIDGE -j ACCEPT and "
        "iptables -I DOCKER-USER -o BRIDGE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT)"
    )


# --- applying them -----------------------------------------------------------------------------------


class Firewall:
    """Applies the scripts above through one Nft context; the caller serialises calls per job."""

    def __init__(self, nft: Nft, *, sysctl_conf: Path = Path("/proc/sys/net/ipv4/conf")):
        self._nft = nft
        self._sysctl_conf = sysctl_conf
        self._net: BridgeNet | None = None

    def setup(
        self,
        bridge: str,
        subnet: str | ipaddress.IPv4Network,
        *,
        port_prefix: str = "jwv",
        allow_job_to_job: bool = False,
        allow_host: bool = False,
        host_dns: bool = False,
        host_dhcp: bool = False,
    ) -> None:
        net = BridgeNet(
            bridge, ipaddress.IPv4Network(subnet), port_prefix, allow_job_to_job, allow_host, host_dns, host_dhcp
        )
        self._nft.run(setup_script(net))
        self._net = net

    def add_job(self, addr: IPv4, policy: EgressPolicy = UNRESTRICTED) -> None:
        self._nft.run(add_job_script(addr, policy))

    def remove_job(self, addr: IPv4) -> None:
        a = _addr(addr)
        self._nft.run(remove_job_script(a, [p for p in self._published() if p.job_addr == a]))

    def publish(self, job_addr: IPv4, proto: str, host_addr: IPv4, host_port: int, job_port: int) -> Published:
        p = Published.of(proto, host_addr, host_port, job_addr, job_port)
        if p.host_addr in LOOPBACK:
            self._set_route_localnet(1)
        self._check_free(p)
        try:
            self._nft.run(publish_script(p))
        except NftError:
            self._check_free(p)  # published meanwhile (File exists): say so; else it was something else
            raise
        return p

    def unpublish(self, proto: str, host_addr: IPv4, host_port: int) -> None:
        p = self.published(proto, host_addr, host_port)
        if p is not None:
            self._nft.run(unpublish_script(p))

    def published(self, proto: str, host_addr: IPv4, host_port: int) -> Published | None:
        key = (_proto(proto), _addr(host_addr), _port(host_port))
        return next((p for p in self._published() if (p.proto, p.host_addr, p.host_port) == key), None)

    def jobs(self) -> dict[ipaddress.IPv4Address, JobRules]:
        """Empty when the table is absent (before setup, after teardown)."""
        tables = self._nft.list_json("tables inet")
        if not any(t.get("table", {}).get("name") == TABLE for t in tables):
            return {}
        return parse_jobs(self._nft.list_json(f"table {INET}"))

    def reconcile(self, live: Iterable[IPv4]) -> list[ipaddress.IPv4Address]:
        keep = {_addr(a) for a in live}
        stale = [r for a, r in self.jobs().items() if a not in keep]
        if stale:
            self._nft.run("".join(remove_job_script(r.addr, r.published) for r in stale))
        return [r.addr for r in stale]

    def teardown(self) -> None:
        self._nft.run(teardown_script())
        if self._net is not None and (self._sysctl_conf / self._net.bridge).is_dir():
            self._set_route_localnet(0)

    def forward_drop_warning(self) -> str | None:
        return forward_drop_warning(self._nft.list_json("chains"))

    def _published(self) -> list[Published]:
        return parse_published(self._nft.list_json(f"map {INET} {PUBLISHED_MAP}"))

    def _check_free(self, p: Published) -> None:
        held = self.published(p.proto, p.host_addr, p.host_port)
        if held is not None and held != p:
            raise PortPublished(f"{p.proto} {p.host_addr}:{p.host_port} is already published ({held})")

    def _set_route_localnet(self, value: int) -> None:
        if self._net is None:
            raise FailedPrecondition("the firewall is not set up (call setup first)")
        path = self._sysctl_conf / self._net.bridge / "route_localnet"
        try:
            path.write_text(f"{value}\n")
        except FileNotFoundError:
            raise FailedPrecondition(f"no bridge {self._net.bridge} (for {path})") from None
