"""The sandbox's filesystem view, set up by `_harness.py` inside its private mount namespace.
Standalone (stdlib only).

`enter_minimal_root` (the default) builds a new root on an empty tmpfs, bind-mounts into it
read-only only what a Python program needs (the OS's /usr and /lib*, the interpreter's
installation and its site-packages), gives it a private tmpfs for its working directory, /tmp
and /dev/shm, a /dev with null, zero and urandom, a procfs of its own PID namespace, then
`pivot_root`s into it and detaches the host's tree. Nothing else of the host exists inside:
no socket file (D-Bus, journald, X11, Ray, Jupyter), no /home, /root, /run, /var or checkout.

`remount_readonly` is the older, weaker view used when the kernel refuses the first: the
whole host tree read-only, a tmpfs working directory. Host socket files stay reachable there
(`connect()` ignores read-only mounts); the seccomp filter is then the only thing in the way.
"""

import ctypes
import os

import _seccomp

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_STRICTATIME = 16384, 1 << 18, 1 << 24
MNT_DETACH, AT_FDCWD, AT_RECURSIVE = 2, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
_FLAG_BITS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME}
# Inside the minimal root: the snippet's working directory, and the /dev entries it gets.
WORKDIR = "/sandbox"
DEVICES = ("null", "zero", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(ret, libc_errno, what):
    if ret != 0:
        raise OSError(libc_errno(), f"{what}: {os.strerror(libc_errno())}")


def _mount(libc, source, target, fstype, flags, data=None):
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    _check(libc.mount(*args, flags, None if data is None else data.encode()), ctypes.get_errno,
           f"mount {target}")


def _umount(libc, target):
    _check(libc.umount2(target.encode(), MNT_DETACH), ctypes.get_errno, f"umount {target}")


def mount_points():
    """(mount point, flags that must be kept on a remount) for every mount in this namespace."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # Mount points escape spaces etc. as octal (\040).
            path = fields[4].encode().decode("unicode_escape")
            opts = fields[5].split(",")
            flags = MS_STRICTATIME if "relatime" not in opts and "noatime" not in opts else 0
            for opt in opts:
                flags |= _FLAG_BITS.get(opt, 0)
            points.append((path, flags))
    return points


def remount_readonly(spec, notes):
    """Make every mount read-only (in this private namespace only) and put a size-capped
    tmpfs on the work directory, so the snippet can write nowhere else and not fill the disk."""
    libc = _libc()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for path, flags in mount_points():
        try:
            _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            notes.append(f"could not make {path} read-only: {e.strerror}")
    opts = f"size={spec['limits']['disk_bytes']},mode=0700"
    if spec["uid"] is not None:
        opts += f",uid={spec['uid']},gid={spec['uid']}"
    _mount(libc, "tmpfs", spec["workdir"], "tmpfs", MS_NOSUID | MS_NODEV, opts)
    for root in spec["python_roots"]:
        try:
            _expose(libc, root, spec["workdir"])
        except OSError as e:
            notes.append(f"could not expose {root} to the sandbox uid: {e.strerror}")
    return spec["workdir"]


def _private_ancestor(path):
    """The outermost ancestor of `path` that others cannot traverse (e.g. a 0700 /root)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _expose(libc, root, workdir):
    """Make the Python installation at `root` reachable for the sandbox uid when it sits
    below a private directory: hide that directory behind an empty read-only tmpfs and
    bind-mount just the installation back at its own path."""
    private = _private_ancestor(root)
    if private is None or not os.path.isdir(root):
        return
    stage = os.path.join(workdir, ".stage")
    os.mkdir(stage)
    _mount(libc, root, stage, None, MS_BIND | MS_REC)
    _mount(libc, "tmpfs", private, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(root)
    _mount(libc, stage, root, None, MS_BIND | MS_REC)
    _mount(libc, None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    _mount(libc, None, private, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _umount(libc, stage)
    os.rmdir(stage)


def _readonly_tree(libc, target):
    """Make the mount at `target` and every mount below it read-only, nosuid, nodev."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    nr = _seccomp.SYSCALLS.get(_seccomp.machine(), {}).get("mount_setattr")
    if nr is not None:
        ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), target.encode(),
                           ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
        if ret == 0:
            return
        if ctypes.get_errno() not in (38, 22):  # ENOSYS / EINVAL: kernels before 5.12
            _check(ret, ctypes.get_errno, f"mount_setattr {target}")
    # Older kernels: one remount per mount, keeping the flags a user namespace locks.
    for path, flags in mount_points():
        if path == target or path.startswith(target + "/"):
            _mount(libc, None, path, None,
                   MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | flags)


def _bind_readonly(libc, source, target):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "x").close()
    _mount(libc, source, target, None, MS_BIND | MS_REC)
    _readonly_tree(libc, target)


def _plan(spec):
    """Host paths to bind read-only (outermost first, none below another) and host symlinks
    to recreate (e.g. a merged-/usr /lib -> usr/lib)."""
    binds, links = [], {}
    for path in spec["system_paths"]:
        if os.path.islink(path):
            links[path] = os.readlink(path)
        elif os.path.exists(path):
            binds.append(path)
    binds += [p for p in spec["python_roots"] if os.path.exists(p)]
    binds = sorted(set(binds), key=len)
    kept = []
    for path in binds:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept, links


def enter_minimal_root(spec):
    """Build the minimal tree on the (empty) host directory spec["workdir"] and pivot into it.
    The caller's working directory becomes WORKDIR. Raises OSError on any refusal (the
    harness then fails closed: the run scores 0)."""
    libc = _libc()
    root = spec["workdir"]
    uid = spec["uid"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    # One size-capped tmpfs holds the working directory, /tmp and /dev/shm: one disk budget.
    scratch = os.path.join(root, ".scratch")
    os.mkdir(scratch)
    _mount(libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={spec['limits']['disk_bytes']},mode=0755")
    for name, mode in (("work", 0o700), ("tmp", 0o1777), ("shm", 0o1777)):
        os.mkdir(os.path.join(scratch, name))
        os.chmod(os.path.join(scratch, name), mode)
    if uid is not None:
        os.chown(os.path.join(scratch, "work"), uid, uid)
    dev = os.path.join(root, "dev")
    os.mkdir(dev)
    _mount(libc, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        open(os.path.join(dev, name), "x").close()
        _mount(libc, f"/dev/{name}", os.path.join(dev, name), None, MS_BIND)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))
    for sub, target in (("work", root + WORKDIR), ("tmp", root + "/tmp"),
                        ("shm", dev + "/shm")):
        os.mkdir(target)
        _mount(libc, os.path.join(scratch, sub), target, None, MS_BIND)
    os.mkdir(os.path.join(root, "proc"))
    # Needs the fully visible procfs `unshare --mount-proc` put on /proc (user namespaces).
    _mount(libc, "proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    binds, links = _plan(spec)
    for path, target in links.items():
        os.symlink(target, root + path)
    for path in binds:
        _bind_readonly(libc, path, root + path)
    _umount(libc, scratch)  # the binds above keep the tmpfs alive
    os.rmdir(scratch)
    # pivot_root(".", "."): the old root ends up stacked on the new one; detach it, and with
    # it every host mount. No path, '..' or /proc/<pid>/root leads back afterwards.
    os.chdir(root)
    nr = _seccomp.syscall_number("pivot_root")
    _check(libc.syscall(ctypes.c_long(nr), b".", b"."), ctypes.get_errno, "pivot_root")
    _umount(libc, ".")
    os.chdir("/")
    for path in ("/", "/dev"):
        _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
               | MS_NODEV * (path == "/") | MS_NOEXEC * (path == "/dev"))
    return WORKDIR
