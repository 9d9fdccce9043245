"""The metrics endpoint: prometheus-client's WSGI app in a small threading HTTP server.

Plain HTTP on a loopback address (as node_exporter's default). Any other address is served with TLS, with the
daemon's own certificate and key (`tls.cert`, `tls.key`), and requires a client certificate that chains to
`tls.ca`, the same CA as the gRPC API's clients (any role may scrape). TLS 1.2 only with ECDHE + AEAD suites,
as on the gRPC port; TLS 1.3 suites are all AEAD.

prometheus-client's own `start_http_server` does the TLS handshake in its accepting thread, so one client
that connects and sends nothing stalls every scrape; here each connection gets its own thread (at most
MAX_CONNECTIONS at once, more are closed), does its handshake there, and has REQUEST_TIMEOUT to finish.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import CollectorRegistry

from ..config import ConfigError, MetricsConfig, TLSConfig

log = logging.getLogger("jobworkerd.metrics")

MAX_CONNECTIONS = 16
REQUEST_TIMEOUT = 10.0  # seconds for a connection's handshake, request and response
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingWSGIServer):
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, tls: ssl.SSLContext | None):
        self.address_family = family
        self._tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (getfqdn): not needed, and slow without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_TIMEOUT)
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        conn = self._tls.wrap_socket(request, server_side=True)  # the handshake, in this connection's thread
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that failed the TLS handshake, timed out or went away: nothing the daemon must act on.
        log.debug("metrics: connection from %s failed", client_address, exc_info=True)


def tls_context(tls: TLSConfig, listen: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.verify_mode = ssl.CERT_REQUIRED
    for key, load in (("ca", lambda: context.load_verify_locations(cafile=tls.ca)),
                      ("cert", lambda: context.load_cert_chain(tls.cert, tls.key))):
        try:
            load()
        except (OSError, ssl.SSLError) as exc:
            what = tls.ca if key == "ca" else f"{tls.cert} with the key {tls.key}"
            raise ConfigError(f"metrics.listen {listen!r} is not loopback, so it is served with TLS: tls.{key}: "
                              f"cannot load {what}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


class MetricsEndpoint:
    """Serves `registry` at every path (Prometheus scrapes /metrics) until close()."""

    def __init__(self, config: MetricsConfig, tls: TLSConfig, registry: CollectorRegistry):
        self.config = config
        self._tls = tls
        self._registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> str:
        """Bind and serve; returns the URL (with the port bound, for port 0). ConfigError if it cannot."""
        host, port = self.config.host, self.config.port
        host = "127.0.0.1" if host == "localhost" else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        context = tls_context(self._tls, self.config.listen) if self.config.tls else None
        try:
            server = _Server((host, port), family, context)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {self.config.listen}: {exc.strerror or exc}") from None
        server.set_app(make_wsgi_app(self._registry))
        self._server = server
        self._thread = threading.Thread(target=self._accept_loop, args=(server,), name="metrics-http", daemon=True)
        self._thread.start()
        bound = server.server_address[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"{'https' if context else 'http'}://{shown}:{bound}/metrics"

    def _accept_loop(self, server: _Server) -> None:
        # Not serve_forever: it polls every 0.5 s to notice a shutdown. Here close() shuts the listening
        # socket down, which wakes a blocked accept() at once (EINVAL), and nothing runs in between.
        while not self._closing:
            try:
                request, client = server.get_request()
            except OSError as exc:
                if not self._closing:
                    log.warning("metrics: accept failed: %s", exc.strerror or exc)
                    time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            try:
                server.process_request(request, client)
            except Exception:
                server.handle_error(request, client)
                server.shutdown_request(request)

    def close(self) -> None:
        if self._server is None:
            return
        self._closing = True
        try:
            self._server.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(5)
        self._server.server_close()
        self._server = None
