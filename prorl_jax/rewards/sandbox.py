"""Run model-written Python programs with the host protected.

Layers, each used where the platform allows it (probed once, missing ones logged):
  * fresh PID, network and mount namespaces (`unshare`): no network (only a downed
    loopback), no view of host processes, and every process of the snippet dies with the
    namespace's init; the whole filesystem is remounted read-only inside the namespace and
    the work directory is a size-capped tmpfs (nothing written elsewhere, disk cannot fill);
  * a per-run unprivileged uid (when we are root): RLIMIT_NPROC binds, root-only files and
    other processes' /proc entries are unreadable, and `kill -1` as that uid reaps leftovers;
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

logger = logging.getLogger(__name__)

HARNESS = str(Path(__file__).with_name("_harness.py"))
# Sandbox uids are drawn from a range no real account uses, one per run, so that
# concurrent sandboxes never share an RLIMIT_NPROC count or can signal each other.
UID_RANGE = (1_500_000, 1_900_000)
# Wall seconds allowed beyond the test budget for starting and tearing down the sandbox.
STARTUP_GRACE_S = 2.0


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
    """Probe (once per process) which isolation mechanisms work here; warn about missing ones.

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
    prot = Protections(namespaces, user_ns, root, pdeathsig, unshare, setpriv)
    if not namespaces:
        logger.warning("code sandbox: no PID/network/mount namespaces (unshare unavailable or "
                       "refused): snippets can open network connections, write to world-"
                       "writable directories and escape the process-group kill")
    if not root:
        logger.warning("code sandbox: not root, cannot drop to an unprivileged uid: files of "
                       "the trainer's user are readable by snippets%s",
                       "" if namespaces else " and RLIMIT_NPROC counts all the user's processes")
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
                limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` once per test input inside the sandbox; all tests share `timeout_s`.

    Args:
      source: the Python program.
      inputs: per test, the stdin text (stdio tests) or the argument list (call tests).
      fn_name: None for stdio tests; else the function (or `Solution` method) to call.
      timeout_s: wall-clock budget for all tests together.
      output_caps: per test, the most stdout characters worth returning (longer = truncated).
      limits: resource limits (None: SandboxLimits()).

    Returns:
      A SandboxResult; `reason` is set when no per-test results exist (timeout, crash).
    """
    prot = protections()
    uid = random.randrange(*UID_RANGE) if prot.drop_uid else None
    caps = output_caps or [1 << 16] * len(inputs)
    workdir = tempfile.mkdtemp(prefix="prorl_sbx_")
    spec = {"source": source, "inputs": inputs, "fn_name": fn_name, "timeout_s": timeout_s,
            "uid": uid, "workdir": workdir, "mount": prot.namespaces, "output_caps": caps,
            "limits": dataclasses.asdict(limits or SandboxLimits()),
            "site_paths": _site_paths(), "python_roots": _python_roots()}
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
        return SandboxResult([], reason, elapsed)
    try:
        report = json.loads(out)
    except ValueError:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return SandboxResult([], f"sandbox harness failed (exit {proc.returncode}): {tail[0]}",
                             elapsed)
    for note in report["notes"]:
        _warn_once(note)
    return SandboxResult(report["results"], None, elapsed)


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
