"""The harness's child wait, with and without pidfd (kernels before 5.3 lack it)."""

import importlib.util
import os
import time

import pytest

from prorl_jax.rewards import sandbox


def load_harness():
    spec = importlib.util.spec_from_file_location("prorl_harness", sandbox.HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pidfd", [True, False])
def test_wait_exit(pidfd, monkeypatch):
    harness = load_harness()
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open")
    for lifetime, timeout, exited in [(0.1, 2.0, True), (5.0, 0.2, False)]:
        pid = os.fork()
        if pid == 0:
            time.sleep(lifetime)
            os._exit(0)
        start = time.monotonic()
        assert harness._wait_exit(pid, timeout) is exited
        assert time.monotonic() - start < min(lifetime, timeout) + 0.5
        os.kill(pid, 9)
        os.waitpid(pid, 0)
