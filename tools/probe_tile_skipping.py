"""Does blockwise attention skip the cross-sequence tiles of a packed row on CPU?

jax.grad of the attention alone (`attention.attend`, float32, the ~40M bench model's
heads: K=2 kv heads, G=4, H=64), best of `--repeats` after a warm-up, side by side:
- one packed row [1, 5120] of 7 sequences (segment ids 1..7);
- the same row as one sequence (only the causal blocks are skipped);
- the padded micro-batch of the same slot count, [4, 1280] with left / right padding,
  blockwise and dense.
If segment tiles are skipped, the packed row costs about the share of query-key pairs
that lie within a sequence (printed as "pairs").

    python tools/probe_tile_skipping.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from prorl_jax.model import attention

K, G, H = 2, 4, 64
LENGTHS = (1040, 980, 900, 760, 640, 500, 300)  # one packed row of 5120


def grad_seconds(B: int, T: int, seg: jax.Array, impl: str, repeats: int) -> float:
    r = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(r[0], (B, T, K, G, H))  # [B, T, K, G, H]
    k = jax.random.normal(r[1], (B, K, T, H))  # [B, K, S, H]
    v = jax.random.normal(r[2], (B, K, T, H))
    mask = attention.AttnMask(q_segment=seg, kv_segment=seg, q_offset=jnp.int32(0))
    loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, mask, impl=impl))  # noqa: E731
    f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(f(q, k, v))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(q, k, v))
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    T = sum(LENGTHS)
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(LENGTHS)])[None]
    packed = grad_seconds(1, T, jnp.asarray(seg, jnp.int32), "blockwise", args.repeats)
    one = grad_seconds(1, T, jnp.ones((1, T), jnp.int32), "blockwise", args.repeats)
    pad = np.zeros((4, T // 4), np.int32)
    pad[:, 100:1200] = 1
    padded_bw = grad_seconds(4, T // 4, jnp.asarray(pad), "blockwise", args.repeats)
    padded_dense = grad_seconds(4, T // 4, jnp.asarray(pad), "dense", args.repeats)
    pairs = sum(n * n for n in LENGTHS) / T**2
    print(f"packed [1, {T}] x {len(LENGTHS)} sequences {packed:.2f} s, as one sequence "
          f"{one:.2f} s (ratio {packed / one:.2f}, pairs {pairs:.2f}); padded [4, {T // 4}] "
          f"blockwise {padded_bw:.2f} s, dense {padded_dense:.2f} s")


if __name__ == "__main__":
    main()
