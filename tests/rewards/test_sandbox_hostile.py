"""One test per hostile behaviour of model-written code: each must score 0 within the time
budget plus a small margin, and leave the host unharmed (canary file intact, secrets unread,
no process of the snippet left)."""

import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from prorl_jax.rewards import code_reward, sandbox

BUDGET_S = 1.0
MARGIN_S = 1.5   # sandbox start-up and teardown
SECRET = "s3cr3t-7f1d2c"
PROT = sandbox.protections()
needs_ns = pytest.mark.skipif(not PROT.namespaces, reason="no PID/network/mount namespaces here")
needs_uid = pytest.mark.skipif(not PROT.drop_uid, reason="not root: cannot drop to a sandbox uid")


def sandbox_pids() -> list[int]:
    """Live processes running as a sandbox uid (zombies are dead: they only wait to be
    reaped, which a container's PID 1 may never do for orphans)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        if sandbox.UID_RANGE[0] <= uid < sandbox.UID_RANGE[1] and fields["State"].split()[0] != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def host(monkeypatch):
    """A world-traversable directory with a canary and a root-only secret, a secret env var."""
    d = Path(tempfile.mkdtemp(prefix="prorl_host_"))
    d.chmod(0o755)
    canary = d / "canary.txt"
    canary.write_text("alive")
    canary.chmod(0o644)
    secret = d / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    monkeypatch.setenv("PRORL_TEST_SECRET", SECRET)
    yield {"dir": d, "canary": canary, "secret": secret}
    assert canary.read_text() == "alive"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o644
    assert sorted(p.name for p in d.iterdir()) == ["canary.txt", "secret.txt"]
    assert sandbox_pids() == []
    shutil.rmtree(d)


def run(src: str, expected: str = "pwned", timeout_s: float = BUDGET_S):
    """Score `src` on one stdio test whose expected output only a successful attack prints."""
    start = time.monotonic()
    verdict = code_reward.score(f"```python\n{src}\n```", {"inputs": [""], "outputs": [expected]},
                                timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert verdict.reward == 0.0, verdict
    assert verdict.reason
    assert elapsed < timeout_s + MARGIN_S, elapsed
    return verdict


def test_infinite_loop(host):
    v = run("while True:\n    pass")
    assert "time budget" in v.reason


def test_fork_bomb(host):
    run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")


@needs_uid
def test_fork_bomb_is_capped_by_nproc(host):
    # Count how many processes the snippet can hold at once: RLIMIT_NPROC must bind.
    src = ("import os, time\nn = 1\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
           "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n"
           "        os._exit(0)\n    n += 1\nprint(n)")
    limit = sandbox.SandboxLimits().processes
    v = code_reward.score(f"```python\n{src}\n```", {"inputs": [""], "outputs": [str(limit)]},
                          timeout_s=BUDGET_S)
    assert v.reward == 1.0, v


def test_memory_bomb(host):
    v = run("x = bytearray(8 << 30)\nprint('pwned')")
    assert "MemoryError" in v.reason


def test_memory_bomb_growing(host):
    run("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))")


def test_unbounded_output(host):
    v = run("while True:\n    print('x' * 4096)")
    # The file-size limit stops it (Python turns SIGXFSZ into OSError) before the budget.
    assert "output too long" in v.reason and "File too large" in v.reason


@needs_ns
def test_fill_the_disk(host):
    before = shutil.disk_usage(tempfile.gettempdir()).free
    src = ("import os\nok = 0\nfor d in ['.', '/tmp', '/var/tmp', '/dev/shm', '/root']:\n"
           "    for i in range(64):\n        try:\n"
           "            with open(os.path.join(d, f'fill{i}'), 'wb') as f:\n"
           "                f.write(b'0' * (8 << 20))\n            ok += 1\n"
           "        except OSError:\n            break\nprint('pwned' if ok >= 64 else ok)")
    run(src)
    after = shutil.disk_usage(tempfile.gettempdir()).free
    assert before - after < 256 << 20
    assert not list(Path(tempfile.gettempdir()).glob("fill*"))


def test_delete_and_overwrite_outside(host):
    canary = host["canary"]
    src = (f"import os, shutil\nhit = False\nfor act in [lambda: os.remove({str(canary)!r}),\n"
           f"            lambda: open({str(canary)!r}, 'w').write('dead'),\n"
           f"            lambda: os.chmod({str(canary)!r}, 0o777),\n"
           f"            lambda: open({str(host['dir'] / 'new.txt')!r}, 'w').write('x'),\n"
           f"            lambda: shutil.rmtree({str(host['dir'])!r})]:\n"
           "    try:\n        act()\n        hit = True\n    except OSError:\n        pass\n"
           "print('pwned' if hit else 'safe')")
    run(src)


def test_read_trainer_environment(host):
    pid = os.getpid()
    src = ("import os\nfound = os.environ.get('PRORL_TEST_SECRET', '')\n"
           f"for p in ['/proc/{pid}/environ', '/proc/1/environ', '/proc/self/environ',\n"
           f"          '/proc/{os.getppid()}/environ']:\n"
           "    try:\n        data = open(p, 'rb').read().decode()\n"
           f"        found = found or ('{SECRET}' if '{SECRET}' in data else '')\n"
           "    except OSError:\n        pass\nprint(found or dict(os.environ))")
    v = run(src, expected=SECRET)
    assert "wrong output" in v.reason


@needs_uid
def test_read_private_file(host):
    v = run(f"print(open({str(host['secret'])!r}).read())", expected=SECRET)
    # Inside the minimal root the host directory does not exist; otherwise the uid stops it.
    assert ("FileNotFoundError" if PROT.minimal_root else "PermissionError") in v.reason


@needs_ns
def test_network(host):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted, done = [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                pass

    t = threading.Thread(target=serve)
    t.start()
    src = ("import socket\nhit = False\n"
           f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)]:\n"
           "    try:\n        socket.create_connection(addr, timeout=0.3)\n        hit = True\n"
           "    except OSError:\n        pass\nprint('pwned' if hit else 'offline')")
    run(src)
    done.set()
    t.join()
    server.close()
    assert accepted == []


def test_kill_parent(host):
    pid = os.getpid()
    src = ("import os, signal\nhit = False\n"
           f"for target in [os.getppid(), {pid}, 1, -1]:\n"
           "    try:\n        if target > 0:\n            os.kill(target, signal.SIGKILL)\n"
           "        else:\n            os.kill(-1, signal.SIGKILL)\n"
           "        hit = target not in (-1, 0)\n    except OSError:\n        pass\n"
           "print('pwned' if hit else 'ok')")
    run(src)
    # The scorer is alive and the sandbox still works.
    ok = code_reward.score("```python\nprint(input())\n```", {"inputs": ["hi"], "outputs": ["hi"]})
    assert ok.reward == 1.0


def test_process_outliving_the_run(host):
    marker = host["dir"] / "late.txt"
    src = ("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        for _ in range(100):\n            time.sleep(0.1)\n            try:\n"
           f"                open({str(marker)!r}, 'w').write('x')\n"
           "            except OSError:\n                pass\n"
           "    os._exit(0)\nprint('parent done')")
    run(src)
    time.sleep(0.3)
    assert sandbox_pids() == []
    assert not marker.exists()


def test_protections_report():
    # Documents what this platform gives; the hostile tests above skip only what is missing.
    assert isinstance(PROT.namespaces, bool) and isinstance(PROT.drop_uid, bool)
    if os.geteuid() == 0:
        assert PROT.drop_uid


@needs_uid
def test_fallback_without_namespaces(host, monkeypatch):
    # Where unshare is unavailable the uid drop, rlimits and the kill-by-uid sweep remain;
    # exercise that path here by pretending namespaces are missing.
    fallback = sandbox.Protections(namespaces=False, user_namespace=False, drop_uid=True,
                                   pdeathsig=PROT.pdeathsig, unshare=None, setpriv=PROT.setpriv)
    monkeypatch.setattr(sandbox, "protections", lambda: fallback)
    ok = code_reward.score("```python\nimport heapq\nprint(input())\n```",
                           {"inputs": ["hi"], "outputs": ["hi"]})
    assert ok.reward == 1.0, ok
    run("while True:\n    pass")
    run(f"print(open({str(host['secret'])!r}).read())", expected=SECRET)
    run(f"import os\nos.remove({str(host['canary'])!r})\nprint('pwned')")
    run("import os\nprint(os.environ.get('PRORL_TEST_SECRET'))", expected=SECRET)
    test_process_outliving_the_run(host)
    test_planted_symlinks(host)


def test_planted_symlinks(host):
    # The snippet owns its work directory; it plants links where the (root) harness will
    # create the next test's files. Following them would let root overwrite the canary.
    canary = str(host["canary"])
    src = ("import os\nfor k in ('in', 'out', 'err', 'res'):\n    for i in range(3):\n"
           "        try:\n"
           f"            os.symlink({canary!r}, f'{{k}}_{{i}}')\n"
           "        except OSError:\n            pass\nprint('pwned')")
    v = code_reward.score(f"```python\n{src}\n```", {"inputs": ["", "", ""],
                                                      "outputs": ["pwned", "pwned", "pwned"]})
    # The links do not redirect the harness: every test runs and its output is read.
    assert v.reward == 1.0, v
