"""jobworkerd.network.rules against real packets, in namespaces the test creates (tests/integration/nettopo.py):
`gw` plays the daemon's host and runs a driver of Firewall (one Nft context, as the daemon holds), `inet`
the internet, `j1` and `j2` two bridge-mode jobs. The host's own network namespace is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from nettopo import Topology, readline

pytestmark = pytest.mark.root

J1, J2, GATEWAY, GW_UP, INET = Topology.J1, Topology.J2, Topology.GATEWAY, Topology.GW_UP, Topology.INET
API_PORT = 7000  # stands for the daemon's API port on the host
FAST = 0.5  # a refused connection fails well before the probes' 1.5 s timeout
BR_NF = "net/bridge/bridge-nf-call-iptables"

DRIVER = r"""
import dataclasses, json, sys
from jobworkerd.network.nftables import Nft
from jobworkerd.network.rules import EgressPolicy, Firewall
nft = Nft()
fw = Firewall(nft)
def plain(o):
    if dataclasses.is_dataclass(o):
        return plain(dataclasses.asdict(o))
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    return o if o is None or isinstance(o, (bool, int, str)) else str(o)
for line in sys.stdin:
    op, args, kwargs = json.loads(line)
    try:
        if op == "nft":
            result = nft.run(*args)
        elif op == "add_job" and "allow" in kwargs:
            result = fw.add_job(args[0], EgressPolicy.parse(kwargs["allow"], kwargs.get("dns", ())))
        else:
            result = getattr(fw, op)(*args, **kwargs)
        reply = {"ok": plain(result)}
    except Exception as e:
        reply = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(reply), flush=True)
"""


class FirewallDriver:
    """The Firewall driver in gw: call(op, ...) runs Firewall.op (or "nft": a raw script) there."""

    def __init__(self, topo: Topology):
        self._proc = topo.spawn(topo.gw, sys.executable, "-c", DRIVER)

    def call(self, op: str, *args, **kwargs):
        self._proc.stdin.write(json.dumps([op, args, kwargs]) + "\n")
        self._proc.stdin.flush()
        line = readline(self._proc, 15)
        assert line, f"the driver gave no answer to {op}"
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(reply["error"], reply["message"])
        return reply["ok"]

    def setup(self, **options) -> None:
        self.call("setup", Topology.BRIDGE, Topology.SUBNET, port_prefix="jwv", **options)


class DriverError(Exception):
    pass


@pytest.fixture
def topo():
    with Topology() as t:
        t.serve(t.inet, "inet", tcp=[8080, 9090, 53], udp=[5353, 53])
        t.serve(t.gw, "gw", tcp=[API_PORT, 53], udp=[53])
        t.serve(t.j1, "j1", tcp=[80], udp=[80])
        t.serve(t.j2, "j2", tcp=[80], udp=[80])
        yield t


@pytest.fixture
def fw(topo):
    d = FirewallDriver(topo)
    d.setup()
    return d


def ok(result: dict, expected: str) -> None:
    assert result.get("ok") == expected, result


def refused(result: dict) -> None:
    """Failed at once with an error a program reports (not a timeout, not a silent drop)."""
    assert result.get("error") in ("ECONNREFUSED", "EHOSTUNREACH"), result
    assert result["elapsed"] < FAST, result


def blocked(result: dict) -> None:
    assert "ok" not in result, result


def test_egress_is_masqueraded(topo, fw):
    fw.call("add_job", J1)
    ok(topo.probe(topo.j1, "tcp", INET, 8080), f"inet {GW_UP}")  # the server sees gw's address
    ok(topo.probe(topo.j1, "udp", INET, 5353), f"inet {GW_UP}")


def test_a_source_without_a_policy_is_refused(topo, fw):
    fw.call("add_job", J1)
    refused(topo.probe(topo.j2, "tcp", INET, 8080))
    refused(topo.probe(topo.j2, "udp", INET, 5353))


def test_allow_list_permits_and_refuses_at_once(topo, fw):
    fw.call("add_job", J1, allow=[f"{INET}:8080/tcp"], dns=[INET])
    fw.call("add_job", J2, allow=[f"{INET}:5353/udp"])
    ok(topo.probe(topo.j1, "tcp", INET, 8080), f"inet {GW_UP}")
    refused(topo.probe(topo.j1, "tcp", INET, 9090))
    refused(topo.probe(topo.j1, "udp", INET, 5353))
    ok(topo.probe(topo.j1, "udp", INET, 53), f"inet {GW_UP}")  # its DNS server, udp and tcp
    ok(topo.probe(topo.j1, "tcp", INET, 53), f"inet {GW_UP}")
    ok(topo.probe(topo.j2, "udp", INET, 5353), f"inet {GW_UP}")
    refused(topo.probe(topo.j2, "tcp", INET, 8080))
    refused(topo.probe(topo.j2, "udp", INET, 53))  # no DNS servers in its policy

    fw.call("add_job", J2, allow=["192.0.2.0/30"])  # replaces j2's policy; j1's is untouched
    ok(topo.probe(topo.j2, "tcp", INET, 9090), f"inet {GW_UP}")
    ok(topo.probe(topo.j2, "udp", INET, 5353), f"inet {GW_UP}")
    refused(topo.probe(topo.j1, "tcp", INET, 9090))

    fw.call("add_job", J1, allow=[f"{INET}:9090"])  # a port without a protocol: tcp and udp
    ok(topo.probe(topo.j1, "tcp", INET, 9090), f"inet {GW_UP}")
    refused(topo.probe(topo.j1, "tcp", INET, 8080))


def _br_netfilter_modes(topo):
    """br_netfilter hands bridged frames to the inet hooks when it is loaded (and built in here); without
    it they never reach them. Job-to-job isolation must hold both ways. The sysctl is per network
    namespace since Linux 5.3: on older kernels the test leaves it alone (it would be the host's)."""
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (5, 3):
        return [None]
    try:
        topo.gw.sysctl(BR_NF)
    except subprocess.CalledProcessError:
        return [None]  # no br_netfilter
    return ["1", "0"]


def test_jobs_cannot_reach_each_other_nor_the_host(topo, fw):
    fw.call("add_job", J1)
    fw.call("add_job", J2)
    for mode in _br_netfilter_modes(topo):
        if mode is not None:
            topo.gw.sysctl(BR_NF, mode)
        blocked(topo.probe(topo.j1, "tcp", J2, 80, timeout=1))
        blocked(topo.probe(topo.j2, "udp", J1, 80, timeout=1))
    refused(topo.probe(topo.j1, "tcp", GATEWAY, API_PORT))
    refused(topo.probe(topo.j1, "tcp", GW_UP, API_PORT))
    refused(topo.probe(topo.j1, "udp", GATEWAY, 53))
    refused(topo.probe(topo.j1, "tcp", GATEWAY, 53))
    ok(topo.probe(topo.inet, "tcp", GW_UP, API_PORT), f"gw {INET}")  # only the bridge is shut out


def test_config_opens_job_to_job_and_the_host(topo, fw):
    fw.call("add_job", J1, allow=[])
    fw.call("add_job", J2, allow=[])
    fw.setup(host_dns=True)
    ok(topo.probe(topo.j1, "udp", GATEWAY, 53), f"gw {J1}")
    ok(topo.probe(topo.j1, "tcp", GATEWAY, 53), f"gw {J1}")
    refused(topo.probe(topo.j1, "tcp", GATEWAY, API_PORT))
    fw.setup(allow_job_to_job=True, allow_host=True)
    for mode in _br_netfilter_modes(topo):
        if mode is not None:
            topo.gw.sysctl(BR_NF, mode)
        ok(topo.probe(topo.j1, "tcp", J2, 80), f"j2 {J1}")
    ok(topo.probe(topo.j1, "tcp", GATEWAY, API_PORT), f"gw {J1}")
    ok(topo.probe(topo.j1, "tcp", GW_UP, API_PORT), f"gw {J1}")
    refused(topo.probe(topo.j1, "tcp", INET, 8080))  # the egress policies still hold


def test_published_ports_from_the_internet_and_from_the_host(topo, fw):
    fw.call("add_job", J1, allow=[])
    fw.call("add_job", J2, allow=[])
    fw.call("publish", J1, "tcp", GW_UP, 8081, 80)
    fw.call("publish", J1, "tcp", "127.0.0.1", 8082, 80)
    fw.call("publish", J2, "udp", GW_UP, 8083, 80)
    ok(topo.probe(topo.inet, "tcp", GW_UP, 8081), f"j1 {INET}")  # the job sees the client
    ok(topo.probe(topo.inet, "udp", GW_UP, 8083), f"j2 {INET}")
    ok(topo.probe(topo.gw, "tcp", "127.0.0.1", 8082), f"j1 {GATEWAY}")  # masqueraded to the bridge
    ok(topo.probe(topo.gw, "tcp", GW_UP, 8081), f"j1 {GW_UP}")
    route_localnet = f"net/ipv4/conf/{Topology.BRIDGE}/route_localnet"
    assert topo.gw.sysctl(route_localnet) == "1"
    topo.gw.sysctl(route_localnet, "0")  # why publish sets it: without, the kernel refuses the route
    blocked(topo.probe(topo.gw, "tcp", "127.0.0.1", 8082, timeout=1))
    topo.gw.sysctl(route_localnet, "1")

    assert fw.call("published", "tcp", "127.0.0.1", 8082)["job_addr"] == J1
    assert fw.call("published", "tcp", "127.0.0.1", 8084) is None
    with pytest.raises(DriverError, match="PortPublished"):
        fw.call("publish", J2, "tcp", "127.0.0.1", 8082, 80)
    fw.call("publish", J1, "tcp", "127.0.0.1", 8082, 80)  # the same again: no-op

    fw.call("unpublish", "tcp", GW_UP, 8081)
    fw.call("unpublish", "tcp", GW_UP, 8081)
    blocked(topo.probe(topo.inet, "tcp", GW_UP, 8081))
    ok(topo.probe(topo.gw, "tcp", "127.0.0.1", 8082), f"j1 {GATEWAY}")
    ok(topo.probe(topo.inet, "udp", GW_UP, 8083), f"j2 {INET}")


def test_loopback_publication_is_not_reachable_from_outside(topo, fw):
    """A machine on another link that sends packets for 127.0.0.1:PORT to gw must not reach the job (a DNAT
    in prerouting would take them there before the routing decision could refuse them as martians)."""
    fw.call("add_job", J1)
    fw.call("publish", J1, "tcp", "127.0.0.1", 8082, 80)
    inet = topo.inet  # make inet send 127.0.0.1 to gw, and accept answers from 127.0.0.1
    inet.ip("rule", "add", "pref", "10", "to", "127.0.0.1", "lookup", "200")
    inet.ip("rule", "add", "pref", "100", "lookup", "local")
    inet.ip("rule", "del", "pref", "0")
    inet.ip("route", "add", "default", "via", GW_UP, "table", "200")
    inet.sysctl("net/ipv4/conf/eth0/route_localnet", "1")
    blocked(topo.probe(inet, "tcp", "127.0.0.1", 8082, timeout=1))
    # the probe would see it: the same publication as a plain prerouting DNAT in a table of the test's
    fw.call("nft", "table ip naive {\nchain p {\ntype nat hook prerouting priority dstnat;\n"
            f"tcp dport 8082 dnat to {J1}:80\n}}\n}}")
    ok(topo.probe(inet, "tcp", "127.0.0.1", 8082), f"j1 {INET}")


def test_a_job_cannot_reach_the_hosts_loopback(topo, fw):
    """route_localnet on the bridge (for loopback publications) would let a job that sends packets for
    127.0.0.1 to its gateway reach the host's loopback services (CVE-2020-8558): the guard chain drops
    them before routing, even with allow_host."""
    fw.setup(allow_host=True)
    fw.call("add_job", J1)
    fw.call("publish", J1, "tcp", "127.0.0.1", 8082, 80)
    j1 = topo.j1  # j1 sends 127.0.0.1 to its gateway and accepts answers from 127.0.0.1
    j1.ip("rule", "add", "pref", "10", "to", "127.0.0.1", "lookup", "200")
    j1.ip("rule", "add", "pref", "100", "lookup", "local")
    j1.ip("rule", "del", "pref", "0")
    j1.ip("route", "add", "default", "via", GATEWAY, "table", "200")
    j1.sysctl("net/ipv4/conf/eth0/route_localnet", "1")
    blocked(topo.probe(j1, "tcp", "127.0.0.1", API_PORT, timeout=1))
    fw.call("nft", "flush chain inet jobworkerd guard")  # the probe would see it without the guard
    ok(topo.probe(j1, "tcp", "127.0.0.1", API_PORT), f"gw {J1}")


def test_removing_one_job_leaves_the_others(topo, fw):
    fw.call("add_job", J1, allow=[f"{INET}:8080/tcp"])
    fw.call("add_job", J2)
    fw.call("publish", J1, "tcp", GW_UP, 8081, 80)
    fw.call("publish", J2, "tcp", GW_UP, 8082, 80)
    fw.setup()  # a daemon restart rebuilds the base chains and keeps the jobs
    ok(topo.probe(topo.j1, "tcp", INET, 8080), f"inet {GW_UP}")
    ok(topo.probe(topo.inet, "tcp", GW_UP, 8081), f"j1 {INET}")
    jobs = fw.call("jobs")
    assert set(jobs) == {J1, J2} and [p["host_port"] for p in jobs[J1]["published"]] == [8081]

    fw.call("remove_job", J1)
    fw.call("remove_job", J1)
    refused(topo.probe(topo.j1, "tcp", INET, 8080))
    blocked(topo.probe(topo.inet, "tcp", GW_UP, 8081))
    ok(topo.probe(topo.j2, "tcp", INET, 9090), f"inet {GW_UP}")
    ok(topo.probe(topo.inet, "tcp", GW_UP, 8082), f"j2 {INET}")
    assert set(fw.call("jobs")) == {J2}

    fw.call("add_job", J1)
    assert fw.call("reconcile", [J1]) == [J2]
    assert set(fw.call("jobs")) == {J1}
    blocked(topo.probe(topo.inet, "tcp", GW_UP, 8082))
    ok(topo.probe(topo.j1, "tcp", INET, 9090), f"inet {GW_UP}")


def test_teardown_leaves_nothing(topo, fw):
    fw.call("add_job", J1)
    fw.call("publish", J1, "tcp", "127.0.0.1", 8082, 80)
    fw.call("teardown")
    fw.call("teardown")
    assert fw.call("nft", "list ruleset") == ""
    assert topo.gw.sysctl(f"net/ipv4/conf/{Topology.BRIDGE}/route_localnet") == "0"
    assert fw.call("jobs") == {}


def test_a_drop_policy_elsewhere_wins_and_is_reported(topo, fw):
    fw.call("add_job", J1)
    assert fw.call("forward_drop_warning") is None
    fw.call("nft", "table ip filter {\nchain FORWARD {\ntype filter hook forward priority 0; policy drop;\n}\n}")
    warning = fw.call("forward_drop_warning")
    assert "ip filter FORWARD" in warning, warning
    blocked(topo.probe(topo.j1, "tcp", INET, 8080, timeout=1))  # our accept does not save it
