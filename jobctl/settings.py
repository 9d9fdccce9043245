"""Connection settings: where the daemon listens and which certificates to use.

Each setting comes from the first of these that gives it:

    1. the global option       --addr  --ca  --cert  --key
    2. the environment         JOBCTL_ADDR  JOBCTL_CA  JOBCTL_CERT  JOBCTL_KEY
    3. the config file         ~/.config/jobctl/config.yaml (keys addr, ca, cert, key;
                               relative paths are relative to the file's directory;
                               $XDG_CONFIG_HOME is honoured)

`addr` defaults to localhost:7443; the three files have no default. The config file is read
(and yaml imported) only when a setting is not given by an option or the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .errors import UsageError

DEFAULT_ADDR = "localhost:7443"
KEYS = ("addr", "ca", "cert", "key")
PATH_KEYS = ("ca", "cert", "key")
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
    # Where each value came from, e.g. {"ca": "--ca", "cert": "JOBCTL_CERT", "key": "/root/.config/jobctl/config.yaml"}
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self, key: str) -> str:
        """'client certificate /x/a.crt (from JOBCTL_CERT)': how messages name a file."""
        value = getattr(self, key)
        origin = self.origin.get(key)
        return f"{WHAT[key]} {value}" + (f" (from {origin})" if origin else "")


def resolve(
    flags: Mapping[str, str | None],
    env: Mapping[str, str] = os.environ,
    config_path: str | None = None,
) -> Settings:
    """Settings from options, then environment, then the config file, per setting."""
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key in KEYS:
        if flags.get(key):
            values[key], origin[key] = _expand(key, flags[key]), flag(key)
        elif env.get(env_var(key)):
            values[key], origin[key] = _expand(key, env[env_var(key)]), env_var(key)
    missing = [k for k in KEYS if k not in values]
    if missing:
        path = config_path or default_config_path(env)
        from_file = read_config(path)
        for key in missing:
            if key in from_file:
                values[key], origin[key] = from_file[key], path
    values.setdefault("addr", DEFAULT_ADDR)
    for key in PATH_KEYS:
        if key not in values:
            path = config_path or default_config_path(env)
            raise SettingsError(
                f"no {WHAT[key]} given: use {flag(key)} FILE, set {env_var(key)}, "
                f"or put '{key}: FILE' in {path}"
            )
    return Settings(origin=origin, **values)


def read_config(path: str) -> dict[str, str]:
    """The config file's settings with paths made absolute; {} if the file does not exist."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise SettingsError(f"cannot read config file {path}: {err.strerror}") from None
    import yaml  # only here: importing it costs startup time

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SettingsError(f"config file {path} is not valid YAML: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must be a mapping with keys {', '.join(KEYS)}")
    result: dict[str, str] = {}
    base = os.path.dirname(os.path.abspath(path))
    for key, value in data.items():
        if key not in KEYS:
            raise SettingsError(f"config file {path}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise SettingsError(f"config file {path}: {key} must be a non-empty string, got {value!r}")
        if key in PATH_KEYS:
            value = os.path.join(base, _expand(key, value))  # join keeps an absolute value as it is
        result[key] = value
    return result


def _expand(key: str, value: str) -> str:
    return os.path.expanduser(value) if key in PATH_KEYS else value


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
