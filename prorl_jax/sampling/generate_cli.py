"""`prorl-jax generate`: sample completions from a Hugging Face checkpoint directory.

Prompts come from --prompt TEXT or a JSONL file (--prompts) whose records carry a "prompt"
field (text, or a list of {"role", "content"} messages with --chat) and optionally an "id".
Output is one JSON line per prompt with its n completions (to --out, or stdout); a single
--prompt without --out prints the completion texts instead.

Under several processes (jax.distributed) every process reads the prompts and samples over
one global mesh (`distributed.sampling_mesh`); process 0 alone writes --out and prints.

No jax import at module level: `prorl-jax --help` must stay instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prorl_jax.errors import CheckpointError, DataError, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="HF_DIR",
                        help="local Hugging Face checkpoint directory (with its tokenizer), "
                             "or builtin:demo_base")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="one prompt")
    src.add_argument("--prompts", metavar="FILE.jsonl",
                     help='JSONL file, one {"prompt": text | messages, "id": ...} per line')
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0: off)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k (default 0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="default 256")
    parser.add_argument("--chat", action="store_true",
                        help="format prompts with the tokenizer's chat template")
    parser.add_argument("--out", metavar="FILE.jsonl", help="write JSONL here instead of stdout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="prompts per sampler call (default 32)")
    parser.add_argument("--max-batch-tokens", type=int, default=0,
                        help="KV-cache budget per compiled chunk in token slots (0: none)")
    parser.add_argument("--engine", default="continuous",
                        help="continuous (decode slots refilled as rows finish; default) or "
                             "static (chunks run until their longest row stops)")
    parser.add_argument("--decode-slots", type=int, default=None,
                        help="continuous engine: rows decoded at once (default: what "
                             "--max-batch-tokens allows)")


def _read_prompts(args) -> list[dict]:
    if args.prompt is not None:
        return [{"id": "0", "prompt": args.prompt}]
    if not os.path.isfile(args.prompts):
        raise DataError(f"prompts file not found: {args.prompts}")
    records = []
    with open(args.prompts, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{args.prompts}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "prompt" not in rec:
                raise DataError(f"{args.prompts}:{line_no}: record has no 'prompt' field")
            rec.setdefault("id", str(len(records)))
            records.append(rec)
    if not records:
        raise DataError(f"{args.prompts}: no prompts")
    return records


def _encode(tokenizer, prompt, chat: bool, where: str) -> list[int]:
    if isinstance(prompt, list):
        if not chat:
            raise DataError(f"{where}: prompt is a list of chat messages; pass --chat")
        messages = prompt
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}] if chat else None
    else:
        raise DataError(f"{where}: prompt must be text or a list of messages")
    if messages is None:
        ids = tokenizer.encode(prompt)
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise CheckpointError("--chat: the checkpoint's tokenizer has no chat template")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise DataError(f"{where}: prompt encodes to no tokens")
    return list(ids)


def _decode(tokenizer, row, length: int, finished: bool) -> str:
    # The stop token ends the row but is not part of the completion text.
    return tokenizer.decode(row[:length - int(finished)].tolist(), skip_special_tokens=False)


def run(args) -> int:
    from prorl_jax.paths import check_output_file, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out:
        check_output_file(args.out, "--out")
    from prorl_jax.sampling.settings import check_engine_settings

    check_engine_settings(args.engine, args.decode_slots)
    records = _read_prompts(args)

    import dataclasses

    from tqdm import tqdm

    from prorl_jax import distributed
    from prorl_jax.model.hf import load_hf
    from prorl_jax.sampling import SamplingParams, generate

    # Validate the sampling options before the slow part (loading the checkpoint).
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, n=args.n)

    from prorl_jax.tokenizer import load_tokenizer, stop_token_ids

    tokenizer = load_tokenizer(model_dir)
    where = args.prompts or "--prompt"
    encoded = [_encode(tokenizer, r["prompt"], args.chat, f"{where} prompt {r['id']}")
               for r in records]
    mesh = distributed.sampling_mesh()
    if mesh is None:
        cfg, params = load_hf(model_dir)
    else:
        from prorl_jax.sharding import SAMPLE_RULES

        cfg, params = load_hf(model_dir, mesh=mesh, rules=SAMPLE_RULES)
    sampling = dataclasses.replace(sampling,
                                   stop_token_ids=stop_token_ids(model_dir, tokenizer, cfg))

    primary = distributed.is_primary()  # every process gets every row; one writes them
    if args.out and primary:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    out_file = open(args.out, "w", encoding="utf-8") if args.out and primary else None  # noqa: SIM115
    plain = args.prompt is not None and not args.out
    try:
        bar = tqdm(total=len(records), unit="prompt", disable=args.prompt is not None or not primary,
                   file=sys.stderr)
        for start in range(0, len(records), args.batch_size):
            batch = records[start:start + args.batch_size]
            out = generate(cfg, params, encoded[start:start + args.batch_size], sampling,
                           seed=args.seed + start, mesh=mesh,
                           max_batch_tokens=args.max_batch_tokens or None,
                           engine=args.engine, decode_slots=args.decode_slots)
            for i, rec in enumerate(batch if primary else ()):
                rows = range(i * args.n, (i + 1) * args.n)
                texts = [_decode(tokenizer, out.tokens[r], int(out.lengths[r]),
                                 bool(out.finished[r])) for r in rows]
                if plain:
                    for j, text in enumerate(texts):
                        if args.n > 1:
                            print(f"--- sample {j} ---")
                        print(text)
                    continue
                line = json.dumps({"id": rec["id"], "prompt": rec["prompt"], "completions": texts,
                                   "lengths": [int(out.lengths[r]) for r in rows],
                                   "finished": [bool(out.finished[r]) for r in rows]},
                                  ensure_ascii=False)
                print(line, file=out_file or sys.stdout)
            bar.update(len(batch))
        bar.close()
    finally:
        if out_file is not None:
            out_file.close()
    return 0
