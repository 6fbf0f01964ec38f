"""ModelConfig: the architecture and numerics of one Qwen-family checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from prorl_jax.errors import ConfigError

MODEL_TYPES = ("qwen2", "qwen3")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "save_dots")
# One list of attention implementations (prorl_jax/model/attention.py dispatches on it).
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "cudnn", "splash")
# How the decoder layers run (prorl_jax/model/qwen.py `layer_unroll`): "scan" one compiled
# layer body looped L times, "unrolled" L copies in a straight line, "auto" unrolled on the
# CPU and scanned elsewhere.
LAYER_LOOPS = ("auto", "scan", "unrolled")


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
    attention_impl: str = "auto"  # see ATTENTION_IMPLS and prorl_jax/model/attention.py
    attention_block_q: int = 128  # blockwise / splash query tile (measured, docs/performance.md)
    attention_block_kv: int = 256  # blockwise / splash key tile
    layer_loop: str = "auto"  # see LAYER_LOOPS

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
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention_impl must be one of {ATTENTION_IMPLS}, "
                              f"got {self.attention_impl!r}")
        if self.layer_loop not in LAYER_LOOPS:
            raise ConfigError(f"model.layer_loop must be one of {LAYER_LOOPS}, "
                              f"got {self.layer_loop!r}")
        for name in ("attention_block_q", "attention_block_kv"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ConfigError("model.rope_theta and model.rms_norm_eps must be positive")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """The architecture of a named real checkpoint (see PRESETS), with field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"model.preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> ModelConfig:
        """Read a Hugging Face config.json dict (transformers 4 or 5 layout).

        Raises ConfigError naming the field for anything this model does not implement:
        another model_type (e.g. qwen2_moe), sliding-window attention, rope scaling, an
        activation other than silu, Qwen3 attention_bias (which also biases o_proj).
        """
        return cls(**{**hf_config_fields(hf), **overrides})

    def to_hf_config(self) -> dict[str, Any]:
        """The config.json dict transformers builds Qwen2ForCausalLM / Qwen3ForCausalLM from."""
        return to_hf_config(self)

    def num_params(self) -> int:
        """Parameter count; tied embeddings counted once, as transformers' num_parameters()."""
        D, F, V = self.hidden_size, self.intermediate_size, self.vocab_size
        N, K, H = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        attn = D * N * H + 2 * D * K * H + N * H * D
        if self.attention_bias:
            attn += N * H + 2 * K * H
        if self.qk_norm:
            attn += 2 * H
        layer = attn + 3 * D * F + 2 * D
        embed = V * D * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_hidden_layers * layer + D


_QWEN2 = dict(model_type="qwen2", attention_bias=True, qk_norm=False, rms_norm_eps=1e-6,
              dtype="bfloat16", param_dtype="bfloat16")
_QWEN3 = dict(model_type="qwen3", attention_bias=False, qk_norm=True, rms_norm_eps=1e-6,
              rope_theta=1_000_000.0, head_dim=128, max_position_embeddings=40960,
              tie_word_embeddings=True, vocab_size=151936, num_hidden_layers=28,
              num_attention_heads=16, num_key_value_heads=8, bos_token_id=151643,
              eos_token_id=151645, dtype="bfloat16", param_dtype="bfloat16")

# Values from each checkpoint's config.json on the Hugging Face Hub (base models).
PRESETS: dict[str, dict[str, Any]] = {
    "deepseek-r1-distill-qwen-1.5b": dict(
        _QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=131072,
        bos_token_id=151646, eos_token_id=151643),
    "qwen2.5-0.5b": dict(
        _QWEN2, vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        rope_theta=1_000_000.0, tie_word_embeddings=True, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-1.5b": dict(
        _QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        rope_theta=1_000_000.0, tie_word_embeddings=True, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-7b": dict(
        _QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        rope_theta=1_000_000.0, tie_word_embeddings=False, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643),
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144),
}

_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_ROPE_TYPES = (None, "default")


def _first(value):
    """eos_token_id may be a list in config.json; the model config keeps the first id."""
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return value


def hf_config_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields from a Hugging Face config dict; ConfigError naming a bad field."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    if hf.get("use_sliding_window"):
        raise ConfigError("use_sliding_window=true is not supported (sliding-window attention)")
    bad_layers = sorted({t for t in hf.get("layer_types") or () if t != "full_attention"})
    if bad_layers:
        raise ConfigError(f"layer_types {bad_layers} are not supported (only full_attention)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    rope_theta = hf.get("rope_theta")
    rope_parameters = hf.get("rope_parameters")
    if rope_parameters is not None:
        if not isinstance(rope_parameters, Mapping) or "rope_theta" not in rope_parameters:
            raise ConfigError(f"rope_parameters must be a dict with rope_theta, got {rope_parameters!r}")
        rope_type = rope_parameters.get("rope_type", rope_parameters.get("type"))
        if rope_type not in _ROPE_TYPES:
            raise ConfigError(f"rope_parameters.rope_type {rope_type!r} is not supported (only default)")
        rope_theta = rope_parameters["rope_theta"]
    rope_scaling = hf.get("rope_scaling")
    if rope_scaling is not None:
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type")) if isinstance(
            rope_scaling, Mapping) else rope_scaling
        if rope_type not in _ROPE_TYPES:
            raise ConfigError(f"rope_scaling type {rope_type!r} is not supported (only default)")
    qwen3 = model_type == "qwen3"
    attention_bias = bool(hf.get("attention_bias", False)) if qwen3 else True
    if qwen3 and attention_bias:
        raise ConfigError("attention_bias=true is not supported for qwen3 (it also biases o_proj)")
    heads = hf.get("num_attention_heads", 32)
    dtype = hf.get("dtype", hf.get("torch_dtype")) or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported (supported: {', '.join(DTYPES)})")
    fields = dict(
        model_type=model_type,
        vocab_size=hf.get("vocab_size", 151936),
        hidden_size=hf.get("hidden_size", 4096),
        intermediate_size=hf.get("intermediate_size", 22016),
        num_hidden_layers=hf.get("num_hidden_layers", 32),
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim", 128 if qwen3 else None),
        rope_theta=float(10000.0 if rope_theta is None else rope_theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=qwen3,
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        bos_token_id=_first(hf.get("bos_token_id")),
        eos_token_id=_first(hf.get("eos_token_id")),
        dtype=dtype,
        param_dtype=dtype,
    )
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
        if not isinstance(fields[name], int) or isinstance(fields[name], bool):
            raise ConfigError(f"{name} must be an integer, got {fields[name]!r}")
    return fields


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json dict for `cfg`; ConfigError if transformers' classes cannot express it."""
    qwen3 = cfg.model_type == "qwen3"
    # transformers hard-wires these per family: Qwen2 always has q/k/v bias and no qk-norm,
    # Qwen3 (with attention_bias=false) the reverse.
    if cfg.attention_bias == qwen3 or cfg.qk_norm != qwen3:
        raise ConfigError(
            f"model_type {cfg.model_type!r} with attention_bias={cfg.attention_bias} and "
            f"qk_norm={cfg.qk_norm} has no Hugging Face equivalent")
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "dtype": cfg.param_dtype,
        "use_cache": True,
    }
    if qwen3:
        hf["attention_bias"] = False
    elif cfg.head_dim == cfg.hidden_size // cfg.num_attention_heads:
        del hf["head_dim"]  # Qwen2Config has no head_dim field; write it only when it matters
    return hf
