"""Runs model-written Python against test inputs inside the sandbox. Standalone script.

Started by `sandbox.py` as `python -I -S _harness.py` (usually as PID 1 of fresh PID, network
and mount namespaces); it imports nothing from prorl_jax so that it works under `-I` and
exposes nothing of the trainer (only its sibling helpers _mounts.py and _seccomp.py). It reads
one JSON spec on stdin, builds the filesystem view (`_mounts`: a minimal root it pivots into,
or the older read-only host view), and writes one JSON report on stdout. The harness itself
stays root (so the snippet cannot kill or ptrace it); each test case runs in a forked child
that sets rlimits, drops to the sandbox uid and every capability, sets no_new_privs and loads
the seccomp filter (`_seccomp`) before the snippet's first instruction.

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

PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 38, 4, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _load_siblings():
    """Import the mount and seccomp helpers from this file's directory. `-I` keeps that
    directory off sys.path, and it must not stay there: the snippet would see it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import _mounts
        import _seccomp
    finally:
        sys.path.remove(here)
    return _mounts, _seccomp


_mounts, _seccomp = _load_siblings()


def _jsonable(value):
    # Sets and other containers become lists so they can be compared after the round trip.
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def _drop_capabilities(libc):
    """Empty the bounding, ambient and current capability sets. As root the uid drop clears
    the current ones anyway; as root of a user namespace (no uid to drop to) this is what
    keeps the snippet from remounting, unmounting or ptracing. An empty bounding set means no
    later exec (setuid file, file capabilities, uid 0) can get one back."""
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last cap; EPERM unprivileged
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset: " + os.strerror(ctypes.get_errno()))


def _drop_privileges(spec, cpu_s, seccomp_program):
    lim = spec["limits"]
    for res, val in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, lim["memory_bytes"]),
                     (resource.RLIMIT_FSIZE, lim["file_bytes"]),
                     (resource.RLIMIT_NOFILE, lim["open_files"]),
                     (resource.RLIMIT_NPROC, lim["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (val, val))
    libc = ctypes.CDLL(None, use_errno=True)
    uid = spec["uid"]
    if uid is not None:
        for cap in range(64):  # while we still hold CAP_SETPCAP
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _drop_capabilities(libc)
    # no_new_privs: setuid binaries (su, sudo, ping) cannot give the snippet privileges back;
    # it also lets an unprivileged process load a seccomp filter.
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs refused")
    if seccomp_program is not None:
        try:
            _seccomp.install(seccomp_program)
        except OSError:
            if spec["strict"]:
                raise  # the probe said it works: fail closed (this test scores 0)


def _child(spec, test_input, fds, cpu_s, seccomp_program):
    """In the forked child: become the snippet. Never returns."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(len(fds), 1 << 16)
        _drop_privileges(spec, cpu_s, seccomp_program)
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


def run_one(spec, index, test_input, remaining, seccomp_program=None):
    """Run test `index` in a fresh forked child with `remaining` wall seconds."""
    paths = [f"{k}_{index}" for k in ("in", "out", "err", "res")]
    stdin_text = "\n".join(map(str, test_input)) if isinstance(test_input, list) else str(test_input)
    if spec["fn_name"] is not None:
        stdin_text = ""
    fds = [_fresh_file(p) for p in paths]
    # The uid may reopen its own stdin by name (open('/dev/stdin') -> /proc/self/fd/0).
    os.fchmod(fds[0], 0o644)
    data = stdin_text.encode("utf-8")
    while data:
        data = data[os.write(fds[0], data):]
    os.lseek(fds[0], 0, os.SEEK_SET)
    cpu_s = max(1, int(remaining) + 1)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(spec, test_input, fds, cpu_s, seccomp_program)
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
    # A snippet running as our own uid (user-namespace mode) must not read our memory.
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    workdir, fs = spec["workdir"], spec["fs"]
    if fs == "minimal":
        try:
            workdir = _mounts.enter_minimal_root(spec)
        except OSError as e:
            if spec["strict"]:
                raise  # the probe said it works: fail closed (the run scores 0)
            notes.append(f"minimal root refused: {e}")
            fs = None
    elif fs == "readonly":
        workdir = _mounts.remount_readonly(spec, notes)
    elif spec["uid"] is not None:
        os.chown(workdir, spec["uid"], spec["uid"])
    os.chdir(workdir)
    program = _seccomp.build() if spec["seccomp"] else None
    deadline = time.monotonic() + spec["timeout_s"]
    results = []
    for index, test_input in enumerate(spec["inputs"]):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            results.append({"status": "timeout", "elapsed": 0.0})
            break
        results.append(run_one(spec, index, test_input, remaining, program))
        if results[-1]["status"] == "timeout":
            break
    sys.stdout.write(json.dumps({"results": results, "notes": notes, "fs": fs}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
