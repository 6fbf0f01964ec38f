"""Sampling: `generate` (prefill + jitted decode loop) and the sampling strategies."""

from prorl_jax.sampling.sampler import GenerationOutput, generate
from prorl_jax.sampling.strategies import SamplingParams

__all__ = ["GenerationOutput", "SamplingParams", "generate"]
