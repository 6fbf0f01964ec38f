"""The detailed result every domain verifier returns (the public `get` keeps only the float)."""

import math
from typing import NamedTuple


class Verdict(NamedTuple):
    """A reward with the reason it is not full marks (None when nothing notable happened)."""

    reward: float
    reason: str | None = None


def checked(reward: float) -> float:
    """Guard a verifier's number: a float in [0, 1], else ValueError (a verifier bug).

    Args:
      reward: the raw score.

    Returns:
      `reward` as a float.
    """
    value = float(reward)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"verifier returned {reward!r}, not a finite float in [0, 1]")
    return value
