"""Run model-written Python programs with the host protected.

Layers, each used where the platform allows it (probed once, active and missing ones logged):
  * fresh PID, network and mount namespaces (`unshare`): no network (only a downed
    loopback), no abstract sockets of the host, no view of host processes, and every process
    of the snippet dies with the namespace's init;
  * a minimal root (`_mounts.enter_minimal_root`, `pivot_root`): only the OS's /usr and /lib*,
    the interpreter and its site-packages, read-only; a private size-capped tmpfs for the
    working directory, /tmp and /dev/shm; /dev with null, zero, urandom; its own /proc.
    No host socket file, /run, /tmp, /home, /root or checkout exists inside. Where the kernel
    refuses it, the older view: the host tree remounted read-only, a tmpfs work directory;
  * a seccomp filter (`_seccomp`): no socket(), connect(), bind(), ptrace, mount, unshare,
    setns, keyctl, bpf, io_uring and other kernel surface a Python program does not need;
  * a per-run unprivileged uid (when we are root): RLIMIT_NPROC binds, root-only files and
    other processes' /proc entries are unreadable, and `kill -1` as that uid reaps leftovers;
    every capability dropped (also as root of a user namespace), no_new_privs;
  * rlimits on CPU time, address space, file size, open files and processes;
  * an empty environment, a fresh temporary directory, a new session killed as a group, and
    a parent-death signal so an abandoned sandbox dies with the process that started it.
See docs/rewards.md for what each protection defends against.
"""

import dataclasses
import functools
import json
import logging
import os
import random
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prorl_jax.rewards import _seccomp

logger = logging.getLogger(__name__)

HARNESS = str(Path(__file__).with_name("_harness.py"))
# Sandbox uids are drawn from a range no real account uses, one per run, so that
# concurrent sandboxes never share an RLIMIT_NPROC count or can signal each other.
UID_RANGE = (1_500_000, 1_900_000)
# Wall seconds allowed beyond the test budget for starting and tearing down the sandbox.
STARTUP_GRACE_S = 2.0
# Host paths the minimal root shows (read-only) besides the Python installation: the shared
# libraries the interpreter and its extension modules load, and the loader's cache. Symlinks
# among them (merged /usr: /lib -> usr/lib) are recreated, missing ones skipped.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                "/etc/ld.so.cache")
# Run once by protections(): reports whether the seccomp filter is loaded and denies socket().
_PROBE = ("import socket\ntry:\n    socket.socket(socket.AF_UNIX)\n    print('open')\n"
          "except PermissionError:\n    status = open('/proc/self/status').read()\n"
          "    print('seccomp' if 'Seccomp:\\t2' in status else 'denied')\n")


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run (per process where the kernel counts so)."""

    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64
    processes: int = 16
    disk_bytes: int = 64 << 20


@dataclasses.dataclass(frozen=True)
class Protections:
    """Which isolation mechanisms this host supports (see `protections()`)."""

    namespaces: bool       # PID + network + mount namespaces, read-only host fs, tmpfs workdir
    user_namespace: bool   # namespaces obtained through an unprivileged user namespace
    drop_uid: bool         # snippet runs as an unprivileged per-run uid
    pdeathsig: bool        # sandbox dies if the scoring process dies
    unshare: str | None
    setpriv: str | None
    minimal_root: bool = False  # pivot_root into a tree of only what Python needs
    seccomp: bool = False       # seccomp filter on sockets, ptrace, mount, namespaces, ...


@dataclasses.dataclass
class SandboxResult:
    """Outcome of one run: per-test raw results (see _harness.run_one) or a failure reason."""

    tests: list[dict]
    reason: str | None
    elapsed: float


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, env={}, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def protections() -> Protections:
    """Probe (once per process) which isolation mechanisms work here; log the active layers
    and warn about missing ones.

    Returns:
      A `Protections` record.
    """
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    root = os.geteuid() == 0
    ns_flags = ["-n", "-p", "-f", "-m", "--mount-proc"]
    namespaces = user_ns = False
    if unshare:
        namespaces = _works([unshare, *ns_flags, "true"]) if root else False
        if not namespaces:
            user_ns = namespaces = _works([unshare, "-U", "-r", *ns_flags, "true"])
    pdeathsig = bool(setpriv) and _works([setpriv, "--pdeathsig", "KILL", "true"])
    prot = Protections(namespaces, user_ns, root, pdeathsig, unshare, setpriv,
                       minimal_root=namespaces, seccomp=_seccomp.supported())
    # The last two are tried for real, once, on a harmless program (failures only noted).
    result, fs = _run(_PROBE, [""], None, 10.0, None, SandboxLimits(), prot, strict=False)
    out = result.tests[0]["stdout"].strip() if result.tests else ""
    prot = dataclasses.replace(prot, minimal_root=fs == "minimal", seccomp=out == "seccomp")
    if result.reason:
        logger.warning("code sandbox: probe run failed (%s)", result.reason)
    logger.info("code sandbox layers: namespaces=%s (user namespace: %s), minimal root=%s, "
                "seccomp=%s, uid drop=%s, pdeathsig=%s", prot.namespaces, prot.user_namespace,
                prot.minimal_root, prot.seccomp, prot.drop_uid, prot.pdeathsig)
    if not namespaces:
        logger.warning("code sandbox: no PID/network/mount namespaces (unshare unavailable or "
                       "refused): snippets can open network connections, write to world-"
                       "writable directories and escape the process-group kill")
    elif not prot.minimal_root:
        logger.warning("code sandbox: the kernel refused the minimal root (pivot_root/bind "
                       "mounts): snippets see the host filesystem read-only, socket files "
                       "(D-Bus, X11, Ray under /tmp) included%s",
                       "; the seccomp filter still denies socket()" if prot.seccomp else "")
    if not prot.seccomp:
        logger.warning("code sandbox: no seccomp filter (%s): sockets, ptrace, unshare, "
                       "keyctl, bpf, io_uring stay open to snippets",
                       "refused by the kernel" if _seccomp.supported()
                       else f"no syscall table for {_seccomp.machine()}")
    if not root:
        logger.warning("code sandbox: not root, cannot drop to an unprivileged uid%s",
                       ": files readable by the trainer's user inside the allowed tree are "
                       "readable by snippets" if prot.minimal_root else
                       ": files of the trainer's user are readable by snippets"
                       + ("" if namespaces else " and RLIMIT_NPROC counts all the user's "
                          "processes"))
    if not pdeathsig:
        logger.warning("code sandbox: setpriv --pdeathsig unavailable: a sandbox outlives a "
                       "scoring process that is killed while it runs")
    return prot


def _command(prot: Protections) -> list[str]:
    cmd = []
    if prot.pdeathsig:
        cmd += [prot.setpriv, "--pdeathsig", "KILL"]
    if prot.namespaces:
        cmd += [prot.unshare, "--kill-child=SIGKILL"]
        if prot.user_namespace:
            cmd += ["-U", "-r"]
        cmd += ["-n", "-p", "-f", "-m", "--mount-proc"]
    return cmd + [sys.executable, "-I", "-S", HARNESS]


def _kill_uid(prot: Protections, uid: int | None) -> None:
    """Without a PID namespace, leftovers (e.g. setsid daemons) are found by their uid."""
    if uid is None or prot.namespaces or not prot.setpriv:
        return
    subprocess.run([prot.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    "kill", "-KILL", "-1"], env={}, capture_output=True, timeout=10)


def run_program(source: str, inputs: list, *, fn_name: str | None = None,
                timeout_s: float = 5.0, output_caps: list[int] | None = None,
                limits: SandboxLimits | None = None,
                layers: Protections | None = None) -> SandboxResult:
    """Run `source` once per test input inside the sandbox; all tests share `timeout_s`.

    Args:
      source: the Python program.
      inputs: per test, the stdin text (stdio tests) or the argument list (call tests).
      fn_name: None for stdio tests; else the function (or `Solution` method) to call.
      timeout_s: wall-clock budget for all tests together.
      output_caps: per test, the most stdout characters worth returning (longer = truncated).
      limits: resource limits (None: SandboxLimits()).
      layers: the protections to use (None: all that `protections()` found; a subset only
        to measure or test a layer's effect).

    Returns:
      A SandboxResult; `reason` is set when no per-test results exist (timeout, crash). A
      layer the probe found but that fails in this run fails the run (closed, not open).
    """
    prot = layers or protections()
    return _run(source, inputs, fn_name, timeout_s, output_caps, limits or SandboxLimits(),
                prot, strict=True)[0]


def _run(source, inputs, fn_name, timeout_s, output_caps, limits, prot, *, strict):
    """One harness run; returns (SandboxResult, the filesystem view the harness built)."""
    uid = random.randrange(*UID_RANGE) if prot.drop_uid else None
    caps = output_caps or [1 << 16] * len(inputs)
    workdir = tempfile.mkdtemp(prefix="prorl_sbx_")
    fs = ("minimal" if prot.minimal_root else "readonly") if prot.namespaces else None
    spec = {"source": source, "inputs": inputs, "fn_name": fn_name, "timeout_s": timeout_s,
            "uid": uid, "workdir": workdir, "fs": fs, "seccomp": prot.seccomp,
            "strict": strict, "output_caps": caps, "limits": dataclasses.asdict(limits),
            "site_paths": _site_paths(), "python_roots": _python_roots(),
            "system_paths": list(SYSTEM_PATHS)}
    start = time.monotonic()
    proc = subprocess.Popen(_command(prot), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={}, cwd="/", start_new_session=True)
    reason = None
    try:
        out, err = proc.communicate(json.dumps(spec).encode(), timeout=timeout_s + STARTUP_GRACE_S)
    except subprocess.TimeoutExpired:
        reason = f"sandbox exceeded {timeout_s + STARTUP_GRACE_S:.1f} s and was killed"
        out = err = b""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if proc.poll() is None:
            proc.kill()
        if reason is not None:
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("code sandbox: pid %d did not exit after SIGKILL", proc.pid)
        _kill_uid(prot, uid)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - start
    if reason is not None:
        return SandboxResult([], reason, elapsed), None
    try:
        report = json.loads(out)
    except ValueError:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return SandboxResult([], f"sandbox harness failed (exit {proc.returncode}): {tail[0]}",
                             elapsed), None
    for note in report["notes"]:
        _warn_once(note)
    return SandboxResult(report["results"], None, elapsed), report["fs"]


@functools.cache
def _site_paths() -> list[str]:
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


@functools.cache
def _python_roots() -> list[str]:
    # The interpreter's installation, and site-packages directories outside it.
    roots = [os.path.realpath(sys.base_prefix)]
    for path in map(os.path.realpath, _site_paths()):
        if not any(path.startswith(r + os.sep) for r in roots):
            roots.append(path)
    return roots


@functools.cache
def _warn_once(note: str) -> None:
    logger.warning("code sandbox setup: %s", note)
