"""Integration fixtures: the real daemon (daemon_harness.Daemon) as a subprocess on 127.0.0.1 with real mutual TLS.

`daemon` (one per test session) and `daemon_factory` (fresh daemons with their own config, e.g. for
restart and fault tests). Each daemon gets its own cgroup subtree beneath this process's cgroups,
its own state and run directories, and its own CA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_harness import Daemon, unmount_output_tmpfs


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root: real cgroups, namespaces and a root daemon")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_output_tmpfs_left(tmp_path_factory):
    """Daemons mount a tmpfs for their output that outlives them by design; none outlives the tests. (Not
    those under other sessions' directories: another test session may be running on this machine.)"""
    yield
    unmount_output_tmpfs(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def _no_output_tmpfs_left_by_this_test(request):
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is not None:
        unmount_output_tmpfs(tmp)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("daemon")).start()
    yield d
    d.stop()
    assert not d.cgroup_dirs(), f"daemon left cgroups behind: {d.cgroup_dirs()}"


@pytest.fixture
def daemon_factory(tmp_path):
    made: list[Daemon] = []

    def make(config: dict | None = None, workdir: Path | None = None) -> Daemon:
        d = Daemon(workdir or tmp_path / f"d{len(made)}", config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
