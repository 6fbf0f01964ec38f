"""The packed train path against the padded one at the *same* layout (issue 13's premium).

`tools/bench_train.py --lengths` compares the two layouts on ProRL-like lengths, where the
packed one also has other row shapes ([1, 5120] rows against [4, 1280]). This probe holds
the layout fixed: M micro-batches of b rows of P + R tokens, one sequence per row, the loss
on the last R positions, once through the padded `make_train_step` (one program for the
whole update) and once through `PackedStep.step` (one `accumulate` program per micro-batch,
then `apply`), on the 40M bench model. Same slots, same lm-head columns, same FLOPs: what
differs is the code path (the segment-id mask, the loss-column gather and scatter, the
per-micro-batch programs). Steps alternate after two warm-up rounds; median of --steps.

    python tools/probe_packed_path.py                     # M 4, b 4, P 256, R 1024
    python tools/probe_packed_path.py --attention dense
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (pins the cores from --threads before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import prorl_jax as pj  # noqa: E402
from prorl_jax.model import qwen  # noqa: E402
from prorl_jax.rl.state import make_optimizer  # noqa: E402
from prorl_jax.rl.update import PackedStep, make_train_step  # noqa: E402


def packed_micro(rng, vocab: int, b: int, P: int, R: int, pad: int) -> dict:
    """One packed-layout micro-batch: b rows, one sequence each (left padding `pad`), the
    loss on the R columns that predict the last R tokens."""
    T = P + R
    seg = np.ones((b, T), np.int32)
    seg[:, :pad] = 0
    loss = np.zeros((b, T), np.int32)
    loss[:, T - R - 1:T - 1] = 1
    noise = lambda: jnp.asarray(rng.standard_normal((b, T)).astype(np.float32) * 0.1 - 2.0)  # noqa: E731
    return {"tokens": jnp.asarray(rng.integers(3, vocab, (b, T)).astype(np.int32)),
            "segment_ids": jnp.asarray(seg),
            "targets": jnp.asarray(rng.integers(3, vocab, (b, T)).astype(np.int32)),
            "loss_mask": jnp.asarray(loss), "weights": jnp.asarray(loss / loss.sum(), jnp.float32),
            "advantages": noise(), "old_logprobs": noise(), "ref_logprobs": noise(),
            "columns": jnp.asarray(np.tile(np.arange(T - R - 1, T - 1, dtype=np.int32), (b, 1))),
            "metric_weight": jnp.float32(1.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="4x4x256x1024", help="MxbxPxR")
    ap.add_argument("--attention", default="auto", help="model.attention_impl of both paths")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="see tools/bench_common.py")
    args = ap.parse_args()
    M, b, P, R = (int(x) for x in args.shape.split("x"))
    cfg = pj.ModelConfig(**bt.SMALL, attention_impl=args.attention)
    params = qwen.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    padded_batch = {k: jnp.asarray(v) for k, v in
                    bt.make_batch(cfg, params, M, b, P, R, 1.0, rng).items()}
    pad = int(P - padded_batch["attention_mask"][0, :, :P].sum(-1).mean())
    micros = [packed_micro(rng, cfg.vocab_size, b, P, R, pad) for _ in range(M)]
    optimizer = make_optimizer(bt.OPTIM)
    padded = make_train_step(cfg, bt.RL, optimizer, prompt_len=P, temperature=1.0)
    packed = PackedStep(cfg, bt.RL, optimizer, temperature=1.0)
    fresh = lambda: (lambda p: (p, optimizer.init(p)))(jax.tree.map(jnp.copy, params))  # noqa: E731
    state = {"padded": fresh(), "packed": fresh()}
    run = {"padded": lambda p, o: padded(p, o, padded_batch),
           "packed": lambda p, o: packed.step(p, o, micros)}
    times = {k: [] for k in run}
    for i in range(2 + args.steps):
        for name, fn in run.items():
            t0 = time.perf_counter()
            p, o, m = fn(*state[name])
            jax.block_until_ready((p, m))
            state[name] = (p, o)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    print(f"# {M} x [{b}, {P} + {R}], attention {args.attention}, {bt._THREADS} threads, "
          f"load {os.getloadavg()[0]:.2f}; median of {args.steps} after 2 warm-up rounds")
    for name, ts in times.items():
        print(f"{name}: {statistics.median(ts):.2f} s ({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"packed / padded time: {statistics.median(times['packed']) / statistics.median(times['padded']):.2f}")


if __name__ == "__main__":
    main()
