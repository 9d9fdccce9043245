"""The sandbox (issue 10), through the real jobctl against a real daemon on this host's cgroup v1: the escape
matrix from a user's job and from an admin's root job that is not privileged (each attempt fails with a
clear errno and the job goes on), the positive side (own /tmp and --dir writable, own limits readable,
hostname, --mount, --rootfs, the JVM sizing its heap), and --privileged being privileged, for admins only.
The VM tier repeats the parts whose mechanism differs on cgroup v2 (tests/integration/vm/guest_checks.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe's raw syscall numbers are x86_64's"),
]

USER = {"name": "alice", "role": "user"}
ADMIN_ROOT = {"name": "root-admin", "role": "admin"}  # an admin's job runs as root by default
ROLES = {"user": USER, "admin-root": ADMIN_ROOT}

# Each attempt prints its outcome: "ok" or the errno's name. Numbers are x86_64's.
PROBE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
args = json.loads(sys.argv[1])
out = {
    "uid": os.getuid(),
    "block_device": attempt(lambda: open(args["disk"], "rb").read(1)),
    "mknod_block_device": attempt(lambda: (os.mknod("/tmp/disk", 0o60600, os.makedev(*args["disk_dev"])),
                                           open("/tmp/disk", "rb").read(1))),
    "write_cgroup_tree": attempt(lambda: open("/sys/fs/cgroup/pids/pids.max", "w").write("max")),
    "mount": attempt(lambda: (None if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) == 0
                              else (_ for _ in ()).throw(OSError(ctypes.get_errno(), "mount")))),
    "init_module": call(175, None, 0, b""),
    "finit_module": call(313, -1, b"", 0),
    "reboot": call(169, 0, 0, 0, None),
    "keyctl": call(250, 0, -3, 0),
    "bpf": call(321, 0, None, 0),
    "unshare_user": call(272, 0x10000000),
    "clock_settime": call(227, 0, (ctypes.c_long * 2)(0, 0)),
    "write_world_writable_host_dir": attempt(lambda: open(args["world_writable"] + "/x", "w")),
    "read_other_tmp": attempt(lambda: open(args["other_tmp"], "rb")),
    "read_other_shm": attempt(lambda: open(args["other_shm"], "rb")),
    "connect_run_socket": attempt(lambda: connect(args["socket"])),
    "proc_keys": len(open("/proc/keys", "rb").read()),
    "sysrq_trigger": attempt(lambda: open("/proc/sysrq-trigger", "w").write("h")),
    "setuid_binary_euid": int(os.popen(args["setuid_id"] + " -u").read() or -1),
    "file_caps_cap_eff": os.popen(args["caps_cat"] + " /proc/self/status").read().split("CapEff:")[1].split()[0],
    "no_new_privs": open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0],
    "still_running": True,
}
print(json.dumps(out))
"""


def root_disk() -> tuple[str, tuple[int, int]]:
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    for name in os.listdir("/sys/dev/block"):
        if name == f"{major}:{minor}":
            return "/dev/" + os.path.basename(os.readlink(f"/sys/dev/block/{name}")), (major, minor)
    return "/dev/vda", (major, minor)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Host paths the attacks aim at: a world-writable directory, a unix socket under /run, a setuid-root
    binary and a binary with file capabilities (not below /tmp: the host's /tmp is hidden in every job)."""
    base = Path(f"/var/lib/jobworkerd-test-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    world = base / "world"
    world.mkdir()
    world.chmod(0o1777)
    setuid_id = base / "id"
    shutil.copy("/usr/bin/id", setuid_id)
    setuid_id.chmod(0o4755)
    caps_cat = base / "cat"
    shutil.copy("/bin/cat", caps_cat)
    subprocess.run(["setcap", "cap_sys_admin,cap_dac_read_search+ep", str(caps_cat)], check=True)
    sock_path = f"/run/jobworkerd-test-{uuid.uuid4().hex[:8]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(8)
    disk, disk_dev = root_disk()
    try:
        yield {"base": base, "world_writable": str(world), "setuid_id": str(setuid_id), "caps_cat": str(caps_cat),
               "socket": sock_path, "disk": disk, "disk_dev": disk_dev}
    finally:
        listener.close()
        os.unlink(sock_path)
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def d(tmp_path_factory, host):
    from daemon_harness import Daemon

    workdir = tmp_path_factory.mktemp("sandbox")
    mountable = host["base"] / "mountable"
    mountable.mkdir()
    (mountable / "data").write_text("shared data\n")
    config = {"sandbox": {"user_mount_prefixes": [str(mountable)], "user_rootfs": [str(host["base"] / "image")]}}
    daemon = Daemon(workdir, config).start()
    yield daemon
    daemon.stop()


def run(d, *argv: str, who=USER, options=()) -> subprocess.CompletedProcess:
    return d.jobctl("run", *options, "--", *argv, **who)


def detached(d, script: str, who=USER) -> str:
    done = d.jobctl("run", "-d", "--", "sh", "-c", script, **who)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


@pytest.fixture(scope="module")
def victim(d):
    """Another user's job holding a file in its /tmp and one in its /dev/shm."""
    job_id = detached(d, "echo secret > /tmp/secret; echo secret > /dev/shm/secret; exec sleep 600",
                      who={"name": "bob", "role": "user"})
    yield job_id
    d.jobctl("stop", "--grace", "0", job_id, name="bob", role="user")


@pytest.mark.parametrize("role", ROLES)
def test_the_escape_matrix_holds(d, host, victim, role):
    """Every attempt fails with a clear errno, and the job goes on to print its report."""
    args = dict(host, base=None, other_tmp="/tmp/secret", other_shm="/dev/shm/secret")
    done = run(d, "python3", "-c", PROBE, json.dumps(args), who=ROLES[role])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["still_running"]
    assert out["block_device"] == "ENOENT"  # the job's /dev has no disks
    # A user cannot mknod; root may (docker's CAP_MKNOD), but every writable mount is nodev.
    assert out["mknod_block_device"] == ("EPERM" if role == "user" else "EACCES")
    assert out["write_cgroup_tree"] == "EROFS"
    assert out["mount"] == "EPERM"
    for call in ("init_module", "finit_module", "reboot", "keyctl", "bpf", "unshare_user", "clock_settime"):
        assert out[call] == "EPERM", call
    assert out["write_world_writable_host_dir"] == "EROFS"
    assert out["read_other_tmp"] == "ENOENT" and out["read_other_shm"] == "ENOENT"
    assert out["connect_run_socket"] == "ENOENT"  # the job's /run is its own, empty
    assert out["proc_keys"] == 0  # masked, as docker masks it
    assert out["sysrq_trigger"] in (("EROFS", "EACCES") if os.path.exists("/proc/sysrq-trigger") else ("ENOENT",))
    assert out["no_new_privs"] == "1"
    if role == "user":
        assert out["uid"] != 0 and out["setuid_binary_euid"] == out["uid"]
        assert int(out["file_caps_cap_eff"], 16) == 0
    else:
        assert out["uid"] == 0
        from jobworkerd.sandbox.plan import ROOT_CAPS_MASK

        assert int(out["file_caps_cap_eff"], 16) == ROOT_CAPS_MASK  # docker's set; no CAP_SYS_ADMIN from the file


def test_proc_kcore_is_masked_where_the_kernel_has_it(d):
    if not os.path.exists("/proc/kcore"):
        pytest.skip("this kernel has no /proc/kcore (CONFIG_PROC_KCORE off); /proc/keys shows the masking")
    done = run(d, "sh", "-c", "wc -c < /proc/kcore", who=ADMIN_ROOT)
    assert done.stdout.strip() == b"0"


def test_a_root_job_keeps_dockers_capabilities_and_a_user_job_none(d):
    from jobworkerd.sandbox.plan import ROOT_CAPS_MASK

    for who, expected in ((USER, 0), (ADMIN_ROOT, ROOT_CAPS_MASK)):
        done = run(d, "grep", "-E", "^Cap(Inh|Prm|Eff|Bnd|Amb)", "/proc/self/status", who=who)
        caps = dict(line.split(":\t") for line in done.stdout.decode().splitlines())
        assert int(caps["CapBnd"], 16) == int(caps["CapPrm"], 16) == int(caps["CapEff"], 16) == expected, caps
        assert int(caps["CapInh"], 16) == int(caps["CapAmb"], 16) == 0


def test_own_tmp_and_directory_are_writable_and_the_host_is_not(d, tmp_path):
    own = tmp_path / "work"
    own.mkdir()
    own.chmod(0o777)
    script = "echo a > /tmp/a && echo b > /var/tmp/b && echo c > /dev/shm/c && echo d > ./d && cat /tmp/a /var/tmp/b ./d"
    done = run(d, "sh", "-c", script + "; touch /etc/x 2>&1; touch /usr/x 2>&1; exit 0",
               options=("--dir", str(own)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[:3] == ["a", "b", "d"]
    assert all("Read-only file system" in line for line in lines[3:]) and len(lines) == 5
    assert (own / "d").read_text() == "d\n"  # --dir is the host's, written through
    assert not os.path.exists("/etc/x") and not os.path.exists("/usr/x")


def test_a_root_job_working_in_the_cgroup_tree_or_proc_sys_still_cannot_write_them(d):
    write = ("import errno, sys\ntry:\n    open(sys.argv[1], 'w').write('1')\n    print('written')\n"
             "except OSError as exc:\n    print(errno.errorcode[exc.errno])")
    sysctl = next(f for f in ("sysrq", "printk", "hostname") if os.path.exists(f"/proc/sys/kernel/{f}"))
    for directory, target in (("/sys/fs/cgroup/pids", "pids.max"), ("/proc/sys/kernel", sysctl)):
        done = run(d, "python3", "-c", write, target, who=ADMIN_ROOT, options=("--dir", directory))
        assert done.stdout.strip() == b"EROFS", (directory, done.stdout, done.stderr)


def test_the_job_sees_its_own_limits_and_no_other_cgroup(d):
    done = run(d, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; "
               "cat /proc/self/cgroup; find /sys/fs/cgroup -mindepth 2 -type d | wc -l",
               options=("--mem", "64M", "--pids", "50"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().split("\n")
    assert lines[0] == str(64 << 20) and lines[1] == "50"
    memory = [line for line in lines if ":memory:" in line]
    assert memory == [memory[0]] and memory[0].endswith(":memory:/")  # the job's cgroup is its root
    assert lines[-2] == "0"  # no cgroup below the job's own: no other job, no host cgroup


def test_hostname_is_the_job_id_or_the_one_asked_for(d):
    done = d.jobctl("run", "-d", "--", "hostname", **USER)
    job_id = done.stdout.decode().strip()
    d.jobctl("wait", job_id, **USER)
    assert d.jobctl("logs", job_id, **USER).stdout.decode().strip() == job_id
    done = run(d, "hostname", options=("--hostname", "build-7"))
    assert done.stdout.decode().strip() == "build-7"
    bad = run(d, "hostname", options=("--hostname", "-bad name"))
    assert bad.returncode != 0 and b"hostname" in bad.stderr


def test_ipc_and_network_devices_are_the_jobs_own(d):
    done = run(d, "sh", "-c", "ls /sys/class/net; ls /dev/mqueue | wc -l; ipcs -m | grep -c '^0x' || true")
    lines = done.stdout.decode().split()
    assert lines[0] == "lo" and lines[1] == "0"


def test_mount_works_for_admins_anywhere_and_for_users_below_allowed_prefixes(d, host, tmp_path):
    mountable = host["base"] / "mountable"
    done = run(d, "cat", "/mnt/data", options=("--mount", f"{mountable}:/mnt:ro"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"shared data\n"
    done = run(d, "sh", "-c", "touch /mnt/new", options=("--mount", f"{mountable}:/mnt:ro"))
    assert done.returncode != 0 and b"Read-only" in done.stdout
    done = run(d, "sh", "-c", "cat /tmp/in/data", options=("--mount", f"{mountable}:/tmp/in"))  # made in its /tmp
    assert done.stdout == b"shared data\n"
    refused = run(d, "true", options=("--mount", "/etc:/mnt"))
    assert refused.returncode != 0 and b"permission denied" in refused.stderr.lower()
    assert b"not below a directory users may mount from" in refused.stderr
    done = run(d, "ls", "/mnt", who=ADMIN_ROOT, options=("--mount", "/etc:/mnt:ro"))
    assert b"passwd" in done.stdout
    missing = run(d, "true", who=ADMIN_ROOT, options=("--mount", "/etc:/no-such-dir"))
    assert missing.returncode != 0 and b"must already exist" in missing.stderr


def build_image(root: Path) -> None:
    """A minimal directory tree to run in: dash and the libraries it needs."""
    for sub in ("proc", "dev", "sys", "run", "tmp", "bin", "etc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/dash", root / "bin" / "sh")
    for line in subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=True).stdout.splitlines():
        path = next((part for part in line.split() if part.startswith("/")), None)
        if path:
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (root / "etc" / "image-name").write_text("tiny\n")


def test_rootfs_runs_in_the_image_with_the_same_treatment(d, host):
    image = host["base"] / "image"
    build_image(image)
    script = "read n < /etc/image-name; echo $n; echo /*; echo ok > /tmp/t && read t < /tmp/t && echo $t; " \
             "(echo x > /etc/x) 2>/dev/null || echo ro; [ -e /dev/null ] && echo dev; read h < /proc/sys/kernel/hostname; echo $h"
    done = run(d, "/bin/sh", "-c", script, options=("--rootfs", str(image), "--hostname", "img"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "tiny"
    assert lines[1] == "/bin /dev /etc /lib /lib64 /proc /run /sys /tmp".replace(" /lib64", " /lib64" if (image / "lib64").exists() else "")
    assert lines[2:] == ["ok", "ro", "dev", "img"]
    refused = run(d, "/bin/sh", "-c", "true", options=("--rootfs", "/")) 
    assert refused.returncode != 0 and b"permission denied" in refused.stderr.lower()
    done = run(d, "/bin/sh", "-c", "echo in", who=ADMIN_ROOT, options=("--rootfs", str(image)))
    assert done.stdout == b"in\n"
    done = run(d, "/bin/sh", "-c", "read n < /etc/image-name; echo $n; echo x > /etc/x && echo rw", who=ADMIN_ROOT,
               options=("--rootfs", str(image), "--privileged"))
    assert done.stdout == b"tiny\nrw\n", done.stdout  # privileged: the image, writable
    assert (image / "etc" / "x").exists()


@pytest.mark.skipif(shutil.which("java") is None, reason="no JVM on this machine")
def test_the_jvm_sizes_its_heap_to_the_jobs_memory_limit(d):
    done = run(d, "sh", "-c", "java -XX:+PrintFlagsFinal -version 2>/dev/null | grep -w MaxHeapSize",
               options=("--mem", "256M", "--pids", "200"))
    assert done.returncode == 0, done.stderr
    heap = int(done.stdout.split()[3])
    assert heap <= 128 << 20, heap  # sized from the job's 256M (a quarter or half of it), not the host's RAM


def test_privileged_is_privileged_and_for_admins_only(d, host):
    done = run(d, "sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls " + host["disk"],
               who=ADMIN_ROOT, options=("--privileged",))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    cap_eff = int(text.split("CapEff:")[1].split()[0], 16)
    daemon_caps = Path(f"/proc/{d.proc.pid}/status").read_text().split("CapEff:")[1].split()[0]
    assert cap_eff == int(daemon_caps, 16)  # all the daemon has (this host's root may lack some)
    assert "NoNewPrivs:\t0" in text and host["disk"] in text
    status = json.loads(d.jobctl("status", "-o", "json", d.jobctl("ls", "-o", "json").stdout and
                                 json.loads(d.jobctl("ls", "-o", "json").stdout)[-1]["id"]).stdout)
    assert status["sandbox"]["profile"] == "privileged"
    for options in (("--privileged",), ("--seccomp", "unconfined"), ("--device", "/dev/zero")):
        refused = run(d, "true", options=options)
        assert refused.returncode != 0, options
        assert b"permission denied" in refused.stderr.lower(), refused.stderr


def test_an_admin_may_add_a_device_and_lift_seccomp(d, host):
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("this host has no /dev/net/tun to hand to a job")
    probe = "import os\nif os.path.exists('/dev/net/tun'):\n    os.close(os.open('/dev/net/tun', os.O_RDWR)); print('opened')\nelse: print(False)"
    assert run(d, "python3", "-c", probe, who=ADMIN_ROOT).stdout.split()[0] == b"False"
    done = run(d, "python3", "-c", probe, who=ADMIN_ROOT, options=("--device", "/dev/net/tun"))
    assert done.stdout.split() == [b"opened"], done.stdout
    done = run(d, "python3", "-c", "import ctypes; l = ctypes.CDLL(None, use_errno=True); "
               "print(l.syscall(250, 0, -3, 0) >= 0)", who=ADMIN_ROOT, options=("--seccomp", "unconfined"))
    assert done.stdout.strip() == b"True"  # keyctl works without the filter


def test_a_job_record_shows_its_sandbox(d):
    done = d.jobctl("run", "-d", "--hostname", "shown", "--", "true", **USER)
    job_id = done.stdout.decode().strip()
    d.jobctl("wait", job_id, **USER)
    text = d.jobctl("status", job_id, **USER).stdout.decode()
    assert "sandbox:" in text and "default" in text and "hostname shown" in text
    assert stat.S_ISDIR(os.stat("/").st_mode)  # and the host is as it was


def test_the_tls_key_directory_is_hidden_even_from_root_jobs(host, tmp_path):
    """A root job reads what it can see (CAP_DAC_OVERRIDE): the daemon's key directory is shown empty. (Not
    the module's daemon: its key is below /tmp, which no job sees anyway.)"""
    from daemon_harness import Daemon, unmount_output_tmpfs

    workdir = host["base"] / "keyed"
    daemon = Daemon(workdir, run_dir=tmp_path / "run").start()
    try:
        assert (workdir / "server.key").exists()
        for who in (USER, ADMIN_ROOT):
            done = daemon.jobctl("run", "--", "sh", "-c", f"ls -A {workdir} | wc -l; cat {workdir}/server.key 2>&1",
                                 **who)
            assert done.stdout.split(b"\n")[0] == b"0", done.stdout
            assert b"PRIVATE KEY" not in done.stdout
    finally:
        daemon.stop()
        unmount_output_tmpfs(tmp_path)
