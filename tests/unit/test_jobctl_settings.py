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
        ("adress: h:1\n", "unknown key 'adress' (known: addr, ca, cert, key)"),
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
