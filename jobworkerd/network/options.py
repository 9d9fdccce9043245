"""What a client asks of a job's network (StartJobRequest.network), as the job's record keeps it, and the
parsing of `--allow` (as the firewall's rules parse it) and `--publish`. Plain values: the API and the
worker library import this."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import InvalidArgument
from .rules import Destination  # no library is loaded by this: libnftables only when a Firewall first runs

MODES = ("none", "bridge", "host")
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Allow:
    """One egress destination: a network, and optionally one port of one protocol (port 0: any)."""

    network: str
    port: int = 0
    protocol: str = ""  # "tcp", "udp", or "" for both (with a port) / any (without)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.network}{port}{'/' + self.protocol if self.protocol else ''}"


@dataclass(frozen=True)
class Publish:
    """A host port forwarded (DNAT) to a port of the job."""

    host_port: int
    job_port: int
    protocol: str = "tcp"
    host_address: str = ""  # "": the config's default (127.0.0.1)

    def __str__(self) -> str:
        host = f"{self.host_address}:" if self.host_address else ""
        return f"{host}{self.host_port}:{self.job_port}/{self.protocol}"


@dataclass(frozen=True)
class NetworkRequest:
    mode: str = ""  # "": the role's default
    allow: tuple[Allow, ...] = ()  # empty: the config's default policy
    publish: tuple[Publish, ...] = ()
    address: str = ""  # the job's address on the bridge, filled in by the daemon (bridge mode)
    link: str = ""  # the id its veth is named by (jw<link>), when it came from the pool; else the job's id

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkRequest":
        return cls(
            mode=data.get("mode", ""),
            allow=tuple(Allow(**a) for a in data.get("allow", ())),
            publish=tuple(Publish(**p) for p in data.get("publish", ())),
            address=data.get("address", ""),
            link=data.get("link", ""),
        )


def _port(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(f"{what} {text!r} is not a port from 1 to 65535")
    return int(text)


def _protocol(text: str, what: str) -> str:
    if text not in PROTOCOLS:
        raise InvalidArgument(f"{what}: protocol {text!r} must be tcp or udp")
    return text


def parse_allow(text: str) -> Allow:
    """CIDR[:PORT[/tcp|udp]], e.g. 10.0.0.0/8, 192.0.2.10:443/tcp, 0.0.0.0/0:53: parsed as the firewall's
    rules take it (rules.Destination), kept as the record's plain value."""
    destination = Destination.parse(text)
    return Allow(str(destination.network), destination.port or 0, destination.proto or "")


def parse_publish(text: str) -> Publish:
    """[HOSTADDR:]HOSTPORT:JOBPORT[/tcp|udp], e.g. 8080:80, 0.0.0.0:8443:443/tcp, 5353:53/udp."""
    spec, slash, protocol = text.partition("/")
    protocol = _protocol(protocol, f"--publish {text!r}") if slash else "tcp"
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise InvalidArgument(f"--publish {text!r}: expected [HOSTADDR:]HOSTPORT:JOBPORT[/tcp|udp]")
    host_address = ""
    if len(parts) == 3:
        try:
            host_address = str(ipaddress.IPv4Address(parts[0]))
        except ValueError:
            raise InvalidArgument(f"--publish {text!r}: {parts[0]!r} is not an IPv4 address") from None
    return Publish(_port(parts[-2], f"--publish {text!r}: host port"), _port(parts[-1], f"--publish {text!r}: job port"),
                   protocol, host_address)
