"""The one check of sampling settings, shared by the run config (`sampling`, `validation`)
and `SamplingParams`, so a value the config accepts is one the sampler accepts.

No jax here: config loading imports this module.
"""

from __future__ import annotations

from prorl_jax.errors import ConfigError


def check_sampling(where: str, *, temperature: float, top_p: float, top_k: int = 0,
                   max_new_tokens: int, n: int) -> None:
    """Raises ConfigError naming `where`.field for the first invalid value.

    Args:
      where: the name shown before each field ("sampling", "validation").
      temperature: >= 0 (0 is greedy; NaN is rejected).
      top_p: in (0, 1].
      top_k: >= 0 (0 is off).
      max_new_tokens, n: >= 1.
    """
    if not temperature >= 0:
        raise ConfigError(f"{where}.temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"{where}.top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ConfigError(f"{where}.top_k must be >= 0, got {top_k}")
    if max_new_tokens < 1:
        raise ConfigError(f"{where}.max_new_tokens must be >= 1, got {max_new_tokens}")
    if n < 1:
        raise ConfigError(f"{where}.n must be >= 1, got {n}")
