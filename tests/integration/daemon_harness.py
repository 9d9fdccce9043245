"""The real jobworkerd as a subprocess on 127.0.0.1 with real mutual TLS: its own CA, config, state and
run directories, and cgroup subtree beneath this process's cgroups. Used by the integration tests
(through conftest.py's fixtures), by tests that need a daemon of their own, and by bench/.

A plain module with a unique name, not conftest.py: two conftest.py files (here and in vm/) cannot
both be imported as `conftest`.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()


def run_ca(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "jobworkerd", "ca", *args], check=True, capture_output=True)


class Daemon:
    # A session of its own, as under systemd: a job that escaped its own session must not reach the tests.
    new_session = True

    def __init__(self, workdir: Path, config: dict | None = None, run_dir: Path | None = None,
                 subtree_prefix: str = "jobworkerd-it", netns: str = ""):
        self.dir = workdir
        # Run the daemon and jobctl in this network namespace (made by the test, /run/netns/NAME): nsenter
        # keeps the mount namespace, so /sys/fs/cgroup stays the host's (`ip netns exec` would remount /sys).
        self.enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_dir = workdir / "ca"
        self.ca = str(self.ca_dir / "ca.crt")
        self.log = workdir / "daemon.log"
        self.subtree = f"{subtree_prefix}-{os.getpid()}-{next(_counter)}"
        self.run_dir = run_dir or workdir / "run"
        self._certs: dict[tuple[str, str], tuple[str, str]] = {}
        self.proc: subprocess.Popen | None = None
        self._channels: list = []
        self.addr = ""
        self.metrics_url = ""  # http://127.0.0.1:PORT/metrics (https:// off loopback), "" with metrics off
        if not (self.ca_dir / "ca.crt").exists():
            run_ca("init", "--dir", str(self.ca_dir))
            run_ca("issue", "--dir", str(self.ca_dir), "--server", "--host", "127.0.0.1", "--host", "localhost",
                   "--out", str(workdir / "server"))
        settings = {
            "listen": "127.0.0.1:0",
            "tls": {"ca": self.ca, "cert": str(workdir / "server.crt"), "key": str(workdir / "server.key")},
            "state_dir": str(workdir / "state"),
            "run_dir": str(self.run_dir),
            "cgroup": {"subtree": self.subtree},
            "stop_grace": "5s",
            # Many daemons run at once: each one's metrics endpoint on a port of its own (see metrics_url)
            "metrics": {"listen": "127.0.0.1:0"},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        self.metrics_on = bool((settings.get("metrics") or {}).get("listen"))
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(settings))

    def start(self, timeout: float = 20.0) -> "Daemon":
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/",
                                         start_new_session=self.new_session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            match = re.search(r"(?<!metrics )listening on (\S+)", text)
            metrics = re.search(r"metrics listening on (\S+)", text)  # logged right after the line above
            if match and (metrics or not self.metrics_on):
                self.addr = match.group(1)
                self.metrics_url = metrics.group(1) if metrics else ""
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"daemon did not listen within {timeout}s:\n{self.log.read_text()}")

    def argv(self) -> list[str]:
        return [*self.enter, sys.executable, "-m", "jobworkerd", "serve", "--config", str(self.config_path)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int:
        self.close_channels()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL, as a crash would (jobs keep running until the next start reconciles them)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cert(self, name: str, role: str) -> tuple[str, str]:
        key = (name, role)
        if key not in self._certs:
            prefix = self.dir / "clients" / f"{name}-{role}"
            run_ca("issue", "--dir", str(self.ca_dir), "--name", name, "--role", role, "--out", str(prefix))
            self._certs[key] = (f"{prefix}.crt", f"{prefix}.key")
        return self._certs[key]

    def env(self, name: str = "admin", role: str = "admin") -> dict[str, str]:
        crt, key = self.cert(name, role)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCTL_")}
        env.update(JOBCTL_ADDR=self.addr, JOBCTL_CA=self.ca, JOBCTL_CERT=crt, JOBCTL_KEY=key, HOME=str(self.dir))
        return env

    def jobctl(self, *args: str, name: str = "admin", role: str = "admin", input: bytes | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.enter, sys.executable, "-m", "jobctl", *args], env=self.env(name, role), input=input,
            capture_output=True, timeout=timeout,
        )

    def stub(self, name: str = "admin", role: str = "admin", cert: tuple[str, str] | None = None):
        """A JobWorker client stub over real mTLS for this identity (or an explicit cert/key pair)."""
        import grpc

        from jobworkerd.gen.jobworker.v1 import jobworker_pb2_grpc

        crt, key = cert or self.cert(name, role)
        credentials = grpc.ssl_channel_credentials(
            Path(self.ca).read_bytes(), Path(key).read_bytes(), Path(crt).read_bytes()
        )
        channel = grpc.secure_channel(self.addr, credentials, options=[("grpc.max_receive_message_length", 8 << 20)])
        self._channels.append(channel)
        return jobworker_pb2_grpc.JobWorkerStub(channel)

    def close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def cgroup_dirs(self) -> list[str]:
        """Job cgroup directories of this daemon that exist now, in every hierarchy."""
        found = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                base = Path("/sys/fs/cgroup") / (controller or "unified") / path.lstrip("/") / self.subtree
                if base.is_dir():
                    found += [str(p) for p in base.rglob("*") if p.is_dir()] + [str(base)]
        return found


def output_tmpfs_mounts(under: str | Path) -> list[str]:
    """Mount points of daemons' output tmpfs (rundir.FS_SOURCE) at or below `under`, deepest first."""
    prefix = os.path.realpath(under)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        source = fields[fields.index("-") + 2]
        if source == "jobworkerd-output" and (point == prefix or point.startswith(prefix + "/")):
            found.append(point)
    return sorted(set(found), key=len, reverse=True)


def unmount_output_tmpfs(under: str | Path) -> None:
    """A daemon's output tmpfs outlives the daemon by design (output survives restarts): a throwaway run
    directory's goes when its test is done."""
    for point in output_tmpfs_mounts(under):
        subprocess.run(["umount", point], check=False)


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (the daemon's must return to baseline after clients leave)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")
