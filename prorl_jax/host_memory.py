"""The host heap policy of XLA:CPU runs: keep freed memory in the process, do not hand it back.

Why: XLA:CPU mallocs each executable's temporary buffer at every execution (1.39 GB per
train step of the 40M benchmark model at 8 x 256 tokens) and frees it at the end. glibc
serves blocks that large with a fresh mmap and unmaps them on free, so every step faults in
every page of a new mapping again: measured with tools/bench_train.py on one core, 340k
minor page faults and 0.9-3.6 s of kernel time per 4.8 s of user time, most of the gap to
PyTorch's train step then (its own allocations faulted far less). See docs/performance.md.

The policy (glibc `mallopt`): one malloc arena (M_ARENA_MAX=1), so XLA's worker threads
allocate from the main heap; no mmap for large blocks (M_MMAP_MAX=0); no trimming of the
heap top (M_TRIM_THRESHOLD = -1, which mallopt(3) defines as "never"). A freed buffer is
reused by the next step: no page faults after the first. Cost: resident memory stays at its peak (a training
process sits there anyway), and the threads share one arena's lock (XLA allocates few,
large buffers). All three settings are needed: without the single arena the worker threads'
arenas keep mapping and unmapping.

Where: Linux with glibc, in a process whose jax backend will be the CPU, decided before jax
starts (mallopt has no effect on the arenas of threads that already exist; measured: set
after the first compile, nothing changes). CPU means JAX_PLATFORMS names cpu first, or no
accelerator plugin (jax-cuda*, jax-rocm*, libtpu) is installed. On a GPU or TPU host the
device allocator holds the big buffers and the host heap is left to glibc's defaults.
PRORL_JAX_HOST_HEAP=keep applies the policy anyway, =system never applies it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import platform
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

ENV = "PRORL_JAX_HOST_HEAP"
CHOICES = ("auto", "keep", "system")

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# -1 disables trimming (mallopt(3); glibc stores it as SIZE_MAX). The largest positive int,
# 2**31 - 1, is not "never": glibc trims whenever the free top of the heap reaches the
# threshold, so a step whose buffers exceed 2 GiB (the 40M benchmark model's packed
# micro-batch of 5,120 tokens: 2.9 GB) was handed back to the kernel and faulted in again at
# every call (700k minor faults per micro-batch, 10 s -> 8 s once kept; docs/performance.md).
NEVER_TRIM = -1
POLICY = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))

# Distributions that give jax a non-CPU backend (their names as pip normalises them).
ACCELERATOR_PLUGIN_PREFIXES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu",
                               "jax-metal", "jax_metal")

_applied: bool | None = None  # None: not decided yet in this process


def installed_accelerator_plugins(names: Iterable[str] | None = None) -> list[str]:
    """The installed distributions (or `names`) that would give jax a GPU or TPU backend."""
    if names is None:
        names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
    return sorted({n for n in names if n.lower().startswith(ACCELERATOR_PLUGIN_PREFIXES)})


def decide(env: Mapping[str, str], plugins: Iterable[str], system: str,
           has_glibc: bool) -> tuple[bool, str]:
    """Whether to apply the policy, and why (pure: the inputs are read by `apply_for_cpu`)."""
    choice = env.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        from prorl_jax.errors import ConfigError

        raise ConfigError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "system":
        return False, f"{ENV}=system"
    if system != "Linux" or not has_glibc:
        return False, "not Linux with glibc"
    if choice == "keep":
        return True, f"{ENV}=keep"
    platforms = [p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        if platforms[0] == "cpu":
            return True, "JAX_PLATFORMS=cpu"
        return False, f"JAX_PLATFORMS={env['JAX_PLATFORMS']}"
    plugins = list(plugins)
    if plugins:
        return False, f"accelerator plugin installed ({', '.join(plugins)})"
    return True, "no accelerator plugin installed: jax runs on the CPU"


def _libc():
    if platform.system() != "Linux":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such symbol)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def apply_for_cpu() -> bool:
    """Apply the policy once per process if `decide` says so; True if it is in force.

    Call it first thing, before jax is imported anywhere in the process (the CLI's main and
    the benchmarks do). Later calls return the first answer.
    """
    global _applied
    if _applied is not None:
        return _applied
    libc = _libc()
    env = os.environ
    # JAX_PLATFORMS decides by itself; only without it does the installed set matter.
    plugins = [] if env.get("JAX_PLATFORMS") else installed_accelerator_plugins()
    apply, why = decide(env, plugins, platform.system(), libc is not None)
    _applied = False
    if apply:
        _applied = all(libc.mallopt(param, value) == 1 for param, value in POLICY)
        if not _applied:
            why += "; glibc refused a setting"
    log.debug("host heap: %s (%s)", "kept by the process" if _applied else "glibc defaults", why)
    return _applied
