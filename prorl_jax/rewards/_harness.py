"""Runs model-written Python against test inputs inside the sandbox. Standalone script.

Started by `sandbox.py` as `python -I -S _harness.py` (usually as PID 1 of fresh PID, network
and mount namespaces); it imports nothing from prorl_jax so that it works under `-I` and
exposes nothing of the trainer. It reads one JSON spec on stdin and writes one JSON report
on stdout. The harness itself stays root (so the snippet cannot kill or ptrace it); each
test case runs in a forked child that sets rlimits and drops to the sandbox uid before the
snippet's first instruction.

The report carries the raw stdout / return value of every test; the expected outputs never
enter the sandbox, so the snippet cannot forge a pass without producing the right answer.
"""

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
_FLAG_BITS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _mount(libc, source, target, fstype, flags, data):
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    if libc.mount(*args, flags, None if data is None else data.encode()) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), target)


def _mount_points():
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # Mount points escape spaces etc. as octal (\040).
            path = fields[4].encode().decode("unicode_escape")
            flags = 0
            for opt in fields[5].split(","):
                flags |= _FLAG_BITS.get(opt, 0)
            points.append((path, flags))
    return points


def setup_mounts(spec, notes):
    """Make every mount read-only (in this private namespace only) and put a size-capped
    tmpfs on the work directory, so the snippet can write nowhere else and not fill the disk."""
    libc = _libc()
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)
    for path, flags in _mount_points():
        try:
            _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
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
    _mount(libc, root, stage, None, MS_BIND | MS_REC, None)
    _mount(libc, "tmpfs", private, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(root)
    _mount(libc, stage, root, None, MS_BIND | MS_REC, None)
    _mount(libc, None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    _mount(libc, None, private, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    if libc.umount2(stage.encode(), 2) != 0:  # MNT_DETACH
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), stage)
    os.rmdir(stage)


def _jsonable(value):
    # Sets and other containers become lists so they can be compared after the round trip.
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def _drop_privileges(spec, cpu_s):
    lim = spec["limits"]
    for res, val in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, lim["memory_bytes"]),
                     (resource.RLIMIT_FSIZE, lim["file_bytes"]),
                     (resource.RLIMIT_NOFILE, lim["open_files"]),
                     (resource.RLIMIT_NPROC, lim["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (val, val))
    # no_new_privs: setuid binaries (su, sudo, ping) cannot give the snippet privileges back.
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    uid = spec["uid"]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _child(spec, test_input, fds, cpu_s):
    """In the forked child: become the snippet. Never returns."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(len(fds), 1 << 16)
        _drop_privileges(spec, cpu_s)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        sys.argv = ["solution.py"]
        program = compile(spec["source"], "solution.py", "exec")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        if spec["fn_name"] is None:
            exec(program, namespace)
        else:
            namespace["__name__"] = "solution"
            exec(program, namespace)
            fn = namespace.get(spec["fn_name"])
            if fn is None and "Solution" in namespace:
                fn = getattr(namespace["Solution"](), spec["fn_name"])
            args = test_input if isinstance(test_input, list) else [test_input]
            value = fn(*args)
            with open(3, "w", closefd=False) as res:
                res.write(json.dumps(value, default=_jsonable))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    os._exit(code & 0xFF)


def kill_uid(uid):
    """Kill every process of the sandbox uid (in this PID namespace), e.g. leftovers of a test."""
    if uid is None:
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _wait_exit(pid, timeout):
    """Wait up to `timeout` s for child `pid` to exit (without reaping it); True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        # Kernels before 5.3 have no pidfd: poll instead.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.002)
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)


def _fresh_file(path):
    """Create `path` anew for the harness (root). The snippet owns the work directory and may
    have planted a symlink or link under this name: remove it and refuse to follow one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _pread_all(fd, size, offset):
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size, offset = size - len(chunk), offset + len(chunk)
    return b"".join(chunks)


def _head(fd, cap):
    """First `cap` bytes as text, and whether there was more. Reads through the harness's own
    descriptor, never by path, so a swapped file cannot be read instead."""
    data = _pread_all(fd, cap + 1, 0)
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def _tail(fd, size):
    end = os.fstat(fd).st_size
    return _pread_all(fd, size, max(0, end - size)).decode("utf-8", "replace")


def run_one(spec, index, test_input, remaining):
    """Run test `index` in a fresh forked child with `remaining` wall seconds."""
    paths = [f"{k}_{index}" for k in ("in", "out", "err", "res")]
    stdin_text = "\n".join(map(str, test_input)) if isinstance(test_input, list) else str(test_input)
    if spec["fn_name"] is not None:
        stdin_text = ""
    fds = [_fresh_file(p) for p in paths]
    data = stdin_text.encode("utf-8")
    while data:
        data = data[os.write(fds[0], data):]
    os.lseek(fds[0], 0, os.SEEK_SET)
    cpu_s = max(1, int(remaining) + 1)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(spec, test_input, fds, cpu_s)
    timed_out = not _wait_exit(pid, remaining)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    kill_uid(spec["uid"])
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    cap = spec["output_caps"][index]
    out, truncated = _head(fds[1], cap)
    res, res_truncated = _head(fds[3], cap)
    result = {"elapsed": time.monotonic() - start, "stdout": out,
              "truncated": truncated or res_truncated, "stderr_tail": _tail(fds[2], 500),
              "value": res}
    for fd in fds:
        os.close(fd)
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    if timed_out:
        result["status"] = "timeout"
    elif os.WIFSIGNALED(status):
        result["status"] = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        code = os.WEXITSTATUS(status)
        result["status"] = "ok" if code == 0 else f"exit code {code}"
    return result


# Imported before forking so snippets can use them even where the Python installation is
# unreadable for the sandbox uid (no mount namespace), and without per-test import cost.
_PRELOAD = ("array", "bisect", "collections", "copy", "fractions", "functools", "heapq", "io",
            "itertools", "math", "operator", "random", "re", "string")


def _quit(code=None):
    raise SystemExit(code)


def main():
    spec = json.loads(sys.stdin.buffer.read())
    notes = []
    # Started with -S (site's .pth processing costs ~0.1 s per run): give snippets the
    # installed packages and the exit()/quit() builtins that site would have provided.
    sys.path.extend(spec["site_paths"])
    builtins.exit = builtins.quit = _quit
    for name in _PRELOAD:
        __import__(name)
    if spec["mount"]:
        setup_mounts(spec, notes)
    elif spec["uid"] is not None:
        os.chown(spec["workdir"], spec["uid"], spec["uid"])
    os.chdir(spec["workdir"])
    deadline = time.monotonic() + spec["timeout_s"]
    results = []
    for index, test_input in enumerate(spec["inputs"]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            results.append({"status": "timeout", "elapsed": 0.0})
            break
        results.append(run_one(spec, index, test_input, remaining))
        if results[-1]["status"] == "timeout":
            break
    sys.stdout.write(json.dumps({"results": results, "notes": notes}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
