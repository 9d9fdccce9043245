"""jobworkerd.network.rules and .nftables without root: the script text, the parsing of listings, Firewall
against a fake Nft, and every script checked by libnftables itself with dry run (`nft --check`). Dry run
still sends the batch to the kernel (and aborts it), so it runs in a child in a network namespace of its
own (`unshare --net`, with a user namespace when not root), never against this machine's ruleset."""

from __future__ import annotations

import ctypes.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from jobworkerd.errors import FailedPrecondition, InternalError, InvalidArgument
from jobworkerd.network import nftables, rules
from jobworkerd.network.rules import (
    UNRESTRICTED, BridgeNet, Destination, EgressPolicy, Firewall, PortPublished, Published,
)

NET = BridgeNet("jwbr0", ipaddress.IPv4Network("10.88.0.0/24"))
J1, J2 = ipaddress.IPv4Address("10.88.0.11"), ipaddress.IPv4Address("10.88.0.12")
POLICY = EgressPolicy.parse(["192.0.2.0/24", "198.51.100.7:443/tcp", "203.0.113.0/28:5353/udp", "0.0.0.0/0:8080"],
                            dns=["192.0.2.53", "192.0.2.54"])
PUB = Published.of("tcp", "127.0.0.1", 8080, J1, 80)


def lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip()]


# --- values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, network, port, proto", [
    ("192.0.2.0/24", "192.0.2.0/24", None, None),
    ("192.0.2.7", "192.0.2.7/32", None, None),
    ("192.0.2.7:443", "192.0.2.7/32", 443, None),
    ("192.0.2.7/24:53/udp", "192.0.2.0/24", 53, "udp"),
    ("0.0.0.0/0:443/tcp", "0.0.0.0/0", 443, "tcp"),
])
def test_destination_parse(text, network, port, proto):
    assert Destination.parse(text) == Destination(ipaddress.IPv4Network(network), port, proto)


@pytest.mark.parametrize("text", ["", "example.org", "192.0.2.0/33", "192.0.2.1:0", "192.0.2.1:65536",
                                  "192.0.2.1:x", "192.0.2.1:53/sctp", "192.0.2.1:/tcp", "2001:db8::/32"])
def test_destination_parse_refuses(text):
    with pytest.raises(InvalidArgument):
        Destination.parse(text)


def test_values_are_checked_before_they_reach_a_script():
    for bad in ({"bridge": 'br0" accept'}, {"bridge": "a-much-too-long-name"}, {"port_prefix": "jw*"}):
        with pytest.raises(InvalidArgument):
            BridgeNet(**{"bridge": "jwbr0", "subnet": "10.88.0.0/24", **bad})
    with pytest.raises(InvalidArgument):
        rules.add_job_script("10.88.0.11; flush ruleset")
    with pytest.raises(InvalidArgument):
        Published.of("tcp", "localhost", 80, J1, 80)
    with pytest.raises(InvalidArgument):
        Published.of("icmp", "127.0.0.1", 80, J1, 80)


# --- script text -------------------------------------------------------------------------------------

OURS = re.compile(r"(add|flush|delete) (table|chain|rule|map|element) (inet|bridge) jobworkerd\b")


def all_scripts() -> list[str]:
    nets = [NET, BridgeNet("jwbr0", NET.subnet, allow_job_to_job=True, allow_host=True),
            BridgeNet("jwbr0", NET.subnet, host_dns=True, host_dhcp=True)]
    return [*(rules.setup_script(n) for n in nets), rules.add_job_script(J1, POLICY), rules.add_job_script(J2),
            rules.add_job_script(J2, EgressPolicy.parse([])), rules.remove_job_script(J1, [PUB]),
            rules.publish_script(PUB), rules.unpublish_script(PUB), rules.teardown_script()]


def test_every_command_is_about_our_tables_only():
    for script in all_scripts():
        for line in lines(script):
            assert OURS.match(line), line
            assert "ruleset" not in line


def test_setup_masquerades_the_subnet_leaving_by_another_interface():
    s = rules.setup_script(NET)
    assert 'add rule inet jobworkerd postrouting ip saddr 10.88.0.0/24 oifname != "jwbr0" masquerade' in s
    assert "type nat hook postrouting priority srcnat" in s


def test_setup_forward_chain_in_order():
    forward = [line.split(" forward ", 1)[1] for line in lines(rules.setup_script(NET))
               if line.startswith("add rule inet jobworkerd forward ")]
    assert forward == [
        "ct state established,related accept",
        'iifname "jwbr0" oifname "jwbr0" drop',
        'iifname "jwbr0" ip saddr vmap @job_egress',
        'iifname "jwbr0" meta l4proto tcp reject with tcp reset',
        'iifname "jwbr0" reject with icmpx type admin-prohibited',
        'oifname "jwbr0" ct status dnat accept',
        'oifname "jwbr0" drop',
    ]


def test_setup_isolates_bridge_ports_unless_job_to_job_is_allowed():
    rule = 'add rule bridge jobworkerd forward iifname "jwv*" oifname "jwv*" drop'
    assert rule in rules.setup_script(NET)
    opened = rules.setup_script(BridgeNet("jwbr0", NET.subnet, allow_job_to_job=True))
    assert rule not in opened
    assert 'add rule inet jobworkerd forward iifname "jwbr0" oifname "jwbr0" accept' in opened


def test_setup_input_shuts_the_host_unless_the_config_opens_it():
    def input_rules(net):
        return [line.split(" input ", 1)[1] for line in lines(rules.setup_script(net))
                if line.startswith("add rule inet jobworkerd input ")]

    closed = input_rules(NET)
    assert closed[-2:] == ['iifname "jwbr0" meta l4proto tcp reject with tcp reset',
                           'iifname "jwbr0" reject with icmpx type admin-prohibited']
    assert not any("dport" in r for r in closed)
    services = input_rules(BridgeNet("jwbr0", NET.subnet, host_dns=True, host_dhcp=True))
    assert 'iifname "jwbr0" udp dport 67 accept' in services
    assert 'iifname "jwbr0" meta l4proto { tcp, udp } th dport 53 accept' in services
    assert input_rules(BridgeNet("jwbr0", NET.subnet, allow_host=True)) == ['iifname "jwbr0" accept']


def test_setup_publishes_loopback_in_output_only_and_guards_127():
    s = rules.setup_script(NET)
    assert 'add rule inet jobworkerd guard iifname "jwbr0" ip daddr 127.0.0.0/8 drop' in s
    assert "type filter hook prerouting priority raw" in s
    assert ("add rule inet jobworkerd prerouting ip daddr != 127.0.0.0/8 meta l4proto { tcp, udp } "
            "dnat ip to meta l4proto . ip daddr . th dport map @published") in s
    assert ("add rule inet jobworkerd output meta l4proto { tcp, udp } "
            "dnat ip to meta l4proto . ip daddr . th dport map @published") in s
    assert 'add rule inet jobworkerd postrouting ip saddr 127.0.0.0/8 oifname "jwbr0" masquerade' in s


def test_setup_keeps_job_state_and_replaces_base_chains():
    s = lines(rules.setup_script(NET))
    assert not any(line.startswith(("delete table inet", "flush table", "delete map", "flush map")) for line in s)
    assert "delete chain inet jobworkerd forward" in s
    assert not any(re.match(r"(flush|delete) chain inet jobworkerd job_", line) for line in s)


def test_add_job_restricted():
    assert lines(rules.add_job_script(J1, POLICY)) == [
        "add chain inet jobworkerd job_10_88_0_11",
        "flush chain inet jobworkerd job_10_88_0_11",
        "add rule inet jobworkerd job_10_88_0_11 ip daddr { 192.0.2.53, 192.0.2.54 } meta l4proto { tcp, udp } th dport 53 accept",
        "add rule inet jobworkerd job_10_88_0_11 ip daddr 192.0.2.0/24 accept",
        "add rule inet jobworkerd job_10_88_0_11 ip daddr 198.51.100.7/32 tcp dport 443 accept",
        "add rule inet jobworkerd job_10_88_0_11 ip daddr 203.0.113.0/28 udp dport 5353 accept",
        "add rule inet jobworkerd job_10_88_0_11 ip daddr 0.0.0.0/0 meta l4proto { tcp, udp } th dport 8080 accept",
        "add rule inet jobworkerd job_10_88_0_11 meta l4proto tcp reject with tcp reset",
        "add rule inet jobworkerd job_10_88_0_11 reject with icmpx type admin-prohibited",
        "add element inet jobworkerd job_egress { 10.88.0.11 : jump job_10_88_0_11 }",
    ]


def test_add_job_unrestricted_and_dns_only():
    assert lines(rules.add_job_script(J2, UNRESTRICTED))[2:] == [
        "add rule inet jobworkerd job_10_88_0_12 accept",
        "add element inet jobworkerd job_egress { 10.88.0.12 : jump job_10_88_0_12 }",
    ]
    dns_only = lines(rules.add_job_script(J2, EgressPolicy.parse([], dns=["192.0.2.53"])))[2:-1]
    assert [r.split(" job_10_88_0_12 ", 1)[1] for r in dns_only] == [
        "ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept",
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx type admin-prohibited",
    ]


def test_removals_succeed_when_absent():
    """Each removal first adds what it removes, in the same transaction, so it needs no listing first."""
    assert lines(rules.remove_job_script(J1, [PUB])) == [
        "add chain inet jobworkerd job_10_88_0_11",
        "add element inet jobworkerd job_egress { 10.88.0.11 : jump job_10_88_0_11 }",
        "delete element inet jobworkerd job_egress { 10.88.0.11 }",
        "flush chain inet jobworkerd job_10_88_0_11",
        "delete chain inet jobworkerd job_10_88_0_11",
        "add element inet jobworkerd published { tcp . 127.0.0.1 . 8080 : 10.88.0.11 . 80 }",
        "delete element inet jobworkerd published { tcp . 127.0.0.1 . 8080 }",
    ]
    assert lines(rules.teardown_script()) == [
        "add table inet jobworkerd", "delete table inet jobworkerd",
        "add table bridge jobworkerd", "delete table bridge jobworkerd",
    ]


def test_publish_script():
    assert rules.publish_script(PUB) == \
        "add element inet jobworkerd published { tcp . 127.0.0.1 . 8080 : 10.88.0.11 . 80 }\n"


# --- listings ----------------------------------------------------------------------------------------


def listing(egress=(J1,), chains=(J1,), published=(PUB,)) -> list[dict]:
    """What `list table inet jobworkerd` gives in JSON (libnftables 1.0.6; an empty map has no "elem"),
    rules left out."""
    t = {"family": "inet", "table": "jobworkerd"}
    egress_map = {**t, "name": "job_egress", "type": "ipv4_addr", "map": "verdict"}
    published_map = {**t, "name": "published", "type": ["inet_proto", "ipv4_addr", "inet_service"],
                     "map": "ipv4_addr . inet_service"}
    if egress:
        egress_map["elem"] = [[str(a), {"jump": {"target": rules.job_chain(a)}}] for a in egress]
    if published:
        published_map["elem"] = [[{"concat": [p.proto, str(p.host_addr), p.host_port]},
                                  {"concat": [str(p.job_addr), p.job_port]}] for p in published]
    return [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "jobworkerd", "handle": 1}},
        {"map": egress_map},
        {"map": published_map},
        *({"chain": {**t, "name": n, "type": "filter", "hook": n, "prio": 0, "policy": "accept"}}
          for n in ("forward", "input")),
        *({"chain": {**t, "name": rules.job_chain(a)}} for a in chains),
    ]


def test_parse_jobs():
    pub2 = Published.of("udp", "192.0.2.1", 5300, J2, 53)
    jobs = rules.parse_jobs(listing(published=(PUB, pub2)))
    assert jobs == {J1: rules.JobRules(J1, True, (PUB,)), J2: rules.JobRules(J2, False, (pub2,))}
    assert rules.parse_jobs(listing(egress=(), chains=(J2,), published=())) == {J2: rules.JobRules(J2, True)}
    assert rules.parse_jobs(listing(egress=(), chains=(), published=())) == {}


def test_parse_published_takes_numeric_protocols():
    raw = listing(published=(PUB,))
    raw[3]["map"]["elem"][0][0]["concat"][0] = 6
    assert rules.parse_published(raw) == [PUB]


def test_forward_drop_warning():
    ours = listing()
    assert rules.forward_drop_warning(ours) is None
    docker = {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter",
                        "hook": "forward", "prio": 0, "policy": "drop"}}
    other_hook = {"chain": {"family": "inet", "table": "fw", "name": "in", "hook": "input", "policy": "drop"}}
    warning = rules.forward_drop_warning([*ours, docker, other_hook])
    assert "ip filter FORWARD" in warning and "fw" not in warning and "DOCKER-USER" in warning


# --- Firewall against a fake Nft ---------------------------------------------------------------------


class FakeNft:
    """Records scripts; serves listings from `listings` (by what is listed)."""

    def __init__(self, listings=None):
        self.scripts: list[str] = []
        self.listings = listings if listings is not None else {}
        self.fail: str | None = None

    def run(self, script, *, json_output=False):
        self.scripts.append(script)
        if self.fail and self.fail in script:
            raise nftables.NftError("Error: Could not process rule: File exists")
        return ""

    def list_json(self, what):
        return self.listings.get(what, [])


def firewall(tmp_path, listings=None, *, bridge=True):
    if bridge:
        (tmp_path / "jwbr0").mkdir()
    nft = FakeNft(listings)
    fw = Firewall(nft, sysctl_conf=tmp_path)
    fw.setup("jwbr0", "10.88.0.0/24")
    return fw, nft


def test_firewall_setup_add_remove(tmp_path):
    table = listing()
    fw, nft = firewall(tmp_path, {"map inet jobworkerd published": table})
    fw.add_job("10.88.0.11", POLICY)
    fw.remove_job("10.88.0.11")
    assert nft.scripts == [rules.setup_script(NET), rules.add_job_script(J1, POLICY),
                           rules.remove_job_script(J1, [PUB])]


def test_firewall_publish_conflicts(tmp_path):
    fw, nft = firewall(tmp_path, {"map inet jobworkerd published": listing()})
    assert fw.published("tcp", "127.0.0.1", 8080) == PUB
    assert fw.published("udp", "127.0.0.1", 8080) is None
    with pytest.raises(PortPublished, match="127.0.0.1:8080 is already published"):
        fw.publish(J2, "tcp", "127.0.0.1", 8080, 80)
    assert isinstance(PortPublished("x"), FailedPrecondition)
    fw.publish(J1, "tcp", "127.0.0.1", 8080, 80)  # the same again
    fw.publish(J2, "tcp", "127.0.0.1", 8081, 80)
    assert nft.scripts[1:] == [rules.publish_script(PUB), rules.publish_script(Published.of("tcp", "127.0.0.1", 8081, J2, 80))]


def test_firewall_publish_race_is_reported_as_a_conflict(tmp_path):
    fw, nft = firewall(tmp_path)
    nft.fail = "published {"

    def taken_meanwhile(what):
        if len(nft.scripts) > 1:  # after the failed add
            return listing(published=(Published.of("tcp", "192.0.2.1", 8080, J2, 80),))
        return []
    nft.list_json = taken_meanwhile
    with pytest.raises(PortPublished):
        fw.publish(J1, "tcp", "192.0.2.1", 8080, 80)


def test_firewall_loopback_publication_sets_route_localnet(tmp_path):
    fw, _ = firewall(tmp_path)
    fw.publish(J1, "tcp", "192.0.2.1", 8080, 80)
    assert not (tmp_path / "jwbr0" / "route_localnet").exists()
    fw.publish(J1, "tcp", "127.0.0.1", 8080, 80)
    assert (tmp_path / "jwbr0" / "route_localnet").read_text() == "1\n"
    fw.teardown()
    assert (tmp_path / "jwbr0" / "route_localnet").read_text() == "0\n"


def test_firewall_loopback_publication_needs_the_bridge(tmp_path):
    fw, _ = firewall(tmp_path, bridge=False)
    with pytest.raises(FailedPrecondition, match="no bridge jwbr0"):
        fw.publish(J1, "tcp", "127.0.0.1", 8080, 80)
    fw.teardown()  # nothing to reset


def test_firewall_reconcile_removes_the_dead_in_one_transaction(tmp_path):
    table = listing(egress=(J1, J2), chains=(J1, J2), published=(PUB,))
    fw, nft = firewall(tmp_path, {"tables inet": [{"table": {"family": "inet", "name": "jobworkerd"}}],
                                  "table inet jobworkerd": table})
    assert set(fw.jobs()) == {J1, J2}
    assert fw.reconcile(["10.88.0.12"]) == [J1]
    assert nft.scripts[-1] == rules.remove_job_script(J1, [PUB])
    assert fw.reconcile([J1, J2]) == [] and len(nft.scripts) == 2


def test_firewall_jobs_without_a_table(tmp_path):
    fw, _ = firewall(tmp_path, {"tables inet": [{"table": {"family": "inet", "name": "filter"}}]})
    assert fw.jobs() == {}
    assert fw.reconcile([]) == []


# --- the binding ------------------------------------------------------------------------------------


def test_missing_library_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(nftables, "_lib", None)
    monkeypatch.setattr(nftables, "LIBRARY", "libnftables-not-here.so.1")
    with pytest.raises(nftables.NftUnavailable, match="libnftables1") as e:
        nftables.Nft()
    assert isinstance(e.value, InternalError)


HAVE_LIB = ctypes.util.find_library("nftables") is not None
needs_lib = pytest.mark.skipif(not HAVE_LIB, reason="libnftables1 is not installed")

CHECKER = r"""
import json, sys
from jobworkerd.network.nftables import Nft, NftError
out = []
with Nft(dry_run=True) as nft:
    for script in json.load(sys.stdin):
        try:
            nft.run(script)
            out.append(None)
        except NftError as e:
            out.append(str(e))
with Nft() as nft:
    out.append(nft.run("list ruleset"))
print(json.dumps(out))
"""


def dry_run(scripts: list[str]) -> list[str | None]:
    """Each script's libnftables error (None: valid), checked in a network namespace of a child's own;
    the last item is that namespace's ruleset afterwards."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare (util-linux)")
    cmd = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--net"]
    p = subprocess.run([*cmd, sys.executable, "-c", CHECKER], input=json.dumps(scripts),
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "unshare" in p.stderr:
        pytest.skip(f"cannot make a network namespace here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@needs_lib
def test_libnftables_accepts_every_script():
    """Each after the base setup, in one batch, as the daemon would apply them in turn (a dry run changes
    nothing, so the table exists for a script only within its own batch)."""
    setup = rules.setup_script(NET)
    sequence = [setup, rules.add_job_script(J1, POLICY), rules.add_job_script(J2),
                rules.add_job_script(J1, EgressPolicy.parse([])), rules.publish_script(PUB),
                rules.publish_script(Published.of("udp", "192.0.2.1", 5300, J2, 53)),
                rules.unpublish_script(PUB), rules.remove_job_script(J1, [PUB]), rules.remove_job_script(J2),
                setup, rules.teardown_script()]
    scripts = [*all_scripts()[:3], rules.teardown_script(), "".join(sequence),
               setup + rules.remove_job_script(J1, [PUB]) + rules.remove_job_script(J1, [PUB])]
    *errors, ruleset = dry_run(scripts)
    assert errors == [None] * len(scripts)
    assert ruleset == ""  # nothing was applied


@needs_lib
def test_libnftables_refuses_what_it_should():
    setup = rules.setup_script(NET)
    taken = setup + rules.publish_script(PUB) + rules.publish_script(Published.of("tcp", "127.0.0.1", 8080, J2, 80))
    errors = dry_run([setup + "add rule inet jobworkerd nochain accept\n", taken,
                      rules.add_job_script(J1)])  # before setup: no table
    assert "No such file or directory" in errors[0] and "(script: add table inet jobworkerd)" in errors[0]
    assert "File exists" in errors[1]
    assert "No such file or directory" in errors[2]
