"""Connection settings: options > environment > config file, per setting."""

from __future__ import annotations

import os

import pytest

from jobctl.settings import DEFAULT_ADDR, SettingsError, resolve

NO_FLAGS = {"addr": None, "ca": None, "cert": None, "key": None}


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def test_flags_beat_env_beat_file_per_setting(tmp_path):
    config = write_config(tmp_path, "addr: file:1\nca: /f/ca.crt\ncert: /f/c.crt\nkey: /f/c.key\n")
    env = {"JOBCTL_ADDR": "env:2", "JOBCTL_CA": "/e/ca.crt", "JOBCTL_CERT": "/e/c.crt"}
    flags = dict(NO_FLAGS, addr="flag:3")
    settings = resolve(flags, env, config)
    assert (settings.addr, settings.ca, settings.cert, settings.key) == ("flag:3", "/e/ca.crt", "/e/c.crt", "/f/c.key")
    assert settings.origin == {"addr": "--addr", "ca": "JOBCTL_CA", "cert": "JOBCTL_CERT", "key": config}


def test_only_flags(tmp_path):
    flags = {"addr": "a:1", "ca": "/ca", "cert": "/c", "key": "/k"}
    settings = resolve(flags, {"JOBCTL_CA": "/other"}, str(tmp_path / "absent.yaml"))
    assert (settings.addr, settings.ca, settings.cert, settings.key) == ("a:1", "/ca", "/c", "/k")


def test_file_is_not_read_when_options_and_env_give_everything(tmp_path):
    broken = write_config(tmp_path, "addr: [unclosed\n")
    env = {"JOBCTL_ADDR": "a:1", "JOBCTL_CA": "/ca", "JOBCTL_CERT": "/c", "JOBCTL_KEY": "/k"}
    assert resolve(NO_FLAGS, env, broken).ca == "/ca"
    with pytest.raises(SettingsError, match="not valid YAML"):
        resolve(NO_FLAGS, dict(env, JOBCTL_KEY=""), broken)  # an empty variable counts as unset


def test_relative_paths_in_the_file_are_relative_to_its_directory(tmp_path):
    config = write_config(tmp_path, "ca: ca.crt\ncert: certs/me.crt\nkey: /abs/me.key\n")
    settings = resolve(NO_FLAGS, {}, config)
    base = os.path.dirname(config)
    assert settings.ca == os.path.join(base, "ca.crt")
    assert settings.cert == os.path.join(base, "certs", "me.crt")
    assert settings.key == "/abs/me.key"
    assert settings.addr == DEFAULT_ADDR == "localhost:7443"


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = resolve(dict(NO_FLAGS, ca="~/ca.crt", cert="/c", key="/k"), {}, str(tmp_path / "absent"))
    assert settings.ca == str(tmp_path / "ca.crt")


@pytest.mark.parametrize("key, flag, var", [("ca", "--ca", "JOBCTL_CA"), ("cert", "--cert", "JOBCTL_CERT"), ("key", "--key", "JOBCTL_KEY")])
def test_missing_setting_names_all_three_ways(tmp_path, key, flag, var):
    given = {"ca": "/ca", "cert": "/c", "key": "/k"}
    del given[key]
    config = str(tmp_path / "nothing.yaml")
    with pytest.raises(SettingsError) as caught:
        resolve(dict(NO_FLAGS, **given), {}, config)
    message = caught.value.message
    assert f"{flag} FILE" in message and var in message and f"'{key}: FILE' in {config}" in message
    assert caught.value.exit_code == 2


def test_default_config_path_follows_home_and_xdg(tmp_path):
    from jobctl.settings import default_config_path

    assert default_config_path({"XDG_CONFIG_HOME": "/x"}) == "/x/jobctl/config.yaml"
    assert default_config_path({}).endswith("/.config/jobctl/config.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("adress: h:1\n", "unknown key 'adress': did you mean 'addr'? (known: addr, ca, cert, key, contexts, current-context)"),
        ("contexts: {p: {addr: h:1, crt: c.crt}}\n", "context p: unknown key 'crt': did you mean 'cert'?"),
        ("contexts: [a, b]\n", "contexts must be a mapping"),
        ("contexts: {p: h:1}\n", "context 'p' must be a mapping"),
        ("current-context: [a]\n", "current-context must be a context name"),
        ("current-context: gone\n", "unknown context 'gone' (from current-context in"),
        ("- a\n- b\n", "must be a mapping"),
        ("ca: 5\n", "ca must be a non-empty string"),
        ("ca: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_config_file_is_named(tmp_path, text, expected):
    config = write_config(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        resolve(NO_FLAGS, {}, config)
    assert expected in caught.value.message and config in caught.value.message


def test_empty_config_file_is_fine(tmp_path):
    config = write_config(tmp_path, "# nothing yet\n")
    settings = resolve(dict(NO_FLAGS, ca="/ca", cert="/c", key="/k"), {}, config)
    assert settings.addr == DEFAULT_ADDR


def test_describe_names_the_file_and_where_it_came_from(tmp_path):
    settings = resolve(dict(NO_FLAGS, ca="/ca"), {"JOBCTL_CERT": "/c", "JOBCTL_KEY": "/k"}, str(tmp_path / "x"))
    assert settings.describe("ca") == "CA certificate /ca (from --ca)"
    assert settings.describe("cert") == "client certificate /c (from JOBCTL_CERT)"


# ---- contexts --------------------------------------------------------------------------------

CONTEXTS_FILE = """\
current-context: p
contexts:
  p: {addr: "ctx-p:1", ca: p/ca.crt, cert: /p/c.crt}
  q: {addr: "ctx-q:2", ca: /q/ca.crt, cert: /q/c.crt, key: /q/c.key}
addr: "top:4"
ca: /t/ca.crt
cert: /t/c.crt
key: /t/c.key
"""


def test_flags_beat_env_beat_context_beat_top_level_per_setting(tmp_path):
    config = write_config(tmp_path, CONTEXTS_FILE)
    settings = resolve(dict(NO_FLAGS, addr="flag:3"), {"JOBCTL_CA": "/e/ca.crt"}, config)
    assert (settings.addr, settings.ca, settings.cert, settings.key) == ("flag:3", "/e/ca.crt", "/p/c.crt", "/t/c.key")
    assert settings.origin == {"addr": "--addr", "ca": "JOBCTL_CA", "cert": f"context p in {config}", "key": config}
    assert settings.context == "p"


def test_context_paths_are_relative_to_the_file(tmp_path):
    config = write_config(tmp_path, CONTEXTS_FILE)
    assert resolve(NO_FLAGS, {}, config).ca == os.path.join(os.path.dirname(config), "p", "ca.crt")


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ({}, {}, "p"),  # the file's current-context
        ({}, {"JOBCTL_CONTEXT": "q"}, "q"),  # the variable beats the file
        ({"context": "q"}, {"JOBCTL_CONTEXT": "p"}, "q"),  # the option beats the variable
        ({"context": "p"}, {"JOBCTL_CONTEXT": "q"}, "p"),
        ({"context": "default"}, {"JOBCTL_CONTEXT": "q"}, ""),  # default: the top-level keys only
        ({}, {"JOBCTL_CONTEXT": "default"}, ""),
    ],
)
def test_which_context_is_selected(tmp_path, flags, env, expected):
    config = write_config(tmp_path, CONTEXTS_FILE)
    settings = resolve(dict(NO_FLAGS, **flags), env, config)
    assert settings.context == expected
    assert settings.addr == {"p": "ctx-p:1", "q": "ctx-q:2", "": "top:4"}[expected]
    if expected == "q":
        assert (settings.ca, settings.cert, settings.key) == ("/q/ca.crt", "/q/c.crt", "/q/c.key")
    if expected == "":
        assert (settings.ca, settings.key) == ("/t/ca.crt", "/t/c.key")


def test_env_settings_beat_the_context(tmp_path):
    config = write_config(tmp_path, CONTEXTS_FILE)
    env = {"JOBCTL_CONTEXT": "q", "JOBCTL_ADDR": "env:9", "JOBCTL_KEY": "/e/k"}
    settings = resolve(NO_FLAGS, env, config)
    assert (settings.addr, settings.ca, settings.key) == ("env:9", "/q/ca.crt", "/e/k")


def test_without_a_current_context_the_top_level_keys_are_used(tmp_path):
    config = write_config(tmp_path, CONTEXTS_FILE.replace("current-context: p\n", ""))
    settings = resolve(NO_FLAGS, {}, config)
    assert (settings.addr, settings.context) == ("top:4", "")


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ({"context": "nope"}, {}, "unknown context 'nope' (from --context): known are p, q (see jobctl context ls)"),
        ({}, {"JOBCTL_CONTEXT": "nope"}, "unknown context 'nope' (from JOBCTL_CONTEXT): known are p, q"),
    ],
)
def test_unknown_context_is_a_usage_error(tmp_path, flags, env, expected):
    config = write_config(tmp_path, CONTEXTS_FILE)
    with pytest.raises(SettingsError) as caught:
        resolve(dict(NO_FLAGS, **flags), env, config)
    assert expected in caught.value.message and caught.value.exit_code == 2


def test_a_named_context_is_checked_even_when_everything_else_is_given(tmp_path):
    config = write_config(tmp_path, CONTEXTS_FILE)
    flags = {"addr": "a:1", "ca": "/ca", "cert": "/c", "key": "/k", "context": "nope"}
    with pytest.raises(SettingsError, match="unknown context 'nope'"):
        resolve(flags, {}, config)
    assert resolve(dict(flags, context="q"), {}, config).addr == "a:1"


def test_unknown_context_without_any_says_how_to_add_one(tmp_path):
    config = write_config(tmp_path, "addr: h:1\n")
    with pytest.raises(SettingsError) as caught:
        resolve(dict(NO_FLAGS, context="prod"), {}, config)
    assert "has no contexts; add one with jobctl context add prod --addr HOST:PORT" in caught.value.message


def test_a_missing_setting_names_the_context(tmp_path):
    config = write_config(tmp_path, "contexts: {p: {addr: 'h:1', ca: /ca, cert: /c}}\ncurrent-context: p\n")
    with pytest.raises(SettingsError) as caught:
        resolve(NO_FLAGS, {}, config)
    assert f"put 'key: FILE' in context p of {config}" in caught.value.message


def test_unknown_keys_that_are_no_misspelling_are_ignored(tmp_path):
    config = write_config(tmp_path, "color: always\ncontexts: {p: {addr: 'h:1', note: lab}}\naddr: top:1\n")
    settings = resolve(dict(NO_FLAGS, ca="/ca", cert="/c", key="/k", context="p"), {}, config)
    assert settings.addr == "h:1"
