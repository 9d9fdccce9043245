"""`jobctl context add|use|ls|rm`: named connection settings for many daemons, kept in the config
file (see `settings` for the format and the order in which settings are taken).

These commands touch only the config file: no grpc. Each reads and rewrites it under a lock on
its directory (flock), so concurrent ones lose nothing. The file is rewritten atomically (a temporary
file in the same directory, fsync, rename) with mode 0600, keeping every key it held, also those
jobctl does not know; YAML comments are not kept.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from .console import line as _print
from .console import say as _say
from .errors import JobctlError, UsageError
from .settings import (
    CONTEXT_ENV,
    CONTEXT_NAME,
    CONTEXTS,
    CURRENT,
    DEFAULT_ADDR,
    DEFAULT_CONTEXT,
    ConfigFile,
    default_config_path,
    selected_context,
)


def add(args: argparse.Namespace) -> int:
    name = _checked_name(args.name)
    entry = {"addr": _checked_addr(args.ctx_addr)}
    for key in ("ca", "cert", "key"):
        entry[key] = _checked_file(f"--{key}", getattr(args, f"ctx_{key}"))
    with _editing(create=True) as config:
        return _add(name, entry, config)


def _add(name: str, entry: dict[str, str], config: ConfigFile) -> int:
    if name in config.context_names():
        raise UsageError(f"context {name!r} exists already in {config.path}: "
                         f"remove it first (jobctl context rm {name}) or pick another name")
    contexts = config.data.get(CONTEXTS)
    if not isinstance(contexts, dict):
        contexts = config.data[CONTEXTS] = {}
    contexts[name] = entry
    write_config(config.path, config.data)
    _print(f"added context {name} ({entry['addr']}); make it current with: jobctl context use {name}")
    return 0


def use(args: argparse.Namespace) -> int:
    with _editing() as config:
        return _use(args.name, config)


def _use(name: str, config: ConfigFile) -> int:
    if name == DEFAULT_CONTEXT:
        config.data.pop(CURRENT, None)
    elif name not in config.context_names():
        raise UsageError(config.unknown_context(name))
    else:
        config.data[CURRENT] = name
    write_config(config.path, config.data)
    _print(f"current context: {name}")
    overriding = os.environ.get(CONTEXT_ENV)
    if overriding and overriding != name:
        _say(f"note: {CONTEXT_ENV}={overriding} is set and takes precedence in this environment")
    return 0


def ls(args: argparse.Namespace) -> int:
    config = ConfigFile.read(_path())
    names = config.context_names()
    current = _in_effect(args, config, names)
    if args.quiet:
        for name in [DEFAULT_CONTEXT, *names]:
            _print(name)
        return 0
    rows = [("", "NAME", "ADDR")]
    rows.append(("*" if current == DEFAULT_CONTEXT else "", DEFAULT_CONTEXT,
                 config.top_level().get("addr", DEFAULT_ADDR) + "  (top-level keys)"))
    for name in names:
        rows.append(("*" if current == name else "", name, config.context(name).get("addr", DEFAULT_ADDR)))
    width = max(len(name) for _, name, _ in rows)
    for mark, name, addr in rows:
        _print(f"{mark:1} {name:<{width}}  {addr}".rstrip())
    return 0


def rm(args: argparse.Namespace) -> int:
    with _editing() as config:
        return _rm(args.name, config)


def _rm(name: str, config: ConfigFile) -> int:
    if name == DEFAULT_CONTEXT:
        raise UsageError(f"the {DEFAULT_CONTEXT} context is the top-level keys of {config.path}; it cannot be removed")
    if name not in config.context_names():
        raise UsageError(config.unknown_context(name))
    contexts = config.data[CONTEXTS]
    del contexts[name]
    if not contexts:
        del config.data[CONTEXTS]
    was_current = config.data.get(CURRENT) == name
    if was_current:
        del config.data[CURRENT]
    write_config(config.path, config.data)
    _print(f"removed context {name}" + (f"; the current context is now {DEFAULT_CONTEXT}" if was_current else ""))
    return 0


def write_config(path: str, data: dict[str, Any]) -> None:
    """Replace the file at `path` (through a symbolic link, its target) with `data`, atomically,
    mode 0600; the directory is made (0700) if missing. The owner is kept when root rewrites
    another user's file."""
    import yaml

    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        fd, tmp = tempfile.mkstemp(prefix=".config.yaml.", dir=directory)  # created 0600
    except OSError as err:
        raise JobctlError(f"cannot write config file {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("# jobctl connection settings: see jobctl(1), jobctl context --help\n")
            if data:
                yaml.safe_dump(data, handle, sort_keys=False, default_flow_style=False, allow_unicode=True)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None and os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, target)
    except OSError as err:
        _unlink(tmp)
        raise JobctlError(f"cannot write config file {path}: {err.strerror}") from None
    except BaseException:
        _unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- helpers -----------------------------------------------------------------------------------


def _path() -> str:
    return default_config_path(os.environ)


@contextlib.contextmanager
def _editing(create: bool = False) -> Iterator[ConfigFile]:
    """The config file, read under an exclusive lock on its directory that is held until the
    command has written it: two context commands at once do not lose each other's change."""
    path = _path()
    directory = os.path.dirname(os.path.realpath(path))
    try:
        if create:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield ConfigFile.read(path)  # no directory, no file: nothing to race with
        return
    except OSError as err:
        raise JobctlError(f"cannot open {directory}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield ConfigFile.read(path)
    finally:
        os.close(fd)  # releases the lock


def _in_effect(args: argparse.Namespace, config: ConfigFile, names: list[str]) -> str:
    named = selected_context({"context": getattr(args, "context", None)}, os.environ)
    name, where = named if named else (config.current(), f"{CURRENT} in {config.path}")
    name = name or DEFAULT_CONTEXT
    if name != DEFAULT_CONTEXT and name not in names:
        _say(f"warning: unknown context {name!r} (from {where}): commands will fail until it is added or changed")
    return name


def _checked_name(name: str) -> str:
    if name == DEFAULT_CONTEXT:
        raise UsageError(f"{DEFAULT_CONTEXT!r} is reserved for the config file's top-level keys: pick another name")
    if not CONTEXT_NAME.match(name):
        raise UsageError(f"context name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit (e.g. prod-eu1)")
    return name


def _checked_addr(addr: str) -> str:
    if not addr or any(c.isspace() for c in addr):
        raise UsageError(f"--addr {addr!r} is not an address: give HOST:PORT, e.g. jobs1.example.org:7443")
    return addr


def _checked_file(option: str, value: str) -> str:
    path = os.path.abspath(os.path.expanduser(value)) if value else ""
    if not path or not os.path.isfile(path):
        raise UsageError(f"{option} {value!r}: no such file (give the path of a PEM file)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {value!r}: not readable by this user")
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass



