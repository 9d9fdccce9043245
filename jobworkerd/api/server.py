"""`jobworkerd serve`: the gRPC server (grpc.aio, mutual TLS only) around one JobManager.

TLS policy: client certificates are required and verified against the configured CA. grpcio refuses
TLS 1.0/1.1 itself; for TLS 1.2 we list the suites explicitly: ECDHE key exchange with AEAD ciphers
only (TLS 1.3 suites are all AEAD; grpcio cannot pin 1.3 only, see grpc/grpc#37305).
"""

import os

# grpc core reads this when its TLS stack initialises: set it before grpc is imported.
TLS12_CIPHER_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_CIPHER_SUITES

import asyncio  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

from .. import sdnotify  # noqa: E402
from ..config import Config, ConfigError, TLSConfig, load_config  # noqa: E402
from ..errors import JobWorkerError  # noqa: E402
from ..gen.jobworker.v1 import jobworker_pb2 as pb  # noqa: E402
from ..gen.jobworker.v1 import jobworker_pb2_grpc as pb_grpc  # noqa: E402
from ..journal import setup_logging  # noqa: E402
from ..metrics import DaemonMetrics  # noqa: E402
from ..worker import JobManager  # noqa: E402
from . import keepalive  # noqa: E402
from .service import JobWorkerService  # noqa: E402
from .status import ErrorInterceptor  # noqa: E402

log = logging.getLogger("jobworkerd")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JobWorker"].full_name  # jobworker.v1.JobWorker
# What server reflection lists (grpcurl list): the API, health, and reflection itself. Reflection
# is behind the same mutual TLS as every other call, and describes only the public proto.
REFLECTED_SERVICES = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
BLOCKING_CALL_THREADS = 64  # concurrent starts/stops in flight; streaming and waiting use none


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(f"tls.{what}: cannot read {path}: {exc.strerror}") from None

    return grpc.ssl_server_credentials(
        [(read(tls.key, "key"), read(tls.cert, "cert"))],
        root_certificates=read(tls.ca, "ca"),
        require_client_auth=True,
    )


async def run_server(config: Config, stop: asyncio.Event) -> None:
    manager = JobManager(config)
    metrics = DaemonMetrics(config, manager) if config.metrics.listen else None  # before open: counts "lost"
    manager.open()
    if metrics:
        metrics.opened()
    executor = ThreadPoolExecutor(BLOCKING_CALL_THREADS, thread_name_prefix="rpc")
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", 16 << 20),
            ("grpc.so_reuseport", 0),
            *keepalive.SERVER_OPTIONS,  # accepts Go's and Java's pings; reaps peers that vanish
        ],
    )
    pb_grpc.add_JobWorkerServicer_to_server(JobWorkerService(manager, config, executor), server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(REFLECTED_SERVICES, server)
    try:
        port = server.add_secure_port(config.listen, server_credentials(config.tls))
        metrics_url = metrics.serve() if metrics else ""
    except (RuntimeError, ConfigError) as exc:
        manager.close(grace=0)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"listen: cannot listen on {config.listen}: {exc}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{config.listen.rsplit(':', 1)[0]}:{port}"
    log.info("listening on %s (cgroup %s, run dir %s, state %s)", address, manager.backend.version, config.run_dir, config.state_dir)
    if metrics_url:
        log.info("metrics listening on %s", metrics_url)
    sdnotify.notify(f"READY=1\nSTATUS=listening on {address}")

    await stop.wait()
    log.info("shutting down: stopping running jobs (grace %.0fs)", config.stop_grace)
    sdnotify.notify("STOPPING=1")
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.get_running_loop().run_in_executor(None, manager.close)
    await server.stop(grace=1.0)
    if metrics:
        metrics.close()
    executor.shutdown(wait=False)
    log.info("stopped")


async def _set_health(servicer: object, name: str, status: int) -> None:
    result = servicer.set(name, status)  # type: ignore[attr-defined]
    if asyncio.iscoroutine(result):
        await result


async def _main(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_server(config, stop)


def raise_fd_limit() -> int:
    """Each running job holds a status pipe and each follower an open file: lift the soft fd limit
    (1024 by default) to the hard one (524288 under systemd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(config_path: str) -> int:
    setup_logging()  # the journal's native protocol under journald, plain text on stderr otherwise
    raise_fd_limit()
    if os.geteuid() != 0:
        print("jobworkerd: serve must run as root (it creates cgroups and namespaces)", file=sys.stderr)
        return 1
    try:
        config = load_config(config_path)
        asyncio.run(_main(config))
    except ConfigError as exc:
        print(f"jobworkerd: {exc}", file=sys.stderr)
        return 2
    except JobWorkerError as exc:
        print(f"jobworkerd: {exc.message}", file=sys.stderr)
        return 1
    return 0
