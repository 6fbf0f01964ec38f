"""Builds the embedded demo's base model, prorl_jax/assets/demo_base (docs/demo.md).

A tiny Qwen2 (0.8M parameters, byte-level tokenizer without merges) gets a short
supervised warm-up on Reasoning Gym `basic_arithmetic` prompts (tools/demo_task.py).
Half of its targets carry the requested <answer></answer> tags and half are the bare
number, and training stops while the arithmetic is still partly learned: the base solves
some held-out problems and follows the format about half the time, so ProRL has both a
format to learn and answers to sharpen. Everything is seeded: the same command reproduces
the shipped checkpoint bit for bit on the same JAX version and CPU.

    python tools/make_demo_base.py                 # train, save, evaluate (~13 min, 2 CPU cores)
    python tools/make_demo_base.py --eval-only     # re-measure the shipped base
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import demo_task  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "prorl_jax" / "assets" / "demo_base"
SEQ_LEN = 64  # every SFT example (prompt + response + eos) fits; also the sampler's prompt bucket
EVAL_PROMPTS = 256  # held-out prompts: the first ones of demo_task.EVAL_SEED
SFT_POOL = 32768  # SFT entries drawn (fixed, so a shorter run is a prefix of a longer one)
WARMUP_STEPS = 30


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0, help="init, batch-order and target-format seed")
    p.add_argument("--steps", type=int, default=1000, help="SFT optimizer steps")
    p.add_argument("--batch", type=int, default=64, help="SFT examples per step")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (after warmup)")
    p.add_argument("--bare-fraction", type=float, default=0.5,
                   help="share of SFT targets without the <answer></answer> tags")
    p.add_argument("--eval-n", type=int, default=16, help="samples per held-out prompt")
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint in --out")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    return p.parse_args(argv)


def model_config(tokenizer):
    from prorl_jax.model.config import ModelConfig

    return ModelConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, max_position_embeddings=demo_task.MODEL_MAX_LENGTH,
        eos_token_id=tokenizer.eos_token_id, rope_theta=10000.0, rms_norm_eps=1e-6)


def eval_records() -> list:
    return demo_task.records(EVAL_PROMPTS, demo_task.EVAL_SEED)


def sft_arrays(tokenizer, records: list, exclude: set[str], bare_fraction: float, seed: int):
    """Right-padded SFT batch arrays; questions in `exclude` (the held-out set) are skipped.

    A `bare_fraction` share of the targets is the bare answer ("7") instead of
    "<answer>7</answer>" (chosen per record by a seeded draw, before the exclusion): the
    base then follows the requested format only part of the time, a behaviour that is
    shared by every prompt and so one the reward can teach within the demo's few steps.

    Returns:
      tokens int32 [E, SEQ_LEN], attention int32 [E, SEQ_LEN] and target float32 [E, SEQ_LEN]
      (1 where the token is part of the response, i.e. the loss is taken on it).
    """
    rows, pad, fmt = [], tokenizer.pad_token_id, demo_task.formatter(tokenizer)
    bare = np.random.default_rng(seed).random(len(records)) < bare_fraction
    for r, is_bare in zip(records, bare):
        if r.prompt in exclude:
            continue
        prompt = fmt.encode(r)
        answer = r.ground_truth["entry"]["answer"]
        response = answer if is_bare else demo_task.response_text(answer)
        response = tokenizer.encode(response + tokenizer.eos_token, add_special_tokens=False)
        if prompt is None or len(prompt) + len(response) > SEQ_LEN:
            raise SystemExit(f"SFT example longer than {SEQ_LEN} tokens: {r.prompt!r}")
        rows.append((prompt, response))
    tokens = np.full((len(rows), SEQ_LEN), pad, np.int32)
    attention = np.zeros((len(rows), SEQ_LEN), np.int32)
    target = np.zeros((len(rows), SEQ_LEN), np.float32)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        tokens[i, :n] = prompt + response
        attention[i, :n] = 1
        target[i, len(prompt):n] = 1
    return tokens, attention, target


def train(cfg, params, arrays, *, steps: int, batch: int, lr: float, seed: int, on_step=None):
    """AdamW, linear warmup then constant lr; cross-entropy on the response tokens only.

    The constant schedule makes the first k steps of a long run equal a k-step run, so
    the SFT length can be tuned from the snapshots of one run (`on_step(i, params)`).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from prorl_jax.model import qwen

    schedule = optax.linear_schedule(0.0, lr, WARMUP_STEPS)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    opt_state = opt.init(params)

    def loss_fn(p, tokens, attention, target):
        logits = qwen.forward(cfg, p, tokens, attention)[:, :-1]  # [B, T-1, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]  # [B, T-1]
        w = target[:, 1:]
        return jnp.sum(nll * w) / jnp.sum(w)

    @jax.jit
    def step(p, s, tokens, attention, target):
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens, attention, target)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    tokens, attention, target = arrays
    order = np.random.default_rng(seed).permutation(len(tokens))
    t0, losses = time.time(), []
    for i in range(steps):
        idx = np.take(order, np.arange(i * batch, (i + 1) * batch), mode="wrap")
        params, opt_state, loss = step(params, opt_state, tokens[idx], attention[idx], target[idx])
        losses.append(float(loss))
        if (i + 1) % 25 == 0 or i == 0:
            print(f"step {i + 1:4d}/{steps}  loss {np.mean(losses[-25:]):.4f}  "
                  f"{time.time() - t0:6.1f}s", flush=True)
        if on_step is not None:
            on_step(i + 1, params)
    return params


def evaluate(cfg, params, tokenizer, records, *, temperature: float, n: int, seed: int = 0):
    """Samples n responses per held-out prompt and scores them with the trainer's verifier.

    Returns:
      int64 [P] fully correct samples (reward 1) per prompt, the mean reward, and the
      share of samples with an <answer></answer> pair.
    """
    from prorl_jax import rewards
    from prorl_jax.rewards.extract import last_tag
    from prorl_jax.sampling import SamplingParams, generate

    fmt = demo_task.formatter(tokenizer)
    prompts = [fmt.encode(r) for r in records]
    sampling = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=8, n=n,
                              stop_token_ids=(tokenizer.eos_token_id,))
    out = generate(cfg, params, prompts, sampling, seed=seed)
    verify = rewards.get("reasoning_gym")
    scores, tagged = np.zeros((len(records), n)), 0
    for row in range(len(records) * n):
        text = tokenizer.decode(out.tokens[row, :out.lengths[row]].tolist(),
                                skip_special_tokens=False)
        scores[row // n, row % n] = verify(text, records[row // n].ground_truth)
        tagged += last_tag(text, "answer") is not None
    return (scores >= 1.0).sum(axis=1), float(scores.mean()), tagged / scores.size


def report(cfg, params, tokenizer, n: int) -> dict:
    from prorl_jax.eval.passk import pass_at_k

    records = eval_records()
    results = {"eval_prompts": len(records), "eval_seed": demo_task.EVAL_SEED, "n": n}
    for temperature in (1.0, 0.6):
        t0 = time.time()
        correct, mean_reward, tagged = evaluate(cfg, params, tokenizer, records,
                                        temperature=temperature, n=n)
        terms = np.array([r.ground_truth["entry"]["metadata"]["num_terms"] for r in records])
        # Chance that a group of 8 samples is all right or all wrong (dynamic sampling drops
        # it): the unbiased estimate from n samples is C(c, 8)/C(n, 8) + C(n-c, 8)/C(n, 8).
        constant = 1 - pass_at_k(n, correct, 8) + 1 - pass_at_k(n, n - correct, 8)
        results[f"t{temperature}"] = stats = {
            "pass@1": float(np.mean(pass_at_k(n, correct, 1))),
            "pass@8": float(np.mean(pass_at_k(n, correct, 8))),
            **{f"pass@1/{k}_terms": float(np.mean(correct[terms == k]) / n)
               for k in sorted(set(terms.tolist()))},
            "mean_reward": mean_reward,
            "answer_tag_rate": tagged,
            "pass@1_when_tagged": float(correct.sum() / n / len(records) / max(tagged, 1e-9)),
            "constant_groups@8": float(np.mean(constant)),
            "seconds": round(time.time() - t0, 1)}
        print(f"T={temperature}: {json.dumps(stats)}", flush=True)
    return results


def write_warmup_data(out: pathlib.Path) -> None:
    """warmup_data.json: the SFT pool's source minus the held-out prompts' source, from which
    the trainer regenerates the warm-up prompts to check by exact text that no held-out prompt
    was seen (rl/boundary.py)."""
    from prorl_jax.config import to_dict

    spec = {"sources": [to_dict(demo_task.source_config(SFT_POOL, demo_task.SFT_SEED))],
            "minus": [to_dict(demo_task.source_config(EVAL_PROMPTS, demo_task.EVAL_SEED))]}
    (pathlib.Path(out) / "warmup_data.json").write_text(json.dumps(spec, indent=2) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    from prorl_jax.model import hf, qwen

    if args.eval_only:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(args.out))
        cfg, params = hf.load_hf(str(args.out))
        report(cfg, params, tokenizer, args.eval_n)
        return

    tokenizer = demo_task.build_tokenizer()
    cfg = model_config(tokenizer)
    held_out = {r.prompt for r in eval_records()}
    pool = demo_task.records(SFT_POOL, demo_task.SFT_SEED)
    arrays = sft_arrays(tokenizer, pool, held_out, args.bare_fraction, args.seed)
    removed = len(pool) - len(arrays[0])
    print(f"SFT: {len(arrays[0])} examples ({removed} entries with a held-out question removed), "
          f"{args.steps} steps x {args.batch}", flush=True)
    params = qwen.init_params(cfg, jax.random.key(args.seed))
    t0 = time.time()
    params = train(cfg, params, arrays, steps=args.steps, batch=args.batch, lr=args.lr,
                   seed=args.seed)
    print(f"SFT took {time.time() - t0:.1f}s", flush=True)

    hf.save_hf(str(args.out), cfg, params)
    demo_task.save_tokenizer(tokenizer, args.out)
    write_warmup_data(args.out)
    print(f"saved {args.out}", flush=True)
    if not args.no_eval:
        report(cfg, params, tokenizer, args.eval_n)


if __name__ == "__main__":
    main()
