"""Procedural Reasoning Gym prompts: generated from task names, config and seed, no download.

Each entry becomes a `reasoning_gym` record whose ground truth is
{"task": name, "entry": <the entry, JSON-safe>}; the verifier scores an answer with Reasoning
Gym's own `score_answer` for that task on that entry (docs/CONTRACTS.md).

JSON turns tuples into lists, and a few tasks compare a parsed answer against a tuple in
the entry (arc_agi, rearc: grids), so a correct answer would score 0.05 on the round-tripped
entry. `restore_entry` undoes that for the tasks known to need it, and `load_reasoning_gym`
checks on the first entries of every task that the JSON-safe entry scores the reference
answer exactly as the original does, so an unknown case fails loudly at load time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from prorl_jax.data.records import Record, json_safe
from prorl_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
    from prorl_jax.config import SourceConfig

# How many entries per task to score with original vs JSON-round-tripped entry at load time.
ROUNDTRIP_CHECKS = 3


def _grid(x: Any) -> Any:
    return tuple(tuple(row) for row in x) if isinstance(x, list) else x


# task -> metadata keys that Reasoning Gym compares as tuple-of-tuples grids.
_TUPLE_GRID_KEYS = {"arc_agi": ("input", "output"), "rearc": ("input", "output")}


def restore_entry(task: str, entry: dict) -> dict:
    """Rebuilds the Python types Reasoning Gym's `score_answer` compares against.

    Call this on `ground_truth["entry"]` before `score_answer` (the reasoning_gym verifier
    does). Entries of tasks that need nothing are returned unchanged.

    Args:
      task: the Reasoning Gym task name (ground_truth["task"]).
      entry: the JSON-safe entry (ground_truth["entry"]).

    Returns:
      An entry `score_answer` treats exactly like the freshly generated one.
    """
    keys = _TUPLE_GRID_KEYS.get(task)
    if not keys or not isinstance(entry.get("metadata"), dict):
        return entry
    meta = dict(entry["metadata"])
    for k in keys:
        if k in meta:
            meta[k] = _grid(meta[k])
    return {**entry, "metadata": meta}


def _create(task: str, size: int, seed: int, kwargs: dict):
    import reasoning_gym

    try:
        return reasoning_gym.create_dataset(task, **{"size": size, "seed": seed, **kwargs})
    except Exception as e:  # unknown task names raise ValueError, bad kwargs TypeError etc.
        raise ConfigError(f"reasoning_gym task {task!r}: cannot create the dataset "
                          f"({type(e).__name__}: {e})") from None


def _check_roundtrip(task: str, ds, entry: dict, safe: dict) -> None:
    answer = entry.get("answer")
    if not isinstance(answer, str):
        return  # tasks with many valid answers (answer None) have no reference to score
    restored = restore_entry(task, json.loads(json.dumps(safe)))
    before, after = ds.score_answer(answer, entry), ds.score_answer(answer, restored)
    if before != after:
        raise DataError(f"reasoning_gym task {task!r}: its score_answer gives {after} instead "
                        f"of {before} on the JSON-safe entry; this task is not supported")


def load_reasoning_gym(cfg: SourceConfig) -> list[Record]:
    """Generates the records of a `kind: reasoning_gym` source.

    Args:
      cfg: tasks, size (entries per task), seed, task_config {task: kwargs} and limit.
        task_config kwargs may override size and seed per task.

    Returns:
      size records per task, task by task in the order given (the mixture shuffles them).

    Raises:
      ConfigError: unknown task or bad task kwargs. DataError: an entry that cannot be
        stored as JSON or whose JSON form scores differently.
    """
    name = cfg.name or "reasoning_gym"
    records = []
    for task in cfg.tasks:
        kwargs = dict(cfg.task_config.get(task, {}))
        size, seed = kwargs.pop("size", cfg.size), kwargs.pop("seed", cfg.seed)
        ds = _create(task, size, seed, kwargs)
        for i in range(len(ds)):
            entry = ds[i]
            try:
                safe = json_safe(entry)
            except ValueError as e:
                raise DataError(f"reasoning_gym task {task!r} entry {i}: {e}") from None
            if i < ROUNDTRIP_CHECKS:
                _check_roundtrip(task, ds, entry, safe)
            question = safe.get("question")
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"reasoning_gym task {task!r} entry {i}: no question text")
            records.append(Record(
                id=f"{name}:{task}:{seed}:{i}", domain="reasoning_gym", prompt=question,
                ground_truth={"task": task, "entry": safe},
                meta={"source": name, "task": task, "seed": seed, "index": i}))
            if cfg.limit and len(records) >= cfg.limit:
                return records
    return records
