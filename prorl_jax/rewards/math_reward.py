"""Math reward: binary, the last \\boxed{} answer judged equivalent by Math-Verify."""

import threading

from prorl_jax.errors import DataError
from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.extract import answer_text

# Math-Verify's own limit (seconds) for parsing and for checking one pair.
MATH_VERIFY_TIMEOUT_S = 5


def _timeout() -> int | None:
    # Math-Verify enforces timeouts with signal.alarm, which only works on the main thread;
    # elsewhere (a trainer's helper thread) run without one rather than crash.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _boxed(text: str) -> str:
    text = text.strip().strip("$").strip()
    return text if "\\boxed" in text else "\\boxed{" + text + "}"


def equivalent(reference: str, answer: str) -> bool:
    """Whether Math-Verify judges `answer` equal to `reference` (both LaTeX or plain).

    Args:
      reference: the reference answer.
      answer: the candidate answer.

    Returns:
      True when equivalent; False when not, or when either side cannot be parsed.
    """
    from math_verify import parse, verify

    timeout = _timeout()
    gold = parse(_boxed(reference), parsing_timeout=timeout)
    pred = parse(_boxed(answer), parsing_timeout=timeout)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))


def score(completion: str, ground_truth) -> Verdict:
    """Score a math completion.

    Args:
      completion: model output; the answer is the last \\boxed{} after `</think>`.
      ground_truth: the reference answer (string, or a number).

    Returns:
      Verdict(1.0 if equivalent else 0.0, reason for a 0).

    Raises:
      DataError: the reference answer is empty or Math-Verify cannot parse it.
    """
    from math_verify import parse, verify

    if not isinstance(ground_truth, str | int | float) or not str(ground_truth).strip():
        raise DataError(f"math ground truth must be a non-empty answer string, got {ground_truth!r}")
    answer = answer_text("math", completion)
    if answer is None:
        return Verdict(0.0, "no \\boxed{} answer")
    if not answer.strip():
        return Verdict(0.0, "empty \\boxed{}")
    timeout = _timeout()
    gold = parse(_boxed(str(ground_truth)), parsing_timeout=timeout)
    if not gold:
        raise DataError(f"math ground truth {ground_truth!r} cannot be parsed by Math-Verify")
    pred = parse(_boxed(answer), parsing_timeout=timeout)
    if not pred:
        return Verdict(0.0, "boxed answer cannot be parsed")
    if verify(gold, pred, timeout_seconds=timeout):
        return Verdict(1.0)
    return Verdict(0.0, "wrong answer")
