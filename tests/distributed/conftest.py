"""Launch N real Python processes that join one jax.distributed run over localhost."""

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).resolve().parent / "worker.py"


@dataclasses.dataclass
class Proc:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                "SLURM_", "OMPI_", "KUBERNETES_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def launch(argv: list[str], *, processes: int = 2, devices: int = 4, timeout: float = 240,
           extra: list[str] = (), env: dict | None = None) -> list[Proc]:
    """Runs `python argv... --coordinator 127.0.0.1:PORT --num-processes N --process-id I`
    for I in 0..N-1, each with `devices` CPU devices (and `env` added to its environment);
    every process is killed at `timeout`."""
    import tempfile

    port = free_port()
    logs = pathlib.Path(tempfile.mkdtemp(prefix="prorl_dist_"))
    # Output goes to files, not pipes: a process must never block on a full pipe while
    # we wait for another one.
    outs = [(open(logs / f"{i}.out", "w+"), open(logs / f"{i}.err", "w+"))
            for i in range(processes)]
    t0 = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, *argv, "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", str(processes), "--process-id", str(i), *extra],
        cwd=REPO, env={**child_env(devices), **(env or {})}, stdout=outs[i][0], stderr=outs[i][1], text=True)
        for i in range(processes)]
    ended = [0.0] * processes
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.poll() is not None and not ended[i]:
                    ended[i] = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                hung = [i for i, p in enumerate(procs) if p.poll() is None]
                pytest.fail(f"processes {hung} of {argv} still running after {timeout} s (hang)")
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for i, p in enumerate(procs):
        out, err = (f.seek(0) or f.read() for f in outs[i])
        for f in outs[i]:
            f.close()
        results.append(Proc(p.returncode, out, err, ended[i] or time.monotonic() - t0))
    shutil.rmtree(logs, ignore_errors=True)
    return results


def launch_worker(scenario: str, out_dir, **kw) -> list[Proc]:
    return launch([str(WORKER), scenario, str(out_dir)], **kw)


def load_worker():
    """tests/distributed/worker.py as a module (for the single-process reference runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def describe(procs: list[Proc]) -> str:
    return "\n".join(f"--- process {i}: rc {p.rc} after {p.seconds:.0f} s\n{p.stderr[-3000:]}"
                     for i, p in enumerate(procs))


@pytest.fixture(scope="session")
def run_processes():
    """run_processes(argv, processes=2, devices=4, timeout=240, extra=()) -> [Proc]."""
    return launch


@pytest.fixture(scope="session")
def run_worker():
    """run_worker(scenario, out_dir, **launch kwargs) -> [Proc] (tests/distributed/worker.py)."""
    return launch_worker


@pytest.fixture(scope="session")
def worker():
    """The worker module, to run a scenario in this (single, 8-device) process."""
    return load_worker()


@pytest.fixture(scope="session")
def explain():
    """explain(procs) -> each process's rc, time and stderr tail, for assertion messages."""
    return describe
