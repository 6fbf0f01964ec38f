"""STEM reward: binary match of a multiple-choice letter or short answer, read from the last
\\boxed{} or else the last "Answer: X" line."""

import re

from prorl_jax.errors import DataError
from prorl_jax.rewards import math_reward
from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.extract import final_text, last_boxed

_ANSWER_LINE = re.compile(r"^[\s*#>]*(?:final\s+)?answer\s*\**\s*[:：]\s*(.+?)\s*$",
                          re.IGNORECASE | re.MULTILINE)
_CHOICE = re.compile(r"^\(?([A-Z])\)?(?:[.:)\s]|$)")


def _clean(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", text)
    return text.replace("$", "").replace("**", "").strip().rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The candidate answer: last \\boxed{} after `</think>`, else the last "Answer:" line.

    Args:
      completion: model output.

    Returns:
      The cleaned candidate, or None.
    """
    text = final_text(completion)
    found = last_boxed(text)
    if found is None:
        lines = _ANSWER_LINE.findall(text)
        found = lines[-1] if lines else None
    return None if found is None else _clean(found)


def _choice(text: str) -> str | None:
    m = _CHOICE.match(text.strip())
    return m.group(1) if m else None


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def score(completion: str, ground_truth) -> Verdict:
    """Score a STEM completion.

    Args:
      completion: model output.
      ground_truth: a choice letter ("B", "(B)") or a short answer (text or number).

    Returns:
      Verdict(1.0 on a match else 0.0, reason for a 0).

    Raises:
      DataError: empty ground truth.
    """
    if not isinstance(ground_truth, str | int | float) or not str(ground_truth).strip():
        raise DataError(f"stem ground truth must be a letter or short answer, got {ground_truth!r}")
    reference = _clean(str(ground_truth))
    answer = extract_answer(completion)
    if answer is None:
        return Verdict(0.0, "no \\boxed{} or 'Answer:' line")
    if re.fullmatch(r"\(?[A-J]\)?", reference):
        ok = _choice(answer) == reference.strip("()")
    else:
        ok = _norm(answer) == _norm(reference) or math_reward.equivalent(reference, answer)
    return Verdict(1.0) if ok else Verdict(0.0, "wrong answer")
