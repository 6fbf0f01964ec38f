"""`prorl-jax eval`: pass@k of one or more checkpoints, with a reasoning-boundary report.

    prorl-jax eval --model BASE_DIR --model RL_DIR --data reasoning_gym:boxnet,chain_sum:64 \
        --n 64 --k 1,2,4,8,16,32,64 --out eval_out

No jax import at module level: `prorl-jax --help` must stay instant.
"""

from __future__ import annotations

import argparse
import json

from prorl_jax.eval.passk import DEFAULT_THRESHOLD, EvalError

DATA_HELP = ("prompts: a JSONL/JSON/parquet file, directory or glob in the record schema or "
             "verl format (or verl:PATH to force verl), or reasoning_gym:TASK[,TASK...][:N] "
             "for N generated prompts per task (default 50)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval command's options on `parser`."""
    parser.add_argument("--model", action="append", required=True, metavar="DIR",
                        help="Hugging Face checkpoint directory (or builtin:demo_base); repeat "
                             "to compare models; the first is the base of the boundary report")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="name per --model in tables and plots (default: directory names)")
    parser.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--data-seed", type=int, default=1234,
                        help="generation seed for reasoning_gym:... data (default 1234; keep it "
                             "different from the training seed)")
    parser.add_argument("--task-config", metavar="JSON",
                        help='Reasoning Gym dataset options per task, e.g. '
                             '\'{"basic_arithmetic": {"max_terms": 3}}\'')
    parser.add_argument("--suffix", action="append", default=[], metavar="DOMAIN=TEXT",
                        help="instruction appended to the prompts of a domain, replacing the "
                             "default (see docs/data.md); DOMAIN= disables it; repeatable")
    parser.add_argument("--limit", type=int, default=0,
                        help="evaluate only the first N prompts (default 0: all)")
    parser.add_argument("--n", type=int, default=16,
                        help="samples per prompt (default 16, the paper's pass@1 setting; its "
                             "boundary analysis uses 256)")
    parser.add_argument("--k", default="", metavar="K1,K2,...",
                        help="k values for pass@k (default: powers of two up to --n)")
    parser.add_argument("--temperature", type=float, default=0.6, help="default 0.6 (paper)")
    parser.add_argument("--top-p", type=float, default=0.95, help="default 0.95 (paper)")
    parser.add_argument("--top-k", type=int, default=0, help="default 0: off")
    parser.add_argument("--max-new-tokens", type=int, default=32768,
                        help="response budget (default 32768, the paper's 32k)")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096,
                        help="longer prompts are skipped and counted (default 4096)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="render prompts as plain text instead of the chat template")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="a sample counts as solved when its reward >= this (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-prompts", type=int, default=8,
                        help="prompts per sampler call (default 8)")
    parser.add_argument("--max-batch-tokens", type=int, default=0,
                        help="KV-cache budget per compiled chunk in token slots (0: none)")
    parser.add_argument("--engine", default="continuous",
                        help="sampler: continuous (default) or static; the samples are the same")
    parser.add_argument("--reward-workers", type=int, default=2,
                        help="reward processes (default 2; 0 scores in-process without timeouts)")
    parser.add_argument("--reward-timeout", type=float, default=10.0,
                        help="seconds per reward item (default 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory; rerunning into it resumes")


def _parse_task_config(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalError(f"--task-config is not valid JSON ({e.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise EvalError('--task-config must be a JSON object {"task": {option: value}}')
    return value


def _parse_suffixes(items: list[str]) -> dict[str, str]:
    from prorl_jax.data import DOMAINS

    out = {}
    for item in items:
        domain, sep, text = item.partition("=")
        if not sep or domain not in DOMAINS:
            raise EvalError(f"--suffix {item!r}: expected DOMAIN=TEXT with DOMAIN one of {DOMAINS}")
        out[domain] = text
    return out


def run(args) -> int:
    """Run the evaluation described by parsed `args`; returns the exit code."""
    from prorl_jax.eval.data_spec import load_data_spec
    from prorl_jax.eval.passk import parse_ks
    from prorl_jax.eval.runner import EvalSettings, check_fits_model, run_evaluation
    from prorl_jax.paths import check_output_dir, resolve_model_dir
    from prorl_jax.tokenizer import require_tokenizer

    if args.label and len(args.label) != len(args.model):
        raise EvalError(f"--label given {len(args.label)} times for {len(args.model)} --model")
    if args.limit < 0:
        raise EvalError(f"--limit must be >= 0, got {args.limit}")
    if not 0 < args.threshold <= 1:  # rewards lie in [0, 1]: above 1 nothing counts as solved
        raise EvalError(f"--threshold must be in (0, 1] (rewards are in [0, 1]), got {args.threshold}")
    if args.reward_workers < 0 or not args.reward_timeout > 0:
        raise EvalError("--reward-workers must be >= 0 and --reward-timeout > 0")
    settings = EvalSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                            max_prompt_tokens=args.max_prompt_tokens, seed=args.seed,
                            use_chat_template=not args.no_chat_template,
                            suffixes=_parse_suffixes(args.suffix),
                            batch_prompts=args.batch_prompts,
                            max_batch_tokens=args.max_batch_tokens, engine=args.engine)
    ks = parse_ks(args.k, n=args.n)
    # Validate the sampler settings and the model paths before the slow parts.
    from prorl_jax.sampling import SamplingParams

    SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   max_new_tokens=args.max_new_tokens, n=args.n)
    check_output_dir(args.out, "--out")
    for spec in args.model:
        model_dir = resolve_model_dir(spec)
        check_fits_model(model_dir, settings, spec)
        require_tokenizer(model_dir)
    records = load_data_spec(args.data, seed=args.data_seed, limit=args.limit,
                             task_config=_parse_task_config(args.task_config))
    run_evaluation(args.model, records, args.out, settings, ks, threshold=args.threshold,
                   labels=args.label, reward_workers=args.reward_workers,
                   reward_timeout_s=args.reward_timeout, data_spec=args.data,
                   show_progress=not args.no_progress)
    return 0
