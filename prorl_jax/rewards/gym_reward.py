"""Reasoning Gym reward: Reasoning Gym's own score_answer on the last <answer></answer>."""

import functools
import json

from prorl_jax.errors import DataError
from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.extract import answer_text


@functools.cache
def _score_fn(task: str):
    # Building a dataset object per call is slow for some tasks; one per task and process.
    from reasoning_gym import get_score_answer_fn

    try:
        return get_score_answer_fn(task)
    except ValueError:
        raise DataError(f"unknown Reasoning Gym task {task!r}") from None


def parse_ground_truth(ground_truth) -> tuple[str, dict]:
    """Validate {"task": name, "entry": entry} (a dict or its JSON string).

    Args:
      ground_truth: as stored in the prompt record.

    Returns:
      (task name, entry dict).

    Raises:
      DataError: malformed ground truth.
    """
    gt = ground_truth
    if isinstance(gt, str | bytes):
        try:
            gt = json.loads(gt)
        except ValueError as e:
            raise DataError(f"reasoning_gym ground truth is not valid JSON: {e}") from None
    if not isinstance(gt, dict) or not isinstance(gt.get("task"), str) \
            or not isinstance(gt.get("entry"), dict):
        raise DataError("reasoning_gym ground truth must be {'task': <name>, 'entry': <dict>}")
    return gt["task"], gt["entry"]


def score(completion: str, ground_truth) -> Verdict:
    """Score a Reasoning Gym completion.

    Args:
      completion: model output; the answer is the last <answer></answer> after `</think>`.
      ground_truth: {"task": name, "entry": the entry Reasoning Gym generated}.

    Returns:
      Verdict(score_answer's value, reason when it is below 1).
    """
    task, entry = parse_ground_truth(ground_truth)
    if task == "composite":
        # A composite dataset scores each entry with the dataset that generated it.
        source = (entry.get("metadata") or {}).get("source_dataset")
        if not isinstance(source, str):
            raise DataError("composite Reasoning Gym entry lacks metadata.source_dataset")
        task = source
    fn = _score_fn(task)
    answer = answer_text("reasoning_gym", completion)
    if answer is None:
        return Verdict(0.0, "no <answer></answer>")
    # JSON turned tuples (e.g. ARC grids) into lists; score_answer compares types.
    from prorl_jax.data.reasoning_gym_source import restore_entry

    reward = fn(answer=answer, entry=restore_entry(task, entry))
    return Verdict(float(reward), None if reward >= 1 else f"{task} score_answer gave {reward}")
