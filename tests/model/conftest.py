"""Tiny random transformers Qwen2/Qwen3 checkpoints built on the fly (no network)."""

import numpy as np
import pytest
import torch


def build_hf_model(model_type: str, seed: int = 0, **overrides):
    """A transformers Qwen2/Qwen3 CausalLM in float32 eager mode with norms and biases
    perturbed away from their init (ones / zeros), so a mis-mapped tensor changes logits."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    kwargs = dict(vocab_size=97, hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    theta = kwargs.pop("rope_theta", 10000.0)
    kwargs["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                             "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[model_type]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs, attn_implementation="eager")).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="session")
def hf_logits():
    """hf_logits(model, tokens [B, T]) -> float32 numpy logits of the transformers model."""
    return _hf_logits


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(model_type, seed=0, **config) -> a perturbed tiny transformers model."""
    return build_hf_model


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """factory(model_type, name=..., **config) -> (directory, transformers model)."""

    def make(model_type: str, seed: int = 0, **overrides):
        model = build_hf_model(model_type, seed, **overrides)
        path = tmp_path_factory.mktemp(f"hf_{model_type}")
        model.save_pretrained(path)
        return str(path), model

    return make
