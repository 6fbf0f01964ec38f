"""Per-prompt evaluation results and their resumable JSONL files.

One line per finished prompt, appended and flushed as soon as the prompt is scored, so an
interrupted evaluation loses at most the batch in flight; rerunning reads the file and skips
the ids it already holds. A torn final line (the process died mid-write) is dropped; a bad
line anywhere else is an error naming the file and line, never a silent gap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from prorl_jax.eval.passk import EvalError


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """The n samples of one prompt and their rewards.

    Attributes:
      id: the record id.
      task: task name used for per-task tables (see `record_task`).
      domain: reward domain ("math", "code", "stem", "reasoning_gym", "ifeval").
      rewards: n rewards in [0, 1], one per sample.
      completions: n decoded completions.
      lengths: n generated token counts (including the stop token).
      finished: n flags, True when the sample ended with a stop token.
      prompt_hash: fingerprint of the record the samples answer (see `record_fingerprint`),
        so a rerun can tell a changed prompt behind the same id.
    """

    id: str
    task: str
    domain: str
    rewards: tuple[float, ...]
    completions: tuple[str, ...] = ()
    lengths: tuple[int, ...] = ()
    finished: tuple[bool, ...] = ()
    prompt_hash: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "task": self.task, "domain": self.domain,
                "rewards": list(self.rewards), "completions": list(self.completions),
                "lengths": list(self.lengths), "finished": list(self.finished),
                "prompt_hash": self.prompt_hash}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PromptResult:
        return cls(id=str(obj["id"]), task=str(obj["task"]), domain=str(obj["domain"]),
                   rewards=tuple(float(r) for r in obj["rewards"]),
                   completions=tuple(str(t) for t in obj.get("completions", ())),
                   lengths=tuple(int(x) for x in obj.get("lengths", ())),
                   finished=tuple(bool(x) for x in obj.get("finished", ())),
                   prompt_hash=str(obj.get("prompt_hash", "")))


def record_task(record: Mapping[str, Any]) -> str:
    """The task a prompt record belongs to, for per-task pass@k.

    Looked up in order: meta["task"], the Reasoning Gym task in ground_truth["task"],
    meta["data_source"] (verl datasets), and finally the record's domain.

    Args:
      record: a prompt record {id, domain, prompt, ground_truth, meta}.

    Returns:
      the task name.
    """
    meta = record.get("meta") or {}
    if isinstance(meta, Mapping):
        if meta.get("task"):
            return str(meta["task"])
    gt = record.get("ground_truth")
    if record.get("domain") == "reasoning_gym" and isinstance(gt, Mapping) and gt.get("task"):
        return str(gt["task"])
    if isinstance(meta, Mapping) and meta.get("data_source"):
        return str(meta["data_source"])
    return str(record["domain"])


def record_fingerprint(record: Mapping[str, Any]) -> str:
    """A short hash of what a prompt asks and how it is scored (domain, prompt, ground truth).

    Args:
      record: a prompt record as a dict.

    Returns:
      16 hex digits.
    """
    blob = json.dumps([record["domain"], record["prompt"], record["ground_truth"]],
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_results(path: str | os.PathLike) -> dict[str, PromptResult]:
    """Read a per-prompt results file.

    Args:
      path: JSONL file written by `append_results`; a missing file reads as empty.

    Returns:
      {record id: PromptResult} in file order (a repeated id keeps its last line).

    Raises:
      EvalError: a line other than the last is not a valid result.
    """
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    results: dict[str, PromptResult] = {}
    # The final element is "" after a clean write, or the torn tail of an interrupted one.
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            result = PromptResult.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            if lineno == len(lines):
                continue
            raise EvalError(f"{path}:{lineno}: not a per-prompt result ({e})") from None
        results[result.id] = result
    return results


def append_results(path: str | os.PathLike, results: Iterable[PromptResult]) -> None:
    """Append results as JSON lines and flush them to disk.

    A torn final line left by an interrupted writer is cut off first, so new lines never
    glue onto it.

    Args:
      path: the JSONL file (created with its parent directory when missing).
      results: the results to append.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
