"""Test setup: 8 fake CPU devices (for sharding tests) and no network."""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (after XLA_FLAGS; reads JAX_COMPILATION_CACHE_DIR now, before it is set)

# The CLI and end-to-end tests start `prorl-jax` in subprocesses that compile the same train
# and sampler programs again and again (a run, then its killed twin, then the resume): one
# persistent compilation cache per test session, shared by the xdist workers, lets each
# subprocess load what an earlier one compiled. Only subprocesses use it: this process and
# the workers (which inherit the variable) keep compiling in memory, so the tests that read
# compiled.memory_analysis() or count compilations see fresh compiles.
# PRORL_TEST_JAX_CACHE=off turns it off.
_OWN_CACHE = None
if os.environ.get("PRORL_TEST_JAX_CACHE") != "off" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="prorl-test-jax-cache-")
    os.environ["PRORL_TEST_JAX_CACHE"] = _OWN_CACHE
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
elif os.environ.get("JAX_COMPILATION_CACHE_DIR") == os.environ.get("PRORL_TEST_JAX_CACHE"):
    jax.config.update("jax_compilation_cache_dir", None)  # an xdist worker: compile in memory


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """Workers for `-n auto`: one per core, at most 4.

    Most tests are bound by XLA compilation, which runs on one thread, so a second worker
    uses the core that compilation leaves idle; past 4, every worker's copy of jax, torch and
    its compiled programs costs memory for little gain. PRORL_TEST_WORKERS overrides.
    """
    if os.environ.get("PRORL_TEST_WORKERS"):
        return int(os.environ["PRORL_TEST_WORKERS"])
    return max(1, min(os.cpu_count() or 1, 4))
