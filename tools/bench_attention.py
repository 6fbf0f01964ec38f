"""Attention implementations side by side: time and compiled memory, dense vs blockwise.

    python tools/bench_attention.py [--lengths 1024,2048,4096,8192,16384] [--threads N]
        [--heads 12 --kv-heads 2 --head-dim 128] [--block-q 128 --block-kv 256]
        [--max-run-gib 4] [--repeats 3] [--impls dense,blockwise]

Table 1 (attention alone, one layer's shape, B=1): for every T and implementation, the
compiled temp memory of the forward and of forward + backward (jax.grad w.r.t. q, k, v),
and their wall times (best of --repeats, after a warm-up). A program whose compiled
temp + argument memory exceeds --max-run-gib is compiled only and reported as not run.

Table 2 (whole model): compiled temp memory of jax.grad of a loss on a tiny Qwen2 forward
(1 layer, hidden 64, 4 heads) at B=1, the number tests/model/test_attention.py bounds.
Nothing of table 2 is run, only compiled.

Prints os.getloadavg() before and after: on a shared machine absolute times are noise,
the ratios of one run are the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import pin  # noqa: E402


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--impls", default="dense,blockwise")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-kv", type=int, default=256)
    p.add_argument("--max-run-gib", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-model", action="store_true", help="leave out table 2")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    threads = pin(argv)
    args = _parse(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from prorl_jax.model import attention, qwen
    from prorl_jax.model.config import ModelConfig

    lengths = [int(x) for x in args.lengths.split(",")]
    impls = args.impls.split(",")
    K, N, H = args.kv_heads, args.heads, args.head_dim
    G = N // K
    print(f"loadavg before: {os.getloadavg()}  threads: {threads}  backend: "
          f"{jax.default_backend()}")
    print(f"attention alone: B=1 N={N} K={K} H={H} float32, blocks {args.block_q}x{args.block_kv}")
    print(f"{'T':>6} {'impl':>10} {'fwd MiB':>9} {'grad MiB':>9} {'fwd s':>8} {'grad s':>8}")

    def timed(fn, *xs):
        jax.block_until_ready(fn(*xs))  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*xs))
            best = min(best, time.perf_counter() - t)
        return best

    results = {}
    for T in lengths:
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.standard_normal((1, T, K, G, H)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((1, K, T, H)), jnp.float32)
        v = jnp.asarray(rng.standard_normal((1, K, T, H)), jnp.float32)
        ones = jnp.ones((1, T), jnp.int32)
        mask = attention.AttnMask(ones, ones, jnp.zeros((), jnp.int32), causal_only=True)
        w = jnp.asarray(rng.standard_normal((1, T, K, G, H)), jnp.float32)
        for impl in impls:
            def fwd(q, k, v, impl=impl, mask=mask):
                return attention.attend(q, k, v, mask, impl=impl, block_q=args.block_q,
                                        block_kv=args.block_kv)

            def loss(q, k, v, fwd=fwd, w=w):
                return jnp.sum(fwd(q, k, v) * w)

            row = []
            for fn in (jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))):
                compiled = fn.lower(q, k, v).compile()
                mem = compiled.memory_analysis()
                row.append((mem.temp_size_in_bytes, mem.argument_size_in_bytes, compiled))
            times = []
            for temp, arg, compiled in row:
                if temp + arg > args.max_run_gib * 2**30:
                    times.append(None)
                else:
                    times.append(timed(compiled, q, k, v))
            results[T, impl] = times
            fmt = lambda t: "not run" if t is None else f"{t:.3f}"  # noqa: E731
            print(f"{T:>6} {impl:>10} {row[0][0] / 2**20:>9.1f} {row[1][0] / 2**20:>9.1f} "
                  f"{fmt(times[0]):>8} {fmt(times[1]):>8}", flush=True)
            del row
    if "dense" in impls and "blockwise" in impls:
        print("blockwise / dense time (fwd, grad):")
        for T in lengths:
            d, b = results[T, "dense"], results[T, "blockwise"]
            ratio = [f"{bb / dd:.2f}" if bb and dd else "-" for dd, bb in zip(d, b, strict=True)]
            print(f"  T={T}: {ratio[0]}, {ratio[1]}")

    if not args.skip_model:
        print("whole model (1 layer, hidden 64, 4 heads / 2 kv): temp MiB of jax.grad, "
              "compiled only")
        print(f"{'T':>6} " + " ".join(f"{i:>10}" for i in impls))
        for T in lengths:
            cells = []
            for impl in impls:
                cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=1 << 17,
                                  attention_impl=impl, attention_block_q=args.block_q,
                                  attention_block_kv=args.block_kv)

                def model_loss(p, tokens, cfg=cfg):
                    return jnp.sum(qwen.forward(cfg, p, tokens)[..., 0])

                compiled = jax.jit(jax.grad(model_loss)).lower(
                    qwen.param_shapes(cfg), jax.ShapeDtypeStruct((1, T), jnp.int32)).compile()
                cells.append(compiled.memory_analysis().temp_size_in_bytes / 2**20)
            print(f"{T:>6} " + " ".join(f"{c:>10.1f}" for c in cells), flush=True)
    print(f"loadavg after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
