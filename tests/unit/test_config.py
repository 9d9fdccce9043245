"""jobworkerd.config: YAML into frozen dataclasses; every bad value is an error naming its key."""

from pathlib import Path

import pytest

from jobworkerd.config import Config, ConfigError, LimitValues, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def test_empty_config_gives_the_defaults():
    cfg = config_from_dict({})
    assert cfg == Config()
    assert config_from_dict(None) == Config()
    assert cfg.state_dir == "/var/lib/jobworkerd"
    assert cfg.run_dir == "/run/jobworkerd"
    assert cfg.cgroup.version == "auto" and cfg.cgroup.subtree == ""
    assert cfg.limits.default.pids == 1024  # a fork bomb is contained by default
    assert cfg.limits.output_cap == 256 << 20
    assert cfg.stop_grace == 10.0
    assert cfg.run_as.default_user == "dynamic"  # each client its own uid (README "What a job gets")
    assert cfg.run_as.allowed_users == ("nobody",)
    assert cfg.run_as.dynamic_uids == (61184, 65519)  # systemd's DynamicUser range


def test_values_are_converted():
    cfg = config_from_dict(
        {
            "listen": "0.0.0.0:9000",
            "state_dir": "/tmp/state",
            "run_dir": "/tmp/run",
            "cgroup": {"version": "v1", "subtree": "jobworkerd-test"},
            "limits": {
                "default": {"cpu": 0.5, "memory": "64M", "pids": 100},
                "max": {"cpu": 2, "memory": 1 << 30, "pids": None},
                "output_cap": "64K",
            },
            "run_as": {"default_user": "daemon", "allowed_users": ["daemon", "nobody"], "admin_default_user": "root"},
            "stop_grace": "500ms",
            "max_message_bytes": "1M",
        }
    )
    assert cfg.listen == "0.0.0.0:9000"
    assert cfg.cgroup.version == "v1" and cfg.cgroup.subtree == "jobworkerd-test"
    assert cfg.limits.default == LimitValues(cpu=0.5, memory=64 << 20, pids=100)
    assert cfg.limits.max == LimitValues(cpu=2.0, memory=1 << 30, pids=None)
    assert isinstance(cfg.limits.max.cpu, float)
    assert cfg.limits.output_cap == 64 << 10
    assert cfg.run_as.allowed_users == ("daemon", "nobody")
    assert cfg.stop_grace == 0.5
    assert cfg.max_message_bytes == 1 << 20


def test_a_section_given_partially_keeps_the_other_defaults():
    cfg = config_from_dict({"limits": {"output_cap": "1M"}})
    assert cfg.limits.default.pids == 1024
    assert cfg.limits.output_cap == 1 << 20
    # An explicit `default:` section replaces the defaults of that section as a whole.
    assert config_from_dict({"limits": {"default": {"cpu": 1}}}).limits.default == LimitValues(cpu=1.0)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"listn": "x"}, "'listn'"),
        ({"cgroup": {"subtreee": "x"}}, "'cgroup.subtreee'"),
        ({"limits": {"default": {"memroy": "1M"}}}, "'limits.default.memroy'"),
        ({"tls": {"crt": "/x"}}, "'tls.crt'"),
    ],
)
def test_unknown_key_is_an_error_naming_it(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "unknown config key" in message
    assert key in message
    assert "known here:" in message


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        # _str
        ({"listen": 7443}, ["listen:", "expected a string", "7443"]),
        ({"cgroup": {"subtree": ["a"]}}, ["cgroup.subtree:", "expected a string"]),
        # _path
        ({"state_dir": "var/lib/x"}, ["state_dir:", "absolute path", "'var/lib/x'"]),
        ({"tls": {"ca": "ca.crt"}}, ["tls.ca:", "absolute path"]),
        ({"run_dir": 5}, ["run_dir:", "expected a string"]),
        # _size
        ({"limits": {"output_cap": "lots"}}, ["limits.output_cap", "'lots'", "not a size"]),
        ({"limits": {"default": {"memory": "-1M"}}}, ["limits.default.memory", "not a size"]),
        ({"max_message_bytes": -1}, ["max_message_bytes", "must not be negative"]),
        # _duration
        ({"stop_grace": "soon"}, ["stop_grace", "'soon'", "not a duration"]),
        ({"stop_grace": -3}, ["stop_grace", "non-negative"]),
        # stop_grace: JobManager.stop refuses more than an hour, so a longer default would make every
        # stop without an explicit grace fail (and a shutdown leave its jobs running)
        ({"stop_grace": "2h"}, ["stop_grace:", "at most 3600s", "'2h'"]),
        # _positive_float
        ({"limits": {"default": {"cpu": 0}}}, ["limits.default.cpu:", "positive number", "0"]),
        ({"limits": {"max": {"cpu": -1.5}}}, ["limits.max.cpu:", "positive number"]),
        ({"limits": {"max": {"cpu": "two"}}}, ["limits.max.cpu:", "positive number", "'two'"]),
        ({"limits": {"max": {"cpu": True}}}, ["limits.max.cpu:", "positive number", "True"]),
        ({"limits": {"default": {"cpu": float("nan")}}}, ["limits.default.cpu:", "positive number", "nan"]),
        ({"limits": {"default": {"cpu": float("inf")}}}, ["limits.default.cpu:", "positive number", "inf"]),
        # _positive_int
        ({"limits": {"default": {"pids": 0}}}, ["limits.default.pids:", "positive whole number"]),
        ({"limits": {"default": {"pids": 1.5}}}, ["limits.default.pids:", "positive whole number", "1.5"]),
        ({"limits": {"default": {"pids": True}}}, ["limits.default.pids:", "positive whole number"]),
        # _str_list
        ({"run_as": {"allowed_users": "nobody"}}, ["run_as.allowed_users:", "list of strings", "'nobody'"]),
        ({"run_as": {"allowed_users": ["nobody", 5]}}, ["run_as.allowed_users:", "list of strings"]),
        # _uid_range
        ({"run_as": {"dynamic_uids": "0-100"}}, ["run_as.dynamic_uids:", "must not include uid 0", "'0-100'"]),
        ({"run_as": {"dynamic_uids": "200-100"}}, ["run_as.dynamic_uids:", "low end must not be above", "'200-100'"]),
        ({"run_as": {"dynamic_uids": "61184-2147483647"}}, ["run_as.dynamic_uids:", "up to 2147483646"]),
        ({"run_as": {"dynamic_uids": "61184-4294967295"}}, ["run_as.dynamic_uids:", "up to 2147483646"]),
        ({"run_as": {"dynamic_uids": 61184}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH", "61184"]),
        ({"run_as": {"dynamic_uids": "61184"}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH", "'61184'"]),
        ({"run_as": {"dynamic_uids": "-1-100"}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH"]),
        ({"run_as": {"dynamic_uids": "a-b"}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH"]),
        ({"run_as": {"dynamic_uids": "٣-٩"}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH"]),
        ({"run_as": {"dynamic_uids": ["61184", "65519"]}}, ["run_as.dynamic_uids:", "range of uids LOW-HIGH"]),
        # _choice
        ({"cgroup": {"version": "v3"}}, ["cgroup.version:", "auto, v1, v2", "'v3'"]),
        # _size_or_percent
        ({"limits": {"output_total": "0%"}}, ["limits.output_total:", "from 1% to 100%", "'0%'"]),
        ({"limits": {"output_total": "150%"}}, ["limits.output_total:", "from 1% to 100%"]),
        ({"limits": {"output_total": "2.5%"}}, ["limits.output_total:", "whole percentage"]),
        ({"limits": {"output_total": "512K"}}, ["limits.output_total:", "at least 1M", "'512K'"]),
        ({"limits": {"output_total": "lots"}}, ["limits.output_total", "not a size"]),
        # a section that is not a mapping
        ({"tls": "/etc/tls"}, ["tls:", "expected a mapping"]),
        ({"limits": {"default": [1]}}, ["limits.default:", "expected a mapping"]),
    ],
)
def test_each_converter_error_names_the_key_and_the_value(data, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_output_budget_is_a_size_or_a_share_of_ram_as_tmpfs_takes_it():
    assert config_from_dict({}).limits.output_total == "25%"
    assert config_from_dict({"limits": {"output_total": " 40% "}}).limits.output_total == "40%"
    assert config_from_dict({"limits": {"output_total": "2G"}}).limits.output_total == str(2 << 30)
    assert config_from_dict({"limits": {"output_total": 8 << 20}}).limits.output_total == str(8 << 20)


def test_stop_grace_bounds():
    assert config_from_dict({"stop_grace": "1h"}).stop_grace == 3600.0
    assert config_from_dict({"stop_grace": 0}).stop_grace == 0.0


def test_yaml_nan_and_inf_cpu_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    for text in (".nan", ".inf"):
        path.write_text(f"limits:\n  default:\n    cpu: {text}\n")
        with pytest.raises(ConfigError, match="limits.default.cpu: expected a positive number"):
            load_config(str(path))


def test_null_limit_values_mean_no_limit():
    cfg = config_from_dict({"limits": {"default": {"cpu": None, "memory": None, "pids": None}}})
    assert cfg.limits.default == LimitValues()


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_load_config_from_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: /tmp/s\nlimits:\n  output_cap: 64K\ncgroup:\n  subtree: t\n")
    cfg = load_config(str(path))
    assert cfg.state_dir == "/tmp/s"
    assert cfg.limits.output_cap == 65536
    assert cfg.cgroup.subtree == "t"


def test_load_config_of_an_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# nothing set\n")
    assert load_config(str(path)) == Config()


def test_load_config_error_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("cgroup:\n  verison: v1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert "'cgroup.verison'" in str(info.value)


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "cannot read config" in str(info.value) and str(path) in str(info.value)


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("limits: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "not valid YAML" in str(info.value) and str(path) in str(info.value)


def test_load_config_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(path))


def test_the_shipped_default_config_loads_and_equals_the_built_in_defaults():
    path = REPO / "config" / "config.yaml"
    if not path.exists():
        pytest.skip("config/config.yaml is not in this checkout")
    assert load_config(str(path)) == Config()


# -- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_defaults_listen_on_loopback_without_user_or_per_job_series():
    metrics = Config().metrics
    assert metrics.listen == "127.0.0.1:9464"
    assert (metrics.host, metrics.port, metrics.tls) == ("127.0.0.1", 9464, False)
    assert metrics.user_labels is False and metrics.per_job is False
    assert metrics.max_users == 20 and metrics.per_job_max == 50


@pytest.mark.parametrize(
    ("listen", "host", "port", "tls"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0, False),  # any free port (the test harness)
        ("127.8.9.10:9464", "127.8.9.10", 9464, False),  # all of 127.0.0.0/8 is loopback
        ("localhost:9464", "localhost", 9464, False),
        ("[::1]:9464", "::1", 9464, False),
        ("0.0.0.0:9464", "0.0.0.0", 9464, True),  # every interface: TLS
        ("192.0.2.7:65535", "192.0.2.7", 65535, True),
        ("[::]:9464", "::", 9464, True),
    ],
)
def test_metrics_listen_addresses_and_whether_they_need_tls(listen, host, port, tls):
    metrics = config_from_dict({"metrics": {"listen": listen}}).metrics
    assert (metrics.host, metrics.port, metrics.tls) == (host, port, tls)


def test_metrics_listen_empty_turns_the_endpoint_off():
    metrics = config_from_dict({"metrics": {"listen": ""}}).metrics
    assert metrics.listen == "" and metrics.tls is False


@pytest.mark.parametrize(
    ("listen", "fragments"),
    [
        ("9464", ["expected host:port", "e.g. 127.0.0.1:9464"]),
        ("127.0.0.1", ["expected host:port"]),
        ("127.0.0.1:", ["expected host:port"]),
        ("127.0.0.1:65536", ["port from 0 to 65535"]),
        ("127.0.0.1:-1", ["expected host:port"]),
        ("127.0.0.1:٩٤٦٤", ["expected host:port"]),  # digits, but not ASCII ones
        (":9464", ["the host is missing", "0.0.0.0"]),
        ("metrics.example.org:9464", ["'metrics.example.org' is not an IP address", "name resolution"]),
        ("::1:9464", ["IPv6 address in brackets", "[::1]:9464"]),
        ("[::zz]:9464", ["[::zz] is not an IPv6 address"]),
        ("127.0.0.256:9464", ["'127.0.0.256' is not an IP address"]),
    ],
)
def test_a_bad_metrics_listen_value_is_an_error_saying_what_is_accepted(listen, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"metrics": {"listen": listen}})
    message = str(info.value)
    assert message.startswith("metrics.listen: ") and repr(listen) in message and '"" turns metrics off' in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"listen": 9464}, ["metrics.listen:", "expected a string"]),
        ({"user_labels": "yes"}, ["metrics.user_labels:", "true or false", "'yes'"]),
        ({"per_job": 1}, ["metrics.per_job:", "true or false"]),
        ({"max_users": 0}, ["metrics.max_users:", "from 1 to 1000", "0"]),
        ({"max_users": 1001}, ["metrics.max_users:", "from 1 to 1000"]),
        ({"max_users": True}, ["metrics.max_users:", "whole number"]),
        ({"per_job_max": 2.5}, ["metrics.per_job_max:", "from 1 to 10000", "2.5"]),
        ({"per_job_max": 10001}, ["metrics.per_job_max:", "from 1 to 10000"]),
        ({"lisen": "127.0.0.1:1"}, ["unknown config key 'metrics.lisen'"]),
    ],
)
def test_metrics_keys_are_validated(data, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"metrics": data})
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_metrics_options_are_read():
    metrics = config_from_dict({"metrics": {"user_labels": True, "max_users": 5, "per_job": True, "per_job_max": 7}}).metrics
    assert (metrics.user_labels, metrics.max_users, metrics.per_job, metrics.per_job_max) == (True, 5, True, 7)
    assert metrics.listen == "127.0.0.1:9464"  # the rest of the section keeps its defaults


# -- job group ceilings (limits.per_user, limits.admins, limits.users) ---------------------------------------


def test_group_ceilings_defaults_protect_the_host():
    from jobworkerd.config import _ram_bytes
    from jobworkerd.worker.models import ADMIN_GROUP, JobGroup

    limits = config_from_dict({}).limits
    user = limits.ceiling(JobGroup("alice"))
    assert user.pids == 4096 and user.cpu is None
    assert abs(user.memory - _ram_bytes() // 2) < 4096 and user.memory % 4096 == 0
    admins = limits.ceiling(ADMIN_GROUP)
    assert admins.pids is None and admins.cpu is None and abs(admins.memory - _ram_bytes() * 0.9) < 4096


def test_per_user_ceilings_with_overrides_per_user():
    from jobworkerd.worker.models import JobGroup

    limits = config_from_dict({"limits": {
        "per_user": {"cpu": 1.5, "memory": "2G", "pids": 500},
        "admins": {"cpu": None, "memory": None, "pids": None},
        "users": {"ci-bot": {"memory": "8G", "pids": None}, "al ce": {"cpu": 0.5}},
    }}).limits
    assert (limits.ceiling(JobGroup("bob")).cpu, limits.ceiling(JobGroup("bob")).memory,
            limits.ceiling(JobGroup("bob")).pids) == (1.5, 2 << 30, 500)
    bot = limits.ceiling(JobGroup("ci-bot"))
    assert (bot.cpu, bot.memory, bot.pids) == (1.5, 8 << 30, None)  # given keys replace, null = no ceiling
    assert limits.ceiling(JobGroup("al ce")).cpu == 0.5
    assert limits.ceiling(JobGroup("ci-bot", admin=True)).memory is None  # an admin ci-bot is in the admin group
    assert not limits.ceiling(JobGroup("x", True)).has_io


@pytest.mark.parametrize(("data", "message"), [
    ({"per_user": {"memory": "0%"}}, "limits.per_user.memory: a share of RAM"),
    ({"per_user": {"memory": "150%"}}, "limits.per_user.memory: a share of RAM"),
    ({"per_user": {"io": 5}}, "unknown config key 'limits.per_user.io'"),
    ({"admins": {"pids": 0}}, "limits.admins.pids: expected a positive whole number"),
    ({"users": ["alice"]}, "limits.users: expected a mapping"),
    ({"users": {"alice": 5}}, "limits.users.alice: expected a mapping"),
    ({"users": {"alice": {"swap": 1}}}, "unknown config key 'limits.users.alice.swap'"),
    ({"users": {"alice": {"cpu": -1}}}, "limits.users.alice.cpu: expected a positive number"),
    # io: what the kernel's io.max would refuse (0, 1) or silently misread (iops over 32 bits) never loads
    ({"per_user": {"io_write_bps": 1}}, "limits.per_user.io_write_bps: bytes per second from 2 (the kernel's io.max "
                                        "refuses 0 and 1)"),
    ({"per_user": {"io_read_bps": 0}}, "limits.per_user.io_read_bps: bytes per second from 2"),
    ({"admins": {"io_read_bps": (1 << 62) + 1}}, f"limits.admins.io_read_bps: bytes per second from 2 (the kernel's "
                                                f"io.max refuses 0 and 1) to {1 << 62}"),
    ({"per_user": {"io_read_iops": 1}}, "limits.per_user.io_read_iops: a whole number of operations per second from 2"),
    ({"users": {"bob": {"io_write_iops": 1 << 32}}}, f"limits.users.bob.io_write_iops: a whole number of operations "
                                                     f"per second from 2 (the kernel's io.max refuses 0 and 1) to "
                                                     f"{(1 << 32) - 1} (the kernel keeps iops in 32 bits"),
    ({"per_user": {"io_write_iops": True}}, "limits.per_user.io_write_iops: a whole number"),
    ({"per_user": {"io_device": "var/lib"}}, "limits.per_user.io_device: expected an absolute path"),
    ({"users": {"alice": {"io": 1}}}, "(known here: cpu, memory, pids, io_device, io_read_bps, io_write_bps, "
                                      "io_read_iops, io_write_iops)"),
])
def test_bad_ceilings_are_refused_naming_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"limits": data})
    assert message in str(info.value)


def test_the_dynamic_uid_range():
    assert config_from_dict({"run_as": {"dynamic_uids": "100-200"}}).run_as.dynamic_uids == (100, 200)
    one = config_from_dict({"run_as": {"dynamic_uids": " 1 - 1 "}}).run_as.dynamic_uids
    assert (one.low, one.high, str(one)) == (1, 1, "1-1")
    assert str(config_from_dict({"run_as": {"dynamic_uids": "61184-2147483646"}}).run_as.dynamic_uids) == \
        "61184-2147483646"


def test_io_ceilings_apply_to_the_disk_of_io_device_or_else_the_state_directory():
    from jobworkerd.worker.models import ADMIN_GROUP, JobGroup

    limits = config_from_dict({"limits": {
        "per_user": {"io_write_bps": "20M", "io_read_iops": 500},
        "users": {"ci-bot": {"io_device": "/srv/ci", "io_write_bps": None, "io_write_iops": (1 << 32) - 1},
                  "bob": {"io_write_bps": None, "io_read_iops": None}},
    }}).limits
    alice = limits.ceiling(JobGroup("alice"), "/var/lib/jobworkerd")
    assert (alice.io_device, alice.io_read_bps, alice.io_write_bps, alice.io_read_iops, alice.io_write_iops) == \
        ("/var/lib/jobworkerd", None, 20 << 20, 500, None)
    bot = limits.ceiling(JobGroup("ci-bot"), "/var/lib/jobworkerd")
    assert (bot.io_device, bot.io_write_bps, bot.io_read_iops, bot.io_write_iops) == ("/srv/ci", None, 500, (1 << 32) - 1)
    bob = limits.ceiling(JobGroup("bob"), "/var/lib/jobworkerd")  # every io ceiling overridden away: no device
    assert not bob.has_io and bob.io_device is None
    assert not limits.ceiling(ADMIN_GROUP, "/var/lib/jobworkerd").has_io
    assert limits.ceiling(JobGroup("alice")).io_device is None  # no default given: the backend refuses it
    keys = [key for key, _ in limits.configured_ceilings("/state")]
    assert keys == ["limits.per_user", "limits.admins", "limits.users.ci-bot", "limits.users.bob"]
    assert dict(limits.configured_ceilings("/state"))["limits.users.ci-bot"] == bot


def test_the_default_config_sets_no_io_ceiling():
    assert not any(c.has_io for _, c in config_from_dict({}).limits.configured_ceilings("/var/lib/jobworkerd"))
