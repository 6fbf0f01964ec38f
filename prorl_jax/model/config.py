"""ModelConfig: the architecture and numerics of one Qwen-family checkpoint."""

from __future__ import annotations

import dataclasses

from prorl_jax.errors import ConfigError

MODEL_TYPES = ("qwen2", "qwen3")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "save_dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Qwen2 / Qwen2.5 / R1-Distill / Qwen3 dense model.

    `dtype` is the compute dtype (activations, matmuls); `param_dtype` the storage dtype
    of the params. Logits are always returned in float32.
    """

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    model_type: str = "qwen2"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # bias on q/k/v projections (Qwen2), none in Qwen3
    qk_norm: bool = False  # RMSNorm over q and k per head (Qwen3)
    max_position_embeddings: int = 131072
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"model.num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"model.hidden_size ({self.hidden_size}) must be divisible by "
                    f"model.num_attention_heads ({self.num_attention_heads}) when head_dim is unset")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be positive and even (RoPE), got {self.head_dim}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.rms_norm_eps must be positive")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)
