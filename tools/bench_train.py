"""GRPO train-step throughput and MFU of prorl_jax vs the same update in PyTorch, side by side.

Both sides start from the same random Qwen2 checkpoint (built with transformers, written
with save_pretrained, loaded into JAX with load_hf) and take the same batch: left-padded
prompts [P] + right-padded responses [R], M micro-batches of b sequences. One step is the
ProRL v1 update: response logprobs at the rollout temperature, token-level clipped ratio
(clip 0.2 / 0.4, dual clip 3.0), k3 KL to the reference (coefficient 1e-4), token-mean
aggregation, gradients accumulated over the M micro-batches, global-norm clipping at 1.0,
AdamW (lr 2e-6, betas (0.9, 0.999), eps 1e-8, weight decay 0.01), all in float32.

- ours: `prorl_jax.rl.update.make_train_step` (one jitted program, params donated).
- PyTorch: transformers' Qwen2ForCausalLM (sdpa attention) with `logits_to_keep` so the lm
  head only runs on the response positions, log_softmax + gather, the loss written out in
  torch ops, one backward per micro-batch, clip_grad_norm_, torch.optim.AdamW.
The first step of each side also checks that both compute the same loss and gradient norm.

Steps alternate (ours, PyTorch, ours, ...) so that load from other processes hits both
alike; the median step time is reported (after one untimed warm-up step per side beyond the
first), and the first call of ours (trace + compile + one step) minus that median is
reported as compile time.

Model FLOPs of one step (fwd + bwd = 3 x forward; recomputation is not counted):
    3 * (2 * Pm * B*T  +  2 * D*V * B*R  +  4 * L*N*H * B*T*T)
Pm = weight-matmul params of the decoder layers (q, k, v, o, gate, up, down), B*T all
positions of the batch (padding included: both sides compute them), D*V the lm head, run on
the B*R response positions only, and 4*L*N*H*T per position for QK^T and PV over the full
key length (both implementations compute the masked full score matrix). The embedding is a
gather (0 FLOPs). Peak = the larger of a float32 jnp.dot and torch.matmul of two
NxN matrices (best of 5, measured before and after the steps, the higher kept) under the
same thread setting; MFU = model FLOPs / step time / peak.

    python tools/bench_train.py                    # the table in docs/performance.md
    python tools/bench_train.py --shapes 1x2x16x48 --steps 2    # smoke run

`--lengths`: packed vs padded train batches (rl.pack_sequences) of ours, side by side, on
rollouts with ProRL-like response lengths: 15% end at the cap, the rest uniform on
[0.06 cap, cap] (mean 0.6 cap); prompts uniform on [64, 256] tokens. Both layouts get the
same token budget per micro-batch (4 padded sequences) and the same one optimizer update
over all sequences; each layout is compiled and warmed up once, then the timed updates
alternate between the layouts. Reported: real (non-padding) prompt + response tokens per
second of the update (old / reference logprob passes not included), the share of computed
token slots that are real, and each micro-batch's [b, T] and lm-head columns R.

    python tools/bench_train.py --lengths --caps 1024,2048 --models demo,small --seqs 16

`--old-logprobs`: one trainer update (train batch, old / reference logprob passes, PPO
mini-batches) with rl.old_logprobs recompute vs sampler, side by side on the same rollout
of a shipped config (default the demo; `--set key=value` overrides it), alternating the
two modes; reported: median update time of each, the time saved per step, and that
saving as a share of the whole step (a compiled rollout, timed once, included).

    python tools/bench_train.py --old-logprobs --steps 5

Threads: `--threads N` (default: all cores) pins the process to N cores and sets
torch.set_num_threads(N), so both sides get the same cores (tools/bench_common.py). A run on
all cores (no --threads) then re-runs itself pinned to one core and prints both runs'
ours / PyTorch side by side (`--no-one-core` skips that).

Load: a run that starts with the 1-minute load average above the core count exits 2 (other
processes would share the cores, and PyTorch's threads and XLA's suffer differently);
`--noisy-ok` runs anyway, and every table of a run that started or ended noisy is flagged
NOISY RUN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

# Both sides get the same cores; fixed before jax / torch start their pools.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

_THREADS = bench_common.pin(sys.argv[1:], None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import prorl_jax as pj  # noqa: E402
from prorl_jax.config import OptimConfig, RLConfig  # noqa: E402
from prorl_jax.rl.state import make_optimizer  # noqa: E402
from prorl_jax.rl.update import batch_logprobs, make_train_step, micro_weights  # noqa: E402

SMALL = bench_common.SMALL

RL = RLConfig(clip_low=0.2, clip_high=0.4, clip_c=3.0, kl_coef=1e-4, kl_kind="low_var_kl",
              entropy_coef=0.0, loss_agg="token-mean")
OPTIM = OptimConfig(lr=2e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0)


def measure_peak(n: int, repeats: int = 5) -> dict:
    """float32 matmul FLOP/s of an n x n x n product, JAX and torch (best of `repeats`)."""
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: jnp.dot(a, a))
    mm(x).block_until_ready()
    t = torch.randn(n, n)
    t @ t
    flops = 2 * n**3
    jax_rate = flops / bench_common.best_time(lambda: mm(x).block_until_ready(), repeats)
    torch_rate = flops / bench_common.best_time(lambda: t @ t, repeats)
    return {"peak": max(jax_rate, torch_rate), "jax": jax_rate, "torch": torch_rate}


def step_flops(cfg, m: int, b: int, prompt_len: int, resp_len: int) -> float:
    """Model FLOPs of one update (formula in the module docstring)."""
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    N, K, H = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layer_params = 2 * D * N * H + 2 * D * K * H + 3 * D * F
    seqs, T = m * b, prompt_len + resp_len
    fwd = (2 * L * layer_params * seqs * T + 2 * D * V * seqs * resp_len
           + 4 * L * N * H * seqs * T * T)
    return 3.0 * fwd


def make_batch(cfg, params, m: int, b: int, prompt_len: int, resp_len: int, temperature: float,
               rng: np.random.Generator) -> dict:
    """A GRPO batch as numpy arrays [M, b, ...]: random prompt / response lengths and tokens.

    old / reference logprobs are the current policy's logprobs plus noise, so that ratios
    spread over and beyond the clip range and the KL term is non-zero.
    """
    T = prompt_len + resp_len
    tokens = rng.integers(1, cfg.vocab_size, size=(m, b, T)).astype(np.int32)
    attn = np.zeros((m, b, T), np.int32)
    p_len = rng.integers(prompt_len // 2, prompt_len + 1, size=(m, b))
    r_len = rng.integers(max(resp_len // 4, 1), resp_len + 1, size=(m, b))
    for i in range(m):
        for j in range(b):
            attn[i, j, prompt_len - p_len[i, j]:prompt_len + r_len[i, j]] = 1
    tokens = np.where(attn == 1, tokens, 0).astype(np.int32)
    resp_mask = attn[:, :, prompt_len:].astype(np.float32)
    logp = np.stack([np.asarray(batch_logprobs(cfg, params, jnp.asarray(tokens[i]),
                                               jnp.asarray(attn[i]), prompt_len=prompt_len,
                                               temperature=temperature))
                     for i in range(m)])
    old = (logp + 0.3 * rng.standard_normal(logp.shape)) * resp_mask
    ref = (logp + 0.1 * rng.standard_normal(logp.shape)) * resp_mask
    return {
        "tokens": tokens, "attention_mask": attn, "response_mask": resp_mask,
        "old_logprobs": old.astype(np.float32), "ref_logprobs": ref.astype(np.float32),
        "advantages": rng.standard_normal((m, b)).astype(np.float32),
        "weight": micro_weights(resp_mask, m, RL.loss_agg),
    }


def torch_grpo_loss(model, mb: dict, prompt_len: int, temperature: float):
    """The ProRL v1 loss of one micro-batch, in torch ops (verl's formulas)."""
    resp_len = mb["response_mask"].shape[1]
    out = model(input_ids=mb["tokens"], attention_mask=mb["attention_mask"],
                position_ids=mb["positions"], logits_to_keep=resp_len + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature  # [b, R, V]: positions P-1 .. P+R-2
    response = mb["tokens"][:, prompt_len:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, response[..., None]).squeeze(-1)
    mask = mb["response_mask"]
    n_tok = mask.sum().clamp(min=1.0)
    adv = mb["advantages"][:, None]
    ratio = torch.exp(torch.clamp(logp - mb["old_logprobs"], -20.0, 20.0))
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - RL.clip_low, 1.0 + RL.clip_high))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * RL.clip_c), pg)
    d = torch.clamp(mb["ref_logprobs"] - logp, -20.0, 20.0)
    kl = torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    return ((pg * mask).sum() + RL.kl_coef * (kl * mask).sum()) / n_tok


def torch_step(model, opt, micro: list[dict], prompt_len: int, temperature: float):
    """One update; returns (loss, grad norm before clipping) as floats."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for mb in micro:
        loss = torch_grpo_loss(model, mb, prompt_len, temperature) * mb["weight"]
        loss.backward()
        total += float(loss.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
    opt.step()
    return total, float(grad_norm)


def torch_micro_batches(batch: dict) -> list[dict]:
    out = []
    for i in range(batch["tokens"].shape[0]):
        attn = torch.from_numpy(batch["attention_mask"][i]).long()
        out.append({
            "tokens": torch.from_numpy(batch["tokens"][i]).long(),
            "attention_mask": attn,
            "positions": torch.clamp(attn.cumsum(-1) - 1, min=0),
            "response_mask": torch.from_numpy(batch["response_mask"][i]),
            "old_logprobs": torch.from_numpy(batch["old_logprobs"][i]),
            "ref_logprobs": torch.from_numpy(batch["ref_logprobs"][i]),
            "advantages": torch.from_numpy(batch["advantages"][i]),
            "weight": float(batch["weight"][i]),
        })
    return out


def torch_optimizer(model):
    kw = dict(lr=OPTIM.lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps,
              weight_decay=OPTIM.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), foreach=True, **kw), "foreach"


def bench_shape(hf_dir, cfg, m, b, prompt_len, resp_len, temperature, steps, rng):
    _, params = pj.load_hf(hf_dir, dtype="float32")
    batch = make_batch(cfg, params, m, b, prompt_len, resp_len, temperature, rng)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    optimizer = make_optimizer(OPTIM)
    opt_state = optimizer.init(params)
    step = make_train_step(cfg, RL, optimizer, prompt_len=prompt_len, temperature=temperature)

    model = Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                             attn_implementation="sdpa").train()
    opt, opt_kind = torch_optimizer(model)
    micro = torch_micro_batches(batch)

    t0 = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, jbatch)
    jax.block_until_ready((params, opt_state, metrics))
    first_ours = time.perf_counter() - t0
    ours_first = (float(metrics["loss"]), float(metrics["grad_norm"]))
    t0 = time.perf_counter()
    torch_first = torch_step(model, opt, micro, prompt_len, temperature)
    first_torch = time.perf_counter() - t0
    # One more untimed step each: the first steps after compile / the first backward also
    # pay for fresh buffers (page faults), measured at up to 2x a steady step.
    params, opt_state, metrics = step(params, opt_state, jbatch)
    jax.block_until_ready((params, opt_state, metrics))
    torch_step(model, opt, micro, prompt_len, temperature)

    times = {"ours": [], "torch": []}
    cpu = {"ours": [], "torch": []}
    faults = {"ours": [], "torch": []}
    for _ in range(steps):
        t0, c0, f0 = time.perf_counter(), time.process_time(), bench_common.minor_faults()
        params, opt_state, metrics = step(params, opt_state, jbatch)
        jax.block_until_ready((params, opt_state, metrics))
        times["ours"].append(time.perf_counter() - t0)
        cpu["ours"].append(time.process_time() - c0)
        faults["ours"].append(bench_common.minor_faults() - f0)
        t0, c0, f0 = time.perf_counter(), time.process_time(), bench_common.minor_faults()
        torch_step(model, opt, micro, prompt_len, temperature)
        times["torch"].append(time.perf_counter() - t0)
        cpu["torch"].append(time.process_time() - c0)
        faults["torch"].append(bench_common.minor_faults() - f0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ours_s": med["ours"], "torch_s": med["torch"],
        "ours_cpu_s": statistics.median(cpu["ours"]), "torch_cpu_s": statistics.median(cpu["torch"]),
        "compile_s": first_ours - med["ours"], "torch_first_s": first_torch,
        "ours_first": ours_first, "torch_first": torch_first, "opt_kind": opt_kind,
        "spread": {k: (min(v), max(v)) for k, v in times.items()},
        "faults": {k: statistics.median(v) for k, v in faults.items()},
        "response_tokens": int(batch["response_mask"].sum()),
    }


DEMO = dict(vocab_size=261, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True)


def prorl_lengths(rng: np.random.Generator, count: int, cap: int) -> np.ndarray:
    """Response lengths: 15% at the cap, the rest uniform on [0.06 cap, cap] (mean 0.6 cap)."""
    at_cap = np.zeros(count, bool)
    at_cap[rng.permutation(count)[:round(0.15 * count)]] = True
    rest = rng.integers(int(0.06 * cap), cap + 1, count)
    return np.where(at_cap, cap, rest).astype(np.int32)


def lengths_case(cfg, params, cap: int, seqs: int, steps: int, rng) -> dict:
    """Real tokens/s of one update, packed vs padded, on the same rollouts."""
    import dataclasses

    from prorl_jax.config import TrainConfig, build
    from prorl_jax.rl import batch as batching
    from prorl_jax.rl.rollout import Groups
    from prorl_jax.rl.update import PackedStep

    n = 4
    G = seqs // n
    prompt_ids = [list(rng.integers(3, cfg.vocab_size, int(rng.integers(64, 257)))) for _ in range(G)]
    lengths = prorl_lengths(rng, seqs, cap)
    groups = Groups(records=[{}] * G, prompt_ids=prompt_ids,
                    tokens=rng.integers(3, cfg.vocab_size, (seqs, cap)).astype(np.int32),
                    lengths=lengths, finished=lengths < cap, texts=[""] * seqs,
                    scores=np.zeros(seqs, np.float32),
                    rewards=rng.integers(0, 2, seqs).astype(np.float32))
    base = build(TrainConfig, {
        "sampling": {"n": n, "max_new_tokens": cap, "max_prompt_tokens": 256},
        "rl": {"prompts_per_step": G, "mini_batch_prompts": G, "micro_batches": seqs // 4,
               "kl_coef": RL.kl_coef, "loss_agg": RL.loss_agg}, "optim": dataclasses.asdict(OPTIM)})
    runs = {}
    for packed in (True, False):
        tc = dataclasses.replace(base, rl=dataclasses.replace(base.rl, pack_sequences=packed))
        tb = batching.train_batch(tc, groups, np.arange(G), pad_id=0, place=lambda x, a: jnp.asarray(x))
        optimizer = make_optimizer(OPTIM)
        p = jax.tree.map(jnp.copy, params)
        opt_state = optimizer.init(p)
        if packed:
            fn = PackedStep(cfg, tc.rl, optimizer, temperature=1.0)
            micros = tb.minibatches[0]
            for mb in micros:
                mb["old_logprobs"] = mb["ref_logprobs"] = jnp.full(mb["tokens"].shape, -2.0)
            run = lambda p, o, fn=fn, micros=micros: fn.step(p, o, micros)  # noqa: E731
            shape = [(tuple(mb["tokens"].shape), mb["columns"].shape[1]) for mb in micros]
        else:
            fn = make_train_step(cfg, tc.rl, optimizer, prompt_len=tb.prompt_len, temperature=1.0)
            mb = dict(tb.minibatches[0][0])
            mb["weight"] = jnp.asarray(mb["weight"])
            mb["old_logprobs"] = mb["ref_logprobs"] = jnp.full(mb["response_mask"].shape, -2.0)
            run = lambda p, o, fn=fn, mb=mb: fn(p, o, mb)  # noqa: E731
            M, b, T = mb["tokens"].shape
            shape = [((b, T), mb["response_mask"].shape[-1])] * M
        t0 = time.perf_counter()
        p, opt_state, m = run(p, opt_state)  # compile + warm-up
        jax.block_until_ready(m)
        runs["packed" if packed else "padded"] = {
            "run": run, "state": (p, opt_state), "times": [], "tb": tb, "shape": shape,
            "first_s": time.perf_counter() - t0}
    # Timed updates alternate between the layouts, so load from other processes hits both.
    for _ in range(steps):
        for r in runs.values():
            p, opt_state = r["state"]
            t0 = time.perf_counter()
            p, opt_state, m = r["run"](p, opt_state)
            jax.block_until_ready((p, m))
            r["times"].append(time.perf_counter() - t0)
            r["state"] = (p, opt_state)
            r["loss"] = float(m["loss"])
    out = {}
    for key, r in runs.items():
        tb = r["tb"]
        out[key] = {"s": statistics.median(r["times"]), "times": r["times"],
                    "efficiency": tb.real_tokens / tb.slots, "real": tb.real_tokens,
                    "shape": r["shape"], "loss": r["loss"], "first_s": r["first_s"]}
    out["mean_len"] = float(lengths.mean() / cap)
    out["at_cap"] = float((lengths == cap).mean())
    return out


def _shapes(shape) -> str:
    """[((b, T), R), ...] per micro-batch -> "2 x [4, 1280] (1024), 1 x [1, 3072] (2048)"."""
    parts, counts = [], {}
    for s in shape:
        if s not in counts:
            parts.append(s)
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{counts[s]} x {list(s[0])} ({s[1]})" for s in parts)


def lengths_main(args) -> None:
    import jax as _jax

    load0 = os.getloadavg()
    rows = []
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        spec = {"demo": DEMO, "small": SMALL}[name]
        cfg = pj.ModelConfig(**{**spec, "max_position_embeddings": 8192})
        params = __import__("prorl_jax.model.qwen", fromlist=["init_params"]).init_params(
            cfg, _jax.random.key(0))
        n_params = sum(int(np.prod(x.shape)) for x in _jax.tree.leaves(params))
        for cap in (int(c) for c in args.caps.split(",")):
            res = lengths_case(cfg, params, cap, args.seqs, args.steps, rng)
            rows.append((name, n_params, cap, res))
            print(f"# done {name} cap {cap}: {res}", flush=True)
    load1 = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax "
          f"{_jax.__version__} ({_jax.default_backend()}), --threads {_THREADS}; {args.seqs} "
          f"sequences per update, median of {args.steps} updates per layout (alternating, "
          f"after a warm-up); attention_impl auto")
    print(f"# load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min)")
    print_noisy(load0, load1, args.noisy)
    print("| model | cap | mean len / cap, at cap | padded: micro-batches [b, T] (lm-head columns) | "
          "real share | real tok/s | packed: micro-batches [b, T] (lm-head columns) | real share | "
          "real tok/s | packed / padded |")
    print("|---|---:|---|---|---:|---:|---|---:|---:|---:|")
    for name, n_params, cap, r in rows:
        pa, pk = r["padded"], r["packed"]
        ta, tk = pa["real"] / pa["s"], pk["real"] / pk["s"]
        print(f"| {name} ({n_params / 1e6:.1f}M) | {cap} | {r['mean_len']:.2f}, {r['at_cap']:.0%} | "
              f"{_shapes(pa['shape'])} | {pa['efficiency']:.0%} | {ta:,.0f} | "
              f"{_shapes(pk['shape'])} | {pk['efficiency']:.0%} | {tk:,.0f} | "
              f"{tk / ta:.2f}x |", flush=True)
    for name, _, cap, r in rows:
        print(f"# {name} cap {cap}: update s " + ", ".join(
            f"{k} {' / '.join(f'{t:.1f}' for t in r[k]['times'])} (first {r[k]['first_s']:.1f})"
            for k in ("padded", "packed")))


def old_logprobs_main(args) -> None:
    import dataclasses

    from prorl_jax.config import load_config, resolve_config_path
    from prorl_jax.rl.trainer import Trainer

    overrides = ["data.val_sources=[]", "logging.tensorboard=false", "logging.progress=false",
                 "checkpoint.export_hf=false", *args.set]
    cfg = load_config(resolve_config_path(args.config), overrides)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, console=lambda *a: None)
        try:
            for _ in range(2):  # the second rollout is timed: the first compiles
                t0 = time.perf_counter()
                groups, _ = trainer.worker.collect(trainer.state.params, trainer.iterator,
                                                   lambda i: 11 + i)
                rollout_s = time.perf_counter() - t0
            if groups is None:
                raise SystemExit("the rollout kept no group; pick another config or seed")
            start = trainer.state
            modes = ("recompute", "sampler")
            times = {m: [] for m in modes}
            last = {}
            for rep in range(args.steps + 1):  # the first round compiles: untimed
                for mode in modes:
                    trainer.cfg = dataclasses.replace(
                        cfg, rl=dataclasses.replace(cfg.rl, old_logprobs=mode))
                    trainer.state = start.replace(
                        params=jax.tree.map(jnp.copy, start.params),  # donated
                        opt_state=jax.tree.map(jnp.copy, start.opt_state))
                    t = time.perf_counter()
                    last[mode] = trainer.update(groups, step=0)  # host floats: synced
                    if rep:
                        times[mode].append(time.perf_counter() - t)
        finally:
            trainer.close()
    load1 = os.getloadavg()
    med = {m: statistics.median(v) for m, v in times.items()}
    saved = med["recompute"] - med["sampler"]
    tokens = int(groups.lengths.sum())
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax "
          f"{jax.__version__} ({jax.default_backend()}), --threads {_THREADS}; config "
          f"{args.config} {' '.join(args.set)}; {groups.num_groups} groups x {cfg.sampling.n}, "
          f"{tokens} response tokens, kl_coef {cfg.rl.kl_coef}, pack_sequences "
          f"{cfg.rl.pack_sequences}; median of {args.steps} updates per mode, alternating")
    print(f"# load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min); rollout of "
          f"the step {rollout_s:.2f} s (compiled)")
    print_noisy(load0, load1, args.noisy)
    print("| rl.old_logprobs | update s | saved s / step | saved / update | saved / step "
          "(rollout + update) | logged mismatch max |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        sv = med["recompute"] - med[mode]
        print(f"| {mode} | {med[mode]:.3f} | {sv:.3f} | {sv / med['recompute']:.0%} | "
              f"{sv / (rollout_s + med['recompute']):.0%} | "
              f"{last[mode].get('logp_mismatch/max', float('nan')):.1e} |", flush=True)
    spread = {m: f"{min(v):.3f}-{max(v):.3f}" for m, v in times.items()}
    print(f"# update time ranges: {spread}; saved {saved:.3f} s per step")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1x8x64x192,2x2x128x384",
                    help="comma-separated MxbxPxR: micro-batches x sequences each x prompt "
                         "length x response length")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side and shape")
    ap.add_argument("--temperature", type=float, default=1.2)
    ap.add_argument("--peak-n", type=int, default=2048, help="matrix size of the peak matmul")
    ap.add_argument("--threads", type=int, default=_THREADS,
                    help="cores for both sides (default: all; see tools/bench_common.py)")
    ap.add_argument("--lengths", action="store_true",
                    help="packed vs padded train batches on ProRL-like lengths (see above)")
    ap.add_argument("--caps", default="1024,2048", help="--lengths: response caps")
    ap.add_argument("--models", default="demo,small", help="--lengths: demo and/or small")
    ap.add_argument("--seqs", type=int, default=16, help="--lengths: sequences per update")
    ap.add_argument("--old-logprobs", action="store_true",
                    help="rl.old_logprobs recompute vs sampler, one trainer update (see above)")
    ap.add_argument("--config", default="demo", help="--old-logprobs: a shipped config")
    ap.add_argument("--set", action="append", default=[],
                    help="--old-logprobs: a dotted config override (repeatable)")
    ap.add_argument("--noisy-ok", action="store_true",
                    help="run even when the load average exceeds the core count (the tables "
                         "are then flagged NOISY)")
    ap.add_argument("--no-one-core", action="store_true",
                    help="skip the one-core (--threads 1) comparison run after an all-core run")
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # The one-core child (--json-out) starts right after its parent's run, whose own load
    # is still in the 1-minute average: the parent checked the machine before it started.
    args.noisy = False if args.json_out else check_load(args.noisy_ok)
    if args.old_logprobs:
        old_logprobs_main(args)
        return
    if args.lengths:
        lengths_main(args)
        return

    config = Qwen2Config(**SMALL)
    torch.manual_seed(0)
    src = Qwen2ForCausalLM(config).to(torch.float32)
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as hf_dir:
        src.save_pretrained(hf_dir)
        del src
        cfg, params = pj.load_hf(hf_dir, dtype="float32")
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        del params
        peak_before = measure_peak(args.peak_n)
        for shape in args.shapes.split(","):
            m, b, p, r = (int(x) for x in shape.split("x"))
            res = bench_shape(hf_dir, cfg, m, b, p, r, args.temperature, args.steps, rng)
            rows.append((m, b, p, r, res))
        peak_after = measure_peak(args.peak_n)
    # The higher of the two measurements: other processes' load lowers the measured peak,
    # and a lower peak would flatter the MFU.
    peak = max(peak_before, peak_after, key=lambda x: x["peak"])
    load1 = os.getloadavg()

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, AdamW {rows[0][4]['opt_kind']}); "
          f"--threads {_THREADS}; {bench_common.heap_policy()}")
    print(f"# model: {n_params / 1e6:.1f}M params float32 (Qwen2, V={cfg.vocab_size}, "
          f"D={cfg.hidden_size}, F={cfg.intermediate_size}, L={cfg.num_hidden_layers}), "
          f"temperature {args.temperature}; median of {args.steps} steps per side")
    print(f"# peak: float32 {args.peak_n}^3 matmul {peak['peak'] / 1e9:.1f} GFLOP/s "
          f"(jax {peak['jax'] / 1e9:.1f}, torch {peak['torch'] / 1e9:.1f}; best of the runs "
          f"before ({peak_before['peak'] / 1e9:.1f}) and after ({peak_after['peak'] / 1e9:.1f}) "
          f"the steps)")
    print(f"# load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min)")
    noisy = print_noisy(load0, load1, args.noisy)
    print("| M x b x (P + R) | tokens/step | ours step s | PyTorch step s | ours tok/s | "
          "PyTorch tok/s | speed ours/PyTorch (wall) | (CPU time) | ours MFU | PyTorch MFU | "
          "ours compile s | loss ours / PyTorch | grad norm ours / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []  # what the one-core comparison prints
    for m, b, p, r, res in rows:
        tokens = m * b * (p + r)
        flops = step_flops(cfg, m, b, p, r)
        ours_tps, torch_tps = tokens / res["ours_s"], tokens / res["torch_s"]
        ours_mfu = flops / res["ours_s"] / peak["peak"]
        torch_mfu = flops / res["torch_s"] / peak["peak"]
        summary.append({"shape": f"{m} x {b} x ({p} + {r})", "speed": res["torch_s"] / res["ours_s"],
                        "mfu_ours": ours_mfu, "mfu_torch": torch_mfu})
        (l_o, g_o), (l_t, g_t) = res["ours_first"], res["torch_first"]
        print(f"| {m} x {b} x ({p} + {r}) | {tokens:,} | {res['ours_s']:.2f} | "
              f"{res['torch_s']:.2f} | {ours_tps:,.0f} | {torch_tps:,.0f} | "
              f"{res['torch_s'] / res['ours_s']:.2f}x | "
              f"{res['torch_cpu_s'] / res['ours_cpu_s']:.2f}x | {ours_mfu:.1%} | "
              f"{torch_mfu:.1%} | {res['compile_s']:.1f} | {l_o:.5f} / {l_t:.5f} | "
              f"{g_o:.4f} / {g_t:.4f} |", flush=True)
    for m, b, p, r, res in rows:
        lo = {k: f"{v[0]:.2f}-{v[1]:.2f}" for k, v in res["spread"].items()}
        print(f"# {m}x{b}x({p}+{r}): model GFLOP/step {step_flops(cfg, m, b, p, r) / 1e9:.1f}, "
              f"response tokens {res['response_tokens']}, step range ours {lo['ours']} s, "
              f"PyTorch {lo['torch']} s, CPU s/step ours {res['ours_cpu_s']:.2f}, "
              f"PyTorch {res['torch_cpu_s']:.2f}, minor page faults/step ours "
              f"{res['faults']['ours']:,.0f}, PyTorch {res['faults']['torch']:,.0f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"threads": _THREADS, "noisy": noisy, "rows": summary}, f)
    elif _THREADS > 1 and not args.no_one_core and not _explicit_threads(argv):
        one_core_comparison(argv, summary, noisy)


def print_noisy(load0, load1, noisy_start: bool) -> bool:
    """Flag the tables of a run that began above the core count or ended above it plus this
    process's own threads (which add up to --threads to the load while they run)."""
    noisy = noisy_start or load1[0] > (os.cpu_count() or 1) + _THREADS
    if noisy:
        print(f"# NOISY RUN: load average {load0[0]:.2f} before / {load1[0]:.2f} after on "
              f"{os.cpu_count()} cores; other processes shared the cores, so the ratios "
              f"below are not comparable with a quiet machine's")
    return noisy


def check_load(noisy_ok: bool) -> bool:
    """Refuse (exit 2) a run that starts with the load average above the core count, unless
    --noisy-ok; returns whether the run is noisy. On a loaded machine PyTorch's threads and
    XLA's suffer differently, so such a run's ratios say little about either."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return False
    if not noisy_ok:
        print(f"bench_train: load average {load:.2f} exceeds the {cores} cores; wait for a "
              f"quiet machine or pass --noisy-ok to run anyway (tables flagged NOISY)",
              file=sys.stderr)
        raise SystemExit(2)
    print(f"# WARNING: load average {load:.2f} > {cores} cores: NOISY RUN", file=sys.stderr)
    return True


def _explicit_threads(argv) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return any(a == "--threads" or a.startswith("--threads=") for a in argv)


def one_core_comparison(argv, summary: list, noisy: bool) -> None:
    """Re-run the same benchmark pinned to one core (a fresh process: the thread pools are
    fixed at import) and print both runs' ratios side by side."""
    import subprocess

    argv = sys.argv[1:] if argv is None else list(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "one_core.json")
        print("\n# the same benchmark pinned to one core (--threads 1):", flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--threads", "1",
                        "--json-out", out], check=True)
        with open(out) as f:
            one = json.load(f)
    print(f"\n# ours / PyTorch (wall), all {_THREADS} cores beside one core"
          + ("; NOISY" if noisy or one["noisy"] else ""))
    print("| M x b x (P + R) | all cores | one core | ours MFU all / one | PyTorch MFU all / one |")
    print("|---|---:|---:|---:|---:|")
    for a, o in zip(summary, one["rows"]):
        print(f"| {a['shape']} | {a['speed']:.2f}x | {o['speed']:.2f}x | "
              f"{a['mfu_ours']:.1%} / {o['mfu_ours']:.1%} | "
              f"{a['mfu_torch']:.1%} / {o['mfu_torch']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
