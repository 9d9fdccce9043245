"""Connection settings: where the daemon listens and which certificates to use.

Each setting comes from the first of these that gives it:

    1. the global option       --addr  --ca  --cert  --key
    2. the environment         JOBCTL_ADDR  JOBCTL_CA  JOBCTL_CERT  JOBCTL_KEY
    3. the selected context    contexts.NAME.{addr,ca,cert,key} in the config file
    4. the config file's       addr, ca, cert, key at the top level (the single-host form, and
       top-level keys          the context called "default")

The config file is ~/.config/jobctl/config.yaml ($XDG_CONFIG_HOME is honoured); relative paths in
it are relative to its directory. The context is the one named by --context, else by
JOBCTL_CONTEXT, else by the file's current-context (set by `jobctl context use`); "default" (or
none) means the top-level keys alone. `addr` defaults to localhost:7443; the three files have no
default.

    current-context: prod
    contexts:
      prod: {addr: "prod.example:7443", ca: /etc/jobctl/prod-ca.crt, cert: ..., key: ...}
    addr: "localhost:7443"      # top level: the "default" context
    ca: ...

Keys jobctl does not know are ignored (and kept when jobctl rewrites the file), unless they look
like a misspelling of one it knows. The file is read (and yaml imported) only when an option or
the environment leaves a setting open, or a context is named explicitly.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UsageError

DEFAULT_ADDR = "localhost:7443"
DEFAULT_CONTEXT = "default"  # the top-level keys; not a name `context add` accepts
KEYS = ("addr", "ca", "cert", "key")
PATH_KEYS = ("ca", "cert", "key")
CONTEXTS, CURRENT = "contexts", "current-context"
TOP_LEVEL_KEYS = (*KEYS, CONTEXTS, CURRENT)
CONTEXT_ENV = "JOBCTL_CONTEXT"
CONTEXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
WHAT = {
    "addr": "daemon address",
    "ca": "CA certificate",
    "cert": "client certificate",
    "key": "client key",
}


class SettingsError(UsageError):
    """A setting is missing or the config file is unusable (a usage error: exit 2)."""


def default_config_path(env: Mapping[str, str] = os.environ) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "jobctl", "config.yaml")


def flag(key: str) -> str:
    return f"--{key}"


def env_var(key: str) -> str:
    return f"JOBCTL_{key.upper()}"


@dataclass(frozen=True)
class Settings:
    addr: str
    ca: str
    cert: str
    key: str
    # Where each value came from, e.g. {"ca": "--ca", "cert": "JOBCTL_CERT", "key": "context prod in /root/.config/jobctl/config.yaml"}
    origin: dict[str, str] = field(default_factory=dict, compare=False)
    context: str = field(default="", compare=False)  # the context selected, "" for the top-level keys

    def describe(self, key: str) -> str:
        """'client certificate /x/a.crt (from JOBCTL_CERT)': how messages name a file."""
        value = getattr(self, key)
        origin = self.origin.get(key)
        return f"{WHAT[key]} {value}" + (f" (from {origin})" if origin else "")


def selected_context(flags: Mapping[str, str | None], env: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, where it was named) from --context or JOBCTL_CONTEXT, or None."""
    if flags.get("context"):
        return flags["context"], "--context"  # type: ignore[return-value]
    if env.get(CONTEXT_ENV):
        return env[CONTEXT_ENV], CONTEXT_ENV
    return None


def resolve(
    flags: Mapping[str, str | None],
    env: Mapping[str, str] = os.environ,
    config_path: str | None = None,
) -> Settings:
    """Settings from options, then environment, then the selected context, then the file's top level."""
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key in KEYS:
        if flags.get(key):
            values[key], origin[key] = _expand(key, flags[key]), flag(key)  # type: ignore[arg-type]
        elif env.get(env_var(key)):
            values[key], origin[key] = _expand(key, env[env_var(key)]), env_var(key)
    named = selected_context(flags, env)
    context = ""
    path = config_path or default_config_path(env)
    if any(k not in values for k in KEYS) or named:
        config = ConfigFile.read(path)
        context = config.select(named)
        layers = [(config.context(context), f"context {context} in {path}")] if context else []
        layers.append((config.top_level(), path))
        for settings, where in layers:
            for key in KEYS:
                if key not in values and key in settings:
                    values[key], origin[key] = settings[key], where
    values.setdefault("addr", DEFAULT_ADDR)
    for key in PATH_KEYS:
        if key not in values:
            where = f"'{key}: FILE' in context {context} of {path}" if context else f"'{key}: FILE' in {path}"
            raise SettingsError(f"no {WHAT[key]} given: use {flag(key)} FILE, set {env_var(key)}, or put {where}")
    return Settings(origin=origin, context=context, **values)


class ConfigFile:
    """jobctl's config file as read: the whole mapping (unknown keys included), checked on access."""

    def __init__(self, path: str, data: dict[str, Any]):
        self.path, self.data = path, data
        self._base = os.path.dirname(os.path.abspath(path))
        # the whole file is checked on reading, so that a mistake shows whichever context is used
        _check_keys(data, TOP_LEVEL_KEYS, f"config file {path}")
        self.top_level()
        for name in self.context_names():
            self.context(name)
        self.current()

    @classmethod
    def read(cls, path: str) -> ConfigFile:
        """The file's contents; an empty file if it does not exist."""
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return cls(path, {})
        except OSError as err:
            raise SettingsError(f"cannot read config file {path}: {err.strerror}") from None
        import yaml  # only here: importing it costs startup time

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SettingsError(f"config file {path} is not valid YAML: {_one_line(err)}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
        return cls(path, data)

    def top_level(self) -> dict[str, str]:
        """The single-host settings at the top of the file, paths made absolute."""
        return self._settings(self.data, f"config file {self.path}")

    def context_names(self) -> list[str]:
        return list(self._contexts())

    def context(self, name: str) -> dict[str, str]:
        contexts = self._contexts()
        if name not in contexts:
            raise SettingsError(self.unknown_context(name))
        return self._settings(contexts[name], f"config file {self.path}: context {name}")

    def current(self) -> str:
        """current-context as written in the file ("" when unset)."""
        value = self.data.get(CURRENT)
        if value is None or value == "":
            return ""
        if not isinstance(value, str):
            raise SettingsError(f"config file {self.path}: {CURRENT} must be a context name, got {value!r}")
        return value

    def select(self, named: tuple[str, str] | None) -> str:
        """The context in effect ("" for the top-level keys): named by an option or variable, else
        the file's current-context. An unknown name is an error."""
        name, where = named if named else (self.current(), f"{CURRENT} in {self.path}")
        if not name or name == DEFAULT_CONTEXT:
            return ""
        if name not in self._contexts():
            raise SettingsError(self.unknown_context(name, where))
        return name

    def unknown_context(self, name: str, where: str = "") -> str:
        known = self.context_names()
        source = f" (from {where})" if where else ""
        if not known:
            return (f"unknown context {name!r}{source}: {self.path} has no contexts; "
                    f"add one with jobctl context add {name} --addr HOST:PORT --ca FILE --cert FILE --key FILE")
        return f"unknown context {name!r}{source}: known are {', '.join(known)} (see jobctl context ls)"

    def _contexts(self) -> dict[str, dict[str, Any]]:
        contexts = self.data.get(CONTEXTS)
        if contexts is None:
            return {}
        if not isinstance(contexts, dict):
            raise SettingsError(f"config file {self.path}: {CONTEXTS} must be a mapping of context names to settings")
        for name, value in contexts.items():
            if not isinstance(name, str) or not isinstance(value, dict):
                raise SettingsError(f"config file {self.path}: context {name!r} must be a mapping with keys {', '.join(KEYS)}")
        return contexts

    def _settings(self, mapping: dict[str, Any], where: str) -> dict[str, str]:
        if mapping is not self.data:  # the top level was checked on reading
            _check_keys(mapping, KEYS, where)
        result: dict[str, str] = {}
        for key in KEYS:
            value = mapping.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise SettingsError(f"{where}: {key} must be a non-empty string, got {value!r}")
            if key in PATH_KEYS:
                value = os.path.join(self._base, _expand(key, value))  # join keeps an absolute value as it is
            result[key] = value
        return result


def _check_keys(mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Unknown keys are left alone (a newer jobctl's, or the user's), except likely misspellings."""
    for key in mapping:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        if close:
            raise SettingsError(f"{where}: unknown key {key!r}: did you mean {close[0]!r}? (known: {', '.join(known)})")


def _expand(key: str, value: str) -> str:
    return os.path.expanduser(value) if key in PATH_KEYS else value


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
