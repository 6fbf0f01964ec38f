"""The sandbox's filesystem view and seccomp filter (issue 17): host unix sockets, host paths
and kernel surface are out of reach; each layer is checked alone, and a control run without
them shows the attack would otherwise work (so the checks can fail)."""

import dataclasses
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from prorl_jax.rewards import _seccomp, code_reward, sandbox

PROT = sandbox.protections()
REPO = Path(__file__).resolve().parents[2]
BUDGET_S = 2.0
needs_root_fs = pytest.mark.skipif(not PROT.minimal_root, reason="minimal root refused here")
needs_seccomp = pytest.mark.skipif(not PROT.seccomp, reason="seccomp filter unavailable here")


class HostSockets:
    """Unix sockets a host service would own: stream sockets (mode 0777) in /tmp, in a
    world-accessible directory under /run (a temp dir when /run is not writable) and in the
    abstract namespace, and a datagram socket in /tmp (like journald's). A thread accepts and
    receives, recording every connection or datagram by name."""

    def __init__(self):
        tag = uuid.uuid4().hex[:8]
        try:
            self.run_dir = tempfile.mkdtemp(prefix="prorl_host_", dir="/run")
        except OSError:
            self.run_dir = tempfile.mkdtemp(prefix="prorl_host_")
        os.chmod(self.run_dir, 0o777)
        self.paths = {"tmp": f"/tmp/prorl_host_{tag}.sock",
                      "run": os.path.join(self.run_dir, "service.sock"),
                      "abstract": f"\0prorl_host_{tag}"}
        self.dgram_path = f"/tmp/prorl_host_{tag}.dgram"
        self.socks, self.hits = {}, []
        for name, path in self.paths.items():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            if not path.startswith("\0"):
                os.chmod(path, 0o777)
            s.listen(8)
            self.socks[s] = name
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        d.bind(self.dgram_path)
        os.chmod(self.dgram_path, 0o777)
        self.socks[d] = "dgram"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self):
        while not self._done.is_set():
            ready, _, _ = select.select(list(self.socks), [], [], 0.05)
            for s in ready:
                if s.type == socket.SOCK_DGRAM:
                    s.recv(4096)
                else:
                    s.accept()[0].close()
                self.hits.append(self.socks[s])

    def close(self):
        self._done.set()
        self._thread.join()
        for s in self.socks:
            s.close()
        for path in [*self.paths.values(), self.dgram_path]:
            if not path.startswith("\0"):
                os.unlink(path)
        os.rmdir(self.run_dir)

    def attack(self) -> str:
        """A snippet that tries every socket and prints 'pwned' if any connection or datagram
        went through (its errors go to stderr, so they show up in the verdict's reason)."""
        return (f"import socket, sys\npaths = {json.dumps(self.paths)}\nhits, errors = [], []\n"
                "for name, path in paths.items():\n    try:\n"
                "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "        s.settimeout(0.5)\n        s.connect(path)\n        hits.append(name)\n"
                "    except OSError as e:\n        errors.append(f'{name}: {e!r}')\n"
                "for make in (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),\n"
                "             lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0],\n"
                "             lambda: socket.socketpair()[0]):\n    try:\n"
                f"        make().sendto(b'x', {self.dgram_path!r})\n        hits.append('dgram')\n"
                "    except OSError as e:\n        errors.append(f'dgram: {e!r}')\n"
                "print('pwned' if hits else 'safe')\nprint(hits, errors, file=sys.stderr)")


@pytest.fixture
def host_sockets():
    h = HostSockets()
    yield h
    h.close()


def _score(src, expected, layers):
    return code_reward.score(f"```python\n{src}\n```", {"inputs": [""], "outputs": [expected]},
                             timeout_s=BUDGET_S, layers=layers)


LAYERS = {
    "all layers": (PROT, PROT.minimal_root or PROT.seccomp),
    "minimal root alone": (dataclasses.replace(PROT, seccomp=False), PROT.minimal_root),
    "seccomp alone": (dataclasses.replace(PROT, minimal_root=False), PROT.seccomp),
}


@pytest.mark.parametrize("which", list(LAYERS))
def test_host_unix_sockets_unreachable(host_sockets, which):
    layers, available = LAYERS[which]
    if not available:
        pytest.skip(f"{which}: not available on this host")
    v = _score(host_sockets.attack(), "pwned", layers)
    assert v.reward == 0.0, v
    assert "wrong output" in v.reason
    assert host_sockets.hits == []


def test_control_unix_sockets_reachable_without_the_new_layers(host_sockets):
    # The pre-issue-17 sandbox (read-only host tree, no seccomp): the same attack gets through
    # to the filesystem sockets, which is what the tests above must be able to catch.
    old = dataclasses.replace(PROT, minimal_root=False, seccomp=False)
    v = _score(host_sockets.attack(), "pwned", old)
    assert v.reward == 1.0, v
    assert {"tmp", "run", "dgram"} <= set(host_sockets.hits)
    if PROT.namespaces:  # abstract sockets belong to the network namespace
        assert "abstract" not in host_sockets.hits


def _allowed_roots() -> list[str]:
    roots = [*sandbox._python_roots(), *(p for p in sandbox.SYSTEM_PATHS if os.path.lexists(p))]
    return [*roots, "/tmp", "/dev", "/proc", "/sandbox"]


def _allowed_children(path: str) -> set[str]:
    """Entries of `path` inside the minimal root that lead to an allowed root."""
    out = set()
    for root in _allowed_roots():
        if root.startswith(path.rstrip("/") + "/"):
            out.add(root[len(path.rstrip("/")) + 1:].split("/")[0])
    return out


@needs_root_fs
def test_host_paths_missing_or_empty():
    canary_dir = Path(tempfile.mkdtemp(prefix="prorl_visible_"))  # in the host's /tmp
    (canary_dir / "canary.txt").write_text("host")
    os.chmod(canary_dir, 0o755)
    paths = ["/", "/tmp", "/run", "/var/run", "/var", "/home", "/root", "/mnt", "/opt", "/srv",
             "/etc", "/dev", "/work", str(REPO), str(canary_dir), f"/proc/{os.getpid()}"]
    reads = [str(REPO / "pyproject.toml"), str(canary_dir / "canary.txt"), "/etc/passwd",
             "/etc/hostname", "/run/dbus/system_bus_socket"]
    src = (f"import json, os\nout = {{}}\nfor p in {paths!r}:\n    try:\n"
           "        out[p] = sorted(os.listdir(p))\n    except OSError as e:\n"
           "        out[p] = type(e).__name__\n"
           f"for p in {reads!r}:\n    try:\n        open(p).read(1)\n        out['read ' + p] = 'read'\n"
           "    except OSError as e:\n        out['read ' + p] = type(e).__name__\n"
           "print(json.dumps(out))")
    try:
        result = sandbox.run_program(src, [""], timeout_s=BUDGET_S)
    finally:
        (canary_dir / "canary.txt").unlink()
        canary_dir.rmdir()
    assert result.reason is None and result.tests[0]["status"] == "ok", result
    seen = json.loads(result.tests[0]["stdout"])
    for p in paths:
        if p == "/":
            assert set(seen[p]) <= _allowed_children("/") | {"etc"}, seen[p]
        elif p == "/dev":
            assert set(seen[p]) == {"null", "zero", "urandom", "shm", "fd", "stdin", "stdout",
                                    "stderr"}, seen[p]
        elif p == "/etc":
            assert set(seen[p]) <= {"ld.so.cache"}, seen[p]
        elif isinstance(seen[p], list):
            assert set(seen[p]) <= _allowed_children(p), (p, seen[p])
        else:
            assert seen[p] in ("FileNotFoundError", "PermissionError"), (p, seen[p])
    assert seen["/tmp"] == [] and seen["/run"] == "FileNotFoundError"
    assert seen[str(canary_dir)] == "FileNotFoundError"
    for p in reads:
        assert seen["read " + p] in ("FileNotFoundError", "PermissionError"), (p, seen)


def _syscall_probe_source() -> str:
    nr = _seccomp.SYSCALLS[_seccomp.machine()]
    return (f"import asyncio, ctypes, json, multiprocessing, os, socket, threading\nnr = {nr!r}\n"
            "libc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
            "out = {}\n"
            "def call(name, *args):\n    r = libc.syscall(nr[name], *map(ctypes.c_long, args))\n"
            "    out[name] = 0 if r >= 0 else ctypes.get_errno()\n    return r\n"
            "for fam in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):\n"
            "    try:\n        socket.socket(fam).close()\n        out[f'socket {fam}'] = 0\n"
            "    except OSError as e:\n        out[f'socket {fam}'] = e.errno\n"
            "call('connect', -1, 0, 0)\ncall('bind', -1, 0, 0)\ncall('setns', -1, 0)\n"
            "call('keyctl', 0, -1, 0)\ncall('bpf', 0, 0, 0)\ncall('io_uring_setup', 1, 0)\n"
            "call('mount', 0, 0, 0, 0, 0)\ncall('clone3', 0, 0)\n"
            "call('process_vm_readv', 1, 0, 0, 0, 0, 0)\ncall('perf_event_open', 0, 0, -1, -1, 0)\n"
            "if call('clone', 0x10000000 | 17, 0, 0, 0, 0) == 0:\n    os._exit(0)\n"
            "# still allowed: threads, a stream socketpair, pipes between processes, asyncio\n"
            "t = threading.Thread(target=lambda: out.update(thread=0))\nt.start()\nt.join()\n"
            "a, b = socket.socketpair()\na.sendall(b'x')\nout['socketpair'] = 0 if b.recv(1) else 1\n"
            "r, w = multiprocessing.Pipe()\nw.send(7)\nout['pipe'] = 0 if r.recv() == 7 else 1\n"
            "out['asyncio'] = asyncio.run(asyncio.sleep(0, 0))\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
            "out['CapEff'], out['CapBnd'] = status['CapEff'].strip(), status['CapBnd'].strip()\n"
            "out['NoNewPrivs'] = status['NoNewPrivs'].strip()\n"
            "call('unshare', 0x10000000)\ncall('ptrace', 0, 0, 0, 0)\nprint(json.dumps(out))")


def _run_probe(layers):
    result = sandbox.run_program(_syscall_probe_source(), [""], timeout_s=BUDGET_S, layers=layers)
    assert result.reason is None and result.tests[0]["status"] == "ok", result
    return json.loads(result.tests[0]["stdout"])


DENIED = ["socket 1", "socket 2", "socket 10", "socket 16", "connect", "bind", "setns", "keyctl",
          "bpf", "io_uring_setup", "mount", "process_vm_readv", "perf_event_open", "clone",
          "unshare", "ptrace"]


@needs_seccomp
def test_seccomp_denies_kernel_surface_and_keeps_python_working():
    out = _run_probe(PROT)
    assert {k: out[k] for k in DENIED} == dict.fromkeys(DENIED, 1), out  # EPERM
    assert out["clone3"] == 38  # ENOSYS: glibc falls back to clone
    assert [out[k] for k in ("thread", "socketpair", "pipe", "asyncio")] == [0, 0, 0, 0]
    # Every capability gone (also as root of a user namespace), no_new_privs set.
    assert out["CapEff"] == out["CapBnd"] == "0000000000000000" and out["NoNewPrivs"] == "1"


@needs_seccomp
def test_control_kernel_surface_open_without_seccomp():
    # Without the filter the same calls reach the kernel (unshare of a user namespace and the
    # thread keyring succeed for any user), so the test above discriminates.
    out = _run_probe(dataclasses.replace(PROT, seccomp=False))
    assert out["keyctl"] != 1 and out["connect"] != 1 and out["socket 1"] == 0, out


def _header_numbers(path: str, prefix: str) -> dict[str, int]:
    text = Path(path).read_text()
    return {m[1]: int(m[2]) for m in re.finditer(rf"#define {prefix}(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize("arch, header, prefix", [
    ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "__NR_"),
    ("aarch64", "/usr/include/asm-generic/unistd.h", r"__NR(?:3264)?_"),
])
def test_seccomp_tables_match_kernel_headers(arch, header, prefix):
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed (linux-libc-dev)")
    numbers = _header_numbers(header, prefix)
    table = _seccomp.SYSCALLS[arch]
    assert {k: numbers.get(k) for k in table} == table
    assert len(_seccomp.build(arch)) % 8 == 0


def test_refused_layer_fails_closed(caplog):
    # A layer the probe found but that fails in a run scores 0 (an invalid tmpfs size makes
    # the minimal root's mount fail); in the probe (strict=False) it is only noted.
    if not PROT.minimal_root:
        pytest.skip("minimal root refused here")
    bad = sandbox.SandboxLimits(disk_bytes=-1)
    v = code_reward.score("```python\nprint('ok')\n```", {"inputs": [""], "outputs": ["ok"]},
                          limits=bad)
    assert v.reward == 0.0 and "sandbox harness failed" in v.reason, v
    result, fs = sandbox._run("print('ok')", [""], None, BUDGET_S, None, bad, PROT, strict=False)
    assert fs is None and result.tests[0]["stdout"] == "ok\n"


_UNPRIVILEGED_DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import _mounts
roots, work = json.loads(sys.argv[2]), sys.argv[3]
# Reach a Python installation and checkout under a private directory (a 0700 /root) as
# nobody: in this private mount namespace hide that directory and bind them back.
libc = _mounts._libc()
_mounts._mount(libc, None, "/", None, _mounts.MS_REC | _mounts.MS_PRIVATE)
by_ancestor = {}
for root in roots:
    anc = _mounts._private_ancestor(root)
    if anc:
        by_ancestor.setdefault(anc, []).append(root)
for anc, group in by_ancestor.items():
    stages = []
    for i, root in enumerate(group):
        stage = os.path.join(work, f"{len(os.listdir(work))}")
        os.mkdir(stage)
        _mounts._mount(libc, root, stage, None, _mounts.MS_BIND | _mounts.MS_REC)
        stages.append(stage)
    _mounts._mount(libc, "tmpfs", anc, "tmpfs", 0, "mode=0755")
    for root, stage in zip(group, stages):
        os.makedirs(root, exist_ok=True)
        _mounts._mount(libc, stage, root, None, _mounts.MS_BIND | _mounts.MS_REC)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
os.execve(sys.executable, [sys.executable, "-c", sys.argv[4], *sys.argv[5:]],
          {"PYTHONPATH": sys.argv[5], "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
"""

_UNPRIVILEGED_CHILD = r"""
import dataclasses, json, sys
from prorl_jax.rewards import code_reward, sandbox
prot = sandbox.protections()
out = {"prot": dataclasses.asdict(prot), "uid": __import__("os").getuid()}
if prot.namespaces:
    v = code_reward.score("```python\n" + sys.argv[2] + "\n```", {"inputs": [""], "outputs": ["pwned"]},
                          timeout_s=2.0)
    out["attack"] = [v.reward, v.reason]
    # Same uid as the harness here: its memory must still be out of reach (non-dumpable).
    r = sandbox.run_program("import os\ntry:\n    open('/proc/1/mem', 'rb').read(1)\n"
                            "    mem = True\nexcept OSError:\n    mem = False\n"
                            "print(os.listdir('/tmp'), os.path.exists('/run'), "
                            "os.path.exists(%r), mem)" % sys.argv[3], [""], timeout_s=2.0)
    out["paths"] = r.tests[0]["stdout"] if r.tests else r.reason
    ok = code_reward.score("```python\nprint(input())\n```", {"inputs": ["hi"], "outputs": ["hi"]})
    out["honest"] = ok.reward
print(json.dumps(out))
"""


def test_unprivileged_user(host_sockets, tmp_path):
    # The layers as an ordinary user would get them (user namespace, no uid to drop to).
    unshare = PROT.unshare
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: the tests above ran as this user")
    if unshare is None:
        pytest.skip("no unshare(1) to give the driver its own mount namespace")
    if subprocess.run([unshare, "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("the kernel refuses a mount namespace here (unshare -m)")
    work = tmp_path / "stages"
    work.mkdir()
    roots = [*sandbox._python_roots(), str(REPO)]
    cmd = [unshare, "-m", sys.executable, "-I", "-c", _UNPRIVILEGED_DRIVER,
           str(Path(sandbox.HARNESS).parent), json.dumps(roots), str(work),
           _UNPRIVILEGED_CHILD, str(REPO), host_sockets.attack(), str(REPO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    if not out["prot"]["namespaces"]:
        pytest.skip(f"unprivileged user namespaces refused here: {proc.stderr[-300:]}")
    assert out["prot"]["user_namespace"] and not out["prot"]["drop_uid"]
    assert out["prot"]["minimal_root"] and out["prot"]["seccomp"], out
    assert out["attack"][0] == 0.0, out
    assert host_sockets.hits == []
    assert out["paths"].strip() == "[] False False False", out
    assert out["honest"] == 1.0, out
