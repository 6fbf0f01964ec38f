"""Sampling: `generate` (prefill + jitted decode loop) and the sampling strategies.

Names resolve lazily so that `prorl-jax generate --help` does not import jax.
"""

import importlib

_EXPORTS = {
    "GenerationOutput": "prorl_jax.sampling.sampler",
    "generate": "prorl_jax.sampling.sampler",
    "SamplingParams": "prorl_jax.sampling.strategies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prorl_jax.sampling' has no attribute {name!r}")


def __dir__():
    return __all__
