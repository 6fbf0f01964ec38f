"""The dot floor of the GRPO train step: its weight matmuls timed alone, XLA:CPU next to torch.

tools/bench_train.py times the whole update of the 40M bench model. This probe times only
the matmuls that update must do (the decoder's seven projections per layer and the lm head,
each forward, input-gradient and weight-gradient product), each one alone at the step's
shapes, in each framework's own layout:

- ours: `lax.dot_general` on operands laid out as `model.linear` feeds them: x [rows, in],
  w [in, out], g [rows, out]; forward x.w, dx = g.w^T (contract the last dims), dw = x^T.g
  (contract the rows);
- torch: nn.Linear's layout, weight [out, in]: forward x @ W^T, dx = g @ W, dW = g^T @ x
  (transposes are views, BLAS takes them as flags).

Multiplicities are those of one update at the shape (L layers; where a micro-batch has more
response positions than the chunked logprobs' chunk, our lm head also recomputes its logits
in the backward, the chunks' checkpoint; torch's does not). Attention's
batched dots and every non-dot op are left out of both sums, so each sum is a floor under
its framework's step. Reported: each product's median time and GFLOP/s on both sides, the
two sums, and the step time that 1.2x PyTorch would need, next to our dot floor.

    python tools/probe_dots.py --threads 1
    python tools/probe_dots.py                 # all cores
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

_THREADS = bench_common.pin(sys.argv[1:], None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from jax import lax  # noqa: E402

SMALL = bench_common.SMALL
_FWD = (((1,), (0,)), ((), ()))  # x [r, i] . w [i, o]
_DX = (((1,), (1,)), ((), ()))  # g [r, o] . w [i, o] -> [r, i]
_DW = (((0,), (0,)), ((), ()))  # x [r, i] . g [r, o] -> [i, o]


def products(m: int, b: int, prompt_len: int, resp_len: int) -> list[tuple]:
    """(name, rows, in, out, count per update, lm-head recompute count) of the step's matmuls."""
    D, F, V, L = (SMALL[k] for k in ("hidden_size", "intermediate_size", "vocab_size",
                                     "num_hidden_layers"))
    N, K = SMALL["num_attention_heads"], SMALL["num_key_value_heads"]
    H = D // N
    rows = b * (prompt_len + resp_len)
    layer = [("q", D, N * H), ("k", D, K * H), ("v", D, K * H), ("o", N * H, D),
             ("gate", D, F), ("up", D, F), ("down", F, D)]
    out = [(name, rows, i, o, m * L, 0) for name, i, o in layer]
    from prorl_jax.rl.logprobs import DEFAULT_CHUNK_SIZE

    recompute = m if resp_len > DEFAULT_CHUNK_SIZE else 0  # one chunk: no checkpoint
    out.append(("lm head", b * resp_len, D, V, m, recompute))
    return out


def time_jax(rows, i, o, repeats):
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (rows, i), jnp.float32)
    w = jax.random.normal(k[1], (i, o), jnp.float32)
    g = jax.random.normal(k[2], (rows, o), jnp.float32)
    fns = {"fwd": (jax.jit(lambda a, c: lax.dot_general(a, c, _FWD)), x, w),
           "dx": (jax.jit(lambda a, c: lax.dot_general(a, c, _DX)), g, w),
           "dw": (jax.jit(lambda a, c: lax.dot_general(a, c, _DW)), x, g)}
    times = {}
    for name, (fn, a, c) in fns.items():
        fn(a, c).block_until_ready()
        times[name] = bench_common.median_time(
            lambda fn=fn, a=a, c=c: fn(a, c).block_until_ready(), repeats)
    return times


def time_torch(rows, i, o, repeats):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, i, generator=gen)
    W = torch.randn(o, i, generator=gen)
    g = torch.randn(rows, o, generator=gen)
    fns = {"fwd": lambda: x @ W.t(), "dx": lambda: g @ W, "dw": lambda: g.t() @ x}
    times = {}
    for name, fn in fns.items():
        fn()
        times[name] = bench_common.median_time(fn, repeats)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1x8x64x192", help="M x b x P x R, as bench_train")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=_THREADS)
    ap.add_argument("--torch-step", type=float, default=None,
                    help="PyTorch's measured step seconds (bench_train) for the 1.2x budget line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m, b, P, R = (int(v) for v in args.shape.split("x"))
    print(f"# shape {args.shape}, threads {torch.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.2f}, jax {jax.__version__}, torch {torch.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; median of {args.repeats}")
    print("| product | rows x in x out | per update (ours / torch) | part | ours ms | torch ms "
          "| ours GFLOP/s | torch GFLOP/s |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    total = {"ours": 0.0, "torch": 0.0}
    for name, rows, i, o, count, recompute in products(m, b, P, R):
        tj, tt = time_jax(rows, i, o, args.repeats), time_torch(rows, i, o, args.repeats)
        flops = 2.0 * rows * i * o
        for part in ("fwd", "dx", "dw"):
            n_ours = count + (recompute if part == "fwd" else 0)
            total["ours"] += n_ours * tj[part]
            total["torch"] += count * tt[part]
            print(f"| {name} | {rows} x {i} x {o} | {n_ours} / {count} | {part} | "
                  f"{tj[part] * 1e3:.2f} | {tt[part] * 1e3:.2f} | {flops / tj[part] / 1e9:.1f} | "
                  f"{flops / tt[part] / 1e9:.1f} |", flush=True)
    print(f"\n# sum over one update: ours {total['ours']:.3f} s, torch {total['torch']:.3f} s, "
          f"ours / torch time {total['ours'] / total['torch']:.2f}")
    if args.torch_step:
        budget = args.torch_step / 1.2
        print(f"# 1.2x PyTorch's {args.torch_step:.2f} s step = {budget:.2f} s for our whole "
              f"step; our weight matmuls alone take {total['ours']:.2f} s "
              f"({total['ours'] / budget:.0%} of it)")


if __name__ == "__main__":
    main()
