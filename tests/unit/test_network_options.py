"""Network requests: --allow and --publish parsing, what each role may ask for (jobworkerd.network.attach.decide),
the DNS servers taken from the host, and the persistent address allocator. The modes themselves run for real in
tests/integration/test_network.py."""

from __future__ import annotations

import threading

import pytest

from jobworkerd.config import ConfigError, config_from_dict
from jobworkerd.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from jobworkerd.network.attach import decide, host_dns_servers
from jobworkerd.network.options import Allow, NetworkRequest, Publish, parse_allow, parse_publish
from jobworkerd.worker.store import JobStore

NET = config_from_dict({}).network


def test_allow_and_publish_parse_and_refuse_with_the_text_named():
    assert parse_allow("10.0.0.0/8") == Allow("10.0.0.0/8")
    assert parse_allow("192.0.2.7:443/tcp") == Allow("192.0.2.7/32", 443, "tcp")
    assert parse_allow("0.0.0.0/0:53") == Allow("0.0.0.0/0", 53, "")
    assert parse_publish("8080:80") == Publish(8080, 80, "tcp", "")
    assert parse_publish("192.0.2.1:5353:53/udp") == Publish(5353, 53, "udp", "192.0.2.1")
    for bad in ("example.com", "10.0.0.0/8:0", "10.0.0.0/8:70000", "1.2.3.4/tcp", "::1"):
        with pytest.raises(InvalidArgument, match="--allow"):
            parse_allow(bad)
    for bad in ("80", "a:80", "1:2:3:4", "8080:80/sctp", "host:8080:80"):
        with pytest.raises(InvalidArgument, match="--publish"):
            parse_publish(bad)


def test_each_role_gets_its_default_mode_and_only_its_allowed_ones():
    assert decide(NetworkRequest(), False, NET).mode == "none"
    assert decide(NetworkRequest(mode="bridge"), False, NET).mode == "bridge"
    assert decide(NetworkRequest(mode="host"), True, NET).mode == "host"
    with pytest.raises(PermissionDenied, match="network mode 'host' is not allowed to user jobs"):
        decide(NetworkRequest(mode="host"), False, NET)
    with pytest.raises(InvalidArgument, match="need --net bridge"):
        decide(NetworkRequest(allow=(Allow("10.0.0.0/8"),)), True, NET)
    with pytest.raises(InvalidArgument, match="one of none, bridge, host"):
        decide(NetworkRequest(mode="macvlan"), True, NET)


def test_users_may_allow_and_publish_only_within_the_config():
    config = config_from_dict({"network": {"user_allow": ["192.0.2.0/24"], "user_publish_ports": "30000-30010"}}).network
    assert decide(NetworkRequest("bridge", (Allow("192.0.2.0/25", 443, "tcp"),), (Publish(30005, 80),)), False, config)
    with pytest.raises(PermissionDenied, match="within 192.0.2.0/24"):
        decide(NetworkRequest("bridge", (Allow("10.0.0.0/8"),)), False, config)
    with pytest.raises(PermissionDenied, match="host ports 30000-30010"):
        decide(NetworkRequest("bridge", publish=(Publish(80, 80),)), False, config)
    assert decide(NetworkRequest("bridge", (Allow("10.0.0.0/8"),), (Publish(80, 80),)), True, config)  # admins


def test_the_config_keeps_the_hosts_network_for_admins_and_names_bad_values():
    with pytest.raises(ConfigError, match="admins only"):
        config_from_dict({"network": {"user": {"allowed": ["none", "host"]}}})
    with pytest.raises(ConfigError, match="must be one of"):
        config_from_dict({"network": {"user": {"default": "bridge", "allowed": ["none"]}}})
    with pytest.raises(ConfigError, match="jobs' veths"):
        config_from_dict({"network": {"bridge": "jwbr0"}})
    with pytest.raises(ConfigError, match="prefix from /8 to /28"):
        config_from_dict({"network": {"subnet": "10.0.0.0/30"}})
    with pytest.raises(ConfigError, match="not an IPv4 network"):
        config_from_dict({"network": {"egress": ["nowhere"]}})


def test_dns_servers_come_from_the_host_and_resolveds_upstream_behind_its_stub(tmp_path):
    plain = tmp_path / "resolv.conf"
    plain.write_text("# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example\n")
    assert host_dns_servers(str(plain), str(tmp_path / "absent")) == ["192.0.2.53"]
    stub, upstream = tmp_path / "stub.conf", tmp_path / "upstream.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream.write_text("nameserver 198.51.100.1\nnameserver 198.51.100.2\n")
    assert host_dns_servers(str(stub), str(upstream)) == ["198.51.100.1", "198.51.100.2"]
    assert host_dns_servers(str(stub), str(tmp_path / "absent")) == []  # a loopback server is useless in a job


def test_addresses_are_never_given_twice_and_survive_a_reopen(tmp_path):
    store = JobStore(str(tmp_path))
    taken: dict[str, int] = {}
    lock = threading.Lock()

    def take(i: int) -> None:
        address = store.take_address(f"job{i:02d}", 100, 199)
        with lock:
            taken[f"job{i:02d}"] = address

    threads = [threading.Thread(target=take, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken.values()) == list(range(100, 150))  # 50 at once: 50 addresses, the lowest ones
    assert store.take_address("job07", 100, 199) == taken["job07"]  # asking again: the same one
    store.release_address("job10")
    reopened = JobStore(str(tmp_path))  # a restarted daemon: the others are still held
    assert reopened.addresses() == {k: v for k, v in taken.items() if k != "job10"}
    assert reopened.take_address("new", 100, 199) == taken["job10"]  # the freed one, and no live job's
    small = JobStore(str(tmp_path / "small"))
    small.take_address("a", 1, 1)
    with pytest.raises(ResourceExhausted, match="network.subnet"):
        small.take_address("b", 1, 1)
