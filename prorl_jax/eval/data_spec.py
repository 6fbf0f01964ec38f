"""The --data SPEC of `prorl-jax eval`: which prompts to evaluate on.

Forms:
  reasoning_gym:TASK[,TASK...][:N]   N procedurally generated prompts per task (default 50),
                                      from --data-seed (keep it different from the training seed)
  verl:PATH                          a verl-format file, directory or glob (JSONL/JSON/parquet)
  PATH                               a file, directory or glob in the record schema; verl-format
                                      rows (data_source + reward_model) are recognised by
                                      themselves
The prompts are loaded through prorl_jax.data's sources, so the same checks (file and line
in every error) apply as in training.
"""

from __future__ import annotations

from prorl_jax.eval.passk import EvalError

DEFAULT_GYM_SIZE = 50
VERL_KEYS = ("data_source", "reward_model")


def parse_data_spec(spec: str, *, seed: int = 0, limit: int = 0,
                    task_config: dict | None = None):
    """Turn a --data SPEC into a data source config.

    Args:
      spec: see the module docstring.
      seed: generation seed for reasoning_gym specs.
      limit: keep only the first `limit` records (0 = all).
      task_config: {task: Reasoning Gym dataset kwargs} for reasoning_gym specs.

    Returns:
      a prorl_jax.config.SourceConfig.

    Raises:
      EvalError: a malformed spec.
    """
    from prorl_jax.config import SourceConfig

    spec = spec.strip()
    if not spec:
        raise EvalError("--data is empty")
    if spec.startswith("reasoning_gym:"):
        parts = spec.split(":")
        if len(parts) > 3 or not parts[1].strip():
            raise EvalError(f"--data {spec!r}: expected reasoning_gym:TASK[,TASK...][:N]")
        tasks = tuple(t.strip() for t in parts[1].split(",") if t.strip())
        size = DEFAULT_GYM_SIZE
        if len(parts) == 3:
            try:
                size = int(parts[2])
            except ValueError:
                raise EvalError(f"--data {spec!r}: N must be an integer, got {parts[2]!r}") from None
            if size < 1:
                raise EvalError(f"--data {spec!r}: N must be >= 1")
        return SourceConfig(kind="reasoning_gym", tasks=tasks, size=size, seed=seed, limit=limit,
                            name="reasoning_gym", task_config=dict(task_config or {}))
    if task_config:
        raise EvalError("a task config applies to reasoning_gym:... data only")
    if spec.startswith("verl:"):
        return SourceConfig(kind="verl", path=spec[len("verl:"):], limit=limit)
    kind = "verl" if _looks_like_verl(spec) else "jsonl"
    return SourceConfig(kind=kind, path=spec, limit=limit)


def _looks_like_verl(path: str) -> bool:
    from prorl_jax.data.readers import expand_paths, read_rows

    first = expand_paths(path)[0]
    rows = read_rows(first, on_bad_record="skip").rows
    return bool(rows) and all(k in rows[0] for k in VERL_KEYS)


def load_data_spec(spec: str, *, seed: int = 0, limit: int = 0,
                   task_config: dict | None = None, on_bad_record: str = "error") -> list:
    """Load the prompt records a --data SPEC names.

    Args:
      spec: see the module docstring.
      seed: generation seed for reasoning_gym specs.
      limit: keep only the first `limit` records (0 = all).
      task_config: {task: Reasoning Gym dataset kwargs} for reasoning_gym specs.
      on_bad_record: "error" or "skip" (see prorl_jax.data.load_source).

    Returns:
      list of prorl_jax.data.Record with unique ids.

    Raises:
      EvalError, DataError, ConfigError: a malformed spec, bad data or duplicate ids.
    """
    from prorl_jax.data import load_source

    records = load_source(parse_data_spec(spec, seed=seed, limit=limit, task_config=task_config),
                          on_bad_record=on_bad_record)
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            # Results are keyed by id for resuming; a duplicate would be silently merged.
            raise EvalError(f"--data {spec!r}: record id {r.id!r} occurs more than once")
        seen.add(r.id)
    return records
