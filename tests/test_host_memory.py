"""The host heap policy of CPU runs: when it applies, and that it stops the page faults."""

import os
import platform
import subprocess
import sys

import pytest
from cli_run import assert_one_line_error, prorl

from prorl_jax import host_memory
from prorl_jax.errors import ConfigError

LINUX = dict(system="Linux", has_glibc=True)


@pytest.mark.parametrize("env, plugins, expected", [
    ({}, [], True),                                         # jax can only run on the CPU
    ({}, ["jax-cuda12-plugin"], False),                     # a GPU host: leave glibc alone
    ({}, ["libtpu"], False),
    ({"JAX_PLATFORMS": "cpu"}, ["jax-cuda12-plugin"], True),  # the user chose the CPU
    ({"JAX_PLATFORMS": "cpu,cuda"}, [], True),
    ({"JAX_PLATFORMS": "cuda,cpu"}, [], False),
    ({"JAX_PLATFORMS": "tpu"}, [], False),
    ({"PRORL_JAX_HOST_HEAP": "keep"}, ["jax-cuda12-plugin"], True),
    ({"PRORL_JAX_HOST_HEAP": "system"}, [], False),
    ({"PRORL_JAX_HOST_HEAP": "Auto", "JAX_PLATFORMS": "cpu"}, [], True),
])
def test_decide(env, plugins, expected):
    apply, why = host_memory.decide(env, plugins, **LINUX)
    assert apply is expected
    assert why  # the reason that is logged


def test_decide_never_applies_without_glibc():
    for system, has_glibc in (("Darwin", False), ("Linux", False), ("Windows", False)):
        env = {"PRORL_JAX_HOST_HEAP": "keep"}
        assert host_memory.decide(env, [], system, has_glibc)[0] is False


def test_decide_rejects_an_unknown_choice():
    with pytest.raises(ConfigError, match="PRORL_JAX_HOST_HEAP='always'.*auto, keep, system"):
        host_memory.decide({"PRORL_JAX_HOST_HEAP": "always"}, [], **LINUX)


def test_accelerator_plugins_are_recognised_by_distribution_name():
    names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax_cuda12_pjrt", "libtpu", "numpy",
             "jax-rocm60-plugin", "jaxtyping"]
    assert host_memory.installed_accelerator_plugins(names) == [
        "jax-cuda12-plugin", "jax-rocm60-plugin", "jax_cuda12_pjrt", "libtpu"]


# A fresh interpreter: the policy must be set before anything allocates from thread arenas,
# and it is process-wide. It mallocs, fills and frees N bytes twice, as XLA:CPU does with a
# step's temp buffer, and prints the minor page faults of the second round. (Plain malloc:
# numpy would madvise huge pages, which fault in 2 MiB at a time and hide the count.)
_PROBE = """
import ctypes, resource, sys
from prorl_jax import host_memory
applied = host_memory.apply_for_cpu()
libc = host_memory._libc()
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = int(sys.argv[1])
def round_trip():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
round_trip()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, n // 4096)
"""


def _probe(heap: str, size: int = 256 << 20):
    env = {**os.environ, "PRORL_JAX_HOST_HEAP": heap, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(size)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.system() != "Linux" or host_memory._libc() is None,
                    reason="the policy is glibc's mallopt")
def test_kept_heap_reuses_freed_pages_where_glibc_defaults_fault_them_in_again():
    applied, faults, pages = _probe("auto")  # JAX_PLATFORMS=cpu: applied
    assert applied
    assert faults < pages // 20, (faults, pages)  # the freed block was reused, pages resident
    applied, faults, pages = _probe("system")
    assert not applied
    assert faults > pages // 2, (faults, pages)  # a fresh mmap: every page faults again


@pytest.mark.skipif(platform.system() != "Linux" or host_memory._libc() is None,
                    reason="the policy is glibc's mallopt")
def test_kept_heap_keeps_a_freed_block_larger_than_2_gib():
    """A trim threshold of 2**31 - 1 (the largest int) still trims a free heap top of more
    than 2 GiB, as a packed 40M micro-batch's buffers are: the policy must never trim."""
    applied, faults, pages = _probe("auto", (2 << 30) + (256 << 20))
    assert applied
    assert faults < pages // 20, (faults, pages)


def test_cli_rejects_an_unknown_heap_choice_before_running():
    proc = prorl("train", "--dry-run", env={"PRORL_JAX_HOST_HEAP": "bogus"})
    assert_one_line_error(proc, "PRORL_JAX_HOST_HEAP='bogus'", command="train")
