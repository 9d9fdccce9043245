"""The launcher's few system calls that Python 3.11 lacks (unshare, mount, umount2, setrlimit, sethostname), through
ctypes on libc, and the error every launcher step raises. Stdlib only: see __main__.py."""

import ctypes

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
MNT_DETACH = 2
EINVAL, ENOENT = 22, 2
RLIMIT_NOFILE = 7

libc = ctypes.CDLL(None, use_errno=True)


class StepError(Exception):
    """A launcher step failed: reported to the daemon as 'fail STEP ERRNO DETAIL'."""

    def __init__(self, step, err, detail=""):
        super().__init__(step)
        self.step, self.err, self.detail = step, err, detail


def check(step, result, detail=""):
    if result != 0:
        raise StepError(step, ctypes.get_errno(), detail)


def mount(step, source, target, fstype, flags, data=None):
    check(step, libc.mount(source, target, fstype, flags, data), target.decode(errors="replace"))


def hide(path):
    """Make `path` show nothing of the host in this (private) mount namespace. A mount point is detached,
    so not even root in the job can reach the filesystem behind it by unmounting a cover; any other
    directory is covered with an empty read-only tmpfs."""
    if libc.umount2(path, MNT_DETACH) == 0:
        return
    if ctypes.get_errno() == ENOENT:  # nothing there to hide
        return
    if ctypes.get_errno() != EINVAL:  # EINVAL: not a mount point
        raise StepError("hide-path", ctypes.get_errno(), path.decode(errors="replace"))
    mount("hide-path", b"none", path, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=0755")


def lower_soft_nofile(soft):
    """The daemon lifts its own soft fd limit for its many pipes; jobs get the usual soft limit back
    (1024, as systemd gives services: select() breaks above it), the hard limit unchanged."""
    limit = (ctypes.c_ulong * 2)()
    if libc.getrlimit(RLIMIT_NOFILE, limit) == 0 and limit[0] > soft:
        limit[0] = min(soft, limit[1])
        libc.setrlimit(RLIMIT_NOFILE, limit)


def set_hostname(name):
    check("set-hostname", libc.sethostname(name, len(name)), name.decode(errors="replace"))
