"""The inside of a job's network namespace, set up by C (stdlib only: ioctl, as `lo` is brought up): lo up,
and for bridge mode the address and default route of the veth end the daemon put in the namespace. The
daemon creates the veth from the host side, straight into the namespace by fd (no helper forked into
it); C waits for it on the network pipe, whose one line says what to configure:

    "eth0 10.88.0.5 16 10.88.0.1\\n"   interface, address, prefix length, gateway
    "fail DETAIL\\n" or EOF             the daemon could not attach the job: the start fails
"""

import ctypes
import fcntl
import os
import struct

import _socket
from syscalls import StepError

SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT = 0x8913, 0x8914, 0x8916, 0x891C, 0x890B
IFF_UP, RTF_UP, RTF_GATEWAY = 0x1, 0x1, 0x2
EINVAL = 22


def _sockaddr_in(address):
    return struct.pack("HH4s8x", _socket.AF_INET, 0, _socket.inet_aton(address))


def _ifreq(name, payload=b""):
    return struct.pack("16s", name) + payload.ljust(24, b"\0")


def bring_up(sock, name):
    flags = struct.unpack("16sh", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16sh", name, 0)))[1]
    fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sh", name, flags | IFF_UP))


def bring_up_loopback():
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        bring_up(sock, b"lo")
    except OSError as exc:
        raise StepError("loopback-up", exc.errno) from None
    finally:
        sock.close()


def _rtentry_default_via(gateway, device):
    """struct rtentry (x86_64 and aarch64 LP64 layout) for `default via GATEWAY dev DEVICE`."""
    any_address = _sockaddr_in("0.0.0.0")
    return struct.pack("L16s16s16sHhLPhPLLH", 0, any_address, _sockaddr_in(gateway), any_address,
                       RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, device, 0, 0, 0)


def read_assignment(fd):
    """The daemon's one line on the network pipe (see above)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    fields = data.split()
    if len(fields) != 4 or fields[0] == b"fail":
        detail = data.decode(errors="replace").strip() or "the daemon closed the network pipe"
        raise StepError("network-attach", EINVAL, detail)
    return fields[0], fields[1].decode(), int(fields[2]), fields[3].decode()


def configure(name, address, prefix, gateway):
    """Address, netmask, up, and the default route through the bridge."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    netmask = _socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))
    device = ctypes.create_string_buffer(name)  # rtentry.rt_dev is a char *: kept alive until the ioctl returns
    try:
        fcntl.ioctl(sock.fileno(), SIOCSIFADDR, _ifreq(name, _sockaddr_in(address)))
        fcntl.ioctl(sock.fileno(), SIOCSIFNETMASK, _ifreq(name, _sockaddr_in(netmask)))
        bring_up(sock, name)
        fcntl.ioctl(sock.fileno(), SIOCADDRT, _rtentry_default_via(gateway, ctypes.addressof(device)))
    except OSError as exc:
        raise StepError("network-configure", exc.errno, f"{name.decode()} {address}/{prefix} via {gateway}") from None
    finally:
        sock.close()
