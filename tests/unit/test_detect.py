"""Backend detection from fake /proc/self/{mountinfo,cgroup} text, and block device resolution
against a fake /sys/dev/block tree."""

import os
import stat

import pytest

from jobworkerd.cgroups import V1Backend, V2Backend, detect, parse_mountinfo, parse_proc_cgroup
from jobworkerd.cgroups.devices import block_device_for
from jobworkerd.errors import InternalError, InvalidArgument
from jobworkerd.worker.models import IOTarget

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")


def mountinfo_line(n, mount_point, fstype, super_opts, root="/", optional="shared:5"):
    source = "cgroup2" if fstype == "cgroup2" else "cgroup"
    opt = f" {optional}" if optional else ""
    return f"{n} 25 0:{n} {root} {mount_point} rw,nosuid,nodev,noexec,relatime{opt} - {fstype} {source} {super_opts}"


def hybrid_mountinfo(base, joint_cpu=False, root="/"):
    lines = [
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        f"31 23 0:28 / {base} ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755",
        mountinfo_line(40, f"{base}/unified", "cgroup2", "rw,nsdelegate"),
        mountinfo_line(41, f"{base}/systemd", "cgroup", "rw,xattr,name=systemd", root),
    ]
    n = 42
    if joint_cpu:
        lines.append(mountinfo_line(n, f"{base}/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct", root))
        controllers = ("memory", "blkio", "pids", "freezer", "devices", "cpuset")
    else:
        controllers = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer", "devices", "cpuset")
    for controller in controllers:
        n += 1
        lines.append(mountinfo_line(n, f"{base}/{controller}", "cgroup", f"rw,{controller}", root))
    return "\n".join(lines) + "\n"


HYBRID_CGROUP = """\
12:pids:/user.slice/user-0.slice/session-1.scope
11:cpu,cpuacct:/user.slice
10:memory:/user.slice/user-0.slice/session-1.scope
9:blkio:/user.slice
8:freezer:/
7:devices:/user.slice
6:cpuset:/
1:name=systemd:/user.slice/user-0.slice/session-1.scope
0::/user.slice/user-0.slice/session-1.scope
"""


# -- parsing ------------------------------------------------------------------------------------------------


def test_parse_mountinfo_hybrid():
    v1, v2 = parse_mountinfo(hybrid_mountinfo("/sys/fs/cgroup"))
    assert v2 == ("/sys/fs/cgroup/unified", "/")
    for controller in ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer", "devices", "cpuset"):
        assert v1[controller] == (f"/sys/fs/cgroup/{controller}", "/")
    assert "name=systemd" not in v1 and "systemd" not in v1
    assert "rw" not in v1


def test_parse_mountinfo_joint_cpu_cpuacct():
    v1, _ = parse_mountinfo(hybrid_mountinfo("/sys/fs/cgroup", joint_cpu=True))
    assert v1["cpu"] == v1["cpuacct"] == ("/sys/fs/cgroup/cpu,cpuacct", "/")


def test_parse_mountinfo_pure_v2():
    text = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    )
    assert parse_mountinfo(text) == ({}, ("/sys/fs/cgroup", "/"))


def test_parse_mountinfo_without_optional_fields_and_with_several_of_them():
    text = (
        mountinfo_line(1, "/cg/memory", "cgroup", "rw,memory", optional="") + "\n"
        + mountinfo_line(2, "/cg/pids", "cgroup", "rw,pids", optional="shared:7 master:3 propagate_from:2") + "\n"
    )
    v1, v2 = parse_mountinfo(text)
    assert v1 == {"memory": ("/cg/memory", "/"), "pids": ("/cg/pids", "/")}
    assert v2 is None


def test_parse_mountinfo_first_cgroup2_wins_and_garbage_is_ignored():
    text = (
        "not a mountinfo line\n\n"
        + mountinfo_line(1, "/a", "cgroup2", "rw") + "\n"
        + mountinfo_line(2, "/b", "cgroup2", "rw") + "\n"
    )
    assert parse_mountinfo(text)[1] == ("/a", "/")


def test_parse_mountinfo_mount_root_that_is_not_slash():
    v1, _ = parse_mountinfo(hybrid_mountinfo("/sys/fs/cgroup", root="/docker/abc"))
    assert v1["memory"] == ("/sys/fs/cgroup/memory", "/docker/abc")


def test_parse_proc_cgroup_hybrid():
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP)
    assert v2 == "/user.slice/user-0.slice/session-1.scope"
    assert v1["cpu"] == v1["cpuacct"] == "/user.slice"
    assert v1["memory"] == "/user.slice/user-0.slice/session-1.scope"
    assert v1["freezer"] == "/"
    assert v1["name=systemd"] == "/user.slice/user-0.slice/session-1.scope"


def test_parse_proc_cgroup_pure_v2():
    assert parse_proc_cgroup("0::/system.slice/jobworkerd.service\n") == ({}, "/system.slice/jobworkerd.service")


def test_parse_proc_cgroup_path_with_colons():
    v1, v2 = parse_proc_cgroup("4:memory:/a:b/c\n0::/x:y\n")
    assert v1 == {"memory": "/a:b/c"} and v2 == "/x:y"


# -- detect() ---------------------------------------------------------------------------------------------


def fake_proc(tmp_path, mountinfo, cgroup):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return str(proc)


def fake_hierarchies(base, names):
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)


def test_detect_hybrid_is_v1_with_each_controllers_own_path(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, V1_CONTROLLERS + ("unified",))
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base)), HYBRID_CGROUP)
    backend = detect("auto", "sub", proc)
    assert isinstance(backend, V1Backend) and backend.version == "v1"
    assert backend.join_files("j") == [
        str(base / "cpu/user.slice/sub/jobs/j/tasks"),
        str(base / "cpuacct/user.slice/sub/jobs/j/tasks"),
        str(base / "memory/user.slice/user-0.slice/session-1.scope/sub/jobs/j/tasks"),
        str(base / "blkio/user.slice/sub/jobs/j/tasks"),
        str(base / "pids/user.slice/user-0.slice/session-1.scope/sub/jobs/j/tasks"),
        str(base / "freezer/sub/jobs/j/tasks"),
        str(base / "cpuset/sub/jobs/j/tasks"),
    ]


def test_detect_joint_cpu_cpuacct_mount_prefers_the_per_controller_links(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, ("cpu,cpuacct", "memory", "blkio", "pids", "freezer", "unified"))
    os.symlink("cpu,cpuacct", base / "cpu")
    os.symlink("cpu,cpuacct", base / "cpuacct")
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base), joint_cpu=True), HYBRID_CGROUP)
    backend = detect("auto", "", proc)
    files = backend.join_files("j")
    # cgroupspy types a node by its hierarchy's directory name: "cpu", never "cpu,cpuacct"
    assert files[0] == str(base / "cpu/user.slice/jobs/j/tasks")
    assert files[1] == str(base / "cpuacct/user.slice/jobs/j/tasks")


def test_detect_joint_mount_without_links_uses_the_mount_point(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, ("cpu,cpuacct", "memory", "blkio", "pids", "freezer"))
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base), joint_cpu=True), HYBRID_CGROUP)
    files = detect("v1", "", proc).join_files("j")
    assert files[0] == files[1] == str(base / "cpu,cpuacct/user.slice/jobs/j/tasks")


def test_detect_pure_v2(tmp_path):
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpu io memory pids\n")
    mountinfo = mountinfo_line(30, str(mount), "cgroup2", "rw,nsdelegate") + "\n"
    proc = fake_proc(tmp_path, mountinfo, "0::/system.slice/jobworkerd.service\n")
    backend = detect("auto", "", proc)
    assert isinstance(backend, V2Backend) and backend.version == "v2"
    assert backend.own_dir == str(mount / "system.slice/jobworkerd.service")
    assert backend.jobs_dir == str(mount / "system.slice/jobworkerd.service/jobs")


def test_detect_v2_mount_root_that_is_not_slash(tmp_path):
    # In a container with a cgroup namespace off, the mount's root is the container's cgroup, and
    # /proc/self/cgroup shows the full path: the part below the mount root is ours.
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpu io memory pids\n")
    mountinfo = mountinfo_line(30, str(mount), "cgroup2", "rw", root="/docker/abc") + "\n"
    proc = fake_proc(tmp_path, mountinfo, "0::/docker/abc/app\n")
    assert detect("auto", "t", proc).jobs_dir == str(mount / "app/t/jobs")


def test_detect_v1_mount_root_that_is_not_slash(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, V1_CONTROLLERS)
    cgroup = "".join(f"{n}:{c}:/docker/abc/inner\n" for n, c in enumerate(V1_CONTROLLERS, 1))
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base), root="/docker/abc"), cgroup)
    backend = detect("v1", "", proc)
    assert backend.join_files("j")[0] == str(base / "cpu/inner/jobs/j/tasks")


def test_detect_our_cgroup_equal_to_the_mount_root(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, V1_CONTROLLERS)
    cgroup = "".join(f"{n}:{c}:/docker/abc\n" for n, c in enumerate(V1_CONTROLLERS, 1))
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base), root="/docker/abc"), cgroup)
    assert detect("v1", "", proc).join_files("j")[0] == str(base / "cpu/jobs/j/tasks")


def test_detect_hybrid_can_be_forced_to_v2(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, V1_CONTROLLERS + ("unified",))
    proc = fake_proc(tmp_path, hybrid_mountinfo(str(base)), HYBRID_CGROUP)
    backend = detect("v2", "", proc)
    assert isinstance(backend, V2Backend)
    assert backend.own_dir == str(base / "unified/user.slice/user-0.slice/session-1.scope")


def test_detect_pure_v2_cannot_be_forced_to_v1(tmp_path):
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpu\n")
    proc = fake_proc(tmp_path, mountinfo_line(30, str(mount), "cgroup2", "rw") + "\n", "0::/\n")
    with pytest.raises(InternalError) as info:
        detect("v1", "", proc)
    assert "asked for v1" in str(info.value) and "cpu, cpuacct, memory, pids, freezer" in str(info.value)


def test_detect_nothing_usable(tmp_path):
    proc = fake_proc(tmp_path, "22 1 254:0 / / rw - ext4 /dev/vda rw\n", "")
    with pytest.raises(InternalError, match="no usable cgroup hierarchy .asked for auto."):
        detect("auto", "", proc)


def test_detect_v1_missing_a_required_controller_and_no_v2(tmp_path):
    base = tmp_path / "cg"
    fake_hierarchies(base, ("cpu", "cpuacct", "memory", "blkio"))
    lines = [mountinfo_line(n, str(base / c), "cgroup", f"rw,{c}") for n, c in enumerate(("cpu", "cpuacct", "memory", "blkio"))]
    proc = fake_proc(tmp_path, "\n".join(lines) + "\n", "1:cpu:/\n")
    with pytest.raises(InternalError, match="no usable cgroup hierarchy"):
        detect("auto", "", proc)


def test_detect_on_this_host():
    """Whatever this machine is, detection picks a backend (or says why not) without raising anything else."""
    try:
        backend = detect("auto", "jobworkerd-test-detect")
    except InternalError as exc:
        assert "no usable cgroup hierarchy" in str(exc)
        return
    assert backend.version in ("v1", "v2")


# -- block devices ----------------------------------------------------------------------------------------


def fake_sys_block(tmp_path, dev, partition):
    """/sys/dev/block/MAJ:MIN -> ../../devices/.../vda[/vda1], as the kernel lays it out."""
    major, minor = os.major(dev), os.minor(dev)
    devices = tmp_path / "sys/devices/virtual/block/vda"
    devices.mkdir(parents=True)
    (devices / "dev").write_text("254:0\n")
    target = devices
    if partition:
        target = devices / "vda1"
        target.mkdir()
        (target / "dev").write_text(f"{major}:{minor}\n")
        (target / "partition").write_text("1\n")
    sys_dev_block = tmp_path / "sys/dev/block"
    sys_dev_block.mkdir(parents=True)
    os.symlink(os.path.relpath(target, sys_dev_block), sys_dev_block / f"{major}:{minor}")
    return str(sys_dev_block)


def test_a_path_on_a_partition_resolves_to_its_whole_disk(tmp_path):
    data = tmp_path / "data"
    data.write_text("x")
    sys_dev_block = fake_sys_block(tmp_path, os.stat(data).st_dev, partition=True)
    assert block_device_for(str(data), sys_dev_block) == IOTarget(254, 0)


def test_a_path_on_a_whole_disk_resolves_to_that_disk(tmp_path):
    data = tmp_path / "data"
    data.write_text("x")
    dev = os.stat(data).st_dev
    sys_dev_block = fake_sys_block(tmp_path, dev, partition=False)
    assert block_device_for(str(data), sys_dev_block) == IOTarget(os.major(dev), os.minor(dev))


def test_a_device_that_is_not_a_block_device(tmp_path):
    (tmp_path / "empty").mkdir()
    dev = os.stat(tmp_path).st_dev
    with pytest.raises(InvalidArgument) as info:
        block_device_for(str(tmp_path), str(tmp_path / "empty"))
    message = str(info.value)
    assert f"{os.major(dev)}:{os.minor(dev)}" in message and "not one" in message and "--io-device" in message


def test_a_missing_path(tmp_path):
    with pytest.raises(InvalidArgument, match="No such file or directory"):
        block_device_for(str(tmp_path / "absent"))


def test_a_block_device_node_names_its_own_device(tmp_path):
    def is_block(path):
        try:
            return stat.S_ISBLK(os.stat(path).st_mode)
        except OSError:
            return False

    node = next((p for p in (os.path.join("/dev", n) for n in sorted(os.listdir("/dev"))) if is_block(p)), None)
    if node is None:
        pytest.skip("no block device node in /dev")
    rdev = os.stat(node).st_rdev
    fake = fake_sys_block(tmp_path, rdev, partition=False)
    assert block_device_for(node, fake) == IOTarget(os.major(rdev), os.minor(rdev))


def test_mountinfo_octal_escapes_in_paths_are_decoded():
    from jobworkerd.cgroups import parse_mountinfo

    v1, _ = parse_mountinfo("35 31 0:32 /a\\040b /sys/fs/my\\040cg rw - cgroup cgroup rw,memory")
    assert v1["memory"] == ("/sys/fs/my cg", "/a b")
