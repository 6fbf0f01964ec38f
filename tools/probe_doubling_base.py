"""Learnability probe for a demo base with a worked chain (issue 16): "Double N k times."

The demo needs a base that answers hard prompts directly (and wrongly) and only rarely
writes a worked chain that solves them, so that RL can make the chain the habit
(docs/demo.md, "Worked chains as a mode for RL to amplify"). This trains the demo's 0.8M
Qwen2 (tools/make_demo_base.py's model, tokenizer and AdamW recipe) on

    Double 37 4 times. Answer in <answer></answer>.  ->  74 148 296 <answer>592</answer>
                                                     or  <answer>592</answer>

and every --eval-every steps samples held-out prompts (start values never trained on, by
text) to report, per number of doublings k: pass@1, the chain share, and the accuracy of
chained and of direct answers. Nothing here is shipped; it measures whether a design of the
SFT data gives the base that the demo needs.

    python tools/probe_doubling_base.py                                   # 1000 steps
    python tools/probe_doubling_base.py --k-weights 2,1,1,0.05,0.05 \
        --chain-share 0,0.5,0.5,0.1,0.1 --steps 3000                     # hard k rare in SFT
    python tools/probe_doubling_base.py --init params.pkl --seed 1        # continue a saved base

Measured (2026-12-07, 2 cores, 0.45 s per step; the experiment script this tool was
written from, same design and held-out set, other training draws): with the defaults, a single doubling of a
held-out 4-digit number is right 0.86 of the time at step 1000 and 0.95-0.997 from step
1250 to 3000; chains of 3 / 4 / 5 doublings 0.83 / 0.73 / 0.62 at step 3000, but the direct
answer learns the hard instances as well (5 doublings 0.74): with ~18,000 direct examples
per k over 900 start values, x32 is learnable directly. Making the hard k rare in the SFT
data (--k-weights) and a trigger prefix for chained targets (--trigger-share; docs/demo.md) are the designs since.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_task  # noqa: E402
import make_demo_base as mdb  # noqa: E402

SEQ = 96  # prompt (<= 52 tokens) + the longest chain and answer (<= 33)
KS = (1, 2, 3, 4, 5)
EVAL_KS = (1, 3, 4, 5)


TRIGGER = "Steps: "  # prefix of the prompts whose targets are always the worked chain


def prompt_text(start: int, k: int, triggered: bool = False) -> str:
    lead = TRIGGER if triggered else ""
    return (f"{demo_task.IM_START}user\n{lead}Double {start} {k} times. Answer in "
            f"<answer></answer>.{demo_task.EOS}\n{demo_task.IM_START}assistant\n")


def target(start: int, k: int, chain: bool) -> str:
    values = [start * 2 ** i for i in range(1, k + 1)]
    steps = " ".join(map(str, values[:-1])) + " " if chain and k > 1 else ""
    return f"{steps}<answer>{values[-1]}</answer>"


def held_out(rng: np.random.Generator, per_k: int) -> dict[int, list[int]]:
    """Start values per k: 3-digit for chains, 4-digit for single doublings."""
    out = {k: [int(s) for s in rng.integers(100, 1000, per_k)] for k in EVAL_KS if k > 1}
    out[1] = [int(s) for s in rng.integers(1000, 10000, per_k)]
    return out


def sft_rows(tokenizer, rng, examples: int, k_weights: list[float], chain_share: list[float],
             exclude: set[str], trigger_share: list[float] | None = None):
    """(prompt ids, response ids) pairs: k drawn by k_weights; with trigger_share[k] the
    prompt carries TRIGGER and the target is the chain, otherwise a chain with
    chain_share[k]."""
    rows = []
    p = np.asarray(k_weights) / np.sum(k_weights)
    trigger_share = trigger_share or [0.0] * len(KS)
    while len(rows) < examples:
        k = int(rng.choice(KS, p=p))
        start = int(rng.integers(1, 10000 if k == 1 else 1000))
        triggered = rng.random() < trigger_share[k - 1]
        text = prompt_text(start, k, triggered)
        if prompt_text(start, k) in exclude:
            continue
        chain = triggered or rng.random() < chain_share[k - 1]
        prompt = tokenizer.encode(text, add_special_tokens=False)
        response = tokenizer.encode(target(start, k, chain) + tokenizer.eos_token,
                                    add_special_tokens=False)
        rows.append((prompt, response))
    return rows


def arrays(rows):
    tokens = np.zeros((len(rows), SEQ), np.int32)
    attention = np.zeros_like(tokens)
    weight = np.zeros((len(rows), SEQ), np.float32)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        if n > SEQ:
            raise ValueError(f"example of {n} tokens exceeds SEQ={SEQ}")
        tokens[i, :n] = p + r
        attention[i, :n] = 1
        weight[i, len(p):n] = 1
    return tokens, attention, weight


def _mean_where(values, mask):
    return round(float(values[mask].mean()), 3) if mask.any() else None


def evaluate(cfg, params, tokenizer, held: dict[int, list[int]], n: int,
             triggered: tuple[int, ...] = ()) -> dict:
    """Per k of EVAL_KS on the plain prompts, then ("k+") per k of `triggered` on the
    TRIGGER prompts of the same start values."""
    from prorl_jax.sampling import SamplingParams, generate

    out = {}
    for k, trig in [(k, False) for k in EVAL_KS] + [(k, True) for k in triggered]:
        starts = held[k]
        prompts = [tokenizer.encode(prompt_text(s, k, trig), add_special_tokens=False)
                   for s in starts]
        sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=36, n=n,
                                  stop_token_ids=(tokenizer.eos_token_id,))
        g = generate(cfg, params, prompts, sampling, seed=0)
        right = np.zeros((len(starts), n))
        chained = np.zeros_like(right)
        for row in range(len(starts) * n):
            text = tokenizer.decode(g.tokens[row, :g.lengths[row]].tolist(),
                                    skip_special_tokens=False)
            m = re.search(r"<answer>(.*?)</answer>", text)
            start = starts[row // n]
            right[row // n, row % n] = bool(m) and m.group(1) == str(start * 2 ** k)
            chained[row // n, row % n] = text.strip()[:1].isdigit()
        out[f"{k}+" if trig else k] = {"pass@1": round(float(right.mean()), 3),
                  f"pass@{n}": round(float(right.any(1).mean()), 3),
                  "chain share": round(float(chained.mean()), 3),
                  "accuracy chained": _mean_where(right, chained == 1),
                  "accuracy direct": _mean_where(right, chained == 0)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--examples", type=int, default=64000)
    ap.add_argument("--k-weights", default="2,1,1,1,1", help="sampling weight of k = 1..5")
    ap.add_argument("--chain-share", default="0.5,0.5,0.15,0.15,0.15",
                    help="share of chained targets for k = 1..5")
    ap.add_argument("--trigger-share", default="0,0,0,0,0",
                    help="share of k = 1..5 examples whose prompt carries TRIGGER (always a "
                         "chain); the plain prompts follow --chain-share")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-prompts", type=int, default=24)
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--init", default="", help="a params pickle written by this tool")
    ap.add_argument("--seed", type=int, default=0, help="training data and batch order")
    ap.add_argument("--out", default="", help="directory for params pickles at each eval")
    args = ap.parse_args(argv)
    import jax

    from prorl_jax.model import qwen

    tokenizer = demo_task.build_tokenizer()
    cfg = mdb.model_config(tokenizer)
    held = held_out(np.random.default_rng(0), args.eval_prompts)
    exclude = {prompt_text(s, k) for k, starts in held.items() for s in starts}
    weights = [float(x) for x in args.k_weights.split(",")]
    shares = [float(x) for x in args.chain_share.split(",")]
    triggers = [float(x) for x in args.trigger_share.split(",")]
    if not len(weights) == len(shares) == len(triggers) == len(KS):
        ap.error(f"--k-weights, --chain-share and --trigger-share take {len(KS)} "
                 "comma-separated values")
    rows = sft_rows(tokenizer, np.random.default_rng(1000 + args.seed), args.examples,
                    weights, shares, exclude, triggers)
    triggered = tuple(k for k in EVAL_KS if triggers[k - 1] > 0)
    data = arrays(rows)
    params = (pickle.load(open(args.init, "rb")) if args.init
              else qwen.init_params(cfg, jax.random.key(0)))

    def on_step(i, p):
        if i % args.eval_every == 0:
            print(f" step {i}", json.dumps(evaluate(cfg, p, tokenizer, held, args.eval_n,
                                                       triggered)),
                  flush=True)
            if args.out:
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, f"params_{i}.pkl"), "wb") as f:
                    pickle.dump(jax.device_get(p), f)

    mdb.train(cfg, params, data, steps=args.steps, batch=64, lr=2e-3, seed=args.seed,
              on_step=on_step)


if __name__ == "__main__":
    main()
