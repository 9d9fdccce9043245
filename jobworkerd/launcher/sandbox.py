"""The job's sandbox, launcher side: the filesystem view C builds in the job's mount namespace, the
cgroup view G mounts after entering its cgroup namespace, and the privileges G drops just before exec.
The daemon decides everything (jobworkerd/sandbox/: profiles, the mount plan, the seccomp program) and
sends it in the spec; this file only carries it out, in this order:

  C, root, in the new mount namespace (still the host's tree, made private by L):
    1. --rootfs: bind the image onto itself; it becomes the new root (pivot_root in step 9)
    2. the bind sources (--dir, --mount, the config's writable paths) opened, while their host paths
       are in view
    3. the whole tree read-only (unless the profile writes the host), nosuid and nodev: one
       mount_setattr(AT_RECURSIVE). nodev everywhere is what keeps a root job's mknod harmless.
    4. /dev: a tmpfs with null zero full random urandom tty, devpts, /dev/shm, /dev/mqueue and any
       --device, then read-only (only its own tmpfs mounts are writable)
    5. /proc: fresh, with docker's masked and read-only paths
    6. /tmp, /var/tmp: tmpfs of the configured size (charged to the writer, the job's memory cgroup);
       /run: an empty tmpfs
    7. /sys: a fresh sysfs (read-only) of the job's network namespace, and an empty read-only tmpfs
       at /sys/fs/cgroup holding the mount points of the cgroup view
    8. the binds, each re-mounted with its own flags (a target below /tmp or /run is made there)
    9. pivot_root into the image, the old root detached
  G, root, after joining the job's cgroup:
   10. unshare(CLONE_NEWCGROUP), mount each hierarchy read-only at /sys/fs/cgroup/...: the job's
       cgroup is its root, so it shows its own limits and no other cgroup
   11. after setuid: bounding set and capabilities cut, no_new_privs, chdir, the seccomp filter last
       (so the launcher's own steps are not filtered), execve

Each step reports failure as StepError(step, errno, path), which the daemon turns into a message.
"""

import ctypes
import os

from syscalls import (
    MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, StepError, check, libc, mount,
)

CLONE_NEWCGROUP = 0x02000000
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the tables were unified)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 24, 38, 22, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST_POSSIBLE = 63
ENOENT, EINVAL = 2, 22

DEVICES = ((b"null", 1, 3), (b"zero", 1, 5), (b"full", 1, 7), (b"random", 1, 8), (b"urandom", 1, 9), (b"tty", 5, 0))
DEV_LINKS = ((b"fd", b"/proc/self/fd"), (b"stdin", b"/proc/self/fd/0"), (b"stdout", b"/proc/self/fd/1"),
             (b"stderr", b"/proc/self/fd/2"), (b"ptmx", b"pts/ptmx"))
# docker's defaults: files shown as /dev/null, directories as an empty read-only tmpfs, others read-only.
PROC_MASKED = (b"acpi", b"asound", b"kcore", b"keys", b"latency_stats", b"timer_list", b"timer_stats",
               b"sched_debug", b"scsi")
PROC_READ_ONLY = (b"bus", b"fs", b"irq", b"sys", b"sysrq-trigger")
SYS_MASKED = (b"firmware", b"devices/virtual/powercap")
SANDBOX_MOUNT_FLAGS = MS_NOSUID | MS_NODEV


class Sandbox:
    """The spec's sandbox fields, parsed (see jobworkerd/sandbox/plan.py for what the daemon sends)."""

    def __init__(self, spec):
        self.privileged = spec.get("privileged") == b"1"
        self.root = spec.get("rootfs", b"")
        self.read_only = spec.get("root_ro") == b"1"
        self.tmp_size = spec.get("tmp_size", b"")
        self.binds = [tuple(b.split(b"\t")) for b in spec["bind"]]  # (source, target, b"ro"|b"rw")
        self.run_files = [tuple(f.split(b"\t")) for f in spec["runfile"]]  # (source in the run dir, target)
        self.devices = [tuple(d.split(b"\t")) for d in spec["device"]]  # (path, c|b, major, minor, mode, uid, gid)
        self.cgroup_view = [tuple(v.split(b"\t")) for v in spec["cgview"]]  # (dir, fstype, options)
        self.cgroup_links = [tuple(v.split(b"\t")) for v in spec["cglink"]]  # (name, target)
        self.keep_caps = int(spec.get("caps", b"0"), 16)
        self.seccomp = bytes.fromhex(spec.get("seccomp", b"").decode())
        self.hostname = spec.get("hostname", b"")

    def at(self, path):
        """A path of the job's view while it is still being built (before pivot_root)."""
        return self.root + path if self.root else path


def _mount_setattr(step, path, set_flags):
    attr = (ctypes.c_uint64 * 4)(set_flags, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path, AT_RECURSIVE, attr, ctypes.sizeof(attr)) != 0:
        raise StepError(step, ctypes.get_errno(), path.decode(errors="replace"))


def _remount(step, target, flags):
    mount(step, b"none", target, None, MS_REMOUNT | MS_BIND | flags)


def bind_run_files(box):
    """Files the daemon wrote for the job in its run directory (resolv.conf, hosts), bound read-only over
    the job's own before that directory is hidden: a bind from a detached mount is refused (EINVAL)."""
    for source, target in box.run_files:
        fd = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mount("bind-mount", f"/proc/self/fd/{fd}".encode(), box.at(target), None, MS_BIND)
        finally:
            os.close(fd)
        _remount("bind-mount", box.at(target), MS_RDONLY | SANDBOX_MOUNT_FLAGS)


def open_bind_sources(box):
    """Step 3a, before anything covers the host's paths: each bind source opened (O_PATH), and checked
    to be what the daemon checked: a symlink swapped in since (a user's own directory below an allowed
    prefix) would otherwise redirect the mount."""
    opened = []
    for source, target, mode in box.binds:
        try:
            fd = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StepError("bind-mount", exc.errno, source.decode(errors="replace")) from None
        if os.readlink(f"/proc/self/fd/{fd}").encode() != source:
            raise StepError("bind-mount", EINVAL, source.decode(errors="replace") + " changed after it was checked")
        opened.append((fd, target, mode == b"ro"))
    return opened


def _bind(fd, target, read_only):
    """Step 3b: a target below a private tmpfs (/tmp, /run, ...) is made there; others exist (checked)."""
    if not os.path.lexists(target):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    mount("bind-mount", f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND)
    os.close(fd)
    _remount("bind-mount", target, SANDBOX_MOUNT_FLAGS | (MS_RDONLY if read_only else 0))


def _tmpfs(step, target, options, flags=SANDBOX_MOUNT_FLAGS):
    mount(step, b"tmpfs", target, b"tmpfs", flags, options)


def _detach(step, path):
    """The host's mount at `path` (and all below it) leaves the job's namespace before the job's own is
    mounted there: covered, it would still be listed in /proc/self/mountinfo, where the JVM's and Go's
    cgroup detection would find the host's cgroup mounts first."""
    if libc.umount2(path, MNT_DETACH) != 0 and ctypes.get_errno() not in (EINVAL, ENOENT):  # EINVAL: no mount there
        raise StepError(step, ctypes.get_errno(), path.decode(errors="replace"))


def _build_dev(box):
    dev = box.at(b"/dev")
    _detach("mount-dev", dev)
    _tmpfs("mount-dev", dev, b"mode=0755,size=64k", MS_NOSUID | MS_NOEXEC)
    for name, major, minor in DEVICES:
        os.mknod(dev + b"/" + name, 0o20666, os.makedev(major, minor))
        os.chmod(dev + b"/" + name, 0o666)  # mknod's mode passes through the umask
    for path, kind, major, minor, mode, uid, gid in box.devices:  # as the host has them
        node = box.at(path)
        os.makedirs(os.path.dirname(node), mode=0o755, exist_ok=True)
        os.mknod(node, (0o20000 if kind == b"c" else 0o60000) | int(mode, 8), os.makedev(int(major), int(minor)))
        os.chown(node, int(uid), int(gid))
        os.chmod(node, int(mode, 8))
    for name, target in DEV_LINKS:
        os.symlink(target, dev + b"/" + name)
    for name in (b"pts", b"shm", b"mqueue"):
        os.mkdir(dev + b"/" + name, 0o755)
    mount("mount-devpts", b"devpts", dev + b"/pts", b"devpts", MS_NOSUID | MS_NOEXEC,
          b"newinstance,ptmxmode=0666,mode=0620,gid=5")
    _tmpfs("mount-dev", dev + b"/shm", b"mode=1777," + box.tmp_size, SANDBOX_MOUNT_FLAGS | MS_NOEXEC)
    mount("mount-dev", b"mqueue", dev + b"/mqueue", b"mqueue", SANDBOX_MOUNT_FLAGS | MS_NOEXEC)
    _remount("mount-dev", dev, MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def _mask_proc(box):
    proc = box.at(b"/proc")
    for name in PROC_MASKED:
        _mask(proc + b"/" + name, box.at(b"/dev/null"))
    for name in PROC_READ_ONLY:
        path = proc + b"/" + name
        if os.path.lexists(path):
            mount("mask-proc", path, path, None, MS_BIND | MS_REC)
            _remount("mask-proc", path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mask(path, null):
    if os.path.isdir(path):
        _tmpfs("mask-path", path, b"size=0,mode=0555", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif os.path.lexists(path):
        mount("mask-path", null, path, None, MS_BIND)


def _build_sys(box):
    sys_dir = box.at(b"/sys")
    _detach("mount-sys", sys_dir)
    mount("mount-sys", b"sysfs", sys_dir, b"sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in SYS_MASKED:
        _mask(sys_dir + b"/" + name, box.at(b"/dev/null"))
    if any(view[0] != b"." for view in box.cgroup_view):  # v1: a directory per hierarchy
        cgroup = sys_dir + b"/fs/cgroup"
        _tmpfs("mount-sys", cgroup, b"mode=0755,size=4k", SANDBOX_MOUNT_FLAGS | MS_NOEXEC)
        for view in box.cgroup_view:
            os.mkdir(cgroup + b"/" + view[0], 0o555)
        for name, target in box.cgroup_links:
            os.symlink(target, cgroup + b"/" + name)
        _remount("mount-sys", cgroup, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _pivot_into(root):
    os.chdir(root)
    check("pivot-root", libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), root.decode(errors="replace"))
    check("pivot-root", libc.umount2(b".", MNT_DETACH), "the old root")
    os.chdir("/")


def build_filesystem(box, sources):
    """C: steps 1 and 3-9 (`sources`: step 2, open_bind_sources, done before the daemon's directories are
    hidden: the job's resolv.conf and hosts are in its run directory). The fresh /proc of the PID
    namespace is mounted by every profile."""
    proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if box.root:
        mount("mount-rootfs", box.root, box.root, None, MS_BIND | MS_REC)
    if box.privileged:
        mount("mount-proc", b"proc", box.at(b"/proc"), b"proc", proc_flags)
        for fd, target, read_only in sources:
            _bind(fd, box.at(target), read_only)
        if box.root:
            _pivot_into(box.root)
        return
    _mount_setattr("read-only-root", box.at(b"/"),
                   (MOUNT_ATTR_RDONLY if box.read_only else 0) | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    _build_dev(box)
    _detach("mount-proc", box.at(b"/proc"))
    mount("mount-proc", b"proc", box.at(b"/proc"), b"proc", proc_flags)
    _mask_proc(box)
    for path in (b"/tmp", b"/var/tmp"):
        if os.path.isdir(box.at(path)):
            _detach("mount-tmp", box.at(path))
            _tmpfs("mount-tmp", box.at(path), b"mode=1777," + box.tmp_size)
    _detach("mount-run", box.at(b"/run"))
    _tmpfs("mount-run", box.at(b"/run"), b"mode=0755," + box.tmp_size, SANDBOX_MOUNT_FLAGS | MS_NOEXEC)
    _build_sys(box)
    for fd, target, read_only in sources:  # last: a target below /tmp or /run lands in the job's own
        _bind(fd, box.at(target), read_only)
    if box.root:
        _pivot_into(box.root)


def mount_cgroup_view(box):
    """G, in the job's cgroup: step 10."""
    if box.privileged or not box.cgroup_view:
        return
    check("cgroup-namespace", libc.unshare(CLONE_NEWCGROUP))
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    for directory, fstype, options in box.cgroup_view:
        target = b"/sys/fs/cgroup" if directory == b"." else b"/sys/fs/cgroup/" + directory
        mount("mount-cgroup-view", fstype, target, fstype, flags, options or None)


def drop_bounding_set(box):
    """G, still root: what no exec can give back (needs CAP_SETPCAP, so before setuid)."""
    if box.privileged:
        return
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if not box.keep_caps >> cap & 1 and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == EINVAL:  # past the kernel's last capability
                break
            raise StepError("drop-capabilities", ctypes.get_errno(), f"capability {cap}")


def confine(box):
    """G, after setuid, before chdir and exec: capabilities (none left for a non-root job; the kept set for
    root, inheritable empty), no ambient ones, no_new_privs."""
    if box.privileged:
        return
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    keep = box.keep_caps if os.getuid() == 0 else 0
    low, high = keep & 0xFFFFFFFF, keep >> 32
    data = (ctypes.c_uint32 * 6)(low, low, 0, high, high, 0)  # effective, permitted, inheritable; x2
    check("drop-capabilities", libc.capset(header, data))
    check("drop-capabilities", libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    check("no-new-privileges", libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def install_seccomp(box):
    """G's last step before execve."""
    if box.privileged or not box.seccomp:
        return
    program = ctypes.create_string_buffer(box.seccomp, len(box.seccomp))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(box.seccomp) // 8, ctypes.addressof(program))
    check("seccomp", libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))
