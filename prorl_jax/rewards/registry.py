"""Domain name -> verifier. Verifier modules (and their heavy libraries) load on first use."""

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from prorl_jax.data.records import DOMAINS
from prorl_jax.errors import ConfigError, DataError
from prorl_jax.rewards.base import Verdict, checked

_MODULES = {"math": "prorl_jax.rewards.math_reward", "code": "prorl_jax.rewards.code_reward",
            "stem": "prorl_jax.rewards.stem_reward", "reasoning_gym": "prorl_jax.rewards.gym_reward",
            "ifeval": "prorl_jax.rewards.ifeval_reward"}


def _load(path: str) -> Callable:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward verifier {path!r} cannot be imported: {e}") from None


def check_extra(extra: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user verifiers {domain: "module:function"} (the function returns a float or a
    Verdict); they may not shadow a built-in domain.

    Args:
      extra: the mapping, or None.

    Returns:
      A plain dict copy.
    """
    extra = dict(extra or {})
    for name, path in extra.items():
        if name in DOMAINS:
            raise ConfigError(f"extra reward domain {name!r} shadows a built-in domain")
        if not isinstance(path, str) or path.count(":") != 1:
            raise ConfigError(f"extra reward domain {name!r}: expected 'module:function', got {path!r}")
    return extra


def detailed(name: str, extra: Mapping[str, str] | None = None) -> Callable[[str, Any], Verdict]:
    """The verifier of a domain, returning a Verdict (reward and reason).

    Args:
      name: a domain in DOMAINS (or in `extra`).
      extra: user verifiers, see `check_extra`.

    Returns:
      fn(completion, ground_truth) -> Verdict.

    Raises:
      ConfigError: unknown domain.
    """
    if name in _MODULES:
        return _load(_MODULES[name] + ":score")
    if extra and name in extra:
        fn = _load(extra[name])
        return lambda completion, gt: _as_verdict(fn(completion, gt))
    known = ", ".join([*DOMAINS, *(extra or {})])
    raise ConfigError(f"unknown reward domain {name!r}; known domains: {known}")


def _as_verdict(value) -> Verdict:
    return value if isinstance(value, Verdict) else Verdict(value)


def score_one(domain: str, completion: str, ground_truth,
              extra: Mapping[str, str] | None = None) -> Verdict:
    """Score one item, checking the completion type and the reward's range.

    Args:
      domain: reward domain.
      completion: decoded model output.
      ground_truth: the domain's ground truth.
      extra: user verifiers.

    Returns:
      A Verdict whose reward is a finite float in [0, 1].
    """
    fn = detailed(domain, extra)
    if not isinstance(completion, str):
        raise DataError(f"completion must be a str, got {type(completion).__name__}")
    verdict = fn(completion, ground_truth)
    return Verdict(checked(verdict.reward), verdict.reason)


def get(name: str) -> Callable[[str, Any], float]:
    """The reward function of a domain.

    Args:
      name: one of DOMAINS.

    Returns:
      fn(completion: str, ground_truth) -> float in [0, 1]. Malformed ground truth raises
      DataError; the function runs in the caller's process (use RewardPool for isolation).

    Raises:
      ConfigError: unknown domain.
    """
    detailed(name)

    def reward(completion: str, ground_truth) -> float:
        return score_one(name, completion, ground_truth).reward

    reward.__name__ = f"{name}_reward"
    return reward


def warm_up(name: str) -> None:
    """Import a domain's verifier and its libraries now (workers do this before taking work).

    Args:
      name: a domain.
    """
    detailed(name)
    if name == "math":
        import math_verify  # noqa: F401
    elif name == "reasoning_gym":
        import reasoning_gym  # noqa: F401
    elif name == "code":
        from prorl_jax.rewards import sandbox

        sandbox.protections()
