"""A minimal ctypes binding of libnftables (Debian package libnftables1), so the daemon never runs `nft`.

    with Nft() as nft:
        nft.run("add table inet jobworkerd")            # nft script text; one run = one transaction
        ruleset = nft.list_json("table inet jobworkerd")  # the `nftables` list of a JSON listing

One `run` is one netlink batch: the kernel applies all of its commands or none. The library opens its
netlink socket in the network namespace of the calling process, at each run. A context is not
thread-safe; `Nft` serialises its calls with a lock.

Dry run (`Nft(dry_run=True)`, `nft --check`) still talks to the kernel: it sends the batch and aborts
it instead of committing, so it needs CAP_NET_ADMIN in the current network namespace, and it sees that
namespace's ruleset (a script that deletes a missing table fails). It changes nothing.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from jobworkerd.errors import InternalError

__all__ = ["Nft", "NftError", "NftUnavailable"]

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # enum nft_output_flags in <nftables/libnftables.h>


class NftError(InternalError):
    """libnftables refused a script; the message is its error text and the script's first line."""


class NftUnavailable(NftError):
    """libnftables.so.1 cannot be loaded."""


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as e:
                raise NftUnavailable(
                    f"cannot load {LIBRARY} ({e}): install the Debian package libnftables1 (apt-get install libnftables1)"
                ) from None
            _declare(lib)
            _lib = lib
        return _lib


def _declare(lib: ctypes.CDLL) -> None:
    ctx = ctypes.c_void_p
    lib.nft_ctx_new.argtypes, lib.nft_ctx_new.restype = [ctypes.c_uint32], ctx
    lib.nft_ctx_free.argtypes, lib.nft_ctx_free.restype = [ctx], None
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [ctx], ctypes.c_int
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [ctx], ctypes.c_char_p
    lib.nft_ctx_output_get_flags.argtypes, lib.nft_ctx_output_get_flags.restype = [ctx], ctypes.c_uint
    lib.nft_ctx_output_set_flags.argtypes, lib.nft_ctx_output_set_flags.restype = [ctx, ctypes.c_uint], None
    lib.nft_ctx_set_dry_run.argtypes, lib.nft_ctx_set_dry_run.restype = [ctx, ctypes.c_bool], None
    lib.nft_run_cmd_from_buffer.argtypes, lib.nft_run_cmd_from_buffer.restype = [ctx, ctypes.c_char_p], ctypes.c_int


class Nft:
    """One libnftables context with buffered output and errors."""

    def __init__(self, *, dry_run: bool = False):
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lock = threading.Lock()
        if self._lib.nft_ctx_buffer_output(ctx) or self._lib.nft_ctx_buffer_error(ctx):
            self.close()
            raise NftError("cannot buffer libnftables output")
        if dry_run:
            self._lib.nft_ctx_set_dry_run(ctx, True)

    def run(self, script: str, *, json_output: bool = False) -> str:
        """Run nft script text as one transaction; return what it printed (listings). Raises NftError."""
        with self._lock:
            ctx = self._context()
            flags = self._lib.nft_ctx_output_get_flags(ctx)
            if json_output:
                self._lib.nft_ctx_output_set_flags(ctx, flags | NFT_CTX_OUTPUT_JSON)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
                err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            finally:
                if json_output:
                    self._lib.nft_ctx_output_set_flags(ctx, flags)
        if rc != 0:
            first = script.strip().splitlines()[0] if script.strip() else ""
            raise NftError(f"{err.strip() or f'libnftables failed ({rc})'}\n(script: {first})")
        return out

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """`list WHAT` (e.g. "table inet jobworkerd", "chains") as the parsed `nftables` array."""
        out = self.run(f"list {what}", json_output=True)
        return json.loads(out)["nftables"] if out.strip() else []

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def _context(self) -> int:
        if self._ctx is None:
            raise NftError("the libnftables context is closed")
        return self._ctx

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
