"""jobworkerd.metrics.endpoint: a real HTTP(S) server on 127.0.0.1, real sockets and TLS, a real registry."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from jobworkerd import ca
from jobworkerd.config import ConfigError, MetricsConfig, TLSConfig
from jobworkerd.metrics import endpoint as endpoint_module
from jobworkerd.metrics.endpoint import MAX_CONNECTIONS, MetricsEndpoint


@pytest.fixture
def registry():
    registry = CollectorRegistry()
    Counter("probe_requests", "A counter to find in the scrape.", registry=registry).inc(3)
    return registry


@pytest.fixture
def pki(tmp_path) -> dict[str, str]:
    ca.init_ca(tmp_path / "ca")
    ca.issue_server(tmp_path / "ca", ["127.0.0.1"], tmp_path / "server")
    ca.issue_client(tmp_path / "ca", "alice", "user", tmp_path / "alice")
    return {"ca": str(tmp_path / "ca" / "ca.crt"), "cert": str(tmp_path / "server.crt"),
            "key": str(tmp_path / "server.key"), "client": str(tmp_path / "alice.crt"),
            "client_key": str(tmp_path / "alice.key")}


@pytest.fixture
def serving():
    started: list[MetricsEndpoint] = []

    def serve(listen: str, registry: CollectorRegistry, tls: TLSConfig | None = None) -> str:
        endpoint = MetricsEndpoint(MetricsConfig(listen=listen), tls or TLSConfig(), registry)
        url = endpoint.start()
        started.append(endpoint)
        return url

    yield serve
    for endpoint in started:
        endpoint.close()


def probe_value(url: str, context: ssl.SSLContext | None = None) -> float:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "probe_requests_total":
                return sample.value
    raise AssertionError(f"probe_requests_total not in the scrape:\n{text}")


def client_context(pki: dict[str, str], with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if with_cert:
        context.load_cert_chain(pki["client"], pki["client_key"])
    return context


def test_loopback_is_plain_http_on_the_port_bound(serving, registry):
    url = serving("127.0.0.1:0", registry)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/metrics")
    assert probe_value(url) == 3


def test_localhost_binds_the_ipv4_loopback_address(serving, registry):
    url = serving("localhost:0", registry)
    assert url.startswith("http://127.0.0.1:")
    assert probe_value(url) == 3


def test_a_port_in_use_is_a_config_error_naming_the_key(serving, registry):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            serving(f"127.0.0.1:{port}", registry)
    assert str(info.value) == f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_idle_connections_do_not_stall_scrapes_and_are_bounded(serving, registry, monkeypatch):
    monkeypatch.setattr(endpoint_module, "REQUEST_TIMEOUT", 30.0)
    url = serving("127.0.0.1:0", registry)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        assert probe_value(url) == 3  # one slot left: a scrape still gets through
        idle.append(socket.create_connection(("127.0.0.1", port)))
        # every slot is held now: one connection more is closed at once, without an answer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert extra.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back as the idle connections' threads see them closed
        try:
            assert probe_value(url) == 3
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise


def test_an_idle_client_times_out(serving, registry, monkeypatch):
    monkeypatch.setattr(endpoint_module, "REQUEST_TIMEOUT", 0.5)
    url = serving("127.0.0.1:0", registry)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, not by us
        assert time.monotonic() - started < 5


def test_tls_requires_a_client_certificate_from_the_ca(serving, registry, pki, tmp_path):
    tls = TLSConfig(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    # the TLS decision belongs to the address: 0.0.0.0 is not loopback (the test connects over 127.0.0.1)
    url = serving("0.0.0.0:0", registry, tls).replace("0.0.0.0", "127.0.0.1")
    assert url.startswith("https://127.0.0.1:")
    assert probe_value(url, client_context(pki)) == 3
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        probe_value(url, client_context(pki, with_cert=False))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        probe_value(url.replace("https://", "http://"))
    ca.init_ca(tmp_path / "other")
    ca.issue_client(tmp_path / "other", "mallory", "admin", tmp_path / "mallory")
    foreign = client_context(pki, with_cert=False)
    foreign.load_cert_chain(str(tmp_path / "mallory.crt"), str(tmp_path / "mallory.key"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        probe_value(url, foreign)
    old = client_context(pki)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers("AES256-GCM-SHA384:AES128-SHA256")  # TLS 1.2 without ECDHE
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        probe_value(url, old)
    modern = client_context(pki)
    modern.minimum_version = modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert probe_value(url, modern) == 3  # TLS 1.2 with ECDHE and AES-GCM


def test_an_idle_tls_client_does_not_stall_other_scrapes(serving, registry, pki):
    tls = TLSConfig(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    url = serving("0.0.0.0:0", registry, tls).replace("0.0.0.0", "127.0.0.1")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)):  # connects, never starts its handshake
        assert probe_value(url, client_context(pki)) == 3


@pytest.mark.parametrize("broken", ["ca", "cert", "key"])
def test_unusable_tls_files_are_a_config_error_naming_the_key(serving, registry, pki, tmp_path, broken):
    files = {"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]}
    files[broken] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as info:
        serving("0.0.0.0:0", registry, TLSConfig(**files))
    message = str(info.value)
    assert "metrics.listen '0.0.0.0:0' is not loopback, so it is served with TLS" in message
    assert f"tls.{'cert' if broken == 'key' else broken}: cannot load" in message
    assert str(tmp_path / "missing.pem") in message


def test_close_releases_the_port(registry):
    endpoint = MetricsEndpoint(MetricsConfig(listen="127.0.0.1:0"), TLSConfig(), registry)
    url = endpoint.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    endpoint.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    again = MetricsEndpoint(MetricsConfig(listen=f"127.0.0.1:{port}"), TLSConfig(), registry)
    try:
        assert probe_value(again.start()) == 3
    finally:
        again.close()

