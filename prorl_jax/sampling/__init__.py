"""Sampling: `generate` (the continuous engine by default, the static one on request),
`generate_stream` (rows as they finish) and the sampling strategies.

Names resolve lazily so that `prorl-jax generate --help` does not import jax.
"""

import importlib

_EXPORTS = {
    "GenerationOutput": "prorl_jax.sampling.sampler",
    "FinishedRow": "prorl_jax.sampling.engine",
    "decode_params": "prorl_jax.sampling.engine",
    "generate": "prorl_jax.sampling.engine",
    "generate_stream": "prorl_jax.sampling.engine",
    "SamplingParams": "prorl_jax.sampling.strategies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prorl_jax.sampling' has no attribute {name!r}")


def __dir__():
    return __all__
