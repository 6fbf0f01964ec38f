"""Backward / forward time ratios of the pieces of bench_train's model, one core, one process.

Issue 18's probe_train_parts found our backward at 4.4x our forward where PyTorch's is 2.2x.
This splits it: the decoder body (no lm head) with scanned vs unrolled layers and dense vs
blockwise attention, and the lm head's token logprobs chunked (jax.checkpoint per chunk) vs
unchunked. A ratio near 2 is the FLOP count; above it is time the backward wastes.

    python tools/probe_backward.py [--threads N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

bench_common.pin(sys.argv, default=1)  # one core unless --threads N: before jax starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prorl_jax import losses  # noqa: E402
from prorl_jax.model import qwen  # noqa: E402
from prorl_jax.model.config import ModelConfig  # noqa: E402
from prorl_jax.rl import logprobs  # noqa: E402


def ratio_line(name: str, loss, *args, argnums=0) -> None:
    """One table row: median of 3 runs of the jitted loss and of its gradient."""
    fwd, both = (bench_common.median_time(lambda f=f: jax.block_until_ready(f(*args)), 3)
                 for f in (jax.jit(loss), jax.jit(jax.grad(loss, argnums=argnums))))
    print(f"| {name} | {fwd:.2f} | {both:.2f} | {(both - fwd) / fwd:.2f} |", flush=True)


def main() -> None:
    B, T = 8, 256
    hf = {**bench_common.SMALL, "model_type": "qwen2", "rms_norm_eps": 1e-6, "rope_theta": 1e4}
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, hf["vocab_size"], (B, T)), jnp.int32)
    print("| piece | forward s | forward+backward s | backward / forward |\n|---|---|---|---|")
    for impl in ("dense", "blockwise"):
        cfg = ModelConfig.from_hf_config(hf, attention_impl=impl)
        params = qwen.init_params(cfg, jax.random.key(0))
        for split in (False, True):
            p = qwen.split_layers(params) if split else params

            def body(p, cfg=cfg):
                return jnp.mean(qwen.forward_hidden(cfg, p, tokens)[0].astype(jnp.float32) ** 2)
            ratio_line(f"body, {impl}, {'unrolled' if split else 'scanned'} layers", body, p)
    D, V, R = hf["hidden_size"], hf["vocab_size"], 192
    k = jax.random.split(jax.random.key(1), 3)
    h = jax.random.normal(k[0], (B, R, D))
    w = jax.random.normal(k[1], (D, V)) / np.sqrt(D)
    tok = jax.random.randint(k[2], (B, R), 0, V)
    ratio_line("lm head, chunked", lambda h, w: jnp.sum(
        logprobs.token_logprobs_from_hidden(h, w, tok, 1.2)), h, w, argnums=(0, 1))
    ratio_line("lm head, unchunked", lambda h, w: jnp.sum(
        losses.token_logprobs(jnp.einsum("BTD,DV->BTV", h, w), tok, 1.2)), h, w, argnums=(0, 1))


if __name__ == "__main__":
    main()
