"""What the side-by-side benchmarks (bench_sampler, bench_train) share.

`pin(argv, default)` gives both sides the same CPU cores, before jax starts its pools: it
reads `--threads N` from argv (default: `default`, None = every core this process may use),
restricts the process to its first N allowed cores with sched_setaffinity, gives torch N
threads and returns N. XLA:CPU sizes its thread pools from the affinity mask, so both
runtimes end up with the same N cores. (The XLA flag --xla_cpu_multi_thread_eigen=false alone is not enough: with jax
0.10 the dot kernels still run on a multi-threaded pool.) It also applies the host heap
policy of `prorl-jax` itself (prorl_jax/host_memory.py: on a CPU run, freed memory stays in
the process) so that a benchmark measures what the CLI runs; it is process-wide, so both
sides of a comparison get it. PRORL_JAX_HOST_HEAP=system measures glibc's defaults instead.
Must run before `import jax`.
"""

from __future__ import annotations

import os
import resource
import statistics
import time


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def heap_policy() -> str:
    """One phrase for a benchmark's header: which host heap policy this process runs."""
    from prorl_jax import host_memory

    return ("host heap kept (prorl_jax.host_memory)" if host_memory.apply_for_cpu()
            else "host heap: glibc defaults")


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` wall-clock runs of fn() (seconds): the least disturbed."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_time(fn, repeats: int) -> float:
    """The median of `repeats` wall-clock runs of fn() (seconds), after one warm-up call (the
    compile): for probes whose parts are compared with each other."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def threads_from_argv(argv, default: int | None = None) -> int:
    for i, a in enumerate(argv):
        if a == "--threads":
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return default or allowed or 1


def pin(argv, default: int | None = None) -> int:
    from prorl_jax import host_memory

    host_memory.apply_for_cpu()  # first: before any library starts a thread
    threads = threads_from_argv(argv, default)
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if threads > len(cores):
            raise SystemExit(f"--threads {threads}: only {len(cores)} cores are available")
        os.sched_setaffinity(0, cores[:threads])
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()
    import torch  # after the affinity is set

    torch.set_num_threads(threads)
    return threads


# ~41M params, R1-Distill-Qwen layout (untied lm head, q/k/v bias, GQA 4:1): the shape both
# benchmarks compare on.
SMALL = dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
             tie_word_embeddings=False)
