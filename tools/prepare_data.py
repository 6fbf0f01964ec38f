"""Convert the public datasets ProRL trained on into prorl_jax record JSONL.

    python tools/prepare_data.py deepscaler deepscaler.json -o data/math.jsonl
    python tools/prepare_data.py eurus train.parquet -o data/eurus.jsonl --on-bad-record skip
    python tools/prepare_data.py scp116k scp.jsonl -o data/stem.jsonl --require-agreement
    python tools/prepare_data.py ifeval if.jsonl -o data/ifeval.jsonl
    python tools/prepare_data.py reasoning_gym tasks.txt -o data/rg.jsonl --size 400 --seed 1

Formats (input files are JSONL, JSON or parquet, read through `datasets`):
  deepscaler     {problem, answer}                                        -> math
  eurus          Eurus-2-RL-Data / verl rows (data_source, prompt, ability,
                 reward_model.ground_truth, extra_info)                   -> math / code / ...
  scp116k        {domain, problem, matched_solution, answer?}; the answer is `answer` when
                 present, else the last \\boxed{} of matched_solution    -> stem
  ifeval         {prompt, instruction_id_list, kwargs, key?}               -> ifeval
  reasoning_gym  a text file, one task per line, optionally followed by JSON kwargs
                 (`chain_sum {"min_terms": 2}`); `#` starts a comment      -> reasoning_gym
The output holds one record per line: {id, domain, prompt, ground_truth, meta}, loadable
as a `kind: jsonl` source.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator

from prorl_jax.config import SourceConfig
from prorl_jax.data.readers import expand_paths, read_rows
from prorl_jax.data.reasoning_gym_source import load_reasoning_gym
from prorl_jax.data.records import Record, make_record
from prorl_jax.data.sources import verl_row_to_record
from prorl_jax.errors import ConfigError, DataError, UserError


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`, nested braces handled."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def _need(row: dict, *fields: str) -> None:
    for f in fields:
        if row.get(f) is None:
            raise ValueError(f"missing field {f!r}")


def convert_deepscaler(row: dict, key: str, _args) -> Record:
    """DeepScaleR-Preview-Dataset row {problem, answer, solution?} -> math record."""
    _need(row, "problem", "answer")
    return make_record(row.get("id", f"deepscaler:{key}"), "math", row["problem"], row["answer"],
                       {"source": "deepscaler"})


def convert_eurus(row: dict, key: str, _args) -> Record:
    """Eurus-2-RL-Data (verl-format) row -> math or code record by its ability."""
    return verl_row_to_record(row, f"eurus:{key}")


def convert_scp116k(row: dict, key: str, args) -> Record | None:
    """SCP-116K row -> stem record; None when filtered out by --require-agreement."""
    _need(row, "problem")
    if args.require_agreement and not (row.get("is_o1_solution_same_with_matched_solution")
                                       or row.get("is_qwq_solution_same_with_matched_solution")):
        return None
    answer = row.get("answer")
    if answer is None:
        _need(row, "matched_solution")
        answer = last_boxed(row["matched_solution"])
        if not answer:
            raise ValueError("no 'answer' field and no \\boxed{} answer in 'matched_solution'")
    return make_record(row.get("id", f"scp116k:{key}"), "stem", row["problem"], answer,
                       {"source": "scp116k", "subject": row.get("domain")})


def convert_ifeval(row: dict, key: str, _args) -> Record:
    """IFEval-style row {prompt, instruction_id_list, kwargs} -> ifeval record."""
    _need(row, "prompt", "instruction_id_list")
    rid = row.get("key", row.get("id", f"ifeval:{key}"))
    gt = {"instruction_id_list": row["instruction_id_list"], "kwargs": row.get("kwargs")}
    return make_record(rid, "ifeval", row["prompt"], gt, {"source": "ifeval"})


CONVERTERS: dict[str, Callable] = {
    "deepscaler": convert_deepscaler, "eurus": convert_eurus,
    "scp116k": convert_scp116k, "ifeval": convert_ifeval,
}


def parse_task_list(path: str) -> tuple[list[str], dict[str, dict]]:
    """Reads a Reasoning Gym task list: `task [JSON kwargs]` per line, `#` comments.

    Raises:
      DataError: naming the line of a malformed entry or a repeated task.
    """
    tasks, config = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise DataError(f"{path}: cannot read task list ({e.strerror})") from None
    for ln, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        task, _, rest = line.partition(" ")
        if task in config:
            raise DataError(f"{path}:{ln}: task {task!r} is listed twice")
        try:
            kwargs = json.loads(rest) if rest.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{ln}: kwargs of {task!r} are not valid JSON ({e.msg})") from None
        if not isinstance(kwargs, dict):
            raise DataError(f"{path}:{ln}: kwargs of {task!r} must be a JSON object")
        tasks.append(task)
        config[task] = kwargs
    if not tasks:
        raise DataError(f"{path}: the task list is empty")
    return tasks, config


def iter_records(fmt: str, inputs: list[str], args, problems: list[str]) -> Iterator[Record]:
    """Yields converted records; bad rows raise DataError or go to `problems` when skipping."""
    if fmt == "reasoning_gym":
        for path in inputs:
            tasks, task_config = parse_task_list(path)
            cfg = SourceConfig(kind="reasoning_gym", tasks=tuple(tasks), task_config=task_config,
                               size=args.size, seed=args.seed)
            yield from load_reasoning_gym(cfg)
        return
    convert = CONVERTERS[fmt]
    inputs = [f for pattern in inputs for f in expand_paths(pattern)]
    for path in inputs:
        raw = read_rows(path, on_bad_record=args.on_bad_record)
        problems.extend(raw.skipped)
        prefix = os.path.basename(path).split(".")[0] if len(inputs) > 1 else ""
        for row, where, key in zip(raw.rows, raw.where, raw.keys):
            try:
                rec = convert(row, f"{prefix}:{key}" if prefix else key, args)
            except ValueError as e:
                if args.on_bad_record == "error":
                    raise DataError(f"{where}: {e}") from None
                problems.append(f"{where}: {e}")
                continue
            if rec is not None:
                yield rec


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit code (2 on a user error)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("format", choices=[*CONVERTERS, "reasoning_gym"])
    p.add_argument("inputs", nargs="+", help="input files (JSONL / JSON / parquet, or task lists)")
    p.add_argument("-o", "--output", required=True, help="output JSONL file")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error")
    p.add_argument("--limit", type=int, default=0, help="stop after this many records (0 = all)")
    p.add_argument("--require-agreement", action="store_true",
                   help="scp116k: keep rows whose o1 or QwQ solution matches the reference")
    p.add_argument("--size", type=int, default=1000, help="reasoning_gym: entries per task")
    p.add_argument("--seed", type=int, default=0, help="reasoning_gym: generation seed")
    args = p.parse_args(argv)
    problems: list[str] = []
    n = 0
    tmp = args.output + ".tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as out:
            for rec in iter_records(args.format, args.inputs, args, problems):
                out.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
                n += 1
                if args.limit and n >= args.limit:
                    break
        if n == 0:
            raise DataError(f"{', '.join(args.inputs)}: no records converted"
                            + (f" ({len(problems)} skipped, e.g. {problems[0]})" if problems else ""))
        os.replace(tmp, args.output)  # never leave a half-written output behind
    except (UserError, ConfigError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for msg in problems[:10]:
        print(f"skipped {msg}", file=sys.stderr)
    print(f"wrote {n} records to {args.output}" + (f" (skipped {len(problems)})" if problems else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
