"""Qwen-family model: config, pure-functional forward, Hugging Face interop."""

from prorl_jax.model.config import ModelConfig

__all__ = ["ModelConfig"]
