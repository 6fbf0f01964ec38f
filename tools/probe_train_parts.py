"""Where the GRPO train step's time goes: forward, forward + backward, and the whole update
(optimizer included), ours next to PyTorch, one shape, in one process.

Uses bench_train's model, batch and loss, so the parts add up to what bench_train times.
Run it under different XLA:CPU flags (each in its own process: flags are read at start):

    python tools/probe_train_parts.py --threads 1
    XLA_FLAGS=--xla_cpu_use_onednn=true python tools/probe_train_parts.py --threads 1

Reported: the median of --steps runs of each part (after one warm-up), and backward =
(forward + backward) - forward; optimizer = whole update - (forward + backward).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402  (pins the cores from --threads before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import median_time  # noqa: E402

import prorl_jax as pj  # noqa: E402
from prorl_jax.rl import losses  # noqa: E402
from prorl_jax.rl.state import make_optimizer  # noqa: E402
from prorl_jax.rl.update import make_train_step, response_logprobs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1x8x64x192")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=bt._THREADS)
    args = ap.parse_args()
    m, b, P, R = (int(x) for x in args.shape.split("x"))
    temp = 1.2
    torch.manual_seed(0)
    src = bt.Qwen2ForCausalLM(bt.Qwen2Config(**bt.SMALL)).to(torch.float32)
    with tempfile.TemporaryDirectory() as hf_dir:
        src.save_pretrained(hf_dir)
        cfg, params = pj.load_hf(hf_dir, dtype="float32")
        model = bt.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                    attn_implementation="sdpa").train()
    batch = bt.make_batch(cfg, params, m, b, P, R, temp, np.random.default_rng(0))
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    mb0 = {k: v[0] for k, v in jb.items()}

    def loss_of(p):  # the loss of make_train_step's one micro-batch (entropy_coef 0)
        logp = response_logprobs(cfg, p, mb0["tokens"], mb0["attention_mask"], P, temp)
        rl = bt.RL
        return losses.grpo_loss(
            logp, mb0["old_logprobs"], mb0["ref_logprobs"], mb0["advantages"],
            mb0["response_mask"], clip_low=rl.clip_low, clip_high=rl.clip_high, clip_c=rl.clip_c,
            kl_coef=rl.kl_coef, kl_kind=rl.kl_kind, agg=rl.loss_agg)[0]

    fwd = jax.jit(loss_of)
    fwd_bwd = jax.jit(jax.grad(loss_of))
    optimizer = make_optimizer(bt.OPTIM)
    step = make_train_step(cfg, bt.RL, optimizer, prompt_len=P, temperature=temp)
    state = {"p": jax.tree.map(jnp.copy, params)}
    state["o"] = optimizer.init(state["p"])

    def whole():
        state["p"], state["o"], met = step(state["p"], state["o"], jb)
        jax.block_until_ready(met)

    ours = {"forward": median_time(lambda: fwd(params).block_until_ready(), args.steps) * m,
            "forward + backward": median_time(lambda: jax.block_until_ready(fwd_bwd(params)),
                                        args.steps) * m,
            "update": median_time(whole, args.steps)}

    micro = bt.torch_micro_batches(batch)
    opt, _ = bt.torch_optimizer(model)

    def t_fwd():
        with torch.no_grad():
            for x in micro:
                bt.torch_grpo_loss(model, x, P, temp)

    def t_fwd_bwd():
        model.zero_grad(set_to_none=True)
        for x in micro:
            bt.torch_grpo_loss(model, x, P, temp).backward()

    theirs = {"forward": median_time(t_fwd, args.steps),
              "forward + backward": median_time(t_fwd_bwd, args.steps),
              "update": median_time(lambda: bt.torch_step(model, opt, micro, P, temp), args.steps)}
    print(f"# shape {args.shape}, --threads {args.threads}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()[0]:.2f}")
    print("| part | ours s | PyTorch s | ours / PyTorch time |")
    print("|---|---:|---:|---:|")
    rows = [("forward", "forward"), ("backward", None), ("optimizer + rest", None),
            ("whole update", "update")]
    for name, key in rows:
        if name == "backward":
            o = ours["forward + backward"] - ours["forward"]
            t = theirs["forward + backward"] - theirs["forward"]
        elif name == "optimizer + rest":
            o = ours["update"] - ours["forward + backward"]
            t = theirs["update"] - theirs["forward + backward"]
        else:
            o, t = ours[key], theirs[key]
        print(f"| {name} | {o:.2f} | {t:.2f} | {o / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
